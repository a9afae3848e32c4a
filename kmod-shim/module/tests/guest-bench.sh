#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# The guest benchmark (not a test; guest-test.sh runs it with BENCH=1): 4 KiB
# O_SYNC write and read latency and create/stat/unlink rates on tmpfs and on
# the module mount, in this one boot, and their ratios. TCG makes absolute
# times meaningless: only the ratios say something. Server: fake-zusd's
# in-memory filesystem (zusd + pmemfs and the FUSE bridge join when zusd
# serves /dev/zufs in the guest).
OPS=${ZUFS_BENCH_OPS:-1000}
mkdir -p /tmp/bt /mnt/zb
mount -t tmpfs bench-tmpfs /tmp/bt
modprobe zufs
fake-zusd serve 4 262144 &
SRV=$!
i=0
while ! dmesg | grep -q "session of pid $SRV:" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t zufs -o mount_id=7,root=1 none /mnt/zb
for round in 1 2; do
	fs-test bench tmpfs /tmp/bt $OPS
	fs-test bench module /mnt/zb $OPS
done > /tmp/bench.out
cat /tmp/bench.out
# the better of the two rounds per metric, then module / tmpfs
awk '
$1 == "BENCH" {
	k = $2 " " $3
	if ($5 == "us") { if (!(k in v) || $4 < v[k]) v[k] = $4 }
	else if (!(k in v) || $4 > v[k]) v[k] = $4
	unit[$3] = $5
}
END {
	printf "GUEST: BENCH %-18s %12s %12s %8s\n", "metric", "tmpfs", "module", "ratio"
	n = split("write4k_osync_mean write4k_osync_p50 read4k_mean read4k_p50 create_rate stat_rate unlink_rate", m, " ")
	for (i = 1; i <= n; i++) {
		t = v["tmpfs " m[i]]; z = v["module " m[i]]
		if (t == "" || z == "") continue
		# latency: how many times slower; rate: what fraction of tmpfs
		r = unit[m[i]] == "us" ? z / t : z / t
		printf "GUEST: BENCH %-18s %10.1f %s %10.1f %s %8.2f\n", m[i], t, unit[m[i]], z, unit[m[i]], r
	}
}' /tmp/bench.out
umount /mnt/zb
kill $SRV
wait $SRV
rmmod zufs
umount /tmp/bt

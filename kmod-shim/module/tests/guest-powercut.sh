#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
# Guest side of tests/powercut-test.sh: pmemfs on a qemu nvdimm (a file on
# the host), through the zufs module with -o dax=. The kernel command line
# says what to do: zufs_pc=write:SEED (mkfs, mount, write and fsync files
# until the host kills qemu) or zufs_pc=verify:SEED:N (mount: recovery runs;
# files 1..N hold every byte that was fsynced; umount; fsck clean).

. /tests/lib/guest-lib.sh	# check, wait_for, uptime_ms

PL=/lib/zufs/plugins
SOCK=/run/zufs/zusd-pc.sock
LOG=/tmp/zusd-pc.log
D=/mnt/pc

PC=$(sed -n 's/.*zufs_pc=\([^ ]*\).*/\1/p' /proc/cmdline)
PHASE=${PC%%:*}
SEED=$(echo "$PC" | cut -d: -f2)
N=$(echo "$PC" | cut -d: -f3)
echo "GUEST: powercut phase $PHASE seed $SEED n ${N:-}"

lsmod | grep -q '^zufs ' || modprobe zufs
# the qemu nvdimm: ACPI NFIT -> a label-less region with one raw namespace
modprobe nfit
modprobe nd_pmem
check pc_nvdimm_pmem0 wait_for 200 test -b /dev/pmem0
if ! test -b /dev/pmem0; then
	ls /sys/bus/nd/devices 2>&1 | sed 's/^/GUEST: nd: /'
	exit 1
fi

# A raw namespace of an NFIT region has no struct pages (only e820 regions get
# ND_REGION_PAGEMAP), so no DAX: give it an fsdax pfn device (struct pages in
# RAM), as `ndctl create-namespace -f -e namespace0.0 -m fsdax -M mem` would.
# The pfn info block is on the namespace: the next boot finds it by itself.
NB=/sys/bus/nd/devices
if [ "$(cat /sys/block/pmem0/queue/dax)" != 1 ]; then
	ns=$(basename "$(readlink -f /sys/block/pmem0/device)")
	region=$(basename "$(readlink -f /sys/block/pmem0/device/..)")
	pfn=$(cat $NB/$region/pfn_seed)
	echo "GUEST: $ns on $region is raw (no DAX): fsdax through $pfn"
	# (a pfn device without a uuid does not probe: ENODEV)
	{ echo "$ns" > /sys/bus/nd/drivers/nd_pmem/unbind &&
		cat /proc/sys/kernel/random/uuid > $NB/$pfn/uuid &&
		echo ram > $NB/$pfn/mode &&
		echo "$ns" > $NB/$pfn/namespace &&
		echo "$pfn" > /sys/bus/nd/drivers/nd_pmem/bind; } 2>&1 | sed 's/^/GUEST: fsdax: /'
	wait_for 200 test -b /dev/pmem0
fi
check pc_pmem0_is_dax sh -c 'test -b /dev/pmem0 && grep -qx 1 /sys/block/pmem0/queue/dax'
dev=$(readlink -f /sys/block/pmem0/device)
case $(basename "$dev") in
pfn*)
	ns=$(cat "$dev/namespace")
	off=$(( $(cat "$dev/resource") - $(cat $NB/"$ns"/resource) ))
	;;
*)
	off=0
	;;
esac
size=$(( $(cat /sys/block/pmem0/size) * 512 ))
echo "PC: layout $(basename "$dev") data_offset=$off size=$size"

start_zusd() {
	NO_COLOR=1 ZUFS_LOG=info /bin/zusd --kernel --plugins $PL --socket "$SOCK" >"$LOG" 2>&1 &
	ZPID=$!
	wait_for 600 grep -q 'zusd ready' "$LOG"
}
NODAX=
mount_pc() {  # zufs mount -o transport=kernel: zusd's mount of /dev/pmem0, then the kernel's,
	# to which the CLI adds dax=/dev/pmem0 (a DAX block device) unless NODAX=,nodax
	mkdir -p $D
	/bin/zufs --socket "$SOCK" --plugins $PL mount -t pmemfs -o "transport=kernel$NODAX" /dev/pmem0 $D \
		2>/tmp/pc-mount.err || return 1
	[ -n "$NODAX" ] || grep -q " $D zufs .*dax=/dev/pmem0" /proc/mounts
}

case $PHASE in
write)
	check pc_mkfs /bin/zufs mkfs -t pmemfs --plugins $PL /dev/pmem0
	check pc_zusd_started start_zusd
	check pc_dax_mount mount_pc
	sed 's/^/GUEST: zusd: /' /tmp/pc-mount.err | tail -n 3
	echo "PC: writing"
	# until the host pulls the plug; the TEST line is for a host that did not
	/bin/powercut-io write $D "$SEED" 100000
	echo "TEST pc_host_cut_the_power ... FAILED: the writer ran to its end"
	;;
verify)
	check pc_zusd_started start_zusd
	check pc_dax_mount_after_the_cut mount_pc
	sed 's/^/GUEST: zusd: /' /tmp/pc-mount.err | tail -n 3
	grep -i 'recover\|replay\|orphan' "$LOG" | tail -n 5 | sed 's/^/GUEST: zusd: /'
	check pc_every_fsynced_byte /bin/powercut-io verify $D "$SEED" "$N"
	ls $D | wc -l | sed 's/^/GUEST: files after the cut: /'
	check pc_writable_after_recovery sh -c "dd if=/dev/urandom of=/tmp/after bs=4k count=50 2>/dev/null && cp /tmp/after $D/after && sync && cmp /tmp/after $D/after 2>&1 | sed 's/^/GUEST: /'; cmp -s /tmp/after $D/after"
	check pc_umount umount $D
	kill -TERM "$ZPID"
	wait "$ZPID"
	check pc_fsck_clean sh -c "/bin/zufs fsck -t pmemfs --plugins $PL /dev/pmem0 > /tmp/fsck.log 2>&1; grep -q ': 0 problem' /tmp/fsck.log"
	sed 's/^/GUEST: fsck: /' /tmp/fsck.log | tail -n 3
	;;
nocut)
	# no power cut: write N files, verify, remount (a new zusd), verify again
	check pc_mkfs /bin/zufs mkfs -t pmemfs --plugins $PL /dev/pmem0
	check pc_zusd_started start_zusd
	# a fifth field "window": the mounts without dax= (data through the slot windows)
	[ "$(echo "$PC" | cut -d: -f5)" = window ] && NODAX=,nodax
	check pc_dax_mount mount_pc
	# a fourth field "nojunk": no scratch file (no blocks freed meanwhile)
	J=$(echo "$PC" | cut -d: -f4)
	[ "$J" = nojunk ] && export PC_NOJUNK=1
	[ "$J" = noappend ] && export PC_NOAPPEND=1
	[ "$J" = notrunc ] && export PC_NOTRUNC=1
	[ "$J" = trunc0 ] && export PC_TRUNC0=1
	/bin/powercut-io write $D "$SEED" "$N" | grep -v fsynced
	check pc_nocut_verify_same_mount /bin/powercut-io verify $D "$SEED" "$N"
	umount $D
	kill -TERM "$ZPID"
	wait "$ZPID"
	check pc_nocut_zusd_restarted start_zusd
	check pc_nocut_remount mount_pc
	check pc_nocut_verify_after_remount /bin/powercut-io verify $D "$SEED" "$N"
	umount $D
	;;
*)
	echo "TEST pc_phase ... FAILED: no zufs_pc= on the kernel command line"
	;;
esac

// SPDX-License-Identifier: GPL-2.0
/*
 * zufs-dbgop: send the module's debug NOOP (ZUFS_IOC_DBG_OP) to whatever
 * server holds /dev/zufs's session (zusd, in zusd-kzt.sh).
 *
 *   zufs-dbgop cpus        one NOOP from every CPU we may run on (pinned to
 *                          it); each must come back with result 0 from the
 *                          lane of that CPU, served by the ZT registered for
 *                          it, which reported DONE from that CPU. One line
 *                          per CPU; exit 0 when all did.
 *   zufs-dbgop bench N     N NOOPs from each CPU in turn, then the mean
 *                          round trip per CPU, in ns ("bench cpu C: X ns/op")
 *   zufs-dbgop once        one NOOP from here; prints "errno E in T ms"
 *                          (E = 0 on success); exit 0
 *
 * Static (gcc -static), for the guest's busybox initramfs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "zus_api.h"	/* zus-api/include: generated from the Rust ABI */

static int dev(void)
{
	int fd = open("/dev/zufs", O_RDWR | O_CLOEXEC);

	if (fd < 0) {
		printf("zufs-dbgop: /dev/zufs: %s\n", strerror(errno));
		exit(2);
	}
	return fd;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int pin(int cpu)
{
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	return sched_setaffinity(0, sizeof(set), &set);
}

/* The CPUs we may run on, into @cpus; returns how many. */
static int allowed(int *cpus, int max)
{
	cpu_set_t set;
	int n = 0, c;

	if (sched_getaffinity(0, sizeof(set), &set))
		return 0;
	for (c = 0; c < CPU_SETSIZE && n < max; c++)
		if (CPU_ISSET(c, &set))
			cpus[n++] = c;
	return n;
}

/* One NOOP; 0 or -errno. */
static int noop(int fd, struct zufs_ioc_dbg_op *d)
{
	memset(d, 0, sizeof(*d));
	return ioctl(fd, ZUFS_IOC_DBG_OP, d) ? -errno : 0;
}

int main(int argc, char **argv)
{
	struct zufs_ioc_dbg_op d;
	int cpus[1024], n, i, k, r, fd, bad = 0;
	double t;

	if (argc >= 2 && !strcmp(argv[1], "cpus")) {
		fd = dev();
		n = allowed(cpus, 1024);
		for (i = 0; i < n; i++) {
			if (pin(cpus[i])) {
				printf("cpu %d: cannot pin: %s\n", cpus[i], strerror(errno));
				bad++;
				continue;
			}
			r = noop(fd, &d);
			k = !r && !d.result && d.submit_cpu == (uint32_t)cpus[i] &&
			    d.lane == (uint32_t)cpus[i] && d.zt_cpu == (uint32_t)cpus[i] &&
			    d.done_cpu == (uint32_t)cpus[i];
			printf("cpu %d: %s (errno %d, result %lld, submit %u, lane %u, zt %u, done %u)\n",
			       cpus[i], k ? "ok" : "WRONG", -r, (long long)d.result,
			       d.submit_cpu, d.lane, d.zt_cpu, d.done_cpu);
			bad += !k;
		}
		return bad || !n;
	}
	if (argc >= 3 && !strcmp(argv[1], "bench")) {
		int ops = atoi(argv[2]);

		fd = dev();
		n = allowed(cpus, 1024);
		for (i = 0; i < n; i++) {
			if (pin(cpus[i]))
				return 1;
			t = now_s();
			for (k = 0; k < ops; k++)
				if ((r = noop(fd, &d))) {
					printf("bench cpu %d: errno %d\n", cpus[i], -r);
					return 1;
				}
			t = now_s() - t;
			printf("bench cpu %d: %.0f ns/op over %d ops\n", cpus[i],
			       t * 1e9 / (ops ? ops : 1), ops);
		}
		return 0;
	}
	if (argc >= 2 && !strcmp(argv[1], "once")) {
		fd = dev();
		t = now_s();
		r = noop(fd, &d);
		printf("errno %d in %.0f ms\n", -r, (now_s() - t) * 1e3);
		return 0;
	}
	fprintf(stderr, "usage: %s cpus | bench N | once\n", argv[0]);
	return 2;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * dax-test.c - static guest test program for zufs -o dax mounts.
 *
 *   dax-test mmap DIR        mmap coherence tests; prints "TEST name ... ok|FAILED"
 *   dax-test overwrite FILE N
 *                            N O_SYNC 4 KiB overwrites at one offset of an
 *                            existing file, through one open: fails when
 *                            they took more than one MAP op
 *                            (/sys/module/zufs/parameters/dax_map_ops)
 *   dax-test bench DIR LABEL 4K O_SYNC random write/read, 1 MiB sequential
 *                            write/read, create/stat/unlink; prints
 *                            "BENCH LABEL metric value unit"
 *   dax-test hold FILE       maps FILE's first page shared, closes the fd,
 *                            touches the page, prints "held" and waits for
 *                            a signal (the mapping keeps the file open)
 *   dax-test ticket FILE OTHER MOUNT_ID
 *                            ZUFS_IOC_TICKET on FILE (on a mount that caches
 *                            attributes for a minute), which OTHER names
 *                            through a second mount of the same zusd mount:
 *                            what OTHER's writes do to the size shows in
 *                            FILE's stat at once while FILE is open for
 *                            writing with the ioctl asked, and after it is
 *                            closed; prints "TEST name ... ok|FAILED"
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "zus_api.h"	/* ZUFS_IOC_TICKET */

#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif
#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif

static int failures;

static const char *prefix = "dax_mmap_";

static void check(const char *name, int ok, const char *why)
{
	if (ok)
		printf("TEST %s%s ... ok\n", prefix, name);
	else
		printf("TEST %s%s ... FAILED: %s (errno %d %s)\n", prefix, name,
		       why, errno, strerror(errno));
	if (!ok)
		failures++;
	fflush(stdout);
}

static sigjmp_buf jb;
static void on_sigbus(int sig)
{
	(void)sig;
	siglongjmp(jb, 1);
}

/* 1 when reading *p raised SIGBUS */
static int faults(volatile char *p)
{
	struct sigaction sa = { .sa_handler = on_sigbus }, old;
	int hit = 0;

	sigaction(SIGBUS, &sa, &old);
	if (sigsetjmp(jb, 1) == 0)
		(void)*p;
	else
		hit = 1;
	sigaction(SIGBUS, &old, NULL);
	return hit;
}

static void fill(char *b, size_t n, int seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (char)(seed + i * 7 + i / 4096);
}

static int mmap_tests(const char *dir)
{
	char path[512], buf[3 * 4096], got[3 * 4096];
	const size_t len = sizeof(buf);
	int fd;
	char *m;

	snprintf(path, sizeof(path), "%s/mmap-file", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	check("open", fd >= 0, "open");
	if (fd < 0)
		return 1;

	/* write() then a shared map sees it */
	fill(buf, len, 1);
	check("write_then_map", pwrite(fd, buf, len, 0) == (ssize_t)len, "pwrite");
	m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	check("map_shared", m != MAP_FAILED, "mmap shared");
	if (m == MAP_FAILED)
		return 1;
	check("map_sees_write", !memcmp(m, buf, len), "mapped bytes differ from written");

	/* stores through the map, read() sees them (same pmem, no cache) */
	fill(m + 100, 5000, 9);
	fill(buf + 100, 5000, 9);
	check("read_sees_map_store", pread(fd, got, len, 0) == (ssize_t)len &&
	      !memcmp(got, buf, len), "read differs from mapped stores");
	check("msync", msync(m, len, MS_SYNC) == 0, "msync");
	check("fsync_after_map_store", fsync(fd) == 0, "fsync");

	/* a write() after mapping shows in the map */
	fill(buf + 4096, 100, 3);
	check("map_sees_later_write", pwrite(fd, buf + 4096, 100, 4096) == 100 &&
	      !memcmp(m + 4096, buf + 4096, 100), "map differs after pwrite");

	/* truncate while mapped: past EOF SIGBUS, in EOF the data */
	check("truncate_while_mapped", ftruncate(fd, 4096) == 0, "ftruncate");
	check("sigbus_past_eof", faults(m + 4096 + 10), "no SIGBUS past EOF");
	check("data_before_eof_kept", !faults(m + 10) && !memcmp(m, buf, 4096), "data before EOF");
	/* grow again: the range reads zeros, no stale data */
	check("extend", ftruncate(fd, len) == 0, "ftruncate up");
	{
		int zero = !faults(m + 4096);

		for (size_t i = 4096; zero && i < len; i++)
			zero = m[i] == 0;
		check("no_stale_data_after_truncate", zero, "stale bytes after truncate+extend");
	}
	/* stores into a hole allocate (write fault), read() sees them */
	memset(m + 8192, 'h', 4096);
	check("store_into_hole", pread(fd, got, 4096, 8192) == 4096 &&
	      got[0] == 'h' && got[4095] == 'h', "hole store not seen by read");
	munmap(m, len);

	/* MAP_SYNC on a shared mapping */
	m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0);
	check("map_sync", m != MAP_FAILED, "MAP_SYNC refused");
	if (m != MAP_FAILED) {
		m[0] = 'S';
		check("map_sync_store", pread(fd, got, 1, 0) == 1 && got[0] == 'S', "MAP_SYNC store");
		munmap(m, len);
	}

	/* private: own copy on write, the file unchanged */
	m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	check("map_private", m != MAP_FAILED, "mmap private");
	if (m != MAP_FAILED) {
		char before = m[1];

		m[1] = before ^ 0x55;
		check("private_store_not_in_file", pread(fd, got, 2, 0) == 2 &&
		      got[1] == before && m[1] == (char)(before ^ 0x55), "private write leaked");
		munmap(m, len);
	}
	close(fd);
	unlink(path);
	return failures != 0;
}

static double now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static int bench(const char *dir, const char *label)
{
	const size_t fsize = 16 << 20, seq = 64 << 20;
	const int nrand = 2000, nfiles = 500;
	char path[512], *buf;
	unsigned int seed = 1;
	double t0, t;
	int fd, i;

	buf = aligned_alloc(4096, 1 << 20);
	memset(buf, 'b', 1 << 20);
	snprintf(path, sizeof(path), "%s/bench-file", dir);

	/* 4K O_SYNC random writes over a preallocated 16 MiB file */
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open");
	for (size_t o = 0; o < fsize; o += 1 << 20)
		if (pwrite(fd, buf, 1 << 20, o) != 1 << 20)
			die("prefill");
	close(fd);
	fd = open(path, O_RDWR | O_SYNC);
	if (fd < 0)
		die("open O_SYNC");
	t0 = now_us();
	for (i = 0; i < nrand; i++)
		if (pwrite(fd, buf, 4096, (rand_r(&seed) % (fsize / 4096)) * 4096) != 4096)
			die("pwrite 4k");
	t = now_us() - t0;
	printf("BENCH %s 4k_osync_randwrite %.1f us/op\n", label, t / nrand);
	t0 = now_us();
	for (i = 0; i < nrand; i++)
		if (pread(fd, buf, 4096, (rand_r(&seed) % (fsize / 4096)) * 4096) != 4096)
			die("pread 4k");
	t = now_us() - t0;
	printf("BENCH %s 4k_randread %.1f us/op\n", label, t / nrand);
	close(fd);
	unlink(path);

	/* 1 MiB sequential */
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open seq");
	t0 = now_us();
	for (size_t o = 0; o < seq; o += 1 << 20)
		if (pwrite(fd, buf, 1 << 20, o) != 1 << 20)
			die("seq write");
	if (fsync(fd))
		die("fsync");
	t = now_us() - t0;
	printf("BENCH %s 1m_seqwrite %.1f MB/s\n", label, seq / t);
	t0 = now_us();
	for (size_t o = 0; o < seq; o += 1 << 20)
		if (pread(fd, buf, 1 << 20, o) != 1 << 20)
			die("seq read");
	t = now_us() - t0;
	printf("BENCH %s 1m_seqread %.1f MB/s\n", label, seq / t);
	close(fd);
	unlink(path);

	/* create / stat / unlink */
	t0 = now_us();
	for (i = 0; i < nfiles; i++) {
		struct stat st;

		snprintf(path, sizeof(path), "%s/f%d", dir, i);
		fd = open(path, O_CREAT | O_WRONLY, 0644);
		if (fd < 0)
			die("create");
		close(fd);
		if (stat(path, &st))
			die("stat");
		if (unlink(path))
			die("unlink");
	}
	t = now_us() - t0;
	printf("BENCH %s create_stat_unlink %.1f us/file\n", label, t / nfiles);
	fflush(stdout);
	free(buf);
	return 0;
}

static long map_ops(void)
{
	FILE *f = fopen("/sys/module/zufs/parameters/dax_map_ops", "r");
	long n = -1;

	if (f) {
		if (fscanf(f, "%ld", &n) != 1)
			n = -1;
		fclose(f);
	}
	return n;
}

static int overwrite(const char *path, int n)
{
	char buf[4096];
	long m0, m1;
	int fd, i;

	fd = open(path, O_RDWR | O_SYNC);
	if (fd < 0 || pread(fd, buf, sizeof(buf), 8192) != sizeof(buf))
		die("open/pread");
	m0 = map_ops();
	for (i = 0; i < n; i++)
		if (pwrite(fd, buf, sizeof(buf), 8192) != sizeof(buf))
			die("pwrite");
	m1 = map_ops();
	close(fd);
	printf("MAP ops for %d O_SYNC overwrites of a cached range: %ld\n", n, m1 - m0);
	return m0 < 0 || m1 - m0 > 1;
}

static int hold(const char *path)
{
	volatile char *p;
	int fd = open(path, O_RDWR);

	if (fd < 0)
		die("open");
	p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		die("mmap");
	close(fd);
	(void)p[0];
	printf("held\n");
	fflush(stdout);
	for (;;)
		pause();
	return 0;
}

/* zus-api's IoctlTicket, what ZUFS_IOC_TICKET answers */
struct ioctl_ticket {
	uint64_t ino;
	uint64_t ticket;
	uint32_t mount_id;
	uint32_t writable;
};

/* OTHER appends @n zero bytes; FILE's size, as stat() through FILE's mount says */
static off_t grow_and_stat(const char *other, const char *file, size_t n)
{
	static char zero[8192];
	struct stat st;
	int w = open(other, O_WRONLY | O_APPEND);
	ssize_t r = w < 0 ? -1 : write(w, zero, n);

	if (w >= 0)
		close(w);
	return r != (ssize_t)n || stat(file, &st) ? -1 : st.st_size;
}

static int ticket(const char *file, const char *other, unsigned int mount_id)
{
	struct ioctl_ticket t;
	struct stat st;
	int fd, ro, r;

	prefix = "dax_ticket_";
	fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || fstat(fd, &st))
		die("open");
	/* the size is now cached, for a minute on this mount */
	check("size_cached_first", !stat(file, &st) && st.st_size == 0, "stat");
	memset(&t, 0xff, sizeof(t));
	r = ioctl(fd, ZUFS_IOC_TICKET, &t);
	check("ioctl_answers_for_a_writable_file",
	      !r && t.ino == (uint64_t)st.st_ino && t.ticket == 0 &&
	      t.mount_id == mount_id && t.writable == 1, "ioctl");
	check("others_write_seen_at_once_while_open",
	      grow_and_stat(other, file, 8192) == 8192, "size");
	check("and_again", grow_and_stat(other, file, 4096) == 12288, "size");
	close(fd);
	check("others_write_seen_after_the_close",
	      grow_and_stat(other, file, 4096) == 16384, "size");
	ro = open(file, O_RDONLY);
	memset(&t, 0xff, sizeof(t));
	r = ro < 0 ? -1 : ioctl(ro, ZUFS_IOC_TICKET, &t);
	check("ioctl_answers_for_a_read_only_file",
	      !r && t.ticket == 0 && t.writable == 0, "ioctl");
	check("other_ioctls_refused",
	      ro >= 0 && ioctl(ro, _IOR('Z', 99, struct ioctl_ticket), &t) == -1 &&
	      errno == ENOTTY, "ioctl");
	if (ro >= 0)
		close(ro);
	unlink(file);
	return failures != 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "mmap"))
		return mmap_tests(argv[2]);
	if (argc == 4 && !strcmp(argv[1], "overwrite"))
		return overwrite(argv[2], atoi(argv[3]));
	if (argc == 4 && !strcmp(argv[1], "bench"))
		return bench(argv[2], argv[3]);
	if (argc == 3 && !strcmp(argv[1], "hold"))
		return hold(argv[2]);
	if (argc == 5 && !strcmp(argv[1], "ticket"))
		return ticket(argv[2], argv[3], strtoul(argv[4], NULL, 0));
	fprintf(stderr, "usage: dax-test mmap DIR | overwrite FILE N | bench DIR LABEL | hold FILE |\n"
		"       ticket FILE OTHER MOUNT_ID\n");
	return 2;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * fs-test: checks of a mounted zufs filesystem that busybox cannot make
 * (xattrs, renameat2 flags, utimensat, statfs, mknod of every type,
 * revalidation against other clients), and its guest benchmark.
 *
 *   fs-test check DIR [SERVER_PID]
 *       every check in DIR (an empty directory on the mount); prints
 *       "TEST name ... ok" or "TEST name ... FAILED: why". With SERVER_PID
 *       (fake-zusd serve), also the changes made behind the kernel's back
 *       (fake-zusd's SIGUSR2) in DIR, which must then be the mount's root.
 *       Exit status 1 when a check failed.
 *   fs-test bench LABEL DIR [OPS]
 *       4 KiB O_SYNC write and read latency and create/stat/unlink rates
 *       in DIR; prints "BENCH LABEL metric value unit" lines.
 *   fs-test phase io|create|stat|unlink LABEL DIR [OPS]
 *       one of bench's phases alone (create leaves DIR/bench.d/f0..f(OPS-1)
 *       for stat and unlink), so that a caller can count the server's
 *       requests between them (tests/zusd-meta-bench.sh).
 *   fs-test time LABEL METRIC CMD...
 *       runs CMD, prints "BENCH LABEL METRIC seconds s" (CLOCK_MONOTONIC;
 *       busybox's date has no sub-second format); exit 1 when CMD failed.
 *
 * Built static; runs in the guest's busybox initramfs, on the fake server
 * and on zusd.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE	(1 << 0)
#define RENAME_EXCHANGE		(1 << 1)
#endif

#define ZUFS_SUPER_MAGIC	0x5a554653

static int nfail;
static char dir[1024];

static void report(const char *name, int ok, const char *fmt, ...)
{
	char why[512] = "";
	va_list ap;

	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(why, sizeof(why), fmt, ap);
		va_end(ap);
	}
	if (ok) {
		printf("TEST %s ... ok\n", name);
	} else {
		nfail++;
		printf("TEST %s ... FAILED: %s (errno %d %s)\n", name, why, errno,
		       strerror(errno));
	}
	fflush(stdout);
}

static const char *P(const char *name)
{
	static char bufs[4][1200];
	static int k;

	k = (k + 1) % 4;
	snprintf(bufs[k], sizeof(bufs[k]), "%s/%s", dir, name);
	return bufs[k];
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int put(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = write(fd, s, strlen(s));
	close(fd);
	return n == (ssize_t)strlen(s) ? 0 : -1;
}

static int get_is(const char *path, const char *want)
{
	char buf[256];
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return 0;
	buf[n] = 0;
	return !strcmp(buf, want);
}

static void test_xattr(void)
{
	char f[1200], d[1200], l[1200];
	static char big[60000], back[60000];
	char buf[256];
	ssize_t n;
	size_t i;

	snprintf(f, sizeof(f), "%s", P("xa"));
	snprintf(d, sizeof(d), "%s", P("xadir"));
	snprintf(l, sizeof(l), "%s", P("xalink"));
	put(f, "x");
	mkdir(d, 0755);
	symlink("xa", l);
	report("xattr_set", !setxattr(f, "user.a", "v1", 2, 0), NULL);
	n = getxattr(f, "user.a", buf, sizeof(buf));
	report("xattr_get", n == 2 && !memcmp(buf, "v1", 2), "n=%zd", n);
	n = getxattr(f, "user.a", NULL, 0);
	report("xattr_get_size_only", n == 2, "n=%zd", n);
	n = getxattr(f, "user.a", buf, 1);
	report("xattr_get_small_buffer_erange", n == -1 && errno == ERANGE, "n=%zd", n);
	n = getxattr(f, "user.none", buf, sizeof(buf));
	report("xattr_get_missing_enodata", n == -1 && errno == ENODATA, "n=%zd", n);
	report("xattr_create_existing_eexist",
	       setxattr(f, "user.a", "v2", 2, XATTR_CREATE) == -1 && errno == EEXIST, NULL);
	report("xattr_replace_missing_enodata",
	       setxattr(f, "user.b", "v2", 2, XATTR_REPLACE) == -1 && errno == ENODATA, NULL);
	report("xattr_replace", !setxattr(f, "user.a", "value-2", 7, XATTR_REPLACE) &&
	       getxattr(f, "user.a", buf, sizeof(buf)) == 7 && !memcmp(buf, "value-2", 7), NULL);
	report("xattr_empty_value", !setxattr(f, "user.empty", "", 0, 0) &&
	       getxattr(f, "user.empty", buf, sizeof(buf)) == 0, NULL);
	setxattr(f, "user.b", "b", 1, 0);
	n = listxattr(f, buf, sizeof(buf));
	report("xattr_list", n == (ssize_t)sizeof("user.a\0user.empty\0user.b") &&
	       memmem(buf, n, "user.a\0", 7) && memmem(buf, n, "user.b\0", 7) &&
	       memmem(buf, n, "user.empty\0", 11), "n=%zd", n);
	report("xattr_list_size_only", listxattr(f, NULL, 0) == n, NULL);
	report("xattr_list_small_buffer_erange",
	       listxattr(f, buf, 3) == -1 && errno == ERANGE, NULL);
	for (i = 0; i < sizeof(big); i++)
		big[i] = i * 7 + 3;
	report("xattr_60000_byte_value", !setxattr(f, "user.big", big, sizeof(big), 0) &&
	       getxattr(f, "user.big", back, sizeof(back)) == sizeof(big) &&
	       !memcmp(big, back, sizeof(big)), NULL);
	report("xattr_remove", !removexattr(f, "user.a") &&
	       getxattr(f, "user.a", buf, sizeof(buf)) == -1 && errno == ENODATA, NULL);
	report("xattr_remove_missing_enodata",
	       removexattr(f, "user.a") == -1 && errno == ENODATA, NULL);
	report("xattr_on_directory", !setxattr(d, "user.d", "dd", 2, 0) &&
	       getxattr(d, "user.d", buf, sizeof(buf)) == 2, NULL);
	report("xattr_user_on_symlink_eperm",
	       lsetxattr(l, "user.l", "l", 1, 0) == -1 && errno == EPERM, NULL);
	report("xattr_trusted_on_symlink", !lsetxattr(l, "trusted.l", "l", 1, 0) &&
	       lgetxattr(l, "trusted.l", buf, sizeof(buf)) == 1, NULL);
	/* ACLs are the module's (acl.c); other system.* names are refused */
	report("xattr_posix_acl_none_enodata",
	       getxattr(f, "system.posix_acl_access", buf, sizeof(buf)) == -1 &&
	       errno == ENODATA, NULL);
	report("xattr_system_other_refused",
	       setxattr(f, "system.zufs_test", "x", 1, 0) == -1 &&
	       errno == EOPNOTSUPP, NULL);
	report("xattr_survives_rename", !rename(f, P("xa2")) &&
	       getxattr(P("xa2"), "user.b", buf, sizeof(buf)) == 1, NULL);
	unlink(P("xa2"));
	unlink(l);
	rmdir(d);
}

static int renameat2_(const char *a, const char *b, unsigned int flags)
{
	return syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, flags);
}

static void test_rename_flags(void)
{
	struct stat sa, sb;

	put(P("ra"), "A");
	put(P("rb"), "B");
	report("rename_noreplace_existing_eexist",
	       renameat2_(P("ra"), P("rb"), RENAME_NOREPLACE) == -1 && errno == EEXIST &&
	       get_is(P("ra"), "A") && get_is(P("rb"), "B"), NULL);
	report("rename_noreplace_new_name",
	       !renameat2_(P("ra"), P("rc"), RENAME_NOREPLACE) && get_is(P("rc"), "A") &&
	       access(P("ra"), F_OK) == -1, NULL);
	report("rename_exchange_files",
	       !renameat2_(P("rb"), P("rc"), RENAME_EXCHANGE) && get_is(P("rb"), "A") &&
	       get_is(P("rc"), "B"), NULL);
	report("rename_exchange_missing_enoent",
	       renameat2_(P("rb"), P("rmissing"), RENAME_EXCHANGE) == -1 && errno == ENOENT,
	       NULL);
	mkdir(P("rd"), 0755);
	put(P("rd/inner"), "I");
	report("rename_exchange_file_and_dir",
	       !renameat2_(P("rb"), P("rd"), RENAME_EXCHANGE) &&
	       !stat(P("rb"), &sa) && S_ISDIR(sa.st_mode) && !stat(P("rd"), &sb) &&
	       S_ISREG(sb.st_mode) && get_is(P("rb/inner"), "I") && get_is(P("rd"), "A"), NULL);
	unlink(P("rb/inner"));
	rmdir(P("rb"));
	unlink(P("rc"));
	unlink(P("rd"));
}

static void test_times(void)
{
	struct timespec ts[2] = { { 1000000000, 123456789 }, { 1200000000, 987654321 } };
	struct stat st = { 0 }, st2;
	time_t t = time(NULL);
	int ok;

	put(P("tm"), "t");
	ok = !utimensat(AT_FDCWD, P("tm"), ts, 0) && !stat(P("tm"), &st);
	report("utimens_set", ok && st.st_atim.tv_sec == ts[0].tv_sec && st.st_atim.tv_nsec == ts[0].tv_nsec &&
	       st.st_mtim.tv_sec == ts[1].tv_sec && st.st_mtim.tv_nsec == ts[1].tv_nsec,
	       "atime %ld.%ld mtime %ld.%ld", (long)st.st_atim.tv_sec, st.st_atim.tv_nsec,
	       (long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	ts[0].tv_nsec = UTIME_OMIT;
	ts[1].tv_nsec = UTIME_NOW;
	report("utimens_now_and_omit", !utimensat(AT_FDCWD, P("tm"), ts, 0) &&
	       !stat(P("tm"), &st2) && st2.st_atim.tv_sec == 1000000000 &&
	       st2.st_mtim.tv_sec >= t - 2 && st2.st_mtim.tv_sec <= t + 2, NULL);
	report("utimens_negative_time", !utimensat(AT_FDCWD, P("tm"),
	       (struct timespec[2]){ { -100, 0 }, { -200, 5 } }, 0) && !stat(P("tm"), &st) &&
	       st.st_atim.tv_sec == -100 && st.st_mtim.tv_sec == -200 &&
	       st.st_mtim.tv_nsec == 5, NULL);
	report("utimens_symlink_nofollow", !symlink("tm", P("tml")) &&
	       !utimensat(AT_FDCWD, P("tml"), (struct timespec[2]){ { 5, 0 }, { 6, 0 } },
			  AT_SYMLINK_NOFOLLOW) && !lstat(P("tml"), &st) && st.st_mtim.tv_sec == 6 &&
	       !stat(P("tm"), &st2) && st2.st_mtim.tv_sec != 6, NULL);
	stat(P("tm"), &st);
	report("chmod_changes_ctime", !chmod(P("tm"), 0600) && !stat(P("tm"), &st2) &&
	       (st2.st_ctim.tv_sec > st.st_ctim.tv_sec ||
		(st2.st_ctim.tv_sec == st.st_ctim.tv_sec &&
		 st2.st_ctim.tv_nsec > st.st_ctim.tv_nsec)) && (st2.st_mode & 07777) == 0600,
	       NULL);
	stat(P("tm"), &st);
	put(P("tm"), "changed");
	report("write_changes_mtime_at_once", !stat(P("tm"), &st2) && st2.st_size == 7 &&
	       (st2.st_mtim.tv_sec != st.st_mtim.tv_sec ||
		st2.st_mtim.tv_nsec != st.st_mtim.tv_nsec), NULL);
	stat(dir, &st);
	put(P("tm-new"), "");
	report("create_changes_dir_mtime_at_once", !stat(dir, &st2) &&
	       (st2.st_mtim.tv_sec != st.st_mtim.tv_sec ||
		st2.st_mtim.tv_nsec != st.st_mtim.tv_nsec), NULL);
	mkdir(P("tmd"), 0755);
	stat(dir, &st);
	ok = !mkdir(P("tmd/sub"), 0755) && !stat(P("tmd"), &st) && st.st_nlink == 3 &&
	     !rmdir(P("tmd/sub")) && !stat(P("tmd"), &st) && st.st_nlink == 2;
	report("mkdir_rmdir_dir_nlink", ok, "nlink %lu", (unsigned long)st.st_nlink);
	rmdir(P("tmd"));
	unlink(P("tm-new"));
	unlink(P("tml"));
	unlink(P("tm"));
}

static void test_statfs(void)
{
	struct statfs s = { 0 };
	int r = statfs(dir, &s);

	report("statfs", !r && s.f_type == ZUFS_SUPER_MAGIC && s.f_bsize > 0 &&
	       s.f_blocks > 0 && s.f_bfree <= s.f_blocks && s.f_files > 0 &&
	       s.f_namelen == 255, "type %lx bsize %ld blocks %lu", (long)s.f_type,
	       (long)s.f_bsize, (unsigned long)s.f_blocks);
}

static void test_mknod(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, s, c;
	char ch = 0;

	report("mknod_fifo", !mknod(P("fifo"), S_IFIFO | 0644, 0) && !stat(P("fifo"), &st) &&
	       S_ISFIFO(st.st_mode), NULL);
	fd = open(P("fifo"), O_RDWR);
	report("fifo_works", fd >= 0 && write(fd, "f", 1) == 1 && read(fd, &ch, 1) == 1 &&
	       ch == 'f', NULL);
	if (fd >= 0)
		close(fd);
	report("mknod_socket", !mknod(P("sock"), S_IFSOCK | 0644, 0) && !stat(P("sock"), &st) &&
	       S_ISSOCK(st.st_mode), NULL);
	report("mknod_char_device", !mknod(P("null"), S_IFCHR | 0666, makedev(1, 3)) &&
	       !stat(P("null"), &st) && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3),
	       NULL);
	fd = open(P("null"), O_RDWR);
	report("char_device_opens_the_driver", fd >= 0 && write(fd, "abcde", 5) == 5 &&
	       read(fd, &ch, 1) == 0, NULL);
	if (fd >= 0)
		close(fd);
	report("mknod_block_device", !mknod(P("blk"), S_IFBLK | 0600, makedev(7, 200)) &&
	       !stat(P("blk"), &st) && S_ISBLK(st.st_mode) && st.st_rdev == makedev(7, 200),
	       NULL);
	report("mknod_regular", !mknod(P("reg"), S_IFREG | 0600, 0) && !stat(P("reg"), &st) &&
	       S_ISREG(st.st_mode) && st.st_size == 0, NULL);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", P("usock"));
	s = socket(AF_UNIX, SOCK_STREAM, 0);
	c = socket(AF_UNIX, SOCK_STREAM, 0);
	report("unix_socket_bind_connect", s >= 0 && c >= 0 &&
	       !bind(s, (struct sockaddr *)&sa, sizeof(sa)) && !listen(s, 1) &&
	       !connect(c, (struct sockaddr *)&sa, sizeof(sa)) && !stat(P("usock"), &st) &&
	       S_ISSOCK(st.st_mode), NULL);
	close(s);
	close(c);
	unlink(P("fifo"));
	unlink(P("sock"));
	unlink(P("null"));
	unlink(P("blk"));
	unlink(P("reg"));
	unlink(P("usock"));
}

static void test_files(void)
{
	char buf[64];
	int fd = open(P("ap"), O_RDWR | O_CREAT | O_TRUNC, 0644), fd2;
	off_t end;

	report("o_append_after_other_fd_grew_the_file", fd >= 0 &&
	       write(fd, "12345", 5) == 5 &&
	       (fd2 = open(P("ap"), O_WRONLY | O_APPEND)) >= 0 && write(fd2, "67", 2) == 2 &&
	       !close(fd2) && pread(fd, buf, sizeof(buf), 0) == 7 && !memcmp(buf, "1234567", 7),
	       NULL);
	end = lseek(fd, 0, SEEK_END);
	report("seek_end", end == 7, "end %ld", (long)end);
	report("ftruncate_and_fsync", !ftruncate(fd, 3) && !fsync(fd) && !fdatasync(fd) &&
	       lseek(fd, 0, SEEK_END) == 3, NULL);
	report("pwrite_past_end_leaves_zeros", pwrite(fd, "z", 1, 10) == 1 &&
	       pread(fd, buf, sizeof(buf), 0) == 11 && !memcmp(buf, "123\0\0\0\0\0\0\0z", 11),
	       NULL);
	close(fd);
	unlink(P("ap"));

	/* mappings: private, shared read-only and writable; a write drops stale pages */
	put(P("mm"), "mapped-1");
	fd = open(P("mm"), O_RDONLY);
	fd2 = open(P("mm"), O_RDWR);
	{
		char *m = fd >= 0 ? mmap(NULL, 8, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
		char *pv;

		report("mmap_shared_read", m != MAP_FAILED && !memcmp(m, "mapped-1", 8), NULL);
		report("mmap_sees_later_write", m != MAP_FAILED && pwrite(fd2, "MAPPED", 6, 0) == 6 &&
		       !memcmp(m, "MAPPED-1", 8), NULL);
		if (m != MAP_FAILED)
			munmap(m, 8);
		pv = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
		report("mmap_private_write_stays_private", pv != MAP_FAILED &&
		       !memcmp(pv, "MAPPED-1", 8) && (memcpy(pv, "private", 7), 1) &&
		       pread(fd, buf, 8, 0) == 8 && !memcmp(buf, "MAPPED-1", 8), NULL);
		if (pv != MAP_FAILED)
			munmap(pv, 4096);
		/* shared writable: stores reach the server at msync (WRITE ops) */
		m = mmap(NULL, 8, PROT_READ | PROT_WRITE, MAP_SHARED, fd2, 0);
		report("mmap_shared_writable_msync_read_back", m != MAP_FAILED &&
		       (memcpy(m, "shared", 6), 1) && !msync(m, 8, MS_SYNC) &&
		       pread(fd, buf, 8, 0) == 8 && !memcmp(buf, "shared-1", 8),
		       "errno %d", errno);
		if (m != MAP_FAILED)
			munmap(m, 8);
	}
	if (fd >= 0)
		close(fd);
	if (fd2 >= 0)
		close(fd2);
	unlink(P("mm"));
}

static int wait_file(const char *path, const char *want, double secs)
{
	double t = now_s();

	while (now_s() - t < secs) {
		if (get_is(path, want))
			return 1;
		usleep(10000);
	}
	return 0;
}

/* fake-zusd's SIGUSR2 changes ext-attr and renames ext-old behind our back */
static void test_external(pid_t server)
{
	unsigned int done = 0;
	char want[16];
	FILE *f;
	struct stat st;
	double t0, t1 = -1, t2 = -1;
	int fd;

	unlink(P("ext-new"));
	put(P("ext-attr"), "abcdef");
	chmod(P("ext-attr"), 0644);
	put(P("ext-old"), "old");
	stat(P("ext-attr"), &st);
	stat(P("ext-old"), &st);
	stat(P("ext-new"), &st);	/* a negative dentry */
	fd = open(P("ext-attr"), O_RDONLY);
	/* the server counts its changes: an earlier run of ours made some */
	f = fopen("/tmp/fake-zusd.ext", "r");
	if (f) {
		if (fscanf(f, "%u", &done) != 1)
			done = 0;
		fclose(f);
	}
	kill(server, SIGUSR2);
	snprintf(want, sizeof(want), "%u\n", done + 1);
	report("external_change_made", wait_file("/tmp/fake-zusd.ext", want, 5), NULL);
	t0 = now_s();
	/* poll: the caches may hold the old view until their timeouts */
	while (now_s() - t0 < 10 && (t1 < 0 || t2 < 0)) {
		if (t1 < 0 && !stat(P("ext-attr"), &st) && (st.st_mode & 0777) == 0604 &&
		    st.st_size == 3)
			t1 = now_s() - t0;
		if (t2 < 0 && !stat(P("ext-new"), &st) && get_is(P("ext-new"), "old") &&
		    access(P("ext-old"), F_OK) == -1)
			t2 = now_s() - t0;
		if (t1 < 0 || t2 < 0)
			usleep(20000);
	}
	report("external_attr_change_seen", t1 >= 0 && t1 < 3, "after %.2f s", t1);
	report("external_rename_seen", t2 >= 0 && t2 < 3, "after %.2f s", t2);
	report("external_change_fstat", fd >= 0 && !fstat(fd, &st) &&
	       (st.st_mode & 0777) == 0604 && st.st_size == 3, NULL);
	report("external_seek_end", fd >= 0 && lseek(fd, 0, SEEK_END) == 3, NULL);
	printf("fs-test: external changes seen after %.2f s (attr) and %.2f s (rename)\n",
	       t1, t2);
	if (fd >= 0)
		close(fd);
	unlink(P("ext-attr"));
	unlink(P("ext-new"));
}

static int check(const char *d, pid_t server)
{
	snprintf(dir, sizeof(dir), "%s", d);
	test_xattr();
	test_rename_flags();
	test_times();
	test_statfs();
	test_mknod();
	test_files();
	if (server > 0)
		test_external(server);
	return nfail ? 1 : 0;
}

/* ---------------- the benchmark ---------------- */

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void lat(const char *label, const char *what, double *v, int n)
{
	double sum = 0;
	int i;

	qsort(v, n, sizeof(*v), cmp_d);
	for (i = 0; i < n; i++)
		sum += v[i];
	printf("BENCH %s %s_mean %.1f us\n", label, what, sum / n * 1e6);
	printf("BENCH %s %s_p50 %.1f us\n", label, what, v[n / 2] * 1e6);
}

static int bench_io(const char *label, int ops)
{
	static char buf[4096] __attribute__((aligned(4096)));
	double *v = calloc(ops, sizeof(double)), t;
	int fd, i;

	if (!v)
		return 1;
	memset(buf, 0x5a, sizeof(buf));
	fd = open(P("bench.dat"), O_RDWR | O_CREAT | O_TRUNC | O_SYNC, 0644);
	if (fd < 0)
		return perror("open"), 1;
	for (i = 0; i < ops; i++) {	/* 4K O_SYNC writes over a 1 MiB file */
		t = now_s();
		if (pwrite(fd, buf, 4096, (off_t)(i % 256) * 4096) != 4096)
			return perror("pwrite"), 1;
		v[i] = now_s() - t;
	}
	lat(label, "write4k_osync", v, ops);
	for (i = 0; i < ops; i++) {
		t = now_s();
		if (pread(fd, buf, 4096, (off_t)(i % 256) * 4096) != 4096)
			return perror("pread"), 1;
		v[i] = now_s() - t;
	}
	lat(label, "read4k", v, ops);
	close(fd);
	unlink(P("bench.dat"));
	free(v);
	return 0;
}

/*
 * One metadata phase over DIR/bench.d/f0..f(OPS-1): "create" makes the
 * directory and the empty files (open O_CREAT|O_EXCL + close), "stat" stats
 * them, "unlink" removes them and the directory.
 */
static int bench_meta(const char *label, const char *phase, int ops)
{
	char name[64];
	struct stat st;
	double t;
	int fd, i, r = 0;

	if (!strcmp(phase, "create"))
		mkdir(P("bench.d"), 0755);
	t = now_s();
	for (i = 0; i < ops && !r; i++) {
		snprintf(name, sizeof(name), "bench.d/f%d", i);
		if (!strcmp(phase, "create")) {
			fd = open(P(name), O_WRONLY | O_CREAT | O_EXCL, 0644);
			r = fd < 0 || close(fd);
		} else if (!strcmp(phase, "stat")) {
			r = stat(P(name), &st);
		} else {
			r = unlink(P(name));
		}
	}
	t = now_s() - t;
	if (r)
		return perror(phase), 1;
	if (!strcmp(phase, "unlink"))
		rmdir(P("bench.d"));
	printf("BENCH %s %s_rate %.0f ops/s\n", label, phase, ops / t);
	return 0;
}

static int bench_phase(const char *phase, const char *label, const char *d, int ops)
{
	snprintf(dir, sizeof(dir), "%s", d);
	if (ops < 1)
		ops = 1;
	if (!strcmp(phase, "io"))
		return bench_io(label, ops);
	if (!strcmp(phase, "create") || !strcmp(phase, "stat") || !strcmp(phase, "unlink"))
		return bench_meta(label, phase, ops);
	fprintf(stderr, "fs-test: no phase %s (io, create, stat, unlink)\n", phase);
	return 2;
}

static int bench(const char *label, const char *d, int ops)
{
	return bench_phase("io", label, d, ops) ||
	       bench_phase("create", label, d, ops) ||
	       bench_phase("stat", label, d, ops) ||
	       bench_phase("unlink", label, d, ops);
}

/* fs-test time LABEL METRIC CMD...: CMD's wall time (CLOCK_MONOTONIC) */
static int time_cmd(const char *label, const char *metric, char **cmd)
{
	double t = now_s();
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return perror("fork"), 1;
	if (!pid) {
		execvp(cmd[0], cmd);
		perror(cmd[0]);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) < 0)
		return perror("waitpid"), 1;
	t = now_s() - t;
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "fs-test: %s failed (status %d)\n", cmd[0], status);
		return 1;
	}
	printf("BENCH %s %s %.3f s\n", label, metric, t);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc >= 3 && !strcmp(argv[1], "check"))
		return check(argv[2], argc > 3 ? atoi(argv[3]) : 0);
	if (argc >= 4 && !strcmp(argv[1], "bench"))
		return bench(argv[2], argv[3], argc > 4 ? atoi(argv[4]) : 1000);
	if (argc >= 5 && !strcmp(argv[1], "phase"))
		return bench_phase(argv[2], argv[3], argv[4], argc > 5 ? atoi(argv[5]) : 1000);
	if (argc >= 5 && !strcmp(argv[1], "time"))
		return time_cmd(argv[2], argv[3], argv + 4);
	fprintf(stderr, "usage: %s check DIR [SERVER_PID] | bench LABEL DIR [OPS] |\n"
		"       phase io|create|stat|unlink LABEL DIR [OPS] | time LABEL METRIC CMD...\n",
		argv[0]);
	return 2;
}

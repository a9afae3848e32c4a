// SPDX-License-Identifier: GPL-2.0
/*
 * powercut-io - the guest side of tests/powercut-test.sh.
 *
 *   powercut-io write DIR SEED MAX
 *	Files DIR/f0001 .. DIR/fMAX, each with a size and contents derived
 *	from SEED and its number, written in pieces of varying size, then
 *	fsync'd (the file, then DIR); after each one "PC: fsynced I SIZE" on
 *	stdout. Between files a scratch file DIR/junk grows and is cut back
 *	(blocks allocated and freed while the power goes). The host kills the
 *	guest at a chosen "PC: fsynced" line. PC_NOJUNK=1 in the environment
 *	leaves the scratch file out; PC_PAUSE_MS=MS pauses after each cut
 *	of the scratch file (its blocks leave pmemfs's reuse quarantine);
 *	PC_NOTRUNC=1: the scratch file only grows; PC_TRUNC0=1: cut to 0; PC_NOAPPEND=1: without
 *	O_APPEND.
 *   powercut-io verify DIR SEED N
 *	Files 1..N must hold exactly what write wrote; prints each mismatch
 *	and "PC: verified N files, B bytes" and exits 0 when all match.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAXSZ (384 * 1024)

static uint64_t rng_state;

static uint64_t rng(void)
{
	uint64_t x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng_state = x;
	return x;
}

static void seed_for(uint64_t seed, unsigned int i, uint64_t salt)
{
	rng_state = (seed * 0x9e3779b97f4a7c15ULL) ^ ((uint64_t)i << 20) ^ salt;
	if (!rng_state)
		rng_state = 1;
	for (int k = 0; k < 8; k++)
		rng();
}

/* size of file i: from empty to MAXSZ, many not block multiples */
static size_t file_size(uint64_t seed, unsigned int i)
{
	uint64_t r;

	seed_for(seed, i, 0x51e);
	r = rng();
	switch (r % 8) {
	case 0:
		return r % 64;
	case 1:
		return 4096 * (1 + (r >> 8) % 8);
	default:
		return (r >> 8) % MAXSZ;
	}
}

static void file_data(uint64_t seed, unsigned int i, unsigned char *buf, size_t n)
{
	size_t k;

	seed_for(seed, i, 0xda7a);
	for (k = 0; k + 8 <= n; k += 8) {
		uint64_t v = rng();

		memcpy(buf + k, &v, 8);
	}
	for (; k < n; k++)
		buf[k] = (unsigned char)rng();
}

static void name_of(char *p, size_t len, const char *dir, unsigned int i)
{
	snprintf(p, len, "%s/f%04u", dir, i);
}

static int write_all(int fd, const unsigned char *buf, size_t n, uint64_t *r)
{
	size_t off = 0;

	while (off < n) {
		size_t piece = 1 + *r % 65536;
		ssize_t w;

		*r = *r * 6364136223846793005ULL + 1442695040888963407ULL;
		if (piece > n - off)
			piece = n - off;
		w = write(fd, buf + off, piece);
		if (w <= 0)
			return -1;
		off += (size_t)w;
	}
	return 0;
}

static int do_write(const char *dir, uint64_t seed, unsigned int max)
{
	unsigned char *buf = malloc(MAXSZ), *junk = malloc(65536);
	char path[4096];
	uint64_t r = seed | 1;
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	int jfd;

	if (!buf || !junk || dfd < 0) {
		perror("powercut-io: setup");
		return 1;
	}
	memset(junk, 0xa5, 65536);
	snprintf(path, sizeof(path), "%s/junk", dir);
	/* PC_NOAPPEND: the scratch file grows by writes at its size, not O_APPEND */
	jfd = open(path, O_CREAT | O_WRONLY | (getenv("PC_NOAPPEND") ? 0 : O_APPEND), 0644);
	if (jfd < 0) {
		perror(path);
		return 1;
	}
	for (unsigned int i = 1; i <= max; i++) {
		size_t n = file_size(seed, i);
		struct stat st;
		int fd;

		file_data(seed, i, buf, n);
		name_of(path, sizeof(path), dir, i);
		fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
		if (fd < 0 || write_all(fd, buf, n, &r) || fsync(fd) || close(fd)) {
			fprintf(stderr, "powercut-io: %s: %s\n", path, strerror(errno));
			return 1;
		}
		if (fsync(dfd)) {
			fprintf(stderr, "powercut-io: fsync %s: %s\n", dir, strerror(errno));
			return 1;
		}
		printf("PC: fsynced %u %zu\n", i, n);
		fflush(stdout);
		/* unsynced churn: the scratch file grows, and is cut back */
		if (getenv("PC_NOJUNK"))
			continue;
		if (fstat(jfd, &st) || lseek(jfd, st.st_size, SEEK_SET) < 0 ||
		    write(jfd, junk, 1 + r % 65536) < 0 || fstat(jfd, &st)) {
			perror("powercut-io: junk");
			return 1;
		}
		if (st.st_size > 1024 * 1024 && !getenv("PC_NOTRUNC")) {
			if (ftruncate(jfd, getenv("PC_TRUNC0") ? 0 : (off_t)(r % 4096))) {
				perror("powercut-io: junk truncate");
				return 1;
			}
			printf("PC: junk cut after %u (%lld bytes freed)\n", i, (long long)st.st_size);
			/* PC_PAUSE_MS: let the freed blocks' reuse grace pass */
			if (getenv("PC_PAUSE_MS"))
				usleep(1000 * (useconds_t)atoi(getenv("PC_PAUSE_MS")));
		}
	}
	printf("PC: wrote all %u\n", max);
	return 0;
}

static int do_verify(const char *dir, uint64_t seed, unsigned int n)
{
	unsigned char *want = malloc(MAXSZ), *got = malloc(MAXSZ + 1);
	unsigned long long bytes = 0;
	unsigned int bad = 0;
	char path[4096];

	if (!want || !got)
		return 1;
	for (unsigned int i = 1; i <= n; i++) {
		size_t sz = file_size(seed, i), off = 0;
		ssize_t r;
		int fd;

		file_data(seed, i, want, sz);
		name_of(path, sizeof(path), dir, i);
		fd = open(path, O_RDONLY);
		if (fd < 0) {
			printf("PC: MISSING %s: %s\n", path, strerror(errno));
			bad++;
			continue;
		}
		while ((r = read(fd, got + off, MAXSZ + 1 - off)) > 0)
			off += (size_t)r;
		close(fd);
		if (r < 0) {
			printf("PC: READ %s: %s\n", path, strerror(errno));
			bad++;
		} else if (off != sz) {
			printf("PC: SIZE %s: %zu, want %zu\n", path, off, sz);
			bad++;
		} else if (memcmp(want, got, sz)) {
			size_t k = 0;

			while (want[k] == got[k])
				k++;
			size_t e = sz, ndiff = 0, junk = 0, zero = 0;

			while (e > k && want[e - 1] == got[e - 1])
				e--;
			for (size_t j = k; j < e; j++) {
				if (want[j] == got[j])
					continue;
				ndiff++;
				junk += got[j] == 0xa5;
				zero += got[j] == 0;
			}
			printf("PC: DATA %s: differs at %zu..%zu of %zu: %zu bytes differ (%zu 0xa5 scratch, %zu zero), got %02x%02x%02x%02x want %02x%02x%02x%02x\n",
			       path, k, e, sz, ndiff, junk, zero, got[k], got[k + 1 < sz ? k + 1 : k],
			       got[k + 2 < sz ? k + 2 : k], got[k + 3 < sz ? k + 3 : k], want[k],
			       want[k + 1 < sz ? k + 1 : k], want[k + 2 < sz ? k + 2 : k],
			       want[k + 3 < sz ? k + 3 : k]);
			bad++;
		}
		bytes += sz;
	}
	printf("PC: verified %u files, %llu bytes, %u bad\n", n, bytes, bad);
	return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: powercut-io write|verify DIR SEED N\n");
		return 2;
	}
	if (!strcmp(argv[1], "write"))
		return do_write(argv[2], strtoull(argv[3], NULL, 0), (unsigned int)atoi(argv[4]));
	if (!strcmp(argv[1], "verify"))
		return do_verify(argv[2], strtoull(argv[3], NULL, 0), (unsigned int)atoi(argv[4]));
	fprintf(stderr, "powercut-io: unknown mode %s\n", argv[1]);
	return 2;
}

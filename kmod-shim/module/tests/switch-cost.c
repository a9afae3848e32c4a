// SPDX-License-Identifier: GPL-2.0
/*
 * switch-cost: what a hand-off to another process costs, itself and to the
 * work after it, on one CPU. A round is a one-byte ping-pong through two
 * pipes with a partner (another process, or a thread of this one), then
 * reads of N distinct pages in random order; the same reads without the
 * ping-pong are the baseline. Every request through the zufs module or FUSE
 * is such a hand-off (caller -> server -> caller), so this is the floor of
 * a request's cost on the machine it runs on, and of how much colder the
 * caches and TLB are after it.
 *
 *   switch-cost [thread]
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGES 8192

static int p2c[2], c2p[2];
static volatile uint8_t *buf;
static unsigned int order[PAGES];

static double now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void pin0(void)
{
	cpu_set_t s;

	CPU_ZERO(&s);
	CPU_SET(0, &s);
	if (sched_setaffinity(0, sizeof(s), &s))
		perror("sched_setaffinity");
}

/* the partner: echoes each byte until it reads a 0 */
static void *echo(void *arg)
{
	char c;

	(void)arg;
	pin0();
	while (read(p2c[0], &c, 1) == 1 && c)
		if (write(c2p[1], &c, 1) != 1)
			break;
	return NULL;
}

/* µs per round of @iters, each a ping-pong (if @pingpong) and @pages reads */
static double round_us(int pages, int iters, int pingpong)
{
	unsigned int sum = 0, start = 0;
	double t0 = now_us();
	char c = 1;
	int i, j;

	for (i = 0; i < iters; i++) {
		if (pingpong && (write(p2c[1], &c, 1) != 1 ||
				 read(c2p[0], &c, 1) != 1)) {
			perror("ping-pong");
			exit(1);
		}
		for (j = 0; j < pages; j++)
			sum += buf[(size_t)order[(start + j) % PAGES] * 4096];
		start += pages;
	}
	if (sum == 1)	/* keeps the reads */
		putchar(' ');
	return (now_us() - t0) / iters;
}

int main(int argc, char **argv)
{
	int thread = argc > 1 && !strcmp(argv[1], "thread");
	static const int sizes[] = { 0, 16, 64, 256, 1024 };
	double a0 = 0, b0 = 0;
	pthread_t th;
	pid_t pid = 0;
	unsigned int i;
	char c = 0;

	pin0();
	buf = mmap(NULL, (size_t)PAGES * 4096, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (buf == MAP_FAILED || pipe(p2c) || pipe(c2p)) {
		perror("switch-cost");
		return 1;
	}
	for (i = 0; i < PAGES; i++) {
		buf[(size_t)i * 4096] = (uint8_t)i;
		order[i] = i;
	}
	srand(1);
	for (i = PAGES - 1; i > 0; i--) {
		unsigned int k = (unsigned int)rand() % (i + 1), t = order[i];

		order[i] = order[k];
		order[k] = t;
	}
	if (thread) {
		if (pthread_create(&th, NULL, echo, NULL))
			return 1;
	} else {
		pid = fork();
		if (pid < 0)
			return 1;
		if (!pid) {
			echo(NULL);
			_exit(0);
		}
	}
	printf("partner: %s; us per round, best of 5\n",
	       thread ? "a thread (same mm)" : "a process (another mm)");
	printf("%6s %12s %12s %14s %16s\n", "pages", "no switch", "ping-pong",
	       "switch alone", "extra per page");
	for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		int n = sizes[i], iters = n >= 256 ? 500 : 2000, r;
		double a = 1e18, b = 1e18;

		for (r = 0; r < 5; r++) {
			double x = round_us(n, iters, 0);
			double y = round_us(n, iters, 1);

			a = x < a ? x : a;
			b = y < b ? y : b;
		}
		if (!n) {
			a0 = a;
			b0 = b;
		}
		printf("%6d %12.2f %12.2f %14.2f %16.3f\n", n, a, b, b - a,
		       n ? ((b - b0) - (a - a0)) / n : 0.0);
	}
	if (write(p2c[1], &c, 1) != 1)
		return 1;
	if (thread)
		pthread_join(th, NULL);
	else
		waitpid(pid, NULL, 0);
	return 0;
}

/* What the channel data policy (ZUFS_DATA=auto) is based on: the cost of process_vm_readv, the
 * one-copy path zusd uses for a client's buffers, against a plain memcpy, for 4 KiB to 256 KiB,
 * as one iovec and as 4 KiB iovecs. Reads from this process itself (the same kernel path).
 *   gcc -O2 -o /tmp/pvm tests/c/pvm_vs_memcpy.c && /tmp/pvm */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void) {
    char *src = aligned_alloc(4096, 4 << 20);
    memset(src, 1, 4 << 20);
    char *dst = mmap(0, 64 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memset(dst, 0, 64 << 20);
    pid_t me = getpid();
    for (long sz = 4096; sz <= 262144; sz *= 2) {
        long n = 2000000 / (sz / 4096) / 4;
        if (n < 2000) n = 2000;
        double t0 = now();
        for (long i = 0; i < n; i++) {
            struct iovec l = {dst + (i * sz) % (64 << 20), sz}, r = {src, sz};
            process_vm_readv(me, &l, 1, &r, 1, 0);
        }
        double t1 = now();
        int k = sz / 4096;
        struct iovec rv[64];
        for (int j = 0; j < k; j++) { rv[j].iov_base = src + j * 8192; rv[j].iov_len = 4096; }
        double t2 = now();
        for (long i = 0; i < n; i++) {
            struct iovec l = {dst + (i * sz) % (64 << 20), sz};
            process_vm_readv(me, &l, 1, rv, k, 0);
        }
        double t3 = now();
        for (long i = 0; i < n; i++) memcpy(dst + (i * sz) % (64 << 20), src, sz);
        double t4 = now();
        printf("%6ld B: process_vm_readv 1 iov %.2f us, %d iovs %.2f us; memcpy %.2f us\n", sz,
               (t1 - t0) / n * 1e6, k, (t3 - t2) / n * 1e6, (t4 - t3) / n * 1e6);
    }
    return 0;
}

#!/usr/bin/env python3
"""Races on the preload library's file slots, driven with its test hooks (ZUFS_PRELOAD_TEST, see
kmod-shim/preload/src/testhook.rs). Run under LD_PRELOAD=libzufs_preload.so by
tests/tests/preload_process.rs. Prints "CHECK FAILED: ..." and exits 1 on a failed check,
prints "races ok" and exits 0 otherwise.

Usage: preload_races.py slot_reuse DIR        (with pause_rw=MS)
       preload_races.py dup_close_mtime DIR   (dax mode, with pause_release=MS)
       preload_races.py map_done_fails DIR    (dax mode, with fail_map_done=1)
"""
import ctypes
import os
import sys
import threading
import time

IOV = 4096
NIOV = 300  # more than MAX_IOV (256): two chunks, the hook pauses between them


def check(cond, what):
    if not cond:
        sys.stderr.write("CHECK FAILED: %s\n" % what)
        sys.exit(1)


def pattern(seed, n):
    return bytes(((seed + i * 131 + (i >> 9)) % 251) for i in range(n))


def stat_field(name):
    """A counter of the library's stats line (needs ZUFS_PRELOAD_STATS=1)."""
    buf = ctypes.create_string_buffer(512)
    ctypes.CDLL(None).zufs_preload_stats(buf, 512)
    w = buf.value.decode().split()
    return int(w[w.index(name) + 1])


def slot_reuse(d):
    """A pwritev of two chunks on fd A; while it pauses between them, another thread closes A
    and opens (and uses) B, which gets A's fd number. The whole write must land in A's file,
    none of it in B's (the kernel pins an open file for the length of a call)."""
    fa, fb = os.path.join(d, "a"), os.path.join(d, "b")
    fd = os.open(fa, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.fstat(fd)  # served: the library has a slot for the file now
    data = pattern(7, IOV * NIOV)
    bufs = [data[i * IOV:(i + 1) * IOV] for i in range(NIOV)]
    out = {}

    def writer():
        try:
            out["n"] = os.pwritev(fd, bufs, 0)
        except OSError as e:
            out["err"] = e.errno

    t = threading.Thread(target=writer)
    t.start()
    # The first chunk has landed when the file reaches its size (asked through the kernel);
    # the writer now sleeps in the hook.
    deadline = time.time() + 20
    while os.stat(fa).st_size < 256 * IOV:
        check(time.time() < deadline, "the first chunk of the pwritev never landed")
        time.sleep(0.005)
    os.close(fd)
    fd2 = os.open(fb, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    check(fd2 == fd, "the new file got the closed fd's number (%d, %d)" % (fd2, fd))
    os.fstat(fd2)  # served: the library gives the new file a slot
    check(t.is_alive(), "the writer was still inside its pwritev (raise pause_rw)")
    t.join()
    check("err" not in out, "pwritev failed: errno %s" % out.get("err"))
    check(out.get("n") == IOV * NIOV, "pwritev wrote %s of %d" % (out.get("n"), IOV * NIOV))
    sb = os.stat(fb).st_size
    check(sb == 0, "the rest of the write on the closed fd went into the new file (its size %d)" % sb)
    with open(fa, "rb") as f:
        got = f.read()
    check(got == data, "the closed fd's file holds the whole write (%d bytes, equal %s)" % (len(got), got == data))
    os.close(fd2)


def dup_close_mtime(d):
    """A dax write leaves its mtime pending (committed at most once per ms); the file is open as
    two dup'ed fds, closed by two threads at once. Whichever drops the last reference must
    commit the mtime."""
    fa = os.path.join(d, "m")
    fd = os.open(fa, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.pwrite(fd, pattern(1, 65536), 0)  # extends through zusd
    fd2 = os.dup(fd)
    # Overwrite inside the file (dax) until one write leaves its mtime pending (no MAP_DONE:
    # within a millisecond of the last commit).
    for _ in range(10000):
        t0 = time.time_ns()
        before = stat_field("map_done")
        os.pwrite(fd, pattern(2, 4096), 4096)
        if stat_field("map_done") == before:
            break
    else:
        check(False, "no dax write left its mtime pending")
    check(os.stat(fa).st_mtime_ns < t0, "mtime is not committed yet")
    t = threading.Thread(target=os.close, args=(fd,))
    t.start()
    time.sleep(0.1)  # the first close is inside its release now (pause_release)
    os.close(fd2)
    t.join()
    m = os.stat(fa).st_mtime_ns
    check(m >= t0, "the last close committed the pending mtime (mtime %d, write at %d)" % (m, t0))


def map_done_fails(d):
    """A dax write inside the file whose MAP_DONE fails: the data landed, so the write reports
    its bytes, and the mtime stays pending and is committed at close."""
    fa = os.path.join(d, "f")
    fd = os.open(fa, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.pwrite(fd, pattern(1, 65536), 0)  # extends through zusd (no MAP_DONE)
    time.sleep(0.01)
    t0 = time.time_ns()
    try:
        n = os.pwrite(fd, pattern(3, 4096), 8192)  # dax; its MAP_DONE fails (fail_map_done=1)
    except OSError as e:
        n = "errno %d" % e.errno
    check(n == 4096, "the dax write whose MAP_DONE failed reports its bytes (got %s)" % n)
    with open(fa, "rb") as f:
        f.seek(8192)
        check(f.read(4096) == pattern(3, 4096), "the write's data landed")
    os.close(fd)
    m = os.stat(fa).st_mtime_ns
    check(m >= t0, "the mtime was committed at close (mtime %d, write at %d)" % (m, t0))


def main():
    {"slot_reuse": slot_reuse, "dup_close_mtime": dup_close_mtime, "map_done_fails": map_done_fails}[sys.argv[1]](
        sys.argv[2])
    print("races ok")


if __name__ == "__main__":
    main()

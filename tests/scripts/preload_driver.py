#!/usr/bin/env python3
"""Runs file operations read from stdin, one per line, and answers each with one line.

Run under LD_PRELOAD=libzufs_preload.so by the preload tests: every os.* call below goes through
the libc functions the library interposes (open, read, write, pread, pwrite, readv, writev,
preadv, pwritev, lseek, fsync, ftruncate, fallocate, fstat, dup, close), and copy_file_range,
sendfile, splice and mmap go to the kernel mount (the library does not serve them).

Replies: "ok VALUE" or "err ERRNO". Data comes back as hex; data to write is generated from a
seed with the same pattern as the Rust side (pattern()).
"""
import os
import sys

FLAGS = {
    "ro": os.O_RDONLY, "wo": os.O_WRONLY, "rw": os.O_RDWR, "creat": os.O_CREAT, "trunc": os.O_TRUNC,
    "append": os.O_APPEND, "sync": os.O_SYNC, "dsync": os.O_DSYNC, "direct": os.O_DIRECT,
    "cloexec": os.O_CLOEXEC, "excl": os.O_EXCL,
}


def pattern(seed, n, start=0):
    return bytes(((seed + (start + i) * 131 + ((start + i) >> 9)) % 251) for i in range(n))


def run(cmd, a):
    if cmd == "open":
        fl = 0
        for f in a[1].split(","):
            fl |= FLAGS[f]
        return os.open(a[0], fl, 0o644)
    fd = int(a[0]) if a else -1
    if cmd == "pwrite":
        return os.pwrite(fd, pattern(int(a[3]), int(a[2])), int(a[1]))
    if cmd == "write":
        return os.write(fd, pattern(int(a[2]), int(a[1])))
    if cmd == "pread":
        return os.pread(fd, int(a[2]), int(a[1])).hex() or "-"
    if cmd == "read":
        return os.read(fd, int(a[1])).hex() or "-"
    if cmd == "pwritev":
        lens = [int(x) for x in a[3].split(",")]
        seed, bufs, at = int(a[2]), [], 0
        for n in lens:
            bufs.append(pattern(seed, n, at))
            at += n
        return os.pwritev(fd, bufs, int(a[1]))
    if cmd == "writev":
        lens = [int(x) for x in a[2].split(",")]
        seed, bufs, at = int(a[1]), [], 0
        for n in lens:
            bufs.append(pattern(seed, n, at))
            at += n
        return os.writev(fd, bufs)
    if cmd == "preadv":
        bufs = [bytearray(int(x)) for x in a[2].split(",")]
        n = os.preadv(fd, bufs, int(a[1]))
        return b"".join(bufs)[:n].hex() or "-"
    if cmd == "readv":
        bufs = [bytearray(int(x)) for x in a[1].split(",")]
        n = os.readv(fd, bufs)
        return b"".join(bufs)[:n].hex() or "-"
    if cmd == "lseek":
        return os.lseek(fd, int(a[1]), int(a[2]))
    if cmd == "ftruncate":
        os.ftruncate(fd, int(a[1]))
        return 0
    if cmd == "fallocate":
        # os.posix_fallocate calls an internal fallocate; use ctypes for the hooked symbol.
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        r = libc.fallocate(fd, int(a[1]), int(a[2]), int(a[3]))
        if r != 0:
            raise OSError(ctypes.get_errno(), "fallocate")
        return 0
    if cmd == "fstat":
        st = os.fstat(fd)
        return "%d %d %d" % (st.st_size, st.st_mtime_ns, st.st_ino)
    if cmd == "fsync":
        os.fsync(fd)
        return 0
    if cmd == "fdatasync":
        os.fdatasync(fd)
        return 0
    if cmd == "dup":
        return os.dup(fd)
    if cmd == "dup2":
        return os.dup2(fd, int(a[1]))
    if cmd == "close":
        os.close(fd)
        return 0
    # Calls the library does not serve (the kernel makes them): they must see the fast path's
    # size and data at once.
    if cmd == "copy_file_range":
        # copy_file_range FD_IN OFF_IN FD_OUT OFF_OUT LEN
        return os.copy_file_range(fd, int(a[2]), int(a[4]), int(a[1]), int(a[3]))
    if cmd == "sendfile":
        # sendfile FD_IN OFF LEN -> the bytes, through a pipe.
        r, w = os.pipe()
        try:
            n = os.sendfile(w, fd, int(a[1]), int(a[2]))
            return os.read(r, n).hex() if n else "-"
        finally:
            os.close(r)
            os.close(w)
    if cmd == "splice":
        r, w = os.pipe()
        try:
            n = os.splice(fd, w, int(a[2]), offset_src=int(a[1]))
            return os.read(r, n).hex() if n else "-"
        finally:
            os.close(r)
            os.close(w)
    if cmd == "mmapread":
        # mmap(2) of [OFF, OFF+LEN) through the kernel mount (the mmap module's fstat is the
        # library's), then a read of every byte: SIGBUS where the kernel's size is short.
        import mmap
        m = mmap.mmap(fd, int(a[2]), mmap.MAP_SHARED, mmap.PROT_READ, offset=int(a[1]))
        try:
            return m[:].hex() or "-"
        finally:
            m.close()
    if cmd == "stats":
        # The library's counters so far, one word per field (see zufs_preload_stats).
        import ctypes
        lib = ctypes.CDLL(None)
        buf = ctypes.create_string_buffer(512)
        lib.zufs_preload_stats(buf, 512)
        return buf.value.decode()
    raise ValueError("unknown command " + cmd)


def main():
    for line in sys.stdin:
        p = line.split()
        if not p:
            continue
        if p[0] == "exit":
            break
        try:
            r = run(p[0], p[1:])
            sys.stdout.write("ok %s\n" % r)
        except OSError as e:
            sys.stdout.write("err %d\n" % e.errno)
        sys.stdout.flush()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Process life under the preload library: dup/dup2/fcntl(F_DUPFD_CLOEXEC)/close/close_range,
fork (the child writes through inherited fds with its own connection) and exec (inherited fds
keep working, close-on-exec ones are gone). Exits 0 when every check passes.

Usage: preload_forkexec.py FILE            (the parent)
       preload_forkexec.py --exec-child FD CLOEXEC_FD INO
"""
import errno
import fcntl
import os
import sys


def check(cond, what):
    if not cond:
        sys.stderr.write("CHECK FAILED: %s\n" % what)
        sys.exit(1)


def exec_child(fd, cfd, ino):
    check(os.pread(fd, 5, 0) == b"PARNT", "exec child reads the parent's data")
    check(os.lseek(fd, 0, os.SEEK_CUR) == 100, "exec child shares the file offset")
    check(os.write(fd, b"POS") == 3, "exec child writes at the shared offset")
    check(os.pwrite(fd, b"EXECD", 20) == 5, "exec child pwrite")
    # The number may have been reused by the interpreter's own start-up; it must not be our file.
    try:
        check(os.fstat(cfd).st_ino != ino, "close-on-exec fd survived exec")
    except OSError as e:
        check(e.errno == errno.EBADF, "close-on-exec fd is EBADF")
    sys.exit(0)


def main(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    check(os.write(fd, b"PARNT") == 5, "write")
    # dup shares the offset.
    d1 = os.dup(fd)
    check(os.lseek(d1, 0, os.SEEK_CUR) == 5, "dup shares the offset")
    check(os.write(d1, b"dup1") == 4, "write via dup")
    d2 = os.dup2(fd, 50)
    check(d2 == 50 and os.write(50, b"dup2") == 4, "write via dup2")
    d3 = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 60)
    check(d3 >= 60 and os.write(d3, b"dupfd") == 5, "write via F_DUPFD_CLOEXEC")
    os.close(fd)
    check(os.pread(d1, 18, 0) == b"PARNTdup1dup2dupfd", "data after closing the original fd")
    os.close(50)
    check(os.fstat(d3).st_size == 18, "fstat via the remaining dup")
    os.close(d3)
    # fork: the child writes new buffers (not in the parent's memory) through inherited fds.
    pid = os.fork()
    if pid == 0:
        try:
            buf = bytes(b"CHILD")
            ok = os.pwrite(d1, buf, 10) == 5 and os.pread(d1, 5, 0) == b"PARNT"
            f2 = os.open(path, os.O_RDWR)
            ok = ok and os.pwrite(f2, bytes(b"child-own-fd"), 30) == 12
            os.close(f2)
            os._exit(0 if ok else 3)
        except BaseException:
            os._exit(4)
    _, st = os.waitpid(pid, 0)
    check(os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0, "fork child succeeded (status %d)" % st)
    check(os.pread(d1, 5, 10) == b"CHILD", "parent sees the fork child's write")
    check(os.pread(d1, 12, 30) == b"child-own-fd", "parent sees the fork child's own fd write")
    # The parent still works after the fork.
    check(os.pwrite(d1, b"AFTER", 42) == 5, "parent writes after fork")
    # exec: an inheritable fd survives, a close-on-exec one does not.
    cfd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    check(os.pread(cfd, 5, 0) == b"PARNT", "read via the cloexec fd")
    os.set_inheritable(d1, True)
    os.lseek(d1, 100, os.SEEK_SET)
    pid = os.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, __file__, "--exec-child", str(d1), str(cfd), str(os.fstat(d1).st_ino)])
    _, st = os.waitpid(pid, 0)
    check(os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0, "exec child succeeded (status %d)" % st)
    check(os.pread(d1, 5, 20) == b"EXECD", "parent sees the exec child's pwrite")
    check(os.pread(d1, 3, 100) == b"POS", "parent sees the exec child's write")
    check(os.lseek(d1, 0, os.SEEK_CUR) == 103, "offset advanced by the exec child")
    # close_range forgets fds: a number reused for /dev/null must reach the kernel.
    os.dup2(d1, 75)
    os.closerange(70, 80)
    null = os.open("/dev/null", os.O_WRONLY)
    os.dup2(null, 75)
    check(os.write(75, b"x" * 7) == 7, "write to /dev/null on a reused fd number")
    check(os.fstat(d1).st_size == 103, "zufs file untouched by the /dev/null write")
    os.close(75)
    os.close(null)
    os.close(cfd)
    os.close(d1)
    print("forkexec ok")


if __name__ == "__main__":
    if sys.argv[1] == "--exec-child":
        exec_child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main(sys.argv[1])

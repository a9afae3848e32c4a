#!/usr/bin/env python3
"""Behaviours real programs and test suites expect of a filesystem (issue 16), one check per
subcommand: `fs_semantics.py CHECK DIR` runs CHECK in DIR (an empty directory, mode 0777) and
prints one line per observation. tests/tests/fuse_semantics.rs runs each check on a tmpfs and on
a pmemfs mount and compares the lines (and some of them with fixed expectations).

Runs as root; the parts about unprivileged users run in a forked child that drops to the user
`tests` (no supplementary groups, no capabilities).
"""

import ctypes
import ctypes.util
import errno
import mmap
import os
import pwd
import stat
import sys
import time

LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def out(*a):
    print(*a, flush=True)


def user_ids(name="tests"):
    p = pwd.getpwnam(name)
    return p.pw_uid, p.pw_gid


def as_user(fn, *args, name="tests"):
    """Runs fn(*args) in a child as `name` (no supplementary groups); returns its result
    as a string ('ok', the value's repr, or the errno name)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            uid, gid = user_ids(name)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            v = fn(*args)
            s = "ok" if v is None else repr(v)
        except OSError as e:
            s = errno.errorcode.get(e.errno, str(e.errno))
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            s = "exception " + repr(e)
        os.write(w, s.encode())
        os._exit(0)
    os.close(w)
    s = b""
    while True:
        b = os.read(r, 4096)
        if not b:
            break
        s += b
    os.close(r)
    os.waitpid(pid, 0)
    return s.decode()


def try_(fn, *a, **k):
    try:
        v = fn(*a, **k)
        return "ok" if v is None else v
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def mode(p):
    return oct(os.lstat(p).st_mode & 0o7777)


def owner(p):
    st = os.lstat(p)
    return f"{st.st_uid}:{st.st_gid}"


def fresh(p, m, size=0, uid=0, gid=0):
    with open(p, "wb") as f:
        if size:
            f.write(b"\0" * size)
    os.chown(p, uid, gid)
    os.chmod(p, m)


# ------------------------------------------------------------------------------------------ 1


# What a writer does to a file, for the set-id and capability checks (items 1 and 17).
def write(p):
    with open(p, "r+b") as f:
        f.write(b"y")


def append(p):
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"x")
    os.close(fd)


def odirect(p):
    fd = os.open(p, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 4096)
    os.writev(fd, [buf])
    os.close(fd)


def truncate(p):
    os.truncate(p, 100)


def otrunc(p):
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))


def check_setid():
    uid, gid = user_ids()

    def ftruncate(p):
        fd = os.open(p, os.O_WRONLY)
        os.ftruncate(fd, 50)
        os.close(fd)

    def falloc(p):
        fd = os.open(p, os.O_WRONLY)
        os.posix_fallocate(fd, 0, 8192)
        os.close(fd)

    def punch(p):
        fd = os.open(p, os.O_WRONLY)
        # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
        r = LIBC.fallocate(fd, 3, ctypes.c_long(0), ctypes.c_long(4096))
        e = ctypes.get_errno()
        os.close(fd)
        if r != 0:
            raise OSError(e, os.strerror(e))

    def mmap_write(p):
        fd = os.open(p, os.O_RDWR)
        m = mmap.mmap(fd, 4096)
        m[0:1] = b"y"
        m.flush()
        m.close()
        os.close(fd)

    ops = [("append", append), ("odirect", odirect), ("truncate", truncate), ("ftruncate", ftruncate),
           ("open-trunc", otrunc), ("fallocate", falloc), ("punch", punch), ("mmap-write", mmap_write)]
    for name, fn in ops:
        for m in (0o6777, 0o6767, 0o4777, 0o2777):
            p = f"{name}-{m:o}"
            fresh(p, m, size=16384)
            r = as_user(fn, p)
            out(f"user {name} on {m:o}: {r} -> {mode(p)}")
    # root (CAP_FSETID) keeps the bits
    for name, fn in ops:
        p = f"root-{name}"
        fresh(p, 0o6777, size=16384)
        fn(p)
        out(f"root {name}: {mode(p)}")
    # chmod by the owner who is not in the file's group drops S_ISGID
    fresh("chmod-nonmember", 0o644, uid=uid, gid=0)
    out("chmod 2755 by owner outside the group:", as_user(os.chmod, "chmod-nonmember", 0o2755), mode("chmod-nonmember"))
    fresh("chmod-member", 0o644, uid=uid, gid=gid)
    out("chmod 2755 by owner in the group:", as_user(os.chmod, "chmod-member", 0o2755), mode("chmod-member"))
    fresh("chmod-root", 0o644, uid=uid, gid=0)
    os.chmod("chmod-root", 0o2755)
    out("chmod 2755 by root:", mode("chmod-root"))
    # chown by root of a setuid file clears the bits of a non-directory
    fresh("chown", 0o6755)
    os.chown("chown", uid, gid)
    out("chown of 6755 by root:", mode("chown"))

    # setgid directories
    nogroup = pwd.getpwnam("nobody").pw_gid
    os.mkdir("sg")
    os.chown("sg", 0, nogroup)
    os.chmod("sg", 0o2777)

    def mk(p, m, umask, is_dir):
        os.umask(umask)
        if is_dir:
            os.mkdir(p, m)
        else:
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY, m))

    for who in ("user", "root"):
        for umask in (0o022, 0o077):
            for is_dir in (False, True):
                for m in (0o2755, 0o0755):
                    p = f"sg/{who}-{umask:o}-{'d' if is_dir else 'f'}-{m:o}"
                    if who == "user":
                        r = as_user(mk, p, m, umask, is_dir)
                    else:
                        old = os.umask(0)
                        mk(p, m, umask, is_dir)
                        os.umask(old)
                        r = "ok"
                    st = os.lstat(p)
                    same_gid = "parent-gid" if st.st_gid == nogroup else f"gid {st.st_gid}"
                    out(f"in setgid dir: {p}: {r} {mode(p)} {same_gid}")
    # a subdirectory made in a setgid directory passes it on
    os.umask(0o022)
    os.mkdir("sg/sub")
    os.mkdir("sg/sub/deeper")
    out("setgid dir grandchild:", mode("sg/sub/deeper"), "parent-gid" if os.lstat("sg/sub/deeper").st_gid == nogroup else "other")
    # mknod of a fifo in a setgid directory
    os.mkfifo("sg/fifo", 0o2755)
    out("fifo in setgid dir:", mode("sg/fifo"), "parent-gid" if os.lstat("sg/fifo").st_gid == nogroup else "other")


# security.capability: VFS_CAP_REVISION_2, effective, CAP_NET_RAW permitted.
CAPS = (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12)


def caps(p):
    try:
        return "caps" if os.getxattr(p, "security.capability") == CAPS else "other caps"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def check_caps():
    """security.capability goes with a write (any writer), a truncate and a chown, as the
    kernel's file_remove_privs does; set-id bits with a chown(-1, -1) (issue 17: the FUSE
    bridge does this under FUSE_HANDLE_KILLPRIV_V2)."""
    uid, gid = user_ids()

    def chown_none(p):
        os.chown(p, -1, -1)

    def chown_user(p):
        os.chown(p, uid, -1)

    ops = [("write", write), ("append", append), ("odirect", odirect), ("truncate", truncate),
           ("open-trunc", otrunc), ("chown -1 -1", chown_none)]
    for name, fn in ops:
        for who in ("user", "root"):
            p = f"{who}-{name.replace(' ', '')}"
            fresh(p, 0o666, size=16384)
            os.setxattr(p, "security.capability", CAPS)
            r = as_user(fn, p) if who == "user" else try_(fn, p)
            out(f"{who} {name}: {r} -> {caps(p)}")
    p = "root-chown"
    fresh(p, 0o666, size=16384)
    os.setxattr(p, "security.capability", CAPS)
    out(f"root chown: {try_(chown_user, p)} -> {caps(p)}")
    # the kernel knows the inode has nothing to clear (S_NOSEC after a first write), then a
    # capability is set: the next write drops it
    p = "nosec"
    fresh(p, 0o666, size=16384)
    out("first write:", as_user(write, p), caps(p))
    os.setxattr(p, "security.capability", CAPS)
    out("write after setcap:", as_user(write, p), caps(p))
    # chown(-1, -1) of set-id files
    for who in ("user", "root"):
        for m in (0o6777, 0o4755, 0o2755, 0o2745):
            p = f"{who}-setid-{m:o}"
            fresh(p, m, size=16384, uid=uid if who == "user" else 0, gid=gid if who == "user" else 0)
            r = as_user(chown_none, p) if who == "user" else try_(chown_none, p)
            out(f"{who} chown -1 -1 on {m:o}: {r} -> {mode(p)}")
    os.mkdir("d")
    os.chmod("d", 0o2777)
    out("chown -1 -1 of a setgid dir:", try_(chown_none, "d"), mode("d"))
    for name, fn in (("chown -1 -1", chown_none), ("chown", chown_user)):
        p = f"fifo-{name.replace(' ', '')}"
        os.mkfifo(p)
        os.chmod(p, 0o6775)
        out(f"{name} of a 6775 fifo:", try_(fn, p), mode(p))


# ------------------------------------------------------------------------------------------ 5


def check_open_unlinked():
    os.mkdir("a")
    os.mkdir("b")
    open("a/x", "w").close()
    fd = os.open("b", os.O_RDONLY | os.O_DIRECTORY)
    os.rename("a", "b")
    st = try_(os.fstat, fd)
    out("dir renamed over, fstat:", st if isinstance(st, str) else f"nlink {st.st_nlink} dir {stat.S_ISDIR(st.st_mode)}")
    out("its readdir:", try_(os.listdir, fd))
    out("fchmod:", try_(os.fchmod, fd, 0o700), try_(lambda: oct(os.fstat(fd).st_mode & 0o7777)))
    out("create in it:", try_(os.open, "n", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    os.close(fd)
    os.mkdir("c")
    fd = os.open("c", os.O_RDONLY | os.O_DIRECTORY)
    os.rmdir("c")
    st = try_(os.fstat, fd)
    out("rmdir'd dir, fstat:", st if isinstance(st, str) else f"nlink {st.st_nlink}")
    out("its readdir:", try_(os.listdir, fd))
    out("fchown:", try_(os.fchown, fd, 1, 1), try_(lambda: owner_fd(fd)))
    os.close(fd)
    # an unlinked file
    f = os.open("f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(f, b"hello world")
    os.unlink("f")
    out("unlinked file nlink:", os.fstat(f).st_nlink)
    out("ftruncate:", try_(os.ftruncate, f, 5), os.fstat(f).st_size)
    out("fchmod:", try_(os.fchmod, f, 0o600), oct(os.fstat(f).st_mode & 0o7777))
    out("pwrite:", try_(os.pwrite, f, b"XY", 8), os.fstat(f).st_size)
    out("pread:", try_(os.pread, f, 100, 0))
    out("fallocate:", try_(os.posix_fallocate, f, 0, 65536), os.fstat(f).st_size)
    # a file replaced by rename
    g = os.open("g", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(g, b"old")
    with open("h", "wb") as h:
        h.write(b"new")
    os.rename("h", "g")
    out("replaced file nlink:", os.fstat(g).st_nlink, "reads", os.pread(g, 10, 0))
    out("path reads", open("g", "rb").read())
    # a second descriptor keeps it after the first is closed
    g2 = os.open("/proc/self/fd/%d" % g, os.O_RDONLY)
    os.close(g)
    out("second fd after first closed:", os.pread(g2, 10, 0), os.fstat(g2).st_nlink)
    os.close(g2)
    os.close(f)
    out("left:", sorted(os.listdir(".")))


def owner_fd(fd):
    st = os.fstat(fd)
    return f"{st.st_uid}:{st.st_gid}"


# ------------------------------------------------------------------------------------------ 6


def xsize(path, name):
    n = LIBC.getxattr(path.encode(), name.encode(), None, ctypes.c_size_t(0))
    return n if n >= 0 else errno.errorcode[ctypes.get_errno()]


def lsize(path):
    n = LIBC.listxattr(path.encode(), None, ctypes.c_size_t(0))
    return n if n >= 0 else errno.errorcode[ctypes.get_errno()]


def check_xattrs():
    open("x", "w").close()
    out("empty list:", os.listxattr("x"), "size", lsize("x"))
    out("missing:", try_(os.getxattr, "x", "user.nope"), "size query", xsize("x", "user.nope"))
    out("replace missing:", try_(os.setxattr, "x", "user.a", b"1", os.XATTR_REPLACE))
    out("create:", try_(os.setxattr, "x", "user.a", b"1", os.XATTR_CREATE))
    out("create existing:", try_(os.setxattr, "x", "user.a", b"2", os.XATTR_CREATE))
    out("replace:", try_(os.setxattr, "x", "user.a", b"22", os.XATTR_REPLACE), os.getxattr("x", "user.a"))
    out("size query:", xsize("x", "user.a"), "list size", lsize("x"))
    out("empty value:", try_(os.setxattr, "x", "user.empty", b""), try_(os.getxattr, "x", "user.empty"),
        xsize("x", "user.empty"))
    buf = ctypes.create_string_buffer(1)
    n = LIBC.getxattr(b"x", b"user.a", buf, ctypes.c_size_t(1))
    out("too small buffer:", n if n >= 0 else errno.errorcode[ctypes.get_errno()])
    out("remove:", try_(os.removexattr, "x", "user.a"), try_(os.removexattr, "x", "user.empty"), os.listxattr("x"),
        "size", lsize("x"))
    out("remove missing:", try_(os.removexattr, "x", "user.a"))
    n = 1000
    res = set()
    for i in range(n):
        res.add(try_(os.setxattr, "x", f"user.attr{i:04d}", b"value%d" % i))
    out("set 1000:", sorted(res))
    names = os.listxattr("x")
    out("listed:", len(names), "size", lsize("x"))
    bad = [i for i in range(n) if try_(os.getxattr, "x", f"user.attr{i:04d}") != b"value%d" % i]
    out("wrong values:", bad[:5])
    for i in range(n):
        os.removexattr("x", f"user.attr{i:04d}")
    out("after removing all:", os.listxattr("x"), lsize("x"))
    out("3000-byte value:", try_(os.setxattr, "x", "user.big", b"v" * 3000), len(os.getxattr("x", "user.big")))
    out("name of 255:", try_(os.setxattr, "x", "user." + "n" * 250, b"1"), "256:",
        try_(os.setxattr, "x", "user." + "n" * 251, b"1"))
    out("trusted:", try_(os.setxattr, "x", "trusted.t", b"1"), try_(os.getxattr, "x", "trusted.t"))
    out("security:", try_(os.setxattr, "x", "security.s", b"1"), try_(os.getxattr, "x", "security.s"))
    out("unknown namespace:", try_(os.setxattr, "x", "bogus.b", b"1"))
    os.symlink("x", "l")
    out("user on symlink:", try_(os.setxattr, "l", "user.u", b"1", follow_symlinks=False))
    os.chmod("x", 0o644)
    out("user, not owner, read:", as_user(os.getxattr, "x", "user.big") == repr(b"v" * 3000))
    out("user, not owner, write:", as_user(os.setxattr, "x", "user.w", b"1"))
    out("user, list:", as_user(lambda: sorted(n[:12] for n in os.listxattr("x"))))
    os.chmod("x", 0o666)
    out("user, writable, write:", as_user(os.setxattr, "x", "user.w", b"1"))
    out("user, trusted write:", as_user(os.setxattr, "x", "trusted.w", b"1"))


# ------------------------------------------------------------------------------------------ 7


def check_mmap_odirect():
    with open("f", "wb") as f:
        f.write(b"a" * 8192)
    fd = os.open("f", os.O_RDWR | os.O_DIRECT)
    m = try_(mmap.mmap, fd, 8192, mmap.MAP_SHARED)
    out("shared mmap of an O_DIRECT fd:", "ok" if isinstance(m, mmap.mmap) else m)
    if isinstance(m, mmap.mmap):
        m[0:5] = b"hello"
        m.flush()
        out("read back:", open("f", "rb").read(5), "mapped reads", m[4096:4100])
        m.close()
    ro = os.open("f", os.O_RDONLY | os.O_DIRECT)
    m = try_(mmap.mmap, ro, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ)
    out("private read mmap of an O_DIRECT fd:", m[0:5] if isinstance(m, mmap.mmap) else m)
    os.close(ro)
    os.close(fd)


# ------------------------------------------------------------------------------------------ 10


def check_devices():
    out("mknod char:", try_(os.mknod, "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3)))
    out("mknod zero:", try_(os.mknod, "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5)))
    out("mknod block:", try_(os.mknod, "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 200)))
    st = os.lstat("blk")
    out("block node:", stat.S_ISBLK(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev))
    st = os.lstat("null")
    out("char node:", stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev))

    def w():
        with open("null", "wb") as f:
            f.write(b"discard me")

    out("write to null node:", try_(w))

    def r():
        with open("zero", "rb") as f:
            return f.read(4)

    out("read zero node:", try_(r))
    fd = try_(os.open, "zero", os.O_RDONLY)
    out("open char node:", "ok" if isinstance(fd, int) else fd)
    out("user mknod char:", as_user(os.mknod, "u", 0o666 | stat.S_IFCHR, os.makedev(1, 3)))


# ------------------------------------------------------------------------------------------ 3


class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]


def name_to_handle(path):
    fh = FileHandle()
    fh.handle_bytes = 128
    mid = ctypes.c_int()
    r = LIBC.name_to_handle_at(-100, path.encode(), ctypes.byref(fh), ctypes.byref(mid), 0)
    if r != 0:
        raise OSError(ctypes.get_errno(), "name_to_handle_at")
    return fh


def open_by_handle(mount_fd, fh, flags=os.O_RDONLY):
    r = LIBC.open_by_handle_at(mount_fd, ctypes.byref(fh), flags)
    if r < 0:
        raise OSError(ctypes.get_errno(), "open_by_handle_at")
    return r


def check_handles_save():
    """Writes files and their handles (to DIR/../handles), then opens them by handle."""
    os.mkdir("d")
    with open("d/f", "wb") as f:
        f.write(b"by handle")
    saved = {}
    for p in ("d/f", "d", "."):
        fh = try_(name_to_handle, p)
        out("name_to_handle_at", p, "ok" if isinstance(fh, FileHandle) else fh)
        if isinstance(fh, FileHandle):
            saved[p] = bytes(fh)
    mfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    for p, b in saved.items():
        fh = FileHandle.from_buffer_copy(b)
        fd = try_(open_by_handle, mfd, fh)
        if isinstance(fd, int):
            what = os.pread(fd, 20, 0) if p == "d/f" else sorted(os.listdir(fd))
            os.close(fd)
            out("open_by_handle_at", p, what)
        else:
            out("open_by_handle_at", p, fd)
    os.close(mfd)
    with open("../handles", "wb") as f:
        for p, b in saved.items():
            f.write(p.encode() + b"\0" + b.hex().encode() + b"\n")


def check_handles_reopen():
    """After a remount: opens the handles check_handles_save wrote; then removes d/f and
    checks the old handle is stale."""
    mfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    saved = {}
    for line in open("../handles", "rb").read().splitlines():
        p, h = line.split(b"\0")
        saved[p.decode()] = FileHandle.from_buffer_copy(bytes.fromhex(h.decode()))
    # drop the kernel's caches so that the handles are looked up by the filesystem
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
    for p, fh in saved.items():
        fd = try_(open_by_handle, mfd, fh)
        if isinstance(fd, int):
            what = os.pread(fd, 20, 0) if p == "d/f" else sorted(os.listdir(fd))
            if p == "d":
                # ".." of a directory opened by handle
                what = (what, sorted(os.listdir(os.open("..", os.O_RDONLY, dir_fd=fd))))
            os.close(fd)
            out("after remount, open_by_handle_at", p, what)
        else:
            out("after remount, open_by_handle_at", p, fd)
    os.unlink("d/f")
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
    out("removed file by handle:", try_(open_by_handle, mfd, saved["d/f"]))
    os.close(mfd)


# ------------------------------------------------------------------------------------------ 4


def check_atime(policy):
    """`policy`: relatime, strictatime or noatime (what the mount was given)."""
    with open("f", "wb") as f:
        f.write(b"data")
    old = time.time() - 3 * 86400
    # atime older than mtime: relatime updates
    os.utime("f", (time.time() - 1000, time.time() - 10))
    a0 = os.stat("f").st_atime
    open("f", "rb").read()
    a1 = os.stat("f").st_atime
    out("read, atime < mtime:", "updated" if a1 > a0 else "kept")
    # atime newer than mtime and ctime (the read above), recent: relatime keeps; strictatime
    # updates
    time.sleep(0.05)
    a0 = os.stat("f").st_atime
    open("f", "rb").read()
    a1 = os.stat("f").st_atime
    out("read, atime > mtime, recent:", "updated" if a1 > a0 else "kept")
    # atime more than a day old
    os.utime("f", (old, old - 10))
    a0 = os.stat("f").st_atime
    open("f", "rb").read()
    a1 = os.stat("f").st_atime
    out("read, atime a day old:", "updated" if a1 > a0 else "kept")
    # readdir of a directory
    os.mkdir("d")
    os.utime("d", (old, old - 10))
    a0 = os.stat("d").st_atime
    os.listdir("d")
    a1 = os.stat("d").st_atime
    out("readdir, atime a day old:", "updated" if a1 > a0 else "kept")
    out("policy", policy)


# ------------------------------------------------------------------------------------------ 8


def check_copy_file_range():
    with open("src", "wb") as f:
        f.write(bytes(range(256)) * 64)
    s = os.open("src", os.O_RDWR)
    d = os.open("dst", os.O_RDWR | os.O_CREAT, 0o644)
    out("copy 10000:", try_(os.copy_file_range, s, d, 10000, 100, 0), os.pread(d, 4, 0))
    out("dst size:", os.fstat(d).st_size)
    out("src past EOF:", try_(os.copy_file_range, s, d, 100, 1 << 20, 0))
    out("overlap in one file:", try_(os.copy_file_range, s, s, 1000, 0, 500))
    out("no overlap in one file:", try_(os.copy_file_range, s, s, 100, 0, 8000), os.pread(s, 4, 8000))
    ro = os.open("dst", os.O_RDONLY)
    out("read-only destination:", try_(os.copy_file_range, s, ro, 10, 0, 0))
    ap = os.open("dst", os.O_WRONLY | os.O_APPEND)
    out("append-only destination:", try_(os.copy_file_range, s, ap, 10, 0, 0))
    wo = os.open("src", os.O_WRONLY)
    out("write-only source:", try_(os.copy_file_range, wo, d, 10, 0, 0))
    out("flags:", try_(os.copy_file_range, s, d, 10, 0, 0, 1) if sys.version_info >= (3, 13) else "n/a")
    os.mkdir("dir")
    dfd = os.open("dir", os.O_RDONLY)
    out("directory source:", try_(os.copy_file_range, dfd, d, 10, 0, 0))
    for x in (ro, ap, wo, dfd, s, d):
        os.close(x)


def facl(*args):
    """Runs setfacl/getfacl; returns 'ok' or the tool's first error line, or getfacl's entries."""
    import subprocess
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        err = r.stderr.strip().splitlines()
        return "error: " + (err[0].split(": ")[-1] if err else str(r.returncode))
    if args[0] == "getfacl":
        return " ".join(l for l in r.stdout.splitlines() if l and not l.startswith("#"))
    return "ok"


def acl_xattrs(p):
    return sorted(n for n in os.listxattr(p, follow_symlinks=False) if n.startswith("system.posix_acl"))


def check_acl():
    uid, gid = user_ids()

    def can(p, flags):
        def f():
            os.close(os.open(p, flags))
        return as_user(f)

    # Access ACL on a file: stored as system.posix_acl_access, mode's group bits are the mask.
    fresh("f", 0o640)
    out("setfacl u:tests:rw:", facl("setfacl", "-m", "u:tests:rw", "f"), mode("f"), acl_xattrs("f"))
    out("getfacl:", facl("getfacl", "-c", "f"))
    out("user write with ACL entry:", can("f", os.O_WRONLY))
    fresh("g", 0o644)
    out("setfacl u:tests:---:", facl("setfacl", "-m", "u:tests:---", "g"), mode("g"))
    out("user read denied by ACL entry:", can("g", os.O_RDONLY))
    # chmod rewrites the mask; the named entry is then masked.
    os.chmod("f", 0o604)
    out("chmod 604:", mode("f"), facl("getfacl", "-c", "f"))
    out("user write after chmod:", can("f", os.O_WRONLY))
    os.chmod("f", 0o664)
    out("chmod 664:", mode("f"), facl("getfacl", "-c", "f"))
    # The mask entry set directly moves the mode's group bits.
    out("setfacl m::r:", facl("setfacl", "-m", "m::r", "f"), mode("f"))
    out("user write with mask r:", can("f", os.O_WRONLY))
    # An ACL equivalent to a mode is a mode.
    out("setfacl -b:", facl("setfacl", "-b", "f"), mode("f"), acl_xattrs("f"), facl("getfacl", "-c", "f"))
    out("setfacl u::rwx,g::r-x,o::-:", facl("setfacl", "--set", "u::rwx,g::r-x,o::---", "f"), mode("f"), acl_xattrs("f"))
    # Group entries, and another user may not set an ACL.
    fresh("h", 0o600)
    out("setfacl g:tests:r:", facl("setfacl", "-m", f"g:{gid}:r", "h"), mode("h"))
    out("user read by group entry:", can("h", os.O_RDONLY))
    out("user setfacl on root's file:", as_user(lambda: facl("setfacl", "-m", "u:tests:rwx", "h")))
    # Setting an ACL clears S_ISGID when the owner is outside the file's group (and not root).
    fresh("sg", 0o2770, uid=uid, gid=0)
    out("user setfacl on own setgid file, other group:",
        as_user(lambda: facl("setfacl", "-m", "u:nobody:r", "sg")), mode("sg"))
    fresh("sg2", 0o2770, uid=uid, gid=gid)
    out("user setfacl on own setgid file, own group:",
        as_user(lambda: facl("setfacl", "-m", "u:nobody:r", "sg2")), mode("sg2"))
    fresh("sg3", 0o2770, uid=uid, gid=0)
    out("root setfacl on setgid file:", facl("setfacl", "-m", "u:nobody:r", "sg3"), mode("sg3"))
    # Default ACLs: inherited on create (the umask is ignored then), by subdirectories as both.
    os.mkdir("d", 0o755)
    out("setfacl -d:", facl("setfacl", "-d", "-m", "u:tests:rwx", "d"), acl_xattrs("d"))
    out("getfacl d:", facl("getfacl", "-c", "d"))
    old = os.umask(0o077)
    os.close(os.open("d/f", os.O_CREAT | os.O_WRONLY, 0o666))
    os.mkdir("d/sub", 0o777)
    os.mknod("d/fifo", 0o640 | stat.S_IFIFO)
    os.symlink("f", "d/link")
    os.umask(old)
    for n in ("d/f", "d/sub", "d/fifo"):
        out("inherited", n, mode(n), acl_xattrs(n), facl("getfacl", "-c", n))
    out("symlink:", os.path.islink("d/link"))
    out("user write in d/f:", can("d/f", os.O_WRONLY))
    os.chmod("d", 0o777)

    def ucreate():
        os.umask(0o022)
        os.close(os.open("d/sub/byuser", os.O_CREAT | os.O_WRONLY, 0o640))
        return mode("d/sub/byuser")
    out("user create in d/sub:", as_user(ucreate), facl("getfacl", "-c", "d/sub/byuser"))
    # Without a default ACL the umask applies.
    os.mkdir("plain", 0o777)
    old = os.umask(0o027)
    os.close(os.open("plain/f", os.O_CREAT | os.O_WRONLY, 0o666))
    os.mkdir("plain/d", 0o777)
    os.umask(old)
    out("umask without default ACL:", mode("plain/f"), mode("plain/d"), acl_xattrs("plain/f"))
    # Removing the default ACL.
    out("setfacl -k:", facl("setfacl", "-k", "d"), acl_xattrs("d"))


CHECKS = {
    "setid": check_setid,
    "caps": check_caps,
    "open_unlinked": check_open_unlinked,
    "xattrs": check_xattrs,
    "mmap_odirect": check_mmap_odirect,
    "devices": check_devices,
    "handles_save": check_handles_save,
    "handles_reopen": check_handles_reopen,
    "atime": check_atime,
    "copy_file_range": check_copy_file_range,
    "acl": check_acl,
}

if __name__ == "__main__":
    os.chdir(sys.argv[2])
    os.umask(0o022)
    CHECKS[sys.argv[1]](*sys.argv[3:])

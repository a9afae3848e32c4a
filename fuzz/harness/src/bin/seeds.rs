//! `zufs-fuzz-seeds DIR`: writes the seed corpora, `DIR/<target>/seed-NNN`, from real requests
//! (what zus-client, the FUSE bridge and zufs send), encoded in each target's input format.
#![allow(clippy::cast_possible_truncation)]

use std::path::Path;

use zufs_fuzz_harness::adapter::{self, data, encode_op, req};
use zufs_fuzz_harness::{control, dispatch, fuse, image};
use zus_api::ops::*;

fn hdr(op: OpCode, in_len: usize, data_len: usize, ticket: u64) -> OpHeader {
    OpHeader {
        opcode: op as u32,
        mount_id: 1,
        in_len: in_len as u32,
        data_len: data_len as u32,
        seq: 1,
        ticket,
        ..OpHeader::default()
    }
}

fn io(ino: u64, offset: u64, len: u64, kind: u32, niov: u32) -> IoReq {
    IoReq { ino, fh: 0, offset, len, flags: 0, data_kind: kind, niov, reserved: 0 }
}

fn iovs(v: &[(u64, u64)]) -> Vec<u8> {
    v.iter().flat_map(|&(addr, len)| IoVec { addr, len }.as_bytes().to_vec()).collect()
}

/// (op, payload, window bytes) of a request zus-client sends.
type Op = (OpCode, Vec<u8>, Vec<u8>);

fn ops() -> Vec<Op> {
    let name = |dir: u64, n: &[u8]| req(&NameReq { dir, name_len: n.len() as u32, reserved: 0 }, &[n]);
    let create = |dir: u64, n: &[u8], mode: u32| {
        req(&CreateReq { dir, mode, rdev: 0, flags: 0, name_len: n.len() as u32 }, &[n])
    };
    let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let mut w_iov = req(&io(2, 0, 300, DATA_REMOTE_IOV, 2), &[]);
    w_iov.extend_from_slice(&iovs(&[(0x1000, 100), (0x2000, 200)]));
    let mut r_iov = req(&io(2, 0, 4096, DATA_REMOTE_IOV, 1), &[]);
    r_iov.extend_from_slice(&iovs(&[(0x1000, 4096)]));
    vec![
        (OpCode::Noop, vec![], vec![]),
        (OpCode::Statfs, vec![], vec![]),
        (OpCode::Sync, vec![], vec![]),
        (OpCode::Lookup, name(1, b"f"), vec![]),
        (OpCode::Getattr, req(&InoReq { ino: 1 }, &[]), vec![]),
        (
            OpCode::Setattr,
            req(
                &SetattrReq {
                    ino: 2,
                    valid: setattr::SIZE | setattr::MODE,
                    mode: 0o600,
                    size: 10,
                    ..SetattrReq::default()
                },
                &[],
            ),
            vec![],
        ),
        (OpCode::Create, create(1, b"f", 0o100644), vec![]),
        (OpCode::Mknod, create(1, b"fifo", 0o10644), vec![]),
        (OpCode::Mkdir, create(1, b"d", 0o40755), vec![]),
        (OpCode::Unlink, name(1, b"f"), vec![]),
        (OpCode::Rmdir, name(1, b"d"), vec![]),
        (
            OpCode::Rename,
            req(&RenameReq { old_dir: 1, new_dir: 1, flags: 0, old_len: 1, new_len: 2, reserved: 0 }, &[b"f", b"f2"]),
            vec![],
        ),
        (OpCode::Link, req(&LinkReq { ino: 2, new_dir: 1, name_len: 4, reserved: 0 }, &[b"hard"]), vec![]),
        (OpCode::Symlink, req(&SymlinkReq { dir: 1, name_len: 1, target_len: 4 }, &[b"l", b"/tmp"]), vec![]),
        (OpCode::Readlink, req(&InoReq { ino: 3 }, &[]), vec![]),
        (OpCode::Readdir, req(&ReaddirReq { dir: 1, cookie: 0 }, &[]), vec![]),
        (OpCode::Open, req(&OpenReq { ino: 2, flags: 2, reserved: 0 }, &[]), vec![]),
        (OpCode::Release, req(&ReleaseReq { ino: 2, fh: 0 }, &[]), vec![]),
        (OpCode::Write, req(&io(2, 0, data.len() as u64, DATA_WINDOW, 0), &[]), data.clone()),
        (OpCode::Write, req(&io(2, 100, 1000, DATA_WINDOW_STREAM, 0), &[]), data[..1000].to_vec()),
        (OpCode::Write, w_iov, vec![]),
        (OpCode::Read, req(&io(2, 0, 4096, DATA_WINDOW, 0), &[]), vec![]),
        (OpCode::Read, req(&io(2, 0, 4096, DATA_WINDOW_STREAM, 0), &[]), vec![]),
        (OpCode::Read, r_iov, vec![]),
        (OpCode::Fsync, req(&FsyncReq { ino: 2, fh: 0, datasync: 1, reserved: 0 }, &[]), vec![]),
        (OpCode::Fallocate, req(&FallocateReq { ino: 2, offset: 0, len: 8192, mode: 0, reserved: 0 }, &[]), vec![]),
        (
            OpCode::Setxattr,
            req(&XattrReq { ino: 2, name_len: 6, flags: 0, size: 5, reserved: 0 }, &[b"user.a"]),
            b"value".to_vec(),
        ),
        (
            OpCode::Getxattr,
            req(&XattrReq { ino: 2, name_len: 6, flags: 0, size: 64, reserved: 0 }, &[b"user.a"]),
            vec![],
        ),
        (OpCode::Listxattr, req(&XattrReq { ino: 2, name_len: 0, flags: 0, size: 64, reserved: 0 }, &[]), vec![]),
        (
            OpCode::Removexattr,
            req(&XattrReq { ino: 2, name_len: 6, flags: 0, size: 0, reserved: 0 }, &[b"user.a"]),
            vec![],
        ),
        (OpCode::Map, req(&MapReq { ino: 2, offset: 0, len: 8192, write: 1, reserved: 0 }, &[]), vec![]),
        (OpCode::MapDone, req(&MapDoneReq { ino: 2, end: 8192, sync: 0, reserved: 0 }, &[]), vec![]),
        (OpCode::Forget, req(&ForgetReq { ino: 2, nlookup: 1 }, &[]), vec![]),
        (OpCode::KernelCache, req(&KernelCacheReq { ino: 2, on: 1, reserved: 0 }, &[]), vec![]),
        (OpCode::Ticket, req(&TicketReq { ino: 2, ticket: 0, uid: 1000, writable: 1 }, &[]), vec![]),
        (
            OpCode::CopyFileRange,
            req(
                &CopyFileRangeReq {
                    ino_in: 2,
                    fh_in: 0,
                    off_in: 0,
                    ino_out: 3,
                    fh_out: 0,
                    off_out: 4096,
                    len: 8192,
                    flags: 0,
                    reserved: 0,
                },
                &[],
            ),
            vec![],
        ),
    ]
}

fn dispatch_seeds() -> Vec<Vec<u8>> {
    let one = |op: &Op, ticket: u64| {
        let data_len = if matches!(op.0, OpCode::Write | OpCode::Setxattr) { op.2.len() } else { 0 };
        (hdr(op.0, op.1.len(), data_len, ticket), op.1.clone(), op.2.clone())
    };
    let all = ops();
    let mut out = Vec::new();
    for (i, op) in all.iter().enumerate() {
        // Each op from the bridge (client 0); a rotation of the others from the other clients.
        out.push(dispatch::encode(0, &[one(op, 0)]));
        let c = 1 + (i % 3) as u8;
        out.push(dispatch::encode(c, &[one(op, if c == 2 { 1 + (i % 3) as u64 } else { 0 })]));
    }
    // Four slots at once: create, write, read, readdir.
    let by = |o: OpCode| all.iter().find(|x| x.0 == o).unwrap();
    out.push(dispatch::encode(
        1,
        &[one(by(OpCode::Create), 0), one(by(OpCode::Write), 0), one(by(OpCode::Read), 0), one(by(OpCode::Readdir), 0)],
    ));
    // A read-only mount.
    let mut h = one(by(OpCode::Mkdir), 0);
    h.0.mount_id = 2;
    out.push(dispatch::encode(0, &[h]));
    out
}

fn adapter_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    // The populate ops replayed on the populated image (EEXIST and friends).
    out.push(adapter::populate().concat());
    for (op, payload, window) in ops() {
        // Inode 3 is /f on the adapter's image, 5 is /d/g; 4 the symlink.
        let payload = retarget(op, payload);
        let (flags, iov): (u8, Vec<(u16, u16)>) = match op {
            OpCode::Write | OpCode::Read if io_kind(&payload) == DATA_REMOTE_IOV => {
                (data::REMOTE, vec![(0, 100), (512, 200)])
            }
            OpCode::Write | OpCode::Read if io_kind(&payload) == DATA_WINDOW_STREAM => (data::STREAM, vec![]),
            OpCode::Write
            | OpCode::Read
            | OpCode::Setxattr
            | OpCode::Getxattr
            | OpCode::Listxattr
            | OpCode::Readdir
            | OpCode::Readlink => (data::WINDOW, vec![]),
            _ => (data::NONE, vec![]),
        };
        let wl = if flags == data::NONE || flags == data::REMOTE { 0 } else { 4096u16.max(window.len() as u16) };
        out.push(encode_op(op as u32, flags, &payload, &window, wl, &iov));
        out.push(encode_op(op as u32, flags | data::USER, &payload, &window, wl, &iov));
    }
    out
}

fn io_kind(p: &[u8]) -> u32 {
    IoReq::read_from(p).map_or(u32::MAX, |r| r.data_kind)
}

/// The dispatch seeds' inode numbers moved onto the adapter image's (/f is 3, the symlink 4).
fn retarget(op: OpCode, mut p: Vec<u8>) -> Vec<u8> {
    let ino_first = !matches!(
        op,
        OpCode::Lookup
            | OpCode::Create
            | OpCode::Mknod
            | OpCode::Mkdir
            | OpCode::Unlink
            | OpCode::Rmdir
            | OpCode::Rename
            | OpCode::Symlink
            | OpCode::Readdir
    );
    if ino_first && p.len() >= 8 {
        let ino = u64::from_le_bytes(p[..8].try_into().unwrap());
        let new = match (op, ino) {
            (OpCode::Readlink, _) => 4,
            (_, 2) => 3,
            (_, x) => x,
        };
        p[..8].copy_from_slice(&new.to_le_bytes());
    }
    p
}

fn image_seeds() -> Vec<Vec<u8>> {
    let geo = image::geometry();
    let sb = 0u32; // metadata offsets count from the superblock
    let inode = |ino: u64, field: u64| (geo.inode_off(ino) - pmemfs::layout::SB_OFF + field) as u32;
    let data_blk = |b: u64, off: u64| image::ANYWHERE | (b * pmemfs::layout::BLOCK + off) as u32;
    vec![
        image::encode(0, &[]),
        image::encode(0, &[(sb + 48, vec![0xff])]),
        image::encode(image::FIX_CHECKSUMS, &[(sb + 48, vec![0x10, 0, 0, 0, 0, 0, 0, 0])]),
        image::encode(image::FIX_CHECKSUMS, &[(sb + 80, vec![0, 0, 0, 0])]),
        image::encode(image::FIX_CHECKSUMS, &[(inode(1, 36), vec![7])]),
        image::encode(image::FIX_CHECKSUMS, &[(inode(2, 32), vec![0xa4, 0x81])]),
        image::encode(image::FIX_CHECKSUMS, &[(inode(2, 0), vec![0xff; 8])]),
        image::encode(image::FIX_CHECKSUMS, &[(inode(3, 80), vec![1, 0, 0, 0, 0, 0, 0, 0])]),
        image::encode(image::FIX_CHECKSUMS, &[(inode(3, 120), vec![0xaa; 16])]),
        image::encode(image::FIX_CHECKSUMS, &[(inode(3, 72), vec![3, 0, 0, 0, 0, 0, 0, 0])]),
        image::encode(image::FIX_CHECKSUMS, &[(inode(4, 64), vec![9])]),
        image::encode(0, &[(data_blk(geo.data_blk, 0), vec![0x42; 32])]),
        image::encode(0, &[(data_blk(geo.data_blk + 1, 8), vec![200])]),
        image::encode(0, &[((geo.journal_off() - pmemfs::layout::SB_OFF) as u32, vec![1; 64])]),
        image::encode(0, &[((geo.bitmap_off() - pmemfs::layout::SB_OFF) as u32, vec![0xff; 16])]),
    ]
}

fn control_seeds() -> Vec<Vec<u8>> {
    use zus_channel::control::Request as C;
    let hello = C::Hello { features: zus_api::features::ALL, required: 0, name: "zufs".into() };
    let bridge = C::Hello {
        features: zus_api::features::ALL | zus_api::features::KERNEL_BRIDGE,
        required: zus_api::features::REMOTE_IOV,
        name: "zufs-fuse".into(),
    };
    let mount = C::Mount { fs_type: "nullfs".into(), device: String::new(), options: "sync".into() };
    let mut out = vec![
        control::encode(&[hello.clone()]),
        control::encode(&[hello.clone(), C::ListFs, C::Status]),
        control::encode(&[bridge, mount.clone(), C::Attach { mount_id: 1 }, C::Status, C::Unmount { mount_id: 1 }]),
        control::encode(&[
            hello.clone(),
            C::Mount { fs_type: "pmemfs".into(), device: "/nonexistent".into(), options: String::new() },
        ]),
        control::encode(&[hello.clone(), C::Attach { mount_id: 9 }, C::Unmount { mount_id: 9 }, hello.clone()]),
        control::encode(&[C::Status]),
        control::encode(&[C::Hello { features: 0, required: 1 << 40, name: String::new() }]),
    ];
    // A raw message: a header whose version is off.
    let mut raw = control::frame(br#"{"req":"status"}"#);
    raw[8] = 99;
    let mut o = vec![0u8];
    zufs_fuzz_harness::put_chunk(&mut o, &raw);
    out.push(o);
    out
}

fn fuse_seeds() -> Vec<Vec<u8>> {
    use zufs_fuse::abi::{self, op};
    let b = |v: &dyn Fn() -> Vec<u8>| v();
    let s = |x: &[u8]| x.to_vec();
    let init = abi::InitIn { major: 7, minor: 40, max_readahead: 1 << 17, flags: 0, flags2: 0, ..Default::default() };
    let w = abi::WriteIn { size: 5, ..Default::default() };
    let cases: Vec<(u32, Vec<u8>, Vec<u8>)> = vec![
        (op::INIT, s(abi::bytes_of(&init)), vec![]),
        (op::LOOKUP, vec![], s(b"name\0")),
        (op::GETATTR, s(abi::bytes_of(&abi::GetattrIn::default())), vec![]),
        (op::SETATTR, s(abi::bytes_of(&abi::SetattrIn { valid: 8, size: 10, ..Default::default() })), vec![]),
        (op::MKDIR, s(abi::bytes_of(&abi::MkdirIn { mode: 0o755, umask: 0o22 })), s(b"d\0")),
        (op::MKNOD, s(abi::bytes_of(&abi::MknodIn { mode: 0o10644, ..Default::default() })), s(b"p\0")),
        (op::SYMLINK, vec![], s(b"l\0/target\0")),
        (op::RENAME, s(abi::bytes_of(&abi::RenameIn { newdir: 1 })), s(b"a\0b\0")),
        (op::RENAME2, s(abi::bytes_of(&abi::Rename2In { newdir: 1, flags: 1, padding: 0 })), s(b"a\0b\0")),
        (op::LINK, s(abi::bytes_of(&abi::LinkIn { oldnodeid: 2 })), s(b"h\0")),
        (op::OPEN, s(abi::bytes_of(&abi::OpenIn { flags: 2, open_flags: 0 })), vec![]),
        (op::READ, s(abi::bytes_of(&abi::ReadIn { size: 4096, ..Default::default() })), vec![]),
        (op::WRITE, s(abi::bytes_of(&w)), s(b"hello")),
        (op::RELEASE, s(abi::bytes_of(&abi::ReleaseIn::default())), vec![]),
        (op::SETXATTR, s(abi::bytes_of(&abi::SetxattrIn { size: 3, flags: 0 })), s(b"user.a\0abc")),
        (op::GETXATTR, s(abi::bytes_of(&abi::GetxattrIn { size: 64, padding: 0 })), s(b"user.a\0")),
        (op::LISTXATTR, s(abi::bytes_of(&abi::GetxattrIn { size: 64, padding: 0 })), vec![]),
        (op::REMOVEXATTR, vec![], s(b"user.a\0")),
        (
            op::CREATE,
            s(abi::bytes_of(&abi::CreateIn { flags: 0o100, mode: 0o644, umask: 0o22, open_flags: 0 })),
            s(b"c\0"),
        ),
        (
            op::BATCH_FORGET,
            s(abi::bytes_of(&abi::BatchForgetIn { count: 2, dummy: 0 })),
            b(&|| {
                let mut v = s(abi::bytes_of(&abi::ForgetOne { nodeid: 2, nlookup: 1 }));
                v.extend_from_slice(abi::bytes_of(&abi::ForgetOne { nodeid: 3, nlookup: 2 }));
                v
            }),
        ),
        (op::IOCTL, s(abi::bytes_of(&abi::IoctlIn { in_size: 4, ..Default::default() })), s(b"abcd")),
        (op::FALLOCATE, s(abi::bytes_of(&abi::FallocateIn { length: 4096, ..Default::default() })), vec![]),
        (op::LSEEK, s(abi::bytes_of(&abi::LseekIn { whence: 3, ..Default::default() })), vec![]),
        (op::COPY_FILE_RANGE, s(abi::bytes_of(&abi::CopyFileRangeIn::default())), vec![]),
        (op::READDIRPLUS, s(abi::bytes_of(&abi::ReadIn { size: 4096, ..Default::default() })), vec![]),
        (op::STATFS, vec![], vec![]),
        (op::DESTROY, vec![], vec![]),
    ];
    let mut out = Vec::new();
    for (o, a, r) in &cases {
        out.push(fuse::encode_dev(*o, 1, a, r));
        out.push(fuse::encode_ring(*o, a, r));
    }
    out
}

fn write(dir: &Path, target: &str, seeds: &[Vec<u8>]) {
    let d = dir.join(target);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(d.join(format!("seed-{i:03}")), s).unwrap();
    }
    println!("{target}: {} seeds", seeds.len());
}

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "seeds".into());
    let dir = Path::new(&dir);
    write(dir, "dispatch", &dispatch_seeds());
    write(dir, "adapter", &adapter_seeds());
    write(dir, "pmemfs_image", &image_seeds());
    write(dir, "control", &control_seeds());
    write(dir, "fuse_decode", &fuse_seeds());
}

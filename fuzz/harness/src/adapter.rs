//! The Rust plugin adapter's decoding (`zus_plugin::adapter::op::<PmemFs>`), with fuzzed op
//! calls over a pmemfs mounted in memory.
//!
//! The adapter is the C boundary of every Rust plugin: it gets an `OpCall` (header, request
//! bytes, reply buffer, data descriptor) and decodes the request itself with
//! `zus_api::request::Request::decode`. zusd validated the request first, but a C caller (or a
//! zusd bug) may hand it anything that respects the call's memory contract, so the harness
//! sends requests zusd would refuse too.
//!
//! Each input runs on a fresh copy of one image: a 1 MiB pmemfs (256 inodes) holding `/d`
//! (ino 2), `/f` (ino 3: 5,000 bytes and a `user.a` xattr), `/l` (ino 4, a symlink to
//! `target`) and `/d/g` (ino 5), made through the adapter itself. The C entries do all of it:
//! `mount` on the copy, up to [`MAX_OPS`] `op` calls, `unmount`.
//!
//! One op: `u8` op code, `u8` flags (bits 0-1 the data descriptor: none, window, streamed
//! window with all bytes ready, remote iovecs; bit 2 an unprivileged caller, uid/gid 1000), a
//! chunk (u16 length) of request bytes, a chunk of data (the window's bytes, or the remote
//! buffer's), a u16 window length, a u8 iovec count and per iovec a u16 offset and a u16 length
//! into the remote buffer. Remote iovecs name this process and are clipped into the harness's
//! buffer (the real ones name the client: the kernel confines `process_vm_*` to its memory).
//!
//! Checked after each op: the reply fits its buffer, the data the plugin says it placed fits
//! the window.

use std::cell::RefCell;

use zus_api::ops::{IoVec, OpHeader, Pod};
use zus_plugin::{DataDesc, DeviceDesc, OpCall, PluginVtable, data_kind};
use zus_pmem::MappedPmem;

use crate::Reader;

static PMEMFS: PluginVtable = zus_plugin::vtable::<pmemfs::plugin::PmemFs>();

/// Bytes of the in-memory device.
pub const DEV_LEN: usize = 1 << 20;
/// Ops per input.
pub const MAX_OPS: usize = 16;
/// Bytes of the data window (and of the remote buffer).
pub const WINDOW: usize = 64 << 10;
/// pmemfs mkfs options of the image.
pub const MKFS_OPTIONS: &str = "inodes=256";

/// Data descriptor kinds in an op's flags.
pub mod data {
    /// No data.
    pub const NONE: u8 = 0;
    /// A window holding all its bytes.
    pub const WINDOW: u8 = 1;
    /// A streamed window whose `ready` word says every byte is there.
    pub const STREAM: u8 = 2;
    /// Remote iovecs into the harness's buffer.
    pub const REMOTE: u8 = 3;
    /// Flag: an unprivileged caller.
    pub const USER: u8 = 4;
}

struct Fixture {
    dev: MappedPmem,
    image: Vec<u8>,
    window: Vec<u8>,
    remote: Vec<u8>,
    reply: Vec<u8>,
    iov: Vec<IoVec>,
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

fn desc(dev: &MappedPmem) -> DeviceDesc {
    DeviceDesc { base: dev.base_ptr(), len: DEV_LEN as u64, map_sync: 0, read_only: 0 }
}

/// Mounts the device; the handle.
fn mount(dev: &MappedPmem) -> Option<*mut core::ffi::c_void> {
    let d = desc(dev);
    let mut handle = core::ptr::null_mut();
    let mut root = 0u64;
    let mut msg = [0u8; 256];
    let f = PMEMFS.mount.expect("pmemfs mount entry");
    // SAFETY: valid pointers for the call; the mapping outlives the mount (it is the fixture's).
    let rc = unsafe { f(&raw const d, b"".as_ptr(), 0, &raw mut handle, &raw mut root, msg.as_mut_ptr(), msg.len()) };
    (rc == 0 && !handle.is_null()).then_some(handle)
}

fn unmount(handle: *mut core::ffi::c_void) {
    let f = PMEMFS.unmount.expect("pmemfs unmount entry");
    // SAFETY: the handle came from mount and is not used again.
    let _ = unsafe { f(handle) };
}

impl Fixture {
    fn new() -> Self {
        let dev = MappedPmem::anonymous(DEV_LEN).expect("anonymous device");
        let d = desc(&dev);
        let mut msg = [0u8; 256];
        let mkfs = PMEMFS.mkfs.expect("pmemfs mkfs entry");
        // SAFETY: valid pointers for the call.
        let rc = unsafe { mkfs(&raw const d, MKFS_OPTIONS.as_ptr(), MKFS_OPTIONS.len(), msg.as_mut_ptr(), msg.len()) };
        assert_eq!(rc, 0, "pmemfs mkfs: {}", String::from_utf8_lossy(&msg));
        let mut f = Self {
            dev,
            image: Vec::new(),
            window: vec![0; WINDOW],
            remote: vec![0; WINDOW],
            reply: vec![0; zus_api::chan::PAYLOAD_SIZE],
            iov: Vec::with_capacity(256),
        };
        let h = mount(&f.dev).expect("mount of a fresh pmemfs");
        for (i, op) in populate().iter().enumerate() {
            let rc = f.op(h, op);
            assert!(rc >= 0, "populating the image: op {i} returned {rc}");
        }
        unmount(h);
        // SAFETY: the mapping is DEV_LEN bytes and nothing else uses it now.
        f.image = unsafe { core::slice::from_raw_parts(f.dev.base_ptr(), DEV_LEN) }.to_vec();
        f
    }

    /// Runs one encoded op; its result.
    fn op(&mut self, h: *mut core::ffi::c_void, rec: &[u8]) -> i64 {
        let mut r = Reader::new(rec);
        self.op_from(h, &mut r)
    }

    fn op_from(&mut self, h: *mut core::ffi::c_void, r: &mut Reader<'_>) -> i64 {
        let opcode = u32::from(r.u8());
        let flags = r.u8();
        let req = r.chunk();
        let bytes = r.chunk();
        let window_len = usize::from(r.u16()).min(WINDOW);
        let niov = usize::from(r.u8());
        let user = flags & data::USER != 0;
        let id = if user { 1000 } else { 0 };
        let hdr = OpHeader {
            opcode,
            mount_id: 1,
            in_len: u32::try_from(req.len()).unwrap_or(0),
            uid: id,
            gid: id,
            pid: std::process::id(),
            ..OpHeader::default()
        };
        // A streamed window's ready word: every byte is there.
        let mut ready = u32::try_from(window_len).unwrap_or(u32::MAX);
        let mut desc = DataDesc {
            kind: data_kind::NONE,
            pid: 0,
            window: core::ptr::null_mut(),
            window_len: 0,
            iov: core::ptr::null(),
            niov: 0,
            ready: core::ptr::null_mut(),
        };
        match flags & 3 {
            data::WINDOW | data::STREAM => {
                self.window.fill(0);
                let n = bytes.len().min(WINDOW);
                self.window[..n].copy_from_slice(&bytes[..n]);
                desc.kind = data_kind::WINDOW;
                desc.window = self.window.as_mut_ptr();
                desc.window_len = window_len as u64;
                if flags & 3 == data::STREAM {
                    desc.ready = &raw mut ready;
                }
            }
            data::REMOTE => {
                self.remote.fill(0);
                let n = bytes.len().min(WINDOW);
                self.remote[..n].copy_from_slice(&bytes[..n]);
                self.iov.clear();
                let base = self.remote.as_mut_ptr() as u64;
                for _ in 0..niov {
                    let off = usize::from(r.u16()) % WINDOW;
                    let len = usize::from(r.u16()).min(WINDOW - off);
                    self.iov.push(IoVec { addr: base + off as u64, len: len as u64 });
                }
                desc.kind = data_kind::REMOTE;
                desc.pid = i32::try_from(std::process::id()).unwrap_or(0);
                desc.iov = self.iov.as_ptr();
                desc.niov = self.iov.len() as u64;
            }
            _ => {}
        }
        let mut call = OpCall {
            hdr,
            req: if req.is_empty() { core::ptr::null() } else { req.as_ptr() },
            req_len: req.len(),
            reply: self.reply.as_mut_ptr(),
            reply_cap: self.reply.len(),
            reply_len: 0,
            data_out: 0,
            data: desc,
        };
        let f = PMEMFS.op.expect("pmemfs op entry");
        // SAFETY: the handle is mounted; every pointer in the call is valid for its length for
        // the call (the request slice, the reply buffer, the window, the iovecs into the remote
        // buffer of this very process, the ready word).
        let rc = unsafe { f(h, &raw mut call) };
        if std::env::var_os("ZUFS_FUZZ_DEBUG").is_some() {
            eprintln!("adapter: op {opcode} flags {flags} -> {rc}");
        }
        assert!(
            call.reply_len <= call.reply_cap,
            "reply of {} bytes in a {}-byte buffer",
            call.reply_len,
            call.reply_cap
        );
        if desc.kind == data_kind::WINDOW && rc >= 0 {
            assert!(
                call.data_out as u64 <= desc.window_len,
                "op {opcode}: {} bytes placed in a {}-byte window",
                call.data_out,
                desc.window_len
            );
        }
        rc
    }

    fn run(&mut self, data: &[u8]) {
        // SAFETY: the mapping is DEV_LEN bytes; nothing is mounted on it between inputs.
        unsafe { core::ptr::copy_nonoverlapping(self.image.as_ptr(), self.dev.base_ptr(), DEV_LEN) };
        let h = mount(&self.dev).expect("mount of the pristine image");
        let mut r = Reader::new(data);
        for _ in 0..MAX_OPS {
            if r.is_empty() {
                break;
            }
            self.op_from(h, &mut r);
        }
        unmount(h);
    }
}

/// One input (see the module doc).
pub fn run(data: &[u8]) {
    FIXTURE.with(|f| f.borrow_mut().get_or_insert_with(Fixture::new).run(data));
}

/// One op record: `opcode`, `flags`, the request bytes, the data bytes, the window length and
/// the iovecs (offset, length) for a remote descriptor.
#[must_use]
pub fn encode_op(opcode: u32, flags: u8, req: &[u8], bytes: &[u8], window_len: u16, iov: &[(u16, u16)]) -> Vec<u8> {
    let mut out = vec![u8::try_from(opcode).unwrap_or(0), flags];
    crate::put_chunk(&mut out, req);
    crate::put_chunk(&mut out, bytes);
    out.extend_from_slice(&window_len.to_le_bytes());
    out.push(u8::try_from(iov.len()).unwrap_or(0));
    for (o, l) in iov {
        out.extend_from_slice(&o.to_le_bytes());
        out.extend_from_slice(&l.to_le_bytes());
    }
    out
}

/// A request: the fixed struct and its names.
#[must_use]
pub fn req<R: Pod>(r: &R, names: &[&[u8]]) -> Vec<u8> {
    let mut v = Pod::as_bytes(r).to_vec();
    for n in names {
        v.extend_from_slice(n);
    }
    v
}

/// The ops that populate the image (and seed the corpus).
#[must_use]
pub fn populate() -> Vec<Vec<u8>> {
    use zus_api::ops::{CreateReq, IoReq, OpCode, SymlinkReq, XattrReq};
    let create = |op: OpCode, dir: u64, name: &[u8], mode: u32| {
        let r = CreateReq { dir, mode, rdev: 0, flags: 0, name_len: name.len() as u32 };
        encode_op(op as u32, 0, &req(&r, &[name]), &[], 0, &[])
    };
    let content: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let write = IoReq {
        ino: 3,
        fh: 0,
        offset: 0,
        len: content.len() as u64,
        flags: 0,
        data_kind: zus_api::ops::DATA_WINDOW,
        niov: 0,
        reserved: 0,
    };
    let sym = SymlinkReq { dir: 1, name_len: 1, target_len: 6 };
    let xa = XattrReq { ino: 3, name_len: 6, flags: 0, size: 5, reserved: 0 };
    vec![
        create(OpCode::Mkdir, 1, b"d", 0o40755),
        create(OpCode::Create, 1, b"f", 0o100644),
        encode_op(OpCode::Write as u32, data::WINDOW, &req(&write, &[]), &content, content.len() as u16, &[]),
        encode_op(OpCode::Symlink as u32, 0, &req(&sym, &[b"l", b"target"]), &[], 0, &[]),
        create(OpCode::Create, 2, b"g", 0o100600),
        encode_op(OpCode::Setxattr as u32, data::WINDOW, &req(&xa, &[b"user.a"]), b"value", 5, &[]),
    ]
}

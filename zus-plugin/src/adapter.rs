//! C-ABI entry points generated for every Rust [`FileSystem`]: decode, call the trait, encode.
//!
//! Each entry catches panics and turns them into `-EIO` plus a log line (P-PL2): a panic must
//! never unwind across `extern "C"` (it would abort the server).
#![allow(unsafe_code)]

use core::ffi::c_void;
use core::sync::atomic::{AtomicPtr, Ordering};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::{
    Caller, DataDesc, Device, DeviceDesc, DirSink, FileSystem, HostApi, OpCall, PluginError, RemoteIov, WindowData,
    data_kind, log_level,
};
use zus_api::Errno;
use zus_api::ops::{IoReply, MapReply, OpCode, OpenReply, Pod};
use zus_api::request::Request;
use zus_pmem::{DataSink, DataSource};

static HOST: AtomicPtr<HostApi> = AtomicPtr::new(core::ptr::null_mut());

/// Records the server's host API (called from the exported register symbol).
///
/// # Safety
/// `host` must be null or valid for the rest of the process.
pub unsafe fn set_host(host: *const HostApi) {
    HOST.store(host.cast_mut(), Ordering::Release);
}

/// The host's layout generation and oldest dax reader (see [`HostApi`]), or None when the
/// plugin runs without a host that tracks them (in-process tools, tests, an older zusd).
#[must_use]
pub fn dax_readers() -> Option<(u64, u64)> {
    let host = HOST.load(Ordering::Acquire);
    if host.is_null() {
        return None;
    }
    // SAFETY: set_host's contract: the host API outlives the plugin.
    let h = unsafe { &*host };
    if (h.struct_size as usize) < size_of::<HostApi>() {
        return None;
    }
    let (Some(g), Some(r)) = (h.layout_gen, h.oldest_dax_reader) else { return None };
    // SAFETY: host functions without arguments, callable from any thread.
    Some(unsafe { (g(), r()) })
}

/// Logs through the server's logger (or stderr before registration).
pub fn log(level: u32, msg: &str) {
    let host = HOST.load(Ordering::Acquire);
    if !host.is_null() {
        // SAFETY: set_host's contract: the host API outlives the plugin.
        let h = unsafe { &*host };
        if let Some(f) = h.log {
            // SAFETY: msg is valid for len bytes for the duration of the call.
            unsafe { f(level, msg.as_ptr(), msg.len()) };
            return;
        }
    }
    eprintln!("zus plugin: {msg}");
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Runs `f`, turning a panic into -EIO and a log line naming `what`.
fn guarded(what: &str, f: impl FnOnce() -> i64) -> i64 {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            log(log_level::ERROR, &format!("plugin panicked in {what}: {}", panic_message(&*p)));
            Errno::EIO.to_wire()
        }
    }
}

fn write_msg(msg: *mut u8, cap: usize, text: &str) {
    if msg.is_null() || cap == 0 {
        return;
    }
    let n = text.len().min(cap - 1);
    // SAFETY: the server passes a private buffer of `cap` bytes; we write n+1 <= cap bytes.
    unsafe {
        core::ptr::copy_nonoverlapping(text.as_ptr(), msg, n);
        *msg.add(n) = 0;
    }
}

/// # Safety
/// `dev` null or valid; its mapping stays alive as long as the returned Device is used.
unsafe fn device(dev: *const DeviceDesc) -> Option<Device> {
    if dev.is_null() {
        return None;
    }
    // SAFETY: caller contract.
    let d = unsafe { &*dev };
    if d.base.is_null() || d.len == 0 {
        return None;
    }
    let len = usize::try_from(d.len).ok()?;
    // SAFETY: the server keeps [base, base+len) mapped MAP_SHARED until unmount returns.
    let pmem = unsafe { zus_pmem::MappedPmem::from_raw(d.base, len) }?;
    Some(Device { pmem, map_sync: d.map_sync != 0, read_only: d.read_only != 0 })
}

/// # Safety
/// `p` valid for `len` bytes or null with len 0.
unsafe fn str_arg<'a>(p: *const u8, len: usize) -> &'a str {
    if p.is_null() || len == 0 {
        return "";
    }
    // SAFETY: caller contract: private server buffer of len bytes.
    let b = unsafe { core::slice::from_raw_parts(p, len) };
    core::str::from_utf8(b).unwrap_or("")
}

fn plugin_err(e: &PluginError, msg: *mut u8, cap: usize) -> i64 {
    write_msg(msg, cap, &e.message);
    e.errno.to_wire()
}

/// C entry: mkfs.
///
/// # Safety
/// Pointers per [`super::MkfsFn`].
pub unsafe extern "C" fn mkfs<T: FileSystem>(
    dev: *const DeviceDesc,
    opts: *const u8,
    opts_len: usize,
    msg: *mut u8,
    cap: usize,
) -> i64 {
    guarded("mkfs", || {
        // SAFETY: forwarded contract.
        let Some(d) = (unsafe { device(dev) }) else {
            return plugin_err(&PluginError::new(Errno::ENODEV, "mkfs needs a device"), msg, cap);
        };
        // SAFETY: forwarded contract.
        let o = unsafe { str_arg(opts, opts_len) };
        match T::mkfs(&d, o) {
            Ok(()) => 0,
            Err(e) => plugin_err(&e, msg, cap),
        }
    })
}

/// C entry: fsck.
///
/// # Safety
/// Pointers per [`super::FsckFn`].
pub unsafe extern "C" fn fsck<T: FileSystem>(
    dev: *const DeviceDesc,
    problems: *mut u64,
    msg: *mut u8,
    cap: usize,
) -> i64 {
    guarded("fsck", || {
        // SAFETY: forwarded contract.
        let Some(d) = (unsafe { device(dev) }) else {
            return plugin_err(&PluginError::new(Errno::ENODEV, "fsck needs a device"), msg, cap);
        };
        match T::fsck(&d) {
            Ok((n, report)) => {
                if !problems.is_null() {
                    // SAFETY: caller-provided out pointer.
                    unsafe { *problems = n };
                }
                write_msg(msg, cap, &report);
                i64::try_from(report.len().min(cap.saturating_sub(1))).unwrap_or(0)
            }
            Err(e) => plugin_err(&e, msg, cap),
        }
    })
}

/// C entry: mount.
///
/// # Safety
/// Pointers per [`super::MountFn`].
pub unsafe extern "C" fn mount<T: FileSystem>(
    dev: *const DeviceDesc,
    opts: *const u8,
    opts_len: usize,
    handle: *mut *mut c_void,
    root: *mut u64,
    msg: *mut u8,
    cap: usize,
) -> i64 {
    guarded("mount", || {
        // SAFETY: forwarded contract.
        let d = unsafe { device(dev) };
        if T::NEEDS_DEVICE && d.is_none() {
            return plugin_err(&PluginError::new(Errno::ENODEV, format!("{} needs a device", T::NAME)), msg, cap);
        }
        // SAFETY: forwarded contract.
        let o = unsafe { str_arg(opts, opts_len) };
        match T::mount(d, o) {
            Ok(fs) => {
                let r = fs.root();
                let b = Box::into_raw(Box::new(fs));
                // SAFETY: out pointers provided by the server.
                unsafe {
                    *handle = b.cast();
                    *root = r;
                }
                0
            }
            Err(e) => plugin_err(&e, msg, cap),
        }
    })
}

/// C entry: unmount; frees the handle.
///
/// # Safety
/// `handle` came from [`mount`] and is not used again.
pub unsafe extern "C" fn unmount<T: FileSystem>(handle: *mut c_void) -> i64 {
    if handle.is_null() {
        return Errno::EINVAL.to_wire();
    }
    // SAFETY: handle is the Box<T> created by mount; ownership returns to us exactly once.
    let fs = unsafe { Box::from_raw(handle.cast::<T>()) };
    let rc = guarded("unmount", || match fs.unmount() {
        Ok(()) => 0,
        Err(e) => e.to_wire(),
    });
    drop(fs);
    rc
}

/// C entry: one op.
///
/// # Safety
/// `handle` from [`mount`]; `call` valid with buffers as described by [`OpCall`].
pub unsafe extern "C" fn op<T: FileSystem>(handle: *mut c_void, call: *mut OpCall) -> i64 {
    if handle.is_null() || call.is_null() {
        return Errno::EINVAL.to_wire();
    }
    // SAFETY: handle is a live Box<T> (the server unmounts only after all ops finish).
    let fs = unsafe { &*handle.cast::<T>() };
    // SAFETY: the server gives exclusive access to a valid OpCall for this call.
    let call = unsafe { &mut *call };
    guarded("op", || match dispatch(fs, call) {
        Ok(v) => i64::try_from(v).unwrap_or(i64::MAX),
        Err(e) => e.to_wire(),
    })
}

enum Data<'a> {
    None,
    Window(WindowData),
    Remote(RemoteIov<'a>),
}

impl Data<'_> {
    fn source(&self) -> Result<&dyn DataSource, Errno> {
        match self {
            Self::None => Err(Errno::EINVAL),
            Self::Window(w) => Ok(w),
            Self::Remote(r) => Ok(r),
        }
    }
    fn sink(&self) -> Result<&dyn DataSink, Errno> {
        match self {
            Self::None => Err(Errno::EINVAL),
            Self::Window(w) => Ok(w),
            Self::Remote(r) => Ok(r),
        }
    }
}

/// # Safety
/// `d` describes server-owned memory valid for the call.
unsafe fn data_of(d: &DataDesc) -> Data<'_> {
    match d.kind {
        data_kind::WINDOW if !d.window.is_null() => {
            // SAFETY: the server's window and its ready word (null unless streamed) stay mapped
            // for the call.
            Data::Window(unsafe { WindowData::streamed(d.window, usize::try_from(d.window_len).unwrap_or(0), d.ready) })
        }
        data_kind::REMOTE if !d.iov.is_null() => {
            let n = usize::try_from(d.niov).unwrap_or(0).min(zus_api::ops::MAX_IOV);
            // SAFETY: the server passes a private, validated iovec array of niov entries that
            // stays put for the call (the borrow of `d` covers it).
            let iov = unsafe { core::slice::from_raw_parts(d.iov, n) };
            Data::Remote(RemoteIov::new(d.pid, iov))
        }
        _ => Data::None,
    }
}

fn put_reply<R: Pod>(call: &mut OpCall, r: &R) -> Result<(), Errno> {
    let b = Pod::as_bytes(r);
    if b.len() > call.reply_cap || call.reply.is_null() {
        return Err(Errno::EOVERFLOW);
    }
    // SAFETY: reply is a private server buffer of reply_cap bytes.
    unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), call.reply, b.len()) };
    call.reply_len = b.len();
    Ok(())
}

fn put_reply_extra(call: &mut OpCall, extra: &[u8]) -> Result<(), Errno> {
    let at = call.reply_len;
    if at + extra.len() > call.reply_cap {
        return Err(Errno::EOVERFLOW);
    }
    // SAFETY: bounds checked against the private reply buffer.
    unsafe { core::ptr::copy_nonoverlapping(extra.as_ptr(), call.reply.add(at), extra.len()) };
    call.reply_len = at + extra.len();
    Ok(())
}

/// Puts variable-size output (readdir, readlink, xattrs) into the data window.
fn put_data(call: &mut OpCall, data: &Data, bytes: &[u8]) -> Result<u64, Errno> {
    let sink = data.sink()?;
    if bytes.len() > sink.len() {
        return Err(Errno::ERANGE);
    }
    // SAFETY: bytes is private memory of bytes.len() bytes, within the sink (checked).
    unsafe { sink.copy_from(0, bytes.as_ptr(), bytes.len()) }.map_err(Errno)?;
    call.data_out = bytes.len();
    Ok(bytes.len() as u64)
}

fn dispatch<T: FileSystem>(fs: &T, call: &mut OpCall) -> Result<u64, Errno> {
    let op = OpCode::from_u32(call.hdr.opcode).ok_or(Errno::ENOSYS)?;
    let payload: &[u8] = if call.req.is_null() || call.req_len == 0 {
        &[]
    } else {
        // SAFETY: req is the server's private copy of req_len bytes.
        unsafe { core::slice::from_raw_parts(call.req, call.req_len) }
    };
    let c = Caller { uid: call.hdr.uid, gid: call.hdr.gid, pid: call.hdr.pid };
    // A copy of the descriptor, so the data it describes is borrowed apart from `call` (which
    // the op's reply goes into).
    let desc = call.data;
    // SAFETY: the server's data descriptor is valid for the call.
    let data = unsafe { data_of(&desc) };
    // zusd validated the request with this same decoder; decoding it again here (from the
    // bytes the C vtable carries) costs a few bounds checks and no allocation.
    match Request::decode(op, payload)? {
        Request::Noop => Ok(0),
        Request::Statfs => {
            let s = fs.statfs()?;
            put_reply(call, &s)?;
            Ok(0)
        }
        Request::Sync => fs.sync().map(|()| 0),
        Request::Lookup(r, name) => {
            let a = fs.lookup(&c, r.dir, name)?;
            put_reply(call, &a)?;
            Ok(0)
        }
        Request::Getattr(r) => {
            let a = fs.getattr(r.ino)?;
            put_reply(call, &a)?;
            Ok(0)
        }
        Request::Setattr(r) => {
            let a = fs.setattr(&c, &r)?;
            put_reply(call, &a)?;
            Ok(0)
        }
        Request::Create(r, name) => {
            let a = fs.create(&c, r.dir, name, r.mode, r.flags)?;
            put_reply(call, &a)?;
            Ok(0)
        }
        // zusd composes these from Create and Open, Forgets, Releases; a plugin never sees them.
        Request::CreateOpen(..) | Request::ForgetMany(_) | Request::ReleaseMany(_) | Request::ReaddirPlus(_) => {
            Err(Errno::ENOSYS)
        }
        Request::Mknod(r, name) => {
            let a = fs.mknod(&c, r.dir, name, r.mode, r.rdev)?;
            put_reply(call, &a)?;
            Ok(0)
        }
        Request::Mkdir(r, name) => {
            let a = fs.mkdir(&c, r.dir, name, r.mode)?;
            put_reply(call, &a)?;
            Ok(0)
        }
        Request::Unlink(r, name) => fs.unlink(&c, r.dir, name).map(|()| 0),
        Request::Rmdir(r, name) => fs.rmdir(&c, r.dir, name).map(|()| 0),
        Request::Rename(r, old, new) => fs.rename(&c, r.old_dir, old, r.new_dir, new, r.flags).map(|()| 0),
        Request::Link(r, name) => {
            let a = fs.link(&c, r.ino, r.new_dir, name)?;
            put_reply(call, &a)?;
            Ok(0)
        }
        Request::Symlink(r, name, target) => {
            let a = fs.symlink(&c, r.dir, name, target)?;
            put_reply(call, &a)?;
            Ok(0)
        }
        Request::Readlink(r) => {
            let t = fs.readlink(r.ino)?;
            put_data(call, &data, &t)
        }
        Request::Readdir(r) => {
            let cap = data.sink()?.len();
            let mut sink = DirSink::new(cap);
            fs.readdir(r.dir, r.cookie, &mut sink)?;
            put_data(call, &data, sink.bytes())
        }
        Request::Open(r) => {
            let fh = fs.open(&c, r.ino, r.flags)?;
            put_reply(call, &OpenReply { fh })?;
            Ok(0)
        }
        Request::Release(r) => fs.release(r.ino, r.fh).map(|()| 0),
        Request::Read(r, _) => {
            let sink = data.sink()?;
            if r.len > sink.len() as u64 {
                return Err(Errno::EINVAL);
            }
            let n = fs.read(r.ino, r.fh, r.offset, r.len, sink)?;
            call.data_out = usize::try_from(n).map_err(|_| Errno::EIO)?;
            if n > r.len {
                return Err(Errno::EIO);
            }
            Ok(n)
        }
        Request::Write(r, _) => {
            let src = data.source()?;
            if r.len > src.len() as u64 {
                return Err(Errno::EINVAL);
            }
            let w = fs.write(&c, r.ino, r.fh, r.offset, r.len, r.flags, src)?;
            put_reply(call, &IoReply { size: w.size, offset: w.offset })?;
            Ok(w.bytes)
        }
        Request::Fsync(r) => fs.fsync(r.ino, r.fh, r.datasync != 0).map(|()| 0),
        Request::Fallocate(r) => fs.fallocate(&c, r.ino, r.mode, r.offset, r.len).map(|()| 0),
        Request::CopyFileRange(r) => {
            let n = fs.copy_file_range(&c, r.ino_in, r.fh_in, r.off_in, r.ino_out, r.fh_out, r.off_out, r.len)?;
            if n > r.len {
                return Err(Errno::EIO);
            }
            Ok(n)
        }
        Request::Getxattr(r, name) => {
            let v = fs.getxattr(r.ino, name)?;
            if r.size == 0 {
                return Ok(v.len() as u64);
            }
            if v.len() > r.size as usize {
                return Err(Errno::ERANGE);
            }
            put_data(call, &data, &v)
        }
        Request::Listxattr(r) => {
            let v = fs.listxattr(r.ino)?;
            if r.size == 0 {
                return Ok(v.len() as u64);
            }
            if v.len() > r.size as usize {
                return Err(Errno::ERANGE);
            }
            put_data(call, &data, &v)
        }
        Request::Setxattr(r, name) => {
            let src = data.source()?;
            let len = r.size as usize;
            if len > src.len() {
                return Err(Errno::EINVAL);
            }
            let mut value = vec![0u8; len];
            // SAFETY: value is private memory of len bytes; range checked against the source.
            unsafe { src.copy_to(0, value.as_mut_ptr(), len) }.map_err(Errno)?;
            fs.setxattr(&c, r.ino, name, &value, r.flags).map(|()| 0)
        }
        Request::Removexattr(r, name) => fs.removexattr(&c, r.ino, name).map(|()| 0),
        Request::Map(r) => {
            let (ext, size) = fs.map(r.ino, r.offset, r.len, r.write != 0)?;
            if ext.len() > zus_api::ops::MAX_MAP_EXTENTS {
                return Err(Errno::EIO);
            }
            put_reply(call, &MapReply { count: u32::try_from(ext.len()).unwrap_or(0), reserved: 0, size })?;
            for e in &ext {
                put_reply_extra(call, Pod::as_bytes(e))?;
            }
            Ok(ext.len() as u64)
        }
        Request::MapDone(r) => fs.map_done(r.ino, r.end, r.sync != 0).map(|()| 0),
        Request::Forget(r) => {
            fs.forget(r.ino, r.nlookup);
            Ok(0)
        }
        // zusd serves them itself; a plugin never sees them.
        Request::KernelCache(_) | Request::Ticket(_) => Err(Errno::ENOSYS),
    }
}

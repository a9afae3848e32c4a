//! `serve=zusd`: FUSE over io_uring served inside zusd (mode (b) of issue 13).
//!
//! Two halves, one in each process:
//!
//! - **The bridge** ([`ZusdTransport`], a [`Transport`]): opens and mounts `/dev/fuse`, answers
//!   INIT with `FUSE_OVER_IO_URING` (the mount fails when the kernel does not offer it), then
//!   hands the `/dev/fuse` fd to zusd over the control socket (`Request::Handoff`, kind
//!   [`KIND`], `SCM_RIGHTS`) naming the zusd mount its [`Bridge`] holds. From then on it only
//!   watches: the end of the connection (an unmount) ends it as usual; zusd's end (its control
//!   socket hangs up: exit, crash, SIGKILL) makes it abort the FUSE connection, so that every
//!   caller gets an error and none waits on a ring nobody serves, and detach the mount.
//! - **zusd** ([`spawn_handed`], called by the zusd binary's service over a bridge whose link is
//!   the live zusd mount): one ring per possible CPU, each served by a thread pinned to that CPU
//!   (`fuse-ring-N`, a second thread per CPU beside the ZT, as the K-ZTs), running the same
//!   request logic as the bridge's rings, and a `/dev/fuse` reader for FORGET, INTERRUPT and the
//!   page-cache notifications. Each op runs on the ring thread against the mount (one hand-off:
//!   kernel -> ring thread; the FUSE payload buffer is the op's window).
//!
//! What zusd does when its rings' owner dies, the kernel (6.18) decides: the io_uring's teardown
//! cancels the idle entries (-ENOTCONN) and requests queued afterwards wait for an entry that
//! never comes back, so the bridge must end the connection: it aborts it through fusectl when
//! it can, and closes its own `/dev/fuse` fd (the last reference aborts it too).

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{
    PAGE, ParamGuard, Server, UringState, cstr, dev_loop, mount_fuse, online_cpus, possible_cpus, read_init,
    ring_thread, write_dev,
};
use crate::abi;
use crate::bridge::{Bridge, IN_PROCESS_MAX_IO};
use crate::fuse::{FuseOptions, Transport};

/// The hand-off kind zusd serves these mounts under.
pub const KIND: &str = "fuse-uring";

/// Largest `max_write`/`max_readahead` a hand-off may name (each ring entry's payload buffer is
/// sized from them).
const MAX_IO: u32 = 1 << 20;

/// What zusd needs to serve a handed connection, as the bridge negotiated it at INIT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffParams {
    /// `max_write` of the INIT reply.
    pub max_write: u32,
    /// `max_readahead` the kernel sent at INIT.
    pub max_readahead: u32,
    /// The fusectl connection number (the minor of the mount's device), 0 when unknown.
    pub conn: u32,
    /// Entry and attribute timeouts, ns.
    pub entry_timeout_ns: u64,
    /// Attribute timeout, ns.
    pub attr_timeout_ns: u64,
    /// `direct_io` for every file.
    pub direct_io: bool,
    /// `keep_cache`.
    pub keep_cache: bool,
    /// Pin ring thread n to CPU n.
    pub pin: bool,
    /// Every write synchronous.
    pub sync: bool,
}

impl HandoffParams {
    /// The `key=value,...` text of a hand-off.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let b = u8::from;
        let _ = write!(
            s,
            "max_write={},max_readahead={},conn={},entry_ns={},attr_ns={},direct_io={},keep_cache={},pin={},sync={}",
            self.max_write,
            self.max_readahead,
            self.conn,
            self.entry_timeout_ns,
            self.attr_timeout_ns,
            b(self.direct_io),
            b(self.keep_cache),
            b(self.pin),
            b(self.sync)
        );
        s
    }

    /// Parses [`HandoffParams::encode`]'s text; every value is checked (it crossed a socket).
    ///
    /// # Errors
    /// The offending item.
    pub fn decode(s: &str) -> Result<Self, String> {
        let mut p = Self {
            max_write: 0,
            max_readahead: 0,
            conn: 0,
            entry_timeout_ns: 0,
            attr_timeout_ns: 0,
            direct_io: false,
            keep_cache: false,
            pin: true,
            sync: false,
        };
        let day = 86_400 * 1_000_000_000u64;
        for item in s.split(',').filter(|i| !i.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| format!("hand-off parameter {item:?}: no value"))?;
            let bad = || format!("hand-off parameter {item:?}: bad value");
            let num = |max: u64| v.parse::<u64>().ok().filter(|n| *n <= max).ok_or_else(bad);
            let flag = || match v {
                "0" => Ok(false),
                "1" => Ok(true),
                _ => Err(bad()),
            };
            match k {
                "max_write" => p.max_write = u32::try_from(num(u64::from(MAX_IO))?).map_err(|_| bad())?,
                "max_readahead" => p.max_readahead = u32::try_from(num(u64::from(MAX_IO))?).map_err(|_| bad())?,
                "conn" => p.conn = u32::try_from(num(u64::from(u32::MAX))?).map_err(|_| bad())?,
                "entry_ns" => p.entry_timeout_ns = num(day)?,
                "attr_ns" => p.attr_timeout_ns = num(day)?,
                "direct_io" => p.direct_io = flag()?,
                "keep_cache" => p.keep_cache = flag()?,
                "pin" => p.pin = flag()?,
                "sync" => p.sync = flag()?,
                _ => return Err(format!("unknown hand-off parameter {k:?}")),
            }
        }
        if p.max_write < 4096 {
            return Err("hand-off parameter max_write is missing or below 4096".into());
        }
        Ok(p)
    }

    /// The FUSE options the request logic needs.
    #[must_use]
    pub fn fuse_options(&self) -> FuseOptions {
        FuseOptions {
            entry_timeout: Duration::from_nanos(self.entry_timeout_ns),
            attr_timeout: Duration::from_nanos(self.attr_timeout_ns),
            direct_io: self.direct_io,
            keep_cache: self.keep_cache,
            pin: self.pin,
            sync: self.sync,
            ..FuseOptions::default()
        }
    }

    /// Each ring entry's payload buffer: max(8 KiB, max_write, max_pages x 4 KiB).
    fn payload(&self) -> usize {
        let pages = (self.max_write.max(self.max_readahead) as usize).div_ceil(PAGE);
        8192usize.max(self.max_write as usize).max(pages * PAGE)
    }
}

/// Aborts FUSE connection `conn` through fusectl (when it is mounted and we may).
pub fn abort_connection(conn: u32) -> bool {
    conn != 0 && std::fs::write(format!("/sys/fs/fuse/connections/{conn}/abort"), "1").is_ok()
}

/// The fusectl connection number of the FUSE mount at `mountpoint` (the minor of its device,
/// from /proc/self/mountinfo: no request to the filesystem).
fn connection_of(mountpoint: &Path) -> u32 {
    let want = mountpoint.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter(|l| l.split(' ').nth(4).map(zus_client::unescape_mountinfo).as_deref() == Some(want.as_str()))
        .filter_map(|l| l.split(' ').nth(2)?.split_once(':')?.1.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// The bridge's half of `serve=zusd` (see the module docs).
#[derive(Debug, Clone)]
pub struct ZusdTransport {
    socket: PathBuf,
    state: Arc<UringState>,
}

impl ZusdTransport {
    /// A transport that hands its connections to the zusd at `socket`.
    #[must_use]
    pub fn new(socket: PathBuf) -> Self {
        Self { socket, state: super::UringTransport::new(true).state() }
    }

    /// Shared state (`active` is `uring` once handed).
    #[must_use]
    pub fn state(&self) -> Arc<UringState> {
        Arc::clone(&self.state)
    }
}

/// Whether FUSE connection `conn` is mounted at `mountpoint` in the mount table `info`.
fn still_mounted(info: &str, mountpoint: &Path, conn: u32) -> bool {
    let want = mountpoint.display().to_string();
    info.lines().any(|l| {
        let mut f = l.split(' ');
        let dev = f.nth(2).and_then(|d| d.split_once(':')).map(|(_, m)| m);
        let at = f.nth(1).map(zus_client::unescape_mountinfo);
        at.as_deref() == Some(want.as_str()) && (conn == 0 || dev == Some(conn.to_string().as_str()))
    })
}

/// Waits until the mount at `mountpoint` is gone (a change of the mount table wakes us; each
/// read of the table through the same file re-arms the wake).
fn wait_unmounted(mountpoint: &Path, conn: u32) {
    use std::io::{Read, Seek};
    let Ok(mut f) = File::open("/proc/self/mountinfo") else { return };
    let mut info = String::new();
    loop {
        info.clear();
        if f.rewind().is_err() || f.read_to_string(&mut info).is_err() || !still_mounted(&info, mountpoint, conn) {
            return;
        }
        let mut p = [libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLPRI, revents: 0 }];
        // SAFETY: one pollfd on a file we hold open.
        unsafe { libc::poll(p.as_mut_ptr(), 1, 1000) };
    }
}

fn detach(mountpoint: &Path) {
    // SAFETY: NUL-terminated path; a lazy unmount of our own mount point.
    let _ =
        cstr(mountpoint.as_os_str().as_encoded_bytes()).map(|c| unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) });
}

impl Transport for ZusdTransport {
    fn name(&self) -> &'static str {
        "uring-zusd"
    }

    fn serve(
        &self,
        bridge: Arc<Bridge>,
        mountpoint: &Path,
        opts: &FuseOptions,
        ready: &mut dyn FnMut(),
    ) -> io::Result<()> {
        let Some(mount_id) = bridge.mount_id() else { return Err(io::Error::other("zusd is gone")) };
        // The link that carries the fd: a second, privileged kernel-bridge client of zusd,
        // attached to the bridge's mount.
        let relay = zus_client::Relay::connect_with(
            &self.socket,
            "zufs-fuse-handoff",
            zus_api::features::ALL | zus_api::features::KERNEL_BRIDGE,
        )
        .map_err(|e| io::Error::other(e.to_string()))?;
        relay.attach(mount_id).map_err(|e| io::Error::other(e.to_string()))?;
        let max_write = u32::try_from(IN_PROCESS_MAX_IO.min(MAX_IO as usize)).unwrap_or(MAX_IO);
        let guard = ParamGuard::acquire();
        let dev = mount_fuse(mountpoint, opts)?;
        let fd = dev.as_raw_fd();
        let fail = |er: io::Error| {
            detach(mountpoint);
            er
        };
        let (h, init) = read_init(fd).map_err(fail)?;
        let offered = (u64::from(init.flags2) << 32) & abi::init::OVER_IO_URING != 0
            && u64::from(init.flags) & abi::init::INIT_EXT != 0;
        if !offered {
            let _ = write_dev(fd, h.unique, -libc::EPROTO, &[]);
            return Err(fail(io::Error::other(format!(
                "serve=zusd needs FUSE over io_uring, which the kernel did not offer at INIT (is {} on? \
                 `options fuse enable_uring=1` in /etc/modprobe.d/fuse.conf)",
                super::PARAM
            ))));
        }
        let srv = Server { bridge: Arc::clone(&bridge), opts: opts.clone(), max_write, uring: true };
        let mut out = Vec::new();
        srv.init_reply(&init, &mut out);
        write_dev(fd, h.unique, 0, &out).map_err(fail)?;
        drop(guard);
        let params = HandoffParams {
            max_write,
            max_readahead: init.max_readahead.min(MAX_IO),
            conn: connection_of(mountpoint),
            entry_timeout_ns: u64::try_from(opts.entry_timeout.as_nanos()).unwrap_or(u64::MAX),
            attr_timeout_ns: u64::try_from(opts.attr_timeout.as_nanos()).unwrap_or(u64::MAX),
            direct_io: opts.direct_io,
            keep_cache: opts.keep_cache,
            pin: opts.pin,
            sync: opts.sync,
        };
        let req = zus_channel::control::Request::Handoff { mount_id, kind: KIND.into(), params: params.encode() };
        if let Err(e) = relay.control_with_fd(&req, dev.as_fd()) {
            // Nobody will register the rings: end the connection before anyone waits on it.
            abort_connection(params.conn);
            drop(dev);
            return Err(fail(io::Error::other(format!("handing the FUSE connection to zusd: {e}"))));
        }
        self.state.set_active("uring");
        tracing::info!(
            "fuse: {} served by zusd (FUSE over io_uring, connection {})",
            mountpoint.display(),
            params.conn
        );
        ready();
        // Watch: the connection's end (POLLERR on /dev/fuse: unmounted or aborted) or zusd's.
        let zusd_gone = loop {
            let mut p = [
                libc::pollfd { fd, events: 0, revents: 0 },
                libc::pollfd { fd: relay.control_fd().as_raw_fd(), events: libc::POLLIN | libc::POLLRDHUP, revents: 0 },
            ];
            // SAFETY: two pollfds on fds we hold open for the call.
            let n = unsafe { libc::poll(p.as_mut_ptr(), 2, -1) };
            if n < 0 {
                if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                break false;
            }
            if p[1].revents != 0 {
                break true;
            }
            if p[0].revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                break false;
            }
        };
        if !zusd_gone {
            // Unmounted, or aborted (zusd's shutdown aborts its connections): an aborted mount
            // stays in the table, answering ENOTCONN, until it is unmounted: wait for that.
            if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo")
                && still_mounted(&info, mountpoint, params.conn)
            {
                tracing::warn!("{}: the FUSE connection was aborted; waiting for the unmount", mountpoint.display());
                drop(dev);
                wait_unmounted(mountpoint, params.conn);
                return Err(io::Error::other("the FUSE connection was aborted (zusd stopped)"));
            }
            return Ok(());
        }
        tracing::error!(
            "zusd is gone: {} (served by zusd) ends with it; callers get errors (ECONNABORTED, then ENOTCONN)",
            mountpoint.display()
        );
        if !abort_connection(params.conn) {
            tracing::warn!("fusectl abort unavailable: closing /dev/fuse ends the connection instead");
        }
        drop(dev);
        // The dead mount stays (ENOTCONN: nothing lands in the directory under it) until it is
        // unmounted (`zufs umount`, or SIGTERM to this bridge): wait for that, then end.
        wait_unmounted(mountpoint, params.conn);
        Err(io::Error::other("zusd went away; a serve=zusd mount ends with zusd"))
    }
}

/// Whether `fd` is an open `/dev/fuse` (the misc character device 10:229): a client's fd is
/// checked before any ring is pointed at it.
fn is_fuse_device(fd: &OwnedFd) -> bool {
    // SAFETY: fstat into a zeroed stat of our own, on an fd we own.
    let st = unsafe {
        let mut st: libc::stat = core::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &raw mut st) != 0 {
            return false;
        }
        st
    };
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && libc::major(st.st_rdev) == 10 && libc::minor(st.st_rdev) == 229
}

/// A handed connection served in this process (zusd).
#[derive(Debug)]
pub struct Handed {
    state: Arc<UringState>,
    conn: u32,
}

impl Handed {
    /// Requests served per CPU (the CPU the ring thread served them on).
    #[must_use]
    pub fn served_per_cpu(&self) -> Vec<u64> {
        self.state.served_per_cpu()
    }

    /// Aborts the connection (zusd's shutdown): every ring thread ends, then the reader.
    pub fn abort(&self) -> bool {
        abort_connection(self.conn)
    }
}

/// zusd's half: serves the handed `/dev/fuse` (`dev`) through `bridge` (whose link is the live
/// mount) from one pinned thread per possible CPU and a `/dev/fuse` reader; `done` runs once
/// every one of them ended (the connection ended), after they dropped the bridge.
///
/// # Errors
/// A thread that did not start.
pub fn spawn_handed(
    bridge: Arc<Bridge>,
    dev: OwnedFd,
    params: &HandoffParams,
    done: Box<dyn FnOnce() + Send>,
) -> io::Result<Arc<Handed>> {
    if !is_fuse_device(&dev) {
        return Err(io::Error::other("the handed fd is not /dev/fuse"));
    }
    let dev = File::from(dev);
    let opts = params.fuse_options();
    let state = super::UringTransport::new(true).state();
    state.set_active("uring");
    let srv =
        Arc::new(Server { bridge: Arc::clone(&bridge), opts: opts.clone(), max_write: params.max_write, uring: true });
    // Page-cache and attribute notifications go over /dev/fuse.
    super::set_invalidators(&bridge, &dev)?;
    drop(bridge);
    let online = online_cpus();
    let payload = params.payload();
    let fd = dev.as_raw_fd();
    let mut rings = Vec::new();
    for q in 0..possible_cpus() {
        let srv = Arc::clone(&srv);
        let state = Arc::clone(&state);
        let cpu = online.contains(&q).then_some(q);
        let qid = u16::try_from(q).unwrap_or(u16::MAX);
        let h = std::thread::Builder::new().name(format!("fuse-ring-{q}")).spawn(move || {
            if let Err(er) = ring_thread(&srv, &state, fd, qid, cpu, payload) {
                tracing::warn!("fuse ring {qid}: {er}");
            }
        });
        match h {
            Ok(h) => rings.push(h),
            Err(e) => {
                // The rings that started wait for a connection that cannot serve every CPU:
                // end it.
                abort_connection(params.conn);
                return Err(e);
            }
        }
    }
    std::thread::Builder::new().name("fuse-dev".into()).spawn(move || {
        let r = dev_loop(&srv, fd);
        for h in rings {
            let _ = h.join();
        }
        // Every user of the fd is gone: close it, then let go of the mount.
        drop(dev);
        drop(srv);
        if let Err(e) = r {
            tracing::warn!("fuse: the handed connection ended with {e}");
        }
        done();
    })?;
    Ok(Arc::new(Handed { state, conn: params.conn }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_handoff_params_round_trip_and_refuse_what_they_cannot_serve() {
        let p = HandoffParams {
            max_write: 1 << 20,
            max_readahead: 128 * 1024,
            conn: 77,
            entry_timeout_ns: 1_000_000_000,
            attr_timeout_ns: 0,
            direct_io: true,
            keep_cache: false,
            pin: true,
            sync: true,
        };
        assert_eq!(HandoffParams::decode(&p.encode()), Ok(p.clone()));
        // A client's fd that is not /dev/fuse is refused before a ring is pointed at it.
        let f: OwnedFd = File::open("/dev/null").unwrap().into();
        assert!(!is_fuse_device(&f));
        assert_eq!(p.payload(), 1 << 20);
        for bad in [
            "",
            "max_write=1024",
            "max_write=2097152",
            "max_write=4096,max_readahead=99999999",
            "max_write=4096,pin=2",
            "max_write=4096,what=1",
            "max_write",
            "max_write=-1",
            "max_write=4096,conn=99999999999",
        ] {
            assert!(HandoffParams::decode(bad).is_err(), "{bad}");
        }
    }
}

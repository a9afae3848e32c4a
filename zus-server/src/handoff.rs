//! A kernel transport's fd handed to zusd and served inside it, on a live mount.
//!
//! A client (the FUSE bridge, `zufs mount -o transport=uring,serve=zusd`) opens and mounts the
//! kernel side itself, then passes its fd with [`zus_channel::control::Request::Handoff`],
//! naming a mount it holds and a service `kind`. zusd gives it to the [`HandoffService`]
//! registered for that kind ([`register`]; the zusd binary registers the FUSE-over-io_uring
//! service, so this crate knows nothing of FUSE). The service serves the mount's requests on
//! its own threads (one pinned per CPU) through a [`LiveMount`]: [`crate::inline::op_on`]'s
//! checks and direct path (the caller's buffer is the op's window, no channel, no ZT
//! hand-off), on the mount every other client of zusd sees, with the server's
//! kernel-cache marks and tickets, held under an issuer id of its own. What a ZT does before it
//! replies to such an op (waiting out the data ops that missed a mark, raising the layout
//! generation) the serving thread does too (`zt::before_reply`).
//!
//! The registry is per process (one zusd per process; the library's tests start no service).

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, RwLock, Weak};

use zus_api::ops::OpCode;

use crate::inline::{InlineCreds, InlineData, InlineOutcome, op_on};
use crate::mounts::Mount;
use crate::server::Server;

/// What a serving hand-off reports for `zufs status`.
pub trait ServedCounts: Send + Sync + std::fmt::Debug {
    /// Requests served per CPU (the CPU they were served on).
    fn per_cpu(&self) -> Vec<u64>;
}

/// A service that serves a handed kernel transport.
pub trait HandoffService: Send + Sync + std::fmt::Debug {
    /// The `kind` it answers to.
    fn kind(&self) -> &'static str;

    /// Starts serving `fd` for `mount` with the client's `params`; returns once its threads
    /// run (they end when the transport's connection ends, dropping `mount`), with its
    /// counters, which `zufs status` reads as long as the service holds them.
    ///
    /// # Errors
    /// A message for the client (bad parameters, threads that did not start).
    fn serve(&self, mount: LiveMount, fd: OwnedFd, params: &str) -> Result<Arc<dyn ServedCounts>, String>;

    /// zusd is shutting down: end every connection this service serves (its threads then
    /// let go of their mounts, which zusd unmounts next).
    fn stop_all(&self) {}
}

static SERVICES: RwLock<Vec<Arc<dyn HandoffService>>> = RwLock::new(Vec::new());

/// Live hand-offs: (mount id, kind, its counters while the service holds them).
#[allow(clippy::type_complexity)]
static LIVE: Mutex<Vec<(u32, &'static str, Weak<dyn ServedCounts>)>> = Mutex::new(Vec::new());

/// Registers `service` for its kind (replacing one of the same kind).
pub fn register(service: Arc<dyn HandoffService>) {
    let mut v = SERVICES.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    v.retain(|s| s.kind() != service.kind());
    v.push(service);
}

fn service(kind: &str) -> Option<Arc<dyn HandoffService>> {
    SERVICES.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter().find(|s| s.kind() == kind).cloned()
}

/// What the live hand-offs of mount `id` report (empty when none).
#[must_use]
pub fn served(id: u32) -> (String, Vec<u64>) {
    let mut live = LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    live.retain(|(_, _, w)| w.strong_count() > 0);
    live.iter()
        .filter(|(m, _, _)| *m == id)
        .find_map(|(_, k, w)| w.upgrade().map(|c| ((*k).to_owned(), c.per_cpu())))
        .unwrap_or_default()
}

/// Requests served by every live hand-off, per CPU.
#[must_use]
pub fn served_per_cpu() -> Vec<u64> {
    let live = LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut sum: Vec<u64> = Vec::new();
    for c in live.iter().filter_map(|(_, _, w)| w.upgrade()) {
        for (i, n) in c.per_cpu().into_iter().enumerate() {
            if sum.len() <= i {
                sum.resize(i + 1, 0);
            }
            sum[i] += n;
        }
    }
    sum
}

/// Ends every served hand-off (zusd's shutdown, before it unmounts).
pub fn stop_all() {
    let v: Vec<_> = SERVICES.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    for s in v {
        s.stop_all();
    }
}

/// One live zusd mount, served on the calling thread for a handed transport.
///
/// It holds the mount (zusd's unmount of it waits until the service lets go: the transport's
/// connection ends first), and an issuer id under which its kernel-cache marks and tickets
/// live; dropping it takes them back.
#[derive(Debug)]
pub struct LiveMount {
    mount: Arc<Mount>,
    issuer: u32,
    /// The server, for what its ZTs do before a reply ([`crate::zt::before_reply`]); weak: the
    /// serving threads outlive nothing of it.
    server: Weak<Server>,
}

impl LiveMount {
    /// The mount's root inode.
    #[must_use]
    pub fn root(&self) -> u64 {
        self.mount.root
    }

    /// The mount id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.mount.id
    }

    /// The canonical device path (empty for a device-less plugin).
    #[must_use]
    pub fn device(&self) -> &str {
        &self.mount.device
    }

    /// The fs type.
    #[must_use]
    pub fn fs_type(&self) -> &str {
        &self.mount.fs_type
    }

    /// The mount's options.
    #[must_use]
    pub fn options(&self) -> &str {
        &self.mount.options
    }

    /// Serves one op on this thread ([`crate::inline::op_on`]) with the server's kernel-cache
    /// marks and tickets, and returns once what a ZT ensures before its
    /// reply holds ([`crate::zt::before_reply`]): a mark or unmark waited for the ZTs' data ops
    /// in flight, and an op that may move blocks (the mark and unmark among them) raised the
    /// layout generation, without which a fast-path client told `EUSEKERNEL` before an unmark
    /// would never ask again.
    pub fn op(
        &self,
        op: OpCode,
        creds: InlineCreds,
        req: &[&[u8]],
        data: InlineData<'_>,
        reply: &mut [u8],
    ) -> InlineOutcome {
        let out = REQ.with_borrow_mut(|buf| op_on(&self.mount, self.issuer, buf, op, creds, req, data, reply));
        if op.facts().invalidates_extents
            && let Some(server) = self.server.upgrade()
        {
            crate::zt::before_reply(&server, &server.current_snapshot(), None, op as u32, out.result);
        }
        out
    }
}

impl Drop for LiveMount {
    fn drop(&mut self) {
        self.mount.kernel_cache.drop_client(self.issuer);
        self.mount.tickets.drop_issuer(self.issuer);
    }
}

thread_local! {
    /// The request payload, assembled once per op.
    static REQ: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(zus_api::chan::PAYLOAD_SIZE));
}

/// Serves a [`zus_channel::control::Request::Handoff`]: `mount` must be in the server; the
/// service for `kind` gets it with `fd`.
///
/// # Errors
/// errno and message for the client.
pub fn start(
    server: &Arc<Server>,
    mount: Arc<Mount>,
    kind: &str,
    params: &str,
    fd: OwnedFd,
) -> Result<(), (zus_api::Errno, String)> {
    let Some(svc) = service(kind) else {
        return Err((zus_api::Errno::ENOSYS, format!("this zusd serves no {kind:?} transport")));
    };
    let issuer = {
        let mut st = server.state();
        let id = st.next_client;
        st.next_client += 1;
        id
    };
    let id = mount.id;
    let live = LiveMount { mount, issuer, server: Arc::downgrade(server) };
    let counts = svc.serve(live, fd, params).map_err(|m| (zus_api::Errno::EINVAL, m))?;
    LIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((id, svc.kind(), Arc::downgrade(&counts)));
    tracing::info!("mount {id}: serving a handed {kind} transport (issuer {issuer})");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use zus_api::ops::{KernelCacheReq, Pod, ReleaseReq, TicketReq};
    use zus_channel::proto::Channel;

    use super::*;
    use crate::testutil::{Device, client, plugin, server};

    /// A handed transport's ops on the live mount move the layout generation as a ZT's do: the
    /// unmark's raise is what sends a fast-path client told `EUSEKERNEL` back to zusd (issue
    /// 13: without it the fast path stayed away from the inode after the kernel let go).
    #[test]
    fn test_live_mount_marks_and_block_moving_ops_raise_the_layout_generation() {
        let s = server("handoff-layout");
        let dev = Device::new("handoff-layout");
        let mount = Arc::new(crate::mounts::mount(1, &plugin(), &dev.0, &dev.0).unwrap());
        let c = client(&s);
        let live = LiveMount { mount: Arc::clone(&mount), issuer: 99, server: Arc::downgrade(&s) };
        let gen_now = || Channel::new(&c.region, c.geometry).layout_gen().load(Ordering::SeqCst);
        let mut reply = vec![0u8; 256];
        let mut run = |op, req: &[u8]| live.op(op, InlineCreds::default(), &[req], InlineData::None, &mut reply).result;

        let g0 = gen_now();
        assert_eq!(run(OpCode::KernelCache, KernelCacheReq { ino: 5, on: 1, reserved: 0 }.as_bytes()), 0);
        assert!(mount.kernel_cache.contains(5));
        let g1 = gen_now();
        assert!(g1 > g0, "the mark raised no layout generation");
        assert_eq!(run(OpCode::KernelCache, KernelCacheReq { ino: 5, on: 0, reserved: 0 }.as_bytes()), 0);
        assert!(!mount.kernel_cache.contains(5));
        let g2 = gen_now();
        assert!(g2 > g1, "the unmark raised no layout generation");
        assert_eq!(run(OpCode::Release, ReleaseReq { ino: 5, fh: 1 }.as_bytes()), 0);
        let g3 = gen_now();
        assert!(g3 > g2, "a release (which may free an unlinked file's blocks) raised none");
        // A ticket moves no block.
        let t = run(OpCode::Ticket, TicketReq { ino: 5, ticket: 0, uid: 1000, writable: 1 }.as_bytes());
        assert!(t > 0);
        assert_eq!(gen_now(), g3);
        drop(live);
        Arc::try_unwrap(mount).unwrap().unmount().unwrap();
    }
}

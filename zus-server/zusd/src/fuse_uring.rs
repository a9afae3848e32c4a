//! The FUSE-over-io_uring hand-off service (`zufs mount -o transport=uring,serve=zusd`): the
//! glue between zus-server's [`HandoffService`] (which knows nothing of FUSE) and the bridge's
//! request logic (`zufs_fuse`), linked together only here, in the zusd binary.
//!
//! For each handed `/dev/fuse` it builds a [`Bridge`] whose link is the live zusd mount (a
//! [`LiveMount`]: the inline path with the server's kernel-cache marks and tickets) and starts
//! `zufs_fuse::uring::handoff::spawn_handed`: one ring per possible CPU, served by a thread
//! pinned to that CPU.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use zufs_fuse::bridge::{Bridge, InProcess, MountSpec, Op, OpErrno as Errno};
use zufs_fuse::uring::handoff::{Handed, HandoffParams, KIND, spawn_handed};
use zus_client::{Creds, DataIn, OpOutcome};
use zus_server::handoff::{HandoffService, LiveMount, ServedCounts};
use zus_server::inline::{InlineCreds, InlineData};

/// The bridge's link: ops run on the calling (ring) thread against the live mount.
#[derive(Debug)]
struct Link(LiveMount);

impl InProcess for Link {
    fn op(
        &self,
        opcode: Op,
        req: &[&[u8]],
        data_in: DataIn<'_>,
        reply: &mut [u8],
        data_out: Option<&mut [u8]>,
        creds: Option<Creds>,
    ) -> Result<OpOutcome, Errno> {
        let data = match (data_in, data_out) {
            (DataIn::Window(d), None) => InlineData::In(d),
            (DataIn::None, Some(d)) => InlineData::Out(d),
            (DataIn::None, None) => InlineData::None,
            (DataIn::Window(_), Some(_)) => return Err(Errno::EINVAL),
        };
        let c = creds.unwrap_or_default();
        let o = self.0.op(opcode, InlineCreds { uid: c.uid, gid: c.gid, pid: c.pid }, req, data, reply);
        let value = Errno::from_wire(o.result)?;
        Ok(OpOutcome { value, reply_len: o.reply_len, data_len: o.data_len })
    }

    fn unmount(&self) -> Result<(), Errno> {
        // The mount is zusd's: the bridge process unmounts it over the control socket.
        Ok(())
    }

    fn mount_id(&self) -> u32 {
        self.0.id()
    }
}

/// One served connection's counters (held by its threads until the connection ends).
#[derive(Debug, Default)]
struct Served(OnceLock<Arc<Handed>>);

impl ServedCounts for Served {
    fn per_cpu(&self) -> Vec<u64> {
        self.0.get().map(|h| h.served_per_cpu()).unwrap_or_default()
    }
}

/// The service zusd registers for [`KIND`].
#[derive(Debug, Default)]
pub struct FuseUring {
    live: Mutex<Vec<Weak<Served>>>,
}

impl HandoffService for FuseUring {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn serve(&self, mount: LiveMount, fd: OwnedFd, params: &str) -> Result<Arc<dyn ServedCounts>, String> {
        let p = HandoffParams::decode(params)?;
        let id = mount.id();
        let root = mount.root();
        let spec = MountSpec {
            socket: std::path::PathBuf::new(),
            fs_type: mount.fs_type().to_owned(),
            device: mount.device().to_owned(),
            server_options: mount.options().to_owned(),
        };
        let bridge = Bridge::in_process(spec, Arc::new(Link(mount)), root, p.sync);
        let served = Arc::new(Served::default());
        let held = Arc::clone(&served);
        let done = Box::new(move || {
            tracing::info!("mount {id}: the handed FUSE connection ended");
            drop(held);
        });
        let h = spawn_handed(bridge, fd, &p, done).map_err(|e| format!("starting the FUSE ring threads: {e}"))?;
        let _ = served.0.set(h);
        let mut live = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&served));
        Ok(served)
    }

    fn stop_all(&self) {
        let live: Vec<_> = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain(..).collect();
        for s in live.iter().filter_map(Weak::upgrade) {
            if let Some(h) = s.0.get()
                && !h.abort()
            {
                tracing::warn!("cannot abort a handed FUSE connection (no fusectl): its mount stays until unmounted");
            }
        }
    }
}

//! `zufs mount -o serve=inline`: the filesystem served inside the bridge process, each op on
//! the thread that received it (with `transport=uring`: the ring thread pinned to the caller's
//! CPU; the mode (b) prototype of issue 13). The glue between the bridge's [`InProcess`] and
//! `zus_server::inline::InlineMount`.

use std::sync::RwLock;

use zufs_fuse::bridge::{InProcess, Op, OpErrno as Errno};
use zus_client::{Creds, DataIn, OpOutcome};
use zus_server::inline::{InlineCreds, InlineData, InlineMount};

/// An [`InlineMount`] until it is unmounted.
#[derive(Debug)]
pub struct Inline(RwLock<Option<InlineMount>>);

impl Inline {
    /// Wraps a mounted filesystem.
    pub fn new(m: InlineMount) -> Self {
        Self(RwLock::new(Some(m)))
    }
}

impl InProcess for Inline {
    fn op(
        &self,
        opcode: Op,
        req: &[&[u8]],
        data_in: DataIn<'_>,
        reply: &mut [u8],
        data_out: Option<&mut [u8]>,
        creds: Option<Creds>,
    ) -> Result<OpOutcome, Errno> {
        let g = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let m = g.as_ref().ok_or(Errno::EIO)?;
        let data = match (data_in, data_out) {
            (DataIn::Window(d), None) => InlineData::In(d),
            (DataIn::None, Some(d)) => InlineData::Out(d),
            (DataIn::None, None) => InlineData::None,
            (DataIn::Window(_), Some(_)) => return Err(Errno::EINVAL),
        };
        let c = creds.unwrap_or_default();
        let o = m.op(opcode, InlineCreds { uid: c.uid, gid: c.gid, pid: c.pid }, req, data, reply);
        let value = Errno::from_wire(o.result)?;
        Ok(OpOutcome { value, reply_len: o.reply_len, data_len: o.data_len })
    }

    fn unmount(&self) -> Result<(), Errno> {
        let m = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        m.map_or(Ok(()), InlineMount::unmount)
    }
}

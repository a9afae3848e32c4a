//! Extended attributes: all of an inode's xattrs are kept in DRAM and stored together in one
//! run of contiguous blocks (up to [`XATTR_MAX_BLOCKS`]). A change writes the whole set to a
//! fresh run outside the journal, fences, and commits only the inode's pointer to it (the old
//! run is freed by the same transaction): the journal carries a few records whatever the size,
//! and a crash leaves the old run or the new one.

use std::collections::BTreeMap;

use zus_pmem::Persist;

use super::{Fs, Op, node_mut, now_ns};
use crate::check::{XATTR_MAX_BLOCKS, encode_xattrs};
use crate::error::{FsError, Result};
use crate::inode::Inode;
use crate::layout::BLOCK;

/// XATTR_CREATE.
pub const XATTR_CREATE: u32 = 1;
/// XATTR_REPLACE.
pub const XATTR_REPLACE: u32 = 2;

/// The namespaces pmemfs stores (as tmpfs and ext4: `user.`, `trusted.`, `security.`, and the
/// POSIX ACLs of `system.`); any other name is `EOPNOTSUPP`. Who may use which namespace is the
/// kernel's check (the VFS's xattr_permission).
fn known_namespace(name: &[u8]) -> Result<()> {
    const OK: [&[u8]; 5] =
        [b"user.", b"trusted.", b"security.", b"system.posix_acl_access", b"system.posix_acl_default"];
    let known =
        OK.iter().any(|p| if p.ends_with(b".") { name.starts_with(p) && name.len() > p.len() } else { name == *p });
    if known { Ok(()) } else { Err(FsError::NotSupported) }
}

impl<P: Persist> Fs<P> {
    /// Get an xattr.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        known_namespace(name)?;
        let g = self.rl(ino)?;
        g.as_ref().ok_or(FsError::NotFound)?.xattrs.get(name).cloned().ok_or(FsError::NoAttr)
    }

    /// List xattr names.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let g = self.rl(ino)?;
        Ok(g.as_ref().ok_or(FsError::NotFound)?.xattrs.keys().cloned().collect())
    }

    /// Set an xattr (flags: XATTR_CREATE / XATTR_REPLACE). All of an inode's xattrs share one block.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        self.live()?;
        if name.is_empty() || name.len() > 255 {
            return Err(if name.is_empty() { FsError::Invalid("empty xattr name".into()) } else { FsError::Range });
        }
        known_namespace(name)?;
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        let exists = n.xattrs.contains_key(name);
        if flags & XATTR_CREATE != 0 && exists {
            return Err(FsError::Exists);
        }
        if flags & XATTR_REPLACE != 0 && !exists {
            return Err(FsError::NoAttr);
        }
        let mut m = n.xattrs.clone();
        m.insert(name.to_vec(), value.to_vec());
        self.store_xattrs(ino, n, m)
    }

    /// Remove an xattr.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        self.live()?;
        known_namespace(name)?;
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        let mut m = n.xattrs.clone();
        m.remove(name).ok_or(FsError::NoAttr)?;
        self.store_xattrs(ino, n, m)
    }

    /// `len` contiguous free blocks, reserved, if the allocator has them.
    fn find_run(&self, len: u64) -> Option<u64> {
        let mut held = Vec::new();
        let mut found = None;
        for _ in 0..256 {
            let Some((s, got)) = self.balloc.alloc(len, None) else { break };
            if got >= len {
                if got > len {
                    self.balloc.release(s + len, got - len);
                }
                found = Some(s);
                break;
            }
            held.push((s, got));
        }
        for (s, got) in held {
            self.balloc.release(s, got);
        }
        found
    }

    /// `len` contiguous blocks for `op` (the allocator hands out the run at its hint, which
    /// may be shorter: shorter runs are held aside while looking further, then given back).
    fn alloc_run(&self, op: &mut Op<'_, P>, len: u64) -> Result<u64> {
        let mut found = None;
        for attempt in 0..2 {
            // Second attempt: after a checkpoint gave back blocks freed by logged transactions.
            if attempt == 1 && (found.is_some() || self.checkpoint()? == 0) {
                break;
            }
            found = self.find_run(len);
        }
        let s = found.ok_or(FsError::NoSpace)?;
        op.allocated.push((s, len));
        op.txn.set_bits(s, len);
        Ok(s)
    }

    fn store_xattrs(&self, ino: u64, n: &mut Inode, m: BTreeMap<Vec<u8>, Vec<u8>>) -> Result<()> {
        let mut op = Op::new(self);
        let old = (n.d.xattr_blk, n.xattr_nblk.max(1));
        let (mut blk, mut nblk) = (0, 0);
        if !m.is_empty() {
            let enc = encode_xattrs(&m).ok_or(FsError::NoSpace)?;
            nblk = enc.len() as u64 / BLOCK;
            debug_assert!(nblk <= XATTR_MAX_BLOCKS);
            let s = self.alloc_run(&mut op, nblk)?;
            // The new run is unreferenced until the commit: durable before it.
            self.pm.nt_store(s * BLOCK, &enc)?;
            self.pm.fence();
            blk = s;
        }
        if old.0 != 0 {
            op.free(old.0, old.1);
        }
        n.d.xattr_blk = blk;
        n.xattr_nblk = nblk;
        n.xattrs = m;
        n.d.ctime = now_ns();
        n.dirty = true;
        n.flush_record(&self.geo, ino, &mut op.txn);
        op.commit()
    }
}

//! Extended attributes: all of an inode's xattrs are kept in DRAM and stored together in one
//! block, rewritten whole by each change.

use std::collections::BTreeMap;

use zus_pmem::Persist;

use super::{Fs, Op, node_mut, now_ns};
use crate::check::encode_xattrs;
use crate::error::{FsError, Result};
use crate::inode::Inode;
use crate::layout::BLOCK;

/// XATTR_CREATE.
pub const XATTR_CREATE: u32 = 1;
/// XATTR_REPLACE.
pub const XATTR_REPLACE: u32 = 2;

impl<P: Persist> Fs<P> {
    /// Get an xattr.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
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
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        let mut m = n.xattrs.clone();
        m.remove(name).ok_or(FsError::NoAttr)?;
        self.store_xattrs(ino, n, m)
    }

    fn store_xattrs(&self, ino: u64, n: &mut Inode, m: BTreeMap<Vec<u8>, Vec<u8>>) -> Result<()> {
        let mut op = Op::new(self);
        if m.is_empty() {
            if n.d.xattr_blk != 0 {
                op.free(n.d.xattr_blk, 1);
                n.d.xattr_blk = 0;
            }
        } else {
            let mut enc = encode_xattrs(&m).ok_or(FsError::NoSpace)?;
            enc.resize(BLOCK as usize, 0);
            if n.d.xattr_blk == 0 {
                n.d.xattr_blk = op.alloc(1, None)?.0;
            }
            op.txn.write(n.d.xattr_blk * BLOCK, &enc);
        }
        n.xattrs = m;
        n.d.ctime = now_ns();
        n.dirty = true;
        n.flush_record(&self.geo, ino, &mut op.txn);
        op.commit()
    }
}

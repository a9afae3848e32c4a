//! Clearing set-id bits and file capabilities in the bridge (`FUSE_HANDLE_KILLPRIV_V2`, issue 17).
//!
//! Both transports answer INIT with `FUSE_HANDLE_KILLPRIV_V2`, on which the kernel (6.18) sets
//! `SB_NOSEC` on the FUSE superblock: once it has seen that an inode has neither set-id bits nor
//! `security.capability`, it marks it `S_NOSEC` and stops asking for `security.capability`
//! (a GETXATTR) before every write, until the next attribute refresh. In exchange the filesystem
//! clears what the kernel no longer clears itself (fs/fuse/file.c, dir.c):
//!
//! - a WRITE carries `FUSE_WRITE_KILL_SUIDGID` when the writer lacks CAP_FSETID (the kernel sets
//!   it on direct writes without V2 too): the plugin clears S_ISUID, and S_ISGID when the
//!   group-exec bit is set, in the write (`io_flags::KILL_SUIDGID`, [`Bridge::write`]);
//! - a SETATTR carries `FATTR_KILL_SUIDGID` on a truncate by a caller without CAP_FSETID and on
//!   every chown of a non-directory ([`KillSetid`], [`Bridge::setattr_killpriv`]);
//! - `file_remove_privs` (write, fallocate, copy_file_range of a set-id file by a caller without
//!   CAP_FSETID) and `chown(f, -1, -1)` reach `fuse_setattr` with only `ATTR_KILL_SUID`/`SGID`,
//!   which V2 drops: the kernel then sends a SETATTR that sets nothing. Nothing else sends
//!   one to a non-directory (a utimensat that omits both times returns before the VFS), so such
//!   a SETATTR clears the bits as a kill (without V2 the kernel would have sent the new mode);
//! - an open with O_TRUNC would carry `FUSE_OPEN_KILL_SUIDGID`, but only with
//!   `FUSE_ATOMIC_O_TRUNC`, which the bridge does not negotiate: the kernel truncates with a
//!   SETATTR (above). CREATE carries it for a name that was absent at LOOKUP: a new file,
//!   nothing to clear;
//! - `security.capability` goes on every write (any writer, as `file_remove_privs` does), on
//!   truncate and on chown ([`Bridge::drop_caps`]); the kernel still removes it itself on
//!   writes through the page cache of an inode not yet `S_NOSEC`. Its absence is remembered per
//!   inode (the bridge's known-absent xattrs), so this costs a zusd op only the first time.
//!
//! The classic transport gets a SETATTR's fields from fuser 0.18, which hides `FATTR_KILL_SUIDGID`
//! (and the open flags): there a chown kills, and a truncate kills when the caller lacks
//! CAP_FSETID, read from /proc/PID/status only when the file has bits to clear. The uring
//! transports read the flag. The rule is the kernel's FUSE setattr's: S_ISUID, and S_ISGID only
//! with group-exec (tmpfs also drops S_ISGID without group-exec for a writer outside the group).
//! One case differs from the kernel's: a writer with CAP_FSETID on a file with a set-id bit and
//! `security.capability` gets a `file_remove_privs` SETATTR (for the capability) that looks like
//! `chown(f, -1, -1)`, so the set-id bit goes too.

use std::sync::atomic::Ordering;

use zus_api::Errno;
use zus_api::ops::{Attr, SetattrReq, setattr};
use zus_client::Creds;

use crate::acl::{ROOT, caller_status, has_fsetid};
use crate::bridge::Bridge;

/// The file capability xattr.
pub const CAPS: &[u8] = b"security.capability";

/// What a SETATTR asks of a regular file's set-id bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillSetid {
    /// Leave them.
    No,
    /// Clear S_ISUID, and S_ISGID when the group-exec bit is set.
    Yes,
    /// As `Yes` when the caller lacks CAP_FSETID (a truncate on the classic transport).
    UnlessCapable,
}

impl KillSetid {
    /// From a SETATTR's `valid` (zus_api `setattr` bits) and whether the request carried
    /// `FATTR_KILL_SUIDGID` (`None`: the transport cannot see it).
    #[must_use]
    pub fn of(valid: u32, flag: Option<bool>) -> Self {
        let all = setattr::MODE
            | setattr::UID
            | setattr::GID
            | setattr::SIZE
            | setattr::ATIME
            | setattr::MTIME
            | setattr::ATIME_NOW
            | setattr::MTIME_NOW
            | setattr::CTIME;
        if valid & all == 0 {
            return Self::Yes;
        }
        match flag {
            Some(true) => Self::Yes,
            Some(false) => Self::No,
            None if valid & (setattr::UID | setattr::GID) != 0 => Self::Yes,
            None if valid & setattr::SIZE != 0 => Self::UnlessCapable,
            None => Self::No,
        }
    }
}

/// The set-id bits a kill clears from `mode`: a non-directory's (a chown clears them from a fifo
/// or device node too; a directory keeps them).
fn setid_bits(mode: u32) -> u32 {
    if mode & libc::S_IFMT == libc::S_IFDIR {
        return 0;
    }
    let mut kill = mode & libc::S_ISUID;
    if mode & (libc::S_ISGID | libc::S_IXGRP) == libc::S_ISGID | libc::S_IXGRP {
        kill |= libc::S_ISGID;
    }
    kill
}

impl Bridge {
    /// SETATTR: [`Bridge::setattr_acl`], then the set-id bits cleared as `kill` says and
    /// `security.capability` removed on a truncate or chown of a regular file.
    ///
    /// # Errors
    /// The op's errno.
    pub fn setattr_killpriv(&self, creds: Creds, req: SetattrReq, kill: KillSetid) -> Result<Attr, Errno> {
        let node = req.ino;
        let mut a = self.setattr_acl(creds, req)?;
        let bits = setid_bits(a.mode);
        let capable = || caller_status(creds).is_some_and(|s| has_fsetid(&s));
        if bits != 0 && (kill == KillSetid::Yes || (kill == KillSetid::UnlessCapable && !capable())) {
            a = self.set_mode(node, a.mode & !bits)?;
        }
        if req.valid & (setattr::SIZE | setattr::UID | setattr::GID) != 0 && a.mode & libc::S_IFMT == libc::S_IFREG {
            self.drop_caps(node)?;
        }
        Ok(a)
    }

    /// Removes `security.capability` of `node` (as the kernel's `file_remove_privs`): a
    /// GETXATTR at zusd unless its absence is known, a REMOVEXATTR when it is there.
    ///
    /// # Errors
    /// The ops' errno (not ENODATA, nor a plugin without xattrs).
    pub(crate) fn drop_caps(&self, node: u64) -> Result<(), Errno> {
        if self.no_xattrs.load(Ordering::Relaxed) {
            return Ok(());
        }
        let gone = |e: Errno| match e.0 {
            libc::ENODATA => Ok(()),
            libc::EOPNOTSUPP | libc::ENOSYS => {
                self.no_xattrs.store(true, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(e),
        };
        match self.getxattr(node, CAPS, 0) {
            Ok(_) => self.removexattr(ROOT, node, CAPS).or_else(gone),
            Err(e) => gone(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_kill_of_setattr() {
        use KillSetid::{No, UnlessCapable, Yes};
        // nothing to set: file_remove_privs or chown(-1, -1) under V2
        assert_eq!(KillSetid::of(0, None), Yes);
        assert_eq!(KillSetid::of(0, Some(false)), Yes);
        assert_eq!(KillSetid::of(setattr::SIZE, Some(true)), Yes);
        assert_eq!(KillSetid::of(setattr::SIZE, Some(false)), No);
        assert_eq!(KillSetid::of(setattr::SIZE, None), UnlessCapable);
        assert_eq!(KillSetid::of(setattr::UID, None), Yes);
        assert_eq!(KillSetid::of(setattr::GID | setattr::MODE, None), Yes);
        assert_eq!(KillSetid::of(setattr::MODE, None), No);
        assert_eq!(KillSetid::of(setattr::ATIME | setattr::MTIME_NOW, None), No);
    }

    #[test]
    fn test_setid_bits_as_fuse_setattr() {
        assert_eq!(setid_bits(libc::S_IFREG | 0o6777), 0o6000);
        assert_eq!(setid_bits(libc::S_IFREG | 0o6767), 0o4000);
        assert_eq!(setid_bits(libc::S_IFREG | 0o2755), 0o2000);
        assert_eq!(setid_bits(libc::S_IFREG | 0o2745), 0);
        assert_eq!(setid_bits(libc::S_IFDIR | 0o6777), 0);
        assert_eq!(setid_bits(libc::S_IFIFO | 0o6775), 0o6000);
        assert_eq!(setid_bits(libc::S_IFREG | 0o755), 0);
    }
}

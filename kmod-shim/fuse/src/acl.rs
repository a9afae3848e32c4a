//! POSIX ACLs on the FUSE mount (issue 16 item 2).
//!
//! Both transports answer INIT with `FUSE_POSIX_ACL` and `FUSE_DONT_MASK`. The kernel then
//! caches the `system.posix_acl_access`/`_default` xattrs (which the plugin stores like any
//! other), checks permissions with them (`default_permissions` is implied) and, on a `setfacl` or
//! `chmod`, drops its cached ACLs and attributes. What it leaves to the filesystem (6.18,
//! fs/fuse/acl.c and dir.c, as libfuse documents `FUSE_CAP_POSIX_ACL`) is done here, as the
//! kernel's own filesystems do it (fs/posix_acl.c), on top of the plain `Bridge` ops:
//!
//! - setting an access ACL sets the mode from it (owner, mask or group, other), stores no ACL
//!   when it is equivalent to the mode, and clears S_ISGID when the caller is outside the file's
//!   group without CAP_FSETID ([`Bridge::setxattr_acl`], `posix_acl_update_mode`);
//! - a chmod rewrites the owner, mask (or group) and other entries of the access ACL
//!   ([`Bridge::setattr_acl`], `posix_acl_chmod`);
//! - a create, mknod or mkdir in a directory with a default ACL gets the mode masked by it and
//!   an access ACL from it (a directory the default ACL too), and the umask does not apply;
//!   elsewhere the umask does (with `FUSE_DONT_MASK` the kernel sends it instead of applying it)
//!   ([`Bridge::make_acl`], `posix_acl_create`).
//!
//! These internal reads and writes of the ACL xattrs go to zusd as root: the kernel has already
//! checked that the caller may do what it asked.

use zus_api::Errno;
use zus_api::ops::{Attr, OpCode, SetattrReq, setattr};
use zus_client::Creds;

use crate::bridge::Bridge;

/// The access ACL xattr.
pub const ACCESS: &[u8] = b"system.posix_acl_access";
/// The default ACL xattr.
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// One ACL entry (`posix_acl_xattr_entry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Tag (`ACL_USER_OBJ` ...).
    pub tag: u16,
    /// rwx bits.
    pub perm: u16,
    /// uid or gid for named entries.
    pub id: u32,
}

/// Parses the xattr form (version 2 header, 8-byte entries).
///
/// # Errors
/// EINVAL for a malformed value.
pub fn parse(v: &[u8]) -> Result<Vec<Entry>, Errno> {
    if v.len() < 4 || !(v.len() - 4).is_multiple_of(8) || u32::from_le_bytes([v[0], v[1], v[2], v[3]]) != VERSION {
        return Err(Errno(libc::EINVAL));
    }
    Ok(v[4..]
        .chunks_exact(8)
        .map(|c| Entry {
            tag: u16::from_le_bytes([c[0], c[1]]),
            perm: u16::from_le_bytes([c[2], c[3]]),
            id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// The xattr form of `acl`.
#[must_use]
pub fn encode(acl: &[Entry]) -> Vec<u8> {
    let mut v = VERSION.to_le_bytes().to_vec();
    for e in acl {
        v.extend_from_slice(&e.tag.to_le_bytes());
        v.extend_from_slice(&e.perm.to_le_bytes());
        v.extend_from_slice(&e.id.to_le_bytes());
    }
    v
}

/// `posix_acl_equiv_mode`: the permission bits `acl` gives, and whether it says more than a
/// mode can (named entries or a mask).
#[must_use]
pub fn mode_of(acl: &[Entry]) -> (u32, bool) {
    let mut mode = 0u32;
    let mut extended = false;
    for e in acl {
        let p = u32::from(e.perm & 7);
        match e.tag {
            USER_OBJ => mode |= p << 6,
            GROUP_OBJ => mode |= p << 3,
            OTHER => mode |= p,
            MASK => {
                mode = (mode & !0o070) | (p << 3);
                extended = true;
            }
            _ => extended = true,
        }
    }
    // The mask follows the group entry in the sorted list; keep its value over GROUP_OBJ's.
    if let Some(m) = acl.iter().find(|e| e.tag == MASK) {
        mode = (mode & !0o070) | (u32::from(m.perm & 7) << 3);
    }
    (mode, extended)
}

/// `posix_acl_chmod`: the entries a mode change rewrites.
pub fn chmod(acl: &mut [Entry], mode: u32) {
    let has_mask = acl.iter().any(|e| e.tag == MASK);
    for e in acl.iter_mut() {
        let p = match e.tag {
            USER_OBJ => (mode >> 6) & 7,
            MASK => (mode >> 3) & 7,
            GROUP_OBJ if !has_mask => (mode >> 3) & 7,
            OTHER => mode & 7,
            _ => continue,
        };
        e.perm = u16::try_from(p).unwrap_or(0);
    }
}

/// `posix_acl_create_masq`: masks `acl` (a copy of the parent's default ACL) and the new
/// node's `mode` by each other; returns the mode and whether the ACL must be kept.
pub fn create_masq(acl: &mut [Entry], mut mode: u32) -> (u32, bool) {
    let mut extended = false;
    let mut group_obj = None;
    let mut mask_obj = None;
    for (i, e) in acl.iter_mut().enumerate() {
        match e.tag {
            USER_OBJ => {
                e.perm &= u16::try_from((mode >> 6) & 7).unwrap_or(0);
                mode &= (u32::from(e.perm) << 6) | !0o700;
            }
            USER | GROUP => extended = true,
            GROUP_OBJ => group_obj = Some(i),
            OTHER => {
                e.perm &= u16::try_from(mode & 7).unwrap_or(0);
                mode &= u32::from(e.perm) | !0o007;
            }
            MASK => {
                mask_obj = Some(i);
                extended = true;
            }
            _ => {}
        }
    }
    if let Some(i) = mask_obj.or(group_obj) {
        let e = &mut acl[i];
        e.perm &= u16::try_from((mode >> 3) & 7).unwrap_or(0);
        mode &= (u32::from(e.perm) << 3) | !0o070;
    }
    (mode, extended)
}

/// The credentials of ops the bridge sends itself (set-id bits cleared, ACL xattrs written).
pub(crate) const ROOT: Creds = Creds { uid: 0, gid: 0, pid: 0 };

/// linux/capability.h.
const CAP_FSETID: u32 = 4;

/// The `/proc/PID/status` of the caller of a request (the caller waits in the syscall, and FUSE
/// gives its pid in our namespace); `None` when it cannot be read.
pub(crate) fn caller_status(c: Creds) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{}/status", c.pid)).ok()
}

/// A field of a `/proc/PID/status`.
fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)).map(str::trim)
}

/// Whether a `/proc/PID/status` shows CAP_FSETID among the effective capabilities.
pub(crate) fn has_fsetid(status: &str) -> bool {
    status_field(status, "CapEff:")
        .and_then(|c| u64::from_str_radix(c, 16).ok())
        .is_some_and(|c| c & (1 << CAP_FSETID) != 0)
}

/// The kernel's `in_group_or_capable` for the caller of a request: its gid, its supplementary
/// groups or CAP_FSETID ([`caller_status`]). Not in the group when that cannot be read.
fn in_group_or_capable(c: Creds, gid: u32) -> bool {
    if c.uid == 0 || c.gid == gid {
        return true;
    }
    let Some(s) = caller_status(c) else { return false };
    let in_groups = status_field(&s, "Groups:").is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)));
    in_groups || has_fsetid(&s)
}

impl Bridge {
    /// An ACL of `node` (`None` when it has none).
    fn acl(&self, node: u64, name: &[u8]) -> Result<Option<Vec<Entry>>, Errno> {
        match self.getxattr(node, name, 65536) {
            Ok((_, v)) => parse(&v).map(Some),
            Err(e) if e.0 == libc::ENODATA || e.0 == libc::EOPNOTSUPP || e.0 == libc::ENOSYS => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets `node`'s mode as the bridge (for the kernel's set-id and ACL rules).
    pub(crate) fn set_mode(&self, node: u64, mode: u32) -> Result<Attr, Errno> {
        self.setattr(ROOT, SetattrReq { ino: node, valid: setattr::MODE, mode, ..SetattrReq::default() })
    }

    /// getxattr; a plugin without xattrs has no ACLs (ENODATA: the kernel asks for them on
    /// every permission check of a non-owner, and takes any other error for a failure).
    ///
    /// # Errors
    /// The op's errno.
    pub fn getxattr_acl(&self, node: u64, name: &[u8], size: u32) -> Result<(u64, Vec<u8>), Errno> {
        match self.getxattr(node, name, size) {
            Err(e) if e.0 == libc::EOPNOTSUPP && (name == ACCESS || name == DEFAULT) => Err(Errno(libc::ENODATA)),
            r => r,
        }
    }

    /// create/mknod/mkdir with the umask (`FUSE_DONT_MASK`) or the parent's default ACL.
    ///
    /// # Errors
    /// The op's errno.
    #[allow(clippy::too_many_arguments)]
    pub fn make_acl(
        &self,
        creds: Creds,
        op: OpCode,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        flags: u32,
    ) -> Result<Attr, Errno> {
        let Some(default) = self.acl(parent, DEFAULT)? else {
            return self.make(creds, op, parent, name, mode & !(umask & 0o777), rdev, flags);
        };
        let mut access = default.clone();
        let (mode, keep) = create_masq(&mut access, mode);
        let mut a = self.make(creds, op, parent, name, mode, rdev, flags)?;
        let node = a.ino;
        if op == OpCode::Mkdir {
            self.setxattr(ROOT, node, DEFAULT, &encode(&default), 0)?;
        }
        if keep {
            self.setxattr(ROOT, node, ACCESS, &encode(&access), 0)?;
            a = self.getattr(node)?;
        }
        Ok(a)
    }

    /// create + open (the kernel's CREATE): one `CreateOpen` at zusd, or, under a parent with a
    /// default ACL, the create with its ACLs and then the open.
    ///
    /// # Errors
    /// The op's errno.
    pub fn create_open_acl(
        &self,
        creds: Creds,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: u32,
    ) -> Result<(Attr, u64), Errno> {
        if self.acl(parent, DEFAULT)?.is_none() {
            return self.create_open(creds, parent, name, mode & !(umask & 0o777), flags);
        }
        let a = self.make_acl(creds, OpCode::Create, parent, name, mode, umask, 0, flags)?;
        Ok((a, self.open(creds, a.ino, flags)?))
    }

    /// setxattr; an access ACL also sets the mode (and is not stored when a mode says it all).
    ///
    /// # Errors
    /// The op's errno; EINVAL for a malformed ACL.
    pub fn setxattr_acl(&self, creds: Creds, node: u64, name: &[u8], value: &[u8], flags: u32) -> Result<(), Errno> {
        if name != ACCESS {
            return self.setxattr(creds, node, name, value, flags);
        }
        let acl = parse(value)?;
        let (bits, extended) = mode_of(&acl);
        if extended {
            self.setxattr(creds, node, name, value, flags)?;
        } else {
            match self.removexattr(ROOT, node, name) {
                Err(e) if e.0 != libc::ENODATA => return Err(e),
                _ => {}
            }
        }
        let a = self.getattr(node)?;
        let old = a.mode;
        let mut mode = (old & 0o7000) | bits;
        if mode & libc::S_ISGID != 0 && !in_group_or_capable(creds, a.gid) {
            mode &= !libc::S_ISGID;
        }
        if mode != old & 0o7777 {
            self.set_mode(node, mode)?;
        }
        Ok(())
    }

    /// setattr; a mode change rewrites the access ACL's owner, mask (or group) and other
    /// entries.
    ///
    /// # Errors
    /// The op's errno.
    pub fn setattr_acl(&self, creds: Creds, req: SetattrReq) -> Result<Attr, Errno> {
        let node = req.ino;
        let a = self.setattr(creds, req)?;
        if req.valid & setattr::MODE != 0
            && let Some(mut acl) = self.acl(node, ACCESS)?
        {
            chmod(&mut acl, a.mode);
            self.setxattr(ROOT, node, ACCESS, &encode(&acl), 0)?;
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(tag: u16, perm: u16, id: u32) -> Entry {
        Entry { tag, perm, id }
    }

    const U: u32 = u32::MAX;

    #[test]
    fn test_xattr_round_trip_and_malformed() {
        let a = vec![e(USER_OBJ, 6, U), e(USER, 6, 1000), e(GROUP_OBJ, 4, U), e(MASK, 6, U), e(OTHER, 0, U)];
        assert_eq!(parse(&encode(&a)).unwrap(), a);
        assert!(parse(&[2, 0, 0]).is_err());
        assert!(parse(&[1, 0, 0, 0]).is_err());
        assert!(parse(&[2, 0, 0, 0, 1]).is_err());
    }

    #[test]
    fn test_mode_of_uses_the_mask_for_the_group_bits() {
        let a = [e(USER_OBJ, 6, U), e(USER, 6, 1000), e(GROUP_OBJ, 4, U), e(MASK, 6, U), e(OTHER, 0, U)];
        assert_eq!(mode_of(&a), (0o660, true));
        assert_eq!(mode_of(&[e(USER_OBJ, 7, U), e(GROUP_OBJ, 5, U), e(OTHER, 0, U)]), (0o750, false));
    }

    #[test]
    fn test_chmod_rewrites_mask_not_group() {
        let mut a = [e(USER_OBJ, 6, U), e(USER, 6, 1000), e(GROUP_OBJ, 4, U), e(MASK, 6, U), e(OTHER, 0, U)];
        chmod(&mut a, 0o604);
        assert_eq!(a.map(|x| x.perm), [6, 6, 4, 0, 4]);
        let mut b = [e(USER_OBJ, 6, U), e(GROUP_OBJ, 4, U), e(OTHER, 0, U)];
        chmod(&mut b, 0o751);
        assert_eq!(b.map(|x| x.perm), [7, 5, 1]);
    }

    #[test]
    fn test_create_masq_as_the_kernel() {
        // default: u::rwx u:tests:rwx g::r-x m::rwx o::r-x; create 0666.
        let mut a = [e(USER_OBJ, 7, U), e(USER, 7, 1000), e(GROUP_OBJ, 5, U), e(MASK, 7, U), e(OTHER, 5, U)];
        let (m, keep) = create_masq(&mut a, 0o100_666);
        assert_eq!((m, keep), (0o100_664, true));
        assert_eq!(a.map(|x| x.perm), [6, 7, 5, 6, 4]);
        let mut b = [e(USER_OBJ, 7, U), e(GROUP_OBJ, 5, U), e(OTHER, 0, U)];
        assert_eq!(create_masq(&mut b, 0o40777), (0o40750, false));
    }
}

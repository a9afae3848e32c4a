//! Requests decoded once, and the facts about each op in one table.
//!
//! [`Request::decode`] turns a request payload (a private copy, never shared memory) into a
//! typed value: the op's fixed struct plus its names, each checked (exact lengths, no NUL, no
//! '/', at most [`NAME_MAX`] bytes; symlink targets and xattr names by their own rules). `zusd`
//! decodes each request once and validates the rest (mount, tickets, data descriptors) from the
//! typed value; the Rust plugin adapter consumes the same typed value (it decodes the bytes the
//! C vtable hands it with this one decoder, so there is no second parser to drift).
//!
//! [`OpCode::facts`] is the one table of what each op is: its request size, whether it changes
//! the filesystem, whether a fast-path client must step aside while the kernel caches the inode,
//! which ticket it needs, and whether it may move file blocks (invalidating cached extents).

use core::mem::size_of;

use crate::Errno;
use crate::ops::{
    CopyFileRangeReq, CreateReq, FallocateReq, ForgetReq, FsyncReq, InoReq, IoReq, KernelCacheReq, LinkReq, MapDoneReq,
    MapReq, NAME_MAX, NameReq, OpCode, OpenReq, PATH_MAX, Pod, ReaddirReq, ReleaseReq, RenameReq, SetattrReq,
    SymlinkReq, TicketReq, XattrReq, setattr,
};

/// When a fast-path (non-kernel) client must send an op through the kernel instead while the
/// kernel caches the inode's pages (zusd answers `EUSEKERNEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAside {
    /// Never (metadata ops, and MapDone, which commits earlier dax writes).
    Never,
    /// Always (data ops).
    Always,
    /// Only when it changes the size (setattr).
    WhenSizeChanges,
}

/// What a client attached with tickets only (it does not own the mount) needs for an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketRule {
    /// Refused whatever the ticket (`EPERM`).
    Refused,
    /// A ticket for the op's inode.
    Read,
    /// A writable ticket for the op's inode.
    Write,
    /// A writable ticket when the setattr changes only the size; otherwise refused.
    WriteIfSizeOnly,
    /// A writable ticket when the map is for writing, else a ticket.
    WriteIfMapWrite,
}

/// The facts about one op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpFacts {
    /// Size of the fixed request struct at the start of the payload.
    pub request_size: usize,
    /// Changes the filesystem (refused with `EROFS` on a read-only mount).
    pub mutates: bool,
    /// Kernel-cache rule for fast-path clients.
    pub kernel_cache: StepAside,
    /// Ticket rule for ticket-only clients.
    pub ticket: TicketRule,
    /// May free or move file blocks, or stop dax access: zusd raises the layout generation
    /// before it answers, and clients drop cached extents.
    pub invalidates_extents: bool,
}

const fn f(request_size: usize, mutates: bool, kernel_cache: StepAside, ticket: TicketRule, inv: bool) -> OpFacts {
    OpFacts { request_size, mutates, kernel_cache, ticket, invalidates_extents: inv }
}

use StepAside::{Always, Never, WhenSizeChanges};
use TicketRule::{Read, Refused, Write, WriteIfMapWrite, WriteIfSizeOnly};

/// The table, indexed by op code - 1 (the op codes are dense from 1).
const FACTS: [OpFacts; OpCode::ALL.len()] = [
    // op                  request size                   mutates kernel cache     ticket           invalidates
    /* Noop */
    f(0, false, Never, Refused, false),
    /* Statfs */ f(0, false, Never, Refused, false),
    /* Sync */ f(0, false, Never, Refused, false),
    /* Lookup */ f(size_of::<NameReq>(), false, Never, Refused, false),
    /* Getattr */ f(size_of::<InoReq>(), false, Never, Read, false),
    /* Setattr */ f(size_of::<SetattrReq>(), true, WhenSizeChanges, WriteIfSizeOnly, true),
    /* Create */ f(size_of::<CreateReq>(), true, Never, Refused, false),
    /* Mknod */ f(size_of::<CreateReq>(), true, Never, Refused, false),
    /* Mkdir */ f(size_of::<CreateReq>(), true, Never, Refused, false),
    /* Unlink */ f(size_of::<NameReq>(), true, Never, Refused, true),
    /* Rmdir */ f(size_of::<NameReq>(), true, Never, Refused, true),
    /* Rename */ f(size_of::<RenameReq>(), true, Never, Refused, true),
    /* Link */ f(size_of::<LinkReq>(), true, Never, Refused, false),
    /* Symlink */ f(size_of::<SymlinkReq>(), true, Never, Refused, false),
    /* Readlink */ f(size_of::<InoReq>(), false, Never, Refused, false),
    /* Readdir */ f(size_of::<ReaddirReq>(), false, Never, Refused, false),
    /* Open */ f(size_of::<OpenReq>(), false, Never, Refused, false),
    /* Release */ f(size_of::<ReleaseReq>(), false, Never, Refused, true),
    /* Read */ f(size_of::<IoReq>(), false, Always, Read, false),
    /* Write */ f(size_of::<IoReq>(), true, Always, Write, false),
    /* Fsync */ f(size_of::<FsyncReq>(), false, Always, Read, false),
    /* Fallocate */ f(size_of::<FallocateReq>(), true, Always, Write, true),
    /* Getxattr */ f(size_of::<XattrReq>(), false, Never, Refused, false),
    /* Setxattr */ f(size_of::<XattrReq>(), true, Never, Refused, false),
    /* Listxattr */ f(size_of::<XattrReq>(), false, Never, Refused, false),
    /* Removexattr */ f(size_of::<XattrReq>(), true, Never, Refused, false),
    /* Map */ f(size_of::<MapReq>(), false, Always, WriteIfMapWrite, false),
    /* MapDone */ f(size_of::<MapDoneReq>(), true, Never, Write, false),
    /* Forget */ f(size_of::<ForgetReq>(), false, Never, Refused, true),
    /* KernelCache */ f(size_of::<KernelCacheReq>(), false, Never, Refused, true),
    /* Ticket */ f(size_of::<TicketReq>(), false, Never, Refused, false),
    /* CopyFileRange */ f(size_of::<CopyFileRangeReq>(), true, Always, Refused, false),
    /* CreateOpen */ f(size_of::<CreateReq>(), true, Never, Refused, false),
    /* ForgetMany */ f(size_of::<ForgetReq>(), false, Never, Refused, true),
    /* ReleaseMany */ f(size_of::<ReleaseReq>(), false, Never, Refused, true),
    /* ReaddirPlus */ f(size_of::<ReaddirReq>(), false, Never, Refused, false),
];

impl OpCode {
    /// What this op is (see [`OpFacts`]).
    #[must_use]
    pub const fn facts(self) -> OpFacts {
        FACTS[self as usize - 1]
    }
}

/// A request payload, decoded and checked. Names borrow from the payload.
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub enum Request<'a> {
    Noop,
    Statfs,
    Sync,
    Lookup(NameReq, &'a [u8]),
    Getattr(InoReq),
    Setattr(SetattrReq),
    Create(CreateReq, &'a [u8]),
    CreateOpen(CreateReq, &'a [u8]),
    Mknod(CreateReq, &'a [u8]),
    Mkdir(CreateReq, &'a [u8]),
    Unlink(NameReq, &'a [u8]),
    Rmdir(NameReq, &'a [u8]),
    /// Old name, new name.
    Rename(RenameReq, &'a [u8], &'a [u8]),
    Link(LinkReq, &'a [u8]),
    /// Name, target.
    Symlink(SymlinkReq, &'a [u8], &'a [u8]),
    Readlink(InoReq),
    Readdir(ReaddirReq),
    ReaddirPlus(ReaddirReq),
    Open(OpenReq),
    Release(ReleaseReq),
    /// The request and the bytes after it (remote iovecs, checked by the data-path code).
    Read(IoReq, &'a [u8]),
    /// As `Read`.
    Write(IoReq, &'a [u8]),
    Fsync(FsyncReq),
    Fallocate(FallocateReq),
    Getxattr(XattrReq, &'a [u8]),
    Setxattr(XattrReq, &'a [u8]),
    Listxattr(XattrReq),
    Removexattr(XattrReq, &'a [u8]),
    Map(MapReq),
    MapDone(MapDoneReq),
    Forget(ForgetReq),
    /// One or more [`ForgetReq`]s, back to back (whole records, checked).
    ForgetMany(&'a [u8]),
    /// One or more [`ReleaseReq`]s, back to back (whole records, checked).
    ReleaseMany(&'a [u8]),
    KernelCache(KernelCacheReq),
    Ticket(TicketReq),
    CopyFileRange(CopyFileRangeReq),
}

/// A file or directory name: 1..=NAME_MAX bytes, no '/' and no NUL.
fn name(n: &[u8]) -> Result<&[u8], Errno> {
    if n.is_empty() || n.contains(&b'/') || n.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if n.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(n)
}

/// An xattr name: non-empty, no NUL, at most NAME_MAX bytes (ERANGE beyond, as Linux).
fn xattr_name(n: &[u8]) -> Result<&[u8], Errno> {
    if n.is_empty() || n.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if n.len() > NAME_MAX {
        return Err(Errno::ERANGE);
    }
    Ok(n)
}

/// A symlink target: non-empty, no NUL, shorter than PATH_MAX ('/' allowed).
fn target(t: &[u8]) -> Result<&[u8], Errno> {
    if t.is_empty() || t.contains(&0) {
        return Err(Errno::EINVAL);
    }
    if t.len() >= PATH_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(t)
}

/// The fixed struct at the start of `p` and the bytes after it.
fn fixed<R: Pod>(p: &[u8]) -> Result<(R, &[u8]), Errno> {
    let r = <R as Pod>::read_from(p).ok_or(Errno::EINVAL)?;
    Ok((r, &p[size_of::<R>()..]))
}

/// A payload of one or more whole `R`s, nothing else.
fn many<R: Pod>(p: &[u8]) -> Result<&[u8], Errno> {
    if p.is_empty() || !p.len().is_multiple_of(size_of::<R>()) {
        return Err(Errno::EINVAL);
    }
    Ok(p)
}

/// Splits `var` into exactly two strings of lengths `a` and `b` (nothing left over).
fn two(var: &[u8], a: u32, b: u32) -> Result<(&[u8], &[u8]), Errno> {
    let (a, b) = (a as usize, b as usize);
    if a.checked_add(b) != Some(var.len()) {
        return Err(Errno::EINVAL);
    }
    Ok(var.split_at(a))
}

/// `var` as exactly one string of length `n`.
fn one(var: &[u8], n: u32) -> Result<&[u8], Errno> {
    if n as usize != var.len() {
        return Err(Errno::EINVAL);
    }
    Ok(var)
}

impl<'a> Request<'a> {
    /// Decodes `payload` as a request of `op`, checking the fixed struct's size and every
    /// name. Never panics on any input.
    ///
    /// # Errors
    /// `EINVAL` for a short or inconsistent payload or a malformed name, `ENAMETOOLONG` for a
    /// name or target too long, `ERANGE` for an xattr name too long.
    pub fn decode(op: OpCode, payload: &'a [u8]) -> Result<Self, Errno> {
        let p = payload;
        Ok(match op {
            OpCode::Noop => Self::Noop,
            OpCode::Statfs => Self::Statfs,
            OpCode::Sync => Self::Sync,
            OpCode::Lookup | OpCode::Unlink | OpCode::Rmdir => {
                let (r, var) = fixed::<NameReq>(p)?;
                let n = name(one(var, r.name_len)?)?;
                match op {
                    OpCode::Lookup => Self::Lookup(r, n),
                    OpCode::Unlink => Self::Unlink(r, n),
                    _ => Self::Rmdir(r, n),
                }
            }
            OpCode::Getattr => Self::Getattr(fixed(p)?.0),
            OpCode::Setattr => Self::Setattr(fixed(p)?.0),
            OpCode::Create | OpCode::CreateOpen | OpCode::Mknod | OpCode::Mkdir => {
                let (r, var) = fixed::<CreateReq>(p)?;
                let n = name(one(var, r.name_len)?)?;
                match op {
                    OpCode::Create => Self::Create(r, n),
                    OpCode::CreateOpen => Self::CreateOpen(r, n),
                    OpCode::Mknod => Self::Mknod(r, n),
                    _ => Self::Mkdir(r, n),
                }
            }
            OpCode::Rename => {
                let (r, var) = fixed::<RenameReq>(p)?;
                let (a, b) = two(var, r.old_len, r.new_len)?;
                Self::Rename(r, name(a)?, name(b)?)
            }
            OpCode::Link => {
                let (r, var) = fixed::<LinkReq>(p)?;
                Self::Link(r, name(one(var, r.name_len)?)?)
            }
            OpCode::Symlink => {
                let (r, var) = fixed::<SymlinkReq>(p)?;
                let (a, t) = two(var, r.name_len, r.target_len)?;
                Self::Symlink(r, name(a)?, target(t)?)
            }
            OpCode::Readlink => Self::Readlink(fixed(p)?.0),
            OpCode::Readdir => Self::Readdir(fixed(p)?.0),
            OpCode::ReaddirPlus => Self::ReaddirPlus(fixed(p)?.0),
            OpCode::Open => Self::Open(fixed(p)?.0),
            OpCode::Release => Self::Release(fixed(p)?.0),
            OpCode::Read => {
                let (r, rest) = fixed::<IoReq>(p)?;
                Self::Read(r, rest)
            }
            OpCode::Write => {
                let (r, rest) = fixed::<IoReq>(p)?;
                Self::Write(r, rest)
            }
            OpCode::Fsync => Self::Fsync(fixed(p)?.0),
            OpCode::Fallocate => Self::Fallocate(fixed(p)?.0),
            OpCode::Getxattr | OpCode::Setxattr | OpCode::Removexattr => {
                let (r, var) = fixed::<XattrReq>(p)?;
                let n = xattr_name(one(var, r.name_len)?)?;
                match op {
                    OpCode::Getxattr => Self::Getxattr(r, n),
                    OpCode::Setxattr => Self::Setxattr(r, n),
                    _ => Self::Removexattr(r, n),
                }
            }
            OpCode::Listxattr => Self::Listxattr(fixed(p)?.0),
            OpCode::Map => Self::Map(fixed(p)?.0),
            OpCode::MapDone => Self::MapDone(fixed(p)?.0),
            OpCode::Forget => Self::Forget(fixed(p)?.0),
            OpCode::ForgetMany => Self::ForgetMany(many::<ForgetReq>(p)?),
            OpCode::ReleaseMany => Self::ReleaseMany(many::<ReleaseReq>(p)?),
            OpCode::KernelCache => Self::KernelCache(fixed(p)?.0),
            OpCode::Ticket => Self::Ticket(fixed(p)?.0),
            OpCode::CopyFileRange => {
                let r: CopyFileRangeReq = fixed(p)?.0;
                if r.flags != 0 || r.reserved != 0 || r.ino_in == 0 || r.ino_out == 0 {
                    return Err(Errno::EINVAL);
                }
                Self::CopyFileRange(r)
            }
        })
    }

    /// The inode a data op acts on (the one its ticket and kernel-cache mark are for); 0 for
    /// ops that act on none.
    #[must_use]
    pub fn ino(&self) -> u64 {
        match self {
            Self::Getattr(r) | Self::Readlink(r) => r.ino,
            Self::Setattr(r) => r.ino,
            Self::Read(r, _) | Self::Write(r, _) => r.ino,
            Self::Fsync(r) => r.ino,
            Self::Fallocate(r) => r.ino,
            Self::Map(r) => r.ino,
            Self::MapDone(r) => r.ino,
            Self::Open(r) => r.ino,
            Self::Release(r) => r.ino,
            Self::Getxattr(r, _) | Self::Setxattr(r, _) | Self::Removexattr(r, _) | Self::Listxattr(r) => r.ino,
            Self::Link(r, _) => r.ino,
            Self::Forget(r) => r.ino,
            Self::ForgetMany(_) | Self::ReleaseMany(_) => 0,
            Self::KernelCache(r) => r.ino,
            Self::Ticket(r) => r.ino,
            // The file written (the one whose size and blocks change).
            Self::CopyFileRange(r) => r.ino_out,
            Self::Lookup(r, _) | Self::Unlink(r, _) | Self::Rmdir(r, _) => r.dir,
            Self::Create(r, _) | Self::CreateOpen(r, _) | Self::Mknod(r, _) | Self::Mkdir(r, _) => r.dir,
            Self::Symlink(r, ..) => r.dir,
            Self::Readdir(r) | Self::ReaddirPlus(r) => r.dir,
            Self::Rename(r, ..) => r.old_dir,
            Self::Noop | Self::Statfs | Self::Sync => 0,
        }
    }

    /// Whether a fast-path client must step aside for this request while the kernel caches
    /// its inode ([`OpFacts::kernel_cache`] applied to this request).
    #[must_use]
    pub fn steps_aside_for_kernel_cache(&self, op: OpCode) -> bool {
        match op.facts().kernel_cache {
            StepAside::Never => false,
            StepAside::Always => true,
            StepAside::WhenSizeChanges => matches!(self, Self::Setattr(r) if r.valid & setattr::SIZE != 0),
        }
    }

    /// The ticket this request needs from a ticket-only client: `Some(writable)`, or `None`
    /// when no ticket allows it ([`OpFacts::ticket`] applied to this request).
    #[must_use]
    pub fn ticket_need(&self, op: OpCode) -> Option<bool> {
        match op.facts().ticket {
            TicketRule::Refused => None,
            TicketRule::Read => Some(false),
            TicketRule::Write => Some(true),
            TicketRule::WriteIfSizeOnly => matches!(self, Self::Setattr(r) if r.valid == setattr::SIZE).then_some(true),
            TicketRule::WriteIfMapWrite => Some(!matches!(self, Self::Map(r) if r.write == 0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<R: Pod>(r: &R, var: &[u8]) -> Vec<u8> {
        let mut v = Pod::as_bytes(r).to_vec();
        v.extend_from_slice(var);
        v
    }

    #[test]
    fn test_facts_table_is_in_op_code_order_and_sizes_match() {
        for op in OpCode::ALL {
            let f = op.facts();
            // A payload of exactly the fixed size decodes (names aside), a shorter one never.
            if f.request_size > 0 {
                assert!(Request::decode(op, &vec![0u8; f.request_size - 1]).is_err(), "{op:?}");
            }
        }
        assert!(OpCode::Write.facts().mutates && !OpCode::Read.facts().mutates);
        assert_eq!(OpCode::Setattr.facts().kernel_cache, StepAside::WhenSizeChanges);
        assert!(OpCode::KernelCache.facts().invalidates_extents);
        assert_eq!(OpCode::Getattr.facts().request_size, size_of::<InoReq>());
    }

    #[test]
    fn test_names_are_exact_and_checked() {
        let r = NameReq { dir: 1, name_len: 3, reserved: 0 };
        assert!(
            matches!(Request::decode(OpCode::Lookup, &bytes(&r, b"abc")), Ok(Request::Lookup(q, b"abc")) if q.dir == 1)
        );
        assert_eq!(Request::decode(OpCode::Lookup, &bytes(&r, b"abcd")).err(), Some(Errno::EINVAL), "trailing byte");
        assert_eq!(Request::decode(OpCode::Lookup, &bytes(&r, b"ab")).err(), Some(Errno::EINVAL), "short");
        assert_eq!(Request::decode(OpCode::Lookup, &bytes(&r, b"a/c")).err(), Some(Errno::EINVAL));
        assert_eq!(Request::decode(OpCode::Lookup, &bytes(&r, b"a\0c")).err(), Some(Errno::EINVAL));
        let long = NameReq { dir: 1, name_len: 256, reserved: 0 };
        assert_eq!(Request::decode(OpCode::Unlink, &bytes(&long, &[b'x'; 256])).err(), Some(Errno::ENAMETOOLONG));
        let s = SymlinkReq { dir: 1, name_len: 1, target_len: 4 };
        assert!(matches!(
            Request::decode(OpCode::Symlink, &bytes(&s, b"l/a/b")),
            Ok(Request::Symlink(_, b"l", b"/a/b"))
        ));
        let huge = RenameReq { old_dir: 1, new_dir: 1, flags: 0, old_len: u32::MAX, new_len: 2, reserved: 0 };
        assert_eq!(
            Request::decode(OpCode::Rename, &bytes(&huge, b"ab")).err(),
            Some(Errno::EINVAL),
            "overflowing lengths"
        );
        let x = XattrReq { ino: 1, name_len: 256, flags: 0, size: 0, reserved: 0 };
        assert_eq!(Request::decode(OpCode::Getxattr, &bytes(&x, &[b'u'; 256])).err(), Some(Errno::ERANGE));
    }

    #[test]
    fn test_decode_never_panics_on_garbage() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut buf = [0u8; 96];
        for _ in 0..20_000 {
            for b in &mut buf {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *b = (seed & 0xff) as u8;
            }
            let len = (seed >> 8) as usize % buf.len();
            for op in OpCode::ALL {
                let _ = Request::decode(op, &buf[..len]);
            }
        }
    }

    #[test]
    fn test_ticket_and_kernel_cache_rules() {
        let size_only = SetattrReq { ino: 5, valid: setattr::SIZE, ..SetattrReq::default() };
        let chmod = SetattrReq { ino: 5, valid: setattr::MODE, ..SetattrReq::default() };
        let r = Request::Setattr(size_only);
        assert_eq!(r.ticket_need(OpCode::Setattr), Some(true));
        assert!(r.steps_aside_for_kernel_cache(OpCode::Setattr));
        let r = Request::Setattr(chmod);
        assert_eq!(r.ticket_need(OpCode::Setattr), None);
        assert!(!r.steps_aside_for_kernel_cache(OpCode::Setattr));
        let m = MapReq { ino: 5, offset: 0, len: 1, write: 0, reserved: 0 };
        assert_eq!(Request::Map(m).ticket_need(OpCode::Map), Some(false));
        assert_eq!(Request::Map(MapReq { write: 1, ..m }).ticket_need(OpCode::Map), Some(true));
        assert_eq!(Request::Map(m).ino(), 5);
        let c = CopyFileRangeReq { ino_in: 5, ino_out: 6, len: 10, ..CopyFileRangeReq::default() };
        let r = Request::decode(OpCode::CopyFileRange, Pod::as_bytes(&c)).unwrap();
        assert!(matches!(r, Request::CopyFileRange(q) if q.ino_in == 5 && q.len == 10));
        assert_eq!(r.ino(), 6, "the file written");
        assert_eq!(r.ticket_need(OpCode::CopyFileRange), None, "ticketed clients are refused");
        assert!(r.steps_aside_for_kernel_cache(OpCode::CopyFileRange));
        assert!(OpCode::CopyFileRange.facts().mutates);
        assert!(!OpCode::CopyFileRange.facts().invalidates_extents);
        for bad in [
            CopyFileRangeReq { flags: 1, ..c },
            CopyFileRangeReq { reserved: 1, ..c },
            CopyFileRangeReq { ino_in: 0, ..c },
            CopyFileRangeReq { ino_out: 0, ..c },
        ] {
            assert_eq!(Request::decode(OpCode::CopyFileRange, Pod::as_bytes(&bad)).err(), Some(Errno::EINVAL));
        }
    }
}

//! The FUSE bridge's request decoder (`zufs_fuse::abi`): whole `/dev/fuse` messages
//! (`decode_dev`) and a ring entry's three pieces (`decode`: header, first argument, rest).
//!
//! Input: a `u8` mode; bit 0 clear: the rest is one `/dev/fuse` message; set: a ring entry,
//! `u32` op code, a chunk (u16 length) for the first argument (a ring's `op_in` area holds 128
//! bytes) and the rest as the payload.
//!
//! Checked: names are non-empty, NUL-free and inside the payload; write and ioctl data inside
//! the payload; every error maps to EINVAL, or ENOSYS for an unknown op code; a header that
//! decodes says a length inside the buffer.

use zufs_fuse::abi::{self, DecodeError, InHeader, Request};

use crate::Reader;

fn check_name(n: &[u8], rest: &[u8]) {
    assert!(!n.is_empty() && !n.contains(&0) && n.len() < rest.len().max(1), "name {n:?}");
}

fn check(req: &Request<'_>, rest: &[u8]) {
    match req {
        Request::Lookup { name }
        | Request::Unlink { name }
        | Request::Rmdir { name }
        | Request::Removexattr { name } => {
            check_name(name, rest);
        }
        Request::Mknod { name, .. }
        | Request::Mkdir { name, .. }
        | Request::Link { name, .. }
        | Request::Create { name, .. }
        | Request::Getxattr { name, .. } => check_name(name, rest),
        Request::Symlink { name, target } => {
            check_name(name, rest);
            check_name(target, rest);
            assert!(name.len() + target.len() + 2 <= rest.len());
        }
        Request::Rename { name, newname, .. } => {
            check_name(name, rest);
            check_name(newname, rest);
            assert!(name.len() + newname.len() + 2 <= rest.len());
        }
        Request::Write { arg, data } => assert!(data.len() == arg.size as usize && data.len() <= rest.len()),
        Request::Ioctl { arg, data } => assert!(data.len() == arg.in_size as usize && data.len() <= rest.len()),
        Request::Setxattr { arg, name, value } => {
            check_name(name, rest);
            assert!(value.len() == arg.size as usize && name.len() + 1 + value.len() <= rest.len());
        }
        Request::BatchForget(v) => assert!(v.len() * 16 <= rest.len()),
        _ => {}
    }
}

fn check_err(e: DecodeError, opcode: u32) {
    match e {
        DecodeError::Unknown(o) => {
            assert_eq!(o, opcode);
            assert_eq!(e.errno(), libc::ENOSYS);
        }
        _ => assert_eq!(e.errno(), libc::EINVAL),
    }
}

/// One input (see the module doc).
pub fn run(data: &[u8]) {
    let mut r = Reader::new(data);
    if r.u8() & 1 == 0 {
        let buf = r.rest();
        match abi::decode_dev(buf) {
            Ok((h, req)) => {
                let len = h.len as usize;
                assert!(len >= size_of::<InHeader>() && len <= buf.len());
                check(&req, &buf[size_of::<InHeader>()..len]);
            }
            Err((Some(h), e)) => check_err(e, h.opcode),
            Err((None, e)) => assert_eq!(e, DecodeError::BadLength),
        }
    } else {
        let opcode = r.u32();
        let arg0 = r.chunk();
        let rest = r.rest();
        let h = InHeader { opcode, ..InHeader::default() };
        match abi::decode(&h, arg0, rest) {
            Ok(req) => check(&req, rest),
            Err(e) => check_err(e, opcode),
        }
    }
}

/// A `/dev/fuse` message input.
#[must_use]
pub fn encode_dev(opcode: u32, nodeid: u64, arg0: &[u8], rest: &[u8]) -> Vec<u8> {
    let len = size_of::<InHeader>() + arg0.len() + rest.len();
    let h = InHeader { len: u32::try_from(len).unwrap_or(0), opcode, unique: 7, nodeid, uid: 0, ..InHeader::default() };
    let mut out = vec![0u8];
    out.extend_from_slice(abi::bytes_of(&h));
    out.extend_from_slice(arg0);
    out.extend_from_slice(rest);
    out
}

/// A ring-entry input.
#[must_use]
pub fn encode_ring(opcode: u32, arg0: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&opcode.to_le_bytes());
    crate::put_chunk(&mut out, arg0);
    out.extend_from_slice(rest);
    out
}

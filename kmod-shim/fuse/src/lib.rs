//! The FUSE bridge: the kernel's FUSE requests as zus_api ops, served by `zusd`.
//!
//! - [`bridge`]: POSIX-shaped calls as zus_api ops for a kernel transport (node ids, creds,
//!   file handles, EIO and re-attachment when zusd dies), over the `zus-client` channel client.
//! - [`fuse`]: the transports that carry the kernel's requests to the bridge (classic /dev/fuse
//!   through fuser, one pinned reader per CPU with a cloned fd).
#![deny(unsafe_code)]

pub mod abi;
pub mod acl;
pub mod bridge;
pub mod fuse;
pub mod killpriv;
pub mod uring;

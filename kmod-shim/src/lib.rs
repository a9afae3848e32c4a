//! The kernel-facing side of zufs, played from user space.
//!
//! - [`relay`]: the channel client every other piece is built on: connect to `zusd`, map the
//!   client's channel set, submit an op on the lane of the CPU the caller runs on, wait with a
//!   bounded spin then a futex, return the reply.
//! - [`bridge`]: POSIX-shaped calls as zus_api ops for a kernel transport (node ids, creds,
//!   file handles, EIO and re-attachment when zusd dies).
//! - [`fuse`]: the FUSE transport (fuser, one pinned reader per CPU with a cloned /dev/fuse fd).
//! - [`cli`]: what the `zufs` command does (mkfs, fsck, mount, umount, status).
#![deny(unsafe_code)]

pub mod bridge;
pub mod cli;
pub mod fuse;
pub mod relay;

pub use relay::{OpOutcome, Relay, RelayError};

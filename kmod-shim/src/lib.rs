//! The kernel-facing side of zufs, played from user space.
//!
//! - [`relay`]: the channel client every other piece is built on: connect to `zusd`, map the
//!   client's channel set, submit an op on the lane of the CPU the caller runs on, wait with a
//!   bounded spin then a futex, return the reply.
#![deny(unsafe_code)]

pub mod relay;

pub use relay::{OpOutcome, Relay, RelayError};

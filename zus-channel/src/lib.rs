//! The channel runtime both ends of a zus_api channel share: `zusd` and every client.
//!
//! - [`shm`]: the only code that touches shared memory (atomics and raw copies, never references),
//!   futex wait/wake, the caller's CPU.
//! - [`proto`]: the slot protocol, written once: lane and slot views with the client's steps
//!   (claim, write the request, submit, wait, release) and the server's (take, complete, mark
//!   sleeping or polling). Each memory-ordering pairing is explained there.
//! - [`control`]: the control-socket messages (JSON after the ABI's fixed header).
//! - [`sock`]: `SOCK_SEQPACKET` connect, send and receive with `SCM_RIGHTS`, peer credentials.
//! - [`cpu`]: pinning a thread to the CPU whose lane it serves.
//!
//! The layouts themselves are plain data in the `zus-api` crate.

pub mod control;
pub mod cpu;
pub mod proto;
pub mod shm;
pub mod sock;

//! Control-socket plumbing shared by `zusd` and its clients: whole-message send/receive on a
//! `SOCK_SEQPACKET` Unix socket, file-descriptor passing (`SCM_RIGHTS`) and peer credentials.
//! All through rustix's safe wrappers: no `unsafe` here.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use zus_api::control::MAX_CTL_MSG;

/// Peer credentials of a connected Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Reads `SO_PEERCRED`.
///
/// # Errors
/// The getsockopt error.
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let c = rustix::net::sockopt::socket_peercred(fd)?;
    Ok(PeerCred { pid: c.pid.as_raw_nonzero().get().unsigned_abs(), uid: c.uid.as_raw(), gid: c.gid.as_raw() })
}

/// Connects a `SOCK_SEQPACKET` socket (close-on-exec) to the Unix socket at `path`.
///
/// # Errors
/// The socket or connect error (`ENAMETOOLONG` for a path too long for `sun_path`).
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let sock = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    let addr = SocketAddrUnix::new(path)?;
    rustix::net::connect(&sock, &addr)?;
    Ok(sock)
}

/// Sends one message, optionally with one fd attached.
///
/// # Errors
/// The sendmsg error.
pub fn send_msg(sock: BorrowedFd<'_>, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("no room for SCM_RIGHTS"));
        }
    }
    let n = rustix::net::sendmsg(sock, &[IoSlice::new(data)], &mut control, SendFlags::NOSIGNAL)?;
    if n != data.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "short control message send"));
    }
    Ok(())
}

/// Receives one message (and at most one attached fd; any more are closed). Returns `Ok(None)`
/// at end of stream.
///
/// # Errors
/// The recvmsg error, or a truncated message.
pub fn recv_msg(sock: BorrowedFd<'_>) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_CTL_MSG];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(&mut buf)], &mut control, RecvFlags::CMSG_CLOEXEC) {
            Err(rustix::io::Errno::INTR) => {}
            other => break other?,
        }
    };
    let mut fd = None;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            for owned in fds {
                if fd.is_none() {
                    fd = Some(owned);
                }
            }
        }
    }
    if r.flags.contains(ReturnFlags::TRUNC) || r.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "control message too large"));
    }
    if r.bytes == 0 {
        return Ok(None);
    }
    buf.truncate(r.bytes);
    Ok(Some((buf, fd)))
}

/// Whether the peer hung up (non-blocking check used by waiting clients).
#[must_use]
pub fn peer_hung_up(sock: BorrowedFd<'_>) -> bool {
    let mut p = [PollFd::new(&sock, PollFlags::RDHUP)];
    let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
    matches!(rustix::event::poll(&mut p, Some(&zero)), Ok(n) if n > 0)
        && p[0].revents().intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL)
}

//! The control socket: listener, per-connection handshake, mount requests (P-CH4, P-CH5).
//!
//! One thread per connection (the control plane is cold). A connection's end, for whatever
//! reason (exit, SIGKILL), removes the client: its channel set leaves the snapshot, ZTs move on,
//! and the memory is unmapped once the last ZT let go. Nothing waits on a dead client.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use zus_api::Errno;
use zus_api::chan::Geometry;
use zus_channel::control::{self, MountInfo, Reply, Request};
use zus_channel::shm::ShmRegion;
use zus_channel::sock::{self, PeerCred};

use crate::mounts;
use crate::server::{Attachment, Client, Server, finish_unmount, mount_info};

/// Listener errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Socket setup failed.
    #[error("control socket {path}: {source}")]
    Socket {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Another server owns the socket.
    #[error("another zusd is already listening on {0}")]
    InUse(String),
}

fn sockaddr(path: &Path) -> std::io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap_or(1);
    let b = path.as_os_str().as_bytes();
    if b.len() >= addr.sun_path.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(b) {
        *d = s.cast_signed();
    }
    let len = libc::socklen_t::try_from(core::mem::offset_of!(libc::sockaddr_un, sun_path) + b.len() + 1).unwrap_or(0);
    Ok((addr, len))
}

fn seqpacket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is checked and owned.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Connects to a zusd control socket.
///
/// # Errors
/// The connect error.
pub fn connect(path: &Path) -> std::io::Result<OwnedFd> {
    let fd = seqpacket()?;
    let (addr, len) = sockaddr(path)?;
    // SAFETY: addr is a valid sockaddr_un of len bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Binds and listens on `path`, replacing a stale socket file but never a live server's.
///
/// # Errors
/// [`ControlError`].
pub fn listen(path: &Path) -> Result<OwnedFd, ControlError> {
    let p = path.display().to_string();
    if path.exists() {
        if connect(path).is_ok() {
            return Err(ControlError::InUse(p));
        }
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let err = |source| ControlError::Socket { path: p.clone(), source };
    let fd = seqpacket().map_err(err)?;
    let (addr, len) = sockaddr(path).map_err(err)?;
    // SAFETY: addr is a valid sockaddr_un of len bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // Every user may connect: what a client may do is decided per request (mounts: root; a
    // mount's namespace: its owner; other users: ticketed data ops, see crate::tickets).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    // SAFETY: listen on our own bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(fd)
}

/// Accepts connections forever (until the listener is shut down), one thread each.
pub fn accept_loop(server: &Arc<Server>, listener: &OwnedFd) {
    loop {
        // SAFETY: accept4 on our listening socket; the result is checked and owned.
        let fd = unsafe {
            libc::accept4(listener.as_raw_fd(), core::ptr::null_mut(), core::ptr::null_mut(), libc::SOCK_CLOEXEC)
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted || e.raw_os_error() == Some(libc::ECONNABORTED) {
                continue;
            }
            if server.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tracing::error!("accept on control socket: {e}");
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        // SAFETY: fd is fresh from accept4.
        let conn = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = Arc::clone(server);
        let spawned = std::thread::Builder::new().name("zusd-conn".into()).spawn(move || connection(&s, &conn));
        if let Err(e) = spawned {
            tracing::error!("cannot start a connection thread: {e}");
        }
    }
}

fn send(conn: &OwnedFd, r: &Reply, fd: Option<std::os::fd::BorrowedFd<'_>>) -> bool {
    match control::encode(r) {
        Ok(m) => sock::send_msg(conn.as_fd(), &m, fd).is_ok(),
        Err(e) => {
            tracing::error!("encoding a reply: {e}");
            false
        }
    }
}

fn error(errno: Errno, message: impl Into<String>) -> Reply {
    Reply::Error { errno: errno.0, message: message.into() }
}

fn connection(server: &Arc<Server>, conn: &OwnedFd) {
    let cred = match sock::peer_cred(conn.as_fd()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("peer credentials unavailable: {e}");
            return;
        }
    };
    let Some(client) = handshake(server, conn, cred) else { return };
    let id = client.id;
    tracing::info!("client {id} ({}, pid {}, uid {}) connected", client.name, cred.pid, cred.uid);
    loop {
        let (msg, fd) = match sock::recv_msg(conn.as_fd()) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!("client {id}: {e}");
                break;
            }
        };
        let reply = match control::decode::<Request>(&msg, "client") {
            Ok(Request::Handoff { mount_id, kind, params }) => handoff(server, &client, mount_id, &kind, &params, fd),
            Ok(req) => handle(server, &client, req),
            Err(e) => error(Errno::EPROTO, e.to_string()),
        };
        if !send(conn, &reply, None) {
            break;
        }
    }
    // The client is gone (exit, crash or SIGKILL): drop its channels from every ZT's view.
    {
        let mut st = server.state();
        st.clients.retain(|(c, _)| c.id != id);
        for m in &st.mounts {
            m.kernel_cache.drop_client(id);
            m.tickets.drop_issuer(id);
        }
        server.publish(&st);
    }
    tracing::info!("client {id} disconnected; its channels are released");
}

fn handshake(server: &Arc<Server>, conn: &OwnedFd, cred: PeerCred) -> Option<Arc<Client>> {
    let msg = match sock::recv_msg(conn.as_fd()) {
        Ok(Some((m, _))) => m,
        _ => return None,
    };
    let (features, required, name) = match control::decode::<Request>(&msg, "client") {
        Ok(Request::Hello { features, required, name }) => (features, required, name),
        Ok(_) => {
            send(conn, &error(Errno::EPROTO, "the first request must be hello"), None);
            return None;
        }
        Err(e) => {
            tracing::warn!("refusing client pid {}: {e}", cred.pid);
            send(conn, &error(Errno::EPROTO, e.to_string()), None);
            return None;
        }
    };
    let missing = required & !zus_api::features::ALL;
    if missing != 0 {
        send(conn, &error(Errno::EPROTO, format!("client requires features {missing:#x} this zusd lacks")), None);
        return None;
    }
    let g = match Geometry::new(
        server.config.topology.cpus.len(),
        server.config.slots_per_cpu,
        server.config.window_size,
    ) {
        Ok(g) => g,
        Err(e) => {
            send(conn, &error(Errno::EINVAL, e.to_string()), None);
            return None;
        }
    };
    let mut st = server.state();
    if st.clients.len() >= server.config.max_clients {
        drop(st);
        send(conn, &error(Errno::EAGAIN, format!("zusd serves at most {} clients", server.config.max_clients)), None);
        return None;
    }
    let id = st.next_client;
    st.next_client += 1;
    let memfd = match ShmRegion::create_memfd(c"zufs-channels", g.total_size()) {
        Ok(f) => f,
        Err(e) => {
            drop(st);
            send(conn, &error(Errno::ENOMEM, e.to_string()), None);
            return None;
        }
    };
    let region = match ShmRegion::map(memfd.as_fd(), g.total_size()) {
        Ok(r) => r,
        Err(e) => {
            drop(st);
            send(conn, &error(Errno::ENOMEM, e.to_string()), None);
            return None;
        }
    };
    region.write(0, &server.channel_header(&g, id));
    let privileged = cred.uid == 0 || cred.uid == rustix_uid();
    let client = Arc::new(Client {
        id,
        cred,
        privileged,
        kernel_bridge: privileged && features & zus_api::features::KERNEL_BRIDGE != 0,
        name: name.chars().take(64).collect(),
        features,
        region,
        geometry: g,
    });
    st.clients.push((Arc::clone(&client), Vec::new()));
    // Every ZT first-touches its lane before the client may use it.
    server.publish(&st);
    drop(st);
    let ok = send(
        conn,
        &Reply::Hello { client_id: id, features: zus_api::features::ALL, channel_size: g.total_size() as u64 },
        Some(memfd.as_fd()),
    );
    ok.then_some(client)
}

fn rustix_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// A kernel transport's fd for a mount the client holds, served by zusd ([`crate::handoff`]).
fn handoff(
    server: &Arc<Server>,
    client: &Arc<Client>,
    mount_id: u32,
    kind: &str,
    params: &str,
    fd: Option<OwnedFd>,
) -> Reply {
    if !client.kernel_bridge {
        return error(Errno::EPERM, "only a privileged kernel bridge may hand zusd a transport");
    }
    let Some(fd) = fd else { return error(Errno::EINVAL, "a handoff carries the transport's fd") };
    let mount = {
        let st = server.state();
        let held =
            st.clients.iter().find(|c| c.0.id == client.id).is_some_and(|c| c.1.iter().any(|a| a.mount_id == mount_id));
        if !held {
            return error(Errno::ENOENT, format!("mount {mount_id} is not one of this client's"));
        }
        st.mounts.iter().find(|m| m.id == mount_id).cloned()
    };
    let Some(mount) = mount else { return error(Errno::ENOENT, format!("no mount {mount_id}")) };
    match crate::handoff::start(server, mount, kind, params, fd) {
        Ok(()) => Reply::Ok,
        Err((errno, message)) => error(errno, message),
    }
}

fn handle(server: &Arc<Server>, client: &Arc<Client>, req: Request) -> Reply {
    match req {
        Request::Hello { .. } => error(Errno::EPROTO, "already connected"),
        Request::Handoff { .. } => error(Errno::EINVAL, "a handoff carries the transport's fd"),
        Request::ListFs => Reply::FsList { types: server.fs_types() },
        Request::Status => Reply::Status { status: server.status() },
        Request::Mount { fs_type, device, options } => {
            if !client.privileged {
                return error(Errno::EPERM, "only root may mount");
            }
            let Some(plugin) = server.plugins.iter().find(|p| p.name == fs_type) else {
                let names: Vec<_> = server.plugins.iter().map(|p| p.name.as_str()).collect();
                let e = mounts::MountError::UnknownFsType(fs_type, names.join(", "));
                return error(e.errno(), e.to_string());
            };
            let id = {
                let mut st = server.state();
                if plugin.needs_device() {
                    let canon =
                        std::fs::canonicalize(&device).map_or_else(|_| device.clone(), |p| p.display().to_string());
                    if st.mounts.iter().any(|m| m.device == canon) {
                        let e = mounts::MountError::Busy(canon);
                        return error(e.errno(), e.to_string());
                    }
                }
                let id = st.next_mount;
                st.next_mount += 1;
                id
            };
            // Mount outside the lock: recovery may take a while.
            match mounts::mount(id, plugin, &device, &options) {
                Ok(m) => {
                    let info = mount_info(&m);
                    let mut st = server.state();
                    if st.mounts.iter().any(|x| !x.device.is_empty() && x.device == m.device) {
                        drop(st);
                        let dev = m.device.clone();
                        let _ = m.unmount();
                        return error(Errno::EBUSY, format!("device {dev} is already mounted"));
                    }
                    st.mounts.push(Arc::new(m));
                    st.mount_owner.push((id, client.cred.uid));
                    if let Some(c) = st.clients.iter_mut().find(|c| c.0.id == client.id) {
                        c.1.push(Attachment { mount_id: id, ticketed: false });
                    }
                    server.publish(&st);
                    tracing::info!("mounted {} on {:?} as mount {id}", info.fs_type, info.device);
                    Reply::Mounted { mount: info }
                }
                Err(e) => {
                    tracing::warn!("mount refused: {e}");
                    error(e.errno(), e.to_string())
                }
            }
        }
        Request::Attach { mount_id } => {
            let mut st = server.state();
            let Some(m) = st.mounts.iter().find(|m| m.id == mount_id).cloned() else {
                return error(Errno::ENOENT, format!("no mount {mount_id}"));
            };
            let owner = st.mount_owner.iter().find(|o| o.0 == mount_id).map_or(0, |o| o.1);
            // Anyone else may attach, but only to show tickets (crate::tickets).
            let ticketed = !client.privileged && client.cred.uid != owner;
            if let Some(c) = st.clients.iter_mut().find(|c| c.0.id == client.id)
                && !c.1.iter().any(|a| a.mount_id == mount_id)
            {
                c.1.push(Attachment { mount_id, ticketed });
            }
            server.publish(&st);
            Reply::Mounted { mount: MountInfo { ticketed, ..mount_info(&m) } }
        }
        Request::Unmount { mount_id } => {
            if !client.privileged {
                return error(Errno::EPERM, "only root may unmount");
            }
            let m = {
                let mut st = server.state();
                let Some(pos) = st.mounts.iter().position(|m| m.id == mount_id) else {
                    return error(Errno::ENOENT, format!("no mount {mount_id}"));
                };
                let m = st.mounts.remove(pos);
                st.mount_owner.retain(|o| o.0 != mount_id);
                for c in &mut st.clients {
                    c.1.retain(|a| a.mount_id != mount_id);
                }
                server.publish(&st);
                m
            };
            finish_unmount(m);
            Reply::Ok
        }
    }
}

//! Test helpers: an in-process fake plugin that counts its calls, devices in temporary files,
//! and (later) servers without threads.
#![allow(unsafe_code)]

use core::ffi::c_void;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use zus_plugin::{DeviceDesc, OpCall, PLUGIN_MAGIC, PluginVtable, plugin_flags};

use crate::plugins::Plugin;
use crate::server::{Client, Config, Server};
use crate::topology::{Cpu, Topology};

/// What the fake plugin saw: per device path, the unmounts and whether the device was still
/// mapped when each ran.
static UNMOUNTS: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The fake plugin's per-mount state.
struct Handle {
    device: String,
}

/// Whether `path` is mapped in this process (`/proc/self/maps`).
pub fn mapped(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|m| m.lines().any(|l| l.ends_with(path)))
}

extern "C" fn t_mount(
    dev: *const DeviceDesc,
    opts: *const u8,
    opts_len: usize,
    handle: *mut *mut c_void,
    root: *mut u64,
    _msg: *mut u8,
    _msg_cap: usize,
) -> i64 {
    let _ = dev;
    // SAFETY: the server passes the options (here: the device path) valid for opts_len bytes.
    let device = String::from_utf8_lossy(unsafe { core::slice::from_raw_parts(opts, opts_len) }).into_owned();
    // SAFETY: valid out pointers for the call.
    unsafe {
        *handle = Box::into_raw(Box::new(Handle { device })).cast();
        *root = 1;
    }
    0
}

extern "C" fn t_unmount(handle: *mut c_void) -> i64 {
    // SAFETY: the handle came from t_mount and is passed back exactly once.
    let h = unsafe { Box::from_raw(handle.cast::<Handle>()) };
    let still = mapped(&h.device);
    UNMOUNTS.lock().unwrap().push((h.device, still));
    0
}

extern "C" fn t_op(_handle: *mut c_void, _call: *mut OpCall) -> i64 {
    0
}

static VTABLE: PluginVtable = PluginVtable {
    magic: PLUGIN_MAGIC,
    abi_version: zus_api::ZUS_ABI_VERSION,
    #[allow(clippy::cast_possible_truncation)]
    struct_size: size_of::<PluginVtable>() as u32,
    name: *b"testfs\0\0\0\0\0\0\0\0\0\0",
    flags: plugin_flags::NEEDS_DEVICE,
    reserved: 0,
    mkfs: None,
    fsck: None,
    mount: Some(t_mount),
    unmount: Some(t_unmount),
    op: Some(t_op),
};

/// The fake plugin (device-backed; its mount options must be the device path).
pub fn plugin() -> Plugin {
    Plugin { name: "testfs".into(), path: PathBuf::from("(test)"), vtable: &VTABLE }
}

/// A fresh 2 MiB device with a testfs header, in /dev/shm (or the temp dir); removed on drop.
pub struct Device(pub String);

impl Device {
    pub fn new(tag: &str) -> Self {
        let dir =
            if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = dir.join(format!("zufs-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let path = p.display().to_string();
        crate::mounts::mkfs(&plugin(), &path, Some(2 << 20), "").unwrap();
        Self(path)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The fake plugin's unmounts of `device`: for each, whether the device was still mapped.
pub fn unmounts_of(device: &str) -> Vec<bool> {
    UNMOUNTS.lock().unwrap().iter().filter(|(d, _)| d == device).map(|(_, m)| *m).collect()
}

/// A one-CPU configuration with sockets and plugins under a fresh temporary directory.
pub fn config(tag: &str) -> Config {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("zufs-test-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    Config {
        plugin_dir: dir.join("plugins"),
        socket: dir.join("zusd.sock"),
        topology: Topology { cpus: vec![Cpu { id: 0, node: 0, os_cpu: 0 }], nnodes: 1, simulated: true },
        slots_per_cpu: 4,
        window_size: 64 << 10,
        client_spin_ns: 0,
        zt_poll_ns: 0,
        max_clients: 8,
        kernel: crate::KernelMode::Off,
    }
}

/// A server without ZT threads (its one ZT marked exited, so publishing does not wait).
pub fn server(tag: &str) -> Arc<Server> {
    let s = Server::new(config(tag), vec![plugin()]).unwrap();
    for z in &s.zts {
        z.exited.store(true, Ordering::SeqCst);
    }
    s
}

/// Connects a client to `server` as the control socket would (channel memory, published).
pub fn client(server: &Server) -> Arc<Client> {
    let g = server.config.validate().unwrap();
    let memfd = zus_channel::shm::ShmRegion::create_memfd(c"zufs-test", g.total_size()).unwrap();
    let region = zus_channel::shm::ShmRegion::map(memfd.as_fd(), g.total_size()).unwrap();
    let mut st = server.state();
    let id = st.next_client;
    st.next_client += 1;
    region.write(0, &server.channel_header(&g, id));
    let c = Arc::new(Client {
        id,
        cred: zus_channel::sock::PeerCred { pid: std::process::id(), uid: 0, gid: 0 },
        privileged: true,
        kernel_bridge: false,
        name: "test".into(),
        features: 0,
        region,
        geometry: g,
    });
    st.clients.push((Arc::clone(&c), Vec::new()));
    server.publish(&st);
    c
}

//! The control socket: message decoding (`zus_channel::control::decode`) and zusd's handling
//! of a connection, handshake first (`zus_server::control`), over a real socket.
//!
//! A server with the nullfs plugin (device-less: a fuzzed mount request never opens a file)
//! listens on a socket in the temporary directory, its accept loop on a thread of its own, as
//! in zusd. An input is a sequence of messages (at most [`MAX_MSGS`]): a `u8` kind and a chunk
//! (u16 length). Kind bit 0 set: the chunk is a JSON body and the harness puts a valid header
//! (magic, ABI version, body length) in front of it; clear: the chunk is the whole message,
//! header included. Each message is decoded directly as a request and as a reply; then one
//! connection sends them all, shuts its writing side and reads every reply until the server
//! hangs up (which it does once it dropped the client: the input's work is over).
//!
//! Checked: every reply zusd sends decodes as a [`Reply`]; the first reply of a connection is
//! a hello or an error. Mounts an input made are unmounted after it (zusd keeps them when the
//! client leaves).

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use zus_api::ops::Pod;
use zus_channel::control::{self, CtlHeader, Reply, Request};
use zus_channel::sock;
use zus_plugin::PluginVtable;
use zus_server::plugins::Plugin;
use zus_server::server::{Config, Server};
use zus_server::topology::{Cpu, Topology};

use crate::Reader;

static NULLFS: PluginVtable = zus_plugin::vtable::<nullfs::NullFs>();

/// Messages per input.
pub const MAX_MSGS: usize = 8;
/// Kind bit: put a valid header in front of the chunk.
pub const WITH_HEADER: u8 = 1;

struct Fixture {
    server: Arc<Server>,
    socket: PathBuf,
    _listener: OwnedFd,
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

impl Fixture {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "zufs-fuzz-control-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("socket directory");
        let socket = dir.join("zusd.sock");
        let plugin = Plugin { name: "nullfs".into(), path: PathBuf::from("(fuzz)"), vtable: &NULLFS };
        let config = Config {
            plugin_dir: dir.join("plugins"),
            socket: socket.clone(),
            topology: Topology { cpus: vec![Cpu { id: 0, node: 0, os_cpu: 0 }], nnodes: 1, simulated: true },
            slots_per_cpu: 2,
            window_size: 16 << 10,
            client_spin_ns: 0,
            zt_poll_ns: 0,
            max_clients: 8,
            kernel: zus_server::KernelMode::Off,
        };
        let server = Server::new(config, vec![plugin]).expect("fuzz server");
        for z in server.zts.iter().chain(&server.kzts) {
            z.exited.store(true, Ordering::SeqCst);
        }
        let listener = zus_server::control::listen(&socket).expect("control socket");
        let (s, l) = (Arc::clone(&server), listener.try_clone().expect("dup listener"));
        std::thread::Builder::new()
            .name("fuzz-accept".into())
            .spawn(move || zus_server::control::accept_loop(&s, &l))
            .expect("accept thread");
        Self { server, socket, _listener: listener }
    }

    fn run(&mut self, data: &[u8]) {
        let mut r = Reader::new(data);
        let mut msgs = Vec::new();
        while !r.is_empty() && msgs.len() < MAX_MSGS {
            let kind = r.u8();
            let body = r.chunk();
            let msg = if kind & WITH_HEADER != 0 { frame(body) } else { body.to_vec() };
            let _ = control::decode::<Request>(&msg, "fuzz");
            let _ = control::decode::<Reply>(&msg, "fuzz");
            msgs.push(msg);
        }
        let conn = sock::connect(&self.socket).expect("connect to the fuzz server");
        for m in &msgs {
            if sock::send_msg(conn.as_fd(), m, None).is_err() {
                break;
            }
        }
        // SAFETY: shutdown of our own connected socket.
        unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&conn), libc::SHUT_WR) };
        let mut first = true;
        loop {
            match sock::recv_msg(conn.as_fd()) {
                Ok(Some((m, _fd))) => {
                    let reply = control::decode::<Reply>(&m, "zusd")
                        .unwrap_or_else(|e| panic!("zusd sent a reply that does not decode: {e}"));
                    if first {
                        assert!(
                            matches!(reply, Reply::Hello { .. } | Reply::Error { .. }),
                            "first reply of a connection: {reply:?}"
                        );
                        first = false;
                    }
                }
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) => break,
                Err(e) => panic!("reading zusd's replies: {e}"),
            }
        }
        drop(conn);
        let mounted = !self.server.state().mounts.is_empty();
        if mounted {
            self.server.unmount_all();
        }
    }
}

/// A message: a valid header and `body`.
#[must_use]
pub fn frame(body: &[u8]) -> Vec<u8> {
    let h = CtlHeader {
        magic: zus_api::ZUS_MAGIC,
        abi_version: zus_api::ZUS_ABI_VERSION,
        body_len: u32::try_from(body.len()).unwrap_or(u32::MAX),
    };
    let mut m = h.as_bytes().to_vec();
    m.extend_from_slice(body);
    m
}

/// One input (see the module doc).
pub fn run(data: &[u8]) {
    FIXTURE.with(|f| f.borrow_mut().get_or_insert_with(Fixture::new).run(data));
}

/// An input sending `reqs` (JSON bodies behind valid headers).
#[must_use]
pub fn encode(reqs: &[Request]) -> Vec<u8> {
    let mut out = Vec::new();
    for q in reqs {
        out.push(WITH_HEADER);
        crate::put_chunk(&mut out, &serde_json::to_vec(q).expect("json"));
    }
    out
}

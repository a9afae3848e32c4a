//! `zusd`: the zufs server daemon.

mod fuse_uring;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use zus_server::topology::Topology;
use zus_server::{Config, KernelMode, start};

/// The zufs user-mode server: one pinned ZT thread per CPU serving pluggable pmem filesystems.
#[derive(Debug, Parser)]
#[command(name = "zusd", version)]
struct Args {
    /// Directory holding filesystem plugins (*.so).
    #[arg(long, default_value = "/usr/lib/zufs")]
    plugins: PathBuf,
    /// Control socket path.
    #[arg(long, default_value = "/run/zufs/zusd.sock")]
    socket: PathBuf,
    /// Force a simulated topology NODESxCPUS (e.g. 2x4) instead of reading sysfs.
    #[arg(long)]
    topology: Option<String>,
    /// Slots per CPU lane in each client's channel set (1..=64).
    #[arg(long, default_value_t = zus_api::chan::DEFAULT_SLOTS_PER_CPU)]
    slots: usize,
    /// Data window per slot, KiB (4..=65536, a multiple of 4).
    #[arg(long, default_value_t = Config::DEFAULT_WINDOW_SIZE / 1024)]
    window_kib: usize,
    /// Nanoseconds a client spins for a reply from a ZT on another CPU before sleeping.
    #[arg(long, default_value_t = Config::DEFAULT_CLIENT_SPIN_NS)]
    client_spin_ns: u32,
    /// Nanoseconds a ZT polls for new work after serving a client that spins for its reply on
    /// another CPU (it yields to other threads and stops early when its CPU is wanted); 0: never.
    #[arg(long, default_value_t = Config::DEFAULT_ZT_POLL_NS)]
    zt_poll_ns: u32,
    /// Most connected clients (1..=127).
    #[arg(long, default_value_t = Config::DEFAULT_MAX_CLIENTS)]
    max_clients: usize,
    /// Serve the zufs kernel module through /dev/zufs (one K-ZT per CPU): auto (when /dev/zufs
    /// exists and the topology is the real one), on (`--kernel`: fail without it) or off.
    #[arg(long, default_value = "auto", num_args = 0..=1, default_missing_value = "on", require_equals = true)]
    kernel: KernelMode,
}

fn notify_ready() {
    // systemd readiness (Type=notify): one datagram to $NOTIFY_SOCKET.
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        let sock = std::os::unix::net::UnixDatagram::unbound();
        if let Ok(s) = sock {
            let _ = s.send_to(b"READY=1", PathBuf::from(path));
        }
    }
}

#[allow(unsafe_code)]
fn block_signals() -> libc::sigset_t {
    // SAFETY: building and installing a signal mask for this (and every later) thread.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGTERM);
        libc::sigaddset(&raw mut set, libc::SIGINT);
        libc::sigaddset(&raw mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &raw const set, core::ptr::null_mut());
        set
    }
}

#[allow(unsafe_code)]
fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: sigwait on a mask of blocked signals.
    unsafe { libc::sigwait(set, &raw mut sig) };
    sig
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ZUFS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let sys = std::path::Path::new("/sys");
    let topology = match &args.topology {
        Some(spec) => Topology::simulated(spec, &Topology::online_cpus(sys)?)?,
        None => Topology::from_sysfs(sys).context("reading the CPU topology")?,
    };
    // The library checks every limit (Config::validate, in start).
    let config = Config {
        plugin_dir: args.plugins.clone(),
        socket: args.socket.clone(),
        slots_per_cpu: args.slots,
        window_size: args.window_kib.saturating_mul(1024),
        client_spin_ns: args.client_spin_ns,
        zt_poll_ns: args.zt_poll_ns,
        max_clients: args.max_clients,
        kernel: args.kernel,
        topology,
    };
    let signals = block_signals();
    // FUSE over io_uring connections handed to zusd (`zufs mount -o serve=zusd`).
    zus_server::handoff::register(Arc::new(fuse_uring::FuseUring::default()));
    let running = start(config).context("starting zusd")?;
    let s = &running.server;
    tracing::info!(
        "zusd ready: {} ZT(s), {} K-ZT(s), topology {}, plugins [{}], socket {}",
        s.zts.len(),
        running.kernel_zts(),
        s.config.topology.describe(),
        s.plugins.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "),
        s.config.socket.display()
    );
    notify_ready();
    let sig = wait_signal(&signals);
    tracing::info!("signal {sig}: shutting down (unmounting and flushing)");
    running.shutdown();
    tracing::info!("zusd stopped cleanly");
    Ok(())
}

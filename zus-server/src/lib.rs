//! `zusd`, the zufs user-mode server.
//!
//! It discovers the topology, starts one ZT thread per CPU pinned to it, loads filesystem plugins,
//! maps pmem devices, and serves zus_api ops arriving on per-client shared-memory channels. It knows
//! nothing of FUSE or LD_PRELOAD: clients (the kmod-shim bridge and preload library, tests,
//! benchmarks) speak zus_api over the control socket and channels only.
//!
//! Modules: [`topology`] (sysfs or simulated), [`plugins`] (loader), [`host`] (the functions
//! plugins call), [`mounts`] (devices, mkfs, fsck), [`server`] (state and the generation
//! barrier), [`zt`] (the per-CPU threads), [`dispatch`] (request validation), [`control`] (the
//! socket), [`kernel`] (the kernel module's transport: `/dev/zufs` and its K-ZTs), [`handoff`]
//! (a kernel transport's fd handed to zusd and served on a live mount by a registered service).
#![deny(unsafe_code)]

pub mod control;
pub mod dispatch;
pub mod handoff;
pub mod host;
pub mod inline;
pub mod kcache;
pub mod kernel;
pub mod mounts;
pub mod plugins;
pub mod server;
#[cfg(test)]
mod testutil;
pub mod tickets;
pub mod topology;
pub mod zt;

use std::sync::Arc;
use std::sync::atomic::Ordering;

pub use kernel::KernelMode;
pub use server::{Config, ConfigError, Server};

/// A running server: its threads and listening socket.
#[derive(Debug)]
pub struct Running {
    /// Shared state.
    pub server: Arc<Server>,
    zts: Vec<std::thread::JoinHandle<()>>,
    listener: std::os::fd::OwnedFd,
    kernel: Option<kernel::Attached>,
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Control socket problem.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// Plugin directory problem.
    #[error(transparent)]
    Plugins(#[from] plugins::PluginLoadError),
    /// Thread creation failed.
    #[error("starting ZT threads: {0}")]
    Threads(std::io::Error),
    /// The kernel transport was asked for ([`KernelMode::On`]) and could not attach.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
}

/// Loads plugins, starts ZTs and the listener.
///
/// # Errors
/// [`StartError`].
pub fn start(config: Config) -> Result<Running, StartError> {
    config.validate()?;
    let plugins = plugins::load_dir(&config.plugin_dir)?;
    let listener = control::listen(&config.socket)?;
    let server = Server::new(config, plugins)?;
    let mut zts = Vec::new();
    for lane in 0..server.config.topology.cpus.len() {
        let s = Arc::clone(&server);
        let h = std::thread::Builder::new()
            .name(format!("zt{lane}"))
            .spawn(move || zt::run(&s, lane))
            .map_err(StartError::Threads)?;
        zts.push(h);
    }
    // Wait until every ZT runs (pinned, first snapshot picked up).
    server.wait_for_zts(server.generation.load(Ordering::SeqCst));
    let kernel = if kernel::wanted(&server.config) {
        match kernel::attach(&server) {
            Ok(k) => Some(k),
            Err(e) if server.config.kernel == KernelMode::Auto => {
                tracing::warn!("not serving the kernel module: {e}");
                None
            }
            Err(e) => {
                server.shutting_down.store(true, Ordering::SeqCst);
                server.wait_for_zts(u64::MAX);
                for z in zts {
                    let _ = z.join();
                }
                let _ = std::fs::remove_file(&server.config.socket);
                return Err(e.into());
            }
        }
    } else {
        None
    };
    let s = Arc::clone(&server);
    let lfd = listener.try_clone().map_err(StartError::Threads)?;
    std::thread::Builder::new()
        .name("zusd-accept".into())
        .spawn(move || control::accept_loop(&s, &lfd))
        .map_err(StartError::Threads)?;
    Ok(Running { server, zts, listener, kernel })
}

impl Running {
    /// The number of K-ZTs serving the kernel module (0 when zusd does not serve it).
    #[must_use]
    pub fn kernel_zts(&self) -> usize {
        self.kernel.as_ref().map_or(0, kernel::Attached::zts)
    }

    /// Clean shutdown (P-OP1): stop accepting, end the kernel module's session (its ops fail
    /// with `EIO` from then on), unmount every mount (plugins flush), stop ZTs, remove the
    /// socket file.
    pub fn shutdown(self) {
        let s = &self.server;
        s.shutting_down.store(true, Ordering::SeqCst);
        // Transports handed to zusd end first, so that their threads let go of the mounts.
        handoff::stop_all();
        #[allow(unsafe_code)]
        // SAFETY: shutting down our own listening socket wakes the accept thread.
        unsafe {
            libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&self.listener), libc::SHUT_RDWR);
        }
        let _ = std::fs::remove_file(&s.config.socket);
        if let Some(k) = self.kernel {
            k.stop(s);
        }
        // ZTs exit between ops once they see the flag, so after the joins nothing references a
        // mount and every plugin can flush and unmount.
        s.wait_for_zts(u64::MAX);
        for z in self.zts {
            let _ = z.join();
        }
        s.unmount_all();
        // The kernel client goes last: closing the device ends the module's session.
        kernel::detach(s);
    }
}

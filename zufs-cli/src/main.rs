//! `zufs`: make, check, mount and unmount zufs filesystems; show zusd's status.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
mod cli;
mod helper;
mod kmount;

use cli::{Env, MountArgs};

/// zufs: user-mode pmem filesystems mounted through the kernel's FUSE module.
#[derive(Debug, Parser)]
#[command(name = "zufs", version)]
struct Args {
    /// zusd control socket [env ZUFS_SOCKET; default /run/zufs/zusd.sock].
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Plugin directory [env ZUFS_PLUGINS; default <exe dir>/plugins, else /usr/lib/zufs].
    #[arg(long, global = true)]
    plugins: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a filesystem on a device (a file is created when missing).
    Mkfs {
        /// Filesystem type.
        #[arg(short = 't', long = "type")]
        fs_type: String,
        /// Size of a new device file (e.g. 256M, 1G).
        #[arg(long)]
        size: Option<String>,
        /// Plugin mkfs options.
        #[arg(short = 'o', long, default_value = "")]
        options: String,
        /// Device.
        device: String,
    },
    /// Check a filesystem (exit 1 when problems are found).
    Fsck {
        /// Filesystem type.
        #[arg(short = 't', long = "type")]
        fs_type: String,
        /// Device.
        device: String,
    },
    /// Mount a device at a directory (starts zusd when it is not running).
    ///
    /// Options (-o, comma-separated): ro, rw, sync, attr_timeout=SECS, entry_timeout=SECS (default 60),
    /// allow_other|noallow_other (default allow_other), default_permissions|nodefault_permissions
    /// (default on), direct_io, keep_cache, threads=N (default: one per CPU), pin|nopin (pin reader n to CPU n; default pin),
    /// transport=auto|uring|classic (default auto or $ZUFS_TRANSPORT: FUSE over io_uring where the kernel offers it), data=auto|remote|window (default auto: window up to 32 KiB, one-copy remote above),
    /// transport=kernel: no bridge, the zufs kernel module (/dev/zufs: `modprobe zufs`, zusd started after it) mounts zusd's mount
    /// (ro, sync, attr_timeout and entry_timeout apply; the FUSE-only options are ignored;
    /// dax=auto|always|never, nodax: on a DAX block device such as /dev/pmem0 the kernel copies file data
    /// straight to pmem and maps it, default auto = when the device does DAX),
    /// serve=channel|zusd (default channel or $ZUFS_SERVE: who runs each op; channel: the bridge hands it to
    /// zusd's ZT of the caller's CPU; zusd: with transport=uring, zusd serves the rings itself, one pinned thread per
    /// CPU, and the mount ends with zusd),
    /// fsname=NAME; anything else goes to the plugin.
    Mount {
        /// Filesystem type.
        #[arg(short = 't', long = "type")]
        fs_type: String,
        /// Options.
        #[arg(short = 'o', long, default_value = "")]
        options: String,
        /// Serve in this process instead of a background one (for systemd or debugging).
        #[arg(long)]
        foreground: bool,
        /// With --foreground: print READY/ERROR on stdout (used by the background mount).
        #[arg(long, hide = true)]
        notify_stdout: bool,
        /// Fail instead of starting zusd when it is not running.
        #[arg(long)]
        no_start: bool,
        /// Device ("none" for device-less types such as nullfs).
        device: String,
        /// Mount point.
        mountpoint: PathBuf,
    },
    /// Unmount (the plugin flushes before this returns).
    Umount {
        /// Detach lazily when busy.
        #[arg(short = 'l', long)]
        lazy: bool,
        /// Mount point.
        mountpoint: PathBuf,
    },
    /// Run a program with the data fast path: LD_PRELOAD=libzufs_preload.so (next to this
    /// binary) serves read/write/... on files of zufs mounts directly over zusd's channels
    /// (channel) or by copying to the mapped pmem device itself (dax, falls back to channel).
    Run {
        /// Data mode.
        #[arg(long, default_value = "dax", value_parser = ["dax", "channel"])]
        mode: String,
        /// Program and its arguments (after --).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<std::ffi::OsString>,
    },
    /// The scalability comparison: fio at rising thread counts against tmpfs, classic FUSE
    /// (bindfs), nullfs and pmemfs through the bridge, and pmemfs through the preload fast path
    /// (channel and dax), side by side; writes raw fio JSON, results.json, results.md and PNG plots.
    /// It starts its own zusd and cleans up everything, also after a failure or Ctrl-C.
    Bench(zufs_bench::BenchArgs),
    /// Plugins, mounts, channels and per-CPU op counts.
    Status {
        /// Machine-readable.
        #[arg(long)]
        json: bool,
    },
    /// Install the mount(8) helpers: DIR/mount.zufs.<type> symlinks to this binary, one per
    /// plugin, so that `mount -t zufs.pmemfs DEV MNT -o OPTS` and fstab lines of type
    /// zufs.<type> mount as `zufs mount -t <type>` does; and mount.fuse.zufs, mount.zufs and
    /// umount.zufs, which remount FUSE and kernel-module mounts and unmount module mounts.
    InstallHelpers {
        /// Where mount(8) looks for helpers.
        #[arg(long, default_value = "/sbin")]
        dir: PathBuf,
        /// Remove them instead.
        #[arg(long)]
        remove: bool,
    },
}

/// `zufs run`: execs the program with the preload library and the mode in its environment.
fn run(env: &Env, mode: &str, cmd: &[std::ffi::OsString]) -> Result<i32> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let lib = exe.with_file_name("libzufs_preload.so");
    if !lib.exists() {
        anyhow::bail!("{} is missing (it is installed next to the zufs binary)", lib.display());
    }
    let mut preload = lib.into_os_string();
    if let Some(old) = std::env::var_os("LD_PRELOAD").filter(|o| !o.is_empty()) {
        preload.push(" ");
        preload.push(old);
    }
    let err = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("LD_PRELOAD", preload)
        .env("ZUFS_MODE", mode)
        .env("ZUFS_SOCKET", &env.socket)
        .env("ZUFS_RUN_DIR", &env.run_dir)
        .exec();
    Err(anyhow::anyhow!("running {}: {err}", cmd[0].to_string_lossy()))
}

/// `zufs bench`: runs the matrix and prints the table.
fn bench(env: &Env, args: &zufs_bench::BenchArgs) -> Result<i32> {
    let exe = std::env::current_exe()?;
    let bin_dir = exe.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    let mut plan = args.plan(&bin_dir)?;
    plan.plugins = Some(env.plugins.clone());
    let r = if args.rerender {
        zufs_bench::rerender(&plan.out)?
    } else {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        zufs_bench::run(&plan, &command)?
    };
    println!("{}", zufs_bench::report::markdown(&r.cells, &plan.configs, &plan.threads));
    println!("results, raw fio JSON and plots in {}", plan.out.display());
    Ok(0)
}

fn main() {
    // Run as /sbin/mount.zufs.<type> by mount(8): DEV MNT [-sfnv] [-o OPTS] (or as another of
    // the helpers, helper.rs).
    if let Some(t) = std::env::args_os().next().and_then(|a| helper::helper_kind(&a)) {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ZUFS_LOG").unwrap_or_else(|_| "warn".into()))
            .with_writer(std::io::stderr)
            .init();
        let rest: Vec<String> = std::env::args().skip(1).collect();
        std::process::exit(helper::run(&Env::resolve(None, None), &t, &rest));
    }
    let args = Args::parse();
    // The bridge logs at info (to its log file); interactive commands only warn.
    let serving = matches!(args.cmd, Cmd::Mount { foreground: true, .. });
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ZUFS_LOG")
                .unwrap_or_else(|_| if serving { "info" } else { "warn" }.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let env = Env::resolve(args.socket, args.plugins);
    let res: Result<i32> = match args.cmd {
        Cmd::Mkfs { fs_type, size, options, device } => (|| {
            let size = size.as_deref().map(cli::parse_size).transpose()?;
            cli::mkfs(&env, &fs_type, &device, size, &options).map(|()| 0)
        })(),
        Cmd::Fsck { fs_type, device } => cli::fsck(&env, &fs_type, &device).map(|p| i32::from(p > 0)),
        Cmd::Mount { fs_type, options, foreground, notify_stdout, no_start, device, mountpoint } => {
            let a = MountArgs { fs_type, device, mountpoint, options, no_start };
            if foreground { cli::serve(&env, &a, notify_stdout) } else { cli::mount(&env, &a) }.map(|()| 0)
        }
        Cmd::Umount { lazy, mountpoint } => cli::umount(&env, &mountpoint, lazy).map(|()| 0),
        Cmd::Status { json } => cli::status(&env, json).map(|()| 0),
        Cmd::Run { mode, cmd } => run(&env, &mode, &cmd),
        Cmd::Bench(b) => bench(&env, &b),
        Cmd::InstallHelpers { dir, remove } => helper::install(&env, &dir, remove).map(|links| {
            for l in links {
                println!("{} {}", if remove { "removed" } else { "installed" }, l.display());
            }
            0
        }),
    };
    match res {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("zufs: {e:#}");
            std::process::exit(1);
        }
    }
}

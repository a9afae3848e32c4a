//! `zufs bench`: the ZUFS scalability comparison, reproduced side by side.
//!
//! fio (`direct=1 sync=1 ioengine=psync`, time based, group reporting) runs at rising thread counts
//! against every configuration in [`configs::Config`], interleaved by thread count so that slow
//! drift of the machine affects all configurations alike. A configuration that cannot be set up is
//! reported as missing with the reason, never faked. Results: raw fio JSON, `results.json`,
//! `results.md` (the table) and PNG plots in the output directory.
#![deny(unsafe_code)]

pub mod configs;
pub mod fio;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use configs::{Config, Env, Prepared};
use fio::{Dir, Job, Measured, Shape};

/// Bench errors.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The environment is not usable.
    #[error("bench setup: {0}")]
    Setup(String),
    /// fio failed.
    #[error("fio: {0}")]
    Fio(String),
    /// Drawing failed.
    #[error("plot: {0}")]
    Plot(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Thread counts.
    pub threads: Vec<usize>,
    /// Seconds per cell.
    pub runtime: u64,
    /// Directions.
    pub rw: Vec<Dir>,
    /// Shapes.
    pub shapes: Vec<Shape>,
    /// Configurations.
    pub configs: Vec<Config>,
    /// Output directory.
    pub out: PathBuf,
    /// Directory holding zufs and zusd.
    pub bin_dir: PathBuf,
    /// Plugin directory (default: `ZUFS_PLUGINS`, else `<bin_dir>/plugins`).
    pub plugins: Option<PathBuf>,
    /// Bytes of file per fio job.
    pub file_size: u64,
    /// Pin each fio job to one CPU.
    pub pin: bool,
}

/// Outcome of one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// fio ran.
    Measured(Measured),
    /// fio failed.
    Failed(String),
    /// The configuration is not available.
    Missing(String),
}

impl Outcome {
    /// The measurement, if any.
    #[must_use]
    pub fn measured(&self) -> Option<&Measured> {
        match self {
            Self::Measured(m) => Some(m),
            _ => None,
        }
    }
}

impl Measured {
    /// The figure a table compares: IOPS for 4K random, MB/s otherwise.
    #[must_use]
    pub fn rate(&self, shape: Shape) -> f64 {
        if shape == Shape::Rand4k { self.iops } else { self.mb_s }
    }
}

/// One cell of the matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// Configuration.
    pub config: Config,
    /// Shape.
    pub shape: Shape,
    /// Direction.
    pub rw: Dir,
    /// Threads.
    pub threads: usize,
    /// What happened.
    pub outcome: Outcome,
}

/// Results of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// Cells.
    pub cells: Vec<Cell>,
    /// Machine description.
    pub machine: String,
    /// The plan, as text.
    pub command: String,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let ncpu = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // A VM's idle vCPUs halt at once without guest halt polling: every wake-up of an idle CPU
    // is then an exit to the host, which the unpinned 1-job cells pay per op.
    let poll = std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
        .map(|v| format!(", guest_halt_poll_ns {}", v.trim()))
        .unwrap_or_default();
    format!("{ncpu} CPU(s) {cpu}, kernel {}{poll}", kernel.trim())
}

/// Runs the plan: sets up, runs the matrix with a progress bar, tears down, writes the outputs.
///
/// # Errors
/// [`BenchError`] when the environment is unusable or output cannot be written; failures of
/// single cells are recorded in the results instead.
pub fn run(plan: &Plan, command: &str) -> Result<Results, BenchError> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let s = Arc::clone(&stop);
        // Ctrl-C, SIGTERM or SIGHUP: finish the current cell's cleanup, skip the rest, tear
        // everything down.
        let _ = ctrlc::set_handler(move || s.store(true, Ordering::SeqCst));
    }
    std::fs::create_dir_all(plan.out.join("raw"))?;
    let max_threads = plan.threads.iter().copied().max().unwrap_or(1) as u64;
    let device_size = (max_threads * plan.file_size * 2 + (256 << 20)).next_multiple_of(2 << 20);
    let mut env = Env::new(&plan.bin_dir, plan.plugins.as_deref(), device_size)?;
    let mut prepared: Vec<(Config, Result<Prepared, String>)> = Vec::new();
    for &cfg in &plan.configs {
        let p = env.prepare(cfg);
        if let Err(e) = &p {
            eprintln!("zufs bench: {} is missing: {e}", cfg.name());
        }
        prepared.push((cfg, p));
    }
    let total = plan.threads.len() * plan.configs.len() * plan.shapes.len() * plan.rw.len();
    let pb = indicatif::ProgressBar::new(total as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} cells, eta {eta} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut cells = Vec::new();
    'outer: for &threads in &plan.threads {
        for &shape in &plan.shapes {
            for &rw in &plan.rw {
                for (cfg, p) in &prepared {
                    if stop.load(Ordering::SeqCst) {
                        break 'outer;
                    }
                    pb.set_message(format!("{} {} {} x{threads}", cfg.name(), shape.name(), rw.name()));
                    let outcome = match p {
                        Err(e) => Outcome::Missing(e.clone()),
                        Ok(p) => {
                            let job = Job {
                                dir: p.dir.clone(),
                                shape,
                                rw,
                                numjobs: threads,
                                runtime: plan.runtime,
                                size: plan.file_size,
                                pin: plan.pin,
                                output: plan.out.join("raw").join(format!(
                                    "{}-{}-{}-{threads}.json",
                                    cfg.id(),
                                    shape.name(),
                                    rw.name()
                                )),
                            };
                            match fio::run(&job, &p.wrapper, &env.fio) {
                                Ok(m) => Outcome::Measured(m),
                                Err(e) => Outcome::Failed(e.to_string()),
                            }
                        }
                    };
                    cells.push(Cell { config: *cfg, shape, rw, threads, outcome });
                    pb.inc(1);
                }
            }
        }
    }
    pb.finish_and_clear();
    drop(prepared);
    drop(env);
    if stop.load(Ordering::SeqCst) {
        return Err(BenchError::Interrupted);
    }
    let results = Results { cells, machine: machine(), command: command.to_owned() };
    write_outputs(&plan.out, &results, &plan.configs, &plan.threads)?;
    Ok(results)
}

/// Writes results.json, results.md and the plots.
///
/// # Errors
/// I/O or plotting errors.
pub fn write_outputs(out: &Path, r: &Results, configs: &[Config], threads: &[usize]) -> Result<(), BenchError> {
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(r)?)?;
    let plots = report::plots(out, &r.cells, configs, threads)?;
    let mut md = format!("# zufs bench\n\nMachine: {}\n\nCommand: `{}`\n", r.machine, r.command);
    md.push_str(&report::markdown(&r.cells, configs, threads));
    md.push_str("\nPlots: ");
    md.push_str(&plots.join(", "));
    md.push('\n');
    std::fs::write(out.join("results.md"), md)?;
    Ok(())
}

/// `zufs bench` arguments (flattened into the `zufs` CLI).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Thread counts (fio numjobs), comma-separated.
    #[arg(long, default_value = "1,2,4,8", value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Seconds per cell.
    #[arg(long, default_value_t = 10)]
    pub runtime: u64,
    /// Directions: randwrite,randread (4K random); write/read for the other shapes.
    #[arg(long, default_value = "randwrite,randread", value_delimiter = ',')]
    pub rw: Vec<String>,
    /// Shapes: rand4k, seq1m, vec32 (32 x 4K preadv/pwritev).
    #[arg(long, default_value = "rand4k", value_delimiter = ',')]
    pub shapes: Vec<String>,
    /// Configurations: tmpfs, fuse, nullfs-bridge, pmemfs-bridge, nullfs-uring, pmemfs-uring,
    /// pmemfs-uring-zusd, preload-channel, preload-dax. The bridge configs pin
    /// `transport=classic`; the uring ones `transport=uring` with each op handed to the CPU's ZT
    /// over the channel (mode (a) of issue 13); `pmemfs-uring-zusd` serves each op on zusd's ring
    /// thread of the caller's CPU (`serve=zusd`, mode (b)).
    #[arg(
        long,
        default_value = "tmpfs,fuse,nullfs-bridge,pmemfs-bridge,nullfs-uring,pmemfs-uring,preload-channel,preload-dax",
        value_delimiter = ','
    )]
    pub configs: Vec<String>,
    /// Output directory.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// MiB of file per fio job.
    #[arg(long, default_value_t = 64)]
    pub file_mib: u64,
    /// Only redraw results.md and the plots from an earlier run's results.json in --out.
    #[arg(long)]
    pub rerender: bool,
    /// Pin fio job n to CPU n (fio's `cpus_allowed_policy=split`), as an application that stays
    /// on its CPU. Unpinned, the scheduler moves a woken job to an idle CPU, which on a VM
    /// without guest halt polling costs a vCPU wake-up per op (docs/benchmarks.md).
    #[arg(long)]
    pub pin: bool,
}

impl BenchArgs {
    /// Turns arguments into a plan, checking every name.
    ///
    /// # Errors
    /// [`BenchError::Setup`] naming the bad value.
    pub fn plan(&self, bin_dir: &Path) -> Result<Plan, BenchError> {
        let bad = |what: &str, v: &str| BenchError::Setup(format!("unknown {what} {v:?}"));
        let rw = self
            .rw
            .iter()
            .map(|s| match s.as_str() {
                "randwrite" | "write" => Ok(Dir::Write),
                "randread" | "read" => Ok(Dir::Read),
                _ => Err(bad("--rw", s)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shapes =
            self.shapes.iter().map(|s| Shape::parse(s).ok_or_else(|| bad("--shapes", s))).collect::<Result<_, _>>()?;
        let configs = self
            .configs
            .iter()
            .map(|s| Config::parse(s).ok_or_else(|| bad("--configs", s)))
            .collect::<Result<_, _>>()?;
        if self.threads.is_empty() || self.threads.iter().any(|&t| t == 0 || t > 256) {
            return Err(BenchError::Setup("--threads wants numbers in 1..=256".into()));
        }
        if self.runtime == 0 || self.file_mib == 0 {
            return Err(BenchError::Setup("--runtime and --file-mib must be positive".into()));
        }
        Ok(Plan {
            threads: self.threads.clone(),
            runtime: self.runtime,
            rw,
            shapes,
            configs,
            out: self.out.clone(),
            bin_dir: bin_dir.to_owned(),
            plugins: None,
            file_size: self.file_mib << 20,
            pin: self.pin,
        })
    }
}

/// Re-renders results.md and the plots of an earlier run from its results.json.
///
/// # Errors
/// I/O, JSON or plotting errors.
pub fn rerender(out: &Path) -> Result<Results, BenchError> {
    let r: Results = serde_json::from_str(&std::fs::read_to_string(out.join("results.json"))?)?;
    let mut configs: Vec<Config> = Vec::new();
    let mut threads: Vec<usize> = Vec::new();
    for c in &r.cells {
        if !configs.contains(&c.config) {
            configs.push(c.config);
        }
        if !threads.contains(&c.threads) {
            threads.push(c.threads);
        }
    }
    write_outputs(out, &r, &configs, &threads)?;
    Ok(r)
}

//! Running fio and reading its JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::BenchError;

/// The I/O shapes the bench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    /// 4 KiB random I/O, one `pread`/`pwrite` per op (the ZUFS table).
    Rand4k,
    /// 1 MiB sequential I/O (the fuse-iomap comparison).
    Seq1m,
    /// 32 x 4 KiB vectored I/O (the FUSE scatter-gather comparison): fio's `vsync` engine merges 32
    /// contiguous 4 KiB units into one `readv`/`writev` of 32 segments (after an `lseek`; fio has
    /// no engine that batches into `preadv`/`pwritev`, checked with strace on fio 3.33).
    Vec32x4k,
}

impl Shape {
    /// Short name for files and tables.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Rand4k => "4k-random",
            Self::Seq1m => "1m-sequential",
            Self::Vec32x4k => "32x4k-vectored",
        }
    }

    /// Parses a name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Rand4k, Self::Seq1m, Self::Vec32x4k].into_iter().find(|x| x.name() == s || s == x.short())
    }

    fn short(self) -> &'static str {
        match self {
            Self::Rand4k => "rand4k",
            Self::Seq1m => "seq1m",
            Self::Vec32x4k => "vec32",
        }
    }
}

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dir {
    /// Writes.
    Write,
    /// Reads.
    Read,
}

impl Dir {
    /// Name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Read => "read",
        }
    }
}

/// One fio job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Directory the files live in.
    pub dir: PathBuf,
    /// Shape.
    pub shape: Shape,
    /// Direction.
    pub rw: Dir,
    /// Parallel jobs (threads of I/O: fio processes).
    pub numjobs: usize,
    /// Seconds.
    pub runtime: u64,
    /// Bytes of file per job.
    pub size: u64,
    /// Where fio writes its JSON.
    pub output: PathBuf,
    /// Pin job n to CPU n (mod the CPUs fio may use): `cpus_allowed_policy=split`.
    pub pin: bool,
}

impl Job {
    /// The fio arguments (no program name).
    #[must_use]
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            format!("--name=zb-{}", self.shape.name()),
            format!("--directory={}", self.dir.display()),
            format!("--numjobs={}", self.numjobs),
            format!("--size={}", self.size),
            format!("--runtime={}", self.runtime),
            "--time_based".into(),
            "--group_reporting".into(),
            "--direct=1".into(),
            "--output-format=json".into(),
            format!("--output={}", self.output.display()),
            // fio lays the files out before timing starts (posix_fallocate, the default), so
            // writes overwrite allocated blocks and reads read data, on every configuration.
        ];
        if self.pin {
            // Each job gets one CPU of the set fio may run on: the caller stays where its
            // requests are served instead of being moved to an idle CPU on every wake-up.
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            a.push(format!("--cpus_allowed=0-{}", cpus - 1));
            a.push("--cpus_allowed_policy=split".into());
        }
        match self.shape {
            Shape::Rand4k => {
                a.push(format!("--rw=rand{}", self.rw.name()));
                a.extend(["--bs=4k".into(), "--ioengine=psync".into(), "--sync=1".into()]);
            }
            Shape::Seq1m => {
                a.push(format!("--rw={}", self.rw.name()));
                a.extend(["--bs=1m".into(), "--ioengine=psync".into(), "--sync=1".into()]);
            }
            Shape::Vec32x4k => {
                // The vsync engine merges 32 contiguous 4 KiB units into one readv/writev.
                a.push(format!("--rw={}", self.rw.name()));
                a.extend([
                    "--bs=4k".into(),
                    "--ioengine=vsync".into(),
                    "--iodepth=32".into(),
                    "--iodepth_batch_submit=32".into(),
                    "--iodepth_batch_complete_min=32".into(),
                    "--sync=1".into(),
                ]);
            }
        }
        a
    }
}

/// What one fio run measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Operations per second (fio's I/O units: 4 KiB, 1 MiB or 4 KiB).
    pub iops: f64,
    /// MB/s (10^6 bytes).
    pub mb_s: f64,
    /// Mean completion latency, µs.
    pub mean_us: f64,
    /// 99th percentile completion latency, µs.
    pub p99_us: f64,
}

#[derive(Debug, Deserialize)]
struct FioOut {
    jobs: Vec<FioJob>,
}

#[derive(Debug, Deserialize)]
struct FioJob {
    error: i64,
    read: FioDir,
    write: FioDir,
}

#[derive(Debug, Deserialize)]
struct FioDir {
    iops: f64,
    bw_bytes: f64,
    clat_ns: FioLat,
}

#[derive(Debug, Deserialize)]
struct FioLat {
    mean: f64,
    #[serde(default)]
    percentile: std::collections::BTreeMap<String, f64>,
}

/// Parses fio's JSON output (fio may print warnings before the JSON object).
///
/// # Errors
/// [`BenchError::Fio`] when the output is not fio JSON or the job failed.
pub fn parse(text: &str, rw: Dir) -> Result<Measured, BenchError> {
    let start = text.find('{').ok_or_else(|| BenchError::Fio("no JSON in fio output".into()))?;
    let out: FioOut = serde_json::from_str(&text[start..])?;
    let job = out.jobs.first().ok_or_else(|| BenchError::Fio("fio reported no jobs".into()))?;
    if job.error != 0 {
        return Err(BenchError::Fio(format!("fio job failed with error {}", job.error)));
    }
    let d = match rw {
        Dir::Write => &job.write,
        Dir::Read => &job.read,
    };
    let p99 = d.clat_ns.percentile.get("99.000000").copied().unwrap_or(0.0);
    Ok(Measured { iops: d.iops, mb_s: d.bw_bytes / 1e6, mean_us: d.clat_ns.mean / 1e3, p99_us: p99 / 1e3 })
}

/// Runs fio, optionally under a wrapper command (e.g. `zufs run --mode dax --`).
///
/// # Errors
/// [`BenchError::Fio`] with fio's stderr when it fails.
pub fn run(job: &Job, wrapper: &[String], fio: &Path) -> Result<Measured, BenchError> {
    let mut cmd = if let Some((first, rest)) = wrapper.split_first() {
        let mut c = Command::new(first);
        c.args(rest).arg(fio);
        c
    } else {
        Command::new(fio)
    };
    cmd.args(job.args());
    let out = cmd.output().map_err(|e| BenchError::Fio(format!("starting fio: {e}")))?;
    let text = std::fs::read_to_string(&job.output).unwrap_or_default();
    if !out.status.success() {
        return Err(BenchError::Fio(format!(
            "fio exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).lines().take(5).collect::<Vec<_>>().join(" | ")
        )));
    }
    parse(&text, job.rw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_fio_json_with_leading_warning() {
        let j = r#"note: both iodepth >= 1 and synchronous I/O engine are selected
{"jobs":[{"error":0,"read":{"iops":0.0,"bw_bytes":0,"clat_ns":{"mean":0.0}},
"write":{"iops":1000.5,"bw_bytes":4098048,"clat_ns":{"mean":2500.0,"percentile":{"99.000000":9000}}}}]}"#;
        let m = parse(j, Dir::Write).unwrap();
        assert!((m.iops - 1000.5).abs() < 1e-9);
        assert!((m.mean_us - 2.5).abs() < 1e-9 && (m.p99_us - 9.0).abs() < 1e-9);
        assert!((m.mb_s - 4.098048).abs() < 1e-9);
    }

    #[test]
    fn test_parse_failed_job_is_error() {
        let j = r#"{"jobs":[{"error":5,"read":{"iops":0,"bw_bytes":0,"clat_ns":{"mean":0}},"write":{"iops":0,"bw_bytes":0,"clat_ns":{"mean":0}}}]}"#;
        assert!(parse(j, Dir::Write).is_err());
        assert!(parse("garbage", Dir::Write).is_err());
    }

    #[test]
    fn test_vectored_job_batches_32() {
        let j = Job {
            dir: "/x".into(),
            shape: Shape::Vec32x4k,
            rw: Dir::Read,
            numjobs: 2,
            pin: false,
            runtime: 3,
            size: 1 << 20,
            output: "/o".into(),
        };
        let a = j.args();
        assert!(a.contains(&"--ioengine=vsync".to_owned()) && a.contains(&"--iodepth_batch_submit=32".to_owned()));
        assert!(a.contains(&"--rw=read".to_owned()) && a.contains(&"--numjobs=2".to_owned()));
        assert!(!a.iter().any(|x| x.starts_with("--cpus_allowed")));
        let a = Job { pin: true, ..j }.args();
        assert!(
            a.contains(&"--cpus_allowed_policy=split".to_owned())
                && a.iter().any(|x| x.starts_with("--cpus_allowed=0-"))
        );
    }
}

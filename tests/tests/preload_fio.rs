//! fio with `verify=crc32c` under `zufs run` (the preload library), 1, 2, 4 and 8 jobs, in both data modes;
//! afterwards the files read back through the plain kernel mount verify too, and fsck is clean.
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]

#[macro_use]
#[path = "preload_support/mod.rs"]
mod common;

use common::*;

/// fio's vsync engine: 32 buffers per readv/writev (the scatter-gather shape).
const VECTORED: [&str; 4] =
    ["--ioengine=vsync", "--iodepth=32", "--iodepth_batch_submit=32", "--iodepth_batch_complete_min=32"];

fn fio_verify(f: &Fixture, mode: &str, jobs: u32, rw: &str) {
    fio_verify_with(f, mode, jobs, rw, &[]);
}

/// `extra`: more fio options (e.g. `--thread`: jobs as threads of one process, sharing the
/// library's fd table, slots and connection).
fn fio_verify_with(f: &Fixture, mode: &str, jobs: u32, rw: &str, extra: &[&str]) {
    let tag: String = extra.join("").chars().filter(char::is_ascii_alphanumeric).collect();
    let dir = f.path(&format!("{mode}-{jobs}-{rw}{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let nj = format!("--numjobs={jobs}");
    let rw_arg = format!("--rw={rw}");
    // The same job for the writer and for the verifier.
    let job = ["--name=v", "--directory", &d, "--ioengine=psync", &rw_arg, "--bs=4k", "--size=4m", &nj];
    let common = ["--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse"];
    let mut args: Vec<&str> = job.iter().chain(&common).copied().collect();
    args.extend(["--direct=1", "--sync=1", "--group_reporting"]);
    args.extend_from_slice(extra);
    f.preload_ok(mode, "fio", &args, 300);
    // The same data, read and verified through the kernel mount only (no preload).
    let o = run_with_timeout(
        std::process::Command::new("fio")
            .args(job.iter().chain(&common))
            .arg("--verify_only")
            .args(extra.iter().filter(|a| **a != "--thread")),
        std::time::Duration::from_secs(300),
    );
    assert!(o.status.success(), "verify through the kernel mount failed ({mode}, {jobs} jobs):\n{}", text(&o));
}

#[test]
fn test_fio_verify_channel_mode_1_2_4_8_jobs() {
    skip_unless_ready!("fio");
    let f = Fixture::new("preload-fio-chan", "512M", COHERENT);
    for jobs in [1, 2, 4, 8] {
        fio_verify(&f, "channel", jobs, "randwrite");
    }
    fio_verify(&f, "channel", 2, "write");
    fio_verify_with(&f, "channel", 4, "randwrite", &["--thread"]);
    fio_verify_with(&f, "channel", 2, "randwrite", &["--thread", "--bsrange=1k-64k"]);
    // Both data paths at every size, not only the one the auto policy picks for the size.
    fio_verify(&f, "channel+remote", 2, "randwrite");
    fio_verify_with(&f, "channel+remote", 2, "randrw", &["--bsrange=1k-64k"]);
    fio_verify_with(&f, "channel+window", 2, "randrw", &["--bsrange=1k-256k"]);
    // Streamed windows: single buffers of every size, and 32-buffer readv/writev (fio's vsync
    // engine), where the auto policy streams too; 1 and 4 jobs so both lanes get used. (fio
    // cannot verify randrw with vsync: it fails on tmpfs too.)
    fio_verify_with(&f, "channel+stream", 2, "randrw", &["--bsrange=1k-256k"]);
    for (mode, jobs) in [("channel", 1), ("channel", 4), ("channel+stream", 2)] {
        fio_verify_with(&f, mode, jobs, "randwrite", &VECTORED);
    }
    let out = f.unmount_and_fsck();
    assert!(out.contains("0 problem"), "{out}");
}

#[test]
fn test_fio_verify_dax_mode_1_2_4_8_jobs() {
    skip_unless_ready!("fio");
    let f = Fixture::new("preload-fio-dax", "512M", COHERENT);
    for jobs in [1, 2, 4, 8] {
        fio_verify(&f, "dax", jobs, "randwrite");
    }
    fio_verify(&f, "dax", 2, "write");
    fio_verify_with(&f, "dax", 4, "randwrite", &["--thread"]);
    fio_verify_with(&f, "dax", 2, "randwrite", &["--thread", "--bsrange=1k-64k"]);
    let out = f.unmount_and_fsck();
    assert!(out.contains("0 problem"), "{out}");
}

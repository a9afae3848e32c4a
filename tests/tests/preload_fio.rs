//! fio with `verify=crc32c` under `zufs run` (the preload library), 1, 2, 4 and 8 jobs, in both data modes;
//! afterwards the files read back through the plain kernel mount verify too, and fsck is clean.
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]

#[macro_use]
#[path = "preload_support/mod.rs"]
mod common;

use common::*;

fn fio_verify(f: &Fixture, mode: &str, jobs: u32, rw: &str) {
    let dir = f.path(&format!("{mode}-{jobs}-{rw}"));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display().to_string();
    let nj = format!("--numjobs={jobs}");
    let args = [
        "--name=v", "--directory", &d, "--ioengine=psync", &format!("--rw={rw}"), "--bs=4k", "--size=4m", &nj,
        "--direct=1", "--sync=1", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--group_reporting", "--output-format=terse",
    ];
    f.preload_ok(mode, "fio", &args, 300);
    // The same data, read and verified through the kernel mount only (no preload).
    let o = run_with_timeout(
        std::process::Command::new("fio").args([
            "--name=v", "--directory", &d, "--ioengine=psync", &format!("--rw={rw}"), "--bs=4k", "--size=4m", &nj,
            "--verify=crc32c", "--verify_only", "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse",
        ]),
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
    let out = f.unmount_and_fsck();
    assert!(out.contains("0 problem"), "{out}");
}

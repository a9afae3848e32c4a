//! Process life under the preload library: dup/close/close_range, fork (the child's own
//! connection), exec (lazy re-initialization, close-on-exec), and a preloaded writer killed with
//! SIGKILL mid-write, after which the kernel mount still works and fsck is clean.
#![allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap, clippy::cast_sign_loss)]

#[macro_use]
#[path = "preload_support/mod.rs"]
mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::*;
use zufs_tests::artifact;

/// Distinct pids whose stats line shows served calls.
fn serving_pids(stats: &str) -> usize {
    stats
        .lines()
        .filter(|l| l.contains("zufs-preload: stats"))
        .filter(|l| l.split_whitespace().skip_while(|w| *w != "served").nth(1).is_some_and(|v| v != "0"))
        .count()
}

fn forkexec(mode: &str) {
    let f = Fixture::new(&format!("preload-fork-{mode}"), "128M", COHERENT);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/preload_forkexec.py");
    let file = f.path("forked").display().to_string();
    let o = run_with_timeout(
        f.preload(mode, "python3").arg(script).arg(&file).env("ZUFS_PRELOAD_STATS", "1"),
        Duration::from_secs(60),
    );
    let out = text(&o);
    assert!(o.status.success(), "{mode}: {out}");
    assert!(out.contains("forkexec ok"), "{out}");
    // The parent and the exec'd child both served calls themselves (the fork child leaves with
    // _exit, which prints nothing).
    assert!(serving_pids(&out) >= 2, "expected the parent and the exec child on the fast path: {out}");
    assert!(!out.contains("fast path unavailable"), "{out}");
    let data = std::fs::read(f.path("forked")).unwrap();
    assert_eq!(&data[..10], b"PARNTdup1d");
    assert_eq!(&data[15..18], b"pfd");
    assert_eq!(&data[10..15], b"CHILD");
    assert_eq!(&data[20..25], b"EXECD");
    assert_eq!(&data[100..103], b"POS");
    let out = f.unmount_and_fsck();
    assert!(out.contains(" 0 problem"), "{out}");
}

#[test]
fn test_dup_fork_exec_close_range_channel_mode() {
    skip_unless_ready!("python3");
    forkexec("channel");
}

#[test]
fn test_dup_fork_exec_close_range_dax_mode() {
    skip_unless_ready!("python3");
    forkexec("dax");
}

/// Pids whose parent is `ppid`.
fn children_of(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // "pid (comm) state ppid ...": comm may contain spaces, so split after the last ')'.
        let rest = st.rsplit_once(')').map_or("", |x| x.1);
        if rest.split_whitespace().nth(1).and_then(|v| v.parse::<i32>().ok()) == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|st| st.rsplit_once(')').is_some_and(|x| !x.1.trim_start().starts_with('Z')))
}

fn sigkill_mid_write(mode: &str) {
    let f = Fixture::new(&format!("preload-kill-{mode}"), "256M", COHERENT);
    let d = f.path("k").display().to_string();
    std::fs::create_dir_all(&d).unwrap();
    // Rounds 0-2 one buffer per call; round 3 readv/writev of 32 buffers (in channel mode one
    // streamed-window op each, killed while the client fills the window).
    for round in 0..4 {
        let engine: &[&str] = if round == 3 {
            &["--ioengine=vsync", "--iodepth=32", "--iodepth_batch_submit=32", "--iodepth_batch_complete_min=32"]
        } else {
            &["--ioengine=psync"]
        };
        let mut child = f
            .preload(mode, "fio")
            .args(engine)
            .args([
                "--name=k",
                "--directory",
                &d,
                "--rw=randrw",
                "--bs=4k",
                "--size=16m",
                "--numjobs=2",
                "--time_based",
                "--runtime=30",
                "--fallocate=none",
                "--output-format=terse",
            ])
            .arg(format!("--direct={}", round % 2))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("fio");
        // Let the jobs lay out their files and get going, then kill the whole group.
        std::thread::sleep(Duration::from_millis(1500 + 300 * round));
        // fio's job processes call setsid(): find them by parent, then SIGKILL each one (jobs
        // first, mid-write) with kill(2) on exact pids. The parent is stopped first, so that it
        // cannot start a job after we listed them (one would outlive the test and keep the
        // mount busy).
        let parent = i32::try_from(child.id()).expect("pid");
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on the pid of the child we spawned.
        unsafe {
            libc::kill(parent, libc::SIGSTOP)
        };
        let mut pids = children_of(parent);
        pids.push(parent);
        for &p in &pids {
            assert!(p > 1);
            #[allow(unsafe_code)]
            // SAFETY: kill(2) on a positive pid we just found as fio or its job.
            unsafe {
                libc::kill(p, libc::SIGKILL)
            };
        }
        let _ = child.wait();
        let t0 = std::time::Instant::now();
        while pids.iter().any(|p| alive(*p)) {
            assert!(t0.elapsed() < Duration::from_secs(20), "killed fio jobs did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The mount still serves everything through the kernel, with no preload.
    let names: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!names.is_empty());
    for p in &names {
        let len = std::fs::metadata(p).unwrap().len();
        assert_eq!(std::fs::read(p).unwrap().len() as u64, len);
    }
    std::fs::write(f.path("after"), b"still fine").unwrap();
    assert_eq!(std::fs::read(f.path("after")).unwrap(), b"still fine");
    let out = f.unmount_and_fsck();
    assert!(out.contains(" 0 problem"), "{mode}: {out}");
}

#[test]
fn test_sigkill_mid_write_leaves_fsck_clean_channel_mode() {
    skip_unless_ready!("fio");
    sigkill_mid_write("channel");
}

#[test]
fn test_sigkill_mid_write_leaves_fsck_clean_dax_mode() {
    skip_unless_ready!("fio");
    sigkill_mid_write("dax");
}

/// Another user (a program under setpriv, so the uid changes after the library loaded)
/// reaches a root-owned mount's files through the fast path with tickets: zusd attaches it with
/// tickets only, the bridge issues one for the file the program opened, and the data lands
/// where it should.
#[test]
fn test_other_user_uses_the_fast_path_with_tickets() {
    skip_unless_ready!("setpriv", "python3");
    let f = Fixture::new("preload-nonowner", "64M", COHERENT);
    let p = f.path("shared");
    std::fs::write(&p, vec![0xabu8; 16384]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    // Writes 3 x 4 KiB of zeros at 4096, then prints the library's counters.
    let prog = format!(
        "import os, ctypes\n\
         fd = os.open({:?}, os.O_WRONLY)\n\
         for i in range(3): os.pwrite(fd, bytes(4096), 4096 * (i + 1))\n\
         b = ctypes.create_string_buffer(512)\n\
         ctypes.CDLL(None).zufs_preload_stats(b, 512)\n\
         print(b.value.decode())\n",
        p.display().to_string()
    );
    // The system's interpreter: a per-user one (pyenv under /root) is not for user 65534.
    let python = if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let o = run_with_timeout(
        f.preload("channel", "setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", &prog])
            .env("ZUFS_PRELOAD_STATS", "1"),
        Duration::from_secs(30),
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(!out.contains("fast path unavailable"), "{out}");
    let chan_io: u64 = out
        .lines()
        .filter_map(|l| l.split(" chan_io ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    assert!(chan_io >= 3, "the writes did not take the fast path: {out}");
    let data = std::fs::read(&p).unwrap();
    assert_eq!(data.len(), 16384);
    assert!(data[..4096].iter().all(|&b| b == 0xab) && data[4096..].iter().all(|&b| b == 0), "{out}");
}

/// Dax mode needs the device open read-write and mappable; when it is not (here: in a private
/// mount namespace the device path is /dev/null, which opens but is empty) the library says so
/// once and uses channel mode.
#[test]
fn test_dax_falls_back_to_channel_mode_when_device_cannot_be_mapped() {
    skip_unless_ready!("unshare", "dd");
    let f = Fixture::new("preload-daxfallback", "64M", COHERENT);
    let dev = f.dev.display().to_string();
    let x = f.path("x").display().to_string();
    let zufs = artifact("zufs").display().to_string();
    let script = format!(
        "mount --bind /dev/null {dev} && {zufs} --socket {} run --mode dax -- dd if=/dev/zero of={x} bs=4096 count=4",
        f.zusd.socket.display()
    );
    let o = run_with_timeout(
        std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env("ZUFS_RUN_DIR", &f.run_dir),
        Duration::from_secs(30),
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(out.matches("dax mode unavailable").count(), 1, "{out}");
    assert!(out.contains("using channel mode"), "{out}");
    // (No stats line to look at: coreutils close stderr at exit, before our destructor runs.)
    assert_eq!(std::fs::read(f.path("x")).unwrap(), vec![0u8; 16384]);
    let out = f.unmount_and_fsck();
    assert!(out.contains(" 0 problem"), "{out}");
}

fn signal(pid: i32, sig: i32) {
    assert!(pid > 1);
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a positive pid of a process this test started (or its fio job).
    unsafe {
        libc::kill(pid, sig)
    };
}

/// statvfs of `dir` and the allocated size of each file in it, for a failure message.
fn space(dir: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let df = run_with_timeout(std::process::Command::new("df").arg("-B1").arg(dir), Duration::from_secs(10));
    let mut s = String::from_utf8_lossy(&df.stdout).into_owned();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(m) = e.metadata() {
            s.push_str(&format!("{:?}: size {} allocated {}\n", e.file_name(), m.len(), m.blocks() * 512));
        }
    }
    s
}

/// A dax writer stopped in the middle of a long copy while another process truncates its file:
/// the freed blocks are the only free ones on the full device, yet they must not go to another
/// file until the stopped copy has ended (zusd's dax reader slots hold pmemfs's quarantine past
/// its 50 ms grace). Otherwise the copy, resumed, would write into the other file.
#[test]
fn test_stopped_dax_writer_keeps_freed_blocks_from_reuse() {
    skip_unless_ready!("fio");
    let f = Fixture::new("preload-stop", "48M", COHERENT);
    let x = f.path("x");
    std::fs::write(&x, vec![7u8; 16 << 20]).unwrap();
    let mut filler = std::fs::File::create(f.path("filler")).unwrap();
    let chunk = vec![1u8; 256 << 10];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    // Leave 1 MiB: y (4 MiB) still needs x's freed blocks, while rewriting x at the start of the
    // next round may need a few blocks more than x had (its blocks come back in other pieces,
    // some of them still on their way back from the last round's truncates).
    let len = filler.metadata().unwrap().len();
    filler.set_len(len.saturating_sub(1 << 20)).unwrap();
    drop(filler);
    let mut waited_for_reader = 0;
    for round in 0..4u32 {
        if round > 0 {
            // Give the file its blocks back for the next round.
            let _ = std::fs::remove_file(f.path("y"));
            std::thread::sleep(Duration::from_millis(100));
            if let Err(e) = std::fs::write(&x, vec![7u8; 16 << 20]) {
                panic!("round {round}: rewriting x: {e}; {}", space(&f.path("")));
            }
        }
        // 16 MiB per pwrite, copied into x's cached extents: each call is mostly one long copy.
        let mut fio = f
            .preload("dax", "fio")
            .args([
                "--name=w",
                "--filename",
                &x.display().to_string(),
                "--rw=write",
                "--bs=16m",
                "--size=16m",
                "--ioengine=psync",
                "--time_based",
                "--runtime=30",
                "--fallocate=none",
                "--output-format=terse",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("fio");
        std::thread::sleep(Duration::from_millis(700 + 97 * u64::from(round)));
        let parent = i32::try_from(fio.id()).expect("pid");
        signal(parent, libc::SIGSTOP);
        let mut pids = children_of(parent);
        for &p in &pids {
            signal(p, libc::SIGSTOP);
        }
        pids.push(parent);
        // Another process truncates x and writes y: on the full device only x's old blocks
        // are free, and they are still the target of the stopped copy.
        std::fs::OpenOptions::new().write(true).open(&x).unwrap().set_len(0).unwrap();
        let y_data: Vec<u8> = (0..(4usize << 20)).map(|i| (i % 251) as u8).collect();
        let y = f.path("y");
        let want = y_data.clone();
        let writer = std::thread::spawn(move || std::fs::write(&y, &want));
        std::thread::sleep(Duration::from_millis(400));
        if !writer.is_finished() {
            waited_for_reader += 1;
        }
        for &p in &pids {
            signal(p, libc::SIGCONT);
        }
        std::thread::sleep(Duration::from_millis(200));
        for &p in &pids {
            signal(p, libc::SIGKILL);
        }
        let _ = fio.wait();
        let t0 = std::time::Instant::now();
        while pids.iter().any(|p| alive(*p)) {
            assert!(t0.elapsed() < Duration::from_secs(20), "fio did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(e) = writer.join().unwrap() {
            // The resumed fio extended x again and took the blocks first (y's allocation was
            // waiting for them, as it should): nothing was at risk; write y now.
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "writing y: {e}");
            std::fs::OpenOptions::new().write(true).open(&x).unwrap().set_len(0).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(f.path("y"), &y_data).unwrap();
        }
        let got = std::fs::read(f.path("y")).unwrap();
        assert!(got == y_data, "round {round}: the stopped dax copy, resumed, wrote into another file's blocks");
    }
    // A stop may fall between two writes (no copy in progress): then nothing holds the blocks
    // and the round proves nothing, so this is reported, not asserted. With the reader slots
    // ignored, 1 run in 3 caught the resumed copy writing into y (checked by hand).
    println!("y's allocation waited for the stopped copy in {waited_for_reader} of 4 rounds");
    let out = f.unmount_and_fsck();
    assert!(out.contains(" 0 problem"), "{out}");
}

/// Runs `tests/scripts/preload_races.py CASE DIR` under the library in `mode` with the test
/// hooks `hooks` (`ZUFS_PRELOAD_TEST`); returns the fixture for further checks.
fn races(mode: &str, case: &str, hooks: &str) -> Fixture {
    let f = Fixture::new(&format!("preload-race-{case}-{mode}"), "64M", COHERENT);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/preload_races.py");
    let d = f.path("r");
    std::fs::create_dir_all(&d).unwrap();
    let o = run_with_timeout(
        f.preload(mode, "python3")
            .arg(script)
            .arg(case)
            .arg(&d)
            .env("ZUFS_PRELOAD_TEST", hooks)
            .env("ZUFS_PRELOAD_STATS", "1"),
        Duration::from_secs(60),
    );
    let out = text(&o);
    assert!(o.status.success() && out.contains("races ok"), "{case} ({mode}): {out}");
    assert!(!out.contains("fast path unavailable"), "{out}");
    f
}

/// A close on another thread, then an open that takes the same fd number (and, in the library,
/// the same file slot), while a long pwritev is between two chunks: the whole write lands in
/// the file it was called on (the kernel pins an open file for the length of a call; the
/// library must pin its file slot the same way).
fn slot_reuse(mode: &str) {
    let f = races(mode, "slot_reuse", "pause_rw=1500");
    let b = std::fs::read(f.path("r/b")).unwrap();
    assert!(b.is_empty(), "{mode}: {} bytes of a write on a closed fd landed in the file opened after it", b.len());
    assert_eq!(std::fs::metadata(f.path("r/a")).unwrap().len(), 300 * 4096, "{mode}");
}

#[test]
fn test_close_and_reopen_during_a_write_never_redirects_it_channel_mode() {
    skip_unless_ready!("python3");
    slot_reuse("channel");
}

#[test]
fn test_close_and_reopen_during_a_write_never_redirects_it_dax_mode() {
    skip_unless_ready!("python3");
    slot_reuse("dax");
}

/// Two threads close two dup'ed fds of a file with a pending dax mtime at once: whichever
/// drops the last reference commits it.
#[test]
fn test_concurrent_closes_of_dup_fds_commit_the_pending_mtime() {
    skip_unless_ready!("python3");
    races("dax", "dup_close_mtime", "pause_release=500");
}

/// A dax write whose MAP_DONE (the mtime commit) fails still reports its bytes (they landed),
/// and the mtime stays pending until the next commit (here: the close).
#[test]
fn test_failed_map_done_keeps_the_write_and_its_mtime() {
    skip_unless_ready!("python3");
    races("dax", "map_done_fails", "fail_map_done=1");
}

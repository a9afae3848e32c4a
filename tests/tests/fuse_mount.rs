//! The FUSE bridge with nullfs: `zufs mount/umount/status`, namespace ops through the kernel,
//! mount options, bad input, zusd killed while mounted, zusd started on demand, reader pinning.

#[macro_use]
#[path = "fuse_common.rs"]
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::*;

fn test_nullfs_namespace_through_the_kernel_and_clean_umount() {
    skip_without_fuse!();
    let f = Fixture::new("fuse-ns", &["nullfs"], true);
    f.mount("nullfs", "none", "");
    let m = &f.mnt;
    std::fs::create_dir(m.join("d")).unwrap();
    std::fs::create_dir(m.join("d/sub")).unwrap();
    std::fs::write(m.join("d/a"), b"hello").unwrap();
    // nullfs keeps sizes, not data: reads return its pattern (byte o % 251).
    let md = std::fs::metadata(m.join("d/a")).unwrap();
    assert_eq!(md.len(), 5);
    assert!(md.is_file());
    assert_eq!(std::fs::read(m.join("d/a")).unwrap(), vec![0, 1, 2, 3, 4]);
    // nullfs has no rename: the plugin's ENOSYS reaches the caller unchanged.
    assert_eq!(std::fs::rename(m.join("d/a"), m.join("d/b")).unwrap_err().raw_os_error(), Some(libc::ENOSYS));
    std::fs::write(m.join("d/b"), b"x").unwrap();
    std::fs::remove_file(m.join("d/a")).unwrap();
    assert!(!m.join("d/a").exists());
    let mut names: Vec<String> =
        std::fs::read_dir(m.join("d")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["b", "sub"]);
    std::fs::set_permissions(m.join("d/b"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(std::fs::metadata(m.join("d/b")).unwrap().mode() & 0o7777, 0o600);
    let fh = std::fs::OpenOptions::new().write(true).open(m.join("d/b")).unwrap();
    fh.set_len(100_000).unwrap();
    drop(fh);
    assert_eq!(std::fs::metadata(m.join("d/b")).unwrap().len(), 100_000);
    // Many entries: readdir across several FUSE readdir calls.
    for i in 0..300 {
        std::fs::write(m.join(format!("d/sub/f{i:03}")), b"").unwrap();
    }
    assert_eq!(std::fs::read_dir(m.join("d/sub")).unwrap().count(), 300);
    for i in 0..300 {
        std::fs::remove_file(m.join(format!("d/sub/f{i:03}"))).unwrap();
    }
    std::fs::remove_dir(m.join("d/sub")).unwrap();
    assert_eq!(std::fs::remove_dir(m.join("d")).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
    let (ok, out) = sh(&format!("df -P {} && stat -f {}", m.display(), m.display()), Duration::from_secs(10));
    assert!(ok, "{out}");
    // Status names the mount, its bridge and per-CPU op counts.
    let st = f.status();
    let mounts = st["mounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1, "{st}");
    assert_eq!(mounts[0]["mountpoint"].as_str(), Some(m.display().to_string().as_str()));
    let ops: u64 = st["zusd"]["lanes"].as_array().unwrap().iter().map(|l| l["ops"].as_u64().unwrap()).sum();
    assert!(ops > 600, "per-CPU op counts too low: {st}");
    let text = f.zufs_ok(&["status"]);
    assert!(text.contains("nullfs") && text.contains(&m.display().to_string()) && text.contains("cpu"), "{text}");
    let pid = f.bridge_pid();
    f.umount();
    assert!(
        wait_until(Duration::from_secs(5), || !std::path::Path::new(&format!("/proc/{pid}")).exists()),
        "bridge still running"
    );
    let st = f.status();
    assert!(st["zusd"]["mounts"].as_array().unwrap().is_empty(), "zusd mount left behind: {st}");
}

fn test_mount_errors_are_clear_and_change_nothing() {
    skip_without_fuse!();
    let f = Fixture::new("fuse-err", &["nullfs"], true);
    let mnt = f.mnt.display().to_string();
    // Other tests mount in parallel: look only at mounts under this test's directory.
    let ours = || {
        let d = f.dir.0.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&d)).count()
    };
    let before = ours();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["-t".into(), "nosuchfs".into(), "none".into(), mnt.clone()], "unknown filesystem type"),
        (
            vec!["-t".into(), "nullfs".into(), "-o".into(), "bogus_opt".into(), "none".into(), mnt.clone()],
            "unknown option",
        ),
        (vec!["-t".into(), "nullfs".into(), "/nonexistent/dev".into(), mnt.clone()], "does not exist"),
        (vec!["-t".into(), "nullfs".into(), "none".into(), f.dir.0.join("nope").display().to_string()], "mount point"),
        (
            vec!["-t".into(), "nullfs".into(), "-o".into(), "attr_timeout=abc".into(), "none".into(), mnt.clone()],
            "attr_timeout",
        ),
    ];
    for (args, want) in &cases {
        let mut a = vec!["mount"];
        a.extend(args.iter().map(String::as_str));
        let o = f.zufs_run(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{a:?} succeeded");
        assert!(err.contains(want), "{a:?}: error {err:?} lacks {want:?}");
        assert!(!mounted_at(&f.mnt));
    }
    // A file as mount point.
    std::fs::write(f.dir.0.join("file"), b"").unwrap();
    let o = f.zufs_run(&["mount", "-t", "nullfs", "none", &f.dir.0.join("file").display().to_string()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not a directory"));
    // Busy mount point.
    f.mount("nullfs", "none", "");
    let o = f.zufs_run(&["mount", "-t", "nullfs", "none", &mnt]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("busy"), "{o:?}");
    assert_eq!(f.status()["zusd"]["mounts"].as_array().unwrap().len(), 1, "a refused mount left a zusd mount");
    f.umount();
    // umount of something that is not mounted, or not ours.
    let o = f.zufs_run(&["umount", &mnt]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not mounted"));
    let o = f.zufs_run(&["umount", "/sys/fs/fuse/connections"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("not a zufs mount"));
    assert!(f.status()["zusd"]["mounts"].as_array().unwrap().is_empty());
    let after = ours();
    assert_eq!(before, after, "mount table changed");
}

fn test_mount_options_ro_timeouts_and_permissions() {
    skip_without_fuse!();
    let f = Fixture::new("fuse-opts", &["nullfs"], true);
    f.mount("nullfs", "none", "attr_timeout=0,entry_timeout=0");
    std::fs::write(f.mnt.join("x"), b"abc").unwrap();
    std::fs::create_dir(f.mnt.join("private")).unwrap();
    std::fs::set_permissions(f.mnt.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    // default_permissions + allow_other: another user may look but not enter a 0700 dir.
    let (ok, out) = sh(
        &format!("setpriv --reuid=65534 --regid=65534 --clear-groups ls {} ", f.mnt.display()),
        Duration::from_secs(10),
    );
    assert!(ok && out.contains('x'), "nobody cannot list the mount: {out}");
    let (ok, out) = sh(
        &format!("setpriv --reuid=65534 --regid=65534 --clear-groups ls {}/private", f.mnt.display()),
        Duration::from_secs(10),
    );
    assert!(!ok && out.contains("Permission denied"), "nobody entered a 0700 dir: {out}");
    // Creating as another user gives the file that user's ownership (creds are forwarded).
    std::fs::set_permissions(&f.mnt, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, out) = sh(
        &format!("setpriv --reuid=65534 --regid=65534 --clear-groups touch {}/byn", f.mnt.display()),
        Duration::from_secs(10),
    );
    assert!(ok, "{out}");
    assert_eq!(std::fs::metadata(f.mnt.join("byn")).unwrap().uid(), 65534);
    f.umount();
    f.mount("nullfs", "none", "ro");
    let e = std::fs::write(f.mnt.join("y"), b"abc").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info.lines().find(|l| l.split(' ').nth(4) == Some(f.mnt.display().to_string().as_str())).unwrap();
    assert!(line.split(' ').nth(5).unwrap().split(',').any(|o| o == "ro"), "{line}");
    f.umount();
}

fn test_zusd_killed_ops_fail_with_eio_promptly_and_umount_works() {
    skip_without_fuse!();
    let mut f = Fixture::new("fuse-kill", &["nullfs"], true);
    f.mount("nullfs", "none", "attr_timeout=0,entry_timeout=0");
    std::fs::write(f.mnt.join("a"), b"abc").unwrap();
    let pid = f.bridge_pid();
    let z = f.zusd.as_mut().unwrap();
    z.signal(9);
    assert!(z.wait_exit(Duration::from_secs(5)).is_some());
    let t0 = Instant::now();
    let (ok, out) = sh(&format!("stat {}/a; echo x > {}/b", f.mnt.display(), f.mnt.display()), Duration::from_secs(10));
    let took = t0.elapsed();
    if serve() == "zusd" {
        // Served inside zusd, the mount ends with it: the bridge aborts the connection.
        let gone = ["Software caused connection abort", "Transport endpoint is not connected"];
        assert!(!ok && gone.iter().any(|g| out.contains(g)), "expected ECONNABORTED/ENOTCONN: {out}");
        assert!(!f.mnt.join("b").exists(), "a write went under the dead mount");
    } else {
        assert!(!ok && out.contains("Input/output error"), "expected EIO: {out}");
    }
    assert!(took < Duration::from_secs(2), "EIO took {took:?}");
    // Unmounting works without zusd.
    f.umount();
    assert!(
        wait_until(Duration::from_secs(5), || !std::path::Path::new(&format!("/proc/{pid}")).exists()),
        "bridge still running"
    );
}

fn test_zusd_started_on_demand_and_bridge_sigterm_unmounts() {
    skip_without_fuse!();
    let f = Fixture::new("fuse-demand", &["nullfs"], false);
    assert!(!f.socket.exists());
    f.mount("nullfs", "none", "");
    let st = f.status();
    assert_eq!(st["zusd"]["plugins"][0]["name"].as_str(), Some("nullfs"), "{st}");
    std::fs::write(f.mnt.join("a"), b"abc").unwrap();
    let pid = f.bridge_pid();
    let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
    assert!(wait_until(Duration::from_secs(10), || !mounted_at(&f.mnt)), "SIGTERM to the bridge did not unmount");
    assert!(
        wait_until(Duration::from_secs(5), || f.status()["zusd"]["mounts"].as_array().unwrap().is_empty()),
        "zusd mount left behind"
    );
}

fn test_reader_threads_are_pinned_one_per_cpu() {
    skip_without_fuse!();
    let f = Fixture::new("fuse-pin", &["nullfs"], true);
    f.mount("nullfs", "none", "attr_timeout=0,entry_timeout=0");
    // Drive requests from every CPU so every reader serves at least once.
    let ncpu = zufs_tests::online_cpus();
    std::thread::scope(|s| {
        for c in 0..ncpu {
            let m = f.mnt.clone();
            s.spawn(move || {
                let _ = zufs_tests::pin_current(c);
                for i in 0..200 {
                    let _ = std::fs::metadata(m.join(format!("nope{c}-{i}")));
                }
            });
        }
    });
    // The ring threads live in the bridge, or in zusd with serve=zusd.
    let pid = if serve() == "zusd" {
        u32::try_from(f.status()["zusd"]["pid"].as_u64().expect("zusd pid")).unwrap()
    } else {
        f.bridge_pid()
    };
    let mut pinned = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let prefix = if transport() == "uring" { "fuse-ring-" } else { "fuser-" };
        if let Some(n) = comm.trim().strip_prefix(prefix) {
            let st = std::fs::read_to_string(t.path().join("status")).unwrap();
            let cpus = st.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim().to_owned();
            pinned.push((n.parse::<usize>().unwrap(), cpus));
        }
    }
    pinned.sort();
    assert_eq!(pinned.len(), ncpu, "{pinned:?}");
    for (n, cpus) in &pinned {
        // Readers that served a request are pinned to their own CPU.
        assert!(cpus == &n.to_string() || cpus.contains('-') || cpus.contains(','), "reader {n} on {cpus}");
    }
    assert!(pinned.iter().filter(|(n, c)| c == &n.to_string()).count() >= 1, "no reader pinned: {pinned:?}");
    f.umount();
}

fn test_fio_on_nullfs_direct_sync() {
    skip_without_fuse!();
    if std::process::Command::new("fio").arg("--version").output().is_err() {
        eprintln!("SKIPPED: fio is not installed (tests/scripts/fuse-deps.sh installs it)");
        return;
    }
    let f = Fixture::new("fuse-fio", &["nullfs"], true);
    f.mount("nullfs", "none", "");
    let (ok, out) = sh(
        &format!(
            "fio --name=w --directory={} --rw=randwrite --bs=4k --size=4m --direct=1 --sync=1 --ioengine=psync \
             --numjobs=2 --runtime=1 --time_based --verify=0 --output-format=json",
            f.mnt.display()
        ),
        Duration::from_secs(60),
    );
    assert!(ok, "{out}");
    let j: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    for job in j["jobs"].as_array().unwrap() {
        assert_eq!(job["error"].as_i64(), Some(0), "{job}");
        assert!(job["write"]["iops"].as_f64().unwrap() > 100.0, "{job}");
    }
    f.umount();
}

/// FUSE over io_uring: requests from a thread pinned to CPU n are served on CPU n (the ring
/// thread counts what it served per CPU; `zufs status --json` shows the counts).
#[test]
fn test_uring_serves_each_request_on_the_callers_cpu() {
    served_on_the_callers_cpu("transport=uring");
}

/// The same with the rings served inside zusd (`serve=zusd`): zusd's ring thread of CPU n
/// serves the requests of a thread pinned to CPU n, and zusd reports the counts.
#[test]
fn test_uring_served_inside_zusd_on_the_callers_cpu() {
    served_on_the_callers_cpu("transport=uring,serve=zusd");
}

fn served_on_the_callers_cpu(opts: &str) {
    skip_without_fuse!();
    if let Some(why) = uring_unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    if !std::path::Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        eprintln!("SKIPPED: this kernel has no FUSE over io_uring");
        return;
    }
    let f = Fixture::new("fuse-uring-cpu", &["nullfs"], true);
    f.mount("nullfs", "none", &format!("{opts},attr_timeout=0,entry_timeout=0"));
    let zusd = opts.contains("serve=zusd");
    let served = || -> Vec<u64> {
        let st = f.status();
        let m = st["mounts"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["mountpoint"].as_str() == Some(&f.mnt.display().to_string())))
            .cloned()
            .expect("mount in status");
        assert_eq!(m["transport"].as_str(), Some("uring"), "{m}");
        assert_eq!(m["mount"]["served_by"].as_str() == Some("fuse-uring"), zusd, "{m}");
        m["served_per_cpu"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default()
    };
    let ncpu = zufs_tests::online_cpus();
    for cpu in 0..ncpu {
        let before = served();
        let m = f.mnt.clone();
        std::thread::spawn(move || {
            zufs_tests::pin_current(cpu).expect("pin");
            for i in 0..200 {
                let _ = std::fs::metadata(m.join(format!("nope{cpu}-{i}")));
            }
        })
        .join()
        .unwrap();
        // The record is rewritten within 100 ms of a change.
        let mut after = served();
        let t0 = Instant::now();
        while after.get(cpu).copied().unwrap_or(0) < before.get(cpu).copied().unwrap_or(0) + 200
            && t0.elapsed() < Duration::from_secs(3)
        {
            std::thread::sleep(Duration::from_millis(50));
            after = served();
        }
        let on = |v: &Vec<u64>, c: usize| v.get(c).copied().unwrap_or(0);
        let here = on(&after, cpu) - on(&before, cpu);
        let elsewhere: u64 = (0..after.len()).filter(|&c| c != cpu).map(|c| on(&after, c) - on(&before, c)).sum();
        assert!(here >= 200, "CPU {cpu}: {here} of 200 lookups served on the caller's CPU ({before:?} -> {after:?})");
        assert!(elsewhere <= 10, "CPU {cpu}: {elsewhere} served elsewhere ({before:?} -> {after:?})");
    }
    f.umount();
}

/// `serve=zusd`: zusd SIGKILLed while fio writes through the mount (requests queued on zusd's
/// rings and in flight on its ring threads): every caller gets an error within seconds and none
/// hangs (the bridge aborts the connection), the dead mount keeps answering ENOTCONN (nothing
/// lands in the directory under it), and it unmounts cleanly.
#[test]
fn test_zusd_killed_mid_io_on_rings_served_inside_zusd_fails_every_caller_and_never_hangs() {
    skip_without_fuse!();
    if let Some(why) = uring_unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    if !std::path::Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        eprintln!("SKIPPED: this kernel has no FUSE over io_uring");
        return;
    }
    if !plugin_available("pmemfs") || std::process::Command::new("fio").arg("--version").output().is_err() {
        eprintln!("SKIPPED: needs libpmemfs.so and fio");
        return;
    }
    let mut f = Fixture::new("fuse-kill-zusd", &["pmemfs"], true);
    let dev = f.dir.0.join("pmem.img").display().to_string();
    f.zufs_ok(&["mkfs", "-t", "pmemfs", "--size", "128M", &dev]);
    f.mount("pmemfs", &dev, "transport=uring,serve=zusd");
    let bridge = f.bridge_pid();
    let log = f.dir.0.join("fio.out");
    let mut fio = std::process::Command::new("fio")
        .args(["--name=w", "--rw=randwrite", "--bs=4k", "--size=8m", "--direct=1", "--sync=1", "--ioengine=psync"])
        .args(["--numjobs=2", "--runtime=30", "--time_based"])
        .arg(format!("--directory={}", f.mnt.display()))
        .arg(format!("--output={}", log.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fio");
    // Let it lay out its files and run.
    std::thread::sleep(Duration::from_millis(1500));
    let z = f.zusd.as_mut().unwrap();
    z.signal(9);
    assert!(z.wait_exit(Duration::from_secs(5)).is_some());
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = fio.try_wait().expect("wait fio") {
            break Some(st);
        }
        if t0.elapsed() > Duration::from_secs(15) {
            let _ = fio.kill();
            let _ = fio.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let st = status.unwrap_or_else(|| panic!("fio hung after zusd died:\n{out}"));
    assert!(!st.success(), "fio did not see zusd die:\n{out}");
    assert!(out.contains("connection abort") || out.contains("not connected"), "{out}");
    eprintln!("fio ended {:?} after zusd died", t0.elapsed());
    let e = std::fs::metadata(f.mnt.join("w.0.0")).unwrap_err();
    assert!(matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)), "{e}");
    assert!(std::fs::write(f.mnt.join("after"), b"x").is_err(), "a write after zusd died succeeded");
    f.umount();
    assert!(
        wait_until(Duration::from_secs(5), || !std::path::Path::new(&format!("/proc/{bridge}")).exists()),
        "bridge still running"
    );
}

/// Serializes the tests that install `mount.zufs.*` helpers into /sbin and remove them.
static HELPERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs a command with this fixture's zufs environment (for mount(8), which execs the helper
/// with its own environment); returns (success, stdout+stderr).
fn with_env(f: &Fixture, prog: &str, args: &[&str]) -> (bool, String) {
    let mut c = std::process::Command::new(prog);
    c.args(args)
        .env("ZUFS_SOCKET", &f.socket)
        .env("ZUFS_PLUGINS", &f.plugins)
        .env("ZUFS_RUN_DIR", &f.run_dir)
        .env("ZUFS_ZUSD", zufs_tests::artifact("zusd"));
    let t = transport();
    if !t.is_empty() {
        c.env("ZUFS_TRANSPORT", t);
    }
    if !serve().is_empty() {
        c.env("ZUFS_SERVE", serve());
    }
    let o = run_with_timeout(&mut c, Duration::from_secs(30));
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

fn mount_opts(mp: &std::path::Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mp.display().to_string();
    info.lines()
        .rfind(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .map(|l| l.split(' ').nth(5).unwrap().split(',').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Issue 16 item 9: `mount -t zufs.pmemfs` and an fstab line go through the helper that
/// `zufs install-helpers` installs; `mount -o remount,ro` and back to rw; a second mount of a
/// mounted device is refused naming the first mount point; umount(8) unmounts at zusd too.
fn test_mount_helper_fstab_remount_and_second_mount() {
    skip_without_fuse!();
    if !plugin_available("pmemfs") {
        eprintln!("SKIPPED: libpmemfs.so is not built");
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: needs root (installs helpers into /sbin)");
        return;
    }
    let _g = HELPERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let f = Fixture::new("fuse-helper", &["pmemfs", "nullfs"], true);
    let dev = f.dir.0.join("pmem.img").display().to_string();
    f.zufs_ok(&["mkfs", "-t", "pmemfs", "--size", "64M", &dev]);
    let out = f.zufs_ok(&["install-helpers", "--dir", "/sbin"]);
    struct Uninstall<'a>(&'a Fixture);
    impl Drop for Uninstall<'_> {
        fn drop(&mut self) {
            let _ = self.0.zufs_run(&["install-helpers", "--dir", "/sbin", "--remove"]);
        }
    }
    let _u = Uninstall(&f);
    for t in ["pmemfs", "nullfs"] {
        let l = std::path::Path::new("/sbin").join(format!("mount.zufs.{t}"));
        assert!(std::fs::symlink_metadata(&l).is_ok_and(|m| m.file_type().is_symlink()), "{l:?} missing: {out}");
    }
    let mnt = f.mnt.display().to_string();
    // mount(8) with a type: /sbin/mount.zufs.pmemfs DEV MNT -o OPTS.
    let (ok, out) = with_env(&f, "mount", &["-t", "zufs.pmemfs", "-o", "attr_timeout=0,nosuid,noatime", &dev, &mnt]);
    assert!(ok, "mount -t zufs.pmemfs: {out}\n{}", f.bridge_logs());
    assert!(mounted_at(&f.mnt), "not mounted after mount(8)");
    std::fs::write(f.mnt.join("a"), b"through mount(8)").unwrap();
    let st = f.status();
    assert_eq!(st["mounts"][0]["mountpoint"].as_str(), Some(mnt.as_str()), "{st}");
    // A second mount of the same device: refused, naming the first mount point.
    let mnt2 = f.dir.0.join("mnt2");
    std::fs::create_dir_all(&mnt2).unwrap();
    let mnt2s = mnt2.display().to_string();
    let o = f.zufs_run(&["mount", "-t", "pmemfs", &dev, &mnt2s]);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success() && e.contains("already mounted") && e.contains(&mnt), "second zufs mount: {e}");
    let (ok, out) = with_env(&f, "mount", &["-t", "zufs.pmemfs", &dev, &mnt2s]);
    assert!(!ok && out.contains("already mounted") && out.contains(&mnt), "second mount(8): {out}");
    assert!(!mounted_at(&mnt2), "second mount point mounted");
    // remount,ro: writes fail with EROFS, reads work; back to rw.
    let (ok, out) = with_env(&f, "mount", &["-o", "remount,ro", &mnt]);
    assert!(ok, "remount,ro: {out}");
    let before_ro = mount_opts(&f.mnt);
    assert!(mount_opts(&f.mnt).iter().any(|o| o == "ro"), "{:?}", mount_opts(&f.mnt));
    // The remount keeps the mount's other flags (nosuid is the bridge's default).
    assert!(before_ro.iter().any(|o| o == "nosuid"), "remount,ro dropped nosuid: {before_ro:?}");
    let e = std::fs::write(f.mnt.join("b"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert_eq!(std::fs::read(f.mnt.join("a")).unwrap(), b"through mount(8)");
    let (ok, out) = with_env(&f, "mount", &["-o", "remount,rw", &mnt]);
    assert!(ok, "remount,rw: {out}");
    assert!(mount_opts(&f.mnt).iter().any(|o| o == "rw"), "{:?}", mount_opts(&f.mnt));
    assert!(mount_opts(&f.mnt).iter().any(|o| o == "nosuid"), "remount,rw dropped nosuid: {:?}", mount_opts(&f.mnt));
    // Options given with the remount apply too.
    let (ok, out) = with_env(&f, "mount", &["-o", "remount,noexec", &mnt]);
    assert!(ok, "remount,noexec: {out}");
    let now = mount_opts(&f.mnt);
    assert!(now.iter().any(|o| o == "noexec") && now.iter().any(|o| o == "nosuid"), "{now:?}");
    std::fs::write(f.mnt.join("b"), b"after remount").unwrap();
    assert_eq!(f.status()["zusd"]["mounts"].as_array().unwrap().len(), 1);
    // umount(8): the bridge ends and zusd's mount goes with it.
    let pid = f.bridge_pid();
    let (ok, out) = with_env(&f, "umount", &[&mnt]);
    assert!(ok, "umount: {out}");
    assert!(wait_until(Duration::from_secs(10), || !std::path::Path::new(&format!("/proc/{pid}")).exists()));
    assert!(
        wait_until(Duration::from_secs(5), || f.status()["zusd"]["mounts"].as_array().unwrap().is_empty()),
        "zusd mount left behind"
    );
    // An fstab line (mount -T FILE MNT), with mount(8)-only options the helper drops.
    let fstab = f.dir.0.join("fstab");
    std::fs::write(&fstab, format!("{dev} {mnt} zufs.pmemfs defaults,noauto,nofail,x-zufs.test,attr_timeout=0 0 0\n"))
        .unwrap();
    let (ok, out) = with_env(&f, "mount", &["-T", &fstab.display().to_string(), &mnt]);
    assert!(ok, "mount from fstab: {out}\n{}", f.bridge_logs());
    assert_eq!(std::fs::read(f.mnt.join("b")).unwrap(), b"after remount");
    f.umount();
    // Device-less: mount -t zufs.nullfs none MNT.
    let (ok, out) = with_env(&f, "mount", &["-t", "zufs.nullfs", "none", &mnt]);
    assert!(ok, "mount -t zufs.nullfs: {out}");
    std::fs::write(f.mnt.join("n"), b"x").unwrap();
    f.umount();
    // -f (fake): nothing is mounted.
    let (ok, out) = with_env(&f, "mount", &["-f", "-t", "zufs.nullfs", "none", &mnt]);
    assert!(ok && !mounted_at(&f.mnt), "mount -f: {out}");
}

/// A plugin without copy_file_range (nullfs) answers the bridge's COPY_FILE_RANGE with ENOSYS,
/// which the bridge hands the kernel: the kernel copies by reading and writing instead (and
/// stops asking), so the caller never sees the ENOSYS.
fn test_copy_file_range_falls_back_without_the_plugin_op() {
    use std::os::fd::AsRawFd;
    skip_without_fuse!();
    let f = Fixture::new("fuse-cfr", &["nullfs"], true);
    f.mount("nullfs", "none", "");
    std::fs::write(f.mnt.join("src"), vec![7u8; 300_000]).unwrap();
    let src = std::fs::File::open(f.mnt.join("src")).unwrap();
    let dst = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(f.mnt.join("dst")).unwrap();
    for round in 0..2 {
        let mut off_out = round * 100_000i64;
        let mut off_in = 0i64;
        // SAFETY: valid descriptors and offset pointers.
        let n =
            unsafe { libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, 100_000, 0) };
        assert_eq!(n, 100_000, "round {round}: {}", std::io::Error::last_os_error());
    }
    drop((src, dst));
    assert_eq!(std::fs::metadata(f.mnt.join("dst")).unwrap().len(), 200_000);
    f.umount();
}

on_both_transports!(
    test_copy_file_range_falls_back_without_the_plugin_op,
    test_nullfs_namespace_through_the_kernel_and_clean_umount,
    test_mount_errors_are_clear_and_change_nothing,
    test_mount_options_ro_timeouts_and_permissions,
    test_zusd_killed_ops_fail_with_eio_promptly_and_umount_works,
    test_zusd_started_on_demand_and_bridge_sigterm_unmounts,
    test_reader_threads_are_pinned_one_per_cpu,
    test_fio_on_nullfs_direct_sync,
    test_mount_helper_fstab_remount_and_second_mount,
);

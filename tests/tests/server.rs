//! End-to-end tests of zusd with real processes: clients driving ops, clients and servers killed,
//! hostile clients, panicking and mismatched plugins, simulated topology, clean shutdown.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zufs_tests::{TempDir, Zusd, artifact, plugin_dir};

fn client(z: &Zusd, args: &[&str]) -> Command {
    let mut c = Command::new(artifact("zufs-testclient"));
    c.arg("--socket").arg(&z.socket).args(args);
    c
}

/// Runs a client to completion within `timeout`, returning stdout; panics with context on failure.
fn run(z: &Zusd, args: &[&str], timeout: Duration) -> String {
    let mut child = client(z, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn client");
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            let out = child.wait_with_output().expect("output");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                st.success(),
                "client {args:?} failed ({st}):\nstdout: {stdout}\nstderr: {}\nzusd log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                z.log_text()
            );
            return stdout;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            panic!("client {args:?} did not finish within {timeout:?}; zusd log:\n{}", z.log_text());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A client that mounts nullfs and stays connected (holding the mount) until dropped.
struct Holder {
    child: Child,
    mount_id: String,
}

impl Holder {
    fn new(z: &Zusd, extra: &[&str]) -> Self {
        let mut args = vec!["mount"];
        args.extend_from_slice(extra);
        let mut child = client(z, &args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read");
        let mount_id = line.split_whitespace().nth(1).unwrap_or_else(|| panic!("no mount: {line:?}")).to_owned();
        Self { child, mount_id }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        if let Some(mut i) = self.child.stdin.take() {
            let _ = i.write_all(b"\n");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nullfs_server(tag: &str, extra: &[&str]) -> (TempDir, Zusd) {
    let dir = TempDir::new(tag);
    let plugins = plugin_dir(&dir.0, &["nullfs"]);
    let z = Zusd::start(&dir.0, &plugins, extra);
    (dir, z)
}

fn status(z: &Zusd) -> serde_json::Value {
    serde_json::from_str(&run(z, &["status"], Duration::from_secs(10))).expect("status json")
}

#[test]
fn test_ops_from_1_2_4_8_threads_all_replies_checked() {
    let (_d, z) = nullfs_server("ops", &[]);
    for threads in ["1", "2", "4", "8"] {
        let out = run(&z, &["ops", "--threads", threads, "--iters", "300"], Duration::from_secs(60));
        assert!(
            out.contains(&format!("OK threads={threads} ops={}", threads.parse::<usize>().unwrap() * 900)),
            "{out}"
        );
    }
    let st = status(&z);
    let served: u64 = st["lanes"].as_array().unwrap().iter().map(|l| l["ops"].as_u64().unwrap()).sum();
    assert!(served >= 15 * 900, "status counted only {served} ops");
}

#[test]
fn test_client_killed_mid_op_frees_everything() {
    let (_d, z) = nullfs_server("kill-client", &["--slots", "2"]);
    let holder = Holder::new(&z, &[]);
    for round in 0..3 {
        let mut spinner = client(&z, &["spin", "--mount-id", &holder.mount_id, "--threads", "4"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn spinner");
        let mut line = String::new();
        BufReader::new(spinner.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "spinning", "round {round}");
        std::thread::sleep(Duration::from_millis(150));
        spinner.kill().unwrap(); // SIGKILL, mid-op
        spinner.wait().unwrap();
    }
    // Every lane still serves: 8 threads over 2 slots per lane must all complete.
    let out =
        run(&z, &["ops", "--threads", "8", "--iters", "100", "--mount-id", &holder.mount_id], Duration::from_secs(30));
    assert!(out.starts_with("OK"), "{out}");
    // Only the holder and the status client itself remain connected.
    let t0 = Instant::now();
    loop {
        let clients = status(&z)["clients"].as_u64().unwrap();
        if clients == 2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "killed clients not released: {clients} clients");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn test_server_killed_clients_get_error_not_hang() {
    let (_d, mut z) = nullfs_server("kill-server", &[]);
    let holder = Holder::new(&z, &[]);
    let mut spinner = client(&z, &["spin", "--mount-id", &holder.mount_id, "--threads", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spinner");
    let mut line = String::new();
    BufReader::new(spinner.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "spinning");
    std::thread::sleep(Duration::from_millis(100));
    z.signal(9);
    assert!(z.wait_exit(Duration::from_secs(5)).is_some(), "zusd did not die");
    let t0 = Instant::now();
    loop {
        if spinner.try_wait().unwrap().is_some() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "client still blocked 3 s after zusd died");
        std::thread::sleep(Duration::from_millis(10));
    }
    // A new client gets a clear connect error.
    let out = client(&z, &["status"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect to zusd"), "{out:?}");
}

#[test]
fn test_garbage_client_gets_errors_others_keep_working() {
    let (_d, z) = nullfs_server("garbage", &[]);
    let holder = Holder::new(&z, &[]);
    let id = holder.mount_id.clone();
    let bad = client(&z, &["garbage", "--mount-id", &id, "--iters", "3000", "--seed", "7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let good = run(&z, &["ops", "--threads", "2", "--iters", "300", "--mount-id", &id], Duration::from_secs(60));
    assert!(good.starts_with("OK"), "{good}");
    let out = bad.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("GARBAGE OK"), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let errors: u64 = stdout.split("errors=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    assert!(errors > 1000, "only {errors} garbage requests were refused");
    let st = status(&z);
    let rejected: u64 = st["lanes"].as_array().unwrap().iter().map(|l| l["rejected"].as_u64().unwrap()).sum();
    assert!(rejected > 0, "server counted no rejected requests");
    assert!(!z.log_text().contains("panicked"), "server panicked:\n{}", z.log_text());
}

#[test]
fn test_plugin_panic_is_eio_and_server_lives() {
    let (_d, z) = nullfs_server("panic", &[]);
    let out = run(&z, &["panic"], Duration::from_secs(20));
    assert!(out.contains("PANIC OK"), "{out}");
    assert!(z.log_text().contains("plugin panicked in op"), "no log line:\n{}", z.log_text());
    let out = run(&z, &["ops", "--threads", "2", "--iters", "50"], Duration::from_secs(20));
    assert!(out.starts_with("OK"));
}

/// Builds the C plugin; `None` when there is no gcc. A compile error is a failure, not a skip:
/// it means the generated header and the C plugin disagree.
fn gcc(out: &std::path::Path, defs: &[&str]) -> Option<bool> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("c/cplugin.c");
    // The plugin includes the generated C header of the ABI (zus-api/include/zus_api.h).
    let include = root.join("../zus-api/include");
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(&include)
        .arg("-o")
        .arg(out)
        .arg(&src)
        .args(defs)
        .status();
    status.ok().map(|s| s.success())
}

#[test]
fn test_c_plugin_loads_and_other_abi_is_refused() {
    let dir = TempDir::new("cplugin");
    let plugins = plugin_dir(&dir.0, &["nullfs"]);
    let Some(built) = gcc(&plugins.join("libcnull.so"), &[]) else {
        eprintln!("SKIPPED: gcc is not available to build the C plugin");
        return;
    };
    assert!(built, "tests/c/cplugin.c does not compile against zus-api/include/zus_api.h");
    assert_eq!(gcc(&plugins.join("libcbad.so"), &["-DABI_VERSION=999", "-DFS_NAME=\"cbad\""]), Some(true));
    std::fs::write(plugins.join("libjunk.so"), b"not an elf").unwrap();
    let z = Zusd::start(&dir.0, &plugins, &[]);
    let log = z.log_text();
    assert!(log.contains("ABI version 999") && log.contains("speaks version 1"), "{log}");
    assert!(log.contains("libjunk.so"), "{log}");
    let st = status(&z);
    let names: Vec<&str> = st["plugins"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["cnull", "nullfs"]);
    let out = run(&z, &["probe", "--fs", "cnull", "--streamed-write-sum", "300000"], Duration::from_secs(10));
    assert!(out.contains("ROOT ino=1 mode=40755 nlink=2"), "{out}");
    // The plugin does not stream: zusd waited for all the bytes (they came 50 ms late) and
    // handed it the window whole.
    let want: u64 = (0..300_000u64).map(|i| i % 251).sum();
    assert!(out.contains(&format!("SUM got={want} want={want}")), "{out}");
    assert!(z.log_text().contains("cnull mounted"), "plugin log line not routed");
}

#[test]
fn test_simulated_two_node_topology_places_zts_and_lanes() {
    let (_d, z) = nullfs_server("topo", &["--topology", "2x2"]);
    let out = run(&z, &["lanes"], Duration::from_secs(10));
    assert!(out.contains("NODES [0, 0, 1, 1]"), "{out}");
    let online = zufs_online_cpus();
    let want: Vec<usize> = (0..4).map(|i| online[i % online.len()]).collect();
    assert!(out.contains(&format!("ZTCPUS {want:?}")), "{out} (want {want:?})");
    let st = status(&z);
    assert_eq!(st["topology"], "2 node(s) x 2 CPU(s) (simulated)");
    let nodes: Vec<u64> = st["lanes"].as_array().unwrap().iter().map(|l| l["node"].as_u64().unwrap()).collect();
    assert_eq!(nodes, vec![0, 0, 1, 1]);
    // Each ZT thread is pinned to exactly its CPU.
    let pid = z.child.id();
    let mut pinned = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let Some(lane) = comm.trim().strip_prefix("zt").and_then(|n| n.parse::<usize>().ok()) else { continue };
        let status = std::fs::read_to_string(t.path().join("status")).unwrap();
        let allowed = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
        assert_eq!(allowed.split_whitespace().nth(1).unwrap(), want[lane].to_string(), "zt{lane}: {allowed}");
        pinned += 1;
    }
    assert_eq!(pinned, 4);
    // Spill within a node and ops still work over the simulated lanes.
    let out = run(&z, &["ops", "--threads", "8", "--iters", "100"], Duration::from_secs(30));
    assert!(out.starts_with("OK"));
}

fn zufs_online_cpus() -> Vec<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let mut v = Vec::new();
    for part in s.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => v.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => v.push(part.parse().unwrap()),
        }
    }
    v
}

#[test]
fn test_mismatched_handshake_refused_with_both_versions() {
    let (_d, z) = nullfs_server("hello", &[]);
    let out = run(&z, &["bad-hello"], Duration::from_secs(10));
    assert!(out.contains("REFUSED") && out.contains("version 99") && out.contains("version 1"), "{out}");
}

#[test]
fn test_sigterm_unmounts_and_exits_cleanly() {
    let (_d, mut z) = nullfs_server("term", &[]);
    let holder = Holder::new(&z, &[]);
    z.signal(15);
    let st = z.wait_exit(Duration::from_secs(10)).expect("zusd did not stop on SIGTERM");
    assert!(st.success(), "exit status {st}");
    let log = z.log_text();
    assert!(log.contains("unmounted mount") && log.contains("zusd stopped cleanly"), "{log}");
    assert!(!z.socket.exists(), "socket file left behind");
    drop(holder);
}

#[test]
fn test_second_server_on_same_socket_refused() {
    let (d, z) = nullfs_server("dup", &[]);
    let out = Command::new(artifact("zusd"))
        .arg("--plugins")
        .arg(d.0.join("plugins"))
        .arg("--socket")
        .arg(&z.socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"), "{out:?}");
}

#[test]
fn test_more_threads_than_slots_wait_not_sleep() {
    // One slot per lane and 8 threads: most ops find every slot busy and must wait for a freed slot
    // (P-CH3). ZUFS slept 10 ms here; with ~4,800 contended ops that would take tens of seconds.
    let (_d, z) = nullfs_server("slots", &["--slots", "1"]);
    let out = run(&z, &["ops", "--threads", "8", "--iters", "200"], Duration::from_secs(60));
    let ms: f64 = {
        let t = out.split(" in ").nth(1).expect("elapsed").trim();
        let (num, unit) = t.split_at(t.find(|c: char| c.is_alphabetic() || c == 'µ').expect("unit"));
        let v: f64 = num.parse().expect("number");
        match unit {
            "s" => v * 1e3,
            "ms" => v,
            "µs" => v / 1e3,
            _ => panic!("unit {unit}"),
        }
    };
    assert!(ms < 8000.0, "8 threads x 600 ops over 1 slot per lane took {ms} ms: {out}");
}

/// Counts from the testclient's `poll` output line starting with `key`.
fn polled(out: &str, key: &str) -> usize {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.strip_prefix("polled=")?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} line in {out}"))
}

#[test]
fn test_zt_polls_only_for_spinning_clients_and_only_for_its_budget() {
    // P-CH2 on the server side: after serving an op whose client spins on another CPU, the ZT
    // polls (announced in the lane header) for --zt-poll-ns, then sleeps; an op from a client
    // on the ZT's own CPU (which sleeps on the futex) never starts a poll.
    let (_d, z) = nullfs_server("poll", &["--zt-poll-ns", "20000000"]);
    let out = run(&z, &["poll", "--iters", "200", "--idle-ms", "200"], Duration::from_secs(60));
    if out.contains("SKIP") {
        println!("skipped: this machine has one CPU, no other lane to poll ({out})");
        return;
    }
    assert_eq!(polled(&out, "OWN"), 0, "{out}");
    assert!(polled(&out, "OTHER") > 0, "the ZT never announced polling after serving a spinning client: {out}");
    assert!(out.contains("AFTER polling=false"), "still polling after its budget: {out}");

    let (_d0, z0) = nullfs_server("nopoll", &["--zt-poll-ns", "0"]);
    let out = run(&z0, &["poll", "--iters", "200", "--idle-ms", "1"], Duration::from_secs(60));
    assert_eq!(polled(&out, "OTHER"), 0, "--zt-poll-ns 0 still polled: {out}");
}

#[test]
fn test_streamed_window_reads_writes_and_a_stalled_writer() {
    let (_d, z) = nullfs_server("stream", &[]);
    let out = run(&z, &["stream"], Duration::from_secs(60));
    assert!(out.contains("STREAM OK"), "{out}");
}

#[test]
fn test_kernel_cache_marks_only_from_a_bridge_refuse_fast_path_data_and_leave_with_it() {
    let (_d, z) = nullfs_server("kcache", &[]);
    let out = run(&z, &["kcache"], Duration::from_secs(60));
    assert!(out.contains("KCACHE OK"), "{out}");
}

/// `CreateOpen` is one op at zusd (create, then open, of the plugin): the module's atomic open
/// and the bridge's CREATE send it.
#[test]
fn test_create_open_is_one_op_with_the_attributes_and_a_handle() {
    let (_d, z) = nullfs_server("createopen", &[]);
    let out = run(&z, &["create-open"], Duration::from_secs(60));
    assert!(out.contains("CREATEOPEN OK"), "{out}");
}

/// `ReaddirPlus` is one op at zusd (the plugin's readdir, then a lookup per name): the module's
/// readdir sends it, so that `ls -l` or `rm -rf` of a directory the kernel does not hold costs
/// no lookup per entry.
#[test]
fn test_readdir_plus_gives_the_entries_with_their_attributes() {
    let (_d, z) = nullfs_server("readdirplus", &[]);
    let out = run(&z, &["readdir-plus"], Duration::from_secs(60));
    assert!(out.contains("READDIRPLUS OK"), "{out}");
}

#[test]
fn test_tickets_let_another_user_do_data_ops_on_their_inode_only() {
    // A user who does not own a mount attaches with tickets only: data ops on the inode a
    // ticket names, writes only with a write ticket, nothing else, and a revoked ticket is dead.
    let (_d, z) = nullfs_server("tickets", &[]);
    let out = run(&z, &["tickets"], Duration::from_secs(60));
    assert!(out.contains("TICKETS OK"), "{out}");
}

/// `Request::Handoff` (a kernel transport's fd for zusd to serve, `serve=zusd`) trusts nothing
/// the client sends: only a privileged kernel bridge, only with an fd, only for a mount it
/// holds, only a known kind, and only a real `/dev/fuse` reaches a ring.
#[test]
fn test_handoff_is_refused_unless_a_kernel_bridge_hands_dev_fuse_for_its_mount() {
    use std::os::fd::AsFd;
    use zus_channel::control::Request;
    use zus_client::{Relay, RelayError};
    let dir = TempDir::new("handoff");
    let pd = plugin_dir(&dir.0, &["nullfs"]);
    let z = Zusd::start(&dir.0, &pd, &[]);
    let null = std::fs::File::open("/dev/null").unwrap();
    let errno = |r: Result<zus_channel::control::Reply, RelayError>| match r {
        Err(RelayError::Refused { errno, .. }) => errno.0,
        other => panic!("expected a refusal: {other:?}"),
    };
    let hand = |mount_id: u32, kind: &str| Request::Handoff {
        mount_id,
        kind: kind.into(),
        params: "max_write=1048576".into(),
    };
    let bridge = zus_api::features::ALL | zus_api::features::KERNEL_BRIDGE;
    // A client that did not announce itself as a kernel bridge.
    let plain = Relay::connect(&z.socket, "plain").unwrap();
    let m = plain.mount("nullfs", "", "").unwrap();
    assert_eq!(errno(plain.control_with_fd(&hand(m.mount_id, "fuse-uring"), null.as_fd())), libc::EPERM);
    // A kernel bridge: no fd; a mount it does not hold; an unknown kind; an fd that is not
    // /dev/fuse.
    let kb = Relay::connect_with(&z.socket, "kb", bridge).unwrap();
    assert_eq!(errno(kb.control(&hand(m.mount_id, "fuse-uring"))), libc::EINVAL);
    assert_eq!(errno(kb.control_with_fd(&hand(m.mount_id, "fuse-uring"), null.as_fd())), libc::ENOENT);
    kb.attach(m.mount_id).unwrap();
    assert_eq!(errno(kb.control_with_fd(&hand(m.mount_id, "nine-p"), null.as_fd())), libc::ENOSYS);
    assert_eq!(errno(kb.control_with_fd(&hand(m.mount_id, "fuse-uring"), null.as_fd())), libc::EINVAL);
    let bad = Request::Handoff { mount_id: m.mount_id, kind: "fuse-uring".into(), params: "max_write=x".into() };
    assert_eq!(errno(kb.control_with_fd(&bad, null.as_fd())), libc::EINVAL);
    // zusd is still well.
    assert_eq!(kb.status().unwrap().mounts.len(), 1);
}

//! Metadata through the FUSE bridge (issue 17): create, stat, readdir, `ls -l`, rename, unlink,
//! mkdir and rmdir, by 1 and 2 workers, in one directory and spread over many, and an untar of a
//! large generated tree with its `rm -rf`, on:
//!
//! - kernel tmpfs;
//! - pmemfs through the channel (`zus_client::Relay` straight to zusd, no kernel: what a
//!   metadata op costs without the kernel's round trips);
//! - pmemfs through `zufs mount`, classic and uring transports (`uring-zusd`, mode (b) inside
//!   zusd, when named in `ZUFS_META_TARGETS`; `base-uring-inline` mounts an older build's
//!   `serve=inline` prototype of mode (b), which this build no longer has);
//! - the same mounts made by another build (`ZUFS_META_BASE=DIR`: its `zufs`, `zusd` and plugins,
//!   with its own zusd and socket), to compare the code before a change with it in one run.
//!
//! A benchmark, not a timed test: it prints ops/s, ratios against tmpfs and against the other
//! build's mount of the same transport, and, for this build's mounts, the kernel's FUSE requests
//! per op by opcode (the bridge counts them; `zufs status --json` shows them).
//!
//! The ops: `create` is `open(O_CREAT|O_WRONLY|O_TRUNC)` + `close`; `stat` a `stat(2)` by path
//! (served by the kernel's caches within the mount's timeouts); `readdir` lists the directories
//! (names only); `ls -l` lists them and `lstat`s every entry, after the kernel's dentry and inode
//! caches were dropped (`echo 2 > /proc/sys/vm/drop_caches`: what a directory nobody looked at
//! costs); `rename` renames each file in its directory; `unlink`, `mkdir`, `rmdir`. Workers are
//! threads of this process (the kernel's FUSE treats them as it treats processes); worker `w`
//! owns its names, and with many directories the files go round-robin over them. Through the
//! channel: `Create`, `Lookup` (stat), `Readdir`, `Readdir` + `Lookup`, `Rename`, `Unlink`,
//! `Mkdir`, `Rmdir` ops.
//!
//! Untar: a deterministic tree resembling a source tree (`ZUFS_META_UNTAR_ENTRIES`, default
//! 60,000 files and directories; sizes from empty to 64 KiB, most of a few KiB) is generated and
//! tarred once on tmpfs, then `tar -xf` into each target and `rm -rf` of the result are timed.
//!
//! Run (root, /dev/fuse, tar): `cargo build --workspace --release && source scripts/env.sh &&
//! stage_plugins && ZUFS_META_BASE=/path/to/other/target/release cargo bench -p zufs-tests
//! --bench fuse_meta`. Environment: `ZUFS_META_FILES` (per shape, default 10000; `--short` or
//! `ZUFS_BENCH_SHORT=1`: 1000 and a 5,000-entry tree), `ZUFS_META_SHAPES` (workers x
//! directories, default `1x1,1x100,2x1,2x100`), `ZUFS_META_TARGETS` (comma-separated subset of
//! tmpfs,channel,classic,uring,uring-zusd,base-classic,base-uring,base-uring-zusd,base-uring-inline), `ZUFS_META_UNTAR_ENTRIES`
//! (0: no untar), `ZUFS_META_MOUNT_OPTS` (extra `zufs mount -o` options for every mount),
//! `ZUFS_META_PIN=1` (worker `w` pinned to CPU `w`, `tar` and `rm` to CPU 0),
//! `ZUFS_BENCH_OUT` (also write the markdown there).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zufs_tests::TempDir;
use zufs_tests::bench::{ZufsSetup, have, is_root, load_average, machine, run, umount};
use zus_api::ops::{Attr, CreateReq, Dirent, NameReq, OpCode, Pod, ReaddirReq, RenameReq};
use zus_client::{DataIn, Relay};

const PHASES: [&str; 8] = ["create", "stat", "readdir", "ls -l", "rename", "unlink", "mkdir", "rmdir"];
const UNTAR: [&str; 2] = ["tar -xf", "rm -rf"];

/// Workers x directories.
#[derive(Debug, Clone, Copy)]
struct Shape {
    workers: usize,
    dirs: usize,
}

impl Shape {
    fn label(self) -> String {
        format!(
            "{} worker{}, {}",
            self.workers,
            if self.workers == 1 { "" } else { "s" },
            if self.dirs == 1 { "one directory".to_owned() } else { format!("{} directories", self.dirs) }
        )
    }

    /// Directory index and name of file `i` of worker `w`.
    fn file(self, w: usize, i: usize) -> (usize, String) {
        ((i * self.workers + w) % self.dirs, format!("w{w}-{i:06}"))
    }

    /// The directories worker `w` lists.
    fn listed_by(self, w: usize) -> Vec<usize> {
        if self.dirs >= self.workers {
            (0..self.dirs).filter(|d| d % self.workers == w).collect()
        } else {
            vec![w % self.dirs]
        }
    }
}

/// pmemfs reached over the channel, without the kernel.
struct Chan {
    relay: Relay,
    mount_id: u32,
    root: u64,
}

impl Chan {
    fn op(&self, code: OpCode, req: &[&[u8]], out: Option<&mut [u8]>) -> (u64, Vec<u8>, usize) {
        let mut reply = vec![0u8; 4096];
        let o = self
            .relay
            .op(self.mount_id, code, req, DataIn::None, &mut reply, out, None)
            .unwrap_or_else(|e| panic!("{code:?} over the channel: {e}"));
        (o.value, reply[..o.reply_len].to_vec(), o.data_len)
    }

    fn make(&self, code: OpCode, dir: u64, name: &str, mode: u32) -> u64 {
        let r = CreateReq { dir, mode, rdev: 0, flags: 0, name_len: u32::try_from(name.len()).unwrap_or(0) };
        let (_, rep, _) = self.op(code, &[r.as_bytes(), name.as_bytes()], None);
        Attr::read_from(&rep).map_or(0, |a| a.ino)
    }

    fn named(&self, code: OpCode, dir: u64, name: &str) -> Vec<u8> {
        let r = NameReq { dir, name_len: u32::try_from(name.len()).unwrap_or(0), reserved: 0 };
        self.op(code, &[r.as_bytes(), name.as_bytes()], None).1
    }

    fn rename(&self, dir: u64, from: &str, to: &str) {
        let r = RenameReq {
            old_dir: dir,
            new_dir: dir,
            flags: 0,
            old_len: u32::try_from(from.len()).unwrap_or(0),
            new_len: u32::try_from(to.len()).unwrap_or(0),
            reserved: 0,
        };
        self.op(OpCode::Rename, &[r.as_bytes(), from.as_bytes(), to.as_bytes()], None);
    }

    /// The names in `dir` (without "." and "..").
    fn list(&self, dir: u64) -> Vec<String> {
        let mut names = Vec::new();
        let mut cookie = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let r = ReaddirReq { dir, cookie };
            let (_, _, n) = self.op(OpCode::Readdir, &[r.as_bytes()], Some(&mut buf));
            let mut b = &buf[..n];
            let mut any = false;
            while let Some(d) = Dirent::read_from(b) {
                let len = d.name_len as usize;
                let Some(name) = b.get(size_of::<Dirent>()..size_of::<Dirent>() + len) else { break };
                any = true;
                cookie = d.cookie;
                if name != b"." && name != b".." {
                    names.push(String::from_utf8_lossy(name).into_owned());
                }
                let rec = (size_of::<Dirent>() + len).next_multiple_of(8);
                if rec >= b.len() {
                    break;
                }
                b = &b[rec..];
            }
            if !any {
                return names;
            }
        }
    }
}

enum Kind {
    /// A directory of a mounted filesystem.
    Path(PathBuf),
    /// A directory inode over the channel.
    Channel(Arc<Chan>, u64),
}

struct Target {
    id: String,
    name: String,
    kind: Kind,
    /// Index into the setups and the mount point, for mounts whose requests are counted.
    counted: Option<(usize, PathBuf)>,
}

fn drop_dentries() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
}

/// `ZUFS_META_PIN=1`: worker `w` runs on CPU `w` (mod the CPUs), `tar` and `rm` on CPU 0, as
/// programs that stay on their CPU. Unpinned, the scheduler moves a caller woken by its reply
/// to an idle CPU, which on a VM without guest halt polling costs a vCPU wake-up per request.
fn pinned() -> bool {
    std::env::var("ZUFS_META_PIN").is_ok_and(|v| v == "1")
}

/// `program` as a command, under `taskset -c 0` when pinned.
fn program(program: &str) -> Command {
    if pinned() {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", program]);
        c
    } else {
        Command::new(program)
    }
}

/// Runs `f(w)` on `workers` threads at once; the seconds from start to the last one's end and
/// the ops they did.
fn timed(workers: usize, f: &(dyn Fn(usize) -> usize + Sync)) -> (f64, usize) {
    let barrier = std::sync::Barrier::new(workers + 1);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..workers)
            .map(|w| {
                let b = &barrier;
                s.spawn(move || {
                    if pinned() {
                        zufs_tests::pin_current(w % zufs_tests::online_cpus()).expect("pin worker");
                    }
                    b.wait();
                    f(w)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let ops: usize = hs.into_iter().map(|h| h.join().expect("worker")).sum();
        (t0.elapsed().as_secs_f64(), ops)
    })
}

/// One shape's phases on a directory: (seconds, ops) per phase.
fn path_round(base: &Path, shape: Shape, n: usize, mut between: impl FnMut(usize)) -> Vec<(f64, usize)> {
    let dirs: Vec<PathBuf> = (0..shape.dirs).map(|d| base.join(format!("d{d:03}"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let per = n / shape.workers;
    let path = |w: usize, i: usize, suffix: &str| {
        let (d, name) = shape.file(w, i);
        dirs[d].join(format!("{name}{suffix}"))
    };
    let mut out = Vec::new();
    for (p, phase) in PHASES.iter().enumerate() {
        if *phase == "ls -l" {
            drop_dentries();
        }
        let r = timed(shape.workers, &|w| match *phase {
            "create" => {
                for i in 0..per {
                    drop(std::fs::File::create(path(w, i, "")).expect("create"));
                }
                per
            }
            "stat" => {
                for i in 0..per {
                    assert!(std::fs::metadata(path(w, i, "")).expect("stat").is_file());
                }
                per
            }
            "readdir" | "ls -l" => {
                let mut k = 0;
                for d in shape.listed_by(w) {
                    for e in std::fs::read_dir(&dirs[d]).expect("readdir") {
                        let e = e.expect("entry");
                        if *phase == "ls -l" {
                            let _ = std::fs::symlink_metadata(e.path()).expect("lstat");
                        }
                        k += 1;
                    }
                }
                k
            }
            "rename" => {
                for i in 0..per {
                    std::fs::rename(path(w, i, ""), path(w, i, ".r")).expect("rename");
                }
                per
            }
            "unlink" => {
                for i in 0..per {
                    std::fs::remove_file(path(w, i, ".r")).expect("unlink");
                }
                per
            }
            "mkdir" => {
                for i in 0..per {
                    std::fs::create_dir(path(w, i, ".d")).expect("mkdir");
                }
                per
            }
            _ => {
                for i in 0..per {
                    std::fs::remove_dir(path(w, i, ".d")).expect("rmdir");
                }
                per
            }
        });
        out.push(r);
        between(p);
    }
    for d in &dirs {
        std::fs::remove_dir(d).expect("rmdir round dir");
    }
    out
}

/// The same phases over the channel.
fn chan_round(c: &Chan, parent: u64, tag: &str, shape: Shape, n: usize) -> Vec<(f64, usize)> {
    let base = c.make(OpCode::Mkdir, parent, tag, libc::S_IFDIR | 0o755);
    let dirs: Vec<u64> =
        (0..shape.dirs).map(|d| c.make(OpCode::Mkdir, base, &format!("d{d:03}"), libc::S_IFDIR | 0o755)).collect();
    let per = n / shape.workers;
    let at = |w: usize, i: usize, suffix: &str| {
        let (d, name) = shape.file(w, i);
        (dirs[d], format!("{name}{suffix}"))
    };
    let mut out = Vec::new();
    for phase in PHASES {
        let r = timed(shape.workers, &|w| match phase {
            "create" => {
                for i in 0..per {
                    let (d, name) = at(w, i, "");
                    c.make(OpCode::Create, d, &name, libc::S_IFREG | 0o644);
                }
                per
            }
            "stat" => {
                for i in 0..per {
                    let (d, name) = at(w, i, "");
                    assert!(Attr::read_from(&c.named(OpCode::Lookup, d, &name)).is_some());
                }
                per
            }
            "readdir" | "ls -l" => {
                let mut k = 0;
                for d in shape.listed_by(w) {
                    for name in c.list(dirs[d]) {
                        if phase == "ls -l" {
                            c.named(OpCode::Lookup, dirs[d], &name);
                        }
                        k += 1;
                    }
                }
                k
            }
            "rename" => {
                for i in 0..per {
                    let (d, name) = at(w, i, "");
                    c.rename(d, &name, &format!("{name}.r"));
                }
                per
            }
            "unlink" => {
                for i in 0..per {
                    let (d, name) = at(w, i, ".r");
                    c.named(OpCode::Unlink, d, &name);
                }
                per
            }
            "mkdir" => {
                for i in 0..per {
                    let (d, name) = at(w, i, ".d");
                    c.make(OpCode::Mkdir, d, &name, libc::S_IFDIR | 0o755);
                }
                per
            }
            _ => {
                for i in 0..per {
                    let (d, name) = at(w, i, ".d");
                    c.named(OpCode::Rmdir, d, &name);
                }
                per
            }
        });
        out.push(r);
    }
    for d in 0..shape.dirs {
        c.named(OpCode::Rmdir, base, &format!("d{d:03}"));
    }
    c.named(OpCode::Rmdir, parent, tag);
    out
}

/// A deterministic tree resembling a source tree, of about `entries` files and directories.
fn make_tree(root: &Path, entries: usize) -> usize {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move |m: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % m.max(1)
    };
    let exts = ["c", "h", "rs", "S", "txt", "md", "py", "json", "yaml", "Makefile"];
    let blob: Vec<u8> = (0..65_536u32).map(|i| b"abcdefghijklmnopqrstuvwxyz {};\n"[(i % 31) as usize]).collect();
    let mut made = 0usize;
    let mut queue = vec![root.to_path_buf()];
    std::fs::create_dir_all(root).expect("tree root");
    let mut qi = 0;
    while made < entries {
        if qi == queue.len() {
            // Every directory filled: start another top-level one.
            let d = root.join(format!("top{made}"));
            std::fs::create_dir(&d).expect("mkdir");
            made += 1;
            queue.push(d);
        }
        let dir = queue[qi].clone();
        qi += 1;
        let files = 4 + rnd(30);
        for f in 0..files {
            if made >= entries {
                break;
            }
            let ext = exts[usize::try_from(rnd(exts.len() as u64)).unwrap_or(0)];
            let size = match rnd(100) {
                0..=9 => 0,
                10..=59 => 200 + rnd(3800),
                60..=89 => 4096 + rnd(12_288),
                _ => 16_384 + rnd(49_152),
            };
            let size = usize::try_from(size).unwrap_or(0);
            std::fs::write(dir.join(format!("file{f}.{ext}")), &blob[..size]).expect("write tree file");
            made += 1;
        }
        for s in 0..rnd(5) {
            if made >= entries {
                break;
            }
            let d = dir.join(format!("sub{s}"));
            std::fs::create_dir(&d).expect("mkdir");
            made += 1;
            queue.push(d);
        }
    }
    made
}

/// Per-opcode requests of `after - before`, divided by `ops`: "LOOKUP 1.00 CREATE 1.00 ...".
fn per_op(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, ops: usize) -> (f64, String) {
    #[allow(clippy::cast_precision_loss)]
    let ops = ops.max(1) as f64;
    let mut total = 0.0;
    let mut parts = Vec::new();
    for (k, v) in after {
        let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
        if d == 0 || k == "FORGET" || k == "BATCH_FORGET" {
            continue;
        }
        #[allow(clippy::cast_precision_loss)]
        let x = d as f64 / ops;
        total += x;
        parts.push(format!("{k} {x:.2}"));
    }
    (total, parts.join(", "))
}

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

#[allow(clippy::too_many_lines)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        println!("fuse_meta: bench");
        return;
    }
    if !is_root() || !Path::new("/dev/fuse").exists() {
        eprintln!("SKIPPED: fuse_meta needs root and /dev/fuse");
        return;
    }
    let this = zufs_tests::target_dir();
    if !this.join("libpmemfs.so").exists() {
        eprintln!("SKIPPED: fuse_meta needs the pmemfs plugin (cargo build --workspace --release)");
        return;
    }
    let short = args.iter().any(|a| a == "--short") || std::env::var("ZUFS_BENCH_SHORT").is_ok_and(|v| v == "1");
    let files = env_num("ZUFS_META_FILES", if short { 1000 } else { 10_000 });
    let untar_entries = env_num("ZUFS_META_UNTAR_ENTRIES", if short { 5000 } else { 60_000 });
    let shapes: Vec<Shape> = std::env::var("ZUFS_META_SHAPES")
        .unwrap_or_else(|_| "1x1,1x100,2x1,2x100".into())
        .split(',')
        .filter_map(|s| {
            let (w, d) = s.trim().split_once('x')?;
            Some(Shape { workers: w.parse().ok().filter(|&w| w > 0)?, dirs: d.parse().ok().filter(|&d| d > 0)? })
        })
        .collect();
    let base_bin = std::env::var_os("ZUFS_META_BASE").map(PathBuf::from);
    let wanted: Option<Vec<String>> =
        std::env::var("ZUFS_META_TARGETS").ok().map(|v| v.split(',').map(str::to_owned).collect());
    let want = |n: &str| {
        let default = !n.ends_with("uring-inline") && !n.ends_with("uring-zusd");
        wanted.as_ref().map_or(default && (base_bin.is_some() || !n.starts_with("base-")), |w| w.iter().any(|x| x == n))
    };
    let extra = std::env::var("ZUFS_META_MOUNT_OPTS").unwrap_or_default();
    let uring_ok = Path::new("/sys/module/fuse/parameters/enable_uring").exists();
    let load_before = load_average();

    let dir = TempDir::new("fuse-meta");
    let mut kmounts: Vec<PathBuf> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    let tmpfs = dir.0.join("tmpfs");
    std::fs::create_dir_all(&tmpfs).expect("mkdir");
    assert!(run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=4g", "zufs-meta"]).arg(&tmpfs)), "mount tmpfs");
    kmounts.push(tmpfs.clone());
    if want("tmpfs") {
        let d = tmpfs.join("direct");
        std::fs::create_dir_all(&d).expect("mkdir");
        targets.push(Target { id: "tmpfs".into(), name: "kernel tmpfs".into(), kind: Kind::Path(d), counted: None });
    }
    let mut setups: Vec<ZufsSetup> = Vec::new();
    let mut builds = vec![("", this.clone())];
    if let Some(b) = &base_bin {
        builds.push(("base-", b.clone()));
    }
    for (prefix, bin) in &builds {
        let sd = dir.0.join(format!("{prefix}zufs"));
        let Some(mut s) = ZufsSetup::start(bin, &sd, &["pmemfs"]) else {
            eprintln!("fuse_meta: no pmemfs plugin in {}: {prefix}targets skipped", bin.display());
            continue;
        };
        let counted = prefix.is_empty();
        let who = if counted { "" } else { " [before]" };
        if counted && want("channel") {
            let dev = s.pmemfs_device("meta-chan", "2G");
            let relay = Relay::connect(&s.zusd.socket, "fuse-meta").expect("connect to zusd");
            let info = relay.mount("pmemfs", &dev, "").expect("mount over the channel");
            let c = Arc::new(Chan { relay, mount_id: info.mount_id, root: info.root });
            let root = c.root;
            targets.push(Target {
                id: "channel".into(),
                name: "pmemfs over the channel (no kernel)".into(),
                kind: Kind::Channel(c, root),
                counted: None,
            });
        }
        let kinds: [(&str, &str, &str); 4] = [
            ("classic", "pmemfs classic bridge", "transport=classic"),
            ("uring", "pmemfs uring (a)", "transport=uring"),
            ("uring-inline", "pmemfs uring (b, inline)", "transport=uring,serve=inline"),
            ("uring-zusd", "pmemfs uring (b, inside zusd)", "transport=uring,serve=zusd"),
        ];
        for (id, name, opts) in kinds {
            let tid = format!("{prefix}{id}");
            if !want(&tid) {
                continue;
            }
            if id.starts_with("uring") && !uring_ok {
                eprintln!("fuse_meta: {tid} skipped: this kernel has no FUSE over io_uring");
                continue;
            }
            let mnt = dir.0.join(&tid);
            let dev = s.pmemfs_device(&format!("meta-{tid}"), "2G");
            let o = if extra.is_empty() { opts.to_owned() } else { format!("{opts},{extra}") };
            if !s.mount("pmemfs", &o, &dev, &mnt) {
                eprintln!("fuse_meta: {tid}: zufs mount failed; skipped");
                continue;
            }
            // the bridge counts requests; mounts served elsewhere (zusd, the older build's
            // inline prototype) bypass its counters
            let counted = (counted && matches!(id, "classic" | "uring")).then(|| (setups.len(), mnt.clone()));
            targets.push(Target { id: tid, name: format!("{name}{who}"), kind: Kind::Path(mnt), counted });
        }
        setups.push(s);
    }

    eprintln!(
        "fuse_meta: {} target(s), {files} files per shape, shapes {:?}, untar of {untar_entries} entries",
        targets.len(),
        shapes.iter().map(|s| format!("{}x{}", s.workers, s.dirs)).collect::<Vec<_>>()
    );
    // (shape, target, phase) -> (seconds, ops); (shape, target, phase) -> requests per op.
    let mut res: BTreeMap<(usize, usize, usize), (f64, usize)> = BTreeMap::new();
    let mut reqs: BTreeMap<(usize, usize, usize), (f64, String)> = BTreeMap::new();
    let settle = || std::thread::sleep(Duration::from_millis(350));
    for (si, &shape) in shapes.iter().enumerate() {
        for (ti, t) in targets.iter().enumerate() {
            let tag = format!("s{si}");
            let r = match &t.kind {
                Kind::Path(p) => {
                    let base = p.join(&tag);
                    std::fs::create_dir_all(&base).expect("mkdir");
                    let mut before = BTreeMap::new();
                    if let Some((s, m)) = &t.counted {
                        settle();
                        before = setups[*s].fuse_requests(m);
                    }
                    let mut marks = Vec::new();
                    let r = path_round(&base, shape, files, |_| {
                        if let Some((s, m)) = &t.counted {
                            settle();
                            marks.push(setups[*s].fuse_requests(m));
                        }
                    });
                    for (p, after) in marks.iter().enumerate() {
                        let prev = if p == 0 { &before } else { &marks[p - 1] };
                        reqs.insert((si, ti, p), per_op(prev, after, r[p].1));
                    }
                    std::fs::remove_dir(&base).expect("rmdir");
                    r
                }
                Kind::Channel(c, root) => chan_round(c, *root, &tag, shape, files),
            };
            eprintln!(
                "  {:<28} {:<44} {}",
                shape.label(),
                t.name,
                PHASES
                    .iter()
                    .zip(&r)
                    .map(|(p, (s, n))| {
                        #[allow(clippy::cast_precision_loss)]
                        let rate = *n as f64 / s.max(1e-9);
                        format!("{p} {rate:.0}/s")
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
            );
            for (p, x) in r.into_iter().enumerate() {
                res.insert((si, ti, p), x);
            }
        }
    }

    // Untar.
    let mut untar: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    let mut untar_reqs: BTreeMap<(usize, usize), (f64, String)> = BTreeMap::new();
    let mut tree_note = String::new();
    if untar_entries > 0 && have("tar") {
        let src = tmpfs.join("tree-src");
        let made = make_tree(&src, untar_entries);
        let tarball = tmpfs.join("tree.tar");
        assert!(
            run(Command::new("tar").arg("-cf").arg(&tarball).arg("-C").arg(&src).arg(".")),
            "tar -cf of the generated tree"
        );
        let bytes = std::fs::metadata(&tarball).map_or(0, |m| m.len());
        let _ = std::fs::remove_dir_all(&src);
        tree_note = format!("{made} entries, a {} MiB tar", bytes >> 20);
        eprintln!("fuse_meta: untar of {tree_note}");
        for (ti, t) in targets.iter().enumerate() {
            let Kind::Path(p) = &t.kind else { continue };
            let dest = p.join("untar");
            std::fs::create_dir_all(&dest).expect("mkdir");
            let mut before = BTreeMap::new();
            if let Some((s, m)) = &t.counted {
                settle();
                before = setups[*s].fuse_requests(m);
            }
            let t0 = Instant::now();
            assert!(run(program("tar").arg("-xf").arg(&tarball).arg("-C").arg(&dest)), "tar -xf on {}", t.name);
            let x = t0.elapsed().as_secs_f64();
            let mut mid = BTreeMap::new();
            if let Some((s, m)) = &t.counted {
                settle();
                mid = setups[*s].fuse_requests(m);
                untar_reqs.insert((ti, 0), per_op(&before, &mid, made));
            }
            let t1 = Instant::now();
            assert!(run(program("rm").arg("-rf").arg(&dest)), "rm -rf on {}", t.name);
            let r = t1.elapsed().as_secs_f64();
            if let Some((s, m)) = &t.counted {
                settle();
                untar_reqs.insert((ti, 1), per_op(&mid, &setups[*s].fuse_requests(m), made));
            }
            eprintln!("  {:<44} tar -xf {x:>7.2} s  rm -rf {r:>7.2} s", t.name);
            untar.insert((ti, 0), x);
            untar.insert((ti, 1), r);
        }
    }

    // The tables.
    let tmpfs_i = targets.iter().position(|t| t.id == "tmpfs");
    let base_of = |ti: usize| {
        let id = &targets[ti].id;
        (!id.starts_with("base-")).then(|| targets.iter().position(|t| t.id == format!("base-{id}"))).flatten()
    };
    let rate = |si: usize, ti: usize, p: usize| {
        let (s, n) = res[&(si, ti, p)];
        #[allow(clippy::cast_precision_loss)]
        let r = n as f64 / s.max(1e-9);
        r
    };
    let mut md = format!(
        "{files} files per shape, one run; pmemfs on 2 GiB /dev/shm devices{}{}; {}; load average before {load_before}, \
         after {}\n",
        if extra.is_empty() { String::new() } else { format!(", -o {extra}") },
        if pinned() { "; workers pinned (ZUFS_META_PIN=1)" } else { "" },
        machine(),
        load_average()
    );
    for (si, shape) in shapes.iter().enumerate() {
        md.push_str(&format!("\n**{}** (ops/s)\n\n| target |", shape.label()));
        for p in PHASES {
            md.push_str(&format!(" {p} |"));
        }
        md.push_str("\n|---|");
        md.push_str(&"---:|".repeat(PHASES.len()));
        md.push('\n');
        for (ti, t) in targets.iter().enumerate() {
            md.push_str(&format!("| {} |", t.name));
            for p in 0..PHASES.len() {
                md.push_str(&format!(" {:.0} |", rate(si, ti, p)));
            }
            md.push('\n');
        }
        for (label, vs_base) in [("× tmpfs", false), ("× before (same transport)", true)] {
            let rows: Vec<(usize, usize)> = (0..targets.len())
                .filter(|&ti| Some(ti) != tmpfs_i)
                .filter_map(|ti| if vs_base { base_of(ti) } else { tmpfs_i }.map(|o| (ti, o)))
                .collect();
            if rows.is_empty() {
                continue;
            }
            md.push_str(&format!("\n{label}:\n"));
            for (ti, oi) in rows {
                md.push_str(&format!("- {}:", targets[ti].name));
                for (p, name) in PHASES.iter().enumerate() {
                    md.push_str(&format!(
                        " {name} {:.2}{}",
                        rate(si, ti, p) / rate(si, oi, p),
                        if p + 1 < PHASES.len() { ";" } else { "" }
                    ));
                }
                md.push('\n');
            }
        }
        let counted: Vec<usize> =
            targets.iter().enumerate().filter(|(_, t)| t.counted.is_some()).map(|(i, _)| i).collect();
        if !counted.is_empty() {
            md.push_str("\nFUSE requests per op (FORGET left out):\n");
            for ti in counted {
                md.push_str(&format!("- {}:\n", targets[ti].name));
                for (p, name) in PHASES.iter().enumerate() {
                    if let Some((tot, parts)) = reqs.get(&(si, ti, p)) {
                        md.push_str(&format!("  - {name}: {tot:.2} ({parts})\n"));
                    }
                }
            }
        }
    }
    if !untar.is_empty() {
        md.push_str(&format!("\n**untar** of a generated tree ({tree_note}), seconds\n\n"));
        md.push_str("| target | tar -xf s | × tmpfs | × before | rm -rf s | × tmpfs | × before |\n|---|---:|---:|---:|---:|---:|---:|\n");
        for (ti, t) in targets.iter().enumerate() {
            let Some(&x) = untar.get(&(ti, 0)) else { continue };
            let r = untar[&(ti, 1)];
            let ratio = |o: Option<usize>, k: usize, v: f64| {
                o.and_then(|oi| untar.get(&(oi, k))).map_or("-".to_owned(), |b| format!("{:.2}", v / b))
            };
            md.push_str(&format!(
                "| {} | {x:.2} | {} | {} | {r:.2} | {} | {} |\n",
                t.name,
                ratio(tmpfs_i, 0, x),
                ratio(base_of(ti), 0, x),
                ratio(tmpfs_i, 1, r),
                ratio(base_of(ti), 1, r)
            ));
        }
        if !untar_reqs.is_empty() {
            md.push_str("\nFUSE requests per tree entry (FORGET left out):\n");
            for ((ti, k), (tot, parts)) in &untar_reqs {
                md.push_str(&format!("- {} {}: {tot:.2} ({parts})\n", targets[*ti].name, UNTAR[*k]));
            }
        }
    }
    println!("{md}");
    if let Some(p) = std::env::var_os("ZUFS_BENCH_OUT") {
        let _ = std::fs::write(p, &md);
    }

    for t in &targets {
        if let Kind::Channel(c, _) = &t.kind {
            let _ = c.relay.unmount(c.mount_id);
        }
    }
    drop(targets);
    drop(setups);
    for m in kmounts.iter().rev() {
        umount(m);
    }
    std::thread::sleep(Duration::from_millis(50));
}

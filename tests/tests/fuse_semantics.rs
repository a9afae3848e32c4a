//! What real programs and test suites expect of a filesystem (issue 16), on a pmemfs mount next
//! to kernel tmpfs: set-id rules (as root and as the unprivileged user `tests`), open-but-removed
//! files and directories, xattrs, mmap of O_DIRECT files, device nodes, file handles across a
//! remount, atime policies, copy_file_range's argument rules, POSIX ACLs.
//!
//! Each check is a subcommand of `tests/scripts/fs_semantics.py` that prints one line per
//! observation; the test runs it on a fresh tmpfs and on pmemfs (on this test's transport) and
//! requires the same lines, plus some fixed expectations (so that both being wrong fails too).
//!
//! Needs root, /dev/fuse, python3 and the user `tests` (`tests/scripts/fuse-deps.sh`); skips with
//! a reason otherwise.

#[macro_use]
#[path = "fuse_common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

macro_rules! skip_without_prereqs {
    () => {
        skip_without_fuse!();
        if let Some(why) = prereqs_missing() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

fn prereqs_missing() -> Option<String> {
    if !plugin_available("pmemfs") {
        return Some("libpmemfs.so is not built or does not export zus_plugin_register".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (switches to the user `tests`)".into());
    }
    if !Command::new("id").arg("tests").output().is_ok_and(|o| o.status.success()) {
        return Some("user `tests` is missing (tests/scripts/fuse-deps.sh creates it)".into());
    }
    if Command::new("python3").arg("--version").output().is_err() {
        return Some("python3 is not installed".into());
    }
    None
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fs_semantics.py")
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(dir: &Path, opts: &str) -> Self {
        let p = dir.join("tmpfs");
        std::fs::create_dir_all(&p).unwrap();
        let mut c = Command::new("mount");
        c.args(["-t", "tmpfs"]);
        if !opts.is_empty() {
            c.args(["-o", opts]);
        }
        assert!(c.arg("zufs-sem").arg(&p).status().unwrap().success(), "mount tmpfs");
        Self(p)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs check `name` (with `args`) in `dir/sub` (made 0777); returns its lines.
fn run_check(dir: &Path, sub: &str, name: &str, args: &[&str]) -> Vec<String> {
    let d = dir.join(sub);
    if !d.exists() {
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    let o =
        run_with_timeout(Command::new("python3").arg(script()).arg(name).arg(&d).args(args), Duration::from_secs(120));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "check {name} in {}: {}\n{text}{}",
        d.display(),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    text.lines().map(str::to_owned).collect()
}

/// The lines that differ between tmpfs and pmemfs, for the assertion message.
fn diff(t: &[String], p: &[String]) -> String {
    let mut s = String::new();
    for i in 0..t.len().max(p.len()) {
        let (a, b) = (t.get(i).map_or("<none>", String::as_str), p.get(i).map_or("<none>", String::as_str));
        if a != b {
            s.push_str(&format!("  tmpfs:  {a}\n  pmemfs: {b}\n"));
        }
    }
    s
}

/// A pmemfs device made with `zufs mkfs` and mounted with `opts`.
fn pmemfs(tag: &str, opts: &str) -> (Fixture, String) {
    let f = Fixture::new(tag, &["pmemfs"], true);
    let dev = f.dir.0.join("pmem.img").display().to_string();
    f.zufs_ok(&["mkfs", "-t", "pmemfs", "--size", "256M", &dev]);
    f.mount("pmemfs", &dev, opts);
    (f, dev)
}

/// Runs `check` on tmpfs and on pmemfs (mounted with `opts`), requires equal lines (but those
/// `skip` selects), and returns pmemfs's.
fn same_on_tmpfs_and_pmemfs(check: &str, opts: &str, args: &[&str]) -> Vec<String> {
    same_on_tmpfs_and_pmemfs_but(check, opts, args, |_| false)
}

fn same_on_tmpfs_and_pmemfs_but(check: &str, opts: &str, args: &[&str], skip: fn(&str) -> bool) -> Vec<String> {
    let (f, _) = pmemfs(&format!("sem-{check}"), opts);
    let t = Tmpfs::new(&f.dir.0, "");
    let tl: Vec<String> = run_check(&t.0, "w", check, args).into_iter().filter(|l| !skip(l)).collect();
    let all = run_check(&f.mnt, "w", check, args);
    let pl: Vec<String> = all.iter().filter(|l| !skip(l)).cloned().collect();
    assert_eq!(
        tl,
        pl,
        "{check} on pmemfs ({}) differs from tmpfs:\n{}bridge log:\n{}",
        transport(),
        diff(&tl, &pl),
        f.bridge_logs()
    );
    f.umount();
    all
}

fn has(lines: &[String], want: &str) {
    assert!(lines.iter().any(|l| l == want), "no line {want:?} in:\n{}", lines.join("\n"));
}

/// Item 1: set-id bits cleared by writes, truncates, fallocate and punch of a user without
/// CAP_FSETID (kept for root), chmod by an owner outside the group, setgid directories.
///
/// One difference from tmpfs is the kernel's: on a file with S_ISGID but no group-exec bit
/// (6767), tmpfs also drops S_ISGID when the writer is outside the file's group, while the
/// kernel's FUSE setattr (fs/fuse/dir.c) drops it only with the group-exec bit; both drop
/// S_ISUID, which is what that case is checked for.
fn test_setid_rules_match_tmpfs() {
    skip_without_prereqs!();
    let l = same_on_tmpfs_and_pmemfs_but("setid", "", &[], |l| l.contains(" on 6767: "));
    for x in l.iter().filter(|l| l.starts_with("user ") && l.contains(" on 6767: ") && !l.contains("mmap-write")) {
        assert!(x.ends_with("-> 0o767") || x.ends_with("-> 0o2767"), "S_ISUID kept: {x}");
    }
    has(&l, "user append on 6777: ok -> 0o777");
    has(&l, "user odirect on 6777: ok -> 0o777");
    has(&l, "user truncate on 4777: ok -> 0o777");
    has(&l, "user fallocate on 6777: ok -> 0o777");
    has(&l, "user punch on 6777: ok -> 0o777");
    has(&l, "root append: 0o6777");
    has(&l, "chmod 2755 by owner outside the group: ok 0o755");
    has(&l, "in setgid dir: sg/user-22-f-2755: ok 0o755 parent-gid");
    has(&l, "in setgid dir: sg/user-77-d-755: ok 0o2700 parent-gid");
    has(&l, "in setgid dir: sg/root-22-f-2755: ok 0o2755 parent-gid");
}

/// Issue 17 (`FUSE_HANDLE_KILLPRIV_V2`): security.capability goes with a write (also O_DIRECT,
/// which the kernel leaves to the filesystem), truncate and chown, also after the kernel marked
/// the inode as having none (S_NOSEC); chown(-1, -1) clears set-id bits.
fn test_file_caps_match_tmpfs() {
    skip_without_prereqs!();
    let l = same_on_tmpfs_and_pmemfs("caps", "", &[]);
    has(&l, "user write: ok -> ENODATA");
    has(&l, "user odirect: ok -> ENODATA");
    has(&l, "root odirect: ok -> ENODATA");
    has(&l, "user truncate: ok -> ENODATA");
    has(&l, "root chown: ok -> ENODATA");
    has(&l, "write after setcap: ok ENODATA");
    has(&l, "root chown -1 -1 on 6777: ok -> 0o777");
    has(&l, "chown of a 6775 fifo: ok 0o775");
}

/// Item 5: files and directories removed or replaced while open stay usable through their
/// descriptors.
fn test_open_unlinked_files_and_directories_match_tmpfs() {
    skip_without_prereqs!();
    let l = same_on_tmpfs_and_pmemfs("open_unlinked", "", &[]);
    has(&l, "dir renamed over, fstat: nlink 0 dir True");
    has(&l, "rmdir'd dir, fstat: nlink 0");
}

/// Item 6: a thousand small xattrs on one file, and tmpfs's answers for the edge cases.
fn test_xattrs_match_tmpfs() {
    skip_without_prereqs!();
    let l = same_on_tmpfs_and_pmemfs("xattrs", "", &[]);
    has(&l, "set 1000: ['ok']");
    has(&l, "listed: 1000 size 14000");
}

/// Item 7: a shared mapping of a file opened with O_DIRECT.
fn test_mmap_of_o_direct_file_matches_tmpfs() {
    skip_without_prereqs!();
    let l = same_on_tmpfs_and_pmemfs("mmap_odirect", "", &[]);
    has(&l, "shared mmap of an O_DIRECT fd: ok");
}

/// Item 10: root creates and uses device nodes.
fn test_device_nodes_match_tmpfs() {
    skip_without_prereqs!();
    let l = same_on_tmpfs_and_pmemfs("devices", "", &[]);
    has(&l, "write to null node: ok");
    has(&l, "read zero node: b'\\x00\\x00\\x00\\x00'");
}

/// Item 3: name_to_handle_at/open_by_handle_at on live files, and after an unmount and mount
/// (with the kernel's dentry and inode caches dropped, so that the filesystem resolves them).
fn test_file_handles_survive_remount() {
    skip_without_prereqs!();
    let (f, dev) = pmemfs("sem-handles", "");
    let t = Tmpfs::new(&f.dir.0, "");
    let tl = run_check(&t.0, "w", "handles_save", &[]);
    let pl = run_check(&f.mnt, "w", "handles_save", &[]);
    assert_eq!(tl, pl, "handles on pmemfs differ from tmpfs:\n{}", diff(&tl, &pl));
    has(&pl, "open_by_handle_at d/f b'by handle'");
    // The handles file sits next to `w`: inside the mount; copy it out over the remount.
    let saved = std::fs::read(f.mnt.join("handles")).unwrap();
    f.umount();
    f.mount("pmemfs", &dev, "");
    std::fs::write(f.mnt.join("handles"), saved).unwrap();
    let tl = run_check(&t.0, "w", "handles_reopen", &[]);
    let pl = run_check(&f.mnt, "w", "handles_reopen", &[]);
    assert_eq!(tl, pl, "handles after remount on pmemfs differ from tmpfs:\n{}", diff(&tl, &pl));
    has(&pl, "after remount, open_by_handle_at d/f b'by handle'");
    has(&pl, "removed file by handle: ESTALE");
    f.umount();
}

/// Item 4: relatime by default; strictatime and noatime on request (tmpfs mounted the same way).
fn test_atime_policies_match_tmpfs() {
    skip_without_prereqs!();
    for policy in ["relatime", "strictatime", "noatime"] {
        let opts = if policy == "relatime" { "" } else { policy };
        let (f, _) = pmemfs(&format!("sem-atime-{policy}"), opts);
        let t = Tmpfs::new(&f.dir.0, policy);
        let tl = run_check(&t.0, "w", "atime", &[policy]);
        let pl = run_check(&f.mnt, "w", "atime", &[policy]);
        assert_eq!(tl, pl, "atime ({policy}) on pmemfs differs from tmpfs:\n{}", diff(&tl, &pl));
        f.umount();
    }
}

/// Item 8: copy_file_range's argument rules.
fn test_copy_file_range_matches_tmpfs() {
    skip_without_prereqs!();
    let l = same_on_tmpfs_and_pmemfs("copy_file_range", "", &[]);
    has(&l, "overlap in one file: EINVAL");
    has(&l, "src past EOF: 0");
}

/// zusd's ops served so far (every lane).
fn zusd_ops(f: &Fixture) -> u64 {
    let st = f.status();
    st["zusd"]["lanes"].as_array().unwrap().iter().map(|l| l["ops"].as_u64().unwrap()).sum()
}

/// Item 8: copy_file_range on pmemfs is one op at zusd (the kernel's COPY_FILE_RANGE), not the
/// kernel reading and writing through the mount: a 1 MiB copy (which as reads and writes takes
/// at least 16 ops of 64 KiB) costs a handful of ops, and the copy reads back right, also
/// after the page cache is dropped.
fn test_copy_file_range_is_one_op() {
    use std::os::fd::AsRawFd;
    skip_without_prereqs!();
    let (f, _) = pmemfs("sem-cfr-one-op", "");
    let data: Vec<u8> = (0..(1u32 << 20) + 123).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(f.mnt.join("src"), &data).unwrap();
    let src = std::fs::File::open(f.mnt.join("src")).unwrap();
    let dst = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(f.mnt.join("dst")).unwrap();
    let before = zusd_ops(&f);
    let (mut off_in, mut off_out): (i64, i64) = (100, 7);
    let len = 1usize << 20;
    // SAFETY: valid descriptors and offset pointers.
    let n = unsafe { libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, len, 0) };
    let after = zusd_ops(&f);
    assert_eq!(n, len.cast_signed(), "copy_file_range: {}", std::io::Error::last_os_error());
    assert!(
        after - before <= 6,
        "a 1 MiB copy_file_range cost {} ops at zusd ({}): not served as one op\nbridge log:\n{}",
        after - before,
        transport(),
        f.bridge_logs()
    );
    drop((src, dst));
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    let got = std::fs::read(f.mnt.join("dst")).unwrap();
    assert_eq!(got.len(), 7 + len);
    assert!(got[..7].iter().all(|&b| b == 0));
    assert!(got[7..] == data[100..100 + len], "copied bytes differ");
    f.umount();
}

/// Item 2: POSIX ACLs with setfacl/getfacl: access ACLs stored as system.posix_acl_access and
/// enforced (named users and groups, the mask), chmod and the mask kept in sync, an ACL equal
/// to a mode dropped, default ACLs inherited on create in place of the umask.
fn test_posix_acls_match_tmpfs() {
    skip_without_prereqs!();
    if Command::new("setfacl").arg("--version").output().is_err() {
        eprintln!("SKIPPED: setfacl is not installed (the acl package; tests/scripts/fuse-deps.sh)");
        return;
    }
    let l = same_on_tmpfs_and_pmemfs("acl", "", &[]);
    has(&l, "user write with ACL entry: ok");
    has(&l, "user read denied by ACL entry: EACCES");
    has(&l, "user write after chmod: EACCES");
    has(&l, "setfacl -b: ok 0o644 [] user::rw- group::r-- other::r--");
    has(&l, "umask without default ACL: 0o640 0o750 []");
    has(&l, "user setfacl on own setgid file, other group: 'ok' 0o770");
    has(&l, "root setfacl on setgid file: ok 0o2770");
    assert!(l.iter().any(|x| x.starts_with("inherited d/f 0o664 ['system.posix_acl_access']")), "{}", l.join("\n"));
}

on_both_transports!(
    test_setid_rules_match_tmpfs,
    test_file_caps_match_tmpfs,
    test_open_unlinked_files_and_directories_match_tmpfs,
    test_xattrs_match_tmpfs,
    test_mmap_of_o_direct_file_matches_tmpfs,
    test_device_nodes_match_tmpfs,
    test_file_handles_survive_remount,
    test_atime_policies_match_tmpfs,
    test_copy_file_range_matches_tmpfs,
    test_copy_file_range_is_one_op,
    test_posix_acls_match_tmpfs,
);

//! The mount(8) helpers: `mount -t zufs.pmemfs DEV MNT -o OPTS` (or an /etc/fstab line with type
//! `zufs.pmemfs`) makes mount(8) run `/sbin/mount.zufs.pmemfs DEV MNT [-sfnv] [-o OPTS]`. That
//! file is a symlink to the `zufs` binary (`zufs install-helpers`); `main` sees the name and
//! hands the arguments here, which mounts as `zufs mount -t pmemfs -o OPTS DEV MNT` does (also
//! with `-o transport=kernel`: through the kernel module).
//!
//! Our FUSE mounts have the type `fuse.zufs` in the mount table, so for `mount -o remount,ro MNT`
//! mount(8) runs `/sbin/mount.fuse.zufs SOURCE MNT -o remount,ro` (without it, fuse3's
//! `mount.fuse` would take the device for a program to run): the same binary under that name
//! does the remount (the kernel flips the superblock's read-only flag; FUSE takes no options on
//! a remount) and refuses new mounts (they need a type: `-t zufs.<type>`).
//!
//! Kernel-module mounts have the type `zufs`: mount(8) runs `/sbin/mount.zufs` for their
//! remounts (the same remount; a plain `mount -t zufs SRC MNT -o mount_id=N,root=I` is passed to
//! mount(2) as given) and umount(8) runs `/sbin/umount.zufs MNT [-nlfvr]`, which unmounts as
//! `zufs umount` does: the kernel mount, then zusd's mount of the device (the plugin flushes).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cli::{self, Env, MountArgs};

/// Prefix of the helpers' file names (`mount.zufs.<type>`).
pub const PREFIX: &str = "mount.zufs.";

/// The helper mount(8) runs for a remount of a mount of type `fuse.zufs`.
pub const REMOUNT_HELPER: &str = "mount.fuse.zufs";

/// The helper mount(8) runs for a mount or remount of type `zufs` (the kernel module's).
pub const MODULE_HELPER: &str = "mount.zufs";

/// The helper umount(8) runs for a mount of type `zufs`.
pub const UMOUNT_HELPER: &str = "umount.zufs";

/// Which helper the binary runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Helper {
    /// `mount.zufs.<type>`: mounts (through FUSE or the module, as `-o transport=` says) and
    /// remounts.
    Mount(String),
    /// `mount.fuse.zufs`: remounts of FUSE mounts only.
    FuseRemount,
    /// `mount.zufs`: remounts of module mounts; other mounts of type `zufs` go to mount(2).
    Module,
    /// `umount.zufs`: `zufs umount`.
    Umount,
}

impl Helper {
    /// The helper's file name.
    #[must_use]
    pub fn name(&self) -> String {
        match self {
            Self::Mount(t) => format!("{PREFIX}{t}"),
            Self::FuseRemount => REMOUNT_HELPER.to_owned(),
            Self::Module => MODULE_HELPER.to_owned(),
            Self::Umount => UMOUNT_HELPER.to_owned(),
        }
    }
}

/// The helper `argv0` names, if it names one.
#[must_use]
pub fn helper_kind(argv0: &OsStr) -> Option<Helper> {
    let name = Path::new(argv0).file_name()?.to_str()?;
    match name {
        REMOUNT_HELPER => Some(Helper::FuseRemount),
        MODULE_HELPER => Some(Helper::Module),
        UMOUNT_HELPER => Some(Helper::Umount),
        _ => name.strip_prefix(PREFIX).filter(|t| !t.is_empty()).map(|t| Helper::Mount(t.to_owned())),
    }
}

/// What mount(8) passed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HelperArgs {
    /// Plugin.
    pub fs_type: String,
    /// Device (`none` for device-less types).
    pub device: String,
    /// Mount point.
    pub mountpoint: PathBuf,
    /// `-o`, mount(8)-only options removed.
    pub options: String,
    /// `-f`: do everything but the mount.
    pub fake: bool,
    /// `-v`.
    pub verbose: bool,
    /// `remount` was among the options.
    pub remount: bool,
    /// `ro` (last of ro/rw) was among the options.
    pub read_only: bool,
    /// Every `-o` option as given (for a remount).
    pub raw_options: Vec<String>,
}

/// Options that mean something to mount(8) or the VFS only, never to zufs or the plugin.
fn mount8_only(o: &str) -> bool {
    const DROP: &str = "defaults auto noauto nofail _netdev user nouser users owner group silent loud \
                        diratime nodiratime lazytime nolazytime iversion noiversion mand nomand remount";
    DROP.split_whitespace().any(|d| d == o)
        || o.starts_with("x-")
        || o.starts_with("comment=")
        || o.starts_with("helper=")
}

/// Parses `DEV MNT [-sfnv] [-o OPTS] [-t SUBTYPE]` as mount(8) passes them (options may come
/// anywhere, `-oOPTS` and several `-o` too).
///
/// # Errors
/// A missing device or mount point, or an unknown flag.
pub fn parse(fs_type: &str, args: &[String]) -> Result<HelperArgs> {
    let mut h = HelperArgs { fs_type: fs_type.to_owned(), ..HelperArgs::default() };
    let mut pos = Vec::new();
    let mut opts: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(flags) = a.strip_prefix('-').filter(|f| !f.is_empty()) {
            if let Some(o) = flags.strip_prefix('o') {
                let o = if o.is_empty() { it.next().context("-o needs a value")?.as_str() } else { o };
                opts.extend(o.split(',').filter(|x| !x.is_empty()).map(str::to_owned));
                continue;
            }
            if let Some(t) = flags.strip_prefix('t') {
                // libmount passes the subtype of `zufs.<type>`: it must agree with our name.
                let t = if t.is_empty() { it.next().context("-t needs a value")?.as_str() } else { t };
                let t = t.strip_prefix("zufs.").unwrap_or(t);
                if t != fs_type && !(fs_type.is_empty() && t == "zufs") {
                    bail!("type {t} does not match the helper's type {fs_type}");
                }
                continue;
            }
            for c in flags.chars() {
                match c {
                    'f' => h.fake = true,
                    'v' => h.verbose = true,
                    's' | 'n' => {} // sloppy, no mtab: nothing to do
                    _ => bail!("unknown flag -{c} (usage: mount.zufs.{fs_type} DEV MNT [-sfnv] [-o OPTS])"),
                }
            }
            continue;
        }
        pos.push(a.clone());
    }
    let [device, mountpoint] = <[String; 2]>::try_from(pos).map_err(|p| {
        anyhow::anyhow!("want DEV MNT, got {p:?} (usage: mount.zufs.{fs_type} DEV MNT [-sfnv] [-o OPTS])")
    })?;
    h.device = device;
    h.mountpoint = PathBuf::from(mountpoint);
    for o in &opts {
        match o.as_str() {
            "remount" => h.remount = true,
            "ro" => h.read_only = true,
            "rw" => h.read_only = false,
            _ => {}
        }
    }
    h.options = opts.iter().filter(|o| !mount8_only(o)).cloned().collect::<Vec<_>>().join(",");
    h.raw_options = opts;
    Ok(h)
}

/// Runs the helper; returns the exit status for mount(8) (0, or 32 for a failed mount) or
/// umount(8) (0, or 32 as umount's own failure).
pub fn run(env: &Env, helper: &Helper, args: &[String]) -> i32 {
    let res = match helper {
        Helper::Umount => umount_helper(env, args),
        Helper::Mount(t) => mount_helper(env, helper, t, args),
        Helper::FuseRemount | Helper::Module => mount_helper(env, helper, "", args),
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{}: {e:#}", helper.name());
            32
        }
    }
}

fn mount_helper(env: &Env, helper: &Helper, fs_type: &str, args: &[String]) -> Result<()> {
    let h = parse(fs_type, args)?;
    if h.verbose {
        eprintln!("{}: {} on {} options {:?}", helper.name(), h.device, h.mountpoint.display(), h.options);
    }
    if h.fake {
        return Ok(());
    }
    if h.remount {
        return remount(&h.mountpoint, &h.raw_options);
    }
    match helper {
        Helper::FuseRemount => {
            bail!("{REMOUNT_HELPER} only remounts; mount with -t zufs.<type> (zufs.pmemfs, zufs.nullfs, ...)")
        }
        // `mount -t zufs SRC MNT -o mount_id=N,root=I,...`: what `zufs mount -o transport=kernel`
        // does by itself; passed on as given.
        Helper::Module => {
            let (flags, data): (Vec<_>, Vec<_>) = h.raw_options.iter().partition(|o| mount_flag(o).is_some());
            let flags = mount_flags(0, flags.into_iter());
            let data = data.into_iter().filter(|o| !mount8_only(o)).cloned().collect::<Vec<_>>().join(",");
            crate::kmount::sys_mount(&h.device, &h.mountpoint, flags, &data)
                .with_context(|| format!("mount -t zufs -o {data} {} {}", h.device, h.mountpoint.display()))
        }
        _ => {
            let a = MountArgs {
                fs_type: h.fs_type,
                device: h.device,
                mountpoint: h.mountpoint,
                options: h.options,
                no_start: false,
            };
            cli::mount(env, &a)
        }
    }
}

/// `umount.zufs MNT [-nlfvr] [-t TYPE]` as umount(8) runs it: `zufs umount [-l] MNT`.
fn umount_helper(env: &Env, args: &[String]) -> Result<()> {
    let mut pos = Vec::new();
    let mut lazy = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(flags) = a.strip_prefix('-').filter(|f| !f.is_empty()) else {
            pos.push(a);
            continue;
        };
        if flags == "t" {
            it.next();
            continue;
        }
        for c in flags.chars() {
            match c {
                'l' => lazy = true,
                // no mtab, force (a zufs mount has no forced unmount), verbose, read-only fallback
                'n' | 'f' | 'v' | 'r' => {}
                _ => bail!("unknown flag -{c} (usage: {UMOUNT_HELPER} MNT [-nlfvr])"),
            }
        }
    }
    let [mp] = <[&String; 1]>::try_from(pos)
        .map_err(|p| anyhow::anyhow!("want MNT, got {p:?} (usage: {UMOUNT_HELPER} MNT [-nlfvr])"))?;
    cli::umount(env, Path::new(mp), lazy)
}

/// The flags of the mount at `mp` as mount(2) takes them back: the per-mount options of
/// /proc/self/mountinfo and the superblock's `sync`/`dirsync`.
fn current_options(mp: &Path) -> Vec<String> {
    let want = mp.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let Some(l) = info.lines().rfind(|l| l.split(' ').nth(4).map(cli::unescape_mountinfo).as_deref() == Some(&want))
    else {
        return Vec::new();
    };
    let mut v: Vec<String> = l.split(' ').nth(5).unwrap_or("").split(',').map(str::to_owned).collect();
    if let Some((_, sb)) = l.split_once(" - ") {
        let sb_opts = sb.split(' ').nth(2).unwrap_or("");
        v.extend(sb_opts.split(',').filter(|o| *o == "sync" || *o == "dirsync").map(str::to_owned));
    }
    v
}

/// The mount(2) flag an option sets and the ones it clears, when it is a flag.
#[must_use]
pub fn mount_flag(o: &str) -> Option<(libc::c_ulong, libc::c_ulong)> {
    let atime = libc::MS_NOATIME | libc::MS_RELATIME | libc::MS_STRICTATIME;
    Some(match o {
        "ro" => (libc::MS_RDONLY, 0),
        "rw" => (0, libc::MS_RDONLY),
        "nosuid" => (libc::MS_NOSUID, 0),
        "suid" => (0, libc::MS_NOSUID),
        "nodev" => (libc::MS_NODEV, 0),
        "dev" => (0, libc::MS_NODEV),
        "noexec" => (libc::MS_NOEXEC, 0),
        "exec" => (0, libc::MS_NOEXEC),
        "nodiratime" => (libc::MS_NODIRATIME, 0),
        "diratime" => (0, libc::MS_NODIRATIME),
        "noatime" => (libc::MS_NOATIME, atime),
        "relatime" => (libc::MS_RELATIME, atime),
        "strictatime" => (libc::MS_STRICTATIME, atime),
        "sync" => (libc::MS_SYNCHRONOUS, 0),
        "async" => (0, libc::MS_SYNCHRONOUS),
        "dirsync" => (libc::MS_DIRSYNC, 0),
        _ => return None,
    })
}

/// `flags` with the flag options among `opts` applied in order (the last of ro/rw wins, ...).
pub fn mount_flags<'a>(flags: libc::c_ulong, opts: impl Iterator<Item = &'a String>) -> libc::c_ulong {
    opts.filter_map(|o| mount_flag(o)).fold(flags, |f, (set, clear)| (f & !clear) | set)
}

/// mount(2) flags of a remount: the mount's current flags, then `opts` over them.
fn remount_flags(current: &[String], opts: &[String]) -> libc::c_ulong {
    mount_flags(libc::MS_REMOUNT, current.iter().chain(opts))
}

/// `remount[,OPTS]`: the kernel applies the mount(2) flags (read-only on the superblock, the
/// per-mount flags, which a remount replaces: so the current ones are passed on unless `opts`
/// changes them); FUSE takes no filesystem options on a remount, nor does the kernel module
/// (its options name zusd's mount, which a remount keeps).
fn remount(mp: &Path, opts: &[String]) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mp.as_os_str().as_bytes()).context("mount point")?;
    let flags = remount_flags(&current_options(mp), opts);
    // SAFETY: a NUL-terminated path; null source, type and data are allowed for a remount.
    let rc = unsafe { libc::mount(std::ptr::null(), c.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
    if rc != 0 {
        bail!("remount {}: {}", mp.display(), std::io::Error::last_os_error());
    }
    Ok(())
}

/// `zufs install-helpers`: one `mount.zufs.<type>` symlink to this binary in `dir` per plugin
/// (the plugin directory's `lib<type>.so`, and always pmemfs and nullfs), and `mount.fuse.zufs`,
/// `mount.zufs` and `umount.zufs`; `remove` deletes those of them that point to a zufs binary.
///
/// # Errors
/// The directory cannot be written.
pub fn install(env: &Env, dir: &Path, remove: bool) -> Result<Vec<PathBuf>> {
    let exe = std::env::current_exe().context("locating the zufs binary")?;
    let mut types = vec!["pmemfs".to_owned(), "nullfs".to_owned()];
    if let Ok(rd) = std::fs::read_dir(&env.plugins) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if let Some(t) = n.strip_prefix("lib").and_then(|n| n.strip_suffix(".so"))
                && !types.iter().any(|x| x == t)
            {
                types.push(t.to_owned());
            }
        }
    }
    let mut done = Vec::new();
    let names = types
        .iter()
        .map(|t| format!("{PREFIX}{t}"))
        .chain([REMOUNT_HELPER, MODULE_HELPER, UMOUNT_HELPER].map(str::to_owned));
    for name in names {
        let link = dir.join(&name);
        if remove {
            let ours = std::fs::read_link(&link)
                .is_ok_and(|p| p.file_name().is_some_and(|n| n == "zufs") || helper_kind(p.as_os_str()).is_some());
            if ours {
                std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
                done.push(link);
            }
            continue;
        }
        // Replace atomically: a new link under a temporary name, renamed over the old one.
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&exe, &tmp).with_context(|| format!("creating {}", tmp.display()))?;
        std::fs::rename(&tmp, &link).with_context(|| format!("installing {}", link.display()))?;
        done.push(link);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn test_helper_name() {
        let k = |s: &str| helper_kind(OsStr::new(s));
        assert_eq!(k("/sbin/mount.zufs.pmemfs"), Some(Helper::Mount("pmemfs".into())));
        assert_eq!(k("mount.zufs.nullfs"), Some(Helper::Mount("nullfs".into())));
        assert_eq!(k("/usr/bin/zufs"), None);
        assert_eq!(k("mount.zufs."), None);
        assert_eq!(k("/sbin/mount.fuse.zufs"), Some(Helper::FuseRemount));
        assert_eq!(k("/sbin/mount.fuse"), None);
        assert_eq!(k("/sbin/mount.zufs"), Some(Helper::Module));
        assert_eq!(k("/sbin/umount.zufs"), Some(Helper::Umount));
        assert_eq!(k("/sbin/umount.zufs.pmemfs"), None);
        for h in [Helper::Mount("pmemfs".into()), Helper::FuseRemount, Helper::Module, Helper::Umount] {
            assert_eq!(k(&h.name()), Some(h));
        }
    }

    #[test]
    fn test_flag_options_become_mount_flags() {
        let f = mount_flags(0, v(&["nosuid", "noatime", "ro", "x", "strictatime", "rw", "nodev"]).iter());
        assert_eq!(f, libc::MS_NOSUID | libc::MS_STRICTATIME | libc::MS_NODEV);
        assert_eq!(mount_flag("mount_id=3"), None);
    }

    #[test]
    fn test_parses_what_mount8_passes() {
        let h = parse("pmemfs", &v(&["/dev/shm/p", "/mnt/z", "-o", "rw,noauto,x-a.b,attr_timeout=0,nosuid"])).unwrap();
        assert_eq!(h.device, "/dev/shm/p");
        assert_eq!(h.mountpoint, PathBuf::from("/mnt/z"));
        assert_eq!(h.options, "rw,attr_timeout=0,nosuid");
        let h = parse("pmemfs", &v(&["-sfnv", "-oro,defaults", "d", "m", "-t", "pmemfs"])).unwrap();
        assert!(h.fake && h.verbose && h.read_only && !h.remount);
        assert_eq!(h.options, "ro");
        let h = parse("pmemfs", &v(&["d", "m", "-o", "remount,ro"])).unwrap();
        assert!(h.remount && h.read_only);
        let h = parse("", &v(&["/dev/shm/p", "/mnt/z", "-o", "remount,rw", "-t", "zufs"])).unwrap();
        assert!(h.remount && !h.read_only);
        assert_eq!(h.raw_options, ["remount", "rw"]);
    }

    #[test]
    fn test_remount_keeps_the_mount_flags_it_is_not_asked_to_change() {
        let cur = v(&["rw", "nosuid", "nodev", "relatime"]);
        let f = remount_flags(&cur, &v(&["remount", "ro"]));
        assert_eq!(f, libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_RELATIME);
        let f = remount_flags(&cur, &v(&["remount", "suid", "noatime", "noexec"]));
        assert_eq!(f, libc::MS_REMOUNT | libc::MS_NODEV | libc::MS_NOATIME | libc::MS_NOEXEC);
        assert!(parse("pmemfs", &v(&["d"])).is_err());
        assert!(parse("pmemfs", &v(&["d", "m", "x"])).is_err());
        assert!(parse("pmemfs", &v(&["d", "m", "-q"])).is_err());
        assert!(parse("pmemfs", &v(&["d", "m", "-t", "nullfs"])).is_err());
        assert!(parse("pmemfs", &v(&["d", "m", "-o"])).is_err());
    }
}

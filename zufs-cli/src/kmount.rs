//! `zufs mount -o transport=kernel`: mounts through the zufs kernel module
//! (`kmod-shim/module`) instead of the FUSE bridge. zusd mounts the device as for any mount
//! (control socket, `Relay::mount`); then this process calls mount(2) with type `zufs` and the
//! options the module's `fs_context` takes (`mount_id`, `root`, `attr_timeout_ms`,
//! `entry_timeout_ms`). Every VFS op then reaches zusd's K-ZTs through `/dev/zufs`: no bridge
//! process. `zufs umount` unmounts the kernel mount and then the zusd mount.
//!
//! DAX: when zusd's device is a DAX-capable block device (`/dev/pmem0`; zusd then maps it
//! through the module, which holds it), the data also gets `dax=DEVICE`, and the kernel copies
//! file data straight between user memory and pmem (`-o dax=never` or `nodax`: through the
//! slot windows; `-o dax`: DAX or fail).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cli::{DaxChoice, Env, MountArgs, MountOptions, MountRecord};

/// The module's misc device.
pub const DEV_ZUFS: &str = "/dev/zufs";
/// The module's filesystem type.
pub const FS_TYPE: &str = "zufs";
/// `transport` of a kernel mount's record (what `zufs status` shows).
pub const TRANSPORT: &str = "kernel";
/// The module's largest attribute/entry timeout (super.c `ZUFS_MAX_TIMEOUT_MS`).
const MAX_TIMEOUT_MS: u128 = 3600 * 1000;

/// The module's mount data for zusd mount `mount_id` with root inode `root`.
#[must_use]
pub fn mount_data(mount_id: u32, root: u64, attr_timeout: Duration, entry_timeout: Duration) -> String {
    let ms = |d: Duration| d.as_millis().min(MAX_TIMEOUT_MS);
    format!(
        "mount_id={mount_id},root={root},attr_timeout_ms={},entry_timeout_ms={}",
        ms(attr_timeout),
        ms(entry_timeout)
    )
}

/// Whether `path` is a block device whose queue does DAX (`/sys/dev/block/M:m/queue/dax` is
/// 1): the pmem the module can hold for zusd and mount with `dax=`. `Err` says why not.
pub fn dax_capable(path: &str) -> std::result::Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    if path.is_empty() {
        return Err("no device".into());
    }
    let md = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    if !md.file_type().is_block_device() {
        return Err(format!("{path} is not a block device"));
    }
    let rdev = md.rdev();
    let q = format!("/sys/dev/block/{}:{}/queue/dax", libc::major(rdev), libc::minor(rdev));
    match std::fs::read_to_string(&q) {
        Ok(v) if v.trim() == "1" => Ok(()),
        Ok(_) => Err(format!("{path} does not do DAX ({q} is 0)")),
        Err(e) => Err(format!("{path}: {q}: {e}")),
    }
}

/// The module's mount data for `dax` on `device`: `Some(device)` to pass as `dax=`.
///
/// # Errors
/// `dax=always` on a device that does no DAX.
fn dax_device(dax: DaxChoice, device: &str) -> Result<Option<String>> {
    match (dax, dax_capable(device)) {
        (DaxChoice::Never, _) | (DaxChoice::Auto, Err(_)) => Ok(None),
        (DaxChoice::Auto | DaxChoice::Always, Ok(())) => Ok(Some(device.to_owned())),
        (DaxChoice::Always, Err(why)) => bail!("transport=kernel,dax: {why}"),
    }
}

/// The module is loaded: `/dev/zufs` exists and the `zufs` type is registered.
///
/// # Errors
/// What is missing, and what to do about it.
pub fn check_module() -> Result<()> {
    if !Path::new(DEV_ZUFS).exists() {
        bail!(
            "transport=kernel: {DEV_ZUFS} is missing: the zufs kernel module is not loaded \
             (`modprobe zufs`, or `insmod zufs.ko` built from kmod-shim/module), then start zusd (or \
             restart it: it attaches to the module at start; `zusd --kernel` fails when it cannot)"
        );
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.lines().any(|l| l.split_whitespace().last() == Some(FS_TYPE)) {
        bail!(
            "transport=kernel: {DEV_ZUFS} exists but no `{FS_TYPE}` filesystem type is registered (/proc/filesystems)"
        );
    }
    Ok(())
}

/// The number of zusd's K-ZTs (threads `kzt<cpu>`), or `None` where its threads cannot be seen
/// (another pid namespace).
#[must_use]
pub fn zusd_kzts(pid: u32) -> Option<usize> {
    let rd = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        rd.filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim_end().strip_prefix("kzt").is_some_and(|n| n.parse::<u32>().is_ok()))
            .count(),
    )
}

fn no_kzts(pid: u32) -> String {
    format!(
        "transport=kernel: zusd (pid {pid}) has no K-ZTs attached to {DEV_ZUFS}, so nothing would serve \
         the kernel mount: it was started before the module was loaded, with --kernel=off, or with a \
         simulated topology. Restart it after `modprobe zufs` (`zusd --kernel` fails at start instead \
         of running without the module)"
    )
}

/// mount(2) of type `zufs`.
pub(crate) fn sys_mount(source: &str, target: &Path, flags: libc::c_ulong, data: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let inval = |_| std::io::Error::from_raw_os_error(libc::EINVAL);
    let src = std::ffi::CString::new(source).map_err(inval)?;
    let tgt = std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(inval)?;
    let fst = std::ffi::CString::new(FS_TYPE).map_err(inval)?;
    let dat = std::ffi::CString::new(data).map_err(inval)?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fst.as_ptr(), flags, dat.as_ptr().cast()) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// A module mount of `device` that a plain umount(2) ended (busybox's umount, `umount -i`: no
/// `umount.zufs`) left its zusd mount and its record: the record names a `zufs` mount that is
/// gone, and zusd still has that mount of the device. Unmount it at zusd (the plugin flushes),
/// so that the device mounts again.
fn end_orphans(env: &Env, r: &zus_client::Relay, st: &zus_channel::control::StatusInfo, device: &str) {
    let canon = |d: &str| std::fs::canonicalize(d).ok();
    let Some(dev) = canon(device) else { return };
    for rec in crate::cli::all_records(env) {
        if rec.transport != TRANSPORT || canon(&rec.device).as_ref() != Some(&dev) || record_alive(&rec) {
            continue;
        }
        if st.mounts.iter().any(|z| z.mount_id == rec.mount_id && z.device == rec.device && z.fs_type == rec.fs_type) {
            tracing::info!(
                "{}: unmounting zusd mount {} left by a plain umount of {}",
                device,
                rec.mount_id,
                rec.mountpoint
            );
            let _ = r.unmount(rec.mount_id);
        }
        crate::cli::remove_record(env, &rec.mountpoint);
    }
}

/// `zufs mount -o transport=kernel` at the (checked, absolute) mount point `mp`: returns the
/// zusd mount id. Nothing is left mounted on failure.
///
/// # Errors
/// No module, zusd unreachable or not serving the module, zusd's mount or mount(2) failed.
pub fn mount(env: &Env, a: &MountArgs, mp: &Path, mo: &MountOptions) -> Result<u32> {
    if mo.serve != crate::cli::ServeChoice::Channel {
        bail!("transport=kernel: serve=zusd is a FUSE bridge mode");
    }
    check_module()?;
    let r = crate::cli::connect(env, !a.no_start)?;
    let st = r.status().context("zusd status")?;
    if zusd_kzts(st.pid) == Some(0) {
        bail!("{}", no_kzts(st.pid));
    }
    let device = if a.device == "none" { String::new() } else { a.device.clone() };
    end_orphans(env, &r, &st, &device);
    let info = r.mount(&a.fs_type, &device, &mo.server).with_context(|| format!("mount {}", a.fs_type))?;
    let mut data = mount_data(info.mount_id, info.root, mo.fuse.attr_timeout, mo.fuse.entry_timeout);
    let dax = match dax_device(mo.dax, &info.device) {
        Ok(d) => d,
        Err(e) => {
            let _ = r.unmount(info.mount_id);
            return Err(e);
        }
    };
    if let Some(d) = &dax {
        if d.contains(',') {
            let _ = r.unmount(info.mount_id);
            bail!("transport=kernel,dax: the device path {d:?} has a comma, which the mount data cannot carry");
        }
        data.push_str(",dax=");
        data.push_str(d);
    }
    // The per-mount flags given (nosuid, nodev, noexec, the atime policy: the kernel applies
    // it to DAX reads, which never reach zusd, and relatime is its default too).
    let opts: Vec<String> = a.options.split(',').map(|o| o.trim().to_owned()).collect();
    let mut flags = crate::helper::mount_flags(0, opts.iter());
    if mo.fuse.read_only {
        flags |= libc::MS_RDONLY;
    }
    if mo.fuse.sync {
        flags |= libc::MS_SYNCHRONOUS;
    }
    let source = if info.device.is_empty() { a.fs_type.clone() } else { info.device.clone() };
    if let Err(e) = sys_mount(&source, mp, flags, &data) {
        let _ = r.unmount(info.mount_id);
        let why = match e.raw_os_error() {
            Some(libc::ENODEV) => format!("{e}: the kernel has no `{FS_TYPE}` filesystem type (`modprobe zufs`)"),
            // The module fails every op with EIO when no zusd session serves it.
            Some(libc::EIO) => match zusd_kzts(st.pid) {
                Some(0) => no_kzts(st.pid),
                _ => format!("{e}: the module could not reach zusd (no session on {DEV_ZUFS}? see zusd's log)"),
            },
            Some(libc::EPERM) => format!("{e}: mounting through the kernel module needs root (CAP_SYS_ADMIN)"),
            Some(libc::EINVAL) if dax.is_some() => format!(
                "{e}: the module refused dax= (it holds the device only while zusd maps it through \
                 /dev/zufs: see the kernel log; -o dax=never mounts without DAX)"
            ),
            _ => e.to_string(),
        };
        bail!("mount -t {FS_TYPE} -o {data} {source} {}: {why}", mp.display());
    }
    let rec = MountRecord {
        mountpoint: mp.display().to_string(),
        pid: 0,
        mount_id: info.mount_id,
        socket: env.socket.display().to_string(),
        fs_type: a.fs_type.clone(),
        device: info.device.clone(),
        options: a.options.clone(),
        transport: TRANSPORT.to_owned(),
        served_per_cpu: Vec::new(),
        serve: String::new(),
    };
    crate::cli::write_record(env, &rec);
    tracing::info!(
        "mounted {} ({}) on {} as zusd mount {} via the kernel module{}",
        a.fs_type,
        source,
        mp.display(),
        info.mount_id,
        if dax.is_some() { " with DAX" } else { "" }
    );
    Ok(info.mount_id)
}

/// The `mount_id=` of the `zufs` mount at `mountpoint` (from `/proc/self/mountinfo`).
#[must_use]
pub fn mounted_id(mountpoint: &str) -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    s.lines().rev().find_map(|l| {
        let (a, b) = l.split_once(" - ")?;
        if crate::cli::unescape_mountinfo(a.split(' ').nth(4)?) != mountpoint {
            return None;
        }
        let mut bi = b.split(' ');
        if bi.next()? != FS_TYPE {
            return None;
        }
        bi.nth(1)?.split(',').find_map(|o| o.strip_prefix("mount_id=")?.parse().ok())
    })
}

/// A kernel mount's record is current: its mount point still has a `zufs` mount of that id.
#[must_use]
pub fn record_alive(rec: &MountRecord) -> bool {
    rec.transport == TRANSPORT && mounted_id(&rec.mountpoint) == Some(rec.mount_id)
}

/// `zufs umount` of a `zufs` (kernel module) mount: the kernel mount, then zusd's (the plugin
/// flushes). With `lazy` the kernel mount is detached; zusd's mount goes at once, so files still
/// open on the detached mount get errors from then on.
///
/// # Errors
/// Busy, or unmounting failed.
pub fn umount(env: &Env, mp: &Path, rec: Option<MountRecord>, lazy: bool) -> Result<()> {
    let s = mp.display().to_string();
    let mount_id = rec.as_ref().map(|r| r.mount_id).or_else(|| mounted_id(&s));
    match crate::cli::umount2(mp, if lazy { libc::MNT_DETACH } else { 0 }) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            bail!("{s}: target is busy (files open or a process inside); `zufs umount -l` detaches it lazily")
        }
        Err(e) => bail!("unmounting {s}: {e}"),
    }
    crate::cli::remove_record(env, &s);
    let Some(mount_id) = mount_id else {
        bail!("{s} is unmounted, but its zusd mount id is unknown: unmount it at zusd by hand");
    };
    let env2 = rec.as_ref().map_or_else(|| env.clone(), |r| Env { socket: r.socket.clone().into(), ..env.clone() });
    let r = match zus_client::Relay::connect(&env2.socket, "zufs") {
        Ok(r) => r,
        // zusd is gone (killed, or stopped): its mounts went with it, nothing to flush.
        Err(zus_client::RelayError::Connect { source, .. })
            if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) =>
        {
            eprintln!(
                "zufs: {s} unmounted; zusd is not running at {}, so no zusd mount is left",
                env2.socket.display()
            );
            return Ok(());
        }
        Err(e) => bail!("{s} is unmounted, but zusd ({}) is unreachable: {e}", env2.socket.display()),
    };
    let st = r.status()?;
    let Some(zm) = st.mounts.iter().find(|z| {
        z.mount_id == mount_id && rec.as_ref().is_none_or(|r| r.device == z.device && r.fs_type == z.fs_type)
    }) else {
        // zusd restarted, or its mount went already: nothing to flush there.
        return Ok(());
    };
    r.unmount(zm.mount_id).with_context(|| format!("{s} is unmounted; unmounting zusd mount {}", zm.mount_id))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mount_data_names_the_zusd_mount_and_caps_the_timeouts() {
        assert_eq!(
            mount_data(3, 1, Duration::from_millis(1500), Duration::ZERO),
            "mount_id=3,root=1,attr_timeout_ms=1500,entry_timeout_ms=0"
        );
        assert_eq!(
            mount_data(1, 2, Duration::from_secs(86400), Duration::from_secs(1)),
            "mount_id=1,root=2,attr_timeout_ms=3600000,entry_timeout_ms=1000"
        );
    }

    #[test]
    fn test_transport_kernel_is_parsed_and_its_options_reach_the_mount() {
        let m = crate::cli::parse_mount_options("transport=kernel,ro,attr_timeout=0,inodes=9", "x").unwrap();
        assert_eq!(m.transport, crate::cli::TransportChoice::Kernel);
        assert!(m.fuse.read_only);
        assert_eq!(m.server, "ro,inodes=9");
        assert_eq!(
            mount_data(1, 1, m.fuse.attr_timeout, m.fuse.entry_timeout),
            "mount_id=1,root=1,attr_timeout_ms=0,entry_timeout_ms=60000"
        );
    }

    #[test]
    fn test_dax_option_is_parsed_and_refused_off_the_kernel_transport() {
        let p = |o: &str| crate::cli::parse_mount_options(o, "x").map(|m| m.dax);
        assert_eq!(p("transport=kernel").unwrap(), DaxChoice::Auto);
        assert_eq!(p("transport=kernel,dax").unwrap(), DaxChoice::Always);
        assert_eq!(p("transport=kernel,dax=always").unwrap(), DaxChoice::Always);
        assert_eq!(p("transport=kernel,dax=never").unwrap(), DaxChoice::Never);
        assert_eq!(p("transport=kernel,nodax").unwrap(), DaxChoice::Never);
        assert_eq!(p("transport=kernel,dax=auto").unwrap(), DaxChoice::Auto);
        assert!(p("transport=kernel,dax=maybe").is_err());
        assert!(p("transport=classic,dax").is_err());
        assert!(p("nodax").is_err());
        let m = crate::cli::parse_mount_options("transport=kernel,nodax,inodes=9", "x").unwrap();
        assert_eq!(m.server, "inodes=9", "dax options are not the plugin's");
    }

    #[test]
    fn test_dax_is_passed_only_for_a_dax_block_device() {
        // A regular file, a missing path and a non-DAX device get no dax= (auto) and an error
        // (always); never never asks.
        let f = std::env::temp_dir().join(format!("zufs-kmount-dax-{}", std::process::id()));
        std::fs::write(&f, b"x").unwrap();
        let fs = f.display().to_string();
        for dev in [fs.as_str(), "/no/such/device", "/dev/null", ""] {
            assert_eq!(dax_device(DaxChoice::Auto, dev).unwrap(), None, "{dev}");
            assert!(dax_device(DaxChoice::Always, dev).is_err(), "{dev}");
            assert_eq!(dax_device(DaxChoice::Never, dev).unwrap(), None, "{dev}");
        }
        assert!(dax_capable(&fs).unwrap_err().contains("not a block device"));
        std::fs::remove_file(&f).unwrap();
    }

    #[test]
    fn test_kzts_are_counted_from_thread_names() {
        // This test process has no kzt threads; a missing process cannot be seen.
        assert_eq!(zusd_kzts(std::process::id()), Some(0));
        assert_eq!(zusd_kzts(u32::MAX), None);
        let h = std::thread::Builder::new()
            .name("kzt0".into())
            .spawn(|| std::thread::sleep(Duration::from_millis(500)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(zusd_kzts(std::process::id()), Some(1));
        h.join().unwrap();
    }

    #[test]
    fn test_mounted_id_reads_no_id_of_a_non_zufs_mount() {
        assert_eq!(mounted_id("/"), None);
        assert_eq!(mounted_id("/no/such/mount"), None);
    }
}

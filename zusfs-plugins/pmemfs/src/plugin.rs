//! The zusd plugin: a thin adapter from [`zus_plugin::FileSystem`] to [`Fs`] over the
//! server's device mapping. Safe code only; the export macro supplies the C ABI.

use zus_api::Errno;
use zus_api::ops::{Attr as ApiAttr, EXTENT_HOLE, Extent, MAX_MAP_EXTENTS, SetattrReq, StatfsReply, io_flags, setattr};
use zus_plugin::{Caller, DataSink, DataSource, Device, DirSink, FileSystem, PluginError, WriteDone};
use zus_pmem::MappedPmem;

use crate::error::FsError;
use crate::fs::{AtimePolicy, Attr, Fs, MkfsOptions, SetAttr, TimeSpec, format, fsck};
use crate::layout::ROOT_INO;

/// pmemfs as a zusd plugin.
#[derive(Debug)]
pub struct PmemFs {
    fs: Fs<MappedPmem>,
}

fn errno(e: FsError) -> Errno {
    Errno(e.errno())
}

fn plugin_err(e: FsError) -> PluginError {
    PluginError::new(Errno(e.errno()), e.to_string())
}

fn api_attr(a: Attr) -> ApiAttr {
    ApiAttr {
        ino: a.ino,
        generation: a.generation,
        size: a.size,
        blocks: a.blocks,
        atime_ns: a.atime,
        mtime_ns: a.mtime,
        ctime_ns: a.ctime,
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: u32::try_from(a.rdev).unwrap_or(u32::MAX),
        blksize: a.blksize,
    }
}

/// mkfs options: comma-separated `inodes=N`, `shards=N`.
fn parse_mkfs(options: &str) -> Result<MkfsOptions, PluginError> {
    let mut o = MkfsOptions::default();
    for kv in options.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let bad = || PluginError::new(Errno::EINVAL, format!("bad pmemfs mkfs option {kv:?}"));
        match k {
            "inodes" => o.inodes = Some(v.parse().map_err(|_| bad())?),
            "shards" => o.shards = Some(v.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        }
    }
    Ok(o)
}

impl FileSystem for PmemFs {
    const NAME: &'static str = "pmemfs";

    fn mkfs(dev: &Device, options: &str) -> Result<(), PluginError> {
        format(&dev.pmem, &parse_mkfs(options)?).map_err(plugin_err)
    }

    fn fsck(dev: &Device) -> Result<(u64, String), PluginError> {
        let r = fsck(&dev.pmem).map_err(plugin_err)?;
        Ok((r.errors.len() as u64, r.to_string()))
    }

    fn mount(dev: Option<Device>, options: &str) -> Result<Self, PluginError> {
        let dev = dev.ok_or_else(|| PluginError::new(Errno::ENODEV, "pmemfs needs a device"))?;
        // A read-only mount still replays the journal and reclaims orphans (as ext4 does without
        // `norecovery`): the device must be consistent before it is read. After that zusd refuses
        // every mutating op with EROFS before it reaches us, and no read path writes pmem (no
        // atime updates).
        let mut atime = AtimePolicy::Relatime;
        let mut ro = false;
        for o in options.split(',').map(str::trim) {
            match o {
                "relatime" => atime = AtimePolicy::Relatime,
                "strictatime" => atime = AtimePolicy::Strict,
                "noatime" => atime = AtimePolicy::NoAtime,
                "ro" => ro = true,
                "rw" => ro = false,
                _ => {}
            }
        }
        let fs = Fs::mount(dev.pmem).map_err(plugin_err)?;
        fs.set_atime_policy(if ro { AtimePolicy::NoAtime } else { atime });
        Ok(PmemFs { fs })
    }

    fn root(&self) -> u64 {
        ROOT_INO
    }

    fn unmount(&self) -> Result<(), Errno> {
        // Leave an empty journal (the log is durable anyway: a mount would replay it).
        self.fs.checkpoint().map_err(errno)?;
        self.fs.sync().map_err(errno)
    }

    fn statfs(&self) -> Result<StatfsReply, Errno> {
        let s = self.fs.statfs();
        Ok(StatfsReply {
            blocks: s.blocks,
            bfree: s.bfree,
            bavail: s.bavail,
            files: s.files,
            ffree: s.ffree,
            bsize: s.bsize,
            namelen: s.namelen,
            frsize: s.bsize,
            reserved: 0,
        })
    }

    fn sync(&self) -> Result<(), Errno> {
        self.fs.sync().map_err(errno)
    }

    fn lookup(&self, _c: &Caller, dir: u64, name: &[u8]) -> Result<ApiAttr, Errno> {
        self.fs.lookup(dir, name).map(api_attr).map_err(errno)
    }

    fn getattr(&self, ino: u64) -> Result<ApiAttr, Errno> {
        self.fs.getattr(ino).map(api_attr).map_err(errno)
    }

    fn setattr(&self, _c: &Caller, req: &SetattrReq) -> Result<ApiAttr, Errno> {
        let v = req.valid;
        let time = |set: u32, now: u32, ns: i64| {
            if v & now != 0 {
                Some(TimeSpec::Now)
            } else if v & set != 0 {
                Some(TimeSpec::Ns(ns))
            } else {
                None
            }
        };
        let sa = SetAttr {
            mode: (v & setattr::MODE != 0).then_some(req.mode),
            uid: (v & setattr::UID != 0).then_some(req.uid),
            gid: (v & setattr::GID != 0).then_some(req.gid),
            size: (v & setattr::SIZE != 0).then_some(req.size),
            atime: time(setattr::ATIME, setattr::ATIME_NOW, req.atime_ns),
            mtime: time(setattr::MTIME, setattr::MTIME_NOW, req.mtime_ns),
            ctime: (v & setattr::CTIME != 0).then_some(req.ctime_ns),
        };
        self.fs.setattr(req.ino, &sa).map(api_attr).map_err(errno)
    }

    fn create(&self, c: &Caller, dir: u64, name: &[u8], mode: u32, _flags: u32) -> Result<ApiAttr, Errno> {
        self.fs.create(dir, name, mode, c.uid, c.gid).map(api_attr).map_err(errno)
    }

    fn mknod(&self, c: &Caller, dir: u64, name: &[u8], mode: u32, rdev: u32) -> Result<ApiAttr, Errno> {
        self.fs.mknod(dir, name, mode, u64::from(rdev), c.uid, c.gid).map(api_attr).map_err(errno)
    }

    fn mkdir(&self, c: &Caller, dir: u64, name: &[u8], mode: u32) -> Result<ApiAttr, Errno> {
        self.fs.mkdir(dir, name, mode, c.uid, c.gid).map(api_attr).map_err(errno)
    }

    fn unlink(&self, _c: &Caller, dir: u64, name: &[u8]) -> Result<(), Errno> {
        self.fs.unlink(dir, name).map_err(errno)
    }

    fn rmdir(&self, _c: &Caller, dir: u64, name: &[u8]) -> Result<(), Errno> {
        self.fs.rmdir(dir, name).map_err(errno)
    }

    fn rename(&self, _c: &Caller, od: u64, on: &[u8], nd: u64, nn: &[u8], flags: u32) -> Result<(), Errno> {
        self.fs.rename(od, on, nd, nn, flags).map_err(errno)
    }

    fn link(&self, _c: &Caller, ino: u64, new_dir: u64, name: &[u8]) -> Result<ApiAttr, Errno> {
        self.fs.link(ino, new_dir, name).map(api_attr).map_err(errno)
    }

    fn symlink(&self, c: &Caller, dir: u64, name: &[u8], target: &[u8]) -> Result<ApiAttr, Errno> {
        self.fs.symlink(dir, name, target, c.uid, c.gid).map(api_attr).map_err(errno)
    }

    fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        self.fs.readlink(ino).map_err(errno)
    }

    fn readdir(&self, dir: u64, cookie: u64, out: &mut DirSink) -> Result<(), Errno> {
        let mut cookie = cookie;
        loop {
            let ents = self.fs.readdir(dir, cookie, 128).map_err(errno)?;
            if ents.is_empty() {
                return Ok(());
            }
            for e in ents {
                if !out.push(e.ino, u32::from(e.dtype), &e.name, e.next) {
                    return Ok(());
                }
                cookie = e.next;
            }
        }
    }

    fn open(&self, _c: &Caller, ino: u64, _flags: u32) -> Result<u64, Errno> {
        self.fs.open(ino).map(|_| 0).map_err(errno)
    }

    fn release(&self, ino: u64, _fh: u64) -> Result<(), Errno> {
        self.fs.release(ino).map_err(errno)
    }

    fn read(&self, ino: u64, _fh: u64, offset: u64, len: u64, dst: &dyn DataSink) -> Result<u64, Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::EINVAL)?.min(dst.len());
        self.fs.read(ino, offset, dst, 0, len).map(|n| n as u64).map_err(errno)
    }

    fn write(
        &self,
        _c: &Caller,
        ino: u64,
        _fh: u64,
        offset: u64,
        len: u64,
        flags: u32,
        src: &dyn DataSource,
    ) -> Result<WriteDone, Errno> {
        let len = usize::try_from(len).map_err(|_| Errno::EINVAL)?;
        let sync = flags & (io_flags::SYNC | io_flags::DIRECT) != 0;
        if flags & io_flags::KILL_SUIDGID != 0 {
            self.fs.kill_suidgid(ino).map_err(errno)?;
        }
        if flags & io_flags::APPEND != 0 {
            let (off, n, size) = self.fs.write_append(ino, src, 0, len, sync).map_err(errno)?;
            return Ok(WriteDone { bytes: n as u64, offset: off, size });
        }
        let n = self.fs.write(ino, offset, src, 0, len, sync).map_err(errno)?;
        let size = self.fs.getattr(ino).map_err(errno)?.size;
        Ok(WriteDone { bytes: n as u64, offset, size })
    }

    fn fsync(&self, ino: u64, _fh: u64, datasync: bool) -> Result<(), Errno> {
        self.fs.fsync(ino, datasync).map_err(errno)
    }

    fn copy_file_range(
        &self,
        c: &Caller,
        ino_in: u64,
        _fh_in: u64,
        off_in: u64,
        ino_out: u64,
        _fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u64, Errno> {
        if c.uid != 0 {
            // As a write by a user without CAP_FSETID (the kernel leaves it to us).
            self.fs.kill_suidgid(ino_out).map_err(errno)?;
        }
        self.fs.copy_range(ino_in, off_in, ino_out, off_out, len, false).map_err(errno)
    }

    fn fallocate(&self, _c: &Caller, ino: u64, mode: u32, offset: u64, len: u64) -> Result<(), Errno> {
        self.fs.fallocate(ino, mode, offset, len).map_err(errno)
    }

    fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
        self.fs.getxattr(ino, name).map_err(errno)
    }

    fn setxattr(&self, _c: &Caller, ino: u64, name: &[u8], value: &[u8], flags: u32) -> Result<(), Errno> {
        self.fs.setxattr(ino, name, value, flags).map_err(errno)
    }

    fn listxattr(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        let mut out = Vec::new();
        for n in self.fs.listxattr(ino).map_err(errno)? {
            out.extend_from_slice(&n);
            out.push(0);
        }
        Ok(out)
    }

    fn removexattr(&self, _c: &Caller, ino: u64, name: &[u8]) -> Result<(), Errno> {
        self.fs.removexattr(ino, name).map_err(errno)
    }

    fn map(&self, ino: u64, offset: u64, len: u64, write: bool) -> Result<(Vec<Extent>, u64), Errno> {
        let ext = self.fs.map(ino, offset, len, write).map_err(errno)?;
        let out = ext
            .into_iter()
            .take(MAX_MAP_EXTENTS)
            .map(|e| Extent { file_offset: e.file_off, dev_offset: e.dev_off.unwrap_or(EXTENT_HOLE), len: e.len })
            .collect();
        let size = self.fs.getattr(ino).map_err(errno)?.size;
        Ok((out, size))
    }

    fn map_done(&self, ino: u64, end: u64, sync: bool) -> Result<(), Errno> {
        self.fs.map_done(ino, end).map_err(errno)?;
        if sync {
            self.fs.fsync(ino, true).map_err(errno)?;
        }
        Ok(())
    }
}

zus_plugin::export_plugin!(PmemFs);

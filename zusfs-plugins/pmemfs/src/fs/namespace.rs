//! Namespace operations: lookup, create/mknod/mkdir/symlink, readlink, link, unlink/rmdir,
//! rename, readdir, open/release, and the reclaim of an inode whose last link and handle are gone.

use std::collections::BTreeMap;

use zus_pmem::Persist;

use super::{Attr, FREE_BATCH, Fs, Op, S_ISGID, WGuard, attr_of, node_mut, now_ns};
use crate::error::{FsError, Result};
use crate::inode::{DEnt, Inode};
use crate::layout::{
    BLOCK, DSLOTS_PER_BLOCK, DiskInode, IFLAG_INLINE_LINK, INLINE_AREA, INLINE_SLOTS, NAME_MAX, ROOT_INO, S_IFBLK,
    S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFMT, S_IFREG, S_IFSOCK, dirent_slots, dtype_of,
};

/// RENAME_NOREPLACE (as in linux/fs.h).
pub const RENAME_NOREPLACE: u32 = 1;
/// RENAME_EXCHANGE.
pub const RENAME_EXCHANGE: u32 = 2;
/// Most hard links to one file.
const LINK_MAX: u32 = 65_000;

/// A directory entry from [`Fs::readdir`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// inode
    pub ino: u64,
    /// name
    pub name: Vec<u8>,
    /// d_type (DT_DIR = 4, DT_REG = 8, ...)
    pub dtype: u8,
    /// cookie to pass to readdir to continue after this entry
    pub next: u64,
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > NAME_MAX {
        return Err(FsError::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) || name == b"." || name == b".." {
        return Err(FsError::Invalid("bad name".into()));
    }
    Ok(())
}

/// `dir` is a live directory (not unlinked) without an entry `name`: a new name may go there.
fn check_new_name(dir: &Inode, name: &[u8]) -> Result<()> {
    let di = dir.dir.as_ref().ok_or(FsError::NotDir)?;
    if dir.d.nlink == 0 {
        return Err(FsError::NotFound);
    }
    if di.names.contains_key(name) {
        return Err(FsError::Exists);
    }
    Ok(())
}

impl<P: Persist> Fs<P> {
    /// Look `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        let ino = {
            let g = self.rl(parent)?;
            let d = g.as_ref().ok_or(FsError::NotFound)?;
            if name == b"." {
                parent
            } else if name == b".." {
                if d.is_dir() { d.d.parent } else { return Err(FsError::NotDir) }
            } else {
                if name.len() > NAME_MAX {
                    return Err(FsError::NameTooLong);
                }
                d.dir.as_ref().ok_or(FsError::NotDir)?.names.get(name).ok_or(FsError::NotFound)?.ino
            }
        };
        self.getattr(ino)
    }

    /// Insert `name -> ino` into directory `dir` (allocating a directory block if needed).
    /// Fails only before changing anything.
    fn dir_insert(&self, op: &mut Op<'_, P>, dir: &mut Inode, name: &[u8], ino: u64, dtype: u8) -> Result<()> {
        let k = dirent_slots(name.len());
        let di = dir.dir.as_ref().ok_or(FsError::NotDir)?;
        let pos = match di.find_free(k) {
            Some((b, s)) => u32::try_from(b).map_err(|_| FsError::NoSpace)? * DSLOTS_PER_BLOCK + s,
            None => {
                let lb = di.used.len() as u64;
                if lb >= u64::from(u32::MAX / DSLOTS_PER_BLOCK) {
                    return Err(FsError::NoSpace);
                }
                let last = if lb > 0 { dir.map(lb - 1).map(|(p, _)| p) } else { None };
                let (p, _) = op.alloc(1, last.map(|p| p + 1))?;
                // A slot may be needed (the block might not merge into the last extent).
                if !dir.has_free_slot() {
                    let (c, _) = op.alloc(1, None)?;
                    dir.add_chain(c, &mut op.txn);
                }
                op.txn.zero(p * BLOCK, BLOCK);
                dir.ext_insert(lb, p, 1, &mut op.txn)?;
                dir.d.size += BLOCK;
                dir.dirty = true;
                let di = dir.dir.as_mut().ok_or(FsError::NotDir)?;
                di.used.push(0);
                di.hint = di.used.len() - 1;
                u32::try_from(lb).map_err(|_| FsError::NoSpace)? * DSLOTS_PER_BLOCK
            }
        };
        dir.dir_put(pos, name, ino, dtype, &mut op.txn)
    }

    /// Give back the empty blocks at the end of directory `dir` (after an entry was removed), in
    /// the same transaction: a directory emptied of many entries shrinks to what its remaining
    /// entries need (an empty one to no blocks). Bounded like a truncate (`FREE_BATCH` extents
    /// per op; a later removal continues).
    fn dir_shrink(&self, op: &mut Op<'_, P>, dir: &mut Inode) -> Result<()> {
        let di = dir.dir.as_ref().ok_or(FsError::NotDir)?;
        let mut keep = di.used.len();
        while keep > 0 && di.used[keep - 1] == 0 {
            keep -= 1;
        }
        if keep == di.used.len() {
            return Ok(());
        }
        let mut freed = Vec::new();
        let low = dir.ext_remove(keep as u64, u64::MAX, FREE_BATCH, &mut op.txn, &mut freed)?;
        for (s, l) in freed {
            op.free(s, l);
        }
        if dir.ext.is_empty() && !dir.chain.is_empty() {
            // No extent left: the chain blocks go too (the inode is as a fresh directory's).
            for &c in &dir.chain {
                op.free(c, 1);
            }
            dir.chain.clear();
            dir.d.chain = 0;
            dir.free_slots = (0..u32::try_from(INLINE_SLOTS).unwrap_or(8)).rev().collect();
        }
        dir.d.size = low * BLOCK;
        dir.dirty = true;
        let di = dir.dir.as_mut().ok_or(FsError::NotDir)?;
        di.used.truncate(usize::try_from(low).unwrap_or(usize::MAX));
        if di.hint >= di.used.len() {
            di.hint = 0;
        }
        Ok(())
    }

    /// Create a node of any type (the common part of create/mknod/mkdir/symlink).
    fn make_node(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
        ids: (u32, u32),
        link: Option<&[u8]>,
    ) -> Result<Attr> {
        self.live()?;
        check_name(name)?;
        let _ns = self.ns_read();
        let mut pg = self.wl(parent)?;
        let dir = node_mut(&mut pg)?;
        check_new_name(dir, name)?;
        let is_dir = mode & S_IFMT == S_IFDIR;
        if is_dir && dir.d.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        // A setgid directory gives its group to what is made in it, and its setgid bit to
        // subdirectories (the kernel already dropped S_ISGID from a file's mode when its maker
        // is neither in that group nor privileged).
        let (mut mode, mut ids) = (mode, ids);
        if dir.d.mode & S_ISGID != 0 {
            ids.1 = dir.d.gid;
            if is_dir {
                mode |= S_ISGID;
            }
        }
        let now = now_ns();
        let mut op = Op::new(self);
        let (ino, gen_) = op.new_ino()?;
        let d = DiskInode {
            mode,
            nlink: if is_dir { 2 } else { 1 },
            uid: ids.0,
            gid: ids.1,
            rdev,
            atime: now,
            mtime: now,
            ctime: now,
            generation: gen_ + 1,
            parent: if is_dir { parent } else { 0 },
            ..DiskInode::free(0)
        };
        let mut node = Inode::new(d);
        node.dirty = true;
        if let Some(t) = link {
            node.d.size = t.len() as u64;
            if t.len() <= INLINE_AREA {
                node.d.flags = IFLAG_INLINE_LINK;
                node.d.area[..t.len()].copy_from_slice(t);
                node.free_slots.clear();
            } else {
                let (b, _) = op.alloc(1, None)?;
                op.txn.write(b * BLOCK, t);
                node.ext_insert(0, b, 1, &mut op.txn)?;
            }
        }
        self.dir_insert(&mut op, dir, name, ino, dtype_of(mode))?;
        if is_dir {
            dir.d.nlink += 1;
        }
        dir.d.mtime = now;
        dir.d.ctime = now;
        dir.dirty = true;
        dir.flush_record(&self.geo, parent, &mut op.txn);
        node.flush_record(&self.geo, ino, &mut op.txn);
        op.commit()?;
        let a = attr_of(ino, &node);
        *self.wl(ino)? = Some(Box::new(node));
        Ok(a)
    }

    /// Create a regular file (`mode` permission bits).
    pub fn create(&self, parent: u64, name: &[u8], mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        self.make_node(parent, name, S_IFREG | (mode & 0o7777), 0, (uid, gid), None)
    }

    /// Create a node; `mode` includes the type (regular, char/block device, fifo, socket).
    pub fn mknod(&self, parent: u64, name: &[u8], mode: u32, rdev: u64, uid: u32, gid: u32) -> Result<Attr> {
        match mode & S_IFMT {
            S_IFREG | S_IFCHR | S_IFBLK | S_IFIFO | S_IFSOCK => {}
            0 => return self.create(parent, name, mode, uid, gid),
            _ => return Err(FsError::Invalid("mknod type".into())),
        }
        self.make_node(parent, name, mode, rdev, (uid, gid), None)
    }

    /// Create a directory.
    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, uid: u32, gid: u32) -> Result<Attr> {
        self.make_node(parent, name, S_IFDIR | (mode & 0o7777), 0, (uid, gid), None)
    }

    /// Create a symlink (targets up to 128 bytes are stored inline in the inode).
    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<Attr> {
        if target.is_empty() || target.len() >= BLOCK as usize {
            return Err(if target.is_empty() { FsError::NotFound } else { FsError::NameTooLong });
        }
        self.make_node(parent, name, S_IFLNK | 0o777, 0, (uid, gid), Some(target))
    }

    /// Read a symlink.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let g = self.rl(ino)?;
        let n = g.as_ref().ok_or(FsError::NotFound)?;
        if n.kind() != S_IFLNK {
            return Err(FsError::Invalid("not a symlink".into()));
        }
        let len = usize::try_from(n.d.size).map_err(|_| FsError::corrupt("symlink size"))?;
        if n.inline_link() {
            return n.d.area.get(..len).map(<[u8]>::to_vec).ok_or_else(|| FsError::corrupt("symlink size"));
        }
        let (p, _) = n.map(0).ok_or_else(|| FsError::corrupt("symlink block"))?;
        let mut v = vec![0u8; len];
        self.pm.read(p * BLOCK, &mut v)?;
        Ok(v)
    }

    /// Hard link `ino` as `name` in `parent`.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Attr> {
        self.live()?;
        check_name(name)?;
        if ino == parent || self.rl(ino)?.as_ref().ok_or(FsError::NotFound)?.is_dir() {
            return Err(FsError::NotPermitted);
        }
        let _ns = self.ns_read();
        let mut pg = self.wl(parent)?;
        let dir = node_mut(&mut pg)?;
        check_new_name(dir, name)?;
        let mut cg = self.wl(ino)?;
        let node = node_mut(&mut cg)?;
        if node.is_dir() {
            return Err(FsError::NotPermitted);
        }
        if node.d.nlink == 0 {
            return Err(FsError::NotFound);
        }
        if node.d.nlink >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        let now = now_ns();
        let mut op = Op::new(self);
        self.dir_insert(&mut op, dir, name, ino, dtype_of(node.d.mode))?;
        node.d.nlink += 1;
        node.d.ctime = now;
        node.dirty = true;
        dir.d.mtime = now;
        dir.d.ctime = now;
        dir.dirty = true;
        dir.flush_record(&self.geo, parent, &mut op.txn);
        node.flush_record(&self.geo, ino, &mut op.txn);
        op.commit()?;
        Ok(attr_of(ino, node))
    }

    /// Remove a non-directory name.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.remove(parent, name, false)
    }

    /// Remove an empty directory.
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &[u8], want_dir: bool) -> Result<()> {
        self.live()?;
        if name == b"." {
            return Err(FsError::Invalid("rmdir .".into()));
        }
        if name == b".." {
            return Err(FsError::NotEmpty);
        }
        check_name(name)?;
        let _ns = self.ns_read();
        let mut pg = self.wl(parent)?;
        let dir = node_mut(&mut pg)?;
        let e: DEnt = *dir.dir.as_ref().ok_or(FsError::NotDir)?.names.get(name).ok_or(FsError::NotFound)?;
        match (want_dir, e.dtype == 4) {
            (false, true) => return Err(FsError::IsDir),
            (true, false) => return Err(FsError::NotDir),
            _ => {}
        }
        let mut cg = self.wl(e.ino)?;
        let child = node_mut(&mut cg)?;
        if want_dir && child.dir.as_ref().is_some_and(|d| !d.names.is_empty()) {
            return Err(FsError::NotEmpty);
        }
        let now = now_ns();
        let mut op = Op::new(self);
        dir.dir_del(name, &mut op.txn)?;
        self.dir_shrink(&mut op, dir)?;
        if want_dir {
            child.d.nlink = 0;
            dir.d.nlink = dir.d.nlink.saturating_sub(1);
        } else {
            child.d.nlink = child.d.nlink.saturating_sub(1);
        }
        child.d.ctime = now;
        child.dirty = true;
        dir.d.mtime = now;
        dir.d.ctime = now;
        dir.dirty = true;
        dir.flush_record(&self.geo, parent, &mut op.txn);
        // The last link of a file nobody has open: its blocks and the inode go in the same
        // transaction as the name (the common unlink: one commit), or the first of its steps.
        let orphan = child.d.nlink == 0 && child.open == 0;
        if !orphan {
            child.flush_record(&self.geo, e.ino, &mut op.txn);
        } else if self.reclaim_step(e.ino, child, &mut op)? {
            op.commit()?;
            *cg = None;
            return Ok(());
        }
        op.commit()?;
        drop(pg);
        if orphan {
            self.reclaim(e.ino, &mut cg)?;
        }
        Ok(())
    }

    /// Rename, with RENAME_NOREPLACE / RENAME_EXCHANGE.
    pub fn rename(&self, sp: u64, sname: &[u8], dp: u64, dname: &[u8], flags: u32) -> Result<()> {
        self.live()?;
        check_name(sname)?;
        check_name(dname)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 || flags == RENAME_NOREPLACE | RENAME_EXCHANGE {
            return Err(FsError::Invalid("rename flags".into()));
        }
        if sp == dp && self.rename_files_in_dir(sp, sname, dname, flags)? {
            return Ok(());
        }
        let _ns = self.ns.write().unwrap_or_else(|e| self.poisoned_by_panic(e));
        let find = |d: u64, n: &[u8]| -> Result<Option<DEnt>> {
            let g = self.rl(d)?;
            let dn = g.as_ref().ok_or(FsError::NotFound)?;
            Ok(dn.dir.as_ref().ok_or(FsError::NotDir)?.names.get(n).copied())
        };
        let se = find(sp, sname)?.ok_or(FsError::NotFound)?;
        let de = find(dp, dname)?;
        let exchange = flags & RENAME_EXCHANGE != 0;
        if let Some(d) = de {
            if flags & RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists);
            }
            if d.ino == se.ino {
                return Ok(());
            }
        } else if exchange {
            return Err(FsError::NotFound);
        }
        let s_dir = se.dtype == 4;
        let d_dir = de.is_some_and(|d| d.dtype == 4);
        if !exchange && let Some(_d) = de {
            if s_dir && !d_dir {
                return Err(FsError::NotDir);
            }
            if !s_dir && d_dir {
                return Err(FsError::IsDir);
            }
        }
        // A directory must not move under itself.
        let ancestor_of = |a: u64, mut x: u64| -> Result<bool> {
            for _ in 0..self.geo.ninodes {
                if x == a {
                    return Ok(true);
                }
                if x == ROOT_INO {
                    return Ok(false);
                }
                x = self.rl(x)?.as_ref().ok_or(FsError::NotFound)?.d.parent;
            }
            Err(FsError::corrupt("directory parent loop"))
        };
        if sp != dp {
            if s_dir && ancestor_of(se.ino, dp)? {
                return Err(FsError::Invalid("move a directory under itself".into()));
            }
            if exchange
                && d_dir
                && let Some(d) = de
                && ancestor_of(d.ino, sp)?
            {
                return Err(FsError::Invalid("move a directory under itself".into()));
            }
        }
        // Lock everything involved in inode order.
        let mut inos = vec![sp, dp, se.ino];
        if let Some(d) = de {
            inos.push(d.ino);
        }
        inos.sort_unstable();
        inos.dedup();
        let mut gs: BTreeMap<u64, WGuard<'_>> = BTreeMap::new();
        for i in inos {
            gs.insert(i, self.wl(i)?);
        }
        fn n<'m, 'g>(gs: &'m mut BTreeMap<u64, WGuard<'g>>, i: u64) -> Result<&'m mut Inode> {
            gs.get_mut(&i).and_then(|g| g.as_deref_mut()).ok_or(FsError::NotFound)
        }
        if let Some(d) = de
            && !exchange
            && d_dir
            && n(&mut gs, d.ino)?.dir.as_ref().is_some_and(|x| !x.names.is_empty())
        {
            return Err(FsError::NotEmpty);
        }
        let now = now_ns();
        let mut op = Op::new(self);
        let mut victim = None;
        if exchange {
            let d = de.ok_or(FsError::NotFound)?;
            n(&mut gs, sp)?.dir_repoint(sname, d.ino, d.dtype, &mut op.txn)?;
            n(&mut gs, dp)?.dir_repoint(dname, se.ino, se.dtype, &mut op.txn)?;
            if sp != dp {
                if s_dir {
                    let x = n(&mut gs, se.ino)?;
                    x.d.parent = dp;
                    x.dirty = true;
                }
                if d_dir {
                    let x = n(&mut gs, d.ino)?;
                    x.d.parent = sp;
                    x.dirty = true;
                }
            }
            let x = n(&mut gs, d.ino)?;
            x.d.ctime = now;
            x.dirty = true;
        } else {
            match de {
                Some(d) => {
                    n(&mut gs, dp)?.dir_repoint(dname, se.ino, se.dtype, &mut op.txn)?;
                    let v = n(&mut gs, d.ino)?;
                    v.d.nlink = if d_dir { 0 } else { v.d.nlink.saturating_sub(1) };
                    v.d.ctime = now;
                    v.dirty = true;
                    victim = Some(d.ino);
                }
                None => {
                    // Take the guard out of the map so the insert can borrow `op` and the directory.
                    let mut g = gs.remove(&dp).ok_or(FsError::NotFound)?;
                    let r = self.dir_insert(&mut op, node_mut(&mut g)?, dname, se.ino, se.dtype);
                    gs.insert(dp, g);
                    r?;
                }
            }
            n(&mut gs, sp)?.dir_del(sname, &mut op.txn)?;
            let mut g = gs.remove(&sp).ok_or(FsError::NotFound)?;
            let r = self.dir_shrink(&mut op, node_mut(&mut g)?);
            gs.insert(sp, g);
            r?;
            if s_dir && sp != dp {
                let x = n(&mut gs, se.ino)?;
                x.d.parent = dp;
                x.dirty = true;
            }
        }
        let x = n(&mut gs, se.ino)?;
        x.d.ctime = now;
        x.dirty = true;
        for p in [sp, dp] {
            let x = n(&mut gs, p)?;
            x.d.nlink = 2 + x.dir.as_ref().map_or(0, |d| d.subdirs);
            x.d.mtime = now;
            x.d.ctime = now;
            x.dirty = true;
        }
        for (&i, g) in gs.iter_mut() {
            if let Some(x) = g.as_mut() {
                x.flush_record(&self.geo, i, &mut op.txn);
            }
        }
        op.commit()?;
        if let Some(v) = victim {
            let open = n(&mut gs, v)?;
            if open.d.nlink == 0 && open.open == 0 {
                let mut g = gs.remove(&v).ok_or(FsError::NotFound)?;
                drop(gs);
                self.reclaim(v, &mut g)?;
            }
        }
        Ok(())
    }

    /// Rename within one directory when neither name is a directory (the common case: an
    /// editor's or a build tool's atomic replace), under the namespace lock *shared*: the
    /// directory, then the files in inode order. Deadlock-free with the other ops: they lock
    /// parent before child, and no op holding a non-directory waits for a directory. Returns
    /// false, having changed nothing, when a directory is involved (the general path does it).
    fn rename_files_in_dir(&self, dir_ino: u64, sname: &[u8], dname: &[u8], flags: u32) -> Result<bool> {
        let exchange = flags & RENAME_EXCHANGE != 0;
        let _ns = self.ns_read();
        let mut dg = self.wl(dir_ino)?;
        let dir = node_mut(&mut dg)?;
        let di = dir.dir.as_ref().ok_or(FsError::NotDir)?;
        let se = *di.names.get(sname).ok_or(FsError::NotFound)?;
        let de = di.names.get(dname).copied();
        if se.dtype == 4 || de.is_some_and(|d| d.dtype == 4) {
            return Ok(false);
        }
        match de {
            Some(_) if flags & RENAME_NOREPLACE != 0 => return Err(FsError::Exists),
            Some(d) if d.ino == se.ino => return Ok(true),
            None if exchange => return Err(FsError::NotFound),
            _ => {}
        }
        let mut inos = vec![se.ino];
        if let Some(d) = de {
            inos.push(d.ino);
        }
        inos.sort_unstable();
        let mut gs: BTreeMap<u64, WGuard<'_>> = BTreeMap::new();
        for i in inos {
            gs.insert(i, self.wl(i)?);
        }
        let now = now_ns();
        let mut op = Op::new(self);
        let mut victim = None;
        match de {
            Some(d) if exchange => {
                dir.dir_repoint(sname, d.ino, d.dtype, &mut op.txn)?;
                dir.dir_repoint(dname, se.ino, se.dtype, &mut op.txn)?;
            }
            Some(d) => {
                dir.dir_repoint(dname, se.ino, se.dtype, &mut op.txn)?;
                let v = gs.get_mut(&d.ino).and_then(|g| g.as_deref_mut()).ok_or(FsError::NotFound)?;
                v.d.nlink = v.d.nlink.saturating_sub(1);
                victim = Some(d.ino);
            }
            None => self.dir_insert(&mut op, dir, dname, se.ino, se.dtype)?,
        }
        if !exchange {
            dir.dir_del(sname, &mut op.txn)?;
            self.dir_shrink(&mut op, dir)?;
        }
        dir.d.mtime = now;
        dir.d.ctime = now;
        dir.dirty = true;
        dir.flush_record(&self.geo, dir_ino, &mut op.txn);
        for (&i, g) in &mut gs {
            let x = g.as_deref_mut().ok_or(FsError::NotFound)?;
            x.d.ctime = now;
            x.dirty = true;
            x.flush_record(&self.geo, i, &mut op.txn);
        }
        op.commit()?;
        drop(dg);
        if let Some(v) = victim
            && let Some(mut g) = gs.remove(&v)
            && g.as_ref().is_some_and(|n| n.d.nlink == 0 && n.open == 0)
        {
            drop(gs);
            self.reclaim(v, &mut g)?;
        }
        Ok(true)
    }

    /// List a directory from `cookie` (0 = start), at most `max` entries (with "." and "..").
    pub fn readdir(&self, ino: u64, cookie: u64, max: usize) -> Result<Vec<DirEntry>> {
        let g = self.rl(ino)?;
        let n = g.as_ref().ok_or(FsError::NotFound)?;
        let d = n.dir.as_ref().ok_or(FsError::NotDir)?;
        let mut out = Vec::new();
        if cookie == 0 && out.len() < max {
            out.push(DirEntry { ino, name: b".".to_vec(), dtype: 4, next: 1 });
        }
        if cookie <= 1 && out.len() < max {
            out.push(DirEntry { ino: n.d.parent, name: b"..".to_vec(), dtype: 4, next: 2 });
        }
        let from = u32::try_from(cookie.saturating_sub(2)).unwrap_or(u32::MAX);
        for (&pos, name) in d.by_pos.range(from..) {
            if out.len() >= max {
                break;
            }
            if let Some(e) = d.names.get(name) {
                out.push(DirEntry { ino: e.ino, name: name.clone(), dtype: e.dtype, next: u64::from(pos) + 3 });
            }
        }
        drop(g);
        self.touch_atime(ino);
        Ok(out)
    }

    /// Note an open handle (an unlinked file stays until its last release).
    pub fn open(&self, ino: u64) -> Result<Attr> {
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        n.open = n.open.saturating_add(1);
        Ok(attr_of(ino, n))
    }

    /// Drop an open handle; the last release of an unlinked inode frees it.
    pub fn release(&self, ino: u64) -> Result<()> {
        let mut g = self.wl(ino)?;
        let n = node_mut(&mut g)?;
        n.open = n.open.saturating_sub(1);
        if n.open == 0 && n.d.nlink == 0 {
            self.live()?;
            self.reclaim(ino, &mut g)?;
        } else if n.open == 0 && n.is_reg() && n.end_lblk() > n.d.size.div_ceil(BLOCK) {
            // Give back the preallocation past EOF.
            self.live()?;
            let size = n.d.size;
            self.set_size(ino, &mut g, size, false)?;
        }
        Ok(())
    }

    /// Free every block of an inode with no links, then the inode itself, in bounded steps
    /// (each a transaction that leaves a valid, smaller orphan; mount finishes an interrupted one).
    pub(super) fn reclaim(&self, ino: u64, g: &mut WGuard<'_>) -> Result<()> {
        loop {
            let mut op = Op::new(self);
            let done = self.reclaim_step(ino, node_mut(g)?, &mut op)?;
            op.commit()?;
            if done {
                **g = None;
                return Ok(());
            }
        }
    }

    /// One step of [`Self::reclaim`] into `op`: up to `FREE_BATCH` extents freed and the inode's
    /// smaller size recorded (false: more to do after `op` commits), or the last blocks and the
    /// inode itself (true: the caller empties its slot once `op` commits).
    fn reclaim_step(&self, ino: u64, n: &mut Inode, op: &mut Op<'_, P>) -> Result<bool> {
        let mut freed = Vec::new();
        let low = n.ext_remove(0, u64::MAX, FREE_BATCH, &mut op.txn, &mut freed)?;
        for (s, l) in freed {
            op.free_data(s, l, n.dax_mapped);
        }
        if low > 0 || !n.ext.is_empty() {
            n.d.size = n.d.size.min(low * BLOCK);
            n.dirty = true;
            n.flush_record(&self.geo, ino, &mut op.txn);
            return Ok(false);
        }
        for &c in &n.chain {
            op.free(c, 1);
        }
        if n.d.xattr_blk != 0 {
            op.free(n.d.xattr_blk, n.xattr_nblk.max(1));
        }
        let gen_ = n.d.generation;
        op.txn.write(self.geo.inode_off(ino), &DiskInode::free(gen_).encode(ino));
        op.free_inos.push((ino, gen_));
        Ok(true)
    }
}

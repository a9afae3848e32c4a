//! Shared test helpers: a path-keyed snapshot of the whole tree.
#![allow(dead_code)]

use std::collections::BTreeMap;

use pmemfs::{Fs, FsError};
use zus_pmem::Persist;

pub const ROOT: u64 = 1;

/// What a path shows (times excluded: they are not part of the crash contract).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    /// file data or symlink target
    pub data: Vec<u8>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

pub type Tree = BTreeMap<Vec<u8>, Node>;

pub fn snapshot<P: Persist>(fs: &Fs<P>) -> Result<Tree, FsError> {
    let mut t = Tree::new();
    walk(fs, ROOT, b"", &mut t)?;
    Ok(t)
}

fn walk<P: Persist>(fs: &Fs<P>, dir: u64, prefix: &[u8], t: &mut Tree) -> Result<(), FsError> {
    let mut cookie = 0;
    loop {
        let ents = fs.readdir(dir, cookie, 64)?;
        if ents.is_empty() {
            return Ok(());
        }
        for e in &ents {
            cookie = e.next;
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let mut path = prefix.to_vec();
            path.push(b'/');
            path.extend_from_slice(&e.name);
            let a = fs.getattr(e.ino)?;
            let data = match a.mode & 0o170000 {
                0o100000 => fs.read_vec(e.ino, 0, usize::try_from(a.size).unwrap_or(0))?,
                0o120000 => fs.readlink(e.ino)?,
                _ => Vec::new(),
            };
            let mut xattrs = BTreeMap::new();
            for k in fs.listxattr(e.ino)? {
                let v = fs.getxattr(e.ino, &k)?;
                xattrs.insert(k, v);
            }
            t.insert(
                path.clone(),
                Node { ino: e.ino, mode: a.mode, uid: a.uid, gid: a.gid, nlink: a.nlink, size: a.size, data, xattrs },
            );
            if a.mode & 0o170000 == 0o040000 {
                walk(fs, e.ino, &path, t)?;
            }
        }
    }
}

/// Whether `img` is `before` or `after` — exactly, except that file data written in place may
/// be any per-byte mix of old and new (data writes are not atomic; only appended bytes that the
/// new size exposes must be the new ones).
pub fn before_or_after(img: &Tree, before: &Tree, after: &Tree) -> bool {
    if img == before || img == after {
        return true;
    }
    if img.len() != before.len() || before.len() != after.len() {
        return false;
    }
    for ((p, i), ((pb, b), (pa, a))) in img.iter().zip(before.iter().zip(after.iter())) {
        if p != pb || p != pa {
            return false;
        }
        if i == b || i == a {
            continue;
        }
        let meta = |n: &Node| (n.ino, n.mode, n.uid, n.gid, n.nlink, n.xattrs.clone());
        if meta(b) != meta(a) || meta(i) != meta(b) || (i.size != b.size && i.size != a.size) {
            return false;
        }
        for (k, &x) in i.data.iter().enumerate() {
            let old = if (k as u64) < b.size { b.data.get(k).copied() } else { None };
            let new = a.data.get(k).copied().or(if (k as u64) < a.size { Some(0) } else { None });
            let ok = match old {
                Some(o) => x == o || Some(x) == new,
                None => Some(x) == new || (new.is_none() && x == 0),
            };
            if !ok {
                return false;
            }
        }
    }
    true
}

/// Short description of a tree (metadata, and a hash of data) for failure messages.
pub fn describe(t: &Tree) -> String {
    let mut s = String::new();
    for (p, n) in t {
        let h = n.data.iter().fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        s.push_str(&format!(
            "\n   {} ino={} mode={:o} nlink={} size={} data#{h:x} xattrs={}",
            String::from_utf8_lossy(p),
            n.ino,
            n.mode,
            n.nlink,
            n.size,
            n.xattrs.len()
        ));
    }
    s
}

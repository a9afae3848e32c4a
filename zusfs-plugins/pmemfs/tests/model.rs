//! Model-based test: random operation sequences against pmemfs and a tiny in-memory model. Every
//! result (success or errno) must agree, and so must the whole tree after the sequence and after
//! each remount.

#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod common;

use std::collections::BTreeMap;

use common::{Node, ROOT, Tree, snapshot};
use pmemfs::*;
use proptest::prelude::*;
use zus_pmem::MappedPmem;

#[derive(Clone, Debug)]
enum Op {
    Create(u8, u8),
    Mkdir(u8, u8),
    Unlink(u8, u8),
    Rmdir(u8, u8),
    Rename(u8, u8, u8, u8, u8),
    Link(u8, u8, u8),
    Symlink(u8, u8, u16),
    Write(u8, u16, u16, u8),
    Truncate(u8, u16),
    Fallocate(u8, u8, u16, u16),
    SetX(u8, u8, u16),
    RmX(u8, u8),
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Create(a, b)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Mkdir(a, b)),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Unlink(a, b)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Op::Rmdir(a, b)),
        3 => (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), 0u8..3).prop_map(|(a, b, c, d, f)| Op::Rename(a, b, c, d, f)),
        1 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(a, b, c)| Op::Link(a, b, c)),
        1 => (any::<u8>(), any::<u8>(), 1u16..400).prop_map(|(a, b, c)| Op::Symlink(a, b, c)),
        4 => (any::<u8>(), 0u16..40_000, 1u16..12_000, any::<u8>()).prop_map(|(a, b, c, d)| Op::Write(a, b, c, d)),
        2 => (any::<u8>(), 0u16..50_000).prop_map(|(a, b)| Op::Truncate(a, b)),
        1 => (any::<u8>(), 0u8..3, 0u16..50_000, 1u16..20_000).prop_map(|(a, m, b, c)| Op::Fallocate(a, m, b, c)),
        1 => (any::<u8>(), 0u8..4, 0u16..600).prop_map(|(a, b, c)| Op::SetX(a, b, c)),
        1 => (any::<u8>(), 0u8..4).prop_map(|(a, b)| Op::RmX(a, b)),
        1 => Just(Op::Remount),
    ]
}

#[derive(Clone, Debug)]
enum Kind {
    File(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, u64>),
    Link(Vec<u8>),
}

#[derive(Clone, Debug)]
struct MNode {
    kind: Kind,
    nlink: u32,
    parent: u64,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug)]
struct Model {
    nodes: BTreeMap<u64, MNode>,
}

const ENOENT: i32 = 2;
const EEXIST: i32 = 17;
const ENOTDIR: i32 = 20;
const EISDIR: i32 = 21;
const EINVAL: i32 = 22;
const ENOTEMPTY: i32 = 39;
const ENODATA: i32 = 61;

impl Model {
    fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(ROOT, MNode { kind: Kind::Dir(BTreeMap::new()), nlink: 2, parent: ROOT, xattrs: BTreeMap::new() });
        Model { nodes }
    }
    fn dirs(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| matches!(n.kind, Kind::Dir(_))).map(|(&i, _)| i).collect()
    }
    fn files(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| matches!(n.kind, Kind::File(_))).map(|(&i, _)| i).collect()
    }
    fn children(&self, d: u64) -> &BTreeMap<Vec<u8>, u64> {
        match &self.nodes[&d].kind {
            Kind::Dir(c) => c,
            _ => unreachable!(),
        }
    }
    fn children_mut(&mut self, d: u64) -> &mut BTreeMap<Vec<u8>, u64> {
        match &mut self.nodes.get_mut(&d).unwrap().kind {
            Kind::Dir(c) => c,
            _ => unreachable!(),
        }
    }
    fn is_dir(&self, i: u64) -> bool {
        matches!(self.nodes[&i].kind, Kind::Dir(_))
    }
    fn ancestor(&self, a: u64, mut x: u64) -> bool {
        loop {
            if x == a {
                return true;
            }
            if x == ROOT {
                return false;
            }
            x = self.nodes[&x].parent;
        }
    }
    fn drop_link(&mut self, i: u64) {
        let n = self.nodes.get_mut(&i).unwrap();
        if matches!(n.kind, Kind::Dir(_)) {
            n.nlink = 0;
        } else {
            n.nlink -= 1;
        }
        if n.nlink == 0 {
            self.nodes.remove(&i);
        }
    }
    fn fix_dir_nlink(&mut self, d: u64) {
        let subdirs = self.children(d).values().filter(|&&c| self.is_dir(c)).count() as u32;
        self.nodes.get_mut(&d).unwrap().nlink = 2 + subdirs;
    }

    fn tree(&self) -> Tree {
        let mut t = Tree::new();
        self.walk(ROOT, b"", &mut t);
        t
    }
    fn walk(&self, d: u64, prefix: &[u8], t: &mut Tree) {
        for (name, &i) in self.children(d) {
            let mut p = prefix.to_vec();
            p.push(b'/');
            p.extend_from_slice(name);
            let n = &self.nodes[&i];
            let (mode, size, data) = match &n.kind {
                Kind::File(v) => (0o100644, v.len() as u64, v.clone()),
                Kind::Dir(_) => (0o40755, 0, Vec::new()),
                Kind::Link(v) => (0o120777, v.len() as u64, v.clone()),
            };
            t.insert(
                p.clone(),
                Node { ino: i, mode, uid: 0, gid: 0, nlink: n.nlink, size, data, xattrs: n.xattrs.clone() },
            );
            if let Kind::Dir(_) = n.kind {
                self.walk(i, &p, t);
            }
        }
    }
}

fn name(b: u8) -> Vec<u8> {
    format!("n{}", b % 4).into_bytes()
}

fn pick(v: &[u64], b: u8) -> Option<u64> {
    if v.is_empty() { None } else { Some(v[b as usize % v.len()]) }
}

fn code<T>(r: &Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.errno(),
    }
}

/// Directory sizes are block counts on pmem; the model does not know them.
fn normalize(mut t: Tree) -> Tree {
    for n in t.values_mut() {
        if n.mode & 0o170000 == 0o040000 {
            n.size = 0;
        }
    }
    t
}

fn run(ops: &[Op]) {
    let mut fs = Some(Fs::mkfs(MappedPmem::anonymous(16 << 20).unwrap(), &MkfsOptions::default()).unwrap());
    let mut m = Model::new();
    for (step, o) in ops.iter().enumerate() {
        let f = fs.as_ref().unwrap();
        let dirs = m.dirs();
        let files = m.files();
        let (got, want): (i32, i32) = match *o {
            Op::Create(d, n) | Op::Mkdir(d, n) | Op::Symlink(d, n, _) => {
                let d = pick(&dirs, d).unwrap();
                let nm = name(n);
                let r = match *o {
                    Op::Create(..) => f.create(d, &nm, 0o644, 0, 0),
                    Op::Mkdir(..) => f.mkdir(d, &nm, 0o755, 0, 0),
                    Op::Symlink(_, _, l) => f.symlink(d, &nm, &vec![b's'; l as usize], 0, 0),
                    _ => unreachable!(),
                };
                let want = if m.children(d).contains_key(&nm) {
                    EEXIST
                } else {
                    let a = r.as_ref().unwrap();
                    let kind = match *o {
                        Op::Create(..) => Kind::File(Vec::new()),
                        Op::Mkdir(..) => Kind::Dir(BTreeMap::new()),
                        Op::Symlink(_, _, l) => Kind::Link(vec![b's'; l as usize]),
                        _ => unreachable!(),
                    };
                    let dir = matches!(kind, Kind::Dir(_));
                    m.nodes.insert(
                        a.ino,
                        MNode { kind, nlink: if dir { 2 } else { 1 }, parent: d, xattrs: BTreeMap::new() },
                    );
                    m.children_mut(d).insert(nm, a.ino);
                    m.fix_dir_nlink(d);
                    0
                };
                (code(&r), want)
            }
            Op::Unlink(d, n) | Op::Rmdir(d, n) => {
                let d = pick(&dirs, d).unwrap();
                let nm = name(n);
                let rmdir = matches!(o, Op::Rmdir(..));
                let r = if rmdir { f.rmdir(d, &nm) } else { f.unlink(d, &nm) };
                let want = match m.children(d).get(&nm).copied() {
                    None => ENOENT,
                    Some(c) if !rmdir && m.is_dir(c) => EISDIR,
                    Some(c) if rmdir && !m.is_dir(c) => ENOTDIR,
                    Some(c) if rmdir && !m.children(c).is_empty() => ENOTEMPTY,
                    Some(c) => {
                        m.children_mut(d).remove(&nm);
                        m.drop_link(c);
                        m.fix_dir_nlink(d);
                        0
                    }
                };
                (code(&r), want)
            }
            Op::Rename(sd, sn, dd, dn, fl) => {
                let (sp, dp) = (pick(&dirs, sd).unwrap(), pick(&dirs, dd).unwrap());
                let (snm, dnm) = (name(sn), name(dn));
                let flags = [0, RENAME_NOREPLACE, RENAME_EXCHANGE][fl as usize];
                let r = f.rename(sp, &snm, dp, &dnm, flags);
                let want = (|| {
                    let s = *m.children(sp).get(&snm).ok_or(ENOENT)?;
                    let de = m.children(dp).get(&dnm).copied();
                    if let Some(d) = de {
                        if flags == RENAME_NOREPLACE {
                            return Err(EEXIST);
                        }
                        if d == s {
                            return Ok(());
                        }
                    } else if flags == RENAME_EXCHANGE {
                        return Err(ENOENT);
                    }
                    let (s_dir, d_dir) = (m.is_dir(s), de.is_some_and(|d| m.is_dir(d)));
                    if flags != RENAME_EXCHANGE && de.is_some() {
                        if s_dir && !d_dir {
                            return Err(ENOTDIR);
                        }
                        if !s_dir && d_dir {
                            return Err(EISDIR);
                        }
                    }
                    if sp != dp {
                        if s_dir && m.ancestor(s, dp) {
                            return Err(EINVAL);
                        }
                        if flags == RENAME_EXCHANGE && d_dir && m.ancestor(de.unwrap(), sp) {
                            return Err(EINVAL);
                        }
                    }
                    if flags != RENAME_EXCHANGE && d_dir && !m.children(de.unwrap()).is_empty() {
                        return Err(ENOTEMPTY);
                    }
                    if flags == RENAME_EXCHANGE {
                        let d = de.unwrap();
                        m.children_mut(sp).insert(snm.clone(), d);
                        m.children_mut(dp).insert(dnm.clone(), s);
                        m.nodes.get_mut(&s).unwrap().parent = dp;
                        m.nodes.get_mut(&d).unwrap().parent = sp;
                    } else {
                        m.children_mut(sp).remove(&snm);
                        if let Some(d) = m.children_mut(dp).insert(dnm.clone(), s) {
                            m.drop_link(d);
                        }
                        m.nodes.get_mut(&s).unwrap().parent = dp;
                    }
                    m.fix_dir_nlink(sp);
                    m.fix_dir_nlink(dp);
                    Ok(())
                })();
                (code(&r), want.err().unwrap_or(0))
            }
            Op::Link(fi, d, n) => {
                let Some(fi) = pick(&files, fi) else { continue };
                let d = pick(&dirs, d).unwrap();
                let nm = name(n);
                let r = f.link(fi, d, &nm);
                let want = if m.children(d).contains_key(&nm) {
                    EEXIST
                } else {
                    m.children_mut(d).insert(nm, fi);
                    m.nodes.get_mut(&fi).unwrap().nlink += 1;
                    0
                };
                (code(&r), want)
            }
            Op::Write(fi, off, len, b) => {
                let Some(fi) = pick(&files, fi) else { continue };
                let data = vec![b; len as usize];
                let r = f.write_bytes(fi, u64::from(off), &data, b % 2 == 0);
                if let Kind::File(v) = &mut m.nodes.get_mut(&fi).unwrap().kind {
                    let end = off as usize + len as usize;
                    if v.len() < end {
                        v.resize(end, 0);
                    }
                    v[off as usize..end].copy_from_slice(&data);
                }
                assert_eq!(r.as_ref().ok(), Some(&(len as usize)), "step {step}: {o:?}");
                (0, 0)
            }
            Op::Truncate(fi, size) => {
                let Some(fi) = pick(&files, fi) else { continue };
                let r = f.setattr(fi, &SetAttr { size: Some(u64::from(size)), ..Default::default() });
                if let Kind::File(v) = &mut m.nodes.get_mut(&fi).unwrap().kind {
                    v.resize(size as usize, 0);
                }
                (code(&r), 0)
            }
            Op::Fallocate(fi, mode, off, len) => {
                let Some(fi) = pick(&files, fi) else { continue };
                let mode = [0, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE][mode as usize];
                let r = f.fallocate(fi, mode, u64::from(off), u64::from(len));
                if let Kind::File(v) = &mut m.nodes.get_mut(&fi).unwrap().kind {
                    let end = off as usize + len as usize;
                    if mode == 0 && v.len() < end {
                        v.resize(end, 0);
                    }
                    if mode & FALLOC_FL_PUNCH_HOLE != 0 {
                        let e = end.min(v.len());
                        if (off as usize) < e {
                            v[off as usize..e].fill(0);
                        }
                    }
                }
                (code(&r), 0)
            }
            Op::SetX(fi, k, len) => {
                let Some(fi) = pick(&files, fi) else { continue };
                let key = format!("user.k{k}").into_bytes();
                let val = vec![k; len as usize];
                let r = f.setxattr(fi, &key, &val, 0);
                m.nodes.get_mut(&fi).unwrap().xattrs.insert(key, val);
                (code(&r), 0)
            }
            Op::RmX(fi, k) => {
                let Some(fi) = pick(&files, fi) else { continue };
                let key = format!("user.k{k}").into_bytes();
                let r = f.removexattr(fi, &key);
                let want = if m.nodes.get_mut(&fi).unwrap().xattrs.remove(&key).is_some() { 0 } else { ENODATA };
                (code(&r), want)
            }
            Op::Remount => {
                let pm = fs.take().unwrap().into_pmem();
                let f2 = Fs::mount(pm).unwrap();
                let r = f2.check().unwrap();
                assert!(r.is_clean(), "step {step}: {r}");
                fs = Some(f2);
                (0, 0)
            }
        };
        assert_eq!(got, want, "step {step}: {o:?}");
        if step % 8 == 7 {
            let r = fs.as_ref().unwrap().check().unwrap();
            assert!(r.is_clean(), "step {step}: {r}");
        }
    }
    let f = fs.take().unwrap();
    assert_eq!(normalize(snapshot(&f).unwrap()), m.tree(), "final tree");
    let r = f.check().unwrap();
    assert!(r.is_clean(), "{r}");
    let f = Fs::mount(f.into_pmem()).unwrap();
    assert_eq!(normalize(snapshot(&f).unwrap()), m.tree(), "tree after remount");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn test_model_random_ops(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops);
    }
}

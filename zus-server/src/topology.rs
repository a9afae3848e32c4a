//! CPU and NUMA topology (P-NU1): read from sysfs, or simulated for tests.
//!
//! The server starts one ZT per entry of [`Topology::cpus`]. Lane `i` of every client channel set
//! belongs to the ZT of `cpus[i]`; a client on OS CPU `c` uses lane `c` (so lanes are indexed by OS
//! CPU id and `cpus[i].os_cpu == i` for a real topology). A simulated topology `NODESxCPUS` invents
//! `NODES*CPUS` logical CPUs spread over the real ones (logical CPU `i` runs on real CPU
//! `i % online`), so node-aware logic (lane-to-node map, spill within a node, memory placement) can
//! be tested on this one-node machine.

use std::fs;
use std::path::Path;

/// Topology errors.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// sysfs could not be read.
    #[error("reading {path}: {source}")]
    Sysfs {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A cpulist did not parse.
    #[error("cannot parse cpu list {0:?}")]
    BadList(String),
    /// `--topology` did not parse.
    #[error("bad topology {0:?}: expected NODESxCPUS, e.g. 2x4 (1..=64 nodes, 1..=256 CPUs per node)")]
    BadSpec(String),
}

/// One logical CPU the server runs a ZT for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// Lane index / logical CPU id.
    pub id: usize,
    /// NUMA node.
    pub node: usize,
    /// OS CPU the ZT is pinned to.
    pub os_cpu: usize,
}

/// The topology the server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Logical CPUs, indexed by lane.
    pub cpus: Vec<Cpu>,
    /// Number of NUMA nodes.
    pub nnodes: usize,
    /// Whether this is simulated.
    pub simulated: bool,
}

/// Parses a sysfs cpulist such as `0-3,8,10-11`.
///
/// # Errors
/// [`TopologyError::BadList`].
pub fn parse_cpulist(s: &str) -> Result<Vec<usize>, TopologyError> {
    let s = s.trim();
    let mut out = Vec::new();
    if s.is_empty() {
        return Ok(out);
    }
    let bad = || TopologyError::BadList(s.to_owned());
    for part in s.split(',') {
        if let Some((a, b)) = part.split_once('-') {
            let a: usize = a.trim().parse().map_err(|_| bad())?;
            let b: usize = b.trim().parse().map_err(|_| bad())?;
            if b < a || b - a > 65536 {
                return Err(bad());
            }
            out.extend(a..=b);
        } else {
            out.push(part.trim().parse().map_err(|_| bad())?);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn read(path: &Path) -> Result<String, TopologyError> {
    fs::read_to_string(path).map_err(|source| TopologyError::Sysfs { path: path.display().to_string(), source })
}

impl Topology {
    /// Reads the topology from sysfs rooted at `sys` (normally `/sys`).
    ///
    /// # Errors
    /// When the online CPU list cannot be read.
    pub fn from_sysfs(sys: &Path) -> Result<Self, TopologyError> {
        let online = parse_cpulist(&read(&sys.join("devices/system/cpu/online"))?)?;
        let max = online.iter().copied().max().unwrap_or(0);
        let mut node_of = vec![0usize; max + 1];
        let mut nnodes = 1;
        if let Ok(entries) = fs::read_dir(sys.join("devices/system/node")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(n) = name.strip_prefix("node").and_then(|n| n.parse::<usize>().ok()) else {
                    continue;
                };
                let Ok(list) = read(&e.path().join("cpulist")) else { continue };
                for c in parse_cpulist(&list)? {
                    if let Some(slot) = node_of.get_mut(c) {
                        *slot = n;
                    }
                }
                nnodes = nnodes.max(n + 1);
            }
        }
        // Lanes are indexed by OS CPU id; offline CPUs in the middle still get a lane (served by
        // the ZT of the first online CPU of their node) so indexing by sched_getcpu always works.
        let cpus = (0..=max)
            .map(|c| {
                let os_cpu = if online.contains(&c) { c } else { online.first().copied().unwrap_or(0) };
                Cpu { id: c, node: node_of[c], os_cpu }
            })
            .collect();
        Ok(Self { cpus, nnodes, simulated: false })
    }

    /// A simulated topology from `NODESxCPUS`, placed over `online` real CPUs.
    ///
    /// # Errors
    /// [`TopologyError::BadSpec`].
    pub fn simulated(spec: &str, online: &[usize]) -> Result<Self, TopologyError> {
        let bad = || TopologyError::BadSpec(spec.to_owned());
        let (n, c) = spec.split_once(['x', 'X']).ok_or_else(bad)?;
        let nodes: usize = n.trim().parse().map_err(|_| bad())?;
        let per: usize = c.trim().parse().map_err(|_| bad())?;
        if !(1..=64).contains(&nodes) || !(1..=256).contains(&per) || online.is_empty() {
            return Err(bad());
        }
        let cpus = (0..nodes * per).map(|i| Cpu { id: i, node: i / per, os_cpu: online[i % online.len()] }).collect();
        Ok(Self { cpus, nnodes: nodes, simulated: true })
    }

    /// The online OS CPUs (from sysfs), for placing a simulated topology.
    ///
    /// # Errors
    /// When sysfs cannot be read.
    pub fn online_cpus(sys: &Path) -> Result<Vec<usize>, TopologyError> {
        parse_cpulist(&read(&sys.join("devices/system/cpu/online"))?)
    }

    /// Lanes on the same node as `lane`, starting after it (spill order).
    #[must_use]
    pub fn node_peers(&self, lane: usize) -> Vec<usize> {
        let node = self.cpus.get(lane).map_or(0, |c| c.node);
        let n = self.cpus.len();
        (1..n).map(|k| (lane + k) % n).filter(|&l| self.cpus[l].node == node).collect()
    }

    /// One-line description for logs and status.
    #[must_use]
    pub fn describe(&self) -> String {
        let per_node = self.cpus.len().div_ceil(self.nnodes.max(1));
        format!(
            "{} node(s) x {} CPU(s) ({})",
            self.nnodes,
            per_node,
            if self.simulated { "simulated" } else { "sysfs" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_cpulist_ranges_and_singles() {
        assert_eq!(parse_cpulist("0-3,8,10-11\n").unwrap(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpulist("").unwrap(), Vec::<usize>::new());
        assert!(parse_cpulist("3-1").is_err());
        assert!(parse_cpulist("a").is_err());
    }

    #[test]
    fn test_simulated_two_nodes_spread_over_real_cpus() {
        let t = Topology::simulated("2x4", &[0, 1]).unwrap();
        assert_eq!(t.cpus.len(), 8);
        assert_eq!(t.nnodes, 2);
        assert_eq!(t.cpus[5], Cpu { id: 5, node: 1, os_cpu: 1 });
        assert_eq!(t.node_peers(1), vec![2, 3, 0]);
        assert_eq!(t.node_peers(6), vec![7, 4, 5]);
        assert!(Topology::simulated("0x4", &[0]).is_err());
        assert!(Topology::simulated("2y4", &[0]).is_err());
    }

    #[test]
    fn test_fake_sysfs_two_nodes() {
        let d = std::env::temp_dir().join(format!("zufs-topo-{}", std::process::id()));
        fs::create_dir_all(d.join("devices/system/cpu")).unwrap();
        fs::create_dir_all(d.join("devices/system/node/node0")).unwrap();
        fs::create_dir_all(d.join("devices/system/node/node1")).unwrap();
        fs::write(d.join("devices/system/cpu/online"), "0-3\n").unwrap();
        fs::write(d.join("devices/system/node/node0/cpulist"), "0,2\n").unwrap();
        fs::write(d.join("devices/system/node/node1/cpulist"), "1,3\n").unwrap();
        let t = Topology::from_sysfs(&d).unwrap();
        fs::remove_dir_all(&d).unwrap();
        assert_eq!(t.nnodes, 2);
        assert_eq!(t.cpus.iter().map(|c| c.node).collect::<Vec<_>>(), vec![0, 1, 0, 1]);
        assert_eq!(t.node_peers(0), vec![2]);
    }
}

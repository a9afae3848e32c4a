//! CPU placement for the threads at both ends of a channel: a ZT and a bridge or ring thread
//! pin themselves to the CPU whose lane they serve (P-CH1).

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// Pins the calling thread to OS CPU `cpu`.
///
/// # Errors
/// `EINVAL` when `cpu` is out of range or not in the process's allowed set.
pub fn pin_to(cpu: usize) -> std::io::Result<()> {
    if cpu >= CpuSet::MAX_CPU {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).map_err(Into::into)
}

/// The CPUs the calling thread may run on (empty if the query fails).
#[must_use]
pub fn allowed_cpus() -> Vec<usize> {
    sched_getaffinity(None).map_or_else(|_| Vec::new(), |set| (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_pin_to_an_allowed_cpu_and_back() {
        let all = allowed_cpus();
        assert!(!all.is_empty());
        let cpu = *all.last().unwrap();
        std::thread::spawn(move || {
            pin_to(cpu).unwrap();
            assert_eq!(allowed_cpus(), vec![cpu]);
            assert_eq!(crate::shm::current_cpu(), cpu);
        })
        .join()
        .unwrap();
        assert!(pin_to(CpuSet::MAX_CPU).is_err());
    }
}

//! The CPU the calling thread runs on.

/// The current CPU number, or 0 when the kernel cannot tell (the caller reduces it modulo
/// its buffer count anyway, so any value is safe).
#[inline(always)]
pub(crate) fn current() -> usize {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours; glibc serves it
    // from the rseq area (about 5 ns here).
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cpu_is_one_of_ours() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        // Affinity masks can hide CPUs, so only check against the machine's count.
        // SAFETY: sysconf only reads a configuration value.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        let max = usize::try_from(online).unwrap_or(cpus).max(cpus);
        assert!(super::current() < max);
    }
}

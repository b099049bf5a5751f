//! How big a pod's VM is, from what the kubelet says about the pod.
//!
//! The kubelet passes `linux.resources` (the sum of the containers' limits) and
//! `linux.overhead` (the RuntimeClass overhead) in the PodSandboxConfig.
//!
//! - vCPUs: `ceil(cpu_quota / cpu_period)` of resources plus overhead; without a CPU limit,
//!   `pod.default_vcpus`. Clamped to `1..=pod.max_vcpus`.
//! - Memory: the memory limits of resources plus overhead, rounded up to whole MiB, plus
//!   `pod.guest_overhead_mib` (the guest kernel, vpod-init, page cache), rounded up to a
//!   multiple of 2 MiB; without a memory limit, `pod.default_memory_mib`. Clamped to
//!   `pod.min_memory_mib..=pod.max_memory_mib`.

use vpod_proto::cri::LinuxContainerResources;

use crate::config::PodSizing;

const MIB: u64 = 1 << 20;

/// A pod VM's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodSize {
    pub vcpus: u8,
    pub memory_mib: u64,
}

/// CPUs a quota/period pair asks for, as a fraction; 0 when not limited.
fn cpus(resources: Option<&LinuxContainerResources>) -> f64 {
    match resources {
        Some(r) if r.cpu_quota > 0 => {
            let period = if r.cpu_period > 0 {
                r.cpu_period
            } else {
                100_000
            };
            r.cpu_quota as f64 / period as f64
        }
        _ => 0.0,
    }
}

fn memory_bytes(resources: Option<&LinuxContainerResources>) -> u64 {
    resources
        .map(|r| u64::try_from(r.memory_limit_in_bytes).unwrap_or(0))
        .unwrap_or(0)
}

/// The VM size for a pod with `resources` and `overhead`.
pub fn pod_size(
    rules: &PodSizing,
    resources: Option<&LinuxContainerResources>,
    overhead: Option<&LinuxContainerResources>,
) -> PodSize {
    let cpu = cpus(resources) + cpus(overhead);
    let vcpus = if cpu > 0.0 {
        let wanted = cpu.ceil().min(f64::from(u8::MAX)) as u8;
        wanted.clamp(1, rules.max_vcpus)
    } else {
        rules.default_vcpus
    };

    let asked = memory_bytes(resources).saturating_add(memory_bytes(overhead));
    let memory_mib = if asked > 0 {
        let mib = asked.div_ceil(MIB).saturating_add(rules.guest_overhead_mib);
        let even = mib.div_ceil(2).saturating_mul(2);
        even.clamp(rules.min_memory_mib, rules.max_memory_mib)
    } else {
        rules.default_memory_mib
    };
    PodSize { vcpus, memory_mib }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(quota: i64, period: i64, memory: i64) -> LinuxContainerResources {
        LinuxContainerResources {
            cpu_quota: quota,
            cpu_period: period,
            memory_limit_in_bytes: memory,
            ..Default::default()
        }
    }

    #[test]
    fn no_limits_give_the_default_size() {
        let rules = PodSizing::default();
        assert_eq!(
            pod_size(&rules, None, None),
            PodSize {
                vcpus: 1,
                memory_mib: 256
            }
        );
        assert_eq!(pod_size(&rules, Some(&limits(0, 0, 0)), None).vcpus, 1);
    }

    #[test]
    fn cpu_limits_round_up_to_whole_vcpus_and_add_the_overhead() {
        let rules = PodSizing::default();
        assert_eq!(
            pod_size(&rules, Some(&limits(150_000, 100_000, 0)), None).vcpus,
            2
        );
        assert_eq!(
            pod_size(
                &rules,
                Some(&limits(100_000, 100_000, 0)),
                Some(&limits(10_000, 100_000, 0))
            )
            .vcpus,
            2
        );
        // A quota without a period uses the kernel's default period of 100 ms.
        assert_eq!(pod_size(&rules, Some(&limits(50_000, 0, 0)), None).vcpus, 1);
        assert_eq!(
            pod_size(&rules, Some(&limits(10_000_000, 100_000, 0)), None).vcpus,
            8
        );
    }

    #[test]
    fn memory_limits_add_the_guest_overhead_and_round_to_two_mib() {
        let rules = PodSizing::default();
        // 100 MiB + 1 byte -> 101 MiB + 64 = 165 -> 166.
        let size = pod_size(&rules, Some(&limits(0, 0, 100 * (1 << 20) + 1)), None);
        assert_eq!(size.memory_mib, 166);
        let size = pod_size(
            &rules,
            Some(&limits(0, 0, 256 << 20)),
            Some(&limits(0, 0, 32 << 20)),
        );
        assert_eq!(size.memory_mib, 256 + 32 + 64);
        // Tiny limits get the minimum, huge ones the maximum.
        assert_eq!(
            pod_size(&rules, Some(&limits(0, 0, 1 << 20)), None).memory_mib,
            128
        );
        assert_eq!(
            pod_size(&rules, Some(&limits(0, 0, i64::MAX)), None).memory_mib,
            16 * 1024
        );
        // A negative limit (unlimited in some clients) is no limit.
        assert_eq!(
            pod_size(&rules, Some(&limits(0, 0, -1)), None).memory_mib,
            256
        );
    }
}

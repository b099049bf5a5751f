//! Bounds on what one request may ask, checked before anything is made: a request past
//! them is InvalidArgument naming the field and the bound, never a panic, a VM booted for
//! nothing, or a failure deep in the guest.
//!
//! - A gRPC message of at most [`MAX_REQUEST_BYTES`] (16 MiB, as containerd's CRI server);
//!   tonic answers a larger one with OutOfRange before it is decoded.
//! - A process's command, arguments and environment as the guest's execve(2) takes them:
//!   no string over 128 KiB (Linux's MAX_ARG_STRLEN) and at most 2 MiB together (a quarter
//!   of the default 8 MiB stack, where Linux sets ARG_MAX); beyond that it would fail in the
//!   guest with E2BIG after its VM and disks were set up.
//! - At most [`MAX_MOUNTS`] mounts per container (each is a bind mount on the host).
//! - Resources no x86-64 KVM guest can have: more than [`MAX_ANY_VCPUS`] CPUs (KVM's
//!   `KVM_MAX_VCPUS`) or more than 2^52 bytes of memory (the architecture's widest physical
//!   address). Limits below those but above `[pod] max_vcpus` or `max_memory_mib` size the
//!   VM at the maximum, as documented in the README.

use vpod_proto::cri;

use crate::runtime::RuntimeError;

/// The largest gRPC request decoded.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// Linux's MAX_ARG_STRLEN: 32 pages.
const MAX_ARG_STRING: usize = 128 << 10;
/// Command, arguments and environment together.
const MAX_ARG_TOTAL: usize = 2 << 20;
/// Mounts of one container.
pub const MAX_MOUNTS: usize = 1024;
/// KVM_MAX_VCPUS on x86-64.
pub const MAX_ANY_VCPUS: i64 = 4096;
/// 2^52 bytes: x86-64's widest physical address space.
const MAX_ANY_MEMORY: i64 = 1 << 52;

/// Checks the strings a container's process starts with (`field` names each group).
pub fn check_process(groups: &[(&str, &[String])]) -> Result<(), RuntimeError> {
    let mut total = 0usize;
    for (field, strings) in groups {
        for (i, string) in strings.iter().enumerate() {
            if string.len() > MAX_ARG_STRING {
                return Err(RuntimeError::invalid(
                    format!("{field}[{i}]"),
                    format!(
                        "is {} bytes; a process argument or variable may have at most {MAX_ARG_STRING} (Linux's MAX_ARG_STRLEN)",
                        string.len()
                    ),
                ));
            }
            total = total.saturating_add(string.len() + 1);
        }
    }
    if total > MAX_ARG_TOTAL {
        let names: Vec<&str> = groups.iter().map(|(field, _)| *field).collect();
        return Err(RuntimeError::invalid(
            names.join(", "),
            format!(
                "take {total} bytes together; a process starts with at most {MAX_ARG_TOTAL} of arguments and environment"
            ),
        ));
    }
    Ok(())
}

/// Checks a container's number of mounts.
pub fn check_mount_count(count: usize) -> Result<(), RuntimeError> {
    if count > MAX_MOUNTS {
        return Err(RuntimeError::invalid(
            "config.mounts",
            format!("has {count} mounts; a container may have at most {MAX_MOUNTS}"),
        ));
    }
    Ok(())
}

/// Checks resources (a pod's, its overhead or a container's) against what any VM can have.
pub fn check_resources(
    resources: Option<&cri::LinuxContainerResources>,
    field: &str,
) -> Result<(), RuntimeError> {
    let Some(r) = resources else {
        return Ok(());
    };
    if r.cpu_quota > 0 {
        let period = if r.cpu_period > 0 {
            r.cpu_period
        } else {
            100_000
        };
        // Both positive here: the quotient rounded up without overflow.
        let cpus = r.cpu_quota / period + i64::from(r.cpu_quota % period != 0);
        if cpus > MAX_ANY_VCPUS {
            return Err(RuntimeError::invalid(
                format!("{field}.cpu_quota"),
                format!(
                    "asks for {cpus} CPUs ({} per {period} us); no VM can have more than {MAX_ANY_VCPUS}",
                    r.cpu_quota
                ),
            ));
        }
    }
    if r.memory_limit_in_bytes > MAX_ANY_MEMORY {
        return Err(RuntimeError::invalid(
            format!("{field}.memory_limit_in_bytes"),
            format!(
                "asks for {} bytes; no VM can have more than 2^52",
                r.memory_limit_in_bytes
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_strings_are_bounded_each_and_together() {
        let env = vec!["A=1".to_string(); 10];
        assert!(check_process(&[("config.envs", &env)]).is_ok());
        let long = vec!["x".repeat(MAX_ARG_STRING + 1)];
        let error = check_process(&[("config.args", &long)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("config.args[0]"), "{error}");
        let many = vec!["y".repeat(100 << 10); 21];
        let error = check_process(&[("config.command", &[]), ("config.envs", &many)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("config.command, config.envs"), "{error}");
        // A 100 MB environment in one variable.
        let huge = vec![format!("BIG={}", "z".repeat(100 << 20))];
        assert!(check_process(&[("config.envs", &huge)]).is_err());
    }

    #[test]
    fn absurd_resources_are_refused_and_big_ones_pass() {
        let with = |quota: i64, period: i64, memory: i64| cri::LinuxContainerResources {
            cpu_quota: quota,
            cpu_period: period,
            memory_limit_in_bytes: memory,
            ..Default::default()
        };
        assert!(check_resources(None, "x").is_ok());
        assert!(check_resources(Some(&with(6_400_000, 100_000, 1 << 40)), "x").is_ok());
        let error = check_resources(
            Some(&with(100_000_000_000, 100_000, 0)),
            "config.linux.resources",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("config.linux.resources.cpu_quota"),
            "{error}"
        );
        // Without a period, the kernel's default of 100 ms.
        assert!(check_resources(Some(&with(1_000_000_000, 0, 0)), "x").is_err());
        let error = check_resources(Some(&with(0, 0, 1 << 60)), "r")
            .unwrap_err()
            .to_string();
        assert!(error.contains("r.memory_limit_in_bytes"), "{error}");
        assert!(check_resources(Some(&with(i64::MAX, 1, i64::MAX)), "x").is_err());
        assert!(check_mount_count(MAX_MOUNTS).is_ok());
        assert!(check_mount_count(MAX_MOUNTS + 1).is_err());
    }
}

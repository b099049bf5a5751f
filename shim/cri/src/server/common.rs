//! What the verbs share: required fields, the task a request runs on, the idempotence of
//! stop and remove, the host namespaces a VM pod cannot join, and usage figures.

use tonic::Status;
use vpod_proto::cri;

use super::status;
use crate::ids::IdError;
use crate::runtime::RuntimeError;

/// A required field that is missing or empty.
pub(super) fn missing(field: &str) -> RuntimeError {
    RuntimeError::invalid(field, "is required")
}

/// `value`, unless it is empty.
pub(super) fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field}: is required")))
    } else {
        Ok(value)
    }
}

/// Runs `work` on its own task: a client that gives up (the kubelet's deadline) must not
/// cancel a boot or a creation halfway, which would leave a half-made pod until a restart.
pub(super) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, RuntimeError>> + Send + 'static,
) -> Result<T, Status> {
    match tokio::spawn(work).await {
        Ok(result) => result.map_err(status),
        Err(e) => Err(Status::internal(format!("the request's task failed: {e}"))),
    }
}

/// Stop and remove of a pod or container are idempotent in the CRI: one that is already
/// gone (removed, or never known under that id) has nothing left to reclaim.
pub(super) fn gone_is_done(result: Result<(), RuntimeError>) -> Result<(), RuntimeError> {
    match result {
        Err(RuntimeError::Id(IdError::NotFound { .. })) => Ok(()),
        other => other,
    }
}

/// The host's network, PID and IPC namespaces are outside the VM: asking for one is an
/// error, not a silent namespace of the pod's own.
pub(super) fn refuse_host_namespaces(
    namespaces: &cri::NamespaceOption,
    field: &str,
) -> Result<(), RuntimeError> {
    let node = cri::NamespaceMode::Node as i32;
    for (name, mode) in [
        ("network", namespaces.network),
        ("pid", namespaces.pid),
        ("ipc", namespaces.ipc),
    ] {
        if mode == node {
            return Err(RuntimeError::invalid(
                format!("{field}.{name}"),
                format!("the host's {name} namespace is not reachable from a VM pod"),
            ));
        }
    }
    Ok(())
}

fn value(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

pub(super) fn cpu_usage(timestamp: i64, cpu_ns: Option<u64>) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp,
        usage_core_nano_seconds: value(cpu_ns),
        usage_nano_cores: None,
    }
}

/// Memory in use out of `limit` (a container's memory.max, or the pod VM's total).
pub(super) fn memory_usage(
    timestamp: i64,
    used: Option<u64>,
    limit: Option<u64>,
) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp,
        working_set_bytes: value(used),
        usage_bytes: value(used),
        available_bytes: value(
            limit
                .zip(used)
                .map(|(limit, used)| limit.saturating_sub(used)),
        ),
        ..Default::default()
    }
}

pub(super) fn process_usage(timestamp: i64, pids: Option<u64>) -> cri::ProcessUsage {
    cri::ProcessUsage {
        timestamp,
        process_count: value(pids),
    }
}

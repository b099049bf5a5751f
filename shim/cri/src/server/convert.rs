//! CRI messages to the runtime's requests (with validation: a missing or invalid field is
//! InvalidArgument naming it) and the runtime's records back to CRI messages.

use std::collections::HashMap;

use vpod_proto::cri;

use crate::filters::{ContainerFilter, PodFilter};
use crate::runtime::{
    ContainerEvent, ContainerEventKind, ContainerUsage, CreateContainer, PodUsage, RunPod,
    RuntimeError,
};
use crate::state::{
    ContainerLimits, ContainerPhase, ContainerRecord, MountRecord, PodPhase, PodRecord,
};

fn missing(field: &str) -> RuntimeError {
    RuntimeError::invalid(field, "is required")
}

/// RFC 1123 labels joined by dots, at most 63 characters (what the guest's hostname takes).
fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The host's network, PID and IPC namespaces are outside the VM: asking for one is an
/// error, not a silent namespace of the pod's own.
fn refuse_host_namespaces(
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

/// A sysctl name: parts of letters, digits, `_` and `-` between dots or slashes.
fn valid_sysctl(key: &str) -> bool {
    key.split(['.', '/']).all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// The paths containerd hides and makes read-only in a container whose security context
/// names none (its default OCI spec's lists).
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];
const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The given paths, or `defaults` when there are none; each must be absolute.
fn security_paths(
    given: Vec<String>,
    defaults: &[&str],
    field: &str,
) -> Result<Vec<String>, RuntimeError> {
    if given.is_empty() {
        return Ok(defaults.iter().map(|p| p.to_string()).collect());
    }
    for path in &given {
        if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
            return Err(RuntimeError::invalid(
                field,
                format!("{path:?} is not a clean absolute path"),
            ));
        }
    }
    Ok(given)
}

/// The host name of a pod that asked for none: its name, as the kubelet makes it (cut to 63
/// characters), with anything a host name cannot hold made a `-`; mixed case stays, as the
/// kernel takes it.
fn hostname_from_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = cleaned
        .trim_matches(|c| c == '-' || c == '.')
        .split('.')
        .map(|label| label.trim_matches('-'))
        .filter(|label| !label.is_empty())
        .collect::<Vec<_>>()
        .join(".");
    if trimmed.is_empty() {
        "pod".to_owned()
    } else {
        trimmed
    }
}

/// What the kubelet can ask for in a pod that a VM cannot give, refused by name.
pub fn run_pod_request(request: cri::RunPodSandboxRequest) -> Result<RunPod, RuntimeError> {
    let config = request.config.ok_or_else(|| missing("config"))?;
    let metadata = config.metadata.ok_or_else(|| missing("config.metadata"))?;
    for (field, value) in [
        ("config.metadata.name", &metadata.name),
        ("config.metadata.namespace", &metadata.namespace),
        ("config.metadata.uid", &metadata.uid),
    ] {
        if value.is_empty() {
            return Err(missing(field));
        }
    }
    if !matches!(request.runtime_handler.as_str(), "" | "vpod") {
        return Err(RuntimeError::invalid(
            "runtime_handler",
            format!(
                "{:?} is not a handler of this runtime (use \"\" or \"vpod\")",
                request.runtime_handler
            ),
        ));
    }
    let hostname = if config.hostname.is_empty() {
        hostname_from_name(&metadata.name)
    } else {
        config.hostname.clone()
    };
    if !valid_hostname(&hostname) {
        return Err(RuntimeError::invalid(
            "config.hostname",
            format!("{hostname:?} is not a valid host name"),
        ));
    }
    if !config.log_directory.is_empty() && !config.log_directory.starts_with('/') {
        return Err(RuntimeError::invalid(
            "config.log_directory",
            "must be an absolute path",
        ));
    }
    let dns = config.dns_config.unwrap_or_default();
    let linux = config.linux.unwrap_or_default();
    for key in linux.sysctls.keys() {
        if !valid_sysctl(key) {
            return Err(RuntimeError::invalid(
                "config.linux.sysctls",
                format!("{key:?} is not a sysctl name"),
            ));
        }
    }
    if let Some(namespaces) = linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.as_ref())
    {
        refuse_host_namespaces(
            namespaces,
            "config.linux.security_context.namespace_options",
        )?;
    }
    Ok(RunPod {
        name: metadata.name,
        uid: metadata.uid,
        namespace: metadata.namespace,
        attempt: metadata.attempt,
        hostname,
        log_directory: config.log_directory,
        dns_servers: dns.servers,
        dns_searches: dns.searches,
        dns_options: dns.options,
        labels: config.labels,
        annotations: config.annotations,
        runtime_handler: request.runtime_handler,
        resources: linux.resources,
        overhead: linux.overhead,
        sysctls: linux.sysctls,
    })
}

pub fn create_container_request(
    request: cri::CreateContainerRequest,
) -> Result<CreateContainer, RuntimeError> {
    if request.pod_sandbox_id.is_empty() {
        return Err(missing("pod_sandbox_id"));
    }
    let config = request.config.ok_or_else(|| missing("config"))?;
    let metadata = config.metadata.ok_or_else(|| missing("config.metadata"))?;
    if metadata.name.is_empty() {
        return Err(missing("config.metadata.name"));
    }
    let image = config
        .image
        .map(|i| i.image)
        .filter(|i| !i.is_empty())
        .ok_or_else(|| missing("config.image.image"))?;
    if config.tty {
        return Err(RuntimeError::invalid(
            "config.tty",
            "terminals are not supported yet",
        ));
    }
    if config.stdin {
        return Err(RuntimeError::invalid(
            "config.stdin",
            "attaching stdin is not supported yet",
        ));
    }
    if !config.devices.is_empty() || !config.cdi_devices.is_empty() {
        return Err(RuntimeError::invalid(
            "config.devices",
            "host devices cannot be passed into a VM pod",
        ));
    }
    if !config.working_dir.is_empty() && !config.working_dir.starts_with('/') {
        return Err(RuntimeError::invalid(
            "config.working_dir",
            "must be an absolute path",
        ));
    }
    let mut env = Vec::with_capacity(config.envs.len());
    for (i, kv) in config.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(RuntimeError::invalid(
                format!("config.envs[{i}].key"),
                format!("{:?} is not a variable name", kv.key),
            ));
        }
        env.push(format!("{}={}", kv.key, kv.value));
    }
    let mut mounts = Vec::new();
    for (i, mount) in config.mounts.iter().enumerate() {
        if !mount.container_path.starts_with('/') {
            return Err(RuntimeError::invalid(
                format!("config.mounts[{i}].container_path"),
                "must be an absolute path",
            ));
        }
        mounts.push(MountRecord {
            container_path: mount.container_path.clone(),
            host_path: mount.host_path.clone(),
            readonly: mount.readonly,
        });
    }
    let linux = config.linux.unwrap_or_default();
    let limits = linux
        .resources
        .as_ref()
        .map(container_limits)
        .unwrap_or_default();
    let security = linux.security_context.unwrap_or_default();
    let capabilities = security.capabilities.clone().unwrap_or_default();
    if security.privileged {
        return Err(RuntimeError::invalid(
            "config.linux.security_context.privileged",
            "privileged containers are not supported: the VM boundary has no host to expose",
        ));
    }
    if let Some(namespaces) = &security.namespace_options {
        refuse_host_namespaces(
            namespaces,
            "config.linux.security_context.namespace_options",
        )?;
    }
    let supplemental_groups = security
        .supplemental_groups
        .iter()
        .map(|&g| {
            u32::try_from(g).map_err(|_| {
                RuntimeError::invalid(
                    "config.linux.security_context.supplemental_groups",
                    format!("{g} is not a group id"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CreateContainer {
        pod_id: request.pod_sandbox_id,
        name: metadata.name,
        attempt: metadata.attempt,
        image,
        command: config.command,
        args: config.args,
        working_dir: config.working_dir,
        env,
        mounts,
        labels: config.labels,
        annotations: config.annotations,
        log_path: config.log_path,
        run_as_user: security.run_as_user.map(|v| v.value),
        run_as_group: security.run_as_group.map(|v| v.value),
        run_as_username: security.run_as_username,
        limits,
        add_capabilities: capabilities.add_capabilities,
        drop_capabilities: capabilities.drop_capabilities,
        readonly_rootfs: security.readonly_rootfs,
        supplemental_groups,
        no_new_privs: security.no_new_privs,
        masked_paths: security_paths(
            security.masked_paths,
            DEFAULT_MASKED_PATHS,
            "config.linux.security_context.masked_paths",
        )?,
        readonly_paths: security_paths(
            security.readonly_paths,
            DEFAULT_READONLY_PATHS,
            "config.linux.security_context.readonly_paths",
        )?,
        // containerd joins the sandbox's PID namespace unless CONTAINER is asked for (POD
        // is the protocol's zero value, so a request without options shares too).
        share_pod_pid: security
            .namespace_options
            .as_ref()
            .is_none_or(|n| n.pid != cri::NamespaceMode::Container as i32),
    })
}

/// The cgroup limits of CRI's container resources (CreateContainer and
/// UpdateContainerResources); negative or zero values are not set.
pub fn container_limits(r: &cri::LinuxContainerResources) -> ContainerLimits {
    ContainerLimits {
        cpu_shares: u64::try_from(r.cpu_shares).unwrap_or(0),
        cpu_quota_us: r.cpu_quota.max(0),
        cpu_period_us: u64::try_from(r.cpu_period).unwrap_or(0),
        memory_limit_bytes: r.memory_limit_in_bytes.max(0),
    }
}

/// The limits as ContainerStatus reports them; none when nothing was set.
fn container_resources(limits: &ContainerLimits) -> Option<cri::ContainerResources> {
    if limits.is_empty() {
        return None;
    }
    Some(cri::ContainerResources {
        linux: Some(cri::LinuxContainerResources {
            cpu_shares: i64::try_from(limits.cpu_shares).unwrap_or(i64::MAX),
            cpu_quota: limits.cpu_quota_us,
            cpu_period: i64::try_from(limits.cpu_period_us).unwrap_or(i64::MAX),
            memory_limit_in_bytes: limits.memory_limit_bytes,
            ..Default::default()
        }),
        ..Default::default()
    })
}

pub fn pod_filter(filter: Option<cri::PodSandboxFilter>) -> PodFilter {
    let filter = filter.unwrap_or_default();
    PodFilter {
        id: filter.id,
        ready: filter
            .state
            .map(|s| s.state == cri::PodSandboxState::SandboxReady as i32),
        labels: filter.label_selector,
    }
}

fn container_phase(state: i32) -> Option<ContainerPhase> {
    match cri::ContainerState::try_from(state).ok()? {
        cri::ContainerState::ContainerCreated => Some(ContainerPhase::Created),
        cri::ContainerState::ContainerRunning => Some(ContainerPhase::Running),
        cri::ContainerState::ContainerExited => Some(ContainerPhase::Exited),
        // Nothing is ever unknown to this runtime; Creating is never listed.
        cri::ContainerState::ContainerUnknown => Some(ContainerPhase::Creating),
    }
}

pub fn container_filter(filter: Option<cri::ContainerFilter>) -> ContainerFilter {
    let filter = filter.unwrap_or_default();
    ContainerFilter {
        id: filter.id,
        pod_id: filter.pod_sandbox_id,
        phase: filter.state.and_then(|s| container_phase(s.state)),
        labels: filter.label_selector,
    }
}

pub fn container_stats_filter(filter: Option<cri::ContainerStatsFilter>) -> ContainerFilter {
    let filter = filter.unwrap_or_default();
    ContainerFilter {
        id: filter.id,
        pod_id: filter.pod_sandbox_id,
        phase: None,
        labels: filter.label_selector,
    }
}

fn pod_metadata(pod: &PodRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: pod.name.clone(),
        uid: pod.uid.clone(),
        namespace: pod.namespace.clone(),
        attempt: pod.attempt,
    }
}

fn pod_state(pod: &PodRecord) -> i32 {
    match pod.phase {
        PodPhase::Ready => cri::PodSandboxState::SandboxReady as i32,
        _ => cri::PodSandboxState::SandboxNotready as i32,
    }
}

pub fn pod_sandbox(pod: &PodRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: pod.id.clone(),
        metadata: Some(pod_metadata(pod)),
        state: pod_state(pod),
        created_at: pod.created_at_ns,
        labels: pod.labels.clone(),
        annotations: pod.annotations.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    }
}

pub fn pod_status(pod: &PodRecord) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: pod.id.clone(),
        metadata: Some(pod_metadata(pod)),
        state: pod_state(pod),
        created_at: pod.created_at_ns,
        // No network status until the pod has an address: a kubelet takes an empty IP for a
        // broken sandbox and re-creates it.
        network: None,
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Pod as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
            }),
        }),
        labels: pod.labels.clone(),
        annotations: pod.annotations.clone(),
        runtime_handler: pod.runtime_handler.clone(),
    }
}

/// Extra detail for `crictl inspectp` (verbose): the VM's size and why it is NotReady.
pub fn pod_info(pod: &PodRecord) -> HashMap<String, String> {
    let info = serde_json::json!({
        "vcpus": pod.vcpus,
        "memoryMiB": pod.memory_mib,
        "hostname": pod.hostname,
        "dns": {"servers": pod.dns_servers, "searches": pod.dns_searches, "options": pod.dns_options},
        "reason": pod.reason,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

fn container_state(c: &ContainerRecord) -> i32 {
    match c.phase {
        ContainerPhase::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerPhase::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerPhase::Exited => cri::ContainerState::ContainerExited as i32,
        ContainerPhase::Creating => cri::ContainerState::ContainerUnknown as i32,
    }
}

fn image_spec(c: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: c.image.clone(),
        ..Default::default()
    }
}

fn container_metadata(c: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: c.name.clone(),
        attempt: c.attempt,
    }
}

pub fn container(c: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: Some(container_metadata(c)),
        image: Some(image_spec(c)),
        image_ref: c.image_id.clone(),
        state: container_state(c),
        created_at: c.created_at_ns,
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        image_id: c.image_id.clone(),
    }
}

pub fn container_status(c: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(container_metadata(c)),
        state: container_state(c),
        created_at: c.created_at_ns,
        started_at: c.started_at_ns,
        finished_at: c.finished_at_ns,
        exit_code: c.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.image_id.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
        mounts: c
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                ..Default::default()
            })
            .collect(),
        log_path: c.log_path.clone(),
        resources: container_resources(&c.limits),
        image_id: c.image_id.clone(),
        user: c.run_as_uid.map(|uid| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid,
                gid: c.run_as_gid.unwrap_or(0),
                supplemental_groups: Vec::new(),
            }),
        }),
    }
}

fn attributes(c: &ContainerRecord) -> cri::ContainerAttributes {
    cri::ContainerAttributes {
        id: c.id.clone(),
        metadata: Some(container_metadata(c)),
        labels: c.labels.clone(),
        annotations: c.annotations.clone(),
    }
}

fn value(v: Option<u64>) -> Option<cri::UInt64Value> {
    v.map(|value| cri::UInt64Value { value })
}

fn cpu_usage(timestamp: i64, cpu_ns: Option<u64>) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp,
        usage_core_nano_seconds: value(cpu_ns),
        usage_nano_cores: None,
    }
}

/// Memory in use out of `limit` (a container's memory.max, or the pod VM's total).
fn memory_usage(timestamp: i64, used: Option<u64>, limit: Option<u64>) -> cri::MemoryUsage {
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

/// A lifecycle event with the statuses the kubelet's evented PLEG reads: its pod's and
/// every container's of that pod (`snapshot`; none once the pod is removed).
pub fn container_event(
    event: &ContainerEvent,
    snapshot: Option<(PodRecord, Vec<ContainerRecord>)>,
) -> cri::ContainerEventResponse {
    let container_event_type = match event.kind {
        ContainerEventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
        ContainerEventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
        ContainerEventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
        ContainerEventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
    };
    let (pod_sandbox_status, containers_statuses) = match snapshot {
        Some((pod, containers)) => (
            Some(pod_status(&pod)),
            containers.iter().map(container_status).collect(),
        ),
        None => (None, Vec::new()),
    };
    cri::ContainerEventResponse {
        container_id: event.container_id.clone(),
        container_event_type: container_event_type as i32,
        created_at: event.at_ns,
        pod_sandbox_status,
        containers_statuses,
    }
}

pub fn container_stats(u: &ContainerUsage) -> cri::ContainerStats {
    let t = u.timestamp_ns;
    cri::ContainerStats {
        attributes: Some(attributes(&u.record)),
        cpu: Some(cpu_usage(t, u.cpu_ns)),
        memory: Some(memory_usage(t, u.memory_bytes, u.memory_limit_bytes)),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: t,
            fs_id: None,
            used_bytes: Some(cri::UInt64Value { value: 0 }),
            inodes_used: Some(cri::UInt64Value { value: 0 }),
        }),
        swap: None,
    }
}

pub fn pod_stats(u: &PodUsage) -> cri::PodSandboxStats {
    let t = u.timestamp_ns;
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: u.record.id.clone(),
            metadata: Some(pod_metadata(&u.record)),
            labels: u.record.labels.clone(),
            annotations: u.record.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu_usage(t, u.cpu_ns)),
            memory: Some(memory_usage(t, u.memory_used_bytes, u.memory_total_bytes)),
            network: None,
            process: Some(cri::ProcessUsage {
                timestamp: t,
                process_count: value(u.pids),
            }),
            containers: u.containers.iter().map(container_stats).collect(),
        }),
        windows: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_request() -> cri::RunPodSandboxRequest {
        cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "u-1".into(),
                    namespace: "default".into(),
                    attempt: 1,
                }),
                hostname: "web-0".into(),
                log_directory: "/var/log/pods/web".into(),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        }
    }

    fn field_of(result: Result<impl std::fmt::Debug, RuntimeError>) -> String {
        match result {
            Err(RuntimeError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_complete_pod_request_converts() {
        let pod = run_pod_request(pod_request()).unwrap();
        assert_eq!(
            (pod.name.as_str(), pod.hostname.as_str(), pod.attempt),
            ("web", "web-0", 1)
        );
    }

    #[test]
    fn missing_and_invalid_pod_fields_are_named() {
        let mut r = pod_request();
        r.config = None;
        assert_eq!(field_of(run_pod_request(r)), "config");
        let mut r = pod_request();
        r.config.as_mut().unwrap().metadata = None;
        assert_eq!(field_of(run_pod_request(r)), "config.metadata");
        let mut r = pod_request();
        r.config.as_mut().unwrap().metadata.as_mut().unwrap().name = String::new();
        assert_eq!(field_of(run_pod_request(r)), "config.metadata.name");
        let mut r = pod_request();
        r.config.as_mut().unwrap().metadata.as_mut().unwrap().uid = String::new();
        assert_eq!(field_of(run_pod_request(r)), "config.metadata.uid");
        let mut r = pod_request();
        r.config.as_mut().unwrap().hostname = "bad host!".into();
        assert_eq!(field_of(run_pod_request(r)), "config.hostname");
        let mut r = pod_request();
        r.runtime_handler = "runc".into();
        assert_eq!(field_of(run_pod_request(r)), "runtime_handler");
        let mut r = pod_request();
        r.config.as_mut().unwrap().log_directory = "relative".into();
        assert_eq!(field_of(run_pod_request(r)), "config.log_directory");
    }

    #[test]
    fn host_namespaces_are_refused_by_name() {
        for (which, set) in [
            ("network", (2, 0, 0)),
            ("pid", (0, 2, 0)),
            ("ipc", (0, 0, 2)),
        ] {
            let namespaces = cri::NamespaceOption {
                network: set.0,
                pid: set.1,
                ipc: set.2,
                ..Default::default()
            };
            let mut r = pod_request();
            r.config.as_mut().unwrap().linux = Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            assert_eq!(
                field_of(run_pod_request(r)),
                format!("config.linux.security_context.namespace_options.{which}")
            );
            let mut c = container_request();
            c.config.as_mut().unwrap().linux = Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces),
                    ..Default::default()
                }),
                ..Default::default()
            });
            assert_eq!(
                field_of(create_container_request(c)),
                format!("config.linux.security_context.namespace_options.{which}")
            );
        }
        // Pod and container modes are fine.
        let mut c = container_request();
        c.config.as_mut().unwrap().linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(!create_container_request(c).unwrap().share_pod_pid);
        // POD, or no options at all, shares the pod's, as containerd does.
        assert!(
            create_container_request(container_request())
                .unwrap()
                .share_pod_pid
        );
    }

    #[test]
    fn long_and_odd_pod_names_make_a_host_name() {
        let name = "PodSandbox-for-create-container-e2e-0123456789abcdef-0123456789abcde";
        assert_eq!(name.len(), 68);
        let made = hostname_from_name(name);
        assert_eq!(made, name[..63].trim_end_matches('-'));
        assert!(valid_hostname(&made));
        for (name, want) in [
            ("web_0", "web-0"),
            ("-a-", "a"),
            ("a..b", "a.b"),
            ("___", "pod"),
            ("a.-b", "a.b"),
            ("a.-.b", "a.b"),
        ] {
            assert_eq!(hostname_from_name(name), want);
            assert!(valid_hostname(&hostname_from_name(name)), "{name}");
        }
        let mut r = pod_request();
        let config = r.config.as_mut().unwrap();
        config.hostname = String::new();
        config.metadata.as_mut().unwrap().name = name.into();
        assert_eq!(run_pod_request(r).unwrap().hostname, made);
    }

    #[test]
    fn an_empty_hostname_is_the_pod_name() {
        let mut r = pod_request();
        r.config.as_mut().unwrap().hostname = String::new();
        assert_eq!(run_pod_request(r).unwrap().hostname, "web");
    }

    fn container_request() -> cri::CreateContainerRequest {
        cri::CreateContainerRequest {
            pod_sandbox_id: "abc".into(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                envs: vec![cri::KeyValue {
                    key: "A".into(),
                    value: "b=c".into(),
                }],
                ..Default::default()
            }),
            sandbox_config: None,
        }
    }

    #[test]
    fn a_complete_container_request_converts() {
        let c = create_container_request(container_request()).unwrap();
        assert_eq!(c.env, vec!["A=b=c".to_string()]);
        assert_eq!(c.image, "busybox");
    }

    #[test]
    fn resources_and_security_context_convert_and_status_reports_the_limits() {
        let mut r = container_request();
        r.config.as_mut().unwrap().linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                cpu_quota: -1,
                cpu_period: 100_000,
                memory_limit_in_bytes: 64 << 20,
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["ALL".into()],
                    ..Default::default()
                }),
                readonly_rootfs: true,
                ..Default::default()
            }),
        });
        let c = create_container_request(r).unwrap();
        let limits = ContainerLimits {
            cpu_shares: 512,
            cpu_quota_us: 0,
            cpu_period_us: 100_000,
            memory_limit_bytes: 64 << 20,
        };
        assert_eq!(c.limits, limits);
        assert_eq!(c.add_capabilities, vec!["NET_ADMIN".to_string()]);
        assert_eq!(c.drop_capabilities, vec!["ALL".to_string()]);
        assert!(c.readonly_rootfs);
        let reported = container_resources(&limits).unwrap().linux.unwrap();
        assert_eq!(reported.memory_limit_in_bytes, 64 << 20);
        assert_eq!((reported.cpu_shares, reported.cpu_quota), (512, 0));
        assert!(container_resources(&ContainerLimits::default()).is_none());
    }

    #[test]
    fn missing_and_invalid_container_fields_are_named() {
        let mut r = container_request();
        r.pod_sandbox_id = String::new();
        assert_eq!(field_of(create_container_request(r)), "pod_sandbox_id");
        let mut r = container_request();
        r.config.as_mut().unwrap().image = None;
        assert_eq!(field_of(create_container_request(r)), "config.image.image");
        let mut r = container_request();
        r.config.as_mut().unwrap().metadata = None;
        assert_eq!(field_of(create_container_request(r)), "config.metadata");
        let mut r = container_request();
        r.config.as_mut().unwrap().envs[0].key = String::new();
        assert_eq!(field_of(create_container_request(r)), "config.envs[0].key");
        let mut r = container_request();
        r.config.as_mut().unwrap().tty = true;
        assert_eq!(field_of(create_container_request(r)), "config.tty");
        let mut r = container_request();
        r.config.as_mut().unwrap().working_dir = "srv".into();
        assert_eq!(field_of(create_container_request(r)), "config.working_dir");
        let mut r = container_request();
        r.config.as_mut().unwrap().linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            field_of(create_container_request(r)),
            "config.linux.security_context.privileged"
        );
    }

    #[test]
    fn state_filters_map_to_phases() {
        let f = container_filter(Some(cri::ContainerFilter {
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        }));
        assert_eq!(f.phase, Some(ContainerPhase::Running));
        let p = pod_filter(Some(cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }));
        assert_eq!(p.ready, Some(false));
    }

    #[test]
    fn hostnames_are_rfc_1123() {
        assert!(valid_hostname("a"));
        assert!(valid_hostname("web-0.example"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("-a"));
        assert!(!valid_hostname("a_b"));
        assert!(!valid_hostname(&"a".repeat(64)));
    }
}

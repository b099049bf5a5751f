//! The records: what a pod and a container were asked for ([`PodSettings`],
//! [`ContainerSettings`]) and what the runtime made of them. Their JSON is the state
//! directory's format: a field added later has a default, so older records still load.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Where a pod is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodPhase {
    /// RunPodSandbox started; the VM may or may not exist.
    Creating,
    Ready,
    /// Stopped (or its VM died): no VM, the record stays until RemovePodSandbox.
    NotReady,
}

/// What the kubelet asked of a pod (RunPodSandbox's config, validated), kept as asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSettings {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: String,
    pub dns_servers: Vec<String>,
    pub dns_searches: Vec<String>,
    pub dns_options: Vec<String>,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub runtime_handler: String,
    /// Applied in every container's namespaces (records before this field have none).
    #[serde(default)]
    pub sysctls: HashMap<String, String>,
    /// Host ports forwarded to the pod (those with a host port only).
    #[serde(default)]
    pub port_mappings: Vec<PortMappingRecord>,
}

/// A host port forwarded to a port of the pod, as RunPodSandbox asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMappingRecord {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub container_port: u16,
    pub host_port: u16,
    /// Empty: every address of the host.
    #[serde(default)]
    pub host_ip: String,
}

/// The pod's network as CNI made it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetworkRecord {
    /// The pod's network namespace on the host.
    pub netns: std::path::PathBuf,
    /// The pod's addresses, the first one its primary IP (no prefix length).
    pub ips: Vec<String>,
}

/// A pod: what the kubelet asked for and what the runtime made of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    /// Flattened: the record's JSON has the settings' fields beside the others, as records
    /// written before the settings were a struct of their own have them.
    #[serde(flatten)]
    pub settings: PodSettings,
    pub created_at_ns: i64,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub phase: PodPhase,
    /// Why the pod is NotReady when it did not stop on request (e.g. its VM died).
    #[serde(default)]
    pub reason: String,
    /// The pod's network while it has one (none without a CNI configuration, and after
    /// StopPodSandbox).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<PodNetworkRecord>,
    /// The pod's cgroup on the host (its VMM's and virtiofsd's), recorded before it is made
    /// and until it is removed (at StopPodSandbox), so that a restarted runtime removes
    /// what a crash left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<std::path::PathBuf>,
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerPhase {
    /// CreateContainer started; the guest may or may not have it.
    Creating,
    Created,
    Running,
    Exited,
}

/// What CreateContainer asked of a container that its record keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSettings {
    pub name: String,
    pub attempt: u32,
    /// The image as the request named it.
    pub image: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    /// Mounts as requested (for ContainerStatus).
    #[serde(default)]
    pub mounts: Vec<MountRecord>,
    /// The security context's run_as_user and run_as_group.
    #[serde(default)]
    pub run_as_uid: Option<i64>,
    #[serde(default)]
    pub run_as_gid: Option<i64>,
    /// The resource limits last applied (CreateContainer's, then UpdateContainerResources').
    #[serde(default)]
    pub limits: ContainerLimits,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    /// Flattened, as [`PodRecord::settings`] is.
    #[serde(flatten)]
    pub settings: ContainerSettings,
    pub image_id: String,
    /// Absolute on the host; empty when the pod has no log directory or the container no
    /// log path.
    pub log_path: String,
    pub created_at_ns: i64,
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
    pub exit_code: i32,
    pub phase: ContainerPhase,
    pub reason: String,
    pub message: String,
}

/// A container's cgroup limits in CRI's terms; zero: not set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerLimits {
    pub cpu_shares: u64,
    pub cpu_quota_us: i64,
    pub cpu_period_us: u64,
    pub memory_limit_bytes: i64,
}

impl ContainerLimits {
    pub fn is_empty(&self) -> bool {
        *self == ContainerLimits::default()
    }

    /// An update's limits applied over the `current` ones: a field the update leaves at zero
    /// keeps its current value, as containerd treats UpdateContainerResources (so that
    /// `crictl update --memory N` does not lift the container's CPU limits).
    pub fn over(self, current: ContainerLimits) -> ContainerLimits {
        fn pick<T: Default + PartialEq>(update: T, current: T) -> T {
            if update == T::default() {
                current
            } else {
                update
            }
        }
        ContainerLimits {
            cpu_shares: pick(self.cpu_shares, current.cpu_shares),
            cpu_quota_us: pick(self.cpu_quota_us, current.cpu_quota_us),
            cpu_period_us: pick(self.cpu_period_us, current.cpu_period_us),
            memory_limit_bytes: pick(self.memory_limit_bytes, current.memory_limit_bytes),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    /// Mounts made later under the host path reach the container (HostToContainer).
    #[serde(default)]
    pub host_to_container: bool,
}

/// A pod record for tests.
#[cfg(test)]
pub(super) fn sample_pod(id: &str) -> PodRecord {
    PodRecord {
        id: id.to_string(),
        settings: PodSettings {
            name: "web".into(),
            uid: "u1".into(),
            namespace: "default".into(),
            attempt: 0,
            hostname: "web".into(),
            log_directory: "/var/log/pods/x".into(),
            dns_servers: vec!["10.0.0.10".into()],
            dns_searches: vec![],
            dns_options: vec![],
            labels: HashMap::from([("app".to_string(), "web".to_string())]),
            annotations: HashMap::new(),
            runtime_handler: String::new(),
            sysctls: Default::default(),
            port_mappings: Vec::new(),
        },
        created_at_ns: 1,
        vcpus: 1,
        memory_mib: 256,
        phase: PodPhase::Ready,
        reason: String::new(),
        network: None,
        cgroup: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_keeps_the_limits_it_leaves_at_zero() {
        let current = ContainerLimits {
            cpu_shares: 512,
            cpu_quota_us: 50_000,
            cpu_period_us: 100_000,
            memory_limit_bytes: 64 << 20,
        };
        let memory_only = ContainerLimits {
            memory_limit_bytes: 32 << 20,
            ..Default::default()
        };
        assert_eq!(
            memory_only.over(current),
            ContainerLimits {
                memory_limit_bytes: 32 << 20,
                ..current
            }
        );
        assert_eq!(ContainerLimits::default().over(current), current);
        assert_eq!(current.over(ContainerLimits::default()), current);
    }

    /// A pod record as this runtime wrote them before its settings were a struct of their
    /// own, and before `sysctls` and `reason` existed.
    const OLD_POD_RECORD: &str = r#"{
  "id": "0123456789abcdef0123456789abcdef",
  "name": "web",
  "uid": "u1",
  "namespace": "default",
  "attempt": 0,
  "hostname": "web",
  "log_directory": "/var/log/pods/x",
  "dns_servers": ["10.0.0.10"],
  "dns_searches": [],
  "dns_options": [],
  "labels": {"app": "web"},
  "annotations": {},
  "runtime_handler": "",
  "created_at_ns": 1,
  "vcpus": 1,
  "memory_mib": 256,
  "phase": "Ready"
}"#;

    /// A container record as this runtime wrote them before its settings were a struct of
    /// their own, with every field they had then.
    const OLD_CONTAINER_RECORD: &str = r#"{
  "id": "fedcba9876543210fedcba9876543210",
  "pod_id": "0123456789abcdef0123456789abcdef",
  "name": "app",
  "attempt": 2,
  "image": "busybox",
  "image_id": "sha256:abc",
  "labels": {"tier": "front"},
  "annotations": {},
  "log_path": "/var/log/pods/x/app/2.log",
  "created_at_ns": 10,
  "started_at_ns": 11,
  "finished_at_ns": 0,
  "exit_code": 0,
  "phase": "Running",
  "reason": "",
  "message": "",
  "mounts": [{"container_path": "/etc/cfg", "host_path": "/srv/cfg", "readonly": true}],
  "run_as_uid": 1000,
  "run_as_gid": null,
  "limits": {"cpu_shares": 512, "cpu_quota_us": 0, "cpu_period_us": 0, "memory_limit_bytes": 0}
}"#;

    fn keys(json: &str) -> Vec<String> {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    #[test]
    fn records_written_before_the_settings_structs_still_load() {
        let old: PodRecord = serde_json::from_str(OLD_POD_RECORD).unwrap();
        assert_eq!(old, sample_pod("0123456789abcdef0123456789abcdef"));
        let old: ContainerRecord = serde_json::from_str(OLD_CONTAINER_RECORD).unwrap();
        assert_eq!(old.settings.name, "app");
        assert_eq!(old.settings.attempt, 2);
        assert_eq!(old.settings.labels["tier"], "front");
        assert_eq!(old.settings.mounts[0].host_path, "/srv/cfg");
        assert_eq!(
            (old.settings.run_as_uid, old.settings.run_as_gid),
            (Some(1000), None)
        );
        assert_eq!(old.settings.limits.cpu_shares, 512);
        assert_eq!(old.phase, ContainerPhase::Running);
    }

    #[test]
    fn records_are_written_with_the_keys_they_always_had() {
        let mut pod = sample_pod("0123456789abcdef0123456789abcdef");
        pod.reason = "VmExited".into();
        let written = serde_json::to_string(&pod).unwrap();
        let mut old_keys = keys(OLD_POD_RECORD);
        old_keys.extend(["reason", "sysctls", "port_mappings"].map(String::from));
        old_keys.sort();
        assert_eq!(keys(&written), old_keys);
        let container: ContainerRecord = serde_json::from_str(OLD_CONTAINER_RECORD).unwrap();
        let written = serde_json::to_string(&container).unwrap();
        assert_eq!(keys(&written), keys(OLD_CONTAINER_RECORD));
        assert_eq!(
            serde_json::from_str::<ContainerRecord>(&written).unwrap(),
            container
        );
    }
}

//! What survives a restart of `vpod-cri`: one JSON record per pod and per container under
//! `<root>/cri/`, each written atomically (temporary file, fsync, rename, fsync of the
//! directory).
//!
//! ```text
//! <root>/cri/pods/<pod id>.json              a PodRecord
//! <root>/cri/containers/<container id>.json  a ContainerRecord
//! <root>/cri/offsets/<container id>         how far its log file has its output
//! <root>/cri/tmp/                            records being written
//! ```
//!
//! The log offset is rewritten in place (8 bytes, no fsync) after every write to the log
//! file: a killed daemon's writes stay in the page cache, so a restart resumes the log
//! exactly where it stopped (power loss may lose the tail of both).
//!
//! A record is written with phase `Creating` before anything with side effects (booting a
//! VM, creating a container in the guest) starts, so a daemon killed in the middle leaves a
//! record that the next start finds and undoes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::is_runtime_id;

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("could not {operation} {path}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the state record {path} is not valid")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_owned();
    move |source| StateError::Io {
        operation,
        path,
        source,
    }
}

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
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating) `<root>/cri`.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        let state = StateDir {
            root: root.join("cri"),
        };
        for dir in [
            state.pods_dir(),
            state.containers_dir(),
            state.tmp_dir(),
            state.offsets_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        }
        Ok(state)
    }

    fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }

    fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn offsets_dir(&self) -> PathBuf {
        self.root.join("offsets")
    }

    /// The log offset file of a container, opened (created) for updates.
    pub fn log_offset(&self, id: &str) -> Result<LogOffset, StateError> {
        let path = self.offsets_dir().join(id);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error("open", &path))?;
        Ok(LogOffset { file })
    }

    pub fn remove_log_offset(&self, id: &str) -> Result<(), StateError> {
        remove_if_present(&self.offsets_dir().join(id))
    }

    pub fn write_pod(&self, pod: &PodRecord) -> Result<(), StateError> {
        self.write(&self.pods_dir().join(format!("{}.json", pod.id)), pod)
    }

    pub fn write_container(&self, container: &ContainerRecord) -> Result<(), StateError> {
        let path = self.containers_dir().join(format!("{}.json", container.id));
        self.write(&path, container)
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), StateError> {
        remove_if_present(&self.pods_dir().join(format!("{id}.json")))
    }

    pub fn remove_container(&self, id: &str) -> Result<(), StateError> {
        remove_if_present(&self.containers_dir().join(format!("{id}.json")))
    }

    /// Every pod record, and the names of files that are not readable records.
    pub fn pods(&self) -> Result<(Vec<PodRecord>, Vec<PathBuf>), StateError> {
        read_all(&self.pods_dir())
    }

    pub fn containers(&self) -> Result<(Vec<ContainerRecord>, Vec<PathBuf>), StateError> {
        read_all(&self.containers_dir())
    }

    /// Removes leftovers of writes a crash interrupted.
    pub fn clean_tmp(&self) -> Result<(), StateError> {
        let dir = self.tmp_dir();
        for entry in fs::read_dir(&dir).map_err(io_error("list", &dir))? {
            let entry = entry.map_err(io_error("list", &dir))?;
            remove_if_present(&entry.path())?;
        }
        Ok(())
    }

    fn write<T: Serialize>(&self, path: &Path, record: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| StateError::Record {
            path: path.to_owned(),
            source,
        })?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record");
        let temp = self.tmp_dir().join(format!(
            "{name}.{}.{}",
            std::process::id(),
            crate::logformat::now_ns()
        ));
        let result = (|| {
            let mut file = File::create(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&temp, path)?;
            File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result.map_err(io_error("write", path))
    }
}

/// How far a container's log file has its output, kept in an 8-byte file.
#[derive(Debug)]
pub struct LogOffset {
    file: File,
}

impl LogOffset {
    /// The stored offset; 0 for a new or short file.
    pub fn load(&self) -> u64 {
        use std::os::unix::fs::FileExt;
        let mut bytes = [0u8; 8];
        match self.file.read_exact_at(&mut bytes, 0) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => 0,
        }
    }

    pub fn store(&self, offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(&offset.to_le_bytes(), 0)
    }
}

fn remove_if_present(path: &Path) -> Result<(), StateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("remove", path)(e)),
    }
}

fn read_all<T: DeserializeOwned>(dir: &Path) -> Result<(Vec<T>, Vec<PathBuf>), StateError> {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let id = name.to_str().and_then(|n| n.strip_suffix(".json"));
        if !id.is_some_and(is_runtime_id) {
            bad.push(path);
            continue;
        }
        let bytes = fs::read(&path).map_err(io_error("read", &path))?;
        match serde_json::from_slice(&bytes) {
            Ok(record) => records.push(record),
            Err(_) => bad.push(path),
        }
    }
    Ok((records, bad))
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

    pub fn pod(id: &str) -> PodRecord {
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
            },
            created_at_ns: 1,
            vcpus: 1,
            memory_mib: 256,
            phase: PodPhase::Ready,
            reason: String::new(),
        }
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
        assert_eq!(old, pod("0123456789abcdef0123456789abcdef"));
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
        let mut pod = pod("0123456789abcdef0123456789abcdef");
        pod.reason = "VmExited".into();
        let written = serde_json::to_string(&pod).unwrap();
        let mut old_keys = keys(OLD_POD_RECORD);
        old_keys.extend(["reason".to_string(), "sysctls".to_string()]);
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

    #[test]
    fn records_round_trip_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let mut p = pod(id);
        state.write_pod(&p).unwrap();
        p.phase = PodPhase::NotReady;
        state.write_pod(&p).unwrap();
        let (pods, bad) = state.pods().unwrap();
        assert_eq!(pods, vec![p]);
        assert!(bad.is_empty());
        state.remove_pod(id).unwrap();
        state.remove_pod(id).unwrap();
        assert!(state.pods().unwrap().0.is_empty());
        // Nothing is left in tmp/.
        assert_eq!(fs::read_dir(dir.path().join("cri/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn foreign_and_corrupt_files_are_reported_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let pods = dir.path().join("cri/pods");
        fs::write(pods.join("notes.txt"), "x").unwrap();
        fs::write(pods.join(format!("{}.json", "a".repeat(32))), "{trunc").unwrap();
        let (records, bad) = state.pods().unwrap();
        assert!(records.is_empty());
        assert_eq!(bad.len(), 2);
    }

    #[test]
    fn log_offsets_are_kept_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let offset = state.log_offset("c1").unwrap();
        assert_eq!(offset.load(), 0);
        offset.store(12345).unwrap();
        offset.store(67890).unwrap();
        assert_eq!(state.log_offset("c1").unwrap().load(), 67890);
        state.remove_log_offset("c1").unwrap();
        assert_eq!(state.log_offset("c1").unwrap().load(), 0);
    }

    #[test]
    fn clean_tmp_removes_interrupted_writes() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        fs::write(dir.path().join("cri/tmp/x.json.1.2"), "half").unwrap();
        state.clean_tmp().unwrap();
        assert_eq!(fs::read_dir(dir.path().join("cri/tmp")).unwrap().count(), 0);
    }
}

//! CreateContainer: the image's config, the request and the pod merged into the runtime
//! spec; the container made in the guest with the image's layers attached as disks, its
//! record written first so that a daemon killed in the middle leaves something for recovery
//! to undo.

use std::path::{Component, Path};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vpod_sandbox::{
    BlockVolume, ContainerSpec, ContainerStdin, RootfsSource, SandboxError, ShareError,
};

use super::empty_dir;
use super::spec::{bind_mounts, container_spec};
use crate::guest_files::container_files;
use crate::logformat::now_ns;
use crate::runtime::{
    container_name_key, error_chain, lock, pod_not_ready, Container, ContainerEventKind, Pod,
    Runtime, RuntimeError,
};
use crate::state::{ContainerPhase, ContainerRecord, ContainerSettings, MountRecord, PodPhase};

/// A validated CreateContainer request: the settings its record keeps and what only goes
/// into the runtime spec.
#[derive(Debug, Clone, Default)]
pub struct CreateContainer {
    /// The pod as the request names it (an id or a unique prefix of one).
    pub pod_id: String,
    pub settings: ContainerSettings,
    /// Replaces the image's Entrypoint when not empty (Kubernetes' `command`).
    pub command: Vec<String>,
    /// Replaces the image's Cmd when not empty (Kubernetes' `args`).
    pub args: Vec<String>,
    pub working_dir: String,
    /// "KEY=VALUE".
    pub env: Vec<String>,
    /// Relative to the pod's log directory.
    pub log_path: String,
    /// The security context's run_as_username; its uid and gid are in the settings.
    pub run_as_username: String,
    /// Capability names added to and dropped from the default set ("ALL" allowed).
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<u32>,
    pub no_new_privs: bool,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// In the pod's shared PID namespace (CRI's pid = POD, the default, as containerd).
    pub share_pod_pid: bool,
    /// A pseudo-terminal as the main process's stdio.
    pub tty: bool,
    /// A stdin fed by attachers; with `stdin_once`, closed when the first one leaves.
    pub stdin: bool,
    pub stdin_once: bool,
    pub seccomp: super::seccomp::SeccompChoice,
    /// CRI `devices`, checked: raw block volumes attached as disks.
    pub block_volumes: Vec<BlockVolume>,
}

/// `log_directory/log_path`, refusing a log path that leaves the directory.
pub fn host_log_path(log_directory: &str, log_path: &str) -> Result<String, RuntimeError> {
    if log_path.is_empty() || log_directory.is_empty() {
        return Ok(String::new());
    }
    let relative = Path::new(log_path);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(RuntimeError::invalid(
            "config.log_path",
            format!("{log_path:?} must be a relative path inside the pod's log directory"),
        ));
    }
    Ok(Path::new(log_directory)
        .join(relative)
        .to_string_lossy()
        .into_owned())
}

/// The user the process runs as, as the merge understands it ("UID[:GID]", a name).
fn user_override(request: &CreateContainer) -> Result<Option<String>, RuntimeError> {
    let settings = &request.settings;
    if settings.run_as_gid.is_some()
        && settings.run_as_uid.is_none()
        && request.run_as_username.is_empty()
    {
        return Err(RuntimeError::invalid(
            "config.linux.security_context.run_as_group",
            "is only allowed together with run_as_user or run_as_username",
        ));
    }
    let id = |value: i64, field: &str| {
        u32::try_from(value).map_err(|_| {
            RuntimeError::invalid(
                format!("config.linux.security_context.{field}"),
                format!("{value} is not a valid id"),
            )
        })
    };
    let gid = settings
        .run_as_gid
        .map(|g| id(g, "run_as_group"))
        .transpose()?;
    if let Some(uid) = settings.run_as_uid {
        let uid = id(uid, "run_as_user")?;
        return Ok(Some(match gid {
            Some(gid) => format!("{uid}:{gid}"),
            None => uid.to_string(),
        }));
    }
    if !request.run_as_username.is_empty() {
        let name = &request.run_as_username;
        return Ok(Some(match gid {
            Some(gid) => format!("{name}:{gid}"),
            None => name.clone(),
        }));
    }
    Ok(None)
}

impl Runtime {
    /// Creates the container in its pod's VM; its id.
    pub async fn create_container(&self, request: CreateContainer) -> Result<String, RuntimeError> {
        let pod = self.pod(&request.pod_id)?;
        let pod_record = pod.record();
        if pod_record.phase != PodPhase::Ready {
            return Err(pod_not_ready(&pod.id));
        }
        let log_path = host_log_path(&pod_record.settings.log_directory, &request.log_path)?;
        let user = user_override(&request)?;
        let settings = &request.settings;
        let Some(image) = self.images.status(&settings.image).await? else {
            return Err(RuntimeError::NotFound(format!(
                "the image {:?} is not present; pull it first",
                settings.image
            )));
        };
        // Plain emptyDirs on disks of their own; with the pod's shared directory every
        // other mount is a bind through it; without, a container must not start without a
        // volume it asked for: refuse what cannot be copied into the VM (directories)
        // before anything is made.
        let (dir_disks, mounts) = if self.config.pod.empty_dir_disks {
            empty_dir::split_mounts(&settings.mounts, self.config.pod.empty_dir_disk_mib << 20)?
        } else {
            (Vec::new(), settings.mounts.clone())
        };
        let volumes = self.config.pod.volumes;
        let copied: &[MountRecord] = if volumes { &[] } else { &mounts };
        let (files, refused) = container_files(&pod_record, copied);
        if let Some(mount) = refused.first() {
            return Err(RuntimeError::invalid(
                "config.mounts",
                format!(
                    "the mount at {} cannot be given to a VM pod without volumes \
                     ([pod] volumes = false): {}",
                    mount.container_path, mount.why
                ),
            ));
        }
        let mut runtime_spec = container_spec(&image.image.config, &request, &pod_record, user)?;
        if volumes {
            runtime_spec.set_mounts(Some(bind_mounts(&mounts)?));
        }
        let name_key = container_name_key(&pod.id, settings);
        if !self.reserve_name(name_key.clone()) {
            return Err(RuntimeError::AlreadyExists(format!(
                "a container named {:?} (attempt {}) already exists in pod {}",
                settings.name, settings.attempt, pod.id
            )));
        }
        let id = match crate::ids::new_id() {
            Ok(id) => id,
            Err(e) => {
                self.release_name(&name_key);
                return Err(e.into());
            }
        };
        let record = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            settings: request.settings,
            image_id: image.id.clone(),
            log_path,
            created_at_ns: now_ns(),
            started_at_ns: 0,
            finished_at_ns: 0,
            exit_code: 0,
            phase: ContainerPhase::Creating,
            reason: String::new(),
            message: String::new(),
        };
        let spec = ContainerSpec {
            id: id.clone(),
            spec: runtime_spec,
            rootfs: RootfsSource::Layers(image.image.layers.clone()),
            files,
            stdin: ContainerStdin {
                open: request.stdin,
                once: request.stdin_once,
            },
            block_volumes: request.block_volumes,
            dir_disks,
        };
        let created = self.create_in_guest(&pod, record, spec).await;
        if created.is_err() {
            self.release_name(&name_key);
        }
        created
    }

    async fn create_in_guest(
        &self,
        pod: &Pod,
        mut record: ContainerRecord,
        spec: ContainerSpec,
    ) -> Result<String, RuntimeError> {
        let id = record.id.clone();
        // The intent: a daemon killed from here on leaves this record for recovery.
        self.state.write_container(&record)?;
        let created = {
            let mut slot = pod.sandbox.write().await;
            match slot.as_mut() {
                Some(sandbox) => sandbox.create_container(spec).await.map_err(|e| match e {
                    SandboxError::Spec(m) => RuntimeError::invalid("config", m.to_string()),
                    e @ SandboxError::Volume(_, ShareError::Source(..)) => {
                        RuntimeError::invalid("config.mounts", error_chain(&e))
                    }
                    e @ (SandboxError::BlockVolume(..)
                    | SandboxError::NoFreeSlotForVolume { .. }) => {
                        RuntimeError::invalid("config.devices", error_chain(&e))
                    }
                    e @ SandboxError::DirDisk(..) => {
                        RuntimeError::invalid("config.mounts", error_chain(&e))
                    }
                    other => other.into(),
                }),
                None => Err(pod_not_ready(&pod.id)),
            }
        };
        if let Err(e) = created {
            let _ = self.state.remove_container(&id);
            return Err(e);
        }
        if let Some(delay) = test_delay_after_guest_create() {
            tracing::warn!(container = %id, ?delay, "test hook: pausing before recording the container");
            tokio::time::sleep(delay).await;
        }
        record.phase = ContainerPhase::Created;
        self.state.write_container(&record)?;
        tracing::info!(container = %id, pod = %pod.id, name = %record.settings.name, "container created");
        self.emit(&id, &pod.id, ContainerEventKind::Created);
        lock(&self.containers).insert(
            id.clone(),
            Arc::new(Container {
                id: id.clone(),
                record: Mutex::new(record),
                log: Mutex::new(None),
                follower: Mutex::new(None),
            }),
        );
        Ok(id)
    }
}

/// A fault-injection hook for the crash tests: `VPOD_CRI_TEST_DELAY_CREATE_MS` pauses
/// CreateContainer after the guest made the container and before it is recorded, the
/// window in which a crash leaves the most to undo.
fn test_delay_after_guest_create() -> Option<Duration> {
    std::env::var("VPOD_CRI_TEST_DELAY_CREATE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_stay_inside_the_log_directory() {
        assert_eq!(
            host_log_path("/var/log/pods/x", "c/0.log").unwrap(),
            "/var/log/pods/x/c/0.log"
        );
        assert_eq!(host_log_path("", "c/0.log").unwrap(), "");
        assert_eq!(host_log_path("/d", "").unwrap(), "");
        for bad in ["../x.log", "/etc/passwd", "c/../../x"] {
            assert!(
                matches!(
                    host_log_path("/d", bad),
                    Err(RuntimeError::InvalidArgument { ref field, .. }) if field == "config.log_path"
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn users_combine_uid_gid_and_name() {
        let request = |uid, gid, name: &str| CreateContainer {
            settings: ContainerSettings {
                run_as_uid: uid,
                run_as_gid: gid,
                ..Default::default()
            },
            run_as_username: name.to_string(),
            ..Default::default()
        };
        assert_eq!(user_override(&request(None, None, "")).unwrap(), None);
        assert_eq!(
            user_override(&request(Some(1000), None, "")).unwrap(),
            Some("1000".into())
        );
        assert_eq!(
            user_override(&request(Some(1000), Some(10), "")).unwrap(),
            Some("1000:10".into())
        );
        assert_eq!(
            user_override(&request(None, None, "nobody")).unwrap(),
            Some("nobody".into())
        );
        assert!(user_override(&request(None, Some(10), "")).is_err());
        assert!(user_override(&request(Some(-1), None, "")).is_err());
    }
}

//! CreateContainer: the container's config, validated (a missing or invalid field is
//! InvalidArgument naming it; what a VM cannot give is refused by name), made in its pod.

use std::path::PathBuf;
use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;
use vpod_sandbox::block_volume::{check_host_path, BlockVolume};

use super::limits;
use crate::runtime::{seccomp, CreateContainer, Runtime, RuntimeError, SeccompChoice};
use crate::server::bounds;
use crate::server::common::{detached, missing, refuse_host_namespaces};
use crate::server::status;
use crate::state::{ContainerSettings, MountRecord};

pub(in crate::server) async fn create_container(
    runtime: &Arc<Runtime>,
    request: cri::CreateContainerRequest,
) -> Result<cri::CreateContainerResponse, Status> {
    let create = create_container_request(request).map_err(status)?;
    let runtime = runtime.clone();
    let container_id = detached(async move { runtime.create_container(create).await }).await?;
    Ok(cri::CreateContainerResponse { container_id })
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

fn create_container_request(
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
    if !config.cdi_devices.is_empty() {
        return Err(RuntimeError::invalid(
            "config.cdi_devices",
            "CDI devices name the host's devices, which a VM pod cannot reach",
        ));
    }
    let block_volumes = block_volumes(&config.devices)?;
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
    bounds::check_process(&[
        ("config.command", &config.command),
        ("config.args", &config.args),
        ("config.envs", &env),
    ])?;
    bounds::check_mount_count(config.mounts.len())?;
    let mut mounts = Vec::new();
    for (i, mount) in config.mounts.iter().enumerate() {
        if !mount.container_path.starts_with('/') {
            return Err(RuntimeError::invalid(
                format!("config.mounts[{i}].container_path"),
                "must be an absolute path",
            ));
        }
        let propagation = cri::MountPropagation::try_from(mount.propagation)
            .unwrap_or(cri::MountPropagation::PropagationPrivate);
        if propagation == cri::MountPropagation::PropagationBidirectional {
            return Err(RuntimeError::invalid(
                format!("config.mounts[{i}].propagation"),
                format!(
                    "the mount at {} asks for bidirectional propagation: mounts made in a VM \
                     pod cannot reach the host",
                    mount.container_path
                ),
            ));
        }
        mounts.push(MountRecord {
            container_path: mount.container_path.clone(),
            host_path: mount.host_path.clone(),
            readonly: mount.readonly,
            host_to_container: propagation == cri::MountPropagation::PropagationHostToContainer,
        });
    }
    let linux = config.linux.unwrap_or_default();
    bounds::check_resources(linux.resources.as_ref(), "config.linux.resources")?;
    let limits = linux.resources.as_ref().map(limits).unwrap_or_default();
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
    let seccomp = seccomp_choice(&security)?;
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
        settings: ContainerSettings {
            name: metadata.name,
            attempt: metadata.attempt,
            image,
            labels: config.labels,
            annotations: config.annotations,
            mounts,
            run_as_uid: security.run_as_user.map(|v| v.value),
            run_as_gid: security.run_as_group.map(|v| v.value),
            limits,
        },
        command: config.command,
        args: config.args,
        working_dir: config.working_dir,
        env,
        log_path: config.log_path,
        run_as_username: security.run_as_username,
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
        tty: config.tty,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        seccomp,
        block_volumes,
    })
}

/// CRI `devices` as raw block volumes: each host path a block device or a disk image file
/// (a VM cannot get the host's character devices), each container path clean and absolute,
/// the permissions a subset of "rwm" (without "w": read-only; empty: "rwm").
fn block_volumes(devices: &[cri::Device]) -> Result<Vec<BlockVolume>, RuntimeError> {
    let mut volumes: Vec<BlockVolume> = Vec::with_capacity(devices.len());
    for (i, device) in devices.iter().enumerate() {
        let field = |name: &str| format!("config.devices[{i}].{name}");
        let path = &device.container_path;
        if !path.starts_with('/')
            || path.trim_matches('/').is_empty()
            || path.split('/').any(|p| p == ".." || p == ".")
        {
            return Err(RuntimeError::invalid(
                field("container_path"),
                format!("{path:?} is not a clean absolute path below /"),
            ));
        }
        if volumes.iter().any(|v| v.container_path == *path) {
            return Err(RuntimeError::invalid(
                field("container_path"),
                format!("{path:?} is given twice"),
            ));
        }
        let permissions = &device.permissions;
        if !permissions.chars().all(|c| "rwm".contains(c)) {
            return Err(RuntimeError::invalid(
                field("permissions"),
                format!("{permissions:?} is not a combination of r, w and m"),
            ));
        }
        let host_path = PathBuf::from(&device.host_path);
        check_host_path(&host_path)
            .map_err(|e| RuntimeError::invalid(field("host_path"), e.to_string()))?;
        volumes.push(BlockVolume {
            host_path,
            container_path: path.clone(),
            read_only: !permissions.is_empty() && !permissions.contains('w'),
        });
    }
    Ok(volumes)
}

/// The container's seccomp profile: the `seccomp` field when set, else the deprecated
/// profile path, as containerd reads them.
fn seccomp_choice(
    security: &cri::LinuxContainerSecurityContext,
) -> Result<SeccompChoice, RuntimeError> {
    use cri::security_profile::ProfileType;
    let Some(profile) = &security.seccomp else {
        // Deprecated in the CRI, but what critest and older kubelets send.
        #[allow(deprecated)]
        let path = &security.seccomp_profile_path;
        return SeccompChoice::from_profile_path(path);
    };
    match ProfileType::try_from(profile.profile_type) {
        Ok(ProfileType::RuntimeDefault) => Ok(SeccompChoice::RuntimeDefault),
        Ok(ProfileType::Unconfined) => Ok(SeccompChoice::Unconfined),
        Ok(ProfileType::Localhost) => SeccompChoice::localhost(&profile.localhost_ref),
        Err(_) => Err(RuntimeError::invalid(
            seccomp::FIELD,
            format!("{} is not a profile type", profile.profile_type),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ContainerLimits;

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

    fn field_of(result: Result<CreateContainer, RuntimeError>) -> String {
        match result {
            Err(RuntimeError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_complete_container_request_converts() {
        let c = create_container_request(container_request()).unwrap();
        assert_eq!(c.env, vec!["A=b=c".to_string()]);
        assert_eq!(c.settings.image, "busybox");
    }

    #[test]
    fn resources_and_security_context_convert() {
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
        assert_eq!(c.settings.limits, limits);
        assert_eq!(c.add_capabilities, vec!["NET_ADMIN".to_string()]);
        assert_eq!(c.drop_capabilities, vec!["ALL".to_string()]);
        assert!(c.readonly_rootfs);
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

    fn with_device(
        host_path: &str,
        container_path: &str,
        permissions: &str,
    ) -> cri::CreateContainerRequest {
        let mut r = container_request();
        r.config.as_mut().unwrap().devices = vec![cri::Device {
            host_path: host_path.into(),
            container_path: container_path.into(),
            permissions: permissions.into(),
        }];
        r
    }

    #[test]
    fn block_devices_become_volumes_read_only_without_w() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let image = image.to_str().unwrap();
        for (permissions, read_only) in [
            ("rwm", false),
            ("mrw", false),
            ("", false),
            ("r", true),
            ("rm", true),
        ] {
            let c = create_container_request(with_device(image, "/dev/xvdb", permissions)).unwrap();
            assert_eq!(
                c.block_volumes,
                vec![BlockVolume {
                    host_path: image.into(),
                    container_path: "/dev/xvdb".into(),
                    read_only,
                }],
                "{permissions:?}"
            );
        }
    }

    #[test]
    fn devices_that_cannot_be_disks_are_refused_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let image = image.to_str().unwrap();
        let missing = dir.path().join("absent");
        let cases = [
            (
                with_device("/dev/null", "/dev/x", "rwm"),
                "config.devices[0].host_path",
            ),
            (
                with_device(missing.to_str().unwrap(), "/dev/x", "rwm"),
                "config.devices[0].host_path",
            ),
            (
                with_device(image, "dev/x", "rwm"),
                "config.devices[0].container_path",
            ),
            (
                with_device(image, "/dev/../x", "rwm"),
                "config.devices[0].container_path",
            ),
            (
                with_device(image, "/dev/x", "rwx"),
                "config.devices[0].permissions",
            ),
        ];
        for (request, field) in cases {
            assert_eq!(field_of(create_container_request(request)), field);
        }
        match create_container_request(with_device("/dev/null", "/dev/x", "rwm")) {
            Err(RuntimeError::InvalidArgument { problem, .. }) => {
                assert!(problem.contains("character device"), "{problem}")
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        let mut r = container_request();
        r.config.as_mut().unwrap().cdi_devices = vec![cri::CdiDevice {
            name: "vendor.com/gpu=0".into(),
        }];
        assert_eq!(field_of(create_container_request(r)), "config.cdi_devices");
    }

    #[test]
    fn a_terminal_and_stdin_are_passed_through() {
        let mut r = container_request();
        let config = r.config.as_mut().unwrap();
        config.tty = true;
        config.stdin = true;
        config.stdin_once = true;
        let c = create_container_request(r).unwrap();
        assert!(c.tty && c.stdin && c.stdin_once);
        let c = create_container_request(container_request()).unwrap();
        assert!(!c.tty && !c.stdin && !c.stdin_once);
    }

    fn with_namespaces(namespaces: cri::NamespaceOption) -> cri::CreateContainerRequest {
        let mut c = container_request();
        c.config.as_mut().unwrap().linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespaces),
                ..Default::default()
            }),
            ..Default::default()
        });
        c
    }

    #[test]
    fn host_namespaces_are_refused_by_name() {
        for (which, set) in [
            ("network", (2, 0, 0)),
            ("pid", (0, 2, 0)),
            ("ipc", (0, 0, 2)),
        ] {
            let c = with_namespaces(cri::NamespaceOption {
                network: set.0,
                pid: set.1,
                ipc: set.2,
                ..Default::default()
            });
            assert_eq!(
                field_of(create_container_request(c)),
                format!("config.linux.security_context.namespace_options.{which}")
            );
        }
    }

    #[test]
    fn the_pod_pid_namespace_is_shared_unless_container_is_asked_for() {
        let own = with_namespaces(cri::NamespaceOption {
            pid: cri::NamespaceMode::Container as i32,
            ..Default::default()
        });
        assert!(!create_container_request(own).unwrap().share_pod_pid);
        // POD, or no options at all, shares the pod's, as containerd does.
        assert!(
            create_container_request(container_request())
                .unwrap()
                .share_pod_pid
        );
    }
}

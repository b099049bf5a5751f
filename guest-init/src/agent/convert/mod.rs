//! Protocol messages to the agent's own types, and its errors to gRPC status codes: the
//! containers' here, the network's in [`network`].

mod network;
pub mod stream;

use std::path::PathBuf;

use tonic::Status;
use vpod_proto::{error_chain, v1};

pub use network::network_request;

use super::block_device::{BlockDeviceSpec, Filesystem};
use super::cgroup::CgroupLimits;
use super::container::ContainerError;
use super::rootfs::RootfsSource;
use super::share;
use super::spec::{self, ContainerSpec, FileSpec, MountSpec, ProcessSpec, RlimitSpec};

/// A request field that cannot be used, named as in agent.proto.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {field}: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field,
        reason: reason.into(),
    }
}

/// Container ids become directory and cgroup names: keep them plain.
pub fn container_id(id: &str, field: &'static str) -> Result<String, FieldError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(id.to_string())
    } else {
        Err(invalid(
            field,
            format!("{id:?} is not [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}"),
        ))
    }
}

fn absolute(path: &str, field: &'static str) -> Result<String, FieldError> {
    if path.is_empty() {
        Ok("/".to_string())
    } else if path.starts_with('/') {
        Ok(path.to_string())
    } else {
        Err(invalid(field, format!("{path:?} is not an absolute path")))
    }
}

fn env(vars: &[String], field: &'static str) -> Result<Vec<String>, FieldError> {
    for var in vars {
        if !var.contains('=') || var.starts_with('=') {
            return Err(invalid(field, format!("{var:?} is not KEY=VALUE")));
        }
    }
    Ok(vars.to_vec())
}

pub fn create_request(request: v1::CreateContainerRequest) -> Result<ContainerSpec, FieldError> {
    let id = container_id(&request.id, "id")?;
    if request.args.is_empty() || request.args[0].is_empty() {
        return Err(invalid("args", "the program is missing"));
    }
    let rootfs = if !request.rootfs_path.is_empty() {
        if !request.layer_serials.is_empty() {
            return Err(invalid(
                "rootfs_path",
                "give either rootfs_path or layer_serials",
            ));
        }
        RootfsSource::Directory(PathBuf::from(absolute(
            &request.rootfs_path,
            "rootfs_path",
        )?))
    } else {
        if request.layer_serials.is_empty() {
            return Err(invalid("layer_serials", "at least one layer is needed"));
        }
        if request.writable_serial.is_empty() {
            return Err(invalid("writable_serial", "the writable disk is missing"));
        }
        for serial in request
            .layer_serials
            .iter()
            .chain([&request.writable_serial])
        {
            if serial.contains('/') || serial.starts_with('.') {
                return Err(invalid(
                    "layer_serials",
                    format!("{serial:?} cannot name a directory"),
                ));
            }
        }
        RootfsSource::Disks {
            layers: request.layer_serials.clone(),
            writable: request.writable_serial.clone(),
        }
    };
    let user = request.user.unwrap_or_default();
    let rlimits = request
        .rlimits
        .iter()
        .map(|r| {
            Ok(RlimitSpec {
                resource: spec::rlimit_resource(&r.r#type)
                    .map_err(|e| invalid("rlimits", e.to_string()))?,
                soft: r.soft,
                hard: r.hard,
            })
        })
        .collect::<Result<Vec<_>, FieldError>>()?;
    let mounts = request
        .mounts
        .iter()
        .map(|m| {
            if !m.destination.starts_with('/') || m.destination.split('/').any(|p| p == "..") {
                return Err(invalid(
                    "mounts",
                    format!("{:?} is not a clean absolute path", m.destination),
                ));
            }
            if m.r#type.is_empty() {
                return Err(invalid(
                    "mounts",
                    format!("the mount on {:?} has no type", m.destination),
                ));
            }
            let (flags, data) = spec::parse_mount_options(&m.r#type, &m.options);
            if flags & libc::MS_BIND != 0 && share::below_share(&m.source).is_none() {
                return Err(invalid(
                    "mounts",
                    format!(
                        "the bind mount on {:?} has the source {:?}, which is not a clean path \
                         under {}",
                        m.destination,
                        m.source,
                        vpod_proto::SHARE_GUEST_DIR
                    ),
                ));
            }
            Ok(MountSpec {
                source: m.source.clone(),
                destination: m.destination.clone(),
                fstype: m.r#type.clone(),
                flags,
                data,
            })
        })
        .collect::<Result<Vec<_>, FieldError>>()?;
    let hostname = if request.hostname.is_empty() {
        None
    } else if crate::cmdline::valid_hostname(&request.hostname) {
        Some(request.hostname.clone())
    } else {
        return Err(invalid(
            "hostname",
            format!("{:?} is not a host name", request.hostname),
        ));
    };
    let limits = request.limits.unwrap_or_default();
    let files = files(request.files)?;
    Ok(ContainerSpec {
        id,
        process: ProcessSpec {
            args: request.args,
            env: env(&request.env, "env")?,
            cwd: absolute(&request.cwd, "cwd")?,
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids.clone(),
            rlimits,
            capabilities: spec::capability_mask(
                &request.capabilities,
                &request.add_capabilities,
                &request.drop_capabilities,
            )
            .map_err(|e| invalid("capabilities", e.to_string()))?,
            no_new_privs: request.no_new_privs,
            seccomp: seccomp_programs(request.seccomp_filters)?,
        },
        hostname,
        mounts,
        readonly_rootfs: request.readonly_rootfs,
        limits: cgroup_limits(&limits),
        rootfs,
        stdin: request.stdin,
        stdin_once: request.stdin_once,
        terminal: request
            .terminal
            .then(|| stream::terminal_size(request.terminal_size.as_ref())),
        user_name: (!user.name.is_empty()).then_some(user.name),
        group_name: (!user.group.is_empty()).then_some(user.group),
        files,
        masked_paths: clean_paths(request.masked_paths, "masked_paths")?,
        readonly_paths: clean_paths(request.readonly_paths, "readonly_paths")?,
        sysctls: sysctls(request.sysctls)?,
        share_pod_pid: request.share_pod_pid_namespace,
        devices: block_devices(request.devices)?,
    })
}

/// Block devices: a serial that names a disk, a clean absolute path, no path twice.
fn block_devices(devices: Vec<v1::BlockDevice>) -> Result<Vec<BlockDeviceSpec>, FieldError> {
    let mut specs: Vec<BlockDeviceSpec> = Vec::with_capacity(devices.len());
    for device in devices {
        let path = &device.container_path;
        if !path.starts_with('/')
            || path.split('/').any(|p| p == "..")
            || path.trim_matches('/').is_empty()
        {
            return Err(invalid(
                "devices",
                format!("{path:?} is not a clean absolute path below /"),
            ));
        }
        if device.serial.is_empty() || device.serial.contains('/') || device.serial.starts_with('.')
        {
            return Err(invalid(
                "devices",
                format!("{:?} cannot name a disk", device.serial),
            ));
        }
        if specs.iter().any(|s| s.destination == *path) {
            return Err(invalid("devices", format!("{path:?} is given twice")));
        }
        let filesystem = match device.filesystem.as_str() {
            "" => None,
            "ext4" => Some(Filesystem::Ext4),
            other => {
                return Err(invalid(
                    "devices",
                    format!("the filesystem {other:?} is not one the agent mounts (ext4)"),
                ))
            }
        };
        specs.push(BlockDeviceSpec {
            serial: device.serial,
            destination: device.container_path,
            read_only: device.read_only,
            filesystem,
            node: PathBuf::new(),
        });
    }
    Ok(specs)
}

/// Seccomp programs as the kernel takes them: whole 8-byte instructions, none empty, none
/// over its limit, and not too many. What they say is the host's business.
fn seccomp_programs(programs: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, FieldError> {
    if programs.len() > spec::MAX_SECCOMP_PROGRAMS {
        return Err(invalid(
            "seccomp_filters",
            format!(
                "{} programs, at most {}",
                programs.len(),
                spec::MAX_SECCOMP_PROGRAMS
            ),
        ));
    }
    for (index, program) in programs.iter().enumerate() {
        let instructions = program.len() / 8;
        if program.is_empty()
            || program.len() % 8 != 0
            || instructions > spec::MAX_SECCOMP_INSTRUCTIONS
        {
            return Err(invalid(
                "seccomp_filters",
                format!(
                    "program {index} is {} bytes: whole 8-byte instructions, 1 to {} of them",
                    program.len(),
                    spec::MAX_SECCOMP_INSTRUCTIONS
                ),
            ));
        }
    }
    Ok(programs)
}

/// Absolute paths without `..`, for the security context's path lists.
fn clean_paths(paths: Vec<String>, field: &'static str) -> Result<Vec<String>, FieldError> {
    for path in &paths {
        if !path.starts_with('/') || path.split('/').any(|p| p == "..") || path.contains('\0') {
            return Err(invalid(
                field,
                format!("{path:?} is not a clean absolute path"),
            ));
        }
    }
    Ok(paths)
}

/// Sysctls as (path below /proc/sys, value), sorted by key for a stable order.
fn sysctls(
    map: std::collections::HashMap<String, String>,
) -> Result<Vec<(String, String)>, FieldError> {
    let mut out = Vec::with_capacity(map.len());
    for (key, value) in map {
        let path = spec::sysctl_path(&key).map_err(|e| invalid("sysctls", e))?;
        if value.contains('\0') {
            return Err(invalid(
                "sysctls",
                format!("the value of {key:?} has a NUL byte"),
            ));
        }
        out.push((path, value));
    }
    out.sort();
    Ok(out)
}

/// The protocol's limits in the agent's terms (zero: unset).
pub fn cgroup_limits(limits: &v1::CgroupLimits) -> CgroupLimits {
    CgroupLimits {
        cpu_shares: limits.cpu_shares,
        cpu_quota_us: limits.cpu_quota_us,
        cpu_period_us: limits.cpu_period_us,
        memory_limit_bytes: limits.memory_limit_bytes,
        pids_limit: limits.pids_limit,
    }
}

/// Files must name a file (not the root) by a clean absolute path; at most 1 MiB each.
fn files(files: Vec<v1::ContainerFile>) -> Result<Vec<FileSpec>, FieldError> {
    const MAX_FILE: usize = 1 << 20;
    files
        .into_iter()
        .map(|f| {
            let clean = f.path.starts_with('/')
                && !f.path.ends_with('/')
                && !f.path.split('/').any(|p| p == ".." || p == ".")
                && !f.path.contains('\0');
            if !clean {
                return Err(invalid(
                    "files",
                    format!("{:?} is not a clean absolute path of a file", f.path),
                ));
            }
            if f.content.len() > MAX_FILE {
                return Err(invalid(
                    "files",
                    format!("{:?} is larger than {MAX_FILE} bytes", f.path),
                ));
            }
            if f.mode > 0o7777 {
                return Err(invalid(
                    "files",
                    format!("{:o} is not a permission mode", f.mode),
                ));
            }
            Ok(FileSpec {
                path: f.path,
                content: f.content,
                mode: if f.mode == 0 { 0o644 } else { f.mode },
            })
        })
        .collect()
}

pub fn exec_request(
    request: v1::ExecSyncRequest,
) -> Result<super::container::ExecRequest, FieldError> {
    if request.args.is_empty() || request.args[0].is_empty() {
        return Err(invalid("args", "the program is missing"));
    }
    if !request.cwd.is_empty() && !request.cwd.starts_with('/') {
        return Err(invalid(
            "cwd",
            format!("{:?} is not an absolute path", request.cwd),
        ));
    }
    Ok(super::container::ExecRequest {
        args: request.args,
        env: env(&request.env, "env")?,
        cwd: request.cwd,
        timeout: (request.timeout_ms > 0)
            .then(|| std::time::Duration::from_millis(request.timeout_ms)),
    })
}

impl From<ContainerError> for Status {
    fn from(e: ContainerError) -> Self {
        // The message with its causes, so the host sees why and not only what.
        let message = error_chain(&e);
        match e {
            ContainerError::NotFound(_) => Status::not_found(message),
            ContainerError::AlreadyExists(_) => Status::already_exists(message),
            ContainerError::WrongState { .. }
            | ContainerError::NoCgroup(_)
            | ContainerError::NoStdin(_) => Status::failed_precondition(message),
            ContainerError::Rootfs(_, super::rootfs::RootfsError::NoSuchDisk(_))
            | ContainerError::BlockDevice(..) => Status::failed_precondition(message),
            ContainerError::Setup(..) | ContainerError::User(..) | ContainerError::Share(..) => {
                Status::invalid_argument(message)
            }
            ContainerError::Files(_, crate::agent::in_root::InRootError::BadPath(_)) => {
                Status::invalid_argument(message)
            }
            ContainerError::Spawn(_, ref s) if s.is_not_found() => {
                Status::invalid_argument(format!("invalid args: {message}"))
            }
            _ => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn request() -> v1::CreateContainerRequest {
        v1::CreateContainerRequest {
            id: "c1".into(),
            args: vec!["sh".into()],
            rootfs_path: "/img".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_minimal_request_converts_with_defaults() {
        let spec = create_request(request()).unwrap();
        assert_eq!(spec.process.cwd, "/");
        assert_eq!(spec.rootfs, RootfsSource::Directory("/img".into()));
        assert_eq!(
            spec.process.capabilities,
            spec::capability_mask(&[], &[], &[]).unwrap()
        );
        assert_eq!(spec.hostname, None);
    }

    fn block_device(serial: &str, path: &str) -> v1::BlockDevice {
        v1::BlockDevice {
            serial: serial.into(),
            container_path: path.into(),
            read_only: true,
            filesystem: String::new(),
        }
    }

    #[test]
    fn block_devices_convert_and_bad_ones_are_refused() {
        let mut r = request();
        let mut scratch = block_device("e-1", "/scratch");
        scratch.filesystem = "ext4".into();
        r.devices = vec![block_device("d-1", "/dev/xvdb"), scratch];
        let spec = create_request(r).unwrap();
        assert_eq!(
            spec.devices,
            vec![
                BlockDeviceSpec {
                    serial: "d-1".into(),
                    destination: "/dev/xvdb".into(),
                    read_only: true,
                    filesystem: None,
                    node: PathBuf::new(),
                },
                BlockDeviceSpec {
                    serial: "e-1".into(),
                    destination: "/scratch".into(),
                    read_only: true,
                    filesystem: Some(Filesystem::Ext4),
                    node: PathBuf::new(),
                }
            ]
        );
        let mut other_filesystem = block_device("e-1", "/scratch");
        other_filesystem.filesystem = "xfs".into();
        for devices in [
            vec![block_device("d-1", "dev/xvdb")],
            vec![block_device("d-1", "/dev/../etc/x")],
            vec![block_device("d-1", "/")],
            vec![block_device("", "/dev/xvdb")],
            vec![block_device("../d", "/dev/xvdb")],
            vec![block_device("d-1", "/dev/x"), block_device("d-2", "/dev/x")],
            vec![other_filesystem.clone()],
        ] {
            let mut r = request();
            r.devices = devices.clone();
            let error = create_request(r).unwrap_err();
            assert_eq!(error.field, "devices", "{devices:?}");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        type Change = Box<dyn Fn(&mut v1::CreateContainerRequest)>;
        let cases: Vec<(&str, Change)> = vec![
            ("id", Box::new(|r| r.id = "../x".into())),
            ("args", Box::new(|r| r.args.clear())),
            ("env", Box::new(|r| r.env = vec!["NOEQUALS".into()])),
            ("cwd", Box::new(|r| r.cwd = "relative".into())),
            (
                "capabilities",
                Box::new(|r| r.capabilities = vec!["CAP_NOPE".into()]),
            ),
            ("hostname", Box::new(|r| r.hostname = "a b".into())),
            ("layer_serials", Box::new(|r| r.rootfs_path.clear())),
            (
                "mounts",
                Box::new(|r| {
                    r.mounts = vec![v1::Mount {
                        destination: "/a/../b".into(),
                        r#type: "tmpfs".into(),
                        ..Default::default()
                    }]
                }),
            ),
            (
                "mounts",
                Box::new(|r| {
                    r.mounts = vec![v1::Mount {
                        source: "/run/vpod/share/../../../etc".into(),
                        destination: "/etc-of-the-guest".into(),
                        r#type: "bind".into(),
                        options: vec!["rbind".into()],
                    }]
                }),
            ),
            (
                "mounts",
                Box::new(|r| {
                    r.mounts = vec![v1::Mount {
                        source: "/".into(),
                        destination: "/guest-root".into(),
                        r#type: "none".into(),
                        options: vec!["bind".into()],
                    }]
                }),
            ),
        ];
        for (field, change) in cases {
            let mut r = request();
            change(&mut r);
            let e = create_request(r).unwrap_err();
            assert_eq!(e.field, field);
            let status = Status::from(e);
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains(field), "{}", status.message());
        }
    }

    #[test]
    fn container_errors_map_to_status_codes() {
        let code = |e: ContainerError| Status::from(e).code();
        assert_eq!(code(ContainerError::NotFound("x".into())), Code::NotFound);
        assert_eq!(
            code(ContainerError::AlreadyExists("x".into())),
            Code::AlreadyExists
        );
        assert_eq!(
            code(ContainerError::WrongState {
                id: "x".into(),
                state: "created",
                wanted: "running"
            }),
            Code::FailedPrecondition
        );
        assert_eq!(
            code(ContainerError::Signal(
                "x".into(),
                std::io::Error::from_raw_os_error(libc::EPERM)
            )),
            Code::Internal
        );
    }

    #[test]
    fn an_exec_timeout_of_zero_means_none() {
        let r = exec_request(v1::ExecSyncRequest {
            container_id: "c".into(),
            args: vec!["true".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.timeout, None);
    }
}

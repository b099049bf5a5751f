//! From an image to an OCI runtime spec: the container's process merged from the image
//! config and a request's overrides with Docker's rules ([`process`]), and the defaults a
//! container runtime starts from (containerd's capabilities, its own namespaces, the
//! guest's default masked and read-only paths). The front ends (the `vpod` CLI, the CRI
//! server) build on this spec; the sandbox core takes the finished spec, as a containerd
//! shim receives one.

pub mod process;

use std::collections::HashMap;

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::ImageConfig;
pub use process::{
    merge_process, parse_user, parse_user_spec, MergeError, MergedProcess, ProcessOverrides,
    UserSpec,
};

/// A group named rather than numbered (`USER:GROUP` with a name), for the guest to look up
/// in the container's /etc/group: the OCI spec's user has a field for a user name but none
/// for a group name.
pub const GROUP_NAME_ANNOTATION: &str = "io.vpod.user.group-name";

/// Why a runtime spec cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeSpecError {
    #[error(transparent)]
    Process(#[from] MergeError),
    #[error("{0:?} is not a known capability")]
    UnknownCapability(String),
    #[error("cannot build the runtime spec")]
    Build(#[source] oci_spec::OciSpecError),
}

/// containerd's default capabilities for a container (and the guest agent's, when a spec
/// names none).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability the OCI spec names ("ALL" in a CRI security context).
pub const ALL_CAPABILITIES: [Capability; 41] = [
    Capability::AuditControl,
    Capability::AuditRead,
    Capability::AuditWrite,
    Capability::BlockSuspend,
    Capability::Bpf,
    Capability::CheckpointRestore,
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::Kill,
    Capability::Lease,
    Capability::LinuxImmutable,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::Mknod,
    Capability::NetAdmin,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetRaw,
    Capability::Perfmon,
    Capability::Setgid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysChroot,
    Capability::SysModule,
    Capability::SysNice,
    Capability::SysPacct,
    Capability::SysPtrace,
    Capability::SysRawio,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Syslog,
    Capability::WakeAlarm,
];

/// The runtime spec of a container of `image` with `overrides`: its process (Docker's
/// rules), containerd's default capabilities, and namespaces of its own (mount, UTS, IPC,
/// PID). Masked and read-only paths are left unset: the guest then applies containerd's
/// defaults. The root is the layers' overlay, writable.
pub fn runtime_spec(
    image: &ImageConfig,
    overrides: &ProcessOverrides,
) -> Result<Spec, RuntimeSpecError> {
    let merged = merge_process(image, overrides)?;
    let mut user = UserBuilder::default().uid(merged.uid).gid(merged.gid);
    if let Some(name) = &merged.user_name {
        user = user.username(name.clone());
    }
    let capabilities = capability_set(DEFAULT_CAPABILITIES);
    let process = ProcessBuilder::default()
        .args(merged.args)
        .env(merged.env)
        .cwd(merged.cwd)
        .user(user.build().map_err(RuntimeSpecError::Build)?)
        .capabilities(capabilities)
        .no_new_privileges(false)
        .build()
        .map_err(RuntimeSpecError::Build)?;
    let mut process = process;
    process.set_rlimits(None);
    let namespaces = [
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Pid,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()
    .map_err(RuntimeSpecError::Build)?;
    // The builders start from oci-spec's defaults (runc's): clear what the guest decides.
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .build()
        .map_err(RuntimeSpecError::Build)?;
    linux.set_masked_paths(None);
    linux.set_readonly_paths(None);
    linux.set_resources(None);
    linux.set_sysctl(None);
    let mut annotations = HashMap::new();
    if let Some(group) = merged.group_name {
        annotations.insert(GROUP_NAME_ANNOTATION.to_string(), group);
    }
    let mut spec = SpecBuilder::default()
        .version("1.1.0")
        .process(process)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()
                .map_err(RuntimeSpecError::Build)?,
        )
        .linux(linux)
        .annotations(annotations)
        .mounts(Vec::new())
        .build()
        .map_err(RuntimeSpecError::Build)?;
    spec.set_hostname(None);
    Ok(spec)
}

/// The same set as bounding, effective and permitted capabilities (inheritable and ambient
/// stay empty, as containerd leaves them).
pub fn capability_set(
    set: impl IntoIterator<Item = Capability>,
) -> oci_spec::runtime::LinuxCapabilities {
    let set: Capabilities = set.into_iter().collect();
    LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .unwrap_or_default()
}

/// `current` changed as containerd applies a CRI security context's capability lists:
/// "ALL" in `add` starts from every capability, "ALL" in `drop` from none; then the named
/// ones in `add` are added and those in `drop` removed. Names are "CAP_X" or "X", any case.
pub fn change_capabilities(
    current: &Capabilities,
    add: &[String],
    drop: &[String],
) -> Result<Capabilities, RuntimeSpecError> {
    let is_all = |n: &&String| n.eq_ignore_ascii_case("ALL");
    let mut set = current.clone();
    if add.iter().any(|n| is_all(&n)) {
        set = ALL_CAPABILITIES.into_iter().collect();
    }
    if drop.iter().any(|n| is_all(&n)) {
        set.clear();
    }
    for name in add.iter().filter(|n| !is_all(n)) {
        set.insert(parse_capability(name)?);
    }
    for name in drop.iter().filter(|n| !is_all(n)) {
        set.remove(&parse_capability(name)?);
    }
    Ok(set)
}

/// "CAP_X" or "X", any case.
pub fn parse_capability(name: &str) -> Result<Capability, RuntimeSpecError> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| RuntimeSpecError::UnknownCapability(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            env: words(&["PATH=/bin"]),
            cmd: words(&["/bin/sh"]),
            user: "app:staff".into(),
            ..ImageConfig::default()
        }
    }

    #[test]
    fn the_spec_carries_the_merged_process_and_containerd_defaults() {
        let spec = runtime_spec(&image(), &ProcessOverrides::default()).unwrap();
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.args().as_ref().unwrap(), &words(&["/bin/sh"]));
        assert_eq!(process.user().username().as_deref(), Some("app"));
        assert_eq!(
            spec.annotations().as_ref().unwrap()[GROUP_NAME_ANNOTATION],
            "staff"
        );
        let bounding = process
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap();
        assert_eq!(bounding.len(), DEFAULT_CAPABILITIES.len());
        let namespaces = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        assert!(namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none()));
        assert!(!spec.root().as_ref().unwrap().readonly().unwrap());
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.masked_paths().is_none() && linux.resources().is_none());
        assert!(spec.hostname().is_none() && process.rlimits().is_none());
    }

    #[test]
    fn a_spec_without_a_command_is_refused() {
        let error = runtime_spec(&ImageConfig::default(), &ProcessOverrides::default());
        assert!(matches!(
            error,
            Err(RuntimeSpecError::Process(MergeError::NoCommand))
        ));
    }

    #[test]
    fn capability_changes_follow_containerd() {
        let default: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
        let set =
            change_capabilities(&default, &words(&["SYS_ADMIN"]), &words(&["cap_chown"])).unwrap();
        assert!(set.contains(&Capability::SysAdmin) && !set.contains(&Capability::Chown));
        let all = change_capabilities(&default, &words(&["ALL"]), &[]).unwrap();
        assert_eq!(all.len(), ALL_CAPABILITIES.len());
        let only = change_capabilities(&default, &words(&["NET_ADMIN"]), &words(&["ALL"])).unwrap();
        assert_eq!(only, [Capability::NetAdmin].into_iter().collect());
        assert!(matches!(
            change_capabilities(&default, &words(&["NOT_A_CAP"]), &[]),
            Err(RuntimeSpecError::UnknownCapability(name)) if name == "NOT_A_CAP"
        ));
    }
}

//! The boundary between the sandbox's API (OCI runtime specs, its own result types) and the
//! agent's wire types: nothing from `vpod_proto::v1` leaves this crate's private modules.

use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Spec};
use vpod_image::runtime_spec::GROUP_NAME_ANNOTATION;
use vpod_proto::v1;

use crate::container::ContainerFile;
use crate::network::GuestNetwork;
use crate::seccomp::{self, SeccompError};
use crate::share::{Propagation, VolumeBind};

/// A runtime spec the guest cannot run as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("the runtime spec has no process")]
    NoProcess,
    #[error("the runtime spec's process has no arguments")]
    NoArgs,
    #[error("the runtime spec's process cwd {0:?} is not absolute")]
    RelativeCwd(String),
    #[error("the runtime spec has mounts ({0}) but the pod has no shared directory for volumes")]
    Mounts(String),
    #[error("the mount on {destination} is of type {kind:?}; only bind mounts reach the guest")]
    MountType { destination: String, kind: String },
    #[error("the mount on {0} asks for shared (bidirectional) propagation, which cannot cross into a VM")]
    SharedPropagation(String),
    #[error("the mount on {0} has no source")]
    NoSource(String),
    #[error("the runtime spec's seccomp profile cannot be applied")]
    Seccomp(#[source] SeccompError),
    #[error("the runtime spec joins an existing {0} namespace by path, which the guest cannot do")]
    NamespacePath(String),
}

/// What the agent needs to create a container, from its spec; the layer serials and the
/// writable disk's are the sandbox's.
pub(crate) fn create_request(
    id: &str,
    spec: &Spec,
    files: Vec<ContainerFile>,
    layer_serials: Vec<String>,
    writable_serial: String,
) -> Result<v1::CreateContainerRequest, SpecError> {
    let process = spec.process().as_ref().ok_or(SpecError::NoProcess)?;
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(SpecError::NoArgs);
    }
    let cwd = process.cwd().to_string_lossy().into_owned();
    if !cwd.starts_with('/') {
        return Err(SpecError::RelativeCwd(cwd));
    }
    // The mounts are checked here; the caller binds them under the pod's share.
    volumes(spec)?;
    let linux = spec.linux().clone().unwrap_or_default();
    let seccomp_filters = match linux.seccomp() {
        Some(profile) => seccomp::compile(profile).map_err(SpecError::Seccomp)?,
        None => Vec::new(),
    };
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    if let Some(joined) = namespaces.iter().find(|n| n.path().is_some()) {
        return Err(SpecError::NamespacePath(joined.typ().to_string()));
    }
    let user = process.user();
    let group = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(GROUP_NAME_ANNOTATION))
        .cloned()
        .unwrap_or_default();
    // An explicit set: "ALL" dropped, then the set added, so an empty set means none and
    // not the agent's default.
    let (add_capabilities, drop_capabilities) = match process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
    {
        Some(set) => {
            let mut names: Vec<String> = set.iter().map(|c| c.to_string()).collect();
            names.sort();
            (names, vec!["ALL".to_string()])
        }
        None => (Vec::new(), Vec::new()),
    };
    Ok(v1::CreateContainerRequest {
        id: id.to_string(),
        args,
        env: process.env().clone().unwrap_or_default(),
        cwd,
        user: Some(v1::User {
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            name: user.username().clone().unwrap_or_default(),
            group,
        }),
        hostname: spec.hostname().clone().unwrap_or_default(),
        files: files
            .into_iter()
            .map(|f| v1::ContainerFile {
                path: f.path,
                content: f.content,
                mode: f.mode,
            })
            .collect(),
        layer_serials,
        writable_serial,
        limits: Some(cgroup_limits(linux.resources().as_ref())),
        add_capabilities,
        drop_capabilities,
        readonly_rootfs: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        no_new_privs: process.no_new_privileges().unwrap_or(false),
        masked_paths: linux.masked_paths().clone().unwrap_or_default(),
        readonly_paths: linux.readonly_paths().clone().unwrap_or_default(),
        sysctls: linux.sysctl().clone().unwrap_or_default(),
        // No PID namespace of its own in the spec: the pod's, shared.
        share_pod_pid_namespace: !namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Pid),
        terminal: process.terminal().unwrap_or(false),
        terminal_size: process
            .console_size()
            .as_ref()
            .map(|size| v1::TerminalSize {
                width: u32::try_from(size.width()).unwrap_or(u32::MAX),
                height: u32::try_from(size.height()).unwrap_or(u32::MAX),
            }),
        seccomp_filters,
        ..Default::default()
    })
}

/// One of the spec's bind mounts: its host side and the options the guest's bind keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Volume {
    pub destination: String,
    pub bind: VolumeBind,
    /// For the agent: "bind" or "rbind", "ro", and nosuid, nodev, noexec as asked.
    pub guest_options: Vec<String>,
}

/// The spec's mounts as volumes: bind mounts only ("bind" type or a bind option), with
/// private or slave propagation (shared cannot cross into a VM).
pub(crate) fn volumes(spec: &Spec) -> Result<Vec<Volume>, SpecError> {
    let mut volumes = Vec::new();
    for mount in spec.mounts().iter().flatten() {
        let destination = mount.destination().display().to_string();
        let options = mount.options().clone().unwrap_or_default();
        let has = |name: &str| options.iter().any(|o| o == name);
        let kind = mount.typ().clone().unwrap_or_default();
        if kind != "bind" && !has("bind") && !has("rbind") {
            return Err(SpecError::MountType { destination, kind });
        }
        if has("shared") || has("rshared") {
            return Err(SpecError::SharedPropagation(destination));
        }
        let Some(source) = mount.source().clone() else {
            return Err(SpecError::NoSource(destination));
        };
        let recursive = has("rbind");
        let readonly = has("ro");
        let mut guest_options = vec![if recursive { "rbind" } else { "bind" }.to_string()];
        guest_options.extend(
            ["ro", "nosuid", "nodev", "noexec"]
                .into_iter()
                .filter(|o| has(o))
                .map(str::to_string),
        );
        volumes.push(Volume {
            destination,
            bind: VolumeBind {
                source,
                readonly,
                recursive,
                propagation: if has("slave") || has("rslave") {
                    Propagation::Slave
                } else {
                    Propagation::Private
                },
            },
            guest_options,
        });
    }
    Ok(volumes)
}

/// The agent's cgroup limits from the spec's resources; what is unset stays 0 (none).
pub(crate) fn cgroup_limits(resources: Option<&LinuxResources>) -> v1::CgroupLimits {
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    v1::CgroupLimits {
        cpu_shares: cpu.and_then(|c| c.shares()).unwrap_or(0),
        cpu_quota_us: cpu.and_then(|c| c.quota()).unwrap_or(0),
        cpu_period_us: cpu.and_then(|c| c.period()).unwrap_or(0),
        memory_limit_bytes: resources
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .unwrap_or(0),
        pids_limit: resources
            .and_then(|r| r.pids().as_ref())
            .map(|p| p.limit())
            .unwrap_or(0),
    }
}

/// The agent's ConfigureNetwork request: each NIC's guest side, then the routes. Text
/// forms are the agent's: CIDR prefixes, colon-separated MAC addresses, an empty gateway
/// for on-link routes.
pub(crate) fn network_request(network: &GuestNetwork) -> v1::ConfigureNetworkRequest {
    v1::ConfigureNetworkRequest {
        interfaces: network
            .nics
            .iter()
            .map(|nic| v1::Interface {
                mac: nic.interface.mac.to_string(),
                new_mac: nic
                    .interface
                    .new_mac
                    .map(|mac| mac.to_string())
                    .unwrap_or_default(),
                name: nic.interface.name.clone(),
                mtu: nic.interface.mtu,
                addresses: nic
                    .interface
                    .addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            })
            .collect(),
        routes: network
            .routes
            .iter()
            .map(|route| v1::Route {
                destination: route.destination.to_string(),
                gateway: route.gateway.map(|g| g.to_string()).unwrap_or_default(),
                interface: route.interface.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, MountBuilder,
    };
    use vpod_image::runtime_spec::{runtime_spec, ProcessOverrides};
    use vpod_image::ImageConfig;

    fn spec() -> Spec {
        let image = ImageConfig {
            cmd: vec!["/bin/top".into()],
            user: "nobody:nogroup".into(),
            ..ImageConfig::default()
        };
        runtime_spec(&image, &ProcessOverrides::default()).unwrap()
    }

    #[test]
    fn a_default_spec_becomes_the_agents_request() {
        let request =
            create_request("c1", &spec(), Vec::new(), vec!["l1".into()], "w".into()).unwrap();
        assert_eq!(request.args, vec!["/bin/top".to_string()]);
        let user = request.user.unwrap();
        assert_eq!(
            (user.name.as_str(), user.group.as_str()),
            ("nobody", "nogroup")
        );
        assert_eq!(request.drop_capabilities, vec!["ALL".to_string()]);
        assert_eq!(request.add_capabilities.len(), 14);
        assert!(request
            .add_capabilities
            .contains(&"NET_BIND_SERVICE".to_string()));
        assert!(!request.share_pod_pid_namespace);
        assert!(request.masked_paths.is_empty());
        assert_eq!(request.layer_serials, vec!["l1".to_string()]);
        assert!(!request.terminal);
        assert_eq!(request.terminal_size, None);
    }

    #[test]
    fn a_terminal_and_its_size_come_from_the_process() {
        let mut spec = spec();
        let mut process = spec.process().clone().unwrap();
        process.set_terminal(Some(true));
        process.set_console_size(Some(
            oci_spec::runtime::BoxBuilder::default()
                .width(120u64)
                .height(40u64)
                .build()
                .unwrap(),
        ));
        spec.set_process(Some(process));
        let request = create_request("c1", &spec, Vec::new(), Vec::new(), "w".into()).unwrap();
        assert!(request.terminal);
        assert_eq!(
            request.terminal_size,
            Some(v1::TerminalSize {
                width: 120,
                height: 40
            })
        );
    }

    #[test]
    fn no_pid_namespace_shares_the_pods_and_resources_become_limits() {
        let mut spec = spec();
        let mut linux = spec.linux().clone().unwrap();
        let namespaces = linux.namespaces().clone().unwrap();
        linux.set_namespaces(Some(
            namespaces
                .into_iter()
                .filter(|n| n.typ() != LinuxNamespaceType::Pid)
                .collect(),
        ));
        linux.set_resources(Some(
            LinuxResourcesBuilder::default()
                .cpu(
                    LinuxCpuBuilder::default()
                        .quota(50_000i64)
                        .period(100_000u64)
                        .build()
                        .unwrap(),
                )
                .memory(
                    LinuxMemoryBuilder::default()
                        .limit(64i64 << 20)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        ));
        spec.set_linux(Some(linux));
        let request = create_request("c1", &spec, Vec::new(), Vec::new(), "w".into()).unwrap();
        assert!(request.share_pod_pid_namespace);
        let limits = request.limits.unwrap();
        assert_eq!(
            (limits.cpu_quota_us, limits.cpu_period_us),
            (50_000, 100_000)
        );
        assert_eq!(limits.memory_limit_bytes, 64 << 20);
    }

    fn with_mounts(mounts: Vec<oci_spec::runtime::Mount>) -> Spec {
        let mut spec = spec();
        spec.set_mounts(Some(mounts));
        spec
    }

    fn bind(destination: &str, source: &str, options: &[&str]) -> oci_spec::runtime::Mount {
        MountBuilder::default()
            .destination(destination)
            .source(source)
            .typ("bind")
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    #[test]
    fn bind_mounts_become_volumes_with_their_guest_options() {
        let spec = with_mounts(vec![
            bind("/data", "/srv/data", &["rbind", "rprivate", "rw"]),
            bind(
                "/config",
                "/srv/config",
                &["bind", "ro", "rslave", "nosuid"],
            ),
        ]);
        assert!(create_request("c", &spec, Vec::new(), Vec::new(), "w".into()).is_ok());
        let volumes = volumes(&spec).unwrap();
        assert_eq!(
            volumes[0],
            Volume {
                destination: "/data".into(),
                bind: VolumeBind {
                    source: "/srv/data".into(),
                    readonly: false,
                    recursive: true,
                    propagation: Propagation::Private,
                },
                guest_options: vec!["rbind".into()],
            }
        );
        assert_eq!(
            volumes[1].bind,
            VolumeBind {
                source: "/srv/config".into(),
                readonly: true,
                recursive: false,
                propagation: Propagation::Slave,
            }
        );
        assert_eq!(volumes[1].guest_options, ["bind", "ro", "nosuid"]);
    }

    #[test]
    fn what_the_guest_cannot_do_is_refused_by_name() {
        let shared = with_mounts(vec![bind("/data", "/srv", &["rbind", "rshared"])]);
        assert_eq!(
            create_request("c", &shared, Vec::new(), Vec::new(), "w".into()),
            Err(SpecError::SharedPropagation("/data".into()))
        );
        let tmpfs = with_mounts(vec![MountBuilder::default()
            .destination("/scratch")
            .typ("tmpfs")
            .build()
            .unwrap()]);
        assert_eq!(
            create_request("c", &tmpfs, Vec::new(), Vec::new(), "w".into()),
            Err(SpecError::MountType {
                destination: "/scratch".into(),
                kind: "tmpfs".into()
            })
        );
        let mut no_process = spec();
        no_process.set_process(None);
        assert_eq!(
            create_request("c", &no_process, Vec::new(), Vec::new(), "w".into()),
            Err(SpecError::NoProcess)
        );
        let mut joined = spec();
        let linux = LinuxBuilder::default()
            .namespaces(vec![oci_spec::runtime::LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path("/proc/1/ns/net")
                .build()
                .unwrap()])
            .build()
            .unwrap();
        joined.set_linux(Some(linux));
        assert_eq!(
            create_request("c", &joined, Vec::new(), Vec::new(), "w".into()),
            Err(SpecError::NamespacePath("net".into()))
        );
    }

    #[test]
    fn a_network_becomes_the_agents_text_forms() {
        use crate::network::{GuestInterface, GuestRoute, IpPrefix, MacAddress, Nic};
        use std::net::IpAddr;
        let prefix = |a: &str, len| IpPrefix::new(a.parse::<IpAddr>().unwrap(), len).unwrap();
        let tap = std::fs::File::open("/dev/null").unwrap();
        let network = GuestNetwork {
            nics: vec![Nic {
                tap: std::sync::Arc::new(tap.into()),
                interface: GuestInterface {
                    name: "eth0".into(),
                    mac: MacAddress([2, 0, 0, 0, 0, 0x1f]),
                    new_mac: Some(MacAddress([0x3a, 0, 0, 0, 0, 7])),
                    mtu: 1450,
                    addresses: vec![prefix("10.88.0.5", 16), prefix("fd00::5", 64)],
                },
            }],
            routes: vec![
                GuestRoute {
                    destination: prefix("0.0.0.0", 0),
                    gateway: Some([10, 88, 0, 1].into()),
                    interface: "eth0".into(),
                },
                GuestRoute {
                    destination: prefix("::", 0),
                    gateway: None,
                    interface: "eth0".into(),
                },
            ],
            netns: None,
        };
        let request = network_request(&network);
        assert_eq!(
            request.interfaces,
            [v1::Interface {
                mac: "02:00:00:00:00:1f".into(),
                new_mac: "3a:00:00:00:00:07".into(),
                name: "eth0".into(),
                mtu: 1450,
                addresses: vec!["10.88.0.5/16".into(), "fd00::5/64".into()],
            }]
        );
        assert_eq!(
            request.routes,
            [
                v1::Route {
                    destination: "0.0.0.0/0".into(),
                    gateway: "10.88.0.1".into(),
                    interface: "eth0".into(),
                },
                v1::Route {
                    destination: "::/0".into(),
                    gateway: String::new(),
                    interface: "eth0".into(),
                },
            ]
        );
    }
}

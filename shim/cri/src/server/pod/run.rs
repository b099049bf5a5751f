//! RunPodSandbox: the pod's config, validated (a missing or invalid field is
//! InvalidArgument naming it; what a VM cannot give is refused by name), boots its VM.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use crate::runtime::{RunPod, Runtime, RuntimeError};
use crate::server::bounds;
use crate::server::common::{detached, missing, refuse_host_namespaces};
use crate::server::status;
use crate::state::{PodSettings, PortMappingRecord};

pub(in crate::server) async fn run_pod_sandbox(
    runtime: &Arc<Runtime>,
    request: cri::RunPodSandboxRequest,
) -> Result<cri::RunPodSandboxResponse, Status> {
    let run = run_pod_request(request).map_err(status)?;
    let runtime = runtime.clone();
    let pod_sandbox_id = detached(async move { runtime.run_pod(run).await }).await?;
    Ok(cri::RunPodSandboxResponse { pod_sandbox_id })
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

/// A sysctl name: parts of letters, digits, `_` and `-` between dots or slashes.
fn valid_sysctl(key: &str) -> bool {
    key.split(['.', '/']).all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
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

/// The host ports to forward, as containerd takes them: a mapping without a host port is
/// only informative and is left out; a port out of range is refused.
fn port_mappings(mappings: &[cri::PortMapping]) -> Result<Vec<PortMappingRecord>, RuntimeError> {
    let field = "config.port_mappings";
    let port = |value: i32, what: &str| {
        u16::try_from(value)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| RuntimeError::invalid(field, format!("{what} {value} is not a port")))
    };
    let mut records = Vec::new();
    for mapping in mappings.iter().filter(|m| m.host_port != 0) {
        let protocol = match cri::Protocol::try_from(mapping.protocol) {
            Ok(cri::Protocol::Tcp) => "tcp",
            Ok(cri::Protocol::Udp) => "udp",
            Ok(cri::Protocol::Sctp) => "sctp",
            Err(_) => {
                return Err(RuntimeError::invalid(
                    field,
                    format!("protocol {} is not tcp, udp or sctp", mapping.protocol),
                ))
            }
        };
        if !mapping.host_ip.is_empty() && mapping.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(RuntimeError::invalid(
                field,
                format!("host_ip {:?} is not an IP address", mapping.host_ip),
            ));
        }
        records.push(PortMappingRecord {
            protocol: protocol.to_string(),
            container_port: port(mapping.container_port, "container_port")?,
            host_port: port(mapping.host_port, "host_port")?,
            host_ip: mapping.host_ip.clone(),
        });
    }
    Ok(records)
}

/// What the kubelet can ask for in a pod that a VM cannot give, refused by name.
fn run_pod_request(request: cri::RunPodSandboxRequest) -> Result<RunPod, RuntimeError> {
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
    bounds::check_resources(linux.resources.as_ref(), "config.linux.resources")?;
    bounds::check_resources(linux.overhead.as_ref(), "config.linux.overhead")?;
    vpod_sandbox::cgroup::check_parent(&linux.cgroup_parent)
        .map_err(|e| RuntimeError::invalid("config.linux.cgroup_parent", e.to_string()))?;
    Ok(RunPod {
        settings: PodSettings {
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
            sysctls: linux.sysctls,
            port_mappings: port_mappings(&config.port_mappings)?,
        },
        resources: linux.resources,
        overhead: linux.overhead,
        cgroup_parent: linux.cgroup_parent,
    })
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

    fn field_of(result: Result<RunPod, RuntimeError>) -> String {
        match result {
            Err(RuntimeError::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_complete_pod_request_converts() {
        let pod = run_pod_request(pod_request()).unwrap().settings;
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
            let mut r = pod_request();
            r.config.as_mut().unwrap().linux = Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: set.0,
                        pid: set.1,
                        ipc: set.2,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            assert_eq!(
                field_of(run_pod_request(r)),
                format!("config.linux.security_context.namespace_options.{which}")
            );
        }
    }

    #[test]
    fn a_cgroup_parent_is_kept_and_one_that_could_escape_is_refused() {
        let with_parent = |parent: &str| {
            let mut r = pod_request();
            r.config.as_mut().unwrap().linux = Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: parent.into(),
                ..Default::default()
            });
            run_pod_request(r)
        };
        for parent in ["", "/kubepods/burstable/pod1", "kubepods-pod1.slice"] {
            assert_eq!(with_parent(parent).unwrap().cgroup_parent, parent);
        }
        for parent in ["/kubepods/../..", "a/b.slice", "kubepods--x.slice"] {
            assert_eq!(
                field_of(with_parent(parent)),
                "config.linux.cgroup_parent",
                "{parent}"
            );
        }
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
        assert_eq!(run_pod_request(r).unwrap().settings.hostname, made);
    }

    #[test]
    fn port_mappings_keep_those_with_a_host_port_and_refuse_bad_ones() {
        let mapping = |container_port, host_port, protocol| cri::PortMapping {
            protocol,
            container_port,
            host_port,
            host_ip: String::new(),
        };
        let mut r = pod_request();
        r.config.as_mut().unwrap().port_mappings = vec![
            mapping(80, 8080, cri::Protocol::Tcp as i32),
            mapping(53, 0, cri::Protocol::Udp as i32),
            mapping(53, 5353, cri::Protocol::Udp as i32),
        ];
        let kept = run_pod_request(r).unwrap().settings.port_mappings;
        assert_eq!(
            kept.iter()
                .map(|m| (m.protocol.as_str(), m.container_port, m.host_port))
                .collect::<Vec<_>>(),
            [("tcp", 80, 8080), ("udp", 53, 5353)]
        );
        for bad in [
            mapping(0, 8080, 0),
            mapping(70000, 8080, 0),
            mapping(80, -1, 0),
            mapping(80, 8080, 9),
        ] {
            let mut r = pod_request();
            r.config.as_mut().unwrap().port_mappings = vec![bad];
            assert_eq!(field_of(run_pod_request(r)), "config.port_mappings");
        }
        let mut r = pod_request();
        r.config.as_mut().unwrap().port_mappings = vec![cri::PortMapping {
            host_ip: "not-an-ip".into(),
            ..mapping(80, 8080, 0)
        }];
        assert_eq!(field_of(run_pod_request(r)), "config.port_mappings");
    }

    #[test]
    fn an_empty_hostname_is_the_pod_name() {
        let mut r = pod_request();
        r.config.as_mut().unwrap().hostname = String::new();
        assert_eq!(run_pod_request(r).unwrap().settings.hostname, "web");
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

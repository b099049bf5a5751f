//! What each plugin is given besides its configuration, as containerd (go-cni) and libcni
//! give it: `CNI_ARGS` with the pod's Kubernetes identity, and on stdin the plugin's own
//! object with the network's `name` and `cniVersion`, the previous plugin's result as
//! `prevResult`, and a `runtimeConfig` with the capability arguments the plugin declares in
//! its `capabilities`.

use crate::{DnsCapability, PodNetworkRequest, Protocol};
use serde_json::{json, Map, Value};

/// `CNI_ARGS` as containerd's CRI plugin passes it.
pub fn cni_args(request: &PodNetworkRequest) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        request.pod_namespace, request.pod_name, request.sandbox_id, request.pod_uid
    )
}

/// Every capability argument of the pod, by capability name.
pub fn capability_args(request: &PodNetworkRequest) -> Map<String, Value> {
    let mut args = Map::new();
    // containerd drops mappings without a host port; its hostIP is always present.
    let mappings: Vec<Value> = request
        .port_mappings
        .iter()
        .filter(|m| m.host_port != 0)
        .map(|m| {
            json!({
                "hostPort": m.host_port,
                "containerPort": m.container_port,
                "protocol": match m.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                    Protocol::Sctp => "sctp",
                },
                "hostIP": m.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            })
        })
        .collect();
    if !mappings.is_empty() {
        args.insert("portMappings".into(), Value::Array(mappings));
    }
    if let Some(DnsCapability {
        servers,
        searches,
        options,
    }) = &request.dns
    {
        args.insert(
            "dns".into(),
            json!({"servers": servers, "searches": searches, "options": options}),
        );
    }
    args
}

/// The stdin of one plugin (libcni's `buildOneConfig` and `injectRuntimeConfig`).
pub fn plugin_input(
    plugin: &Map<String, Value>,
    name: &str,
    cni_version: &str,
    prev_result: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Vec<u8> {
    let mut input = plugin.clone();
    input.insert("name".into(), name.into());
    input.insert("cniVersion".into(), cni_version.into());
    if let Some(prev) = prev_result {
        input.insert("prevResult".into(), prev.clone());
    }
    let mut runtime_config = Map::new();
    if let Some(Value::Object(capabilities)) = plugin.get("capabilities") {
        for (capability, enabled) in capabilities {
            if enabled.as_bool() == Some(true) {
                if let Some(arg) = capability_args.get(capability) {
                    runtime_config.insert(capability.clone(), arg.clone());
                }
            }
        }
    }
    if !runtime_config.is_empty() {
        input.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    // A map of strings and JSON values always serialises.
    serde_json::to_vec(&Value::Object(input)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PortMapping;

    fn request() -> PodNetworkRequest {
        PodNetworkRequest {
            sandbox_id: "sb1".into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            pod_uid: "uid-1".into(),
            port_mappings: vec![
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: None,
                },
                PortMapping {
                    host_port: 0,
                    container_port: 53,
                    protocol: Protocol::Udp,
                    host_ip: None,
                },
            ],
            dns: Some(DnsCapability {
                servers: vec!["10.96.0.10".into()],
                searches: vec![],
                options: vec![],
            }),
        }
    }

    #[test]
    fn cni_args_carry_the_pod_identity() {
        assert_eq!(
            cni_args(&request()),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=sb1;K8S_POD_UID=uid-1"
        );
    }

    #[test]
    fn runtime_config_has_only_declared_capabilities() {
        let args = capability_args(&request());
        let portmap: Map<String, Value> = serde_json::from_str(
            r#"{"type":"portmap","capabilities":{"portMappings":true,"dns":false}}"#,
        )
        .unwrap();
        let input: Value = serde_json::from_slice(&plugin_input(
            &portmap,
            "net",
            "1.0.0",
            Some(&json!({"x": 1})),
            &args,
        ))
        .unwrap();
        assert_eq!(input["name"], "net");
        assert_eq!(input["cniVersion"], "1.0.0");
        assert_eq!(input["prevResult"], json!({"x": 1}));
        assert_eq!(
            input["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]})
        );
        let bridge: Map<String, Value> = serde_json::from_str(r#"{"type":"bridge"}"#).unwrap();
        let input: Value =
            serde_json::from_slice(&plugin_input(&bridge, "net", "1.0.0", None, &args)).unwrap();
        assert!(input.get("runtimeConfig").is_none() && input.get("prevResult").is_none());
    }
}

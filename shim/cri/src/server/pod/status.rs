//! PodSandboxStatus: the pod's record (after checking that its VM still runs) and its
//! containers' statuses; verbose adds the VM's size and why it is NotReady.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use super::{metadata, state};
use crate::filters::ContainerFilter;
use crate::runtime::Runtime;
use crate::server::common::required;
use crate::server::container;
use crate::server::status;
use crate::state::PodRecord;

pub(in crate::server) async fn pod_sandbox_status(
    runtime: &Arc<Runtime>,
    request: cri::PodSandboxStatusRequest,
) -> Result<cri::PodSandboxStatusResponse, Status> {
    required(&request.pod_sandbox_id, "pod_sandbox_id")?;
    let pod = runtime
        .pod_status(&request.pod_sandbox_id)
        .await
        .map_err(status)?;
    let filter = ContainerFilter {
        pod_id: pod.id.clone(),
        ..Default::default()
    };
    let containers = runtime.list_containers(&filter).await;
    Ok(cri::PodSandboxStatusResponse {
        status: Some(cri_status(&pod)),
        info: if request.verbose {
            pod_info(&pod)
        } else {
            Default::default()
        },
        containers_statuses: containers
            .iter()
            .map(container::status::cri_status)
            .collect(),
        timestamp: crate::logformat::now_ns(),
    })
}

/// A pod's record as the CRI reports it (PodSandboxStatus and the container events).
pub(in crate::server) fn cri_status(pod: &PodRecord) -> cri::PodSandboxStatus {
    cri::PodSandboxStatus {
        id: pod.id.clone(),
        metadata: Some(metadata(pod)),
        state: state(pod),
        created_at: pod.created_at_ns,
        // No network status until the pod has an address: a kubelet takes an empty IP for a
        // broken sandbox and re-creates it.
        network: pod
            .network
            .as_ref()
            .and_then(|network| network.ips.split_first())
            .map(|(ip, more)| cri::PodSandboxNetworkStatus {
                ip: ip.clone(),
                additional_ips: more
                    .iter()
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            }),
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
        labels: pod.settings.labels.clone(),
        annotations: pod.settings.annotations.clone(),
        runtime_handler: pod.settings.runtime_handler.clone(),
    }
}

/// Extra detail for `crictl inspectp` (verbose): the VM's size and why it is NotReady.
fn pod_info(pod: &PodRecord) -> HashMap<String, String> {
    let info = serde_json::json!({
        "vcpus": pod.vcpus,
        "memoryMiB": pod.memory_mib,
        "hostname": pod.settings.hostname,
        "dns": {"servers": pod.settings.dns_servers, "searches": pod.settings.dns_searches, "options": pod.settings.dns_options},
        "reason": pod.reason,
        "netns": pod.network.as_ref().map(|n| &n.netns),
        "portMappings": pod.settings.port_mappings,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

//! PodSandboxStats and ListPodSandboxStats: the guest's memory and the sum of its
//! containers' CPU time and processes.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use super::metadata;
use crate::filters::PodFilter;
use crate::runtime::{PodUsage, Runtime};
use crate::server::common::{cpu_usage, memory_usage, process_usage, required};
use crate::server::container;
use crate::server::status;

pub(in crate::server) async fn pod_sandbox_stats(
    runtime: &Arc<Runtime>,
    request: cri::PodSandboxStatsRequest,
) -> Result<cri::PodSandboxStatsResponse, Status> {
    let id = request.pod_sandbox_id;
    required(&id, "pod_sandbox_id")?;
    let usage = runtime.pod_stats(&id).await.map_err(status)?;
    Ok(cri::PodSandboxStatsResponse {
        stats: Some(cri_stats(&usage)),
    })
}

pub(in crate::server) async fn list_pod_sandbox_stats(
    runtime: &Arc<Runtime>,
    request: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse, Status> {
    let filter = request.filter.unwrap_or_default();
    let pods = runtime
        .list_pods(&PodFilter {
            id: filter.id,
            ready: None,
            labels: filter.label_selector,
        })
        .await;
    let mut stats = Vec::new();
    for pod in pods {
        if let Ok(usage) = runtime.pod_stats(&pod.id).await {
            stats.push(cri_stats(&usage));
        }
    }
    Ok(cri::ListPodSandboxStatsResponse { stats })
}

fn cri_stats(u: &PodUsage) -> cri::PodSandboxStats {
    let t = u.timestamp_ns;
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: u.record.id.clone(),
            metadata: Some(metadata(&u.record)),
            labels: u.record.settings.labels.clone(),
            annotations: u.record.settings.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu_usage(t, u.cpu_ns)),
            memory: Some(memory_usage(t, u.memory_used_bytes, u.memory_total_bytes)),
            network: None,
            process: Some(process_usage(t, u.pids)),
            containers: u
                .containers
                .iter()
                .map(container::stats::cri_stats)
                .collect(),
        }),
        windows: None,
    }
}

//! ContainerStats and ListContainerStats: a container's CPU time, memory and processes
//! from its cgroup in the guest; `None` figures when it is not running.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use super::metadata;
use crate::filters::ContainerFilter;
use crate::runtime::{ContainerUsage, Runtime};
use crate::server::common::{cpu_usage, memory_usage, required};
use crate::server::status;
use crate::state::ContainerRecord;

pub(in crate::server) async fn container_stats(
    runtime: &Arc<Runtime>,
    request: cri::ContainerStatsRequest,
) -> Result<cri::ContainerStatsResponse, Status> {
    let id = request.container_id;
    required(&id, "container_id")?;
    let usage = runtime.container_stats(&id).await.map_err(status)?;
    Ok(cri::ContainerStatsResponse {
        stats: Some(cri_stats(&usage)),
    })
}

pub(in crate::server) async fn list_container_stats(
    runtime: &Arc<Runtime>,
    request: cri::ListContainerStatsRequest,
) -> Result<cri::ListContainerStatsResponse, Status> {
    let filter = container_stats_filter(request.filter);
    let list = runtime.list_container_stats(&filter).await;
    Ok(cri::ListContainerStatsResponse {
        stats: list.iter().map(cri_stats).collect(),
    })
}

fn container_stats_filter(filter: Option<cri::ContainerStatsFilter>) -> ContainerFilter {
    let filter = filter.unwrap_or_default();
    ContainerFilter {
        id: filter.id,
        pod_id: filter.pod_sandbox_id,
        phase: None,
        labels: filter.label_selector,
    }
}

fn attributes(c: &ContainerRecord) -> cri::ContainerAttributes {
    cri::ContainerAttributes {
        id: c.id.clone(),
        metadata: Some(metadata(c)),
        labels: c.settings.labels.clone(),
        annotations: c.settings.annotations.clone(),
    }
}

/// A container's usage as the CRI reports it (the container stats verbs and the pod's).
pub(in crate::server) fn cri_stats(u: &ContainerUsage) -> cri::ContainerStats {
    let t = u.timestamp_ns;
    cri::ContainerStats {
        attributes: Some(attributes(&u.record)),
        cpu: Some(cpu_usage(t, u.cpu_ns)),
        memory: Some(memory_usage(t, u.memory_bytes, u.memory_limit_bytes)),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: t,
            fs_id: None,
            used_bytes: Some(cri::UInt64Value { value: 0 }),
            inodes_used: Some(cri::UInt64Value { value: 0 }),
        }),
        swap: None,
    }
}

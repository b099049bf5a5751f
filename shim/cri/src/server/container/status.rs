//! ContainerStatus: the container's record (after checking that its pod's VM still runs)
//! in CRI terms.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use super::{image_spec, metadata, state};
use crate::runtime::Runtime;
use crate::server::common::required;
use crate::server::status;
use crate::state::{ContainerLimits, ContainerRecord};

pub(in crate::server) async fn container_status(
    runtime: &Arc<Runtime>,
    request: cri::ContainerStatusRequest,
) -> Result<cri::ContainerStatusResponse, Status> {
    required(&request.container_id, "container_id")?;
    let container = runtime
        .container_status(&request.container_id)
        .await
        .map_err(status)?;
    Ok(cri::ContainerStatusResponse {
        status: Some(cri_status(&container)),
        info: Default::default(),
    })
}

/// The limits as ContainerStatus reports them; none when nothing was set.
fn container_resources(limits: &ContainerLimits) -> Option<cri::ContainerResources> {
    if limits.is_empty() {
        return None;
    }
    Some(cri::ContainerResources {
        linux: Some(cri::LinuxContainerResources {
            cpu_shares: i64::try_from(limits.cpu_shares).unwrap_or(i64::MAX),
            cpu_quota: limits.cpu_quota_us,
            cpu_period: i64::try_from(limits.cpu_period_us).unwrap_or(i64::MAX),
            memory_limit_in_bytes: limits.memory_limit_bytes,
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A container's record as the CRI reports it (ContainerStatus, PodSandboxStatus and the
/// container events).
pub(in crate::server) fn cri_status(c: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(metadata(c)),
        state: state(c),
        created_at: c.created_at_ns,
        started_at: c.started_at_ns,
        finished_at: c.finished_at_ns,
        exit_code: c.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.image_id.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.settings.labels.clone(),
        annotations: c.settings.annotations.clone(),
        mounts: c
            .settings
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                ..Default::default()
            })
            .collect(),
        log_path: c.log_path.clone(),
        resources: container_resources(&c.settings.limits),
        image_id: c.image_id.clone(),
        user: c.settings.run_as_uid.map(|uid| cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid,
                gid: c.settings.run_as_gid.unwrap_or(0),
                supplemental_groups: Vec::new(),
            }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reports_the_limits_set_and_none_when_unset() {
        let limits = ContainerLimits {
            cpu_shares: 512,
            cpu_quota_us: 0,
            cpu_period_us: 100_000,
            memory_limit_bytes: 64 << 20,
        };
        let reported = container_resources(&limits).unwrap().linux.unwrap();
        assert_eq!(reported.memory_limit_in_bytes, 64 << 20);
        assert_eq!((reported.cpu_shares, reported.cpu_quota), (512, 0));
        assert!(container_resources(&ContainerLimits::default()).is_none());
    }
}

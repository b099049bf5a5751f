//! The container verbs, one file each (the two stats verbs together): the CRI request
//! validated into the runtime's terms, the runtime's call, its records back in CRI terms.

pub(super) mod attach;
pub(super) mod create;
pub(super) mod events;
pub(super) mod exec;
pub(super) mod exec_sync;
pub(super) mod list;
pub(super) mod remove;
pub(super) mod reopen_log;
pub(super) mod start;
pub(super) mod stats;
pub(super) mod status;
pub(super) mod stop;
pub(super) mod update;

use vpod_proto::cri;

use crate::state::{ContainerLimits, ContainerPhase, ContainerRecord};

fn metadata(c: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata {
        name: c.settings.name.clone(),
        attempt: c.settings.attempt,
    }
}

fn state(c: &ContainerRecord) -> i32 {
    match c.phase {
        ContainerPhase::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerPhase::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerPhase::Exited => cri::ContainerState::ContainerExited as i32,
        ContainerPhase::Creating => cri::ContainerState::ContainerUnknown as i32,
    }
}

fn image_spec(c: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: c.settings.image.clone(),
        ..Default::default()
    }
}

/// The cgroup limits of CRI's container resources (CreateContainer and
/// UpdateContainerResources); negative or zero values are not set.
fn limits(r: &cri::LinuxContainerResources) -> ContainerLimits {
    ContainerLimits {
        cpu_shares: u64::try_from(r.cpu_shares).unwrap_or(0),
        cpu_quota_us: r.cpu_quota.max(0),
        cpu_period_us: u64::try_from(r.cpu_period).unwrap_or(0),
        memory_limit_bytes: r.memory_limit_in_bytes.max(0),
    }
}

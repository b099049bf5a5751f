//! The pod sandbox verbs, one file each (the two stats verbs together): the CRI request
//! validated into the runtime's terms, the runtime's call, its records back in CRI terms.

pub(super) mod list;
pub(super) mod port_forward;
pub(super) mod remove;
pub(super) mod run;
pub(super) mod stats;
pub(super) mod status;
pub(super) mod stop;

use vpod_proto::cri;

use crate::state::{PodPhase, PodRecord};

fn metadata(pod: &PodRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: pod.settings.name.clone(),
        uid: pod.settings.uid.clone(),
        namespace: pod.settings.namespace.clone(),
        attempt: pod.settings.attempt,
    }
}

fn state(pod: &PodRecord) -> i32 {
    match pod.phase {
        PodPhase::Ready => cri::PodSandboxState::SandboxReady as i32,
        _ => cri::PodSandboxState::SandboxNotready as i32,
    }
}

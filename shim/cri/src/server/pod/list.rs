//! ListPodSandbox: the pods a filter matches, oldest first.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use super::{metadata, state};
use crate::filters::PodFilter;
use crate::runtime::Runtime;
use crate::state::PodRecord;

pub(in crate::server) async fn list_pod_sandbox(
    runtime: &Arc<Runtime>,
    request: cri::ListPodSandboxRequest,
) -> Result<cri::ListPodSandboxResponse, Status> {
    let filter = pod_filter(request.filter);
    let pods = runtime.list_pods(&filter).await;
    Ok(cri::ListPodSandboxResponse {
        items: pods.iter().map(pod_sandbox).collect(),
    })
}

fn pod_filter(filter: Option<cri::PodSandboxFilter>) -> PodFilter {
    let filter = filter.unwrap_or_default();
    PodFilter {
        id: filter.id,
        ready: filter
            .state
            .map(|s| s.state == cri::PodSandboxState::SandboxReady as i32),
        labels: filter.label_selector,
    }
}

fn pod_sandbox(pod: &PodRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: pod.id.clone(),
        metadata: Some(metadata(pod)),
        state: state(pod),
        created_at: pod.created_at_ns,
        labels: pod.settings.labels.clone(),
        annotations: pod.settings.annotations.clone(),
        runtime_handler: pod.settings.runtime_handler.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_filter_asks_for_ready_or_not() {
        let p = pod_filter(Some(cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }));
        assert_eq!(p.ready, Some(false));
        assert_eq!(pod_filter(None).ready, None);
    }
}

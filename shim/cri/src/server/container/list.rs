//! ListContainers: the containers a filter matches, oldest first.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use super::{image_spec, metadata, state};
use crate::filters::ContainerFilter;
use crate::runtime::Runtime;
use crate::state::{ContainerPhase, ContainerRecord};

pub(in crate::server) async fn list_containers(
    runtime: &Arc<Runtime>,
    request: cri::ListContainersRequest,
) -> Result<cri::ListContainersResponse, Status> {
    let filter = container_filter(request.filter);
    let containers = runtime.list_containers(&filter).await;
    Ok(cri::ListContainersResponse {
        containers: containers.iter().map(container).collect(),
    })
}

fn container_phase(state: i32) -> Option<ContainerPhase> {
    match cri::ContainerState::try_from(state).ok()? {
        cri::ContainerState::ContainerCreated => Some(ContainerPhase::Created),
        cri::ContainerState::ContainerRunning => Some(ContainerPhase::Running),
        cri::ContainerState::ContainerExited => Some(ContainerPhase::Exited),
        // Nothing is ever unknown to this runtime; Creating is never listed.
        cri::ContainerState::ContainerUnknown => Some(ContainerPhase::Creating),
    }
}

fn container_filter(filter: Option<cri::ContainerFilter>) -> ContainerFilter {
    let filter = filter.unwrap_or_default();
    ContainerFilter {
        id: filter.id,
        pod_id: filter.pod_sandbox_id,
        phase: filter.state.and_then(|s| container_phase(s.state)),
        labels: filter.label_selector,
    }
}

fn container(c: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: Some(metadata(c)),
        image: Some(image_spec(c)),
        image_ref: c.image_id.clone(),
        state: state(c),
        created_at: c.created_at_ns,
        labels: c.settings.labels.clone(),
        annotations: c.settings.annotations.clone(),
        image_id: c.image_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_filter_maps_to_a_phase() {
        let f = container_filter(Some(cri::ContainerFilter {
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        }));
        assert_eq!(f.phase, Some(ContainerPhase::Running));
        assert_eq!(container_filter(None).phase, None);
    }
}

//! GetContainerEvents: the lifecycle events (created, started, stopped, deleted) as they are
//! recorded, each with its pod's status and the statuses of every container of that pod,
//! as the kubelet's evented PLEG reads them.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
use tokio_stream::StreamExt;
use tonic::Status;
use vpod_proto::cri;

use crate::runtime::{ContainerEvent, ContainerEventKind, Runtime};
use crate::server::{container, pod};
use crate::state::{ContainerRecord, PodRecord};

pub(in crate::server) type ContainerEventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

pub(in crate::server) fn get_container_events(
    runtime: &Arc<Runtime>,
    _: cri::GetEventsRequest,
) -> ContainerEventStream {
    let snapshots = runtime.clone();
    // A listener that falls behind gets an error, which ends its stream (tonic sends the
    // status as the trailer); the kubelet then relists and subscribes again.
    let stream = BroadcastStream::new(runtime.subscribe_events()).map(move |event| match event {
        Ok(event) => {
            let snapshot = snapshots.pod_snapshot(&event.pod_id);
            Ok(container_event(&event, snapshot))
        }
        Err(BroadcastStreamRecvError::Lagged(n)) => Err(Status::aborted(format!(
            "the listener fell {n} events behind; subscribe again"
        ))),
    });
    Box::pin(stream)
}

/// A lifecycle event with the statuses the kubelet's evented PLEG reads: its pod's and
/// every container's of that pod (`snapshot`; none once the pod is removed).
fn container_event(
    event: &ContainerEvent,
    snapshot: Option<(PodRecord, Vec<ContainerRecord>)>,
) -> cri::ContainerEventResponse {
    let container_event_type = match event.kind {
        ContainerEventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
        ContainerEventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
        ContainerEventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
        ContainerEventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
    };
    let (pod_sandbox_status, containers_statuses) = match snapshot {
        Some((pod, containers)) => (
            Some(pod::status::cri_status(&pod)),
            containers
                .iter()
                .map(container::status::cri_status)
                .collect(),
        ),
        None => (None, Vec::new()),
    };
    cri::ContainerEventResponse {
        container_id: event.container_id.clone(),
        container_event_type: container_event_type as i32,
        created_at: event.at_ns,
        pod_sandbox_status,
        containers_statuses,
    }
}

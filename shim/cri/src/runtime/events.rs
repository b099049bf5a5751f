//! Container lifecycle events for GetContainerEvents (the kubelet's evented PLEG): created,
//! started, stopped (exited, whatever ended it) and deleted, sent as they are recorded.

use tokio::sync::broadcast;

use super::Runtime;
use crate::state::{ContainerPhase, ContainerRecord, PodRecord};

/// How many events a slow listener may fall behind before its stream ends (the kubelet
/// then relists and subscribes again).
pub const EVENT_BACKLOG: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerEventKind {
    Created,
    Started,
    Stopped,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub container_id: String,
    pub pod_id: String,
    pub kind: ContainerEventKind,
    pub at_ns: i64,
}

impl ContainerEventKind {
    /// The event a change of phase from `before` to `after` is, if any.
    pub fn of_change(before: ContainerPhase, after: ContainerPhase) -> Option<ContainerEventKind> {
        if before == after {
            return None;
        }
        match after {
            ContainerPhase::Created => Some(ContainerEventKind::Created),
            ContainerPhase::Running => Some(ContainerEventKind::Started),
            ContainerPhase::Exited => Some(ContainerEventKind::Stopped),
            ContainerPhase::Creating => None,
        }
    }
}

impl Runtime {
    /// Every event from now on.
    pub fn subscribe_events(&self) -> broadcast::Receiver<ContainerEvent> {
        self.events.subscribe()
    }

    /// The pod's record and its containers' records, for an event's statuses; `None` once
    /// the pod is removed.
    pub fn pod_snapshot(&self, pod_id: &str) -> Option<(PodRecord, Vec<ContainerRecord>)> {
        let pod = self.pod(pod_id).ok()?;
        let containers = self
            .containers_of(pod_id)
            .iter()
            .map(|c| c.record())
            .collect();
        Some((pod.record(), containers))
    }

    pub(super) fn emit(&self, container_id: &str, pod_id: &str, kind: ContainerEventKind) {
        // No listener is not an error.
        let _ = self.events.send(ContainerEvent {
            container_id: container_id.to_owned(),
            pod_id: pod_id.to_owned(),
            kind,
            at_ns: crate::logformat::now_ns(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerPhase::*;

    #[test]
    fn phase_changes_are_the_four_events() {
        assert_eq!(
            ContainerEventKind::of_change(Creating, Created),
            Some(ContainerEventKind::Created)
        );
        assert_eq!(
            ContainerEventKind::of_change(Created, Running),
            Some(ContainerEventKind::Started)
        );
        assert_eq!(
            ContainerEventKind::of_change(Running, Exited),
            Some(ContainerEventKind::Stopped)
        );
        assert_eq!(
            ContainerEventKind::of_change(Created, Exited),
            Some(ContainerEventKind::Stopped)
        );
        assert_eq!(ContainerEventKind::of_change(Exited, Exited), None);
        assert_eq!(ContainerEventKind::of_change(Running, Running), None);
    }
}

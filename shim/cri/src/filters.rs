//! The filters of ListPodSandbox, ListContainers and the stats lists, on records: an id
//! (or a prefix of one, as crictl passes what the user typed), a state, a pod, and labels
//! that must all match.

use std::collections::HashMap;

use crate::state::{ContainerPhase, ContainerRecord, PodPhase, PodRecord};

/// What a pod must match; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct PodFilter {
    pub id: String,
    pub ready: Option<bool>,
    pub labels: HashMap<String, String>,
}

/// What a container must match; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub id: String,
    pub pod_id: String,
    pub phase: Option<ContainerPhase>,
    pub labels: HashMap<String, String>,
}

fn labels_match(selector: &HashMap<String, String>, labels: &HashMap<String, String>) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

impl PodFilter {
    pub fn matches(&self, pod: &PodRecord) -> bool {
        let ready = pod.phase == PodPhase::Ready;
        pod.id.starts_with(&self.id)
            && self.ready.is_none_or(|wanted| wanted == ready)
            && pod.phase != PodPhase::Creating
            && labels_match(&self.labels, &pod.settings.labels)
    }
}

impl ContainerFilter {
    pub fn matches(&self, container: &ContainerRecord) -> bool {
        container.id.starts_with(&self.id)
            && container.pod_id.starts_with(&self.pod_id)
            && self.phase.is_none_or(|wanted| wanted == container.phase)
            && container.phase != ContainerPhase::Creating
            && labels_match(&self.labels, &container.settings.labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ContainerSettings, PodSettings};

    fn pod(id: &str, phase: PodPhase, labels: &[(&str, &str)]) -> PodRecord {
        PodRecord {
            id: id.into(),
            settings: PodSettings {
                name: "n".into(),
                uid: "u".into(),
                namespace: "ns".into(),
                hostname: "h".into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            },
            created_at_ns: 1,
            vcpus: 1,
            memory_mib: 128,
            phase,
            reason: String::new(),
            network: None,
            cgroup: None,
        }
    }

    fn container(id: &str, pod_id: &str, phase: ContainerPhase) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            pod_id: pod_id.into(),
            settings: ContainerSettings {
                name: "c".into(),
                image: "img".into(),
                labels: HashMap::from([("tier".to_string(), "web".to_string())]),
                ..Default::default()
            },
            image_id: "sha256:x".into(),
            log_path: String::new(),
            created_at_ns: 1,
            started_at_ns: 0,
            finished_at_ns: 0,
            exit_code: 0,
            phase,
            reason: String::new(),
            message: String::new(),
        }
    }

    #[test]
    fn an_empty_pod_filter_matches_all_but_pods_being_created() {
        let f = PodFilter::default();
        assert!(f.matches(&pod("a1", PodPhase::Ready, &[])));
        assert!(f.matches(&pod("a2", PodPhase::NotReady, &[])));
        assert!(!f.matches(&pod("a3", PodPhase::Creating, &[])));
    }

    #[test]
    fn pod_filters_on_id_prefix_state_and_every_label() {
        let p = pod("abc", PodPhase::Ready, &[("app", "web"), ("env", "prod")]);
        let by_id = |id: &str| PodFilter {
            id: id.into(),
            ..Default::default()
        };
        assert!(by_id("ab").matches(&p));
        assert!(!by_id("b").matches(&p));
        let ready = |r| PodFilter {
            ready: Some(r),
            ..Default::default()
        };
        assert!(ready(true).matches(&p));
        assert!(!ready(false).matches(&p));
        let labels = |l: &[(&str, &str)]| PodFilter {
            labels: l
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        assert!(labels(&[("app", "web")]).matches(&p));
        assert!(labels(&[("app", "web"), ("env", "prod")]).matches(&p));
        assert!(!labels(&[("app", "web"), ("env", "dev")]).matches(&p));
        assert!(!labels(&[("missing", "x")]).matches(&p));
    }

    #[test]
    fn container_filters_on_id_pod_state_and_labels() {
        let c = container("c1", "p1", ContainerPhase::Running);
        assert!(ContainerFilter::default().matches(&c));
        let f = ContainerFilter {
            pod_id: "p1".into(),
            phase: Some(ContainerPhase::Running),
            labels: HashMap::from([("tier".to_string(), "web".to_string())]),
            ..Default::default()
        };
        assert!(f.matches(&c));
        let other_pod = ContainerFilter {
            pod_id: "p2".into(),
            ..Default::default()
        };
        assert!(!other_pod.matches(&c));
        let exited = ContainerFilter {
            phase: Some(ContainerPhase::Exited),
            ..Default::default()
        };
        assert!(!exited.matches(&c));
        assert!(!ContainerFilter::default().matches(&container(
            "c2",
            "p1",
            ContainerPhase::Creating
        )));
    }
}

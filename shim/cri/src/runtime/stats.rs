//! Resource usage: a container's from its cgroup in the guest (through the agent), a pod's
//! from the guest's memory and the sum of its containers.

use std::sync::Arc;

use super::{Pod, Runtime, RuntimeError};
use crate::filters::ContainerFilter;
use crate::logformat::now_ns;
use crate::state::{ContainerPhase, ContainerRecord, PodPhase, PodRecord};

/// One container's usage; `None` figures when it is not running.
#[derive(Debug, Clone)]
pub struct ContainerUsage {
    pub record: ContainerRecord,
    pub timestamp_ns: i64,
    pub cpu_ns: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub pids: Option<u64>,
}

/// One pod's usage.
#[derive(Debug, Clone)]
pub struct PodUsage {
    pub record: PodRecord,
    pub timestamp_ns: i64,
    /// The guest's memory in use (total minus available) and its total.
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub cpu_ns: Option<u64>,
    pub pids: Option<u64>,
    pub containers: Vec<ContainerUsage>,
}

impl Runtime {
    async fn usage_of(&self, pod: Option<&Arc<Pod>>, record: ContainerRecord) -> ContainerUsage {
        let mut usage = ContainerUsage {
            record,
            timestamp_ns: now_ns(),
            cpu_ns: None,
            memory_bytes: None,
            memory_limit_bytes: None,
            pids: None,
        };
        if usage.record.phase != ContainerPhase::Running {
            return usage;
        }
        let Some(pod) = pod else { return usage };
        let slot = pod.sandbox.read().await;
        let Some(sandbox) = slot.as_ref() else {
            return usage;
        };
        match sandbox.container_stats(&usage.record.id).await {
            Ok(stats) => {
                usage.cpu_ns = Some(stats.cpu_usage_ns);
                usage.memory_bytes = Some(stats.memory_usage_bytes);
                usage.memory_limit_bytes =
                    (stats.memory_limit_bytes > 0).then_some(stats.memory_limit_bytes);
                usage.pids = Some(stats.pids_current);
            }
            Err(e) => {
                tracing::debug!(container = %usage.record.id, error = %super::error_chain(&e), "container stats");
            }
        }
        usage.timestamp_ns = now_ns();
        usage
    }

    pub async fn container_stats(&self, wanted: &str) -> Result<ContainerUsage, RuntimeError> {
        let container = self.container(wanted)?;
        let record = container.record();
        let pod = self.pod(&record.pod_id).ok();
        Ok(self.usage_of(pod.as_ref(), record).await)
    }

    pub async fn list_container_stats(&self, filter: &ContainerFilter) -> Vec<ContainerUsage> {
        let mut list = Vec::new();
        for record in self.list_containers(filter).await {
            let pod = self.pod(&record.pod_id).ok();
            list.push(self.usage_of(pod.as_ref(), record).await);
        }
        list
    }

    pub async fn pod_stats(&self, wanted: &str) -> Result<PodUsage, RuntimeError> {
        let pod = self.pod(wanted)?;
        self.check_vm(&pod).await;
        let record = pod.record();
        let mut usage = PodUsage {
            timestamp_ns: now_ns(),
            memory_used_bytes: None,
            memory_total_bytes: None,
            cpu_ns: None,
            pids: None,
            containers: Vec::new(),
            record,
        };
        if usage.record.phase != PodPhase::Ready {
            return Ok(usage);
        }
        {
            let slot = pod.sandbox.read().await;
            if let Some(sandbox) = slot.as_ref() {
                if let Ok(info) = sandbox.guest_info().await {
                    usage.memory_total_bytes = Some(info.memory_total_bytes);
                    usage.memory_used_bytes = Some(
                        info.memory_total_bytes
                            .saturating_sub(info.memory_available_bytes),
                    );
                }
            }
        }
        let filter = ContainerFilter {
            pod_id: pod.id.clone(),
            ..Default::default()
        };
        for record in self.list_containers(&filter).await {
            let container = self.usage_of(Some(&pod), record).await;
            if let Some(cpu) = container.cpu_ns {
                usage.cpu_ns = Some(usage.cpu_ns.unwrap_or(0) + cpu);
            }
            if let Some(pids) = container.pids {
                usage.pids = Some(usage.pids.unwrap_or(0) + pids);
            }
            usage.containers.push(container);
        }
        usage.timestamp_ns = now_ns();
        Ok(usage)
    }
}

//! StopPodSandbox: stop the pod's VM and so every container in it, then release its
//! network (CNI's DEL), as containerd does at this point, and remove its cgroup.

use super::cgroup::remove_pod_cgroup;
use crate::logformat::now_ns;
use crate::runtime::{lock, Pod, Runtime, RuntimeError};
use crate::state::{ContainerPhase, PodPhase};

impl Runtime {
    /// Stops the pod's VM (and so every container in it); a stopped pod is not an error.
    pub async fn stop_pod(&self, wanted: &str) -> Result<(), RuntimeError> {
        let pod = self.pod(wanted)?;
        self.stop_pod_vm(&pod, "PodStopped", "").await
    }

    /// Stops the VM of `pod` if it runs; containers not exited are marked exited with
    /// `reason`, and the pod NotReady with `pod_reason`.
    pub(in crate::runtime) async fn stop_pod_vm(
        &self,
        pod: &Pod,
        reason: &str,
        pod_reason: &str,
    ) -> Result<(), RuntimeError> {
        let mut slot = pod.sandbox.write().await;
        let containers = self.containers_of(&pod.id);
        for container in &containers {
            if let Some(task) = lock(&container.follower).take() {
                task.abort();
            }
        }
        let stopped = match slot.take() {
            Some(sandbox) => {
                tracing::info!(pod = %pod.id, reason, "stopping pod VM");
                sandbox.stop().await
            }
            None => Ok(()),
        };
        let now = now_ns();
        for container in &containers {
            let record = container.record();
            if matches!(
                record.phase,
                ContainerPhase::Running | ContainerPhase::Created
            ) {
                self.update_container(container, |c| {
                    if c.phase == ContainerPhase::Running {
                        c.exit_code = 137;
                        c.finished_at_ns = now;
                    }
                    c.phase = ContainerPhase::Exited;
                    c.reason = reason.to_string();
                })?;
            }
            *lock(&container.log) = None;
        }
        // After the VM: its tap holds the pod's side of the link until the VMM is gone.
        let released = self.tear_down_network(&pod.id).await;
        let cgroup_gone = remove_pod_cgroup(&pod.id, pod.record().cgroup.as_deref()).await;
        self.update_pod(pod, |p| {
            if p.phase != PodPhase::NotReady {
                p.reason = pod_reason.to_string();
            }
            p.phase = PodPhase::NotReady;
            if released.is_ok() {
                p.network = None;
            }
            if cgroup_gone {
                p.cgroup = None;
            }
        })?;
        stopped.map_err(RuntimeError::from)?;
        released
    }
}

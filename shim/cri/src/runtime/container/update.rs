//! UpdateContainerResources: rewrite a created or running container's cgroup limits in its
//! guest and record them.

use super::spec::resources;
use crate::runtime::{pod_not_ready, Runtime, RuntimeError};
use crate::state::{ContainerLimits, ContainerPhase};

impl Runtime {
    /// Rewrites the cgroup limits of a created or running container in its guest and
    /// records them; limits left unset keep their value. The VM's own size stays as booted.
    pub async fn update_container_resources(
        &self,
        wanted: &str,
        limits: ContainerLimits,
    ) -> Result<(), RuntimeError> {
        let container = self.container(wanted)?;
        let record = container.record();
        if !matches!(
            record.phase,
            ContainerPhase::Created | ContainerPhase::Running
        ) {
            return Err(RuntimeError::FailedPrecondition(format!(
                "the container {} is {:?}; only a created or running container's resources \
                 can be updated",
                container.id, record.phase
            )));
        }
        let limits = limits.over(record.settings.limits);
        let pod = self.pod(&record.pod_id)?;
        {
            let slot = pod.sandbox.read().await;
            let Some(sandbox) = slot.as_ref() else {
                return Err(pod_not_ready(&pod.id));
            };
            sandbox
                .update_container(&container.id, &resources(&limits))
                .await?;
        }
        self.update_container(&container, |c| c.settings.limits = limits)?;
        tracing::info!(container = %container.id, ?limits, "container resources updated");
        Ok(())
    }
}

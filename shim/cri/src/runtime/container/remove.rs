//! RemoveContainer: kill the container if it runs, remove it from the guest and forget it.

use std::time::Duration;

use crate::runtime::{
    container_name_key, error_chain, lock, Container, ContainerEventKind, Runtime, RuntimeError,
};
use crate::state::ContainerPhase;

impl Runtime {
    /// Removes the container, killing it if it runs.
    pub async fn remove_container(&self, wanted: &str) -> Result<(), RuntimeError> {
        let container = self.container(wanted)?;
        let record = container.record();
        if record.phase == ContainerPhase::Running {
            if let Err(e) = self.stop_container(&container.id, Duration::ZERO).await {
                tracing::warn!(container = %container.id, error = %error_chain(&e), "killing before removal");
            }
        }
        if let Ok(pod) = self.pod(&record.pod_id) {
            let mut slot = pod.sandbox.write().await;
            if let Some(sandbox) = slot.as_mut() {
                if sandbox.containers().contains(&container.id) {
                    sandbox.remove_container(&container.id).await?;
                }
            }
        }
        self.forget_container(&container)?;
        tracing::info!(container = %container.id, "container removed");
        Ok(())
    }

    /// Drops the container's record, task and name (its guest side is gone already).
    pub(in crate::runtime) fn forget_container(
        &self,
        container: &Container,
    ) -> Result<(), RuntimeError> {
        if let Some(task) = lock(&container.follower).take() {
            task.abort();
        }
        *lock(&container.log) = None;
        let record = container.record();
        self.state.remove_container(&container.id)?;
        self.state.remove_log_offset(&container.id)?;
        lock(&self.containers).remove(&container.id);
        self.emit(&container.id, &record.pod_id, ContainerEventKind::Deleted);
        self.release_name(&container_name_key(&record.pod_id, &record.settings));
        Ok(())
    }
}

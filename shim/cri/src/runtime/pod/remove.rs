//! RemovePodSandbox: stop the pod if it runs, then forget it and its containers.

use crate::runtime::{lock, pod_name_key, Runtime, RuntimeError};

impl Runtime {
    /// Removes the pod, stopping it first, and its containers.
    pub async fn remove_pod(&self, wanted: &str) -> Result<(), RuntimeError> {
        let pod = self.pod(wanted)?;
        self.stop_pod_vm(&pod, "PodRemoved", "").await?;
        for container in self.containers_of(&pod.id) {
            self.forget_container(&container)?;
        }
        let record = pod.record();
        self.state.remove_pod(&pod.id)?;
        lock(&self.pods).remove(&pod.id);
        self.release_name(&pod_name_key(&record.settings));
        tracing::info!(pod = %pod.id, "pod removed");
        Ok(())
    }
}

//! ContainerStatus: the container's record, its pod's VM checked first.

use crate::runtime::{Runtime, RuntimeError};
use crate::state::ContainerRecord;

impl Runtime {
    /// The container's record, after checking that its pod's VM still runs.
    pub async fn container_status(&self, wanted: &str) -> Result<ContainerRecord, RuntimeError> {
        let container = self.container(wanted)?;
        let pod_id = container.record().pod_id;
        if let Ok(pod) = self.pod(&pod_id) {
            self.check_vm(&pod).await;
        }
        Ok(container.record())
    }
}

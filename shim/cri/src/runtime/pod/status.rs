//! PodSandboxStatus: the pod's record, its VM checked first.

use crate::runtime::{Runtime, RuntimeError};
use crate::state::PodRecord;

impl Runtime {
    /// The pod's record, after checking that its VM still runs.
    pub async fn pod_status(&self, wanted: &str) -> Result<PodRecord, RuntimeError> {
        let pod = self.pod(wanted)?;
        self.check_vm(&pod).await;
        Ok(pod.record())
    }
}

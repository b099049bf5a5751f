//! StartContainer: start a created container and follow its output into its log file.

use std::sync::Arc;

use super::open_log;
use crate::logformat::now_ns;
use crate::runtime::{error_chain, lock, pod_not_ready, Runtime, RuntimeError};
use crate::state::ContainerPhase;

impl Runtime {
    /// Starts a created container and follows its output into its log file.
    pub async fn start_container(self: &Arc<Self>, wanted: &str) -> Result<(), RuntimeError> {
        let container = self.container(wanted)?;
        let record = container.record();
        if record.phase != ContainerPhase::Created {
            return Err(RuntimeError::FailedPrecondition(format!(
                "the container {} is {:?}, not Created",
                container.id, record.phase
            )));
        }
        let pod = self.pod(&record.pod_id)?;
        let log = open_log(&record.log_path)?;
        let started = {
            let slot = pod.sandbox.read().await;
            match slot.as_ref() {
                Some(sandbox) => sandbox
                    .start_container(&container.id)
                    .await
                    .map_err(RuntimeError::from),
                None => Err(pod_not_ready(&pod.id)),
            }
        };
        if let Err(e) = started {
            self.update_container(&container, |c| {
                c.phase = ContainerPhase::Exited;
                c.finished_at_ns = now_ns();
                c.exit_code = 128;
                c.reason = "StartError".into();
                c.message = error_chain(&e);
            })?;
            return Err(e);
        }
        *lock(&container.log) = log;
        self.update_container(&container, |c| {
            c.phase = ContainerPhase::Running;
            c.started_at_ns = now_ns();
        })?;
        tracing::info!(container = %container.id, "container started");
        self.spawn_follower(container, record.pod_id);
        Ok(())
    }
}

//! StopContainer: SIGTERM, then SIGKILL after the grace period; and how a container's
//! process ended, recorded once whoever saw it first.

use std::time::Duration;

use vpod_sandbox::ContainerExit;

use crate::logformat::now_ns;
use crate::runtime::{lock, Container, Runtime, RuntimeError};
use crate::state::ContainerPhase;

impl Runtime {
    /// SIGTERM, then SIGKILL after `grace`; a container not running is not an error.
    pub async fn stop_container(&self, wanted: &str, grace: Duration) -> Result<(), RuntimeError> {
        let container = self.container(wanted)?;
        let record = container.record();
        if record.phase != ContainerPhase::Running {
            return Ok(());
        }
        let pod = self.pod(&record.pod_id)?;
        let exit = {
            let slot = pod.sandbox.read().await;
            match slot.as_ref() {
                Some(sandbox) => Some(sandbox.stop_container(&container.id, grace).await),
                None => None,
            }
        };
        match exit {
            Some(Ok(exit)) => {
                self.record_exit(&container, &exit, "")?;
            }
            Some(Err(e)) => {
                // The VM may have died under us; the status calls report that.
                drop(pod);
                return Err(e.into());
            }
            None => {}
        }
        // Let the follower write the last of the output.
        let follower = lock(&container.follower).take();
        if let Some(mut task) = follower {
            if tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        *lock(&container.log) = None;
        Ok(())
    }

    /// Records how the container's process ended (once): its reason is `OOMKilled` when the
    /// guest's OOM killer struck in it (as containerd's CRI plugin says it), else
    /// `Completed` or `Error` by its exit code.
    pub(in crate::runtime) fn record_exit(
        &self,
        container: &Container,
        exit: &ContainerExit,
        message: &str,
    ) -> Result<(), RuntimeError> {
        let code = exit.code;
        if container.record().phase == ContainerPhase::Exited {
            return Ok(());
        }
        self.update_container(container, |c| {
            c.phase = ContainerPhase::Exited;
            c.finished_at_ns = now_ns();
            c.exit_code = code;
            c.reason = if exit.oom_killed() {
                "OOMKilled"
            } else if code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .into();
            c.message = message.to_string();
        })?;
        tracing::info!(container = %container.id, exit_code = code, oom_kills = exit.oom_kills, "container exited");
        Ok(())
    }
}

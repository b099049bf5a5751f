//! ExecSync: run a command in a running container and collect its output.

use std::time::Duration;

use crate::runtime::{pod_not_ready, Runtime, RuntimeError};

/// What ExecSync gives back.
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// The CRI caps each of ExecSync's outputs at 16 MiB.
const EXEC_OUTPUT_CAP: usize = 16 << 20;

impl Runtime {
    /// Runs `cmd` in the running container; `timeout` zero waits forever.
    pub async fn exec_sync(
        &self,
        wanted: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let (container, record) = self.running_container(wanted)?;
        let pod = self.pod(&record.pod_id)?;
        let slot = pod.sandbox.read().await;
        let Some(sandbox) = slot.as_ref() else {
            return Err(pod_not_ready(&pod.id));
        };
        let reply = sandbox.exec_sync(&container.id, cmd, timeout).await?;
        if reply.timed_out {
            return Err(RuntimeError::DeadlineExceeded(format!(
                "the command timed out after {timeout:?} and was killed"
            )));
        }
        let cap = |mut bytes: Vec<u8>| {
            bytes.truncate(EXEC_OUTPUT_CAP);
            bytes
        };
        Ok(ExecOutput {
            stdout: cap(reply.stdout),
            stderr: cap(reply.stderr),
            exit_code: reply.exit_code,
        })
    }
}

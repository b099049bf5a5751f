//! Kill: a signal to a process in the guest. The sandbox task runs nothing, so a signal
//! that would end a process ends it (its VM stays until the task is deleted). An exec
//! process gets the signal through its stream; SIGKILL (and any signal, with an agent older
//! than protocol minor 9) ends the stream instead, which SIGKILLs the exec's whole process
//! group in the guest and does not wait behind stdin the process has not read.

use std::time::Duration;

use containerd_shim_protos::ttrpc::Code;
use vpod_proto::v1::{exec_input, ExecInput};
use vpod_sandbox::Sandbox;

use super::{error, not_found, Service, TtrpcResult};
use crate::bundle::Role;
use crate::task::create::sandbox_error;

/// How long a signal waits to be queued on an exec's stream, behind stdin its process has
/// not read.
const SIGNAL_QUEUE_LIMIT: Duration = Duration::from_secs(5);

impl Service {
    pub(super) async fn kill_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        _all: bool,
    ) -> TtrpcResult<()> {
        let signal = i32::try_from(signal)
            .ok()
            .filter(|s| (0..=64).contains(s))
            .ok_or_else(|| error(Code::INVALID_ARGUMENT, format!("no signal {signal}")))?;
        let (role, started, exited) = self.with_task(id, |t| {
            let process = if exec_id.is_empty() {
                &t.main
            } else {
                t.execs
                    .get(exec_id)
                    .ok_or_else(|| not_found(format!("exec {exec_id} not found")))?
            };
            Ok((
                t.role.clone(),
                process.started,
                process.exit_status().is_some(),
            ))
        })?;
        // containerd's own shims answer so; its clients take it as "already gone".
        if exited {
            return Err(not_found("process already finished"));
        }
        if signal == 0 {
            return Ok(());
        }
        let code = 128 + signal as u32;
        if !exec_id.is_empty() {
            let minor = self
                .shared
                .pod
                .read()
                .await
                .as_ref()
                .map_or(0, Sandbox::agent_minor);
            let input = self.with_process(id, exec_id, |p| Ok(p.input.clone()))?;
            let by_stream = signal != libc::SIGKILL && minor >= vpod_proto::EXEC_SIGNAL_MINOR;
            if let Some(input) = input.filter(|_| by_stream) {
                let message = ExecInput {
                    input: Some(exec_input::Input::Signal(signal)),
                };
                match tokio::time::timeout(SIGNAL_QUEUE_LIMIT, input.send(message)).await {
                    // Its exit, if it ends, comes on the stream.
                    Ok(Ok(())) => return Ok(()),
                    // The stream is gone: ended below.
                    Ok(Err(_)) => {}
                    Err(_) => {
                        return Err(error(
                            Code::DEADLINE_EXCEEDED,
                            format!(
                                "exec {exec_id}'s input is backed up (its process reads no stdin): \
                                 signal {signal} was not delivered; SIGKILL ends it"
                            ),
                        ))
                    }
                }
            }
            self.with_process(id, exec_id, |p| {
                p.abort_tasks();
                Ok(())
            })?;
            self.process_exited(id, exec_id, code).await;
            return Ok(());
        }
        if role == Role::Sandbox || !started {
            self.process_exited(id, "", code).await;
            return Ok(());
        }
        let pod = self.shared.pod.read().await;
        let sandbox = pod
            .as_ref()
            .ok_or_else(|| not_found("process already finished"))?;
        sandbox
            .signal(id, signal)
            .await
            .map_err(|e| sandbox_error("signalling the container", &e))
    }
}

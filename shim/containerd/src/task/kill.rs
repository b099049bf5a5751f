//! Kill: a signal to a process in the guest. The sandbox task runs nothing, so a signal
//! that would end a process ends it (its VM stays until the task is deleted); an exec
//! process gets the signal through its stream (an agent older than protocol minor 9 has
//! its stream ended instead, which SIGKILLs its process group in the guest).

use containerd_shim_protos::ttrpc::Code;
use vpod_proto::v1::{exec_input, ExecInput};
use vpod_sandbox::Sandbox;

use super::{error, not_found, Service, TtrpcResult};
use crate::bundle::Role;
use crate::task::create::sandbox_error;

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
            if let Some(input) = input.filter(|_| minor >= vpod_proto::EXEC_SIGNAL_MINOR) {
                let message = ExecInput {
                    input: Some(exec_input::Input::Signal(signal)),
                };
                if input.send(message).await.is_ok() {
                    // Its exit, if it ends, comes on the stream.
                    return Ok(());
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

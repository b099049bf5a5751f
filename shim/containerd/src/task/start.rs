//! Start: the container's process in the guest, with its output copied to the stdout and
//! stderr FIFOs, its stdin from the stdin FIFO, and its exit reported (TaskExit) once its
//! output is out, after a TaskOOM when the guest's OOM killer struck in its cgroup (what
//! containerd's CRI plugin reports as the reason `OOMKilled`). The sandbox task starts
//! nothing: its VM is already up.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use containerd_shim_protos::events::task::{TaskExit, TaskOOM, TaskStart};
use containerd_shim_protos::ttrpc::Code;
use vpod_proto::v1::{
    wait_container_response, CloseStdinRequest, WaitContainerRequest, WriteStdinRequest,
};
use vpod_sandbox::OutputStream;

use super::io::{InputFifo, OutputFifos};
use super::{error, internal, timestamp, Service, TtrpcResult};
use crate::bundle::Role;
use crate::task::create::sandbox_error;

/// How long a process's exit waits for the rest of its output.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// How often the VM is checked for an unexpected end.
const VM_POLL: Duration = Duration::from_millis(500);
/// The status of processes whose VM ended under them (as if SIGKILLed).
const VM_GONE: u32 = 137;

impl Service {
    pub(super) async fn start_task(&self, id: &str) -> TtrpcResult<u32> {
        let (role, stdio, started) = self.with_task(id, |t| {
            Ok((t.role.clone(), t.main.stdio.clone(), t.main.started))
        })?;
        if started {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("task {id} was started already"),
            ));
        }
        let pid = self.vmm_pid().await;
        if role == Role::Sandbox {
            self.with_task(id, |t| {
                t.main.started = true;
                Ok(())
            })?;
            self.publish(TaskStart {
                container_id: id.to_owned(),
                pid,
                ..Default::default()
            })
            .await;
            return Ok(pid);
        }
        let mut fifos =
            OutputFifos::open(&stdio).map_err(|e| internal("opening the output FIFOs", &e))?;
        let input =
            InputFifo::open(&stdio.stdin).map_err(|e| internal("opening the stdin FIFO", &e))?;
        let (mut output, agent) = {
            let pod = self.shared.pod.read().await;
            let sandbox = pod
                .as_ref()
                .ok_or_else(|| error(Code::FAILED_PRECONDITION, "the pod's VM is gone"))?;
            let output = sandbox
                .stdio(id)
                .await
                .map_err(|e| sandbox_error("opening the container's output", &e))?;
            sandbox
                .start_container(id)
                .await
                .map_err(|e| sandbox_error("starting the container", &e))?;
            (output, sandbox.agent_client())
        };

        let copy_out = tokio::spawn(async move {
            while let Ok(Some(chunk)) = output.next_chunk().await {
                fifos
                    .write(chunk.stream == OutputStream::Stderr, &chunk.data)
                    .await;
            }
        });
        let mut handles = Vec::new();
        let mut close_stdin = None;
        if let Some(input) = input {
            let (closed_tx, closed) = oneshot::channel();
            close_stdin = Some(closed_tx);
            let (to, mut from) = mpsc::channel::<Option<Vec<u8>>>(4);
            handles.push(tokio::spawn(input.copy(closed, to, |data| data)).abort_handle());
            let mut agent = agent.clone();
            let container_id = id.to_owned();
            handles.push(
                tokio::spawn(async move {
                    while let Some(Some(data)) = from.recv().await {
                        let request = WriteStdinRequest {
                            container_id: container_id.clone(),
                            data,
                        };
                        if agent.write_stdin(request).await.is_err() {
                            return;
                        }
                    }
                    let _ = agent.close_stdin(CloseStdinRequest { container_id }).await;
                })
                .abort_handle(),
            );
        }
        let service = self.clone();
        let container_id = id.to_owned();
        let mut waiter_agent = agent;
        let waiter = tokio::spawn(async move {
            let request = WaitContainerRequest {
                id: container_id.clone(),
            };
            let (code, oom_kills) = match waiter_agent.wait_container(request).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    let code = match reply.status {
                        Some(wait_container_response::Status::ExitCode(code)) => code as u32,
                        Some(wait_container_response::Status::Signal(signal)) => {
                            128 + signal as u32
                        }
                        None => 255,
                    };
                    (code, reply.oom_kills)
                }
                Err(status) => {
                    log::warn!("waiting for {container_id}: {status}");
                    (VM_GONE, 0)
                }
            };
            if oom_kills > 0 {
                service
                    .publish(TaskOOM {
                        container_id: container_id.clone(),
                        ..Default::default()
                    })
                    .await;
            }
            let _ = tokio::time::timeout(OUTPUT_DRAIN, copy_out).await;
            service.process_exited(&container_id, "", code).await;
        });
        handles.push(waiter.abort_handle());
        self.with_task(id, |t| {
            t.main.started = true;
            t.main.pid = pid;
            t.main.tasks.extend(handles);
            t.main.close_stdin = close_stdin;
            Ok(())
        })?;
        self.publish(TaskStart {
            container_id: id.to_owned(),
            pid,
            ..Default::default()
        })
        .await;
        Ok(pid)
    }

    /// Records the end of process `exec_id` of task `id` (its main process when empty) and
    /// tells containerd, once.
    pub(super) async fn process_exited(&self, id: &str, exec_id: &str, code: u32) {
        let recorded = self.with_process(id, exec_id, |p| {
            Ok(p.set_exited(code).then(|| (p.pid, p.exit_status())))
        });
        let Ok(Some((pid, Some(exit)))) = recorded else {
            return;
        };
        self.publish(TaskExit {
            container_id: id.to_owned(),
            id: if exec_id.is_empty() { id } else { exec_id }.to_owned(),
            pid,
            exit_status: exit.code,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
        .await;
    }

    /// Watches the pod's VM: if it ends while the pod runs, every process in it has ended.
    pub(super) fn watch_vm(&self) {
        let service = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(VM_POLL).await;
                let running = match service.shared.pod.read().await.as_ref() {
                    Some(sandbox) => sandbox.vmm_running(),
                    None => return,
                };
                if running {
                    continue;
                }
                log::warn!("the pod's VM ended");
                let processes: Vec<(String, String)> = {
                    let tasks = service
                        .shared
                        .tasks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    tasks
                        .iter()
                        .flat_map(|(id, t)| {
                            std::iter::once((id.clone(), String::new()))
                                .chain(t.execs.keys().map(|e| (id.clone(), e.clone())))
                        })
                        .collect()
                };
                for (id, exec_id) in processes {
                    service.process_exited(&id, &exec_id, VM_GONE).await;
                }
                return;
            }
        });
    }
}

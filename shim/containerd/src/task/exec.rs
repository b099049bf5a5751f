//! Exec processes (the agent's streaming exec: stdin, output, terminal size and exit on one
//! stream), and the stdio verbs of any process: ResizePty and CloseIO.

use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{TaskExecAdded, TaskExecStarted};
use containerd_shim_protos::ttrpc::Code;
use oci_spec::runtime::Process as OciProcess;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use vpod_proto::v1::{
    attach_input, exec_input, process_output, AttachInput, AttachStart, Eof, ExecInput, ExecStart,
    TerminalSize,
};

use super::io::{InputFifo, OutputFifos, StdioPaths};
use super::process::{ExecSpec, Process};
use super::{error, internal, not_found, timestamp, Service, TtrpcResult};

impl Service {
    pub(super) async fn add_exec(&self, req: api::ExecProcessRequest) -> TtrpcResult<()> {
        let value = req
            .spec
            .as_ref()
            .map(|any| any.value.as_slice())
            .unwrap_or(&[]);
        let process: OciProcess = serde_json::from_slice(value).map_err(|e| {
            error(
                Code::INVALID_ARGUMENT,
                format!("the exec's process spec is not valid: {e}"),
            )
        })?;
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(error(
                Code::INVALID_ARGUMENT,
                "the exec's process has no arguments",
            ));
        }
        let spec = ExecSpec {
            args,
            env: process.env().clone().unwrap_or_default(),
            cwd: process.cwd().to_string_lossy().into_owned(),
        };
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.with_task(&req.id, |task| {
            if task.main.exit_status().is_some() {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("task {} has stopped", req.id),
                ));
            }
            if task.execs.contains_key(&req.exec_id) {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            task.execs
                .insert(req.exec_id.clone(), Process::new(stdio, Some(spec)));
            Ok(())
        })?;
        self.publish(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
        .await;
        Ok(())
    }

    pub(super) async fn start_exec(&self, id: &str, exec_id: &str) -> TtrpcResult<u32> {
        let (stdio, spec) = self.with_process(id, exec_id, |p| {
            if p.started {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("exec {exec_id} was started already"),
                ));
            }
            Ok((p.stdio.clone(), p.exec.clone().unwrap_or_default()))
        })?;
        let mut fifos =
            OutputFifos::open(&stdio).map_err(|e| internal("opening the output FIFOs", &e))?;
        let input =
            InputFifo::open(&stdio.stdin).map_err(|e| internal("opening the stdin FIFO", &e))?;
        let (mut agent, pid) = {
            let pod = self.shared.pod.read().await;
            let sandbox = pod
                .as_ref()
                .ok_or_else(|| error(Code::FAILED_PRECONDITION, "the pod's VM is gone"))?;
            (sandbox.agent_client(), sandbox.vmm_pid())
        };
        let (tx, rx) = mpsc::channel::<ExecInput>(16);
        let start = ExecStart {
            container_id: id.to_owned(),
            args: spec.args,
            env: spec.env,
            cwd: spec.cwd,
            tty: stdio.terminal,
            stdin: input.is_some(),
            terminal_size: None,
        };
        tx.send(exec_message(exec_input::Input::Start(start)))
            .await
            .map_err(|_| error(Code::INTERNAL, "the exec stream closed"))?;
        let mut output = agent
            .exec(ReceiverStream::new(rx))
            .await
            .map_err(|status| error(Code::INTERNAL, format!("starting the exec: {status}")))?
            .into_inner();
        match output.message().await {
            Ok(Some(first)) if matches!(first.output, Some(process_output::Output::Started(_))) => {
            }
            Ok(other) => {
                return Err(error(
                    Code::INTERNAL,
                    format!("the agent did not start the exec: {other:?}"),
                ))
            }
            Err(status) => {
                let code = match status.code() {
                    tonic::Code::NotFound => Code::NOT_FOUND,
                    tonic::Code::InvalidArgument => Code::INVALID_ARGUMENT,
                    tonic::Code::FailedPrecondition => Code::FAILED_PRECONDITION,
                    _ => Code::INTERNAL,
                };
                return Err(error(
                    code,
                    format!("starting the exec: {}", status.message()),
                ));
            }
        }

        let mut handles = Vec::new();
        let service = self.clone();
        let (task_id, process_id) = (id.to_owned(), exec_id.to_owned());
        handles.push(
            tokio::spawn(async move {
                let mut code = 255;
                while let Ok(Some(message)) = output.message().await {
                    match message.output {
                        Some(process_output::Output::Stdout(data)) => {
                            fifos.write(false, &data).await
                        }
                        Some(process_output::Output::Stderr(data)) => {
                            fifos.write(true, &data).await
                        }
                        Some(process_output::Output::Exit(exit)) => code = exit.exit_code as u32,
                        _ => {}
                    }
                }
                drop(fifos);
                service.process_exited(&task_id, &process_id, code).await;
            })
            .abort_handle(),
        );
        let mut close_stdin = None;
        if let Some(input) = input {
            let (closed_tx, closed) = oneshot::channel();
            close_stdin = Some(closed_tx);
            handles
                .push(tokio::spawn(input.copy(closed, tx.clone(), stdin_message)).abort_handle());
        }
        self.with_process(id, exec_id, |p| {
            p.started = true;
            p.pid = pid;
            p.input = Some(tx);
            p.close_stdin = close_stdin;
            p.tasks.extend(handles);
            Ok(())
        })?;
        self.publish(TaskExecStarted {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            pid,
            ..Default::default()
        })
        .await;
        Ok(pid)
    }

    pub(super) fn delete_exec(&self, id: &str, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
        self.with_task(id, |task| {
            let exec = task
                .execs
                .get(exec_id)
                .ok_or_else(|| not_found(format!("exec {exec_id} not found")))?;
            if exec.started && exec.exit_status().is_none() {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("exec {exec_id} is still running"),
                ));
            }
            let exec = task.execs.remove(exec_id).expect("checked above");
            let exit = exec.exit_status();
            Ok(api::DeleteResponse {
                pid: exec.pid,
                exit_status: exit.map_or(0, |e| e.code),
                exited_at: exit.map_or_else(Default::default, |e| timestamp(e.at)),
                ..Default::default()
            })
        })
    }

    pub(super) async fn resize(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> TtrpcResult<()> {
        let size = TerminalSize { width, height };
        if !exec_id.is_empty() {
            let input = self.with_process(id, exec_id, |p| Ok(p.input.clone()))?;
            if let Some(input) = input {
                let _ = input
                    .send(exec_message(exec_input::Input::Resize(size)))
                    .await;
            }
            return Ok(());
        }
        // The main process's terminal is resized through a short attach.
        let mut agent = {
            let pod = self.shared.pod.read().await;
            pod.as_ref()
                .ok_or_else(|| error(Code::FAILED_PRECONDITION, "the pod's VM is gone"))?
                .agent_client()
        };
        let messages = [
            attach_input::Input::Start(AttachStart {
                container_id: id.to_owned(),
                stdin: false,
            }),
            attach_input::Input::Resize(size),
        ]
        .map(|input| AttachInput { input: Some(input) });
        agent
            .attach(tokio_stream::iter(messages))
            .await
            .map(drop)
            .map_err(|status| error(Code::INTERNAL, format!("resizing the terminal: {status}")))
    }

    pub(super) async fn close_stdin(&self, id: &str, exec_id: &str) -> TtrpcResult<()> {
        let close = self.with_process(id, exec_id, |p| Ok(p.close_stdin.take()))?;
        if let Some(close) = close {
            let _ = close.send(());
        }
        Ok(())
    }
}

fn exec_message(input: exec_input::Input) -> ExecInput {
    ExecInput { input: Some(input) }
}

fn stdin_message(data: Option<Vec<u8>>) -> ExecInput {
    exec_message(match data {
        Some(data) => exec_input::Input::Stdin(data),
        None => exec_input::Input::CloseStdin(Eof {}),
    })
}

//! containerd's Task service (shim API v2) for one pod: one shim process per pod, holding
//! the pod's VM ([`Sandbox`]) and its tasks. Each RPC is a thin handler in the file of its
//! verb; the state they share is here.
//!
//! - The CRI sandbox (pause) task boots the VM and runs nothing in it: its pid is the
//!   VMM's, and it exits when killed or when the VM ends.
//! - A container task of the pod is created in the VM by the agent; a task without a pod
//!   (plain `ctr run`) boots a VM of its own first.
//! - Exec processes run through the agent's streaming exec.

mod create;
mod delete;
mod exec;
pub mod io;
mod kill;
mod process;
mod start;
mod stats;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::event::Event;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::TtrpcContext;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::{self, context::Context, Code};
use containerd_shim_protos::types::task::Status;
use tokio::sync::{watch, RwLock};
use vpod_cri::config::Config;
use vpod_sandbox::Sandbox;

use crate::bundle::Role;
pub use create::SANDBOX_MARKER;
use process::Exited;

type TtrpcResult<T> = ttrpc::Result<T>;

/// The shim's task service: the pod and its tasks.
#[derive(Clone)]
pub struct Service {
    shared: Arc<Shared>,
}

struct Shared {
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    config: Config,
    /// Where this namespace's pods live.
    state_dir: PathBuf,
    /// The pod's VM once its first task booted it. Creating and removing containers
    /// write; everything else reads, briefly: nothing waits on a process while holding it.
    pod: RwLock<Option<Sandbox>>,
    /// The pod's cgroup on the host, where its VMM runs ([`crate::cgroup`]).
    pod_cgroup: Mutex<Option<PathBuf>>,
    tasks: Mutex<HashMap<String, TaskRecord>>,
}

/// One task: a container and its exec processes.
struct TaskRecord {
    bundle: String,
    role: Role,
    /// The sandbox id of the VM it runs in.
    sandbox_id: String,
    main: process::Process,
    execs: HashMap<String, process::Process>,
}

impl Shared {
    fn pod_cgroup(&self) -> std::sync::MutexGuard<'_, Option<PathBuf>> {
        self.pod_cgroup.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Service {
    pub fn new(
        namespace: String,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
        config: Config,
    ) -> Service {
        let state_dir = crate::settings::state_dir(&config, &namespace);
        Service {
            shared: Arc::new(Shared {
                namespace,
                publisher,
                exit,
                config,
                state_dir,
                pod: RwLock::new(None),
                pod_cgroup: Mutex::new(None),
                tasks: Mutex::new(HashMap::new()),
            }),
        }
    }

    async fn publish(&self, event: impl Event + 'static) {
        let topic = event.topic();
        if let Err(e) = self
            .shared
            .publisher
            .publish(
                Context::default(),
                &topic,
                &self.shared.namespace,
                Box::new(event),
            )
            .await
        {
            log::warn!("publishing {topic}: {e}");
        }
    }

    /// Runs `f` on the record of task `id`.
    fn with_task<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut TaskRecord) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        let mut tasks = self.shared.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let task = tasks
            .get_mut(id)
            .ok_or_else(|| not_found(format!("task {id} not found")))?;
        f(task)
    }

    /// Runs `f` on process `exec_id` of task `id` (its main process when empty).
    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut process::Process) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        self.with_task(id, |task| {
            if exec_id.is_empty() {
                f(&mut task.main)
            } else {
                let exec = task
                    .execs
                    .get_mut(exec_id)
                    .ok_or_else(|| not_found(format!("exec {exec_id} of task {id} not found")))?;
                f(exec)
            }
        })
    }

    fn exit_watch(&self, id: &str, exec_id: &str) -> TtrpcResult<watch::Receiver<Option<Exited>>> {
        self.with_process(id, exec_id, |p| Ok(p.exited.subscribe()))
    }
}

pub(crate) fn error(code: Code, message: impl Into<String>) -> ttrpc::Error {
    let message = message.into();
    log::warn!("{message}");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

pub(crate) fn not_found(message: impl Into<String>) -> ttrpc::Error {
    error(Code::NOT_FOUND, message)
}

pub(crate) fn internal(what: &str, e: &dyn std::error::Error) -> ttrpc::Error {
    error(
        Code::INTERNAL,
        format!("{what}: {}", vpod_proto::error_chain(e)),
    )
}

pub(crate) fn timestamp(at: std::time::SystemTime) -> MessageField<Timestamp> {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    MessageField::some(Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
        ..Default::default()
    })
}

#[async_trait]
impl Task for Service {
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        self.with_task(&req.id, |task| {
            let bundle = task.bundle.clone();
            let process = if req.exec_id.is_empty() {
                &task.main
            } else {
                task.execs
                    .get(&req.exec_id)
                    .ok_or_else(|| not_found(format!("exec {} not found", req.exec_id)))?
            };
            Ok(process.state(&req.id, &req.exec_id, bundle))
        })
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        self.create_task(req).await
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = if req.exec_id.is_empty() {
            self.start_task(&req.id).await?
        } else {
            self.start_exec(&req.id, &req.exec_id).await?
        };
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if req.exec_id.is_empty() {
            self.delete_task(&req.id).await
        } else {
            self.delete_exec(&req.id, &req.exec_id)
        }
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        self.with_task(&req.id, |task| {
            let processes = std::iter::once(&task.main)
                .chain(task.execs.values())
                .filter(|p| p.pid != 0 && p.status() == Status::RUNNING)
                .map(|p| containerd_shim_protos::types::task::ProcessInfo {
                    pid: p.pid,
                    ..Default::default()
                })
                .collect();
            Ok(api::PidsResponse {
                processes,
                ..Default::default()
            })
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        self.kill_process(&req.id, &req.exec_id, req.signal, req.all)
            .await?;
        Ok(api::Empty::default())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        self.add_exec(req).await?;
        Ok(api::Empty::default())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        self.resize(&req.id, &req.exec_id, req.width, req.height)
            .await?;
        Ok(api::Empty::default())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        if req.stdin {
            self.close_stdin(&req.id, &req.exec_id).await?;
        }
        Ok(api::Empty::default())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut exited = self.exit_watch(&req.id, &req.exec_id)?;
        let exit = loop {
            if let Some(exit) = *exited.borrow_and_update() {
                break exit;
            }
            if exited.changed().await.is_err() {
                return Err(not_found(format!("task {} was deleted", req.id)));
            }
        };
        Ok(api::WaitResponse {
            exit_status: exit.code,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        self.task_stats(&req.id).await
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        self.update_task(req).await?;
        Ok(api::Empty::default())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.with_task(&req.id, |task| Ok(task.main.pid))?;
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        let empty = self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if empty {
            log::info!("no tasks left: the shim ends");
            self.shared.exit.signal();
        }
        Ok(api::Empty::default())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(error(
            Code::UNIMPLEMENTED,
            "pausing a task is not implemented by vpod",
        ))
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(error(
            Code::UNIMPLEMENTED,
            "resuming a task is not implemented by vpod",
        ))
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(error(
            Code::UNIMPLEMENTED,
            "checkpointing a task is not implemented by vpod",
        ))
    }
}

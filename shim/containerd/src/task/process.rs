//! A process of a task (its main process or an exec) as containerd sees it: created,
//! running with a pid, or stopped with an exit status.

use std::time::SystemTime;

use containerd_shim_protos::api;
use containerd_shim_protos::types::task::Status;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use vpod_proto::v1::ExecInput;

use super::io::StdioPaths;

/// How and when a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited {
    /// The exit code, or 128 + the signal.
    pub code: u32,
    pub at: SystemTime,
}

/// What an exec runs (from the OCI process of ExecProcessRequest).
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
}

pub struct Process {
    /// Its pid: the guest's for a process in the VM, the VMM's for a pod's sandbox task.
    pub pid: u32,
    pub stdio: StdioPaths,
    pub started: bool,
    pub exited: watch::Sender<Option<Exited>>,
    /// An exec's command; `None` for a task's main process.
    pub exec: Option<ExecSpec>,
    /// An exec's input to the agent's stream (stdin, resizes, the end of stdin).
    pub input: Option<mpsc::Sender<ExecInput>>,
    /// Tells the stdin copy that containerd closed stdin (CloseIO).
    pub close_stdin: Option<oneshot::Sender<()>>,
    /// The copies this process keeps running (its exec stream, its stdin copy): aborted
    /// when it is killed or deleted.
    pub tasks: Vec<AbortHandle>,
}

impl Process {
    pub fn new(stdio: StdioPaths, exec: Option<ExecSpec>) -> Process {
        Process {
            pid: 0,
            stdio,
            started: false,
            exited: watch::channel(None).0,
            exec,
            input: None,
            close_stdin: None,
            tasks: Vec::new(),
        }
    }

    pub fn exit_status(&self) -> Option<Exited> {
        *self.exited.borrow()
    }

    pub fn status(&self) -> Status {
        if self.exit_status().is_some() {
            Status::STOPPED
        } else if self.started {
            Status::RUNNING
        } else {
            Status::CREATED
        }
    }

    /// Records the exit; false if it was recorded already.
    pub fn set_exited(&self, code: u32) -> bool {
        self.exited.send_if_modified(|exit| {
            if exit.is_some() {
                return false;
            }
            *exit = Some(Exited {
                code,
                at: SystemTime::now(),
            });
            true
        })
    }

    pub fn state(&self, id: &str, exec_id: &str, bundle: String) -> api::StateResponse {
        let exit = self.exit_status();
        api::StateResponse {
            id: id.to_owned(),
            bundle,
            pid: self.pid,
            status: self.status().into(),
            stdin: self.stdio.stdin.clone(),
            stdout: self.stdio.stdout.clone(),
            stderr: self.stdio.stderr.clone(),
            terminal: self.stdio.terminal,
            exit_status: exit.map_or(0, |e| e.code),
            exited_at: exit.map_or_else(Default::default, |e| super::timestamp(e.at)),
            exec_id: exec_id.to_owned(),
            ..Default::default()
        }
    }

    pub fn abort_tasks(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.input = None;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.abort_tasks();
    }
}

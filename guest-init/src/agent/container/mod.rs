//! The containers of this guest and their lifecycle, one file per verb.

mod attach;
mod create;
mod exec;
mod exec_stream;
mod remove;
mod signal;
mod start;

pub use attach::{AttachRequest, AttachSession};
pub use exec::{ExecOutput, ExecRequest};
pub use exec_stream::{ExecSession, ExecStreamRequest};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::cgroup::{CgroupError, Cgroups};
use super::in_root::InRootError;
use super::process_io::StdinWriter;
use super::pty::PtyMaster;
use super::reaper::{ExitStatus, Reaper};
use super::rootfs::{DiskMounts, MountOps, PreparedRootfs, RootfsError, RootfsPaths};
use super::setup::SetupError;
use super::spawn::SpawnError;
use super::spec::ContainerSpec;
use super::stdio::StdioBuffer;
use super::users::UserError;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no container has the id {0:?}")]
    NotFound(String),
    #[error("a container with the id {0:?} exists already")]
    AlreadyExists(String),
    #[error("container {id:?} is {state}; this needs it {wanted}")]
    WrongState {
        id: String,
        state: &'static str,
        wanted: &'static str,
    },
    #[error("the root filesystem of container {0:?} could not be prepared or released")]
    Rootfs(String, #[source] RootfsError),
    #[error("the files of container {0:?} could not be written into its root")]
    Files(String, #[source] InRootError),
    #[error("the user of container {0:?} could not be resolved")]
    User(String, #[source] UserError),
    #[error("the cgroup of container {0:?} could not be set up, read or removed")]
    Cgroup(String, #[source] CgroupError),
    #[error("container {0:?} has no cgroup (cgroup2 is not available)")]
    NoCgroup(String),
    #[error("the request for container {0:?} is not usable")]
    Setup(String, #[source] SetupError),
    #[error("a process of container {0:?} could not be started")]
    Spawn(String, #[source] SpawnError),
    #[error("could not signal container {0:?}")]
    Signal(String, #[source] std::io::Error),
    #[error("container {0:?} has no stdin pipe, or it was closed")]
    NoStdin(String),
    #[error("could not write to the stdin of container {0:?}")]
    Stdin(String, #[source] std::io::Error),
    #[error("the terminal of a process of container {0:?} could not be set up")]
    Terminal(String, #[source] super::pty::PtyError),
    #[error("a block device of container {0:?} could not be prepared")]
    BlockDevice(
        String,
        #[source] crate::agent::block_device::BlockDeviceError,
    ),
    #[error("a volume of container {0:?} cannot be bound")]
    Share(String, #[source] crate::agent::share::ShareError),
    #[error("a background task of the agent failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Created,
    Starting,
    Running {
        pid: libc::pid_t,
        started_at_ns: i64,
    },
    Exited {
        status: ExitStatus,
        started_at_ns: i64,
        finished_at_ns: i64,
    },
}

impl Phase {
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Created => "created",
            Phase::Starting => "starting",
            Phase::Running { .. } => "running",
            Phase::Exited { .. } => "exited",
        }
    }
}

pub struct Container {
    pub spec: ContainerSpec,
    rootfs: PreparedRootfs,
    cgroup: Option<PathBuf>,
    phase: watch::Sender<Phase>,
    pub stdio: Arc<StdioBuffer>,
    stdin: tokio::sync::Mutex<Option<StdinWriter>>,
    /// The main process's terminal, once it started with one.
    terminal: std::sync::OnceLock<Arc<PtyMaster>>,
}

impl Container {
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    fn running_pid(&self, wanted: &'static str) -> Result<libc::pid_t, ContainerError> {
        match self.phase() {
            Phase::Running { pid, .. } => Ok(pid),
            other => Err(ContainerError::WrongState {
                id: self.spec.id.clone(),
                state: other.name(),
                wanted,
            }),
        }
    }
}

/// The mounts the agent made, and the calls that make them.
pub struct MountState {
    pub ops: Box<dyn MountOps>,
    pub disks: DiskMounts,
}

/// Every container in this guest.
pub struct ContainerManager {
    paths: RootfsPaths,
    cgroups: Cgroups,
    reaper: Arc<Reaper>,
    mounts: Mutex<MountState>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Ids being created (locked after `containers` when both are needed).
    reserved: Mutex<HashSet<String>>,
    /// The pod's shared PID namespace, made when the first container asks for it.
    pod_pid: Arc<Mutex<Option<crate::agent::spawn_pod::PodPidNamespace>>>,
}

impl ContainerManager {
    pub fn new(
        paths: RootfsPaths,
        cgroups: Cgroups,
        reaper: Arc<Reaper>,
        ops: Box<dyn MountOps>,
    ) -> Self {
        ContainerManager {
            paths,
            cgroups,
            reaper,
            mounts: Mutex::new(MountState {
                ops,
                disks: DiskMounts::default(),
            }),
            containers: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashSet::new()),
            pod_pid: Arc::new(Mutex::new(None)),
        }
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reserved(&self) -> MutexGuard<'_, HashSet<String>> {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mount_state(&self) -> MutexGuard<'_, MountState> {
        self.mounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        self.table()
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    /// Ids of every container, for shutdown.
    pub fn ids(&self) -> Vec<String> {
        self.table().keys().cloned().collect()
    }
}

/// Wall-clock nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

//! The runtime's domain: pods (one micro-VM each) and their containers, their records, and
//! the tasks that follow containers' output into log files. The gRPC layer
//! ([`crate::server`]) only converts types and calls these functions.
//!
//! Locking: the pod and container maps are short std mutexes; each pod's [`Sandbox`] sits
//! in a tokio `RwLock`, read for calls that do not change the sandbox (start, exec, stats)
//! and written for create, remove and stop. Long waits (a container's output and exit) use
//! their own connection to the agent ([`Sandbox::open`]) and hold no lock.

mod container;
mod events;
mod follow;
mod pod;
mod recover;
mod stats;
mod streaming;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::sync::RwLock;
use vpod_image::registry::RegistryOptions;
use vpod_image::{LayerLimits, LayerStore, LayerStoreError, LayerStoreOptions};
pub use vpod_proto::error_chain;
use vpod_sandbox::{Sandbox, SandboxError};

pub use events::{ContainerEvent, ContainerEventKind};

use crate::config::{Assets, Config};
use crate::ids::IdError;
use crate::images::{ImageError, Images};

use crate::state::{
    ContainerRecord, ContainerSettings, PodRecord, PodSettings, StateDir, StateError,
};

pub use container::seccomp::{self, SeccompChoice};
pub use container::{CreateContainer, ExecOutput};
pub use pod::RunPod;
pub use stats::{ContainerUsage, PodUsage};
pub use streaming::StreamingBackend;

/// Why a runtime operation failed; each variant maps to one gRPC code
/// ([`crate::server::status`], which sends the whole chain of sources as the message).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{field}: {problem}")]
    InvalidArgument { field: String, problem: String },
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Streaming(#[from] vpod_streaming::ServerError),
    #[error("the pod's VM failed")]
    Sandbox(#[from] SandboxError),
    #[error("the runtime is shutting down")]
    ShuttingDown,
    #[error("the pod's boot task failed")]
    BootTask(#[source] tokio::task::JoinError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("could not open the layer store")]
    LayerStore(#[source] LayerStoreError),
    #[error("the pod's network failed")]
    Network(#[source] vpod_network::NetworkError),
    #[error("the pod's network cannot be given to its VM")]
    NetworkResult(#[source] vpod_sandbox::network::GuestNetworkError),
    #[error("the pod's cgroup failed")]
    Cgroup(#[source] vpod_sandbox::cgroup::CgroupError),
    #[error("could not {operation} {path}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> RuntimeError {
        RuntimeError::InvalidArgument {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// A file system call on `path` that failed.
    pub fn io(operation: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| RuntimeError::Io {
            operation,
            path,
            source,
        }
    }
}

/// A pod: its record and, while it runs, its VM.
pub struct Pod {
    pub id: String,
    record: Mutex<PodRecord>,
    sandbox: RwLock<Option<Sandbox>>,
}

impl Pod {
    pub fn record(&self) -> PodRecord {
        lock(&self.record).clone()
    }
}

/// A container: its record, its log file and the task following its output.
pub struct Container {
    pub id: String,
    record: Mutex<ContainerRecord>,
    /// The open log file, swapped by ReopenContainerLog.
    log: Mutex<Option<std::fs::File>>,
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Container {
    pub fn record(&self) -> ContainerRecord {
        lock(&self.record).clone()
    }
}

/// Poisoning only means another task panicked mid-update; the data is still the best we have.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The runtime.
pub struct Runtime {
    config: Config,
    assets: Assets,
    /// Absolute: sandboxes live in `<root>/sandboxes/<id>`.
    root: PathBuf,
    state: StateDir,
    images: Images,
    pods: Mutex<HashMap<String, Arc<Pod>>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Pod names (name, namespace, uid, attempt) and container names (pod, name, attempt)
    /// in use, including those being created.
    names: Mutex<HashSet<String>>,
    rpc_timeout: Duration,
    /// Bounds the boots in progress: a crowd of guests booting at once on few CPUs starves
    /// them all past their timeouts.
    boot_slots: tokio::sync::Semaphore,
    /// Container lifecycle events for GetContainerEvents.
    events: tokio::sync::broadcast::Sender<ContainerEvent>,
    /// The pods' networks (CNI).
    cni: vpod_network::Cni,
    /// The streaming server's URL maker, once it is bound ([`Runtime::set_streaming_urls`]).
    streaming: OnceLock<vpod_streaming::StreamingUrls>,
}

impl Runtime {
    /// Opens the state under `config.root`, cleans up what a crash left and re-attaches to
    /// the pods that still run.
    pub async fn open(config: Config) -> Result<Arc<Runtime>, RuntimeError> {
        let root =
            std::path::absolute(&config.root).map_err(RuntimeError::io("resolve", &config.root))?;
        std::fs::create_dir_all(&root).map_err(RuntimeError::io("create", &root))?;
        let default_limits = LayerLimits::default();
        let limits = LayerLimits {
            max_entries: config
                .registry
                .max_layer_entries
                .unwrap_or(default_limits.max_entries),
            max_tar_bytes: config
                .registry
                .max_layer_mib
                .map_or(default_limits.max_tar_bytes, |mib| {
                    mib.saturating_mul(1 << 20)
                }),
        };
        let store = LayerStore::open_with(
            &root,
            LayerStoreOptions {
                limits,
                ..Default::default()
            },
        )
        .map_err(RuntimeError::LayerStore)?;
        let defaults = RegistryOptions::default();
        let options = RegistryOptions {
            insecure_registries: config.registry.insecure_registries.clone(),
            extra_ca_files: config.registry.extra_ca_files.clone(),
            mirrors: config.registry.mirrors.clone(),
            max_concurrent_downloads: config
                .registry
                .max_concurrent_downloads
                .unwrap_or(defaults.max_concurrent_downloads)
                .max(1),
            ..defaults
        };
        let images = Images::open(store, options)?;
        let state = StateDir::open(&root)?;
        let boot_slots = match config.pod.max_concurrent_boots {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let cni = pod::network::cni(&config, &root);
        let runtime = Arc::new(Runtime {
            cni,
            assets: config.assets(),
            config,
            root,
            state,
            images,
            pods: Mutex::new(HashMap::new()),
            containers: Mutex::new(HashMap::new()),
            names: Mutex::new(HashSet::new()),
            rpc_timeout: Duration::from_secs(30),
            boot_slots: tokio::sync::Semaphore::new(boot_slots),
            events: tokio::sync::broadcast::channel(events::EVENT_BACKLOG).0,
            streaming: OnceLock::new(),
        });
        runtime.recover().await?;
        Ok(runtime)
    }

    pub fn images(&self) -> &Images {
        &self.images
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn assets(&self) -> &Assets {
        &self.assets
    }

    fn pod(&self, wanted: &str) -> Result<Arc<Pod>, RuntimeError> {
        let pods = lock(&self.pods);
        let id = crate::ids::resolve("pod sandbox", wanted, pods.keys())?;
        Ok(pods[&id].clone())
    }

    fn container(&self, wanted: &str) -> Result<Arc<Container>, RuntimeError> {
        let containers = lock(&self.containers);
        let id = crate::ids::resolve("container", wanted, containers.keys())?;
        Ok(containers[&id].clone())
    }

    fn all_pods(&self) -> Vec<Arc<Pod>> {
        lock(&self.pods).values().cloned().collect()
    }

    fn all_containers(&self) -> Vec<Arc<Container>> {
        lock(&self.containers).values().cloned().collect()
    }

    fn containers_of(&self, pod_id: &str) -> Vec<Arc<Container>> {
        self.all_containers()
            .into_iter()
            .filter(|c| lock(&c.record).pod_id == pod_id)
            .collect()
    }

    /// Claims `name`; false if it is taken.
    fn reserve_name(&self, name: String) -> bool {
        lock(&self.names).insert(name)
    }

    fn release_name(&self, name: &str) {
        lock(&self.names).remove(name);
    }

    /// Updates a container's record in memory and on disk.
    fn update_container(
        &self,
        container: &Container,
        change: impl FnOnce(&mut ContainerRecord),
    ) -> Result<ContainerRecord, RuntimeError> {
        let mut record = lock(&container.record);
        let before = record.phase;
        change(&mut record);
        self.state.write_container(&record)?;
        if let Some(kind) = ContainerEventKind::of_change(before, record.phase) {
            self.emit(&record.id, &record.pod_id, kind);
        }
        Ok(record.clone())
    }

    fn update_pod(
        &self,
        pod: &Pod,
        change: impl FnOnce(&mut PodRecord),
    ) -> Result<PodRecord, RuntimeError> {
        let mut record = lock(&pod.record);
        change(&mut record);
        self.state.write_pod(&record)?;
        Ok(record.clone())
    }

    /// Leaves every running VM running (for a later `vpod-cri` to re-attach) before the
    /// daemon exits.
    pub async fn shutdown(&self) {
        for container in self.all_containers() {
            if let Some(task) = lock(&container.follower).take() {
                task.abort();
            }
        }
        for pod in self.all_pods() {
            if let Some(sandbox) = pod.sandbox.write().await.take() {
                if let Err(e) = sandbox.leave_running() {
                    tracing::warn!(pod = %pod.id, error = %error_chain(&e), "could not record the pod's state");
                }
            }
        }
    }
}

/// What a call that needs the pod's VM fails with when the pod has none (it was stopped,
/// or its VM died).
fn pod_not_ready(pod_id: &str) -> RuntimeError {
    RuntimeError::FailedPrecondition(format!("the pod sandbox {pod_id} is not ready"))
}

/// The pod name key of AlreadyExists checks.
fn pod_name_key(pod: &PodSettings) -> String {
    let PodSettings {
        name,
        namespace,
        uid,
        attempt,
        ..
    } = pod;
    format!("pod\0{name}\0{namespace}\0{uid}\0{attempt}")
}

fn container_name_key(pod_id: &str, container: &ContainerSettings) -> String {
    let ContainerSettings { name, attempt, .. } = container;
    format!("container\0{pod_id}\0{name}\0{attempt}")
}

impl Runtime {
    /// Image id to one container (not removed) that uses it.
    pub fn image_users(&self) -> HashMap<String, String> {
        self.all_containers()
            .iter()
            .map(|c| {
                let record = c.record();
                (record.image_id, record.id)
            })
            .collect()
    }
}

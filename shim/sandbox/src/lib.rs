//! Sandboxes: one pod, one micro-VM. A [`Sandbox`] owns the pod's directory
//! (`<state_dir>/sandboxes/<id>/`: the writable disk, the VMM's sockets, its console log),
//! one `vpod-vmm` process, and a gRPC channel to the agent (vpod-init) in the guest. It
//! attaches image layers to the VMM's empty disk slots and runs containers through the
//! agent (see [`container`]). A pod with NICs ([`network`]) hands their taps to the VMM and
//! has the agent configure the guest's side before [`Sandbox::start`] returns. A pod with a
//! shared directory ([`share`]) runs a virtiofsd of its own beside the VMM, through which
//! the runtime specs' bind mounts reach the containers.
//!
//! Every agent call has a deadline or races the VMM's exit, so a dead guest is an error.
//! Dropping a sandbox that was not stopped kills its VMM (and virtiofsd) by PID, unmounts
//! what is mounted in its directory and removes it.

mod agent;
pub mod api;
pub mod block_volume;
pub mod cgroup;
pub mod container;
pub mod dir_disk;
mod disk;
pub mod jail;
mod layers;
pub mod network;
pub mod network_files;
pub mod output;
mod owned_process;
mod runtime_ops;
pub mod seccomp;
mod serial;
pub mod share;
pub mod vmm;
mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vpod_proto::vmm::seccomp_kill::seccomp_kill_from_log;
use vpod_proto::vmm::{BalloonConfig, DiskConfig, FsConfig};
use vpod_proto::AgentClient;

use vpod_proto::error_chain;

pub use agent::AgentError;
pub use api::{VmmApi, VmmApiError};
pub use block_volume::{BlockVolume, BlockVolumeError};
pub use container::{ContainerExit, ContainerSpec, ContainerStdin, RootfsSource};
pub use dir_disk::{DirDisk, DirDiskError};
pub use disk::DiskError;
pub use jail::{JailUsers, VmmJail};
pub use output::{
    ContainerOutput, ContainerStats, ExecResult, GuestInfo, OutputChunk, OutputStream,
};
pub use share::{ShareConfig, ShareError};
pub use wire::SpecError;

use layers::AttachedLayers;
use network::GuestNetwork;
use share::Share;
use vmm::{file_tail, VmmLaunch, VmmProcess};

/// What a pod's VM is made of.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 32 characters (socket paths are short).
    pub id: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The runtime's root; the pod lives in `<state_dir>/sandboxes/<id>/`.
    pub state_dir: PathBuf,
    /// Empty disk slots for image layers (at most 16, the VMM's limit).
    pub layer_slots: u32,
    /// The `vpod-vmm` binary.
    pub vmm: PathBuf,
    pub writable_disk_bytes: u64,
    /// From starting the VMM until the agent answers GetVersion.
    pub agent_timeout: Duration,
    /// The deadline of each short agent call.
    pub rpc_timeout: Duration,
    /// Kill the VMM if the thread that started it ends (a foreground `vpod run`).
    pub die_with_parent: bool,
    /// The pod's NICs and routes; none by default.
    pub network: GuestNetwork,
    /// Attach the NICs at boot but leave the guest's side of them to a later
    /// [`Sandbox::configure_network`]: for a front end that runs CNI while the VM boots.
    pub defer_network: bool,
    /// A shared directory for the pod's volumes (a virtiofsd of its own; see [`share`]):
    /// without one, a container's runtime spec may have no mounts.
    pub share: Option<ShareConfig>,
    /// The VM's virtio-balloon: on by default, with free page reporting, so memory the
    /// guest frees goes back to the host; `None` leaves the device out.
    pub balloon: Option<BalloonConfig>,
    /// Offer guest RAM to KSM (off by default): identical pages across such pods are merged
    /// once the host runs ksmd, a timing side channel between their tenants. Not with a
    /// `share` (shared guest memory): the VMM refuses that.
    pub ksm: bool,
    /// Once the guest has booted, map the kernel and initrd files copy-on-write over the
    /// guest pages that still hold their bytes (the kernel's code; without a `share`, also
    /// the agent in the tmpfs root; on by default), so every pod booting the same files
    /// shares those pages on the host: about 7 MiB less host memory per pod with a share,
    /// for a flush+reload timing channel on them between pods (the kind host processes
    /// sharing a library have). Off: each pod's guest keeps its private copies.
    pub share_boot_files: bool,
    /// Kernel parameters added to the VMM's base command line (checked by the VMM:
    /// [`vpod_proto::vmm::is_kernel_param`]); none by default.
    pub kernel_params: Vec<String>,
    /// The pod's cgroup (v2), an existing directory ([`cgroup::PodCgroup::create`]):
    /// virtiofsd joins it before it execs, the VMM (told it in its configuration) as its
    /// first step, so the pod is charged for them. The
    /// front end makes it and removes it ([`cgroup::remove`]) once the sandbox is stopped.
    pub cgroup: Option<PathBuf>,
    /// The users the pod's VMM runs as, jailed ([`jail`]); `None` (development only) leaves
    /// the VMM unconfined, as root.
    pub jail: Option<JailUsers>,
}

impl SandboxConfig {
    /// A pod with 1 vCPU, 256 MiB, 8 layer slots, a 1 GiB writable disk and a balloon with
    /// free page reporting.
    pub fn new(
        id: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        vmm: impl Into<PathBuf>,
        kernel: impl Into<PathBuf>,
        initrd: impl Into<PathBuf>,
    ) -> SandboxConfig {
        SandboxConfig {
            id: id.into(),
            vcpus: 1,
            memory_mib: 256,
            kernel: kernel.into(),
            initrd: initrd.into(),
            state_dir: state_dir.into(),
            layer_slots: 8,
            vmm: vmm.into(),
            writable_disk_bytes: 1 << 30,
            agent_timeout: Duration::from_secs(30),
            rpc_timeout: Duration::from_secs(30),
            die_with_parent: true,
            network: GuestNetwork::default(),
            balloon: Some(BalloonConfig::default()),
            defer_network: false,
            share: None,
            ksm: false,
            share_boot_files: true,
            kernel_params: Vec::new(),
            cgroup: None,
            jail: Some(JailUsers::default()),
        }
    }
}

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the sandbox id {0:?} is not [A-Za-z0-9][A-Za-z0-9_.-]{{0,31}}")]
    BadId(String),
    #[error("the sandbox directory {0} already exists")]
    Exists(PathBuf),
    #[error("could not prepare the sandbox directory {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error(
        "the pod's sockets would be longer than a unix socket path may be ({len} > {max} bytes, as {0}): choose a shorter state directory",
        len = .0.as_os_str().len(),
        max = MAX_SOCKET_PATH
    )]
    SocketPathTooLong(PathBuf),
    #[error("could not make the writable disk")]
    Disk(#[from] DiskError),
    #[error("could not start the VMM {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    #[error("the VMM exited ({status}) before the agent answered\n{log}")]
    VmmExitedDuringBoot { status: ExitStatus, log: String },
    #[error("the agent did not answer within {after:?} ({last})\n{log}")]
    AgentNotReady {
        after: Duration,
        last: String,
        log: String,
    },
    #[error("the pod's VM ended ({status}) while {what}\n{log}")]
    VmmExited {
        what: &'static str,
        status: ExitStatus,
        log: String,
    },
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Api(#[from] VmmApiError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("the pod's shared directory failed")]
    Share(#[from] ShareError),
    #[error("the volume on {0} could not be bound into the pod's shared directory")]
    Volume(String, #[source] ShareError),
    #[error("the pod has no empty disk slot for layer {0} ({1} slots)")]
    NoFreeSlot(String, u32),
    #[error("the block volume for {0} cannot be attached")]
    BlockVolume(String, #[source] BlockVolumeError),
    #[error("the volume at {0} cannot be kept on a disk of its own")]
    DirDisk(String, #[source] DirDiskError),
    #[error(
        "the pod has no empty disk slot for the block volume {host_path} ({slots} disk slots \
         for layers and block volumes, all in use)"
    )]
    NoFreeSlotForVolume { host_path: PathBuf, slots: u32 },
    #[error("no container {0:?} in this pod")]
    NoSuchContainer(String),
    #[error("a container {0:?} already exists in this pod")]
    ContainerExists(String),
    #[error("this pod's agent speaks protocol minor {agent_minor}, {what} needs {needed}: recreate the pod")]
    AgentTooOld {
        what: &'static str,
        agent_minor: u32,
        needed: u32,
    },
}

impl SandboxError {
    /// Whether the error is a lost or stalled connection to an agent whose VM may well be
    /// running (a reset, a keep-alive or deadline that ran out on a loaded host): worth a
    /// new connection, unlike the agent's own answer that the request is wrong.
    pub fn is_connection_loss(&self) -> bool {
        match self {
            SandboxError::Agent(AgentError::Connect(_) | AgentError::Timeout { .. }) => true,
            SandboxError::Agent(AgentError::Status { status, .. }) => !matches!(
                status.code(),
                tonic::Code::NotFound
                    | tonic::Code::InvalidArgument
                    | tonic::Code::FailedPrecondition
                    | tonic::Code::AlreadyExists
                    | tonic::Code::Unimplemented
                    | tonic::Code::PermissionDenied
            ),
            _ => false,
        }
    }
}

/// How long the pod took to come up.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTimings {
    /// Making and formatting the writable disk.
    pub disk: Duration,
    /// From starting the VMM until the agent answered GetVersion.
    pub vmm_to_agent: Duration,
    /// The VMM's own measure: its start to the guest init's first instruction.
    pub vmm_to_init_ms: Option<f64>,
    /// The agent's ConfigureNetwork call (zero for a pod without a network).
    pub network: Duration,
    /// Starting the pod's share (its virtiofsd) and the agent's MountShare (zero without).
    pub share: Duration,
}

/// A running pod VM.
#[derive(Debug)]
pub struct Sandbox {
    id: String,
    dir: PathBuf,
    vmm: VmmProcess,
    api: VmmApi,
    agent: AgentClient<Channel>,
    /// The protocol minor the agent speaks.
    agent_minor: u32,
    writable_serial: String,
    layer_slots: u32,
    layers: AttachedLayers,
    /// Container id to the serials of the layers and block volumes it uses.
    containers: HashMap<String, Vec<String>>,
    /// The pod's shared directory, if it has one.
    share: Option<Share>,
    rpc_timeout: Duration,
    timings: BootTimings,
    torn_down: bool,
    /// Started by this process (killed when dropped), or opened from its state file.
    kill_on_drop: bool,
}

/// What another `vpod` process needs to use a running pod: `<pod>/sandbox.json`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SandboxState {
    id: String,
    vmm_pid: u32,
    writable_serial: String,
    layer_slots: u32,
    layers: AttachedLayers,
    containers: HashMap<String, Vec<String>>,
    /// The pod's virtiofsd, when it has a shared directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    virtiofsd_pid: Option<u32>,
}

const STATE_FILE: &str = "sandbox.json";

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    id.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The longest path a unix socket may have (`sun_path` holds 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// The longest path of a socket the VMM of a pod in `dir` listens on (its vsock socket;
/// the control socket and the share's are shorter). A VMM that cannot bind it exits at
/// start with nothing but a status to say why.
fn longest_socket_path(dir: &Path) -> PathBuf {
    jail::vsock_socket(dir)
}

impl Sandbox {
    /// Makes the pod directory and writable disk, starts the VMM (with the NICs' taps),
    /// waits for the agent and has it configure the pod's network.
    pub async fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        if !valid_id(&config.id) {
            return Err(SandboxError::BadId(config.id));
        }
        let sandboxes = config.state_dir.join("sandboxes");
        let dir = sandboxes.join(&config.id);
        let longest = longest_socket_path(&dir);
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(SandboxError::SocketPathTooLong(longest));
        }
        std::fs::create_dir_all(&sandboxes).map_err(|e| SandboxError::Dir(sandboxes.clone(), e))?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SandboxError::Exists(dir))
            }
            Err(e) => return Err(SandboxError::Dir(dir, e)),
        }
        // From here on a failure removes the directory.
        let guard = DirGuard(Some(dir.clone()));

        let disk_started = Instant::now();
        let writable = dir.join("writable.img");
        disk::create_writable_disk(&writable, config.writable_disk_bytes)?;
        let writable_serial = serial::writable_serial(&config.id);
        let disk_time = disk_started.elapsed();
        let share_started = Instant::now();
        let share = match &config.share {
            Some(share) => Some(
                Share::start(
                    &dir,
                    share,
                    config.die_with_parent,
                    config.cgroup.as_deref(),
                )
                .await?,
            ),
            None => None,
        };
        let share_time = share_started.elapsed();
        // Stops a share a failed start made before the directory goes.
        let stop_share = |share: &Option<Share>| {
            if let Some(share) = share {
                let _ = share.stop();
            }
        };

        let launch = VmmLaunch {
            program: config.vmm.clone(),
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            disk_slots: config.layer_slots,
            disks: vec![DiskConfig::path(&writable).serial(&writable_serial)],
            nics: config.network.nics.clone(),
            netns: config.network.netns.clone(),
            fs: share
                .iter()
                .map(|s| FsConfig::new(s.socket(), share::SHARE_TAG))
                .collect(),
            console_log: jail::console_log(&dir),
            vsock_socket: jail::vsock_socket(&dir),
            api_socket: jail::api_socket(&dir),
            config_file: dir.join("vmm.json"),
            stderr_log: dir.join("vmm.log"),
            die_with_parent: config.die_with_parent,
            balloon: config.balloon,
            ksm: config.ksm,
            share_boot_files: config.share_boot_files,
            kernel_params: config.kernel_params.clone(),
            cgroup: config.cgroup.clone(),
            jail: config
                .jail
                .as_ref()
                .map(|users| VmmJail::for_pod(users, &config.id, &dir)),
        };
        let vmm_started = Instant::now();
        let vmm = match launch.spawn() {
            Ok(vmm) => vmm,
            Err(e) => {
                stop_share(&share);
                return Err(SandboxError::Spawn(config.vmm.clone(), e));
            }
        };
        if let Err(e) = std::fs::write(dir.join("vmm.pid"), vmm.pid().to_string()) {
            vmm.kill_and_reap();
            stop_share(&share);
            return Err(SandboxError::Dir(dir.clone(), e));
        }
        let agent::CheckedAgent {
            client: agent,
            minor: agent_minor,
        } = match wait_for_agent(&vmm, &launch, config.agent_timeout).await {
            Ok(agent) => agent,
            Err(e) => {
                vmm.kill_and_reap();
                stop_share(&share);
                return Err(e);
            }
        };
        let vmm_to_agent = vmm_started.elapsed();
        let api = VmmApi::new(&launch.api_socket);
        let vmm_to_init_ms = api.boot_time_ms().await.ok().flatten();
        guard.keep();
        // From here on a failure kills the VMM and removes the directory (Drop).
        let mut sandbox = Sandbox {
            id: config.id,
            dir,
            vmm,
            api,
            agent,
            agent_minor,
            writable_serial,
            layer_slots: config.layer_slots,
            layers: AttachedLayers::default(),
            containers: HashMap::new(),
            share,
            rpc_timeout: config.rpc_timeout,
            timings: BootTimings {
                disk: disk_time,
                vmm_to_agent,
                vmm_to_init_ms,
                network: Duration::ZERO,
                share: share_time,
            },
            torn_down: false,
            kill_on_drop: true,
        };
        if sandbox.share.is_some() {
            let mount_started = Instant::now();
            sandbox.mount_share().await?;
            sandbox.timings.share += mount_started.elapsed();
        }
        if !config.network.is_empty() && !config.defer_network {
            sandbox.configure_network(&config.network).await?;
        }
        sandbox.persist()?;
        Ok(sandbox)
    }

    /// Has the agent give the guest's NICs (found by the MAC addresses the VMM gave them)
    /// their MAC addresses, names, addresses and routes; its time is
    /// [`BootTimings::network`]. Asking twice with the same network changes nothing.
    pub async fn configure_network(&mut self, network: &GuestNetwork) -> Result<(), SandboxError> {
        let started = Instant::now();
        let request = wire::network_request(network);
        let mut agent = self.agent.clone();
        self.guarded(
            "configuring the network",
            agent::call(
                "ConfigureNetwork",
                self.rpc_timeout,
                agent.configure_network(request),
            ),
        )
        .await?;
        self.timings.network = started.elapsed();
        Ok(())
    }

    /// Has the agent mount the pod's share (an agent too old for it is an error).
    async fn mount_share(&self) -> Result<(), SandboxError> {
        if self.agent_minor < vpod_proto::SHARE_MINOR {
            return Err(SandboxError::AgentTooOld {
                what: "a shared directory",
                agent_minor: self.agent_minor,
                needed: vpod_proto::SHARE_MINOR,
            });
        }
        let mut agent = self.agent.clone();
        let request = vpod_proto::v1::MountShareRequest {
            tag: share::SHARE_TAG.to_string(),
        };
        self.guarded(
            "mounting the shared directory",
            agent::call("MountShare", self.rpc_timeout, agent.mount_share(request)),
        )
        .await
        .map(drop)
    }

    /// Opens the running pod `id` that another `vpod` started and left running.
    pub async fn open(
        state_dir: &Path,
        id: &str,
        rpc_timeout: Duration,
    ) -> Result<Sandbox, SandboxError> {
        if !valid_id(id) {
            return Err(SandboxError::BadId(id.to_string()));
        }
        let dir = state_dir.join("sandboxes").join(id);
        let path = dir.join(STATE_FILE);
        let text = std::fs::read(&path).map_err(|e| SandboxError::Dir(path.clone(), e))?;
        let state: SandboxState = serde_json::from_slice(&text)
            .map_err(|e| SandboxError::Dir(path.clone(), std::io::Error::other(e)))?;
        let vmm = VmmProcess::adopt(state.vmm_pid);
        if let Some(status) = vmm.try_wait() {
            return Err(SandboxError::VmmExited {
                what: "opening the pod",
                status,
                log: logs_tail(&dir),
            });
        }
        let agent::CheckedAgent {
            client: agent,
            minor: agent_minor,
        } = agent::connect_and_check(
            jail::vsock_socket(&dir),
            vpod_proto::AGENT_VSOCK_PORT,
            rpc_timeout,
        )
        .await?;
        let share = state.virtiofsd_pid.map(|pid| Share::adopt(&dir, pid));
        Ok(Sandbox {
            id: state.id,
            api: VmmApi::new(jail::api_socket(&dir)),
            dir,
            vmm,
            agent,
            agent_minor,
            writable_serial: state.writable_serial,
            layer_slots: state.layer_slots,
            layers: state.layers,
            containers: state.containers,
            share,
            rpc_timeout,
            timings: BootTimings::default(),
            torn_down: false,
            kill_on_drop: false,
        })
    }

    /// Leaves the pod running when this value goes (for `Sandbox::open` later).
    pub fn leave_running(mut self) -> Result<(), SandboxError> {
        self.kill_on_drop = false;
        self.persist()
    }

    /// Records the pod's state for `Sandbox::open`.
    pub(crate) fn persist(&self) -> Result<(), SandboxError> {
        let state = SandboxState {
            id: self.id.clone(),
            vmm_pid: self.vmm.pid(),
            writable_serial: self.writable_serial.clone(),
            layer_slots: self.layer_slots,
            layers: self.layers.clone(),
            containers: self.containers.clone(),
            virtiofsd_pid: self.share.as_ref().map(Share::virtiofsd_pid),
        };
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other);
        text.and_then(|text| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| SandboxError::Dir(path, e))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The protocol minor the pod's agent speaks (what it can be asked).
    pub fn agent_minor(&self) -> u32 {
        self.agent_minor
    }

    pub fn vmm_pid(&self) -> u32 {
        self.vmm.pid()
    }

    pub fn timings(&self) -> BootTimings {
        self.timings
    }

    /// A handle on the channel to the agent (clones share its connection), for calls that
    /// outlive a borrow of the sandbox: streaming exec, attach and port-forward.
    pub fn agent_client(&self) -> AgentClient<Channel> {
        self.agent.clone()
    }

    /// The VMM's console output so far (its tail), for diagnostics.
    pub fn console_tail(&self) -> String {
        logs_tail(&self.dir)
    }

    /// Stops the VM (through the control socket, then SIGKILL if it lingers) and removes
    /// the pod directory.
    pub async fn stop(mut self) -> Result<(), SandboxError> {
        if self.vmm.try_wait().is_none() {
            // An error here (the VMM is going anyway) is settled by the kill below.
            let _ = self.api.stop().await;
            if self
                .vmm
                .wait_for_exit(Duration::from_secs(3))
                .await
                .is_none()
            {
                self.vmm.kill_and_reap();
            }
        }
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), SandboxError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        self.vmm.kill_and_reap();
        if let Some(share) = &self.share {
            share.stop()?;
        }
        // Whatever is still mounted in the pod's directory (a share of an older state file)
        // is unmounted first: removing the directory must never reach into a volume.
        share::unmount_under(&self.dir)?;
        std::fs::remove_dir_all(&self.dir).map_err(|e| SandboxError::Dir(self.dir.clone(), e))
    }

    /// Waits for `rpc`, or fails when the VMM ends first.
    async fn guarded<T>(
        &self,
        what: &'static str,
        rpc: impl std::future::Future<Output = Result<T, AgentError>>,
    ) -> Result<T, SandboxError> {
        let vm_ended = |status| SandboxError::VmmExited {
            what,
            status,
            log: logs_tail(&self.dir),
        };
        tokio::select! {
            result = rpc => match result {
                Ok(value) => Ok(value),
                // A broken connection usually means the VM is going: say so if it went.
                Err(e) => match self.vmm.wait_for_exit(Duration::from_millis(500)).await {
                    Some(status) => Err(vm_ended(status)),
                    None => Err(e.into()),
                },
            },
            status = self.vmm_exit() => Err(vm_ended(status)),
        }
    }

    async fn vmm_exit(&self) -> ExitStatus {
        self.vmm.exited().await
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.kill_on_drop {
            let _ = self.teardown();
        }
    }
}

/// Retries connecting until GetVersion answers, the VMM ends, or `limit` passes.
async fn wait_for_agent(
    vmm: &VmmProcess,
    launch: &VmmLaunch,
    limit: Duration,
) -> Result<agent::CheckedAgent, SandboxError> {
    let dir = launch.console_log.parent().unwrap_or(Path::new("."));
    let started = Instant::now();
    let mut last = String::from("the VMM's vsock socket never appeared");
    loop {
        if let Some(status) = vmm.try_wait() {
            return Err(SandboxError::VmmExitedDuringBoot {
                status,
                log: logs_tail(dir),
            });
        }
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(SandboxError::AgentNotReady {
                after: limit,
                last,
                log: logs_tail(dir),
            });
        }
        if launch.vsock_socket.exists() {
            let attempt = left.min(Duration::from_secs(5));
            match agent::connect_and_check(
                launch.vsock_socket.clone(),
                vpod_proto::AGENT_VSOCK_PORT,
                attempt,
            )
            .await
            {
                Ok(client) => return Ok(client),
                Err(e) => last = error_chain(&e),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The tails of the console and the VMM's stderr; first, when the VMM's seccomp filter
/// killed it, which call it made.
fn logs_tail(dir: &Path) -> String {
    let console = file_tail(&jail::console_log(dir), 2048);
    let vmm = file_tail(&dir.join("vmm.log"), 1024);
    let seccomp = std::fs::read_to_string(dir.join("vmm.log"))
        .ok()
        .and_then(|log| seccomp_kill_from_log(&log))
        .map(|(syscall, thread)| {
            format!("vpod-vmm was killed by seccomp: syscall {syscall} (in its {thread} thread)\n")
        })
        .unwrap_or_default();
    format!("{seccomp}--- console (tail)\n{console}\n--- vpod-vmm stderr (tail)\n{vmm}")
}

/// Removes a directory unless kept.
struct DirGuard(Option<PathBuf>);

impl DirGuard {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Why [`destroy_leftovers`] left a sandbox directory in place.
#[derive(Debug, thiserror::Error)]
pub enum LeftoverError {
    #[error("the leftover sandbox's volumes could not be unmounted; its directory stays")]
    Unmount(#[source] ShareError),
    #[error("could not remove the leftover sandbox directory {0}")]
    Remove(PathBuf, #[source] std::io::Error),
}

/// What is left of sandbox `id` under `state_dir` once its front end is gone (a crash, an
/// interrupted start): kills every VMM and virtiofsd of its directory by PID, unmounts its
/// volumes and removes the directory. The directory stays while anything is still mounted
/// in it, so a volume's host directory is never emptied. Nothing there: nothing to do.
pub fn destroy_leftovers(state_dir: &Path, id: &str) -> Result<(), LeftoverError> {
    let dir = state_dir.join("sandboxes").join(id);
    for pid in vmm::vmm_processes_under(&dir) {
        VmmProcess::adopt(pid).kill_and_reap();
    }
    share::destroy_leftovers(&dir).map_err(LeftoverError::Unmount)?;
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LeftoverError::Remove(dir, e)),
    }
}

/// The checkout (or install) holding `build/vmlinux`: `$VPOD_HOME`, else the nearest
/// ancestor of the running binary's directory that has it, else the working directory.
pub fn vpod_home() -> PathBuf {
    if let Some(home) = std::env::var_os("VPOD_HOME") {
        return PathBuf::from(home);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.join("build/vmlinux").exists())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_are_short_path_safe_names() {
        assert!(valid_id("a"));
        assert!(valid_id("pod-1.x_y"));
        assert!(!valid_id(""));
        assert!(!valid_id("-a"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"a".repeat(33)));
    }

    #[tokio::test]
    async fn a_state_dir_too_long_for_the_pod_s_sockets_is_refused_before_anything_is_made() {
        let temp = tempfile::tempdir().expect("temp dir");
        let state = temp.path().join("s".repeat(100));
        let config = SandboxConfig::new("pod-1", &state, "/none", "/none", "/none");
        let err = match Sandbox::start(config).await {
            Err(err) => err,
            Ok(_) => panic!("a pod started with socket paths over {MAX_SOCKET_PATH} bytes"),
        };
        assert!(matches!(err, SandboxError::SocketPathTooLong(_)), "{err}");
        let text = err.to_string();
        assert!(text.contains("/vm/vsock.sock"), "{text}");
        assert!(text.contains("> 107 bytes"), "{text}");
        assert!(!state.exists());
    }
}

#[cfg(test)]
mod logs_tail_tests {
    use super::*;

    #[test]
    fn a_vmm_killed_by_seccomp_is_reported_with_its_call_first() {
        let dir = tempfile::tempdir().expect("temp dir");
        let line = vpod_proto::vmm::seccomp_kill::kill_line(169, "vcpu");
        std::fs::write(dir.path().join("vmm.log"), format!("{line}\n")).expect("log");
        let text = logs_tail(dir.path());
        assert!(
            text.starts_with("vpod-vmm was killed by seccomp: syscall 169 (in its vcpu thread)\n"),
            "{text}"
        );
        std::fs::write(dir.path().join("vmm.log"), "vpod-vmm: error: no KVM\n").expect("log");
        assert!(logs_tail(dir.path()).starts_with("--- console"));
    }
}

//! Containers in a sandbox: layers attached to slots, the process merged from the image
//! config and the request, and the agent's lifecycle calls.

use std::collections::HashSet;
use std::time::Duration;

use vpod_proto::v1::{
    wait_container_response::Status, BlockDevice, ExecSyncRequest, Mount, ReadStdioRequest,
    RemoveContainerRequest, SignalContainerRequest, StartContainerRequest, WaitContainerRequest,
};

use oci_spec::runtime::Spec;

use super::agent::{call, AgentError};
use super::block_volume::{self, BlockVolume, OpenedVolume};
use super::dir_disk::{self, DirDisk, Placement};
use super::output::{ContainerOutput, ExecResult};
use super::serial::layer_serial;
use super::wire::{create_request, volumes};
use super::SpecError;
use super::{Sandbox, SandboxError};
use vpod_image::ImageLayer;

/// A small file written into the container's root before it starts, replacing the
/// image's: /etc/resolv.conf, /etc/hosts, /etc/hostname. The guest resolves `path` inside
/// the root (an image's symlinks cannot lead it out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerFile {
    /// Absolute inside the container, without "..".
    pub path: String,
    pub content: Vec<u8>,
    /// Permission bits; 0 means 0644.
    pub mode: u32,
}

/// Where a container's root comes from.
#[derive(Debug, Clone)]
pub enum RootfsSource {
    /// Image layers, lowest first: read-only disks overlaid under the container's writable
    /// directory on the pod's disk.
    Layers(Vec<ImageLayer>),
}

/// What to run: a finished OCI runtime spec, as a containerd shim receives one, and where
/// its root comes from.
///
/// What the guest takes of the spec: the process (args, env, cwd, user with its username
/// and additional gids, capabilities as one set, no_new_privileges), `hostname` (unset:
/// the pod's), `root.readonly`, and under `linux` the resources (CPU shares, quota and
/// period, memory and pids limits), sysctls, masked and read-only paths (unset: the guest's
/// defaults, containerd's) and namespaces: without a PID namespace of its own the container
/// joins the pod's. The [`GROUP_NAME_ANNOTATION`](vpod_image::runtime_spec::GROUP_NAME_ANNOTATION)
/// names a group for the guest to look up. The seccomp profile is compiled here and applied
/// by the guest to the process and every exec ([`seccomp`](crate::seccomp)). Bind mounts
/// (`bind`/`rbind`, `ro`, `nosuid`/`nodev`/`noexec`, private or slave propagation) are
/// bound under the pod's shared directory ([`share`](crate::share)) and bound again by the
/// guest into the container; a pod without a share, other mount types, shared propagation
/// and namespaces joined by path are refused ([`SpecError`](crate::SpecError)).
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`, unique in the pod.
    pub id: String,
    pub spec: Spec,
    pub rootfs: RootfsSource,
    /// Written into the root after it is assembled, before the process starts.
    pub files: Vec<ContainerFile>,
    /// The main process's stdin, which the runtime spec does not carry.
    pub stdin: ContainerStdin,
    /// Raw block volumes, each attached to an empty disk slot (shared with the pod's other
    /// containers that name the same host path with the same mode) and bound at its path.
    pub block_volumes: Vec<BlockVolume>,
    /// Directory volumes on disks of their own (an ext4 image in each host directory),
    /// mounted by the guest at their paths ([`dir_disk`](crate::dir_disk)). Their paths
    /// must not also be among the spec's mounts.
    pub dir_disks: Vec<DirDisk>,
}

/// Whether the main process reads a stdin fed by attachers (else /dev/null), as CRI's
/// `stdin` and `stdin_once`. A terminal (`process.terminal` in the spec) is its stdin
/// either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStdin {
    pub open: bool,
    /// Closed when the first attacher with stdin closes it or leaves.
    pub once: bool,
}

/// How a container's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerExit {
    /// The exit code, or 128 + the signal (as a shell reports it).
    pub code: i32,
    pub signal: Option<i32>,
    /// The guest's OOM kills in the container's cgroup by the time it ended (0 from an
    /// agent before protocol minor 10).
    pub oom_kills: u64,
}

impl ContainerExit {
    /// Whether the OOM killer had struck in the container: its reason is then `OOMKilled`,
    /// as containerd's CRI plugin reports it, even if a child was killed and its main
    /// process ended of its own accord.
    pub fn oom_killed(&self) -> bool {
        self.oom_kills > 0
    }
}

const SIGTERM: i32 = 15;
const SIGKILL: i32 = 9;

impl Sandbox {
    /// Attaches the image's layers (those not attached already) and creates the container;
    /// on failure, what it attached is detached again.
    pub async fn create_container(&mut self, mut spec: ContainerSpec) -> Result<(), SandboxError> {
        if self.containers.contains_key(&spec.id) {
            return Err(SandboxError::ContainerExists(spec.id));
        }
        self.place_dir_disks(&mut spec);
        // The spec is checked before any layer is attached; the serials come after.
        let mut request = create_request(
            &spec.id,
            &spec.spec,
            spec.files,
            Vec::new(),
            self.writable_serial.clone(),
        )?;
        if !request.seccomp_filters.is_empty() && self.agent_minor < vpod_proto::SECCOMP_MINOR {
            // An older agent would run the container unconfined.
            return Err(SandboxError::AgentTooOld {
                what: "seccomp",
                agent_minor: self.agent_minor,
                needed: vpod_proto::SECCOMP_MINOR,
            });
        }
        request.stdin = spec.stdin.open;
        request.stdin_once = spec.stdin.open && spec.stdin.once;
        let opened = self.open_volume_disks(&spec.block_volumes, &spec.dir_disks)?;
        request.mounts = self.bind_volumes(&spec.id, &spec.spec)?;
        let RootfsSource::Layers(layers) = &spec.rootfs;
        // The serials of the disks the container uses: its layers', then its volumes'.
        let mut serials = Vec::new();
        let mut attached = self.attach_layers(layers, &mut serials).await;
        request.layer_serials = serials.clone();
        if attached.is_ok() {
            attached = self
                .attach_block_volumes(opened, &mut serials, &mut request.devices)
                .await;
        }
        let result = match attached {
            Ok(()) => {
                let mut agent = self.agent.clone();
                self.guarded(
                    "creating a container",
                    call(
                        "CreateContainer",
                        self.rpc_timeout,
                        agent.create_container(request),
                    ),
                )
                .await
                .map(drop)
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.containers.insert(spec.id, serials);
                self.persist()
            }
            Err(e) => {
                // Layers and block volumes alike.
                self.release_layers(&serials).await;
                self.unbind_volumes(&spec.id);
                Err(e)
            }
        }
    }

    /// Binds the spec's volumes under the pod's share (`c/<id>/<n>`); the agent's mounts
    /// of them. On failure nothing of the container's is left bound.
    fn bind_volumes(&self, id: &str, spec: &Spec) -> Result<Vec<Mount>, SandboxError> {
        let volumes = volumes(spec)?;
        if volumes.is_empty() {
            return Ok(Vec::new());
        }
        let Some(share) = &self.share else {
            let targets: Vec<&str> = volumes.iter().map(|v| v.destination.as_str()).collect();
            return Err(SpecError::Mounts(targets.join(", ")).into());
        };
        if self.agent_minor < vpod_proto::SHARE_MINOR {
            return Err(SandboxError::AgentTooOld {
                what: "volumes",
                agent_minor: self.agent_minor,
                needed: vpod_proto::SHARE_MINOR,
            });
        }
        let mut mounts = Vec::new();
        for (index, volume) in volumes.into_iter().enumerate() {
            match share.bind(id, index, &volume.bind) {
                Ok(relative) => mounts.push(Mount {
                    source: format!("{}/{relative}", vpod_proto::SHARE_GUEST_DIR),
                    destination: volume.destination,
                    r#type: "bind".to_string(),
                    options: volume.guest_options,
                }),
                Err(e) => {
                    self.unbind_volumes(id);
                    return Err(SandboxError::Volume(volume.destination, e));
                }
            }
        }
        Ok(mounts)
    }

    /// Unmounts the container's volumes from the share (a failure leaves them to the pod's
    /// removal, which unmounts everything under its directory).
    fn unbind_volumes(&self, id: &str) {
        if let Some(share) = &self.share {
            let _ = share.unbind_container(id);
        }
    }

    async fn attach_layers(
        &mut self,
        layers: &[ImageLayer],
        serials: &mut Vec<String>,
    ) -> Result<(), SandboxError> {
        for layer in layers {
            let serial = layer_serial(&layer.diff_id);
            if !self.layers.acquire(&serial) {
                if self.layers.len() >= self.layer_slots as usize {
                    return Err(SandboxError::NoFreeSlot(
                        layer.diff_id.hex(),
                        self.layer_slots,
                    ));
                }
                let slot = self.api.attach_read_only(&layer.path, &serial).await?;
                self.layers.attached(&serial, slot.slot);
            }
            serials.push(serial);
        }
        Ok(())
    }

    /// Moves the directory volumes that cannot have a disk of their own to the share, as
    /// bind mounts: those some container of the pod already used through the share, and
    /// new ones when the pod's disk slots would run out (what the layers and block volumes
    /// need first). A volume whose image exists stays on its disk. Without a share nothing
    /// moves: a full pod then refuses the container, naming the slots.
    fn place_dir_disks(&self, spec: &mut ContainerSpec) {
        if spec.dir_disks.is_empty() || self.share.is_none() {
            return;
        }
        let RootfsSource::Layers(layers) = &spec.rootfs;
        let mut wanted: HashSet<String> = layers
            .iter()
            .map(|layer| layer_serial(&layer.diff_id))
            .filter(|serial| !self.layers.contains(serial))
            .collect();
        let mut free = (self.layer_slots as usize)
            .saturating_sub(self.layers.len())
            .saturating_sub(wanted.len())
            // Counted as new: a block volume's serial is known once it is opened.
            .saturating_sub(spec.block_volumes.len());
        let mut shared = Vec::new();
        for volume in std::mem::take(&mut spec.dir_disks) {
            let on_disk = match dir_disk::placement(&volume.host_dir) {
                Placement::Disk(serial) => {
                    if !self.layers.contains(&serial) && wanted.insert(serial) {
                        free = free.saturating_sub(1);
                    }
                    true
                }
                Placement::Share => false,
                Placement::Either if free > 0 => {
                    free -= 1;
                    true
                }
                Placement::Either => false,
            };
            if on_disk {
                spec.dir_disks.push(volume);
            } else {
                shared.push(volume);
            }
        }
        if shared.is_empty() {
            return;
        }
        let mut mounts = spec.spec.mounts().clone().unwrap_or_default();
        for volume in shared {
            let options = [
                "rbind",
                if volume.read_only { "ro" } else { "rw" },
                "rprivate",
            ];
            mounts.push(
                oci_spec::runtime::Mount::default()
                    .set_destination(volume.container_path.into())
                    .set_source(Some(volume.host_dir))
                    .set_typ(Some("bind".into()))
                    .set_options(Some(options.map(String::from).to_vec()))
                    .clone(),
            );
        }
        spec.spec.set_mounts(Some(mounts));
    }

    /// Opens and checks the container's block volumes and makes or opens its directory
    /// volumes' images, before anything is attached; each with how the agent presents it.
    fn open_volume_disks(
        &self,
        volumes: &[BlockVolume],
        dir_disks: &[DirDisk],
    ) -> Result<Vec<(OpenedVolume, BlockDevice)>, SandboxError> {
        let needs = |what, needed| {
            if self.agent_minor < needed {
                return Err(SandboxError::AgentTooOld {
                    what,
                    agent_minor: self.agent_minor,
                    needed,
                });
            }
            Ok(())
        };
        if !volumes.is_empty() {
            needs("block volumes", vpod_proto::DEVICES_MINOR)?;
        }
        if !dir_disks.is_empty() {
            needs(
                "volumes on disks of their own",
                vpod_proto::FILESYSTEM_DEVICES_MINOR,
            )?;
        }
        let mut opened = Vec::with_capacity(volumes.len() + dir_disks.len());
        for volume in volumes {
            let disk = block_volume::open(volume)
                .map_err(|e| SandboxError::BlockVolume(volume.container_path.clone(), e))?;
            let device = BlockDevice {
                serial: disk.serial.clone(),
                container_path: volume.container_path.clone(),
                read_only: volume.read_only,
                filesystem: String::new(),
            };
            opened.push((disk, device));
        }
        for volume in dir_disks {
            let disk = dir_disk::open(volume)
                .map_err(|e| SandboxError::DirDisk(volume.container_path.clone(), e))?;
            let device = BlockDevice {
                serial: disk.serial.clone(),
                container_path: volume.container_path.clone(),
                read_only: volume.read_only,
                filesystem: "ext4".into(),
            };
            opened.push((disk, device));
        }
        Ok(opened)
    }

    /// Attaches each volume disk not attached already (a pod's disks share the layers'
    /// slots and their use counts) and names it to the agent.
    async fn attach_block_volumes(
        &mut self,
        opened: Vec<(OpenedVolume, BlockDevice)>,
        serials: &mut Vec<String>,
        devices: &mut Vec<BlockDevice>,
    ) -> Result<(), SandboxError> {
        for (volume, device) in opened {
            let serial = volume.serial;
            if !self.layers.acquire(&serial) {
                if self.layers.len() >= self.layer_slots as usize {
                    return Err(SandboxError::NoFreeSlotForVolume {
                        host_path: volume.host_path,
                        slots: self.layer_slots,
                    });
                }
                let slot = self
                    .api
                    .attach_file(volume.file, volume.read_only, &serial)
                    .await?;
                self.layers.attached(&serial, slot.slot);
            }
            serials.push(serial);
            devices.push(device);
        }
        Ok(())
    }

    async fn release_layers(&mut self, serials: &[String]) {
        for serial in serials {
            if let Some(slot) = self.layers.release(serial) {
                // A failed detach leaves a slot in use until the pod stops; nothing to undo.
                let _ = self.api.detach(slot).await;
            }
        }
    }

    /// Starts the container's main process; its pid in the guest.
    pub async fn start_container(&self, id: &str) -> Result<u32, SandboxError> {
        self.known(id)?;
        let mut agent = self.agent.clone();
        let request = StartContainerRequest { id: id.to_string() };
        let reply = self
            .guarded(
                "starting a container",
                call(
                    "StartContainer",
                    self.rpc_timeout,
                    agent.start_container(request),
                ),
            )
            .await?;
        Ok(reply.pid)
    }

    /// The container's stdout and stderr: what is buffered, then live chunks until both close.
    pub async fn stdio(&self, id: &str) -> Result<ContainerOutput, SandboxError> {
        self.stdio_from(id, 0).await
    }

    /// As [`Sandbox::stdio`], resuming at byte `offset` of the container's combined output
    /// (each chunk carries its own `offset`, so a reader can persist where it got to). A
    /// chunk that holds `offset` comes cut there; bytes the guest no longer keeps are
    /// reported in the first chunk's `dropped_bytes`. 0 starts at the oldest kept byte.
    pub async fn stdio_from(&self, id: &str, offset: u64) -> Result<ContainerOutput, SandboxError> {
        self.read_stdio(id, offset, false).await
    }

    /// As [`Sandbox::stdio_from`], but the stream ends at the output's end as of this call
    /// instead of following the container (`vpod logs` without -f).
    pub async fn stdio_until_now(
        &self,
        id: &str,
        offset: u64,
    ) -> Result<ContainerOutput, SandboxError> {
        self.read_stdio(id, offset, true).await
    }

    async fn read_stdio(
        &self,
        id: &str,
        offset: u64,
        no_follow: bool,
    ) -> Result<ContainerOutput, SandboxError> {
        self.known(id)?;
        let mut agent = self.agent.clone();
        let request = ReadStdioRequest {
            container_id: id.to_string(),
            from_offset: offset,
            no_follow,
        };
        self.guarded(
            "opening a container's output",
            call("ReadStdio", self.rpc_timeout, agent.read_stdio(request)),
        )
        .await
        .map(ContainerOutput::new)
    }

    /// Waits for the main process to end (no deadline: it fails when the VM ends or the
    /// agent stops answering keepalives).
    pub async fn wait(&self, id: &str) -> Result<ContainerExit, SandboxError> {
        self.known(id)?;
        let mut agent = self.agent.clone();
        let request = WaitContainerRequest { id: id.to_string() };
        let wait = async {
            agent
                .wait_container(request)
                .await
                .map(|r| r.into_inner())
                .map_err(|status| AgentError::Status {
                    call: "WaitContainer",
                    status: Box::new(status),
                })
        };
        let reply = self.guarded("waiting for a container", wait).await?;
        let (code, signal) = match reply.status {
            Some(Status::Signal(signal)) => (128 + signal, Some(signal)),
            Some(Status::ExitCode(code)) => (code, None),
            None => (255, None),
        };
        Ok(ContainerExit {
            code,
            signal,
            oom_kills: reply.oom_kills,
        })
    }

    pub async fn signal(&self, id: &str, signal: i32) -> Result<(), SandboxError> {
        self.known(id)?;
        let mut agent = self.agent.clone();
        let request = SignalContainerRequest {
            id: id.to_string(),
            signal,
        };
        self.guarded(
            "signalling a container",
            call(
                "SignalContainer",
                self.rpc_timeout,
                agent.signal_container(request),
            ),
        )
        .await
        .map(drop)
    }

    /// SIGTERM, then SIGKILL if the process outlives `grace`; how it ended.
    pub async fn stop_container(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<ContainerExit, SandboxError> {
        self.signal(id, SIGTERM).await?;
        match tokio::time::timeout(grace, self.wait(id)).await {
            Ok(exit) => exit,
            Err(_) => {
                self.signal(id, SIGKILL).await?;
                self.wait(id).await
            }
        }
    }

    /// Runs `args` in the container and collects its output; `timeout` 0 waits forever
    /// (the agent kills the process on timeout and says so).
    pub async fn exec_sync(
        &self,
        id: &str,
        args: Vec<String>,
        timeout: Duration,
    ) -> Result<ExecResult, SandboxError> {
        self.known(id)?;
        let mut agent = self.agent.clone();
        let request = ExecSyncRequest {
            container_id: id.to_string(),
            args,
            timeout_ms: timeout.as_millis().try_into().unwrap_or(u64::MAX),
            ..Default::default()
        };
        let limit = if timeout.is_zero() {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            timeout + self.rpc_timeout
        };
        self.guarded(
            "running a process in a container",
            call("ExecSync", limit, agent.exec_sync(request)),
        )
        .await
        .map(ExecResult::from)
    }

    /// Removes the container (killing it if it runs) and detaches the layers and block
    /// volumes no one else uses (the agent wrote what the container left dirty first).
    pub async fn remove_container(&mut self, id: &str) -> Result<(), SandboxError> {
        self.known(id)?;
        let mut agent = self.agent.clone();
        let request = RemoveContainerRequest { id: id.to_string() };
        let removed = self
            .guarded(
                "removing a container",
                call(
                    "RemoveContainer",
                    self.rpc_timeout,
                    agent.remove_container(request),
                ),
            )
            .await;
        match removed {
            Ok(_) => {}
            // The guest's part was done by an earlier call that failed after it: the
            // host's part is still to do.
            Err(SandboxError::Agent(AgentError::Status { status, .. }))
                if status.code() == tonic::Code::NotFound => {}
            Err(e) => return Err(e),
        }
        let serials = self.containers.remove(id).unwrap_or_default();
        self.release_layers(&serials).await;
        let unbound = match &self.share {
            Some(share) => share.unbind_container(id).map_err(SandboxError::from),
            None => Ok(()),
        };
        self.persist()?;
        unbound
    }

    /// Ids of the containers created in this pod and not removed.
    pub fn containers(&self) -> Vec<String> {
        self.containers.keys().cloned().collect()
    }

    fn known(&self, id: &str) -> Result<(), SandboxError> {
        if self.containers.contains_key(id) {
            Ok(())
        } else {
            Err(SandboxError::NoSuchContainer(id.to_string()))
        }
    }
}

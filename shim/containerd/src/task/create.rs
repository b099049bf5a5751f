//! Create: the sandbox task boots the pod's VM; a container task is created in it (a
//! container without a pod boots a VM of its own first).

use std::path::Path;

use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{TaskCreate, TaskIO};
use containerd_shim_protos::ttrpc::Code;
use vpod_image::LayerStore;
use vpod_sandbox::{ContainerSpec, ContainerStdin, RootfsSource, Sandbox};

use super::io::StdioPaths;
use super::process::Process;
use super::{error, internal, Service, TaskRecord, TtrpcResult};
use crate::bundle::{guest_spec, Bundle, Role};
use crate::{pod, rootfs, settings};

/// The file in a bundle naming the pod whose VM its task booted, for `delete` after a
/// crash of the shim.
pub const SANDBOX_MARKER: &str = "vpod-sandbox-id";

impl Service {
    pub(super) async fn create_task(
        &self,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let exists = self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&req.id);
        if exists {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("task {} already exists", req.id),
            ));
        }
        let bundle = Bundle::read(Path::new(&req.bundle))
            .map_err(|e| error(Code::INVALID_ARGUMENT, vpod_proto::error_chain(&e)))?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let sandbox_id = settings::sandbox_id(&bundle.group(&req.id));
        if matches!(bundle.role, Role::Sandbox | Role::Alone) {
            self.boot_pod(&req.bundle, &sandbox_id, &bundle).await?;
        }
        if bundle.role != Role::Sandbox {
            let created = self.create_container(&req, &bundle, &stdio).await;
            if let Err(e) = created {
                if bundle.role == Role::Alone {
                    self.stop_pod().await;
                }
                return Err(e);
            }
        }
        let pid = self.vmm_pid().await;
        let mut main = Process::new(stdio.clone(), None);
        main.pid = pid;
        self.shared
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                req.id.clone(),
                TaskRecord {
                    bundle: req.bundle.clone(),
                    role: bundle.role.clone(),
                    sandbox_id,
                    main,
                    execs: Default::default(),
                },
            );
        self.publish(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: containerd_shim_protos::protobuf::MessageField::some(TaskIO {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                terminal: stdio.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        })
        .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn boot_pod(
        &self,
        bundle_dir: &str,
        sandbox_id: &str,
        bundle: &Bundle,
    ) -> TtrpcResult<()> {
        let mut pod = self.shared.pod.write().await;
        if pod.is_some() {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("this shim already runs pod {sandbox_id}'s VM"),
            ));
        }
        // What a killed shim of the same pod may have left.
        pod::destroy_leftovers(&self.shared.state_dir, sandbox_id);
        let marker = Path::new(bundle_dir).join(SANDBOX_MARKER);
        std::fs::write(&marker, sandbox_id)
            .map_err(|e| internal(&format!("writing {}", marker.display()), &e))?;
        let cgroup = crate::cgroup::make(bundle, sandbox_id);
        let booted = pod::boot(
            &self.shared.config,
            &self.shared.state_dir,
            sandbox_id,
            bundle,
            cgroup.clone(),
        )
        .await;
        let booted = match booted {
            Ok(booted) => booted,
            Err(e) => {
                pod::destroy_leftovers(&self.shared.state_dir, sandbox_id);
                if let Some(dir) = cgroup {
                    crate::cgroup::remove_off_thread(sandbox_id, dir).await;
                }
                return Err(internal("booting the pod's VM", &e));
            }
        };
        *self.shared.pod_cgroup() = cgroup;
        log::info!("pod {sandbox_id}: VM up, VMM pid {}", booted.vmm_pid());
        *pod = Some(booted);
        drop(pod);
        self.watch_vm();
        Ok(())
    }

    async fn create_container(
        &self,
        req: &api::CreateTaskRequest,
        bundle: &Bundle,
        stdio: &StdioPaths,
    ) -> TtrpcResult<()> {
        let root = self.shared.config.root.clone();
        let mounts = req.rootfs.clone();
        let layers = tokio::task::spawn_blocking(move || {
            let store =
                LayerStore::open(&root).map_err(|e| internal("opening the layer store", &e))?;
            rootfs::layers(&store, &mounts)
                .map_err(|e| error(Code::INVALID_ARGUMENT, vpod_proto::error_chain(&e)))
        })
        .await
        .map_err(|e| internal("converting the container's root", &e))??;
        let spec = ContainerSpec {
            id: req.id.clone(),
            spec: guest_spec(bundle.spec.clone()),
            rootfs: RootfsSource::Layers(layers),
            files: Vec::new(),
            stdin: ContainerStdin {
                open: !stdio.stdin.is_empty(),
                once: false,
            },
            block_volumes: Vec::new(),
            dir_disks: Vec::new(),
        };
        let mut pod = self.shared.pod.write().await;
        let sandbox = pod.as_mut().ok_or_else(|| {
            error(
                Code::FAILED_PRECONDITION,
                format!(
                    "container {} belongs to a pod whose VM this shim does not run",
                    req.id
                ),
            )
        })?;
        sandbox
            .create_container(spec)
            .await
            .map_err(|e| sandbox_error("creating the container", &e))
    }

    pub(super) async fn vmm_pid(&self) -> u32 {
        self.shared
            .pod
            .read()
            .await
            .as_ref()
            .map_or(0, Sandbox::vmm_pid)
    }

    /// Stops the pod's VM, if this shim runs one, and removes its directory.
    pub(super) async fn stop_pod(&self) {
        // The VM and its cgroup leave together, under the pod's lock.
        let (sandbox, cgroup) = {
            let mut slot = self.shared.pod.write().await;
            (slot.take(), self.shared.pod_cgroup().take())
        };
        if let Some(sandbox) = sandbox {
            let id = sandbox.id().to_owned();
            if let Err(e) = sandbox.stop().await {
                log::warn!("stopping pod {id}: {}", vpod_proto::error_chain(&e));
            }
            pod::destroy_leftovers(&self.shared.state_dir, &id);
            if let Some(dir) = cgroup {
                crate::cgroup::remove_off_thread(&id, dir).await;
            }
        }
    }
}

/// A sandbox error as a ttrpc status: the spec's faults are the caller's, the rest ours.
pub(super) fn sandbox_error(
    what: &str,
    e: &vpod_sandbox::SandboxError,
) -> containerd_shim_protos::ttrpc::Error {
    use vpod_sandbox::SandboxError as E;
    let code = match e {
        E::Spec(_) | E::BadId(_) => Code::INVALID_ARGUMENT,
        E::NoSuchContainer(_) => Code::NOT_FOUND,
        E::ContainerExists(_) => Code::ALREADY_EXISTS,
        _ => Code::INTERNAL,
    };
    error(code, format!("{what}: {}", vpod_proto::error_chain(e)))
}

//! The shim's process lifecycle, as containerd drives it: `start` (spawn the serving shim
//! for the pod, or find the one already serving it), serving the task API, and `delete`
//! (clean up after a shim that died).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config as ShimConfig, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use vpod_cri::config::Config;

use crate::bundle::Bundle;
use crate::task::Service;
use crate::{pod, settings};

/// The status containerd is told of a task whose shim died (as SIGKILLed).
const DEAD_SHIM_STATUS: u32 = 137;

pub struct VpodShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    config: Config,
}

#[async_trait]
impl Shim for VpodShim {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut ShimConfig) -> Self {
        let config = match settings::load() {
            Ok(config) => config,
            Err(e) => {
                // containerd logs what a failing shim writes to stderr.
                eprintln!("containerd-shim-vpod-v2: {}", vpod_proto::error_chain(&e));
                std::process::exit(1);
            }
        };
        VpodShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            config,
        }
    }

    /// Runs in the bundle: the containers of one CRI pod share the shim of its sandbox.
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let bundle = Bundle::read(Path::new("."))
            .map_err(|e| Error::InvalidArgument(vpod_proto::error_chain(&e)))?;
        let group = bundle.group(&opts.id);
        let address = spawn(opts, &group, Vec::new()).await?;
        // containerd reconnects through this file after a restart.
        std::fs::write("address", &address).map_err(|e| Error::IoError {
            context: "writing the bundle's address file".to_owned(),
            err: e,
        })?;
        Ok(address)
    }

    /// Runs in the bundle of a task whose shim is gone: a VM it booted is killed and its
    /// directory removed.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        if let Ok(id) = std::fs::read_to_string(crate::task::SANDBOX_MARKER) {
            let state_dir = settings::state_dir(&self.config, &self.namespace);
            let id = settings::sandbox_id(id.trim());
            pod::destroy_leftovers(&state_dir, &id);
            // The pod's cgroup, recomputed from the bundle (the working directory).
            crate::cgroup::remove_for_bundle(Path::new("."), &id);
        }
        let now = std::time::SystemTime::now();
        Ok(DeleteResponse {
            exit_status: DEAD_SHIM_STATUS,
            exited_at: crate::task::timestamp(now),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        Service::new(
            self.namespace.clone(),
            publisher,
            self.exit.clone(),
            self.config.clone(),
        )
    }
}

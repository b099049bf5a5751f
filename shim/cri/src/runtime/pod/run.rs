//! RunPodSandbox: the pod's network (CNI), then its VM, the record written first so that a
//! daemon killed on the way leaves something for recovery to undo.

use std::sync::{Arc, Mutex};

use tokio::sync::RwLock;
use vpod_proto::cri::LinuxContainerResources;
use vpod_sandbox::{Sandbox, SandboxConfig};

use crate::logformat::now_ns;
use crate::runtime::pod::network::PodNetworkSetup;
use crate::runtime::{lock, pod_name_key, Pod, Runtime, RuntimeError};
use crate::sizing::{pod_size, PodSize};
use crate::state::{PodPhase, PodRecord, PodSettings};

/// A validated RunPodSandbox request: the settings its record keeps and what sizes its VM.
#[derive(Debug, Clone, Default)]
pub struct RunPod {
    pub settings: PodSettings,
    pub resources: Option<LinuxContainerResources>,
    pub overhead: Option<LinuxContainerResources>,
}

impl Runtime {
    /// Boots the pod's VM; its id.
    pub async fn run_pod(&self, request: RunPod) -> Result<String, RuntimeError> {
        let pod = &request.settings;
        let name_key = pod_name_key(pod);
        if !self.reserve_name(name_key.clone()) {
            return Err(RuntimeError::AlreadyExists(format!(
                "a pod sandbox named {:?} in namespace {:?} (uid {:?}, attempt {}) already exists",
                pod.name, pod.namespace, pod.uid, pod.attempt
            )));
        }
        let result = self.boot_pod(request).await;
        if result.is_err() {
            self.release_name(&name_key);
        }
        result
    }

    async fn boot_pod(&self, request: RunPod) -> Result<String, RuntimeError> {
        let id = crate::ids::new_id()?;
        let size = pod_size(
            &self.config.pod,
            request.resources.as_ref(),
            request.overhead.as_ref(),
        );
        let mut record = PodRecord {
            id: id.clone(),
            settings: request.settings,
            created_at_ns: now_ns(),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            phase: PodPhase::Creating,
            reason: String::new(),
            network: None,
        };
        // The intent: a daemon killed from here on leaves this record for recovery.
        self.state.write_pod(&record)?;
        let network = match self.set_up_network(&record).await {
            Ok(network) => network,
            Err(e) => {
                let _ = self.state.remove_pod(&id);
                return Err(e);
            }
        };
        test_delay_after_network().await;
        let booted = self.boot_vm(&mut record, size, network).await;
        if booted.is_err() {
            self.tear_down_network_logged(&id).await;
            let _ = self.state.remove_pod(&id);
        }
        booted
    }

    /// Boots the pod's VM on its network and records the pod Ready.
    async fn boot_vm(
        &self,
        record: &mut PodRecord,
        size: PodSize,
        network: Option<PodNetworkSetup>,
    ) -> Result<String, RuntimeError> {
        let id = record.id.clone();

        let rules = &self.config.pod;
        let mut config = SandboxConfig::new(
            id.clone(),
            &self.root,
            &self.assets.vmm,
            &self.assets.kernel,
            &self.assets.initrd,
        );
        config.vcpus = size.vcpus;
        config.memory_mib = size.memory_mib;
        config.layer_slots = rules.layer_slots;
        config.writable_disk_bytes = rules.writable_disk_mib << 20;
        config.agent_timeout = std::time::Duration::from_secs(rules.agent_timeout_secs);
        config.rpc_timeout = self.rpc_timeout;
        // The VM outlives the daemon: a restarted vpod-cri re-attaches to it.
        config.die_with_parent = false;
        if let Some(network) = network {
            record.network = Some(network.record);
            self.state.write_pod(record)?;
            config.network = network.guest;
        }
        tracing::info!(pod = %id, name = %record.settings.name, vcpus = size.vcpus, memory_mib = size.memory_mib, "booting pod VM");
        let _slot = self
            .boot_slots
            .acquire()
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
        // Booting blocks in places (mkfs of the writable disk, spawning the VMM): on its
        // own thread, so that neither the other requests nor concurrent boots wait for it.
        let handle = tokio::runtime::Handle::current();
        let booted = tokio::task::spawn_blocking(move || handle.block_on(Sandbox::start(config)))
            .await
            .map_err(RuntimeError::BootTask);
        let sandbox = booted.and_then(|b| b.map_err(RuntimeError::from))?;
        tracing::info!(pod = %id, vmm_pid = sandbox.vmm_pid(), vmm_to_agent_ms = sandbox.timings().vmm_to_agent.as_millis() as u64, guest_network_ms = sandbox.timings().network.as_secs_f64() * 1000.0, "pod ready");
        record.phase = PodPhase::Ready;
        if let Err(e) = self.state.write_pod(record) {
            let _ = sandbox.stop().await;
            return Err(e.into());
        }
        let pod = Arc::new(Pod {
            id: id.clone(),
            record: Mutex::new(record.clone()),
            sandbox: RwLock::new(Some(sandbox)),
        });
        lock(&self.pods).insert(id.clone(), pod);
        Ok(id)
    }
}

/// A fault-injection hook for the crash tests: `VPOD_CRI_TEST_DELAY_RUNP_MS` pauses
/// RunPodSandbox once the pod's network exists and before its VM boots.
async fn test_delay_after_network() {
    let delay = std::env::var("VPOD_CRI_TEST_DELAY_RUNP_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = delay {
        tracing::warn!(ms, "test hook: pausing after the pod's network");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

//! RunPodSandbox: the pod's netns and tap, then its VM booting while the CNI plugins run,
//! then the guest's network; the record written first so that a daemon killed on the way
//! leaves something for recovery to undo.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::RwLock;
use vpod_proto::cri::LinuxContainerResources;
use vpod_sandbox::network::GuestNetwork;
use vpod_sandbox::{JailUsers, Sandbox, SandboxConfig, ShareConfig};

use super::cgroup::{make_pod_cgroup, pod_cgroup, remove_pod_cgroup};
use crate::logformat::now_ns;
use crate::runtime::{lock, pod_name_key, Pod, Runtime, RuntimeError};
use crate::sizing::{pod_size, PodSize};
use crate::state::{PodNetworkRecord, PodPhase, PodRecord, PodSettings};

/// A validated RunPodSandbox request: the settings its record keeps and what sizes its VM.
#[derive(Debug, Clone, Default)]
pub struct RunPod {
    pub settings: PodSettings,
    pub resources: Option<LinuxContainerResources>,
    pub overhead: Option<LinuxContainerResources>,
    /// The kubelet's `linux.cgroup_parent` (checked): the pod's cgroup goes under it.
    pub cgroup_parent: String,
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
        let cgroup = pod_cgroup(&request.cgroup_parent, &id)?;
        let mut record = PodRecord {
            id: id.clone(),
            settings: request.settings,
            created_at_ns: now_ns(),
            vcpus: size.vcpus,
            memory_mib: size.memory_mib,
            phase: PodPhase::Creating,
            reason: String::new(),
            network: None,
            cgroup: cgroup.as_ref().map(|c| c.dir()),
        };
        // The intent: a daemon killed from here on leaves this record for recovery.
        self.state.write_pod(&record)?;
        let made = match cgroup.as_ref().map(make_pod_cgroup).transpose() {
            Ok(_) => self.boot_on_network(&mut record, size).await,
            Err(e) => Err(e),
        };
        let sandbox = match made {
            Ok(sandbox) => sandbox,
            Err(e) => {
                self.tear_down_network_logged(&id).await;
                remove_pod_cgroup(&id, record.cgroup.as_deref()).await;
                let _ = self.state.remove_pod(&id);
                return Err(e);
            }
        };
        record.phase = PodPhase::Ready;
        if let Err(e) = self.state.write_pod(&record) {
            let _ = sandbox.stop().await;
            self.tear_down_network_logged(&id).await;
            remove_pod_cgroup(&id, record.cgroup.as_deref()).await;
            let _ = self.state.remove_pod(&id);
            return Err(e.into());
        }
        let pod = Arc::new(Pod {
            id: id.clone(),
            record: Mutex::new(record),
            sandbox: RwLock::new(Some(sandbox)),
        });
        lock(&self.pods).insert(id.clone(), pod);
        Ok(id)
    }

    /// The pod's netns and tap, then its VM booting on the tap while the CNI plugins run,
    /// then the guest's network as the plugins made it. On error the VM is gone; the
    /// caller tears the network down.
    async fn boot_on_network(
        &self,
        record: &mut PodRecord,
        size: PodSize,
    ) -> Result<Sandbox, RuntimeError> {
        let Some(prepared) = self.prepare_network(record).await? else {
            return self.boot_vm(record, size, GuestNetwork::default()).await;
        };
        record.network = Some(PodNetworkRecord {
            netns: prepared.netns.clone(),
            ips: Vec::new(),
        });
        self.state.write_pod(record)?;
        let nic = GuestNetwork {
            nics: vec![prepared.nic.clone()],
            routes: Vec::new(),
            netns: Some(prepared.netns.clone()),
        };
        let plugins = self.run_plugins(&record.id, prepared);
        let booted = self.boot_vm(record, size, nic).await;
        let vm_ready = Instant::now();
        // The plugins finish either way: their undo must not race a teardown.
        let network = plugins
            .await
            .map_err(RuntimeError::BootTask)
            .and_then(|made| made);
        let waited_ms = vm_ready.elapsed().as_secs_f64() * 1000.0;
        let mut sandbox = booted?;
        let configured = match network {
            Ok(network) => {
                test_delay_after_network().await;
                sandbox
                    .configure_network(&network.guest)
                    .await
                    .map(|()| network.record)
                    .map_err(RuntimeError::from)
            }
            Err(e) => Err(e),
        };
        match configured {
            Ok(network) => {
                tracing::info!(pod = %record.id, waited_for_cni_ms = waited_ms, guest_network_ms = sandbox.timings().network.as_secs_f64() * 1000.0, "pod network configured");
                record.network = Some(network);
                Ok(sandbox)
            }
            Err(e) => {
                let _ = sandbox.stop().await;
                Err(e)
            }
        }
    }

    /// Boots the pod's VM with `network`'s NICs (the guest configures them later).
    async fn boot_vm(
        &self,
        record: &PodRecord,
        size: PodSize,
        network: GuestNetwork,
    ) -> Result<Sandbox, RuntimeError> {
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
        config.network = network;
        config.defer_network = true;
        config.ksm = rules.ksm;
        config.share_boot_files = rules.share_boot_files;
        config.kernel_params = rules.kernel_params.clone();
        config.jail = rules.jail.then_some(JailUsers {
            first_uid: rules.jail_first_uid,
            count: rules.jail_uid_count,
        });
        config.cgroup = record.cgroup.clone();
        config.share = rules.volumes.then(|| ShareConfig {
            virtiofsd: rules
                .virtiofsd
                .clone()
                .unwrap_or_else(|| ShareConfig::default().virtiofsd),
        });
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
        tracing::info!(pod = %id, vmm_pid = sandbox.vmm_pid(), vmm_to_agent_ms = sandbox.timings().vmm_to_agent.as_millis() as u64, share_ms = sandbox.timings().share.as_millis() as u64, "pod VM ready");
        Ok(sandbox)
    }
}

/// A fault-injection hook for the crash tests: `VPOD_CRI_TEST_DELAY_RUNP_MS` pauses
/// RunPodSandbox once the CNI plugins are done and the VM is up, before the guest's
/// network is configured.
async fn test_delay_after_network() {
    let delay = std::env::var("VPOD_CRI_TEST_DELAY_RUNP_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = delay {
        tracing::warn!(ms, "test hook: pausing after the pod's network");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

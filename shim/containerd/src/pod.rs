//! The pod's VM: booted for the CRI sandbox (pause) container, or for a container that
//! has no pod, sized from the pod's annotations or the container's own limits, on the
//! pod's network namespace when it has one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::LinuxNamespaceType;
use vpod_cri::config::Config;
use vpod_cri::sizing::{pod_size, PodSize};
use vpod_proto::cri::LinuxContainerResources;
use vpod_sandbox::{JailUsers, Sandbox, SandboxConfig, SandboxError, ShareConfig};

use crate::bundle::{Bundle, SANDBOX_CPU_PERIOD, SANDBOX_CPU_QUOTA, SANDBOX_MEMORY};
use crate::network::{self, NetworkError};

/// The deadline of each short agent call.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the pod's VM could not be booted.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("the pod's VM could not be booted")]
    Boot(#[source] SandboxError),
    #[error("the boot task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Network(#[from] NetworkError),
}

/// The VM size for `bundle`: the CRI plugin's `sandbox-*` annotations (containerd 1.7 and
/// later) or, for a container without a pod, its own CPU and memory limits; the rules are
/// vpod-cri's ([`vpod_cri::sizing`]).
pub fn size(config: &Config, bundle: &Bundle) -> PodSize {
    let number = |key: &str| bundle.annotation(key).and_then(|v| v.parse::<i64>().ok());
    let limits = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref());
    let cpu = limits.and_then(|r| r.cpu().as_ref());
    let resources = LinuxContainerResources {
        cpu_period: number(SANDBOX_CPU_PERIOD)
            .or_else(|| cpu.and_then(|c| c.period()).map(|p| p as i64))
            .unwrap_or(0),
        cpu_quota: number(SANDBOX_CPU_QUOTA)
            .or_else(|| cpu.and_then(|c| c.quota()))
            .unwrap_or(0),
        memory_limit_in_bytes: number(SANDBOX_MEMORY)
            .or_else(|| {
                limits
                    .and_then(|r| r.memory().as_ref())
                    .and_then(|m| m.limit())
            })
            .unwrap_or(0),
        ..Default::default()
    };
    pod_size(&config.pod, Some(&resources), None)
}

/// The network namespace the CRI plugin made for the pod (where CNI already ran), as the
/// sandbox's spec names it; none for a container without one.
pub fn netns_path(bundle: &Bundle) -> Option<PathBuf> {
    bundle
        .spec
        .linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .and_then(|n| n.path().clone())
}

/// Boots pod `id`'s VM in `state_dir`, its VMM in the host cgroup `cgroup` if any.
pub async fn boot(
    config: &Config,
    state_dir: &Path,
    id: &str,
    bundle: &Bundle,
    cgroup: Option<PathBuf>,
) -> Result<Sandbox, PodError> {
    let size = size(config, bundle);
    let rules = &config.pod;
    let assets = config.assets();
    let mut sandbox = SandboxConfig::new(id, state_dir, assets.vmm, assets.kernel, assets.initrd);
    sandbox.vcpus = size.vcpus;
    sandbox.memory_mib = size.memory_mib;
    sandbox.layer_slots = rules.layer_slots;
    sandbox.writable_disk_bytes = rules.writable_disk_mib << 20;
    sandbox.agent_timeout = Duration::from_secs(rules.agent_timeout_secs);
    sandbox.rpc_timeout = RPC_TIMEOUT;
    // The VM outlives a killed shim until `containerd-shim-vpod-v2 delete` cleans up.
    sandbox.die_with_parent = false;
    sandbox.ksm = rules.ksm;
    sandbox.cgroup = cgroup;
    sandbox.jail = rules.jail.then_some(JailUsers {
        first_uid: rules.jail_first_uid,
        count: rules.jail_uid_count,
    });
    sandbox.share = rules.volumes.then(|| ShareConfig {
        virtiofsd: rules
            .virtiofsd
            .clone()
            .unwrap_or_else(|| ShareConfig::default().virtiofsd),
    });
    if let Some(netns) = netns_path(bundle) {
        sandbox.network = network::join(&netns, id)?;
    }
    log::info!(
        "booting pod VM {id}: {} vCPUs, {} MiB",
        size.vcpus,
        size.memory_mib
    );
    // Booting blocks in places (mkfs of the writable disk, spawning the VMM).
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(Sandbox::start(sandbox)))
        .await
        .map_err(PodError::Task)?
        .map_err(PodError::Boot)
}

/// Opens pod `id` for `containerd-shim-vpod-v2 delete`, or cleans up what is left of it.
pub fn destroy_leftovers(state_dir: &Path, id: &str) {
    if let Err(e) = vpod_sandbox::destroy_leftovers(state_dir, id) {
        log::warn!("cleaning up pod {id}: {}", vpod_proto::error_chain(&e));
    }
}

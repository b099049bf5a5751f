//! The pod's cgroup on the host, where its VMM and virtiofsd run so that the node charges
//! them to the pod: a leaf under the kubelet's `cgroup_parent` (`vpod_sandbox::cgroup`),
//! recorded in the pod's record before it is made, removed once the VM is gone
//! (StopPodSandbox, a failed RunPodSandbox, and recovery of a pod a crash left dead or
//! half-made). A request without a parent, or a host without cgroup v2, gets none: the pod
//! runs in vpod-cri's own cgroup, as before.

use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};

use vpod_sandbox::cgroup::{self, PodCgroup};

use crate::runtime::{error_chain, RuntimeError};

/// The cgroup2 mount, found once.
fn cgroup2_mount() -> Option<&'static Path> {
    static MOUNT: OnceLock<Option<PathBuf>> = OnceLock::new();
    MOUNT
        .get_or_init(|| match cgroup::cgroup2_mount() {
            Ok(Some(mount)) => Some(mount),
            Ok(None) => {
                tracing::warn!("no cgroup v2 hierarchy is mounted: pods' VMMs run in vpod-cri's own cgroup");
                None
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot find the cgroup v2 hierarchy: pods' VMMs run in vpod-cri's own cgroup");
                None
            }
        })
        .as_deref()
}

/// Where the cgroup of pod `id` goes under `parent` (not made yet); `None`: the pod runs
/// without one (said once in the log).
pub(in crate::runtime) fn pod_cgroup(
    parent: &str,
    id: &str,
) -> Result<Option<PodCgroup>, RuntimeError> {
    if parent.is_empty() {
        static SAID: Once = Once::new();
        SAID.call_once(|| {
            tracing::info!(
                "a pod without linux.cgroup_parent: its VMM runs in vpod-cri's own cgroup"
            );
        });
        return Ok(None);
    }
    let Some(mount) = cgroup2_mount() else {
        return Ok(None);
    };
    PodCgroup::under(mount, parent, id).map_err(RuntimeError::Cgroup)
}

/// Makes the pod's cgroup (and parents the kubelet has not made yet).
pub(in crate::runtime) fn make_pod_cgroup(cgroup: &PodCgroup) -> Result<(), RuntimeError> {
    cgroup.create().map_err(RuntimeError::Cgroup)
}

/// Removes the pod's cgroup `dir` once its processes are gone (waiting briefly for the last
/// of them, on a blocking thread); whether it is gone (so is none). A failure is logged.
pub(in crate::runtime) async fn remove_pod_cgroup(pod: &str, dir: Option<&Path>) -> bool {
    let Some(dir) = dir else {
        return true;
    };
    match cgroup::remove_off_thread(dir.to_path_buf()).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(pod, error = %error_chain(&e), "removing the pod's cgroup");
            false
        }
    }
}

//! Pod sandboxes, one file per verb (run: boot the VM; stop; remove; status; list), the
//! pod's network and cgroup on the host, and the watch that finds a pod whose VM died.

mod cgroup;
mod list;
pub(in crate::runtime) mod network;
mod remove;
mod run;
mod status;
mod stop;

use std::sync::Arc;

pub(in crate::runtime) use cgroup::remove_pod_cgroup;
pub use run::RunPod;

use super::{error_chain, Pod, Runtime};
use crate::state::PodPhase;

impl Runtime {
    /// Marks the pod NotReady (and its containers Exited) when its VMM has died.
    pub(in crate::runtime) async fn check_vm(&self, pod: &Pod) {
        let dead = match pod.sandbox.try_read() {
            Ok(slot) => slot.as_ref().is_some_and(|s| !s.vmm_running()),
            // Someone is changing the sandbox; they will see a dead VM themselves.
            Err(_) => false,
        };
        if dead {
            tracing::warn!(pod = %pod.id, "the pod's VM has exited");
            if let Err(e) = self.stop_pod_vm(pod, "VmExited", "VmExited").await {
                tracing::warn!(pod = %pod.id, error = %error_chain(&e), "cleaning up after a dead VM");
            }
        }
    }

    /// Watches every pod's VM every `period`.
    pub async fn watch_vms(self: Arc<Self>, period: std::time::Duration) {
        loop {
            tokio::time::sleep(period).await;
            for pod in self.all_pods() {
                if pod.record().phase == PodPhase::Ready {
                    self.check_vm(&pod).await;
                }
            }
        }
    }
}

//! ListPodSandbox: the pods a filter matches, their VMs checked first.

use crate::filters::PodFilter;
use crate::runtime::Runtime;
use crate::state::PodRecord;

impl Runtime {
    /// The records of the pods `filter` matches, oldest first.
    pub async fn list_pods(&self, filter: &PodFilter) -> Vec<PodRecord> {
        let mut pods = Vec::new();
        for pod in self.all_pods() {
            self.check_vm(&pod).await;
            let record = pod.record();
            if filter.matches(&record) {
                pods.push(record);
            }
        }
        pods.sort_by_key(|p| p.created_at_ns);
        pods
    }
}

//! ListContainers: the containers a filter matches, the pods' VMs checked first.

use crate::filters::ContainerFilter;
use crate::runtime::Runtime;
use crate::state::ContainerRecord;

impl Runtime {
    /// The records of the containers `filter` matches, oldest first.
    pub async fn list_containers(&self, filter: &ContainerFilter) -> Vec<ContainerRecord> {
        for pod in self.all_pods() {
            self.check_vm(&pod).await;
        }
        let mut list: Vec<ContainerRecord> = self
            .all_containers()
            .iter()
            .map(|c| c.record())
            .filter(|c| filter.matches(c))
            .collect();
        list.sort_by_key(|c| c.created_at_ns);
        list
    }
}

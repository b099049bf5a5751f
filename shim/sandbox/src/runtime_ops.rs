//! What a CRI runtime needs beyond the container lifecycle: a container's resource usage
//! and limits, the guest's memory, whether the VMM still runs, and undoing a container the guest may
//! have created while its creator died before recording it.

use oci_spec::runtime::LinuxResources;
use vpod_proto::v1::{
    ContainerStatsRequest, GuestInfoRequest, RemoveContainerRequest, UpdateContainerRequest,
};

use super::agent::{call, AgentError};
use super::output::{ContainerStats, GuestInfo};
use super::{Sandbox, SandboxError};

impl Sandbox {
    /// CPU time, memory and pids of a container (its cgroup in the guest).
    pub async fn container_stats(&self, id: &str) -> Result<ContainerStats, SandboxError> {
        if !self.containers.contains_key(id) {
            return Err(SandboxError::NoSuchContainer(id.to_string()));
        }
        let mut agent = self.agent.clone();
        let request = ContainerStatsRequest { id: id.to_string() };
        self.guarded(
            "reading a container's statistics",
            call(
                "ContainerStats",
                self.rpc_timeout,
                agent.container_stats(request),
            ),
        )
        .await
        .map(ContainerStats::from)
    }

    /// Rewrites the cgroup limits of a created or running container from the spec's
    /// resources (CPU shares, quota and period, memory and pids limits); those left unset
    /// keep their value. An exited container is refused by the agent (FailedPrecondition).
    pub async fn update_container(
        &self,
        id: &str,
        resources: &LinuxResources,
    ) -> Result<(), SandboxError> {
        if !self.containers.contains_key(id) {
            return Err(SandboxError::NoSuchContainer(id.to_string()));
        }
        let mut agent = self.agent.clone();
        let request = UpdateContainerRequest {
            id: id.to_string(),
            limits: Some(super::wire::cgroup_limits(Some(resources))),
        };
        self.guarded(
            "changing a container's resource limits",
            call(
                "UpdateContainer",
                self.rpc_timeout,
                agent.update_container(request),
            ),
        )
        .await
        .map(drop)
    }

    /// The guest's kernel, memory and vCPUs as the agent sees them.
    pub async fn guest_info(&self) -> Result<GuestInfo, SandboxError> {
        let mut agent = self.agent.clone();
        self.guarded(
            "reading the guest's information",
            call(
                "GuestInfo",
                self.rpc_timeout,
                agent.guest_info(GuestInfoRequest {}),
            ),
        )
        .await
        .map(GuestInfo::from)
    }

    /// Whether the VMM process is still running.
    pub fn vmm_running(&self) -> bool {
        self.vmm.try_wait().is_none()
    }

    /// Asks the agent to remove a container this sandbox has no record of (its creator died
    /// between the agent's answer and recording it); a container the agent does not know
    /// is not an error.
    pub async fn discard_unrecorded_container(&self, id: &str) -> Result<(), SandboxError> {
        let mut agent = self.agent.clone();
        let request = RemoveContainerRequest { id: id.to_string() };
        match call(
            "RemoveContainer",
            self.rpc_timeout,
            agent.remove_container(request),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(AgentError::Status { status, .. }) if status.code() == tonic::Code::NotFound => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

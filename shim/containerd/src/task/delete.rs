//! Delete: the container leaves the guest (its layers detached where no other container
//! uses them); the task that booted the VM stops it and removes the pod's directory.

use containerd_shim_protos::api;
use containerd_shim_protos::events::task::TaskDelete;
use containerd_shim_protos::ttrpc::Code;

use super::{error, not_found, timestamp, Service, TtrpcResult};
use crate::bundle::Role;
use crate::task::create::sandbox_error;

impl Service {
    pub(super) async fn delete_task(&self, id: &str) -> TtrpcResult<api::DeleteResponse> {
        let (role, running) = self.with_task(id, |t| {
            Ok((
                t.role.clone(),
                t.main.started && t.main.exit_status().is_none(),
            ))
        })?;
        if running {
            return Err(error(
                Code::FAILED_PRECONDITION,
                format!("task {id} is still running; kill it first"),
            ));
        }
        if role != Role::Sandbox {
            let mut pod = self.shared.pod.write().await;
            if let Some(sandbox) = pod.as_mut() {
                match sandbox.remove_container(id).await {
                    Ok(()) => {}
                    // The VM ended under it: nothing of it is left in the guest.
                    Err(_) if !sandbox.vmm_running() => {}
                    // Removed already (an earlier Delete that failed after the agent's part).
                    Err(vpod_sandbox::SandboxError::NoSuchContainer(_)) => {}

                    Err(e) => return Err(sandbox_error("removing the container", &e)),
                }
            }
        }
        if matches!(role, Role::Sandbox | Role::Alone) {
            self.stop_pod().await;
        }
        let record = self
            .shared
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .ok_or_else(|| not_found(format!("task {id} not found")))?;
        let exit = record.main.exit_status();
        let exit_status = exit.map_or(0, |e| e.code);
        let exited_at = exit.map_or_else(
            || timestamp(std::time::SystemTime::now()),
            |e| timestamp(e.at),
        );
        log::info!("task {id} deleted (pod {})", record.sandbox_id);
        self.publish(TaskDelete {
            container_id: id.to_owned(),
            pid: record.main.pid,
            exit_status,
            exited_at: exited_at.clone(),
            id: id.to_owned(),
            ..Default::default()
        })
        .await;
        Ok(api::DeleteResponse {
            pid: record.main.pid,
            exit_status,
            exited_at,
            ..Default::default()
        })
    }
}

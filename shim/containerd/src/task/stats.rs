//! Stats and Update: a container's cgroup (v2) in the guest, as runc's shim reports and
//! changes a cgroup on the host.

use containerd_shim_protos::api;
use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::ttrpc::Code;
use oci_spec::runtime::LinuxResources;

use super::{error, internal, not_found, Service, TtrpcResult};
use crate::bundle::Role;
use crate::task::create::sandbox_error;

/// The type URL containerd decodes cgroup v2 metrics by.
const METRICS_V2: &str = "io.containerd.cgroups.v2.Metrics";

impl Service {
    pub(super) async fn task_stats(&self, id: &str) -> TtrpcResult<api::StatsResponse> {
        let role = self.with_task(id, |t| Ok(t.role.clone()))?;
        let pod = self.shared.pod.read().await;
        let sandbox = pod
            .as_ref()
            .ok_or_else(|| not_found("the pod's VM is gone"))?;
        let metrics = if role == Role::Sandbox {
            // The pause container runs nothing: an empty cgroup.
            Metrics::default()
        } else {
            let stats = sandbox
                .container_stats(id)
                .await
                .map_err(|e| sandbox_error("reading the container's stats", &e))?;
            Metrics {
                pids: MessageField::some(PidsStat {
                    current: stats.pids_current,
                    ..Default::default()
                }),
                cpu: MessageField::some(CPUStat {
                    usage_usec: stats.cpu_usage_ns / 1000,
                    ..Default::default()
                }),
                memory: MessageField::some(MemoryStat {
                    usage: stats.memory_usage_bytes,
                    usage_limit: if stats.memory_limit_bytes == 0 {
                        u64::MAX
                    } else {
                        stats.memory_limit_bytes
                    },
                    ..Default::default()
                }),
                memory_events: MessageField::some(MemoryEvents {
                    oom_kill: stats.oom_kills,
                    ..Default::default()
                }),
                ..Default::default()
            }
        };
        let value = metrics
            .write_to_bytes()
            .map_err(|e| internal("encoding the metrics", &e))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(Any {
                type_url: METRICS_V2.to_owned(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    pub(super) async fn update_task(&self, req: api::UpdateTaskRequest) -> TtrpcResult<()> {
        let role = self.with_task(&req.id, |t| Ok(t.role.clone()))?;
        let value = req
            .resources
            .as_ref()
            .map(|any| any.value.as_slice())
            .unwrap_or(&[]);
        let resources: LinuxResources = serde_json::from_slice(value).map_err(|e| {
            error(
                Code::INVALID_ARGUMENT,
                format!("the resources are not valid OCI linux resources: {e}"),
            )
        })?;
        if role == Role::Sandbox {
            // The pod's VM keeps the size it booted with (no hotplug).
            return Ok(());
        }
        let pod = self.shared.pod.read().await;
        let sandbox = pod
            .as_ref()
            .ok_or_else(|| not_found("the pod's VM is gone"))?;
        sandbox
            .update_container(&req.id, &resources)
            .await
            .map_err(|e| sandbox_error("updating the container's limits", &e))
    }
}

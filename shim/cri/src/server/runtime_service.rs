//! RuntimeService: each RPC handed to its verb's room (`pod`, `container`); what has no
//! room of its own yet answers here.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vpod_proto::cri::runtime_service_server::RuntimeService;
use vpod_proto::cri::*;

use super::container::events::ContainerEventStream;
use super::{container, pod, runtime_status};
use crate::runtime::Runtime;

/// The CRI API version this server speaks.
const CRI_VERSION: &str = "v1";

pub struct RuntimeServer {
    runtime: Arc<Runtime>,
}

impl RuntimeServer {
    pub fn new(runtime: Arc<Runtime>) -> RuntimeServer {
        RuntimeServer { runtime }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl RuntimeService for RuntimeServer {
    async fn version(&self, _: Request<VersionRequest>) -> Reply<VersionResponse> {
        Ok(Response::new(VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "vpod".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: CRI_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<RunPodSandboxRequest>,
    ) -> Reply<RunPodSandboxResponse> {
        pod::run::run_pod_sandbox(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Reply<StopPodSandboxResponse> {
        pod::stop::stop_pod_sandbox(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Reply<RemovePodSandboxResponse> {
        pod::remove::remove_pod_sandbox(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Reply<PodSandboxStatusResponse> {
        pod::status::pod_sandbox_status(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Reply<ListPodSandboxResponse> {
        pod::list::list_pod_sandbox(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Reply<CreateContainerResponse> {
        container::create::create_container(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Reply<StartContainerResponse> {
        container::start::start_container(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Reply<StopContainerResponse> {
        container::stop::stop_container(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Reply<RemoveContainerResponse> {
        container::remove::remove_container(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Reply<ListContainersResponse> {
        container::list::list_containers(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Reply<ContainerStatusResponse> {
        container::status::container_status(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Reply<UpdateContainerResourcesResponse> {
        container::update::update_container_resources(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Reply<ReopenContainerLogResponse> {
        container::reopen_log::reopen_container_log(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn exec_sync(&self, request: Request<ExecSyncRequest>) -> Reply<ExecSyncResponse> {
        container::exec_sync::exec_sync(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn exec(&self, request: Request<ExecRequest>) -> Reply<ExecResponse> {
        container::exec::exec(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn attach(&self, request: Request<AttachRequest>) -> Reply<AttachResponse> {
        container::attach::attach(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn port_forward(
        &self,
        request: Request<PortForwardRequest>,
    ) -> Reply<PortForwardResponse> {
        pod::port_forward::port_forward(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Reply<ContainerStatsResponse> {
        container::stats::container_stats(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Reply<ListContainerStatsResponse> {
        container::stats::list_container_stats(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Reply<PodSandboxStatsResponse> {
        pod::stats::pod_sandbox_stats(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Reply<ListPodSandboxStatsResponse> {
        pod::stats::list_pod_sandbox_stats(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_runtime_config(
        &self,
        _: Request<UpdateRuntimeConfigRequest>,
    ) -> Reply<UpdateRuntimeConfigResponse> {
        // The pod CIDR is the only setting; pods have no network yet, so there is nothing
        // to apply.
        Ok(Response::new(UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Reply<StatusResponse> {
        Ok(Response::new(runtime_status::status(
            &self.runtime,
            request.into_inner(),
        )))
    }

    async fn checkpoint_container(
        &self,
        _: Request<CheckpointContainerRequest>,
    ) -> Reply<CheckpointContainerResponse> {
        Err(Status::unimplemented(
            "CheckpointContainer is not implemented by vpod",
        ))
    }

    type GetContainerEventsStream = ContainerEventStream;

    async fn get_container_events(
        &self,
        request: Request<GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        Ok(Response::new(container::events::get_container_events(
            &self.runtime,
            request.into_inner(),
        )))
    }

    async fn list_metric_descriptors(
        &self,
        _: Request<ListMetricDescriptorsRequest>,
    ) -> Reply<ListMetricDescriptorsResponse> {
        Ok(Response::new(ListMetricDescriptorsResponse::default()))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _: Request<ListPodSandboxMetricsRequest>,
    ) -> Reply<ListPodSandboxMetricsResponse> {
        Ok(Response::new(ListPodSandboxMetricsResponse::default()))
    }

    async fn runtime_config(
        &self,
        _: Request<RuntimeConfigRequest>,
    ) -> Reply<RuntimeConfigResponse> {
        Ok(Response::new(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }
}

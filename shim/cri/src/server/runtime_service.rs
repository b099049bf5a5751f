//! RuntimeService: thin handlers over [`Runtime`].

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};
use vpod_proto::cri::runtime_service_server::RuntimeService;
use vpod_proto::cri::*;

use super::convert;
use super::status;
use crate::ids::IdError;
use crate::runtime::{Runtime, RuntimeError};

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

/// Runs `work` on its own task: a client that gives up (the kubelet's deadline) must not
/// cancel a boot or a creation halfway, which would leave a half-made pod until a restart.
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, RuntimeError>> + Send + 'static,
) -> Result<T, Status> {
    match tokio::spawn(work).await {
        Ok(result) => result.map_err(status),
        Err(e) => Err(Status::internal(format!("The request's task failed: {e}"))),
    }
}

/// Stop and remove of a pod or container are idempotent in the CRI: one that is already
/// gone (removed, or never known under that id) has nothing left to reclaim.
fn gone_is_done(result: Result<(), RuntimeError>) -> Result<(), RuntimeError> {
    match result {
        Err(RuntimeError::Id(IdError::NotFound { .. })) => Ok(()),
        other => other,
    }
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{field}: is required")))
    } else {
        Ok(value)
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
        let run = convert::run_pod_request(request.into_inner()).map_err(status)?;
        let runtime = self.runtime.clone();
        let pod_sandbox_id = detached(async move { runtime.run_pod(run).await }).await?;
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<StopPodSandboxRequest>,
    ) -> Reply<StopPodSandboxResponse> {
        let id = request.into_inner().pod_sandbox_id;
        required(&id, "pod_sandbox_id")?;
        let runtime = self.runtime.clone();
        detached(async move { gone_is_done(runtime.stop_pod(&id).await) }).await?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<RemovePodSandboxRequest>,
    ) -> Reply<RemovePodSandboxResponse> {
        let id = request.into_inner().pod_sandbox_id;
        required(&id, "pod_sandbox_id")?;
        let runtime = self.runtime.clone();
        detached(async move { gone_is_done(runtime.remove_pod(&id).await) }).await?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<PodSandboxStatusRequest>,
    ) -> Reply<PodSandboxStatusResponse> {
        let request = request.into_inner();
        required(&request.pod_sandbox_id, "pod_sandbox_id")?;
        let pod = self
            .runtime
            .pod_status(&request.pod_sandbox_id)
            .await
            .map_err(status)?;
        let filter = crate::filters::ContainerFilter {
            pod_id: pod.id.clone(),
            ..Default::default()
        };
        let containers = self.runtime.list_containers(&filter).await;
        Ok(Response::new(PodSandboxStatusResponse {
            status: Some(convert::pod_status(&pod)),
            info: if request.verbose {
                convert::pod_info(&pod)
            } else {
                Default::default()
            },
            containers_statuses: containers.iter().map(convert::container_status).collect(),
            timestamp: crate::logformat::now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<ListPodSandboxRequest>,
    ) -> Reply<ListPodSandboxResponse> {
        let filter = convert::pod_filter(request.into_inner().filter);
        let pods = self.runtime.list_pods(&filter).await;
        Ok(Response::new(ListPodSandboxResponse {
            items: pods.iter().map(convert::pod_sandbox).collect(),
        }))
    }

    async fn create_container(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Reply<CreateContainerResponse> {
        let create = convert::create_container_request(request.into_inner()).map_err(status)?;
        let runtime = self.runtime.clone();
        let container_id = detached(async move { runtime.create_container(create).await }).await?;
        Ok(Response::new(CreateContainerResponse { container_id }))
    }

    async fn start_container(
        &self,
        request: Request<StartContainerRequest>,
    ) -> Reply<StartContainerResponse> {
        let id = request.into_inner().container_id;
        required(&id, "container_id")?;
        let runtime = self.runtime.clone();
        detached(async move { runtime.start_container(&id).await }).await?;
        Ok(Response::new(StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<StopContainerRequest>,
    ) -> Reply<StopContainerResponse> {
        let request = request.into_inner();
        required(&request.container_id, "container_id")?;
        let grace = Duration::from_secs(request.timeout.max(0) as u64);
        gone_is_done(
            self.runtime
                .stop_container(&request.container_id, grace)
                .await,
        )
        .map_err(status)?;
        Ok(Response::new(StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Reply<RemoveContainerResponse> {
        let id = request.into_inner().container_id;
        required(&id, "container_id")?;
        let runtime = self.runtime.clone();
        detached(async move { gone_is_done(runtime.remove_container(&id).await) }).await?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Reply<ListContainersResponse> {
        let filter = convert::container_filter(request.into_inner().filter);
        let containers = self.runtime.list_containers(&filter).await;
        Ok(Response::new(ListContainersResponse {
            containers: containers.iter().map(convert::container).collect(),
        }))
    }

    async fn container_status(
        &self,
        request: Request<ContainerStatusRequest>,
    ) -> Reply<ContainerStatusResponse> {
        let request = request.into_inner();
        required(&request.container_id, "container_id")?;
        let container = self
            .runtime
            .container_status(&request.container_id)
            .await
            .map_err(status)?;
        Ok(Response::new(ContainerStatusResponse {
            status: Some(convert::container_status(&container)),
            info: Default::default(),
        }))
    }

    async fn update_container_resources(
        &self,
        request: Request<UpdateContainerResourcesRequest>,
    ) -> Reply<UpdateContainerResourcesResponse> {
        let request = request.into_inner();
        let id = request.container_id;
        required(&id, "container_id")?;
        let linux = request.linux.ok_or_else(|| {
            Status::invalid_argument("linux: is required (only Linux resources apply)")
        })?;
        self.runtime
            .update_container_resources(&id, convert::container_limits(&linux))
            .await
            .map_err(status)?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<ReopenContainerLogRequest>,
    ) -> Reply<ReopenContainerLogResponse> {
        let id = request.into_inner().container_id;
        required(&id, "container_id")?;
        self.runtime.reopen_log(&id).await.map_err(status)?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    async fn exec_sync(&self, request: Request<ExecSyncRequest>) -> Reply<ExecSyncResponse> {
        let request = request.into_inner();
        required(&request.container_id, "container_id")?;
        if request.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd: is required"));
        }
        let timeout = Duration::from_secs(request.timeout.max(0) as u64);
        let out = self
            .runtime
            .exec_sync(&request.container_id, request.cmd, timeout)
            .await
            .map_err(status)?;
        Ok(Response::new(ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn exec(&self, _: Request<ExecRequest>) -> Reply<ExecResponse> {
        Err(Status::unimplemented(
            "Exec (streaming) is not implemented by vpod yet; use ExecSync (crictl exec -s).",
        ))
    }

    async fn attach(&self, _: Request<AttachRequest>) -> Reply<AttachResponse> {
        Err(Status::unimplemented(
            "Attach is not implemented by vpod yet; read the container's log instead.",
        ))
    }

    async fn port_forward(&self, _: Request<PortForwardRequest>) -> Reply<PortForwardResponse> {
        Err(Status::unimplemented(
            "PortForward is not implemented by vpod yet: pods have no network.",
        ))
    }

    async fn container_stats(
        &self,
        request: Request<ContainerStatsRequest>,
    ) -> Reply<ContainerStatsResponse> {
        let id = request.into_inner().container_id;
        required(&id, "container_id")?;
        let usage = self.runtime.container_stats(&id).await.map_err(status)?;
        Ok(Response::new(ContainerStatsResponse {
            stats: Some(convert::container_stats(&usage)),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<ListContainerStatsRequest>,
    ) -> Reply<ListContainerStatsResponse> {
        let filter = convert::container_stats_filter(request.into_inner().filter);
        let list = self.runtime.list_container_stats(&filter).await;
        Ok(Response::new(ListContainerStatsResponse {
            stats: list.iter().map(convert::container_stats).collect(),
        }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<PodSandboxStatsRequest>,
    ) -> Reply<PodSandboxStatsResponse> {
        let id = request.into_inner().pod_sandbox_id;
        required(&id, "pod_sandbox_id")?;
        let usage = self.runtime.pod_stats(&id).await.map_err(status)?;
        Ok(Response::new(PodSandboxStatsResponse {
            stats: Some(convert::pod_stats(&usage)),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<ListPodSandboxStatsRequest>,
    ) -> Reply<ListPodSandboxStatsResponse> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let pods = self
            .runtime
            .list_pods(&crate::filters::PodFilter {
                id: filter.id,
                ready: None,
                labels: filter.label_selector,
            })
            .await;
        let mut stats = Vec::new();
        for pod in pods {
            if let Ok(usage) = self.runtime.pod_stats(&pod.id).await {
                stats.push(convert::pod_stats(&usage));
            }
        }
        Ok(Response::new(ListPodSandboxStatsResponse { stats }))
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
        let assets = self.runtime.assets();
        let missing: Vec<String> = [&assets.kernel, &assets.initrd, &assets.vmm]
            .iter()
            .filter(|p| !p.exists())
            .map(|p| p.display().to_string())
            .collect();
        let runtime_ready = RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: missing.is_empty(),
            reason: if missing.is_empty() {
                String::new()
            } else {
                "AssetsMissing".into()
            },
            message: if missing.is_empty() {
                String::new()
            } else {
                format!("Missing: {}", missing.join(", "))
            },
        };
        let network_ready = RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: false,
            reason: "NoNetwork".into(),
            message: "vpod pods have no network yet.".into(),
        };
        let info = if request.into_inner().verbose {
            let config = serde_json::json!({
                "kernel": assets.kernel, "initrd": assets.initrd, "vmm": assets.vmm,
                "root": self.runtime.root(),
            });
            [("config".to_string(), config.to_string())].into()
        } else {
            Default::default()
        };
        Ok(Response::new(StatusResponse {
            status: Some(RuntimeStatus {
                conditions: vec![runtime_ready, network_ready],
            }),
            info,
            runtime_handlers: vec![RuntimeHandler {
                name: String::new(),
                features: Some(RuntimeHandlerFeatures::default()),
            }],
            features: Some(RuntimeFeatures::default()),
        }))
    }

    async fn checkpoint_container(
        &self,
        _: Request<CheckpointContainerRequest>,
    ) -> Reply<CheckpointContainerResponse> {
        Err(Status::unimplemented(
            "CheckpointContainer is not implemented by vpod.",
        ))
    }

    type GetContainerEventsStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

    async fn get_container_events(
        &self,
        _: Request<GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
        use tokio_stream::StreamExt;
        let runtime = self.runtime.clone();
        // A listener that falls behind gets an error, which ends its stream (tonic sends
        // the status as the trailer); the kubelet then relists and subscribes again.
        let stream =
            BroadcastStream::new(self.runtime.subscribe_events()).map(move |event| match event {
                Ok(event) => {
                    let snapshot = runtime.pod_snapshot(&event.pod_id);
                    Ok(convert::container_event(&event, snapshot))
                }
                Err(BroadcastStreamRecvError::Lagged(n)) => Err(Status::aborted(format!(
                    "the listener fell {n} events behind; subscribe again"
                ))),
            });
        Ok(Response::new(Box::pin(stream)))
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

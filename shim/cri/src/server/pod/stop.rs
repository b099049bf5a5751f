//! StopPodSandbox: stops the pod's VM and so every container in it; a stopped or unknown
//! pod is not an error.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use crate::runtime::Runtime;
use crate::server::common::{detached, gone_is_done, required};

pub(in crate::server) async fn stop_pod_sandbox(
    runtime: &Arc<Runtime>,
    request: cri::StopPodSandboxRequest,
) -> Result<cri::StopPodSandboxResponse, Status> {
    let id = request.pod_sandbox_id;
    required(&id, "pod_sandbox_id")?;
    let runtime = runtime.clone();
    detached(async move { gone_is_done(runtime.stop_pod(&id).await) }).await?;
    Ok(cri::StopPodSandboxResponse {})
}

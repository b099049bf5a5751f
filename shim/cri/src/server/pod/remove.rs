//! RemovePodSandbox: stops the pod if it runs and forgets it and its containers; an
//! unknown pod is not an error.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use crate::runtime::Runtime;
use crate::server::common::{detached, gone_is_done, required};

pub(in crate::server) async fn remove_pod_sandbox(
    runtime: &Arc<Runtime>,
    request: cri::RemovePodSandboxRequest,
) -> Result<cri::RemovePodSandboxResponse, Status> {
    let id = request.pod_sandbox_id;
    required(&id, "pod_sandbox_id")?;
    let runtime = runtime.clone();
    detached(async move { gone_is_done(runtime.remove_pod(&id).await) }).await?;
    Ok(cri::RemovePodSandboxResponse {})
}

//! StartContainer: starts a created container and follows its output into its log file.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use crate::runtime::Runtime;
use crate::server::common::{detached, required};

pub(in crate::server) async fn start_container(
    runtime: &Arc<Runtime>,
    request: cri::StartContainerRequest,
) -> Result<cri::StartContainerResponse, Status> {
    let id = request.container_id;
    required(&id, "container_id")?;
    let runtime = runtime.clone();
    detached(async move { runtime.start_container(&id).await }).await?;
    Ok(cri::StartContainerResponse {})
}

//! RemoveContainer: kills the container if it runs and forgets it; an unknown container is
//! not an error.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use crate::runtime::Runtime;
use crate::server::common::{detached, gone_is_done, required};

pub(in crate::server) async fn remove_container(
    runtime: &Arc<Runtime>,
    request: cri::RemoveContainerRequest,
) -> Result<cri::RemoveContainerResponse, Status> {
    let id = request.container_id;
    required(&id, "container_id")?;
    let runtime = runtime.clone();
    detached(async move { gone_is_done(runtime.remove_container(&id).await) }).await?;
    Ok(cri::RemoveContainerResponse {})
}

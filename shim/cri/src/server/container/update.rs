//! UpdateContainerResources: new cgroup limits for a created or running container; limits
//! left unset keep their value.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use super::limits;
use crate::runtime::Runtime;
use crate::server::bounds;
use crate::server::common::required;
use crate::server::status;

pub(in crate::server) async fn update_container_resources(
    runtime: &Arc<Runtime>,
    request: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse, Status> {
    let id = request.container_id;
    required(&id, "container_id")?;
    let linux = request.linux.ok_or_else(|| {
        Status::invalid_argument("linux: is required (only Linux resources apply)")
    })?;
    bounds::check_resources(Some(&linux), "linux").map_err(status)?;
    runtime
        .update_container_resources(&id, limits(&linux))
        .await
        .map_err(status)?;
    Ok(cri::UpdateContainerResourcesResponse {})
}

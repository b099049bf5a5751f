//! ReopenContainerLog: the running container's log file, reopened after the kubelet
//! rotated it.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use crate::runtime::Runtime;
use crate::server::common::required;
use crate::server::status;

pub(in crate::server) async fn reopen_container_log(
    runtime: &Arc<Runtime>,
    request: cri::ReopenContainerLogRequest,
) -> Result<cri::ReopenContainerLogResponse, Status> {
    let id = request.container_id;
    required(&id, "container_id")?;
    runtime.reopen_log(&id).await.map_err(status)?;
    Ok(cri::ReopenContainerLogResponse {})
}

//! StopContainer: SIGTERM, then SIGKILL after the request's timeout; a container that is
//! not running, or unknown, is not an error.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use vpod_proto::cri;

use crate::runtime::Runtime;
use crate::server::common::{gone_is_done, required};
use crate::server::status;

pub(in crate::server) async fn stop_container(
    runtime: &Arc<Runtime>,
    request: cri::StopContainerRequest,
) -> Result<cri::StopContainerResponse, Status> {
    required(&request.container_id, "container_id")?;
    let grace = Duration::from_secs(request.timeout.max(0) as u64);
    gone_is_done(runtime.stop_container(&request.container_id, grace).await).map_err(status)?;
    Ok(cri::StopContainerResponse {})
}

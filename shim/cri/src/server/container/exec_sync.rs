//! ExecSync: runs a command in a running container and gives back its output and exit
//! code.

use std::sync::Arc;
use std::time::Duration;

use tonic::Status;
use vpod_proto::cri;

use crate::runtime::Runtime;
use crate::server::common::required;
use crate::server::status;

pub(in crate::server) async fn exec_sync(
    runtime: &Arc<Runtime>,
    request: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, Status> {
    required(&request.container_id, "container_id")?;
    if request.cmd.is_empty() {
        return Err(Status::invalid_argument("cmd: is required"));
    }
    let timeout = Duration::from_secs(request.timeout.max(0) as u64);
    let out = runtime
        .exec_sync(&request.container_id, request.cmd, timeout)
        .await
        .map_err(status)?;
    Ok(cri::ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    })
}

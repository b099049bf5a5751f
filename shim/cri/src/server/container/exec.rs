//! Exec: the URL on the streaming server where the client runs a command in a running
//! container with its stdio streamed (the session itself is the runtime's streaming
//! backend's).

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;
use vpod_streaming::{ExecRequest, StreamRequest};

use crate::runtime::Runtime;
use crate::server::status;

pub(in crate::server) async fn exec(
    runtime: &Arc<Runtime>,
    request: cri::ExecRequest,
) -> Result<cri::ExecResponse, Status> {
    let request = StreamRequest::Exec(ExecRequest {
        container_id: request.container_id,
        cmd: request.cmd,
        tty: request.tty,
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
    });
    let url = runtime.streaming_url(request).map_err(status)?;
    Ok(cri::ExecResponse { url })
}

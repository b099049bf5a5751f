//! Attach: the URL on the streaming server where the client joins a running container's
//! main process (its output from then on, its stdin and terminal if it has them).

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;
use vpod_streaming::{AttachRequest, StreamRequest};

use crate::runtime::Runtime;
use crate::server::status;

pub(in crate::server) async fn attach(
    runtime: &Arc<Runtime>,
    request: cri::AttachRequest,
) -> Result<cri::AttachResponse, Status> {
    let request = StreamRequest::Attach(AttachRequest {
        container_id: request.container_id,
        tty: request.tty,
        stdin: request.stdin,
        stdout: request.stdout,
        stderr: request.stderr,
    });
    let url = runtime.streaming_url(request).map_err(status)?;
    Ok(cri::AttachResponse { url })
}

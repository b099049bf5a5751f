//! PortForward: the URL on the streaming server where the client opens connections to
//! ports on the pod's localhost, tunnelled into its VM (never dialled on the host).

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;
use vpod_streaming::{PortForwardRequest, StreamRequest};

use crate::runtime::{Runtime, RuntimeError};
use crate::server::status;

pub(in crate::server) async fn port_forward(
    runtime: &Arc<Runtime>,
    request: cri::PortForwardRequest,
) -> Result<cri::PortForwardResponse, Status> {
    let ports = request
        .port
        .iter()
        .map(|&port| {
            u16::try_from(port)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| RuntimeError::invalid("port", format!("{port} is not a port")))
        })
        .collect::<Result<Vec<u16>, _>>()
        .map_err(status)?;
    let request = StreamRequest::PortForward(PortForwardRequest {
        pod_sandbox_id: request.pod_sandbox_id,
        ports,
    });
    let url = runtime.streaming_url(request).map_err(status)?;
    Ok(cri::PortForwardResponse { url })
}

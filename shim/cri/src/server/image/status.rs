//! ImageStatus: the image a name, digest or id names; an absent image is an empty status,
//! not an error.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use super::{image, image_name};
use crate::runtime::Runtime;
use crate::server::status;

pub(in crate::server) async fn image_status(
    runtime: &Arc<Runtime>,
    request: cri::ImageStatusRequest,
) -> Result<cri::ImageStatusResponse, Status> {
    let name = image_name(request.image)?;
    let found = runtime
        .images()
        .status(&name)
        .await
        .map_err(|e| status(e.into()))?;
    Ok(cri::ImageStatusResponse {
        image: found.as_ref().map(image),
        info: Default::default(),
    })
}

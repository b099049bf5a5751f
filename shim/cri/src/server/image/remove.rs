//! RemoveImage: unless a container uses it; an absent image is not an error (the CRI asks
//! for idempotence).

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use super::image_name;
use crate::runtime::Runtime;
use crate::server::status;

pub(in crate::server) async fn remove_image(
    runtime: &Arc<Runtime>,
    request: cri::RemoveImageRequest,
) -> Result<cri::RemoveImageResponse, Status> {
    let name = image_name(request.image)?;
    let in_use = runtime.image_users();
    runtime
        .images()
        .remove(&name, move |info| in_use.contains_key(&info.id))
        .await
        .map_err(|e| status(e.into()))?;
    Ok(cri::RemoveImageResponse {})
}

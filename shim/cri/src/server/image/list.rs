//! ListImages: every image, or those a name, digest or id picks.

use std::sync::Arc;

use tonic::Status;
use vpod_proto::cri;

use super::image;
use crate::runtime::Runtime;
use crate::server::status;

pub(in crate::server) async fn list_images(
    runtime: &Arc<Runtime>,
    request: cri::ListImagesRequest,
) -> Result<cri::ListImagesResponse, Status> {
    let wanted = request
        .filter
        .and_then(|f| f.image)
        .map(|s| s.image)
        .filter(|s| !s.is_empty());
    let images = runtime
        .images()
        .list()
        .await
        .map_err(|e| status(e.into()))?;
    Ok(cri::ListImagesResponse {
        images: images
            .iter()
            .filter(|i| {
                wanted.as_ref().is_none_or(|w| {
                    i.id == *w || i.repo_tags.contains(w) || i.repo_digests.contains(w)
                })
            })
            .map(image)
            .collect(),
    })
}

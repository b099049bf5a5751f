//! PullImage: from its registry, with the request's credentials for this pull only, or an
//! `oci:` layout on the host.

use std::sync::Arc;

use tonic::Status;
use vpod_image::registry::RegistryAuth;
use vpod_proto::cri;

use super::image_name;
use crate::runtime::Runtime;
use crate::server::status;

pub(in crate::server) async fn pull_image(
    runtime: &Arc<Runtime>,
    request: cri::PullImageRequest,
) -> Result<cri::PullImageResponse, Status> {
    let name = image_name(request.image)?;
    let auth = request.auth.map(|a| RegistryAuth {
        username: a.username,
        password: a.password,
        auth: a.auth,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    });
    tracing::info!(image = %name, with_credentials = auth.is_some(), "pulling");
    let info = runtime
        .images()
        .pull(&name, auth)
        .await
        .map_err(|e| status(e.into()))?;
    Ok(cri::PullImageResponse { image_ref: info.id })
}

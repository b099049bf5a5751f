//! ImageService: thin handlers over [`crate::images::Images`].

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vpod_proto::cri::image_service_server::ImageService;
use vpod_proto::cri::*;

use super::status;
use crate::images::ImageInfo;
use crate::runtime::{Runtime, RuntimeError};
use vpod_image::registry::RegistryAuth;

pub struct ImageServer {
    runtime: Arc<Runtime>,
}

impl ImageServer {
    pub fn new(runtime: Arc<Runtime>) -> ImageServer {
        ImageServer { runtime }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn image(info: &ImageInfo) -> Image {
    let user = &info.image.config.user;
    let size = info.size_bytes.max(1);
    let (uid, username) = match user.split(':').next().unwrap_or("") {
        "" => (None, String::new()),
        name => match name.parse::<i64>() {
            Ok(uid) => (Some(Int64Value { value: uid }), String::new()),
            Err(_) => (None, name.to_string()),
        },
    };
    Image {
        id: info.id.clone(),
        repo_tags: info.repo_tags.clone(),
        repo_digests: info.repo_digests.clone(),
        size,
        uid,
        username,
        spec: Some(ImageSpec {
            image: info.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

fn image_name(spec: Option<ImageSpec>) -> Result<String, Status> {
    spec.map(|s| s.image)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::invalid_argument("image.image: is required"))
}

#[tonic::async_trait]
impl ImageService for ImageServer {
    async fn list_images(&self, request: Request<ListImagesRequest>) -> Reply<ListImagesResponse> {
        let wanted = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = self
            .runtime
            .images()
            .list()
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(ListImagesResponse {
            images: images
                .iter()
                .filter(|i| {
                    wanted.as_ref().is_none_or(|w| {
                        i.id == *w || i.repo_tags.contains(w) || i.repo_digests.contains(w)
                    })
                })
                .map(image)
                .collect(),
        }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Reply<ImageStatusResponse> {
        let name = image_name(request.into_inner().image)?;
        let found = self
            .runtime
            .images()
            .status(&name)
            .await
            .map_err(|e| status(e.into()))?;
        // An absent image is not an error: the status is simply empty.
        Ok(Response::new(ImageStatusResponse {
            image: found.as_ref().map(image),
            info: Default::default(),
        }))
    }

    async fn pull_image(&self, request: Request<PullImageRequest>) -> Reply<PullImageResponse> {
        let request = request.into_inner();
        let name = image_name(request.image)?;
        let auth = request.auth.map(|a| RegistryAuth {
            username: a.username,
            password: a.password,
            auth: a.auth,
            identity_token: a.identity_token,
            registry_token: a.registry_token,
        });
        tracing::info!(image = %name, with_credentials = auth.is_some(), "pulling");
        let info = self
            .runtime
            .images()
            .pull(&name, auth)
            .await
            .map_err(|e| status(e.into()))?;
        Ok(Response::new(PullImageResponse { image_ref: info.id }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Reply<RemoveImageResponse> {
        let name = image_name(request.into_inner().image)?;
        let in_use = self.runtime.image_users();
        // Removing an image that is not there succeeds (the CRI asks for idempotence).
        self.runtime
            .images()
            .remove(&name, move |info| in_use.contains_key(&info.id))
            .await
            .map_err(|e| status(RuntimeError::from(e)))?;
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(&self, _: Request<ImageFsInfoRequest>) -> Reply<ImageFsInfoResponse> {
        let usage = self
            .runtime
            .images()
            .fs_usage()
            .await
            .map_err(|e| status(e.into()))?;
        let timestamp = usage
            .timestamp
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let usage = FilesystemUsage {
            timestamp,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: usage.mountpoint.display().to_string(),
            }),
            used_bytes: Some(UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(UInt64Value {
                value: usage.inodes_used,
            }),
        };
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![usage],
            container_filesystems: Vec::new(),
        }))
    }
}

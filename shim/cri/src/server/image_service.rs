//! ImageService: each RPC handed to its verb's room (`image`).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vpod_proto::cri::image_service_server::ImageService;
use vpod_proto::cri::*;

use super::image;
use crate::runtime::Runtime;

pub struct ImageServer {
    runtime: Arc<Runtime>,
}

impl ImageServer {
    pub fn new(runtime: Arc<Runtime>) -> ImageServer {
        ImageServer { runtime }
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl ImageService for ImageServer {
    async fn list_images(&self, request: Request<ListImagesRequest>) -> Reply<ListImagesResponse> {
        image::list::list_images(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Reply<ImageStatusResponse> {
        image::status::image_status(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn pull_image(&self, request: Request<PullImageRequest>) -> Reply<PullImageResponse> {
        image::pull::pull_image(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Reply<RemoveImageResponse> {
        image::remove::remove_image(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn image_fs_info(
        &self,
        request: Request<ImageFsInfoRequest>,
    ) -> Reply<ImageFsInfoResponse> {
        image::fs_info::image_fs_info(&self.runtime, request.into_inner())
            .await
            .map(Response::new)
    }
}

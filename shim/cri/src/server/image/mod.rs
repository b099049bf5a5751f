//! The image verbs, one file each: the image store's records in CRI terms.

pub(super) mod fs_info;
pub(super) mod list;
pub(super) mod pull;
pub(super) mod remove;
pub(super) mod status;

use tonic::Status;
use vpod_proto::cri;

use crate::images::ImageInfo;

fn image(info: &ImageInfo) -> cri::Image {
    let user = &info.image.config.user;
    let size = info.size_bytes.max(1);
    let (uid, username) = match user.split(':').next().unwrap_or("") {
        "" => (None, String::new()),
        name => match name.parse::<i64>() {
            Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
            Err(_) => (None, name.to_string()),
        },
    };
    cri::Image {
        id: info.id.clone(),
        repo_tags: info.repo_tags.clone(),
        repo_digests: info.repo_digests.clone(),
        size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: info.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

fn image_name(spec: Option<cri::ImageSpec>) -> Result<String, Status> {
    spec.map(|s| s.image)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::invalid_argument("image.image: is required"))
}

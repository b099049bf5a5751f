//! The images containers run, for the ImageService and CreateContainer: a thin async face
//! over `vpod_image::registry::Images` (pulls from OCI distribution registries, names, ids,
//! garbage collection of layer disks).
//!
//! Besides registry references, PullImage takes `oci:PATH[:TAG]`, an OCI layout on the
//! host, which is imported and named `localhost/<last path component>:<TAG>` (TAG defaults
//! to `latest`): `oci:/srv/images/default:latest` becomes `localhost/default:latest`.

use std::path::PathBuf;

use vpod_image::registry::{
    ImageRecord, Images as Registry, ImagesError, RegistryAuth, RegistryOptions,
};
use vpod_image::LayerStore;

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no image {0:?} is in the store")]
    NotFound(String),
    #[error(transparent)]
    Registry(#[from] ImagesError),
    #[error("the image task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// One image as the ImageService shows it.
pub type ImageInfo = ImageRecord;

/// Disk use of the image store.
pub use vpod_image::registry::FsUsage;

/// The images of the runtime's layer store.
pub struct Images {
    registry: Registry,
}

/// The name an imported OCI layout gets: `localhost/<dir name>:<tag>`.
pub fn layout_name(reference: &str) -> Option<String> {
    let rest = reference.strip_prefix("oci:")?;
    // PATH[:TAG]: a tag has no '/'.
    let (path, tag) = match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.contains('/') && !tag.is_empty() => (path, tag),
        _ => (rest, "latest"),
    };
    let name = PathBuf::from(path)
        .file_name()?
        .to_str()?
        .to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    (valid(&name) && valid(tag)).then(|| format!("localhost/{name}:{tag}"))
}

impl Images {
    pub fn open(store: LayerStore, options: RegistryOptions) -> Result<Images, ImageError> {
        Ok(Images {
            registry: Registry::open(store, options)?,
        })
    }

    /// Pulls `reference` from its registry (with `auth` for this pull only), or imports an
    /// `oci:` layout.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<ImageInfo, ImageError> {
        if reference.starts_with("oci:") {
            let registry = self.registry.clone();
            let reference = reference.to_string();
            let name = layout_name(&reference);
            return Ok(tokio::task::spawn_blocking(move || {
                registry.import_oci_layout(&reference, name.as_deref())
            })
            .await??);
        }
        Ok(self.registry.pull(reference, auth).await?)
    }

    pub async fn list(&self) -> Result<Vec<ImageInfo>, ImageError> {
        let registry = self.registry.clone();
        Ok(tokio::task::spawn_blocking(move || registry.list()).await??)
    }

    /// The image `wanted` (a name, a repo digest, an id or an id prefix) names, if present.
    pub async fn status(&self, wanted: &str) -> Result<Option<ImageInfo>, ImageError> {
        let registry = self.registry.clone();
        let wanted = wanted.to_string();
        match tokio::task::spawn_blocking(move || registry.status(&wanted)).await? {
            Ok(found) => Ok(found),
            // A string that is no valid name names no image.
            Err(ImagesError::InvalidReference(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Removes the image unless `in_use` says a container uses it; then the layer disks
    /// no image references. An absent image is not an error.
    pub async fn remove(
        &self,
        wanted: &str,
        in_use: impl Fn(&ImageInfo) -> bool + Send + 'static,
    ) -> Result<(), ImageError> {
        let registry = self.registry.clone();
        let wanted = wanted.to_string();
        match tokio::task::spawn_blocking(move || registry.remove(&wanted, &in_use)).await? {
            Ok(_) | Err(ImagesError::InvalidReference(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn fs_usage(&self) -> Result<FsUsage, ImageError> {
        let registry = self.registry.clone();
        Ok(tokio::task::spawn_blocking(move || registry.fs_usage()).await??)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_named_after_their_directory_and_tag() {
        assert_eq!(
            layout_name("oci:/work/build/images/default:latest").as_deref(),
            Some("localhost/default:latest")
        );
        assert_eq!(
            layout_name("oci:/srv/Busybox").as_deref(),
            Some("localhost/busybox:latest")
        );
        assert_eq!(
            layout_name("oci:./img:v1.2").as_deref(),
            Some("localhost/img:v1.2")
        );
        assert_eq!(layout_name("busybox"), None);
        assert_eq!(layout_name("oci:/"), None);
        assert_eq!(layout_name("oci:/x/we ird:1"), None);
    }
}

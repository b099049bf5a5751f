//! The images containers run, for the ImageService and CreateContainer: a thin async face
//! over `vpod_image::registry::Images` (pulls from OCI distribution registries, names, ids,
//! garbage collection of layer disks).
//!
//! Besides registry references, PullImage takes `oci:PATH[:TAG]`, an OCI layout on the
//! host, which is imported and named `localhost/<last path component>:<TAG>` (TAG defaults
//! to `latest`): `oci:/srv/images/default:latest` becomes `localhost/default:latest`.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vpod_image::registry::progress::{PullEvent, PullObserver};
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
        let log = PullLog::default();
        let started = Instant::now();
        let image = self
            .registry
            .pull_with_progress(reference, auth, &log)
            .await?;
        if log.resolved() {
            tracing::info!(
                "pulled {reference} in {:.2} s ({} MB of layer disks)",
                started.elapsed().as_secs_f64(),
                image.size_bytes / 1_000_000
            );
        }
        Ok(image)
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

/// How often a pull in progress is logged.
const PULL_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Logs a pull at info level: what it fetches, then its progress every few seconds.
#[derive(Default)]
struct PullLog {
    state: Mutex<Option<PullLogState>>,
}

struct PullLogState {
    reference: String,
    sizes: Vec<u64>,
    fetched: Vec<u64>,
    ready: usize,
    started: Instant,
    last_logged: Instant,
}

impl PullLog {
    fn resolved(&self) -> bool {
        self.state.lock().is_ok_and(|state| state.is_some())
    }
}

impl PullObserver for PullLog {
    fn event(&self, event: &PullEvent) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match event {
            PullEvent::Resolved { reference, layers } => {
                let to_fetch: Vec<u64> = layers
                    .iter()
                    .map(|layer| if layer.in_store { 0 } else { layer.size })
                    .collect();
                let fetching = to_fetch.iter().filter(|size| **size > 0).count();
                tracing::info!(
                    "pulling {reference}: {} layers, {fetching} to fetch ({} MB), {} already in the store",
                    layers.len(),
                    to_fetch.iter().sum::<u64>() / 1_000_000,
                    layers.len() - fetching
                );
                let now = Instant::now();
                *state = Some(PullLogState {
                    reference: reference.clone(),
                    fetched: vec![0; layers.len()],
                    sizes: to_fetch,
                    ready: 0,
                    started: now,
                    last_logged: now,
                });
            }
            PullEvent::Fetched { index, bytes } => {
                let Some(state) = state.as_mut() else { return };
                if let Some(fetched) = state.fetched.get_mut(*index) {
                    *fetched = *bytes;
                }
                if state.last_logged.elapsed() >= PULL_LOG_INTERVAL {
                    state.last_logged = Instant::now();
                    let fetched: u64 = state.fetched.iter().sum();
                    let total: u64 = state.sizes.iter().sum();
                    let secs = state.started.elapsed().as_secs_f64().max(0.001);
                    tracing::info!(
                        "pulling {}: {} of {} MB fetched ({:.1} MB/s), {} of {} layers ready",
                        state.reference,
                        fetched / 1_000_000,
                        total / 1_000_000,
                        fetched as f64 / secs / 1e6,
                        state.ready,
                        state.sizes.len()
                    );
                }
            }
            PullEvent::LayerReady { .. } => {
                if let Some(state) = state.as_mut() {
                    state.ready += 1;
                }
            }
        }
    }
}

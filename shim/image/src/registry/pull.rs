//! One pull: join a pull of the same reference already in flight, or fetch the manifest and
//! config, download the layer blobs the store lacks into a staging layout, import it, and
//! name the image.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::digest::Digest;
use crate::oci::layout::{OciLayout, ResolvedImage, ResolvedLayer};
use crate::registry::fetch::{endpoint, is_loopback, Fetcher, RemoteImage};
use crate::registry::{
    catalog, ImageRecord, ImageReference, Images, ImagesError, RegistryAuth, Shared,
};
use crate::store::LayerStoreError;

/// Staging directories are `pull.<pid>.<n>` under the store's staging directory.
const STAGING_PREFIX: &str = "pull.";
/// Imports retried when garbage collection removed a layer the pull counted on.
const IMPORT_ATTEMPTS: usize = 3;

impl Images {
    /// Pulls `reference` (normalized: `busybox` is `docker.io/library/busybox:latest`) with
    /// `auth`, and returns the image. A pull of the same normalized reference already in
    /// flight in this process is joined: this call waits for it and returns its image
    /// (pulling itself only if that one failed).
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<RegistryAuth>,
    ) -> Result<ImageRecord, ImagesError> {
        let image = ImageReference::parse(reference)?;
        let slot = InFlight::join(self, image.to_string());
        let mut finished = slot.slot.lock().await;
        if let Some(manifest_digest) = *finished {
            // Another pull of this reference finished while we waited.
            if let Ok(record) = self.record_of_manifest(&manifest_digest) {
                return Ok(record);
            }
        }
        let record = self.pull_from_registry(&image, auth.as_ref()).await?;
        *finished = Some(record.image.manifest_digest);
        Ok(record)
    }

    /// The image's manifest and config, over HTTPS (or plain HTTP where listed insecure);
    /// a loopback registry that HTTPS cannot reach is asked again over plain HTTP.
    async fn resolve(
        shared: &Shared,
        image: &ImageReference,
        auth: Option<&RegistryAuth>,
    ) -> Result<(Fetcher, RemoteImage), ImagesError> {
        let fetcher = Fetcher::new(shared, image, auth, false)?;
        let first = fetcher.resolve().await;
        let endpoint = endpoint(shared, image);
        let listed = shared.options.insecure_registries.contains(&endpoint);
        match first {
            Err(ImagesError::Registry { .. }) if !listed && is_loopback(&endpoint) => {
                let fetcher = Fetcher::new(shared, image, auth, true)?;
                let remote = fetcher.resolve().await?;
                Ok((fetcher, remote))
            }
            other => other.map(|remote| (fetcher, remote)),
        }
    }

    async fn pull_from_registry(
        &self,
        image: &ImageReference,
        auth: Option<&RegistryAuth>,
    ) -> Result<ImageRecord, ImagesError> {
        let shared = &self.shared;
        shared.registry_pulls.fetch_add(1, Ordering::Relaxed);
        let (fetcher, remote) = Self::resolve(shared, image, auth).await?;
        let staging = Staging::create(&shared.store.staging_dir())?;
        let layout = staging.write_documents(&remote)?;
        let resolved = remote.image;
        let reference_text = image.to_string();
        let top_digest = remote.top_digest;
        let mut attempt = 0;
        let imported = loop {
            attempt += 1;
            self.download_missing_layers(&fetcher, &layout, &resolved)
                .await?;
            let images = self.clone();
            let layout_dir = layout.dir().to_owned();
            let resolved = resolved.clone();
            let reference_text = reference_text.clone();
            let result = tokio::task::spawn_blocking(move || {
                images.shared.store.import_resolved(
                    &OciLayout::new(layout_dir),
                    &resolved,
                    &reference_text,
                )
            })
            .await
            .map_err(ImagesError::Task)?;
            match result {
                Err(LayerStoreError::LayerBlobMissing { .. }) if attempt < IMPORT_ATTEMPTS => {
                    continue
                }
                other => break other?,
            }
        };
        shared
            .layers_converted
            .fetch_add(imported.converted.len() as u64, Ordering::Relaxed);
        drop(staging);

        let images = self.clone();
        let image = image.clone();
        let manifest_digest = imported.image.manifest_digest;
        tokio::task::spawn_blocking(move || {
            catalog::record_names(&images.shared.store, &image, &manifest_digest, &top_digest)?;
            images.record_of_manifest(&manifest_digest)
        })
        .await
        .map_err(ImagesError::Task)?
    }

    /// Downloads into `layout` every layer blob that is neither there nor already converted
    /// in the store from that very blob.
    async fn download_missing_layers(
        &self,
        fetcher: &Fetcher,
        layout: &OciLayout,
        resolved: &ResolvedImage,
    ) -> Result<(), ImagesError> {
        let store = &self.shared.store;
        let mut missing = Vec::new();
        for ResolvedLayer { blob, diff_id } in &resolved.layers {
            let path = layout.blob_path(&blob.digest);
            let already_fetched = path.exists() || missing.iter().any(|(_, p)| *p == path);
            if !already_fetched && !store.has_verified_layer(diff_id, &blob.digest)? {
                missing.push((blob.clone(), path));
            }
        }
        let concurrency = self.shared.options.max_concurrent_downloads.max(1);
        stream::iter(missing)
            .map(|(descriptor, path)| async move {
                // Downloaded beside its final name, which then means "complete".
                let partial = path.with_extension("partial");
                fetcher.download_blob(&descriptor, &partial).await?;
                fs::rename(&partial, &path).map_err(ImagesError::io("rename", &partial))?;
                self.shared.blobs_downloaded.fetch_add(1, Ordering::Relaxed);
                Ok::<(), ImagesError>(())
            })
            .buffer_unordered(concurrency)
            .try_collect::<()>()
            .await
    }
}

/// Membership of a reference's pull slot; leaving drops the slot once nobody holds it.
struct InFlight {
    images: Images,
    key: String,
    slot: Arc<tokio::sync::Mutex<Option<Digest>>>,
}

impl InFlight {
    fn join(images: &Images, key: String) -> InFlight {
        let mut in_flight = lock_ignoring_poison(&images.shared.in_flight);
        let slot = Arc::clone(in_flight.entry(key.clone()).or_default());
        InFlight {
            images: images.clone(),
            key,
            slot,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut in_flight = lock_ignoring_poison(&self.images.shared.in_flight);
        // The map's reference and ours: nobody else waits on this slot.
        if Arc::strong_count(&self.slot) == 2 {
            in_flight.remove(&self.key);
        }
    }
}

fn lock_ignoring_poison<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A pull's staging layout, removed with everything in it when dropped.
struct Staging {
    dir: PathBuf,
}

impl Staging {
    fn create(staging_root: &Path) -> Result<Staging, ImagesError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = staging_root.join(format!("{STAGING_PREFIX}{}.{n}", std::process::id()));
        let blobs = dir.join("blobs/sha256");
        let staging = Staging { dir };
        fs::create_dir_all(&blobs).map_err(ImagesError::io("create", &blobs))?;
        Ok(staging)
    }

    /// Writes the verified manifest and config blobs, and returns the layout.
    fn write_documents(&self, remote: &RemoteImage) -> Result<OciLayout, ImagesError> {
        let layout = OciLayout::new(&self.dir);
        for (digest, bytes) in [
            (&remote.image.manifest_digest, &remote.manifest_bytes),
            (&remote.image.config_digest, &remote.config_bytes),
        ] {
            let path = layout.blob_path(digest);
            fs::write(&path, bytes).map_err(ImagesError::io("write", &path))?;
        }
        Ok(layout)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Removes staging directories whose process is gone (a crashed or killed pull).
pub(super) fn remove_abandoned_staging(staging_root: &Path) -> Result<(), ImagesError> {
    let entries = match fs::read_dir(staging_root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ImagesError::io("list", staging_root)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(ImagesError::io("list", staging_root))?;
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(STAGING_PREFIX))
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if !alive {
            let path = entry.path();
            match fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImagesError::io("remove", &path)(e)),
            }
        }
    }
    Ok(())
}

//! One pull: join a pull of the same reference already in flight, or fetch the manifest and
//! config, fetch and convert (as they stream, `stream.rs`) the layers the store lacks,
//! record the image, and name it.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};

use crate::digest::{DiffId, Digest};
use crate::oci::layout::{ResolvedImage, ResolvedLayer};
use crate::registry::fetch::{endpoint, is_loopback, Fetcher, RemoteImage};
use crate::registry::progress::{LayerPlan, PullEvent, PullObserver, Quiet};
use crate::registry::{
    catalog, ImageRecord, ImageReference, Images, ImagesError, RegistryAuth, Shared,
};
use crate::store::LayerStoreError;

/// Staging directories of earlier vpods were `pull.<pid>.<n>` under the store's staging directory.
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
        self.pull_with_progress(reference, auth, &Quiet).await
    }

    /// As `pull`, telling `observer` how it goes (nothing, when it joins a pull in flight).
    pub async fn pull_with_progress(
        &self,
        reference: &str,
        auth: Option<RegistryAuth>,
        observer: &dyn PullObserver,
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
        let record = self
            .pull_from_registry(&image, auth.as_ref(), observer)
            .await?;
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
        observer: &dyn PullObserver,
    ) -> Result<ImageRecord, ImagesError> {
        let shared = &self.shared;
        shared.registry_pulls.fetch_add(1, Ordering::Relaxed);
        let (fetcher, remote) = Self::resolve(shared, image, auth).await?;
        let resolved = remote.image;
        let reference_text = image.to_string();
        let top_digest = remote.top_digest;
        let mut attempt = 0;
        let imported = loop {
            attempt += 1;
            self.fetch_missing_layers(&fetcher, &reference_text, &resolved, observer)
                .await?;
            let images = self.clone();
            let resolved = resolved.clone();
            let reference_text = reference_text.clone();
            let result = tokio::task::spawn_blocking(move || {
                images
                    .shared
                    .store
                    .import_converted(&resolved, &reference_text)
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

    /// Fetches and converts, as they stream, the layers the store lacks (those not
    /// converted from that very blob), at most `max_concurrent_downloads` at a time.
    async fn fetch_missing_layers(
        &self,
        fetcher: &Fetcher,
        reference: &str,
        resolved: &ResolvedImage,
        observer: &dyn PullObserver,
    ) -> Result<(), ImagesError> {
        let store = &self.shared.store;
        let mut plans: Vec<LayerPlan> = Vec::with_capacity(resolved.layers.len());
        let mut missing = Vec::new();
        for (index, ResolvedLayer { blob, diff_id }) in resolved.layers.iter().enumerate() {
            // A blob listed twice is fetched once.
            let repeated = plans.iter().any(|plan| plan.digest == blob.digest);
            let in_store = repeated || store.has_verified_layer(diff_id, &blob.digest)?;
            if !in_store {
                missing.push((index, blob.clone(), *diff_id));
            }
            plans.push(LayerPlan {
                digest: blob.digest,
                size: blob.size,
                in_store,
            });
        }
        observer.event(&PullEvent::Resolved {
            reference: reference.to_owned(),
            layers: plans.clone(),
        });
        for (index, plan) in plans.iter().enumerate() {
            if plan.in_store {
                observer.event(&PullEvent::LayerReady {
                    index,
                    converted: false,
                });
            }
        }
        let concurrency = self.shared.options.max_concurrent_downloads.max(1);
        // Every started layer runs to its end (a conversion on its blocking thread cannot
        // be cancelled), so that a failure's clean-up sees all that was converted.
        let results: Vec<(DiffId, Result<bool, ImagesError>)> = stream::iter(missing)
            .map(|(index, descriptor, diff_id)| async move {
                let result = self
                    .fetch_and_convert(fetcher, index, &descriptor, diff_id, observer)
                    .await;
                (diff_id, result)
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let converted: Vec<DiffId> = results
            .iter()
            .filter(|(_, result)| matches!(result, Ok(true)))
            .map(|(diff_id, _)| *diff_id)
            .collect();
        let Some(error) = results.into_iter().find_map(|(_, result)| result.err()) else {
            return Ok(());
        };
        // A failed pull leaves no disk behind that no image uses.
        if !converted.is_empty() {
            let images = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                images
                    .shared
                    .store
                    .remove_layers_unless_referenced(&converted)
            })
            .await;
        }
        Err(error)
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

/// Removes staging directories whose process is gone: a crashed or killed pull of an
/// earlier vpod, which staged manifests and blobs there (pulls stream into the store now).
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

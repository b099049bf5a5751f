//! Turning the store's image records and names into `ImageRecord`s (one per config digest),
//! and finding one by tag, repo digest, id or id prefix.

use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::registry::{ImageRecord, ImageReference, ImagesError};
use crate::store::{ImportedImage, LayerStore};

/// An image and the manifests (store records) it is made of.
pub(super) struct CatalogEntry {
    pub record: ImageRecord,
    pub manifests: Vec<Digest>,
}

/// Every image in the store, sorted by id.
pub(super) fn entries(store: &LayerStore) -> Result<Vec<CatalogEntry>, ImagesError> {
    let names = store.image_names()?;
    let mut by_config: BTreeMap<Digest, Vec<ImportedImage>> = BTreeMap::new();
    for image in store.list_images()? {
        by_config
            .entry(image.config_digest)
            .or_default()
            .push(image);
    }
    let mut entries = Vec::with_capacity(by_config.len());
    for (config_digest, images) in by_config {
        let mut repo_tags = Vec::new();
        let mut repo_digests = Vec::new();
        for image in &images {
            repo_tags.extend(names.tags_of(&image.manifest_digest));
            if let Some(digests) = names.repo_digests.get(&image.manifest_digest) {
                repo_digests.extend(digests.iter().cloned());
            }
        }
        repo_tags.sort();
        repo_digests.sort();
        let manifests = images.iter().map(|image| image.manifest_digest).collect();
        // list_images sorts by manifest digest; prefer a tagged manifest.
        let image = images
            .iter()
            .find(|image| !names.tags_of(&image.manifest_digest).is_empty())
            .unwrap_or(&images[0])
            .clone();
        entries.push(CatalogEntry {
            record: ImageRecord {
                id: config_digest.to_string(),
                repo_tags,
                repo_digests,
                size_bytes: image.layers.iter().map(|layer| layer.size).sum(),
                image,
            },
            manifests,
        });
    }
    Ok(entries)
}

/// The entry `query` names: an exact id, a tag or repo digest (normalized), or a unique id
/// prefix.
pub(super) fn find<'a>(
    entries: &'a [CatalogEntry],
    query: &str,
) -> Result<Option<&'a CatalogEntry>, ImagesError> {
    if let Some(entry) = entries.iter().find(|entry| entry.record.id == query) {
        return Ok(Some(entry));
    }
    if let Ok(reference) = ImageReference::parse(query) {
        let found = match (&reference.digest, reference.tagged_name()) {
            (Some(digest), _) => {
                let wanted = reference.repo_digest(digest);
                let repository = format!("{}@", reference.repository_name());
                entries
                    .iter()
                    .find(|entry| entry.record.repo_digests.contains(&wanted))
                    .or_else(|| {
                        // The platform manifest of a multi-platform image, by its own digest.
                        entries.iter().find(|entry| {
                            entry.manifests.contains(digest)
                                && entry
                                    .record
                                    .repo_digests
                                    .iter()
                                    .any(|known| known.starts_with(&repository))
                        })
                    })
            }
            (None, Some(tag)) => entries
                .iter()
                .find(|entry| entry.record.repo_tags.contains(&tag)),
            (None, None) => None,
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    let prefix = query.strip_prefix("sha256:").unwrap_or(query);
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Ok(None);
    }
    let matching: Vec<&CatalogEntry> = entries
        .iter()
        .filter(|entry| entry.record.id["sha256:".len()..].starts_with(prefix))
        .collect();
    match matching.as_slice() {
        [] => Ok(None),
        [only] => Ok(Some(only)),
        many => Err(ImagesError::Ambiguous {
            reference: query.to_owned(),
            count: many.len(),
        }),
    }
}

/// Names the stored manifest `manifest_digest` by `name`: its tag (if it has one) moves
/// here, and `name`'s repository with `top_digest` (what the name resolved to: the manifest
/// itself, or the index it was chosen from) becomes one of its repo digests.
pub(super) fn record_names(
    store: &LayerStore,
    name: &ImageReference,
    manifest_digest: &Digest,
    top_digest: &Digest,
) -> Result<(), ImagesError> {
    store.update_image_names(|names| {
        if let Some(tag) = name.tagged_name() {
            names.tags.insert(tag, *manifest_digest);
        }
        names
            .repo_digests
            .entry(*manifest_digest)
            .or_default()
            .insert(name.repo_digest(top_digest));
    })?;
    Ok(())
}

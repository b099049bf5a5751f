//! The names of images: which manifest each tag points to and which repositories each
//! manifest came from, in one small file rewritten atomically under its own lock.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::store::{files, read_json_if_present, LayerStore, LayerStoreError};

/// Every name the store knows, in `names.json`, as normalized names (the registry module's
/// `ImageReference` writes them): `registry/repository:tag` for tags and
/// `registry/repository@sha256:...` for repo digests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageNames {
    /// Tag to the manifest it names; a tag names one manifest at a time.
    #[serde(default)]
    pub tags: BTreeMap<String, Digest>,
    /// Manifest (the stored one) to its repo digests. A repo digest names what the
    /// repository's tag pointed to, so for a multi-platform image it carries the index's
    /// digest, not the stored manifest's (as containerd reports it).
    #[serde(default)]
    pub repo_digests: BTreeMap<Digest, BTreeSet<String>>,
}

impl ImageNames {
    /// Removes every name of `manifest_digest`.
    pub fn forget_manifest(&mut self, manifest_digest: &Digest) {
        self.tags.retain(|_, digest| digest != manifest_digest);
        self.repo_digests.remove(manifest_digest);
    }

    /// The tags naming `manifest_digest`, sorted.
    pub fn tags_of(&self, manifest_digest: &Digest) -> Vec<String> {
        self.tags
            .iter()
            .filter(|(_, digest)| *digest == manifest_digest)
            .map(|(tag, _)| tag.clone())
            .collect()
    }
}

impl LayerStore {
    /// The names of the store's images (empty when none was ever recorded).
    pub fn image_names(&self) -> Result<ImageNames, LayerStoreError> {
        Ok(read_json_if_present(&self.names_path())?.unwrap_or_default())
    }

    /// Reads the names, lets `change` edit them and writes them back, all under the names
    /// lock, so concurrent editors (threads or processes) never lose each other's changes.
    pub fn update_image_names<T>(
        &self,
        change: impl FnOnce(&mut ImageNames) -> T,
    ) -> Result<T, LayerStoreError> {
        let lock_path = self.root.join("names.lock");
        let _names_lock =
            files::lock_exclusive(&lock_path).map_err(LayerStoreError::io("lock", &lock_path))?;
        let mut names = self.image_names()?;
        let before = names.clone();
        let result = change(&mut names);
        if names != before {
            self.write_record(&self.names_path(), &names)?;
        }
        Ok(result)
    }

    fn names_path(&self) -> std::path::PathBuf {
        self.root.join("names.json")
    }
}

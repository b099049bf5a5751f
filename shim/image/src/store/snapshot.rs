//! Layers from containerd snapshots: a committed lower directory of containerd's overlayfs
//! snapshotter (`.../snapshots/<id>/fs`) becomes a read-only EROFS disk, converted once per
//! node and shared by every pod whose rootfs lists that directory.
//!
//! The key is a synthetic diffID, because a snapshot directory has no tar to hash: sha256
//! of a fixed domain prefix, the directory's canonical path, its device and inode numbers
//! and its change and birth times (nanoseconds; the birth time where the filesystem keeps
//! one). The same directory always maps to the same disk, and a committed snapshot never
//! changes, so nothing can go stale; a different directory, or one deleted and re-created
//! at the same path (containerd reuses snapshot ids after a restart or a GC), gets another
//! inode or other times and so another disk. Hashing the content instead would cost a full
//! read of every layer on every container start. What the key can miss: a device number
//! that changes across reboots (btrfs, some network filesystems) converts the layer once
//! more under a new key, and the old disk waits for garbage collection. The prefix keeps
//! synthetic keys apart from real diffIDs, which are sha256 of a tar stream.
//!
//! The disk lives with the layers from tars: `layers/sha256/<key hex>.erofs`, its record
//! beside it (`tar_size` 0, no verified blobs; the statistics come from a walk of the
//! directory), its UUID and its virtio-blk serial derived from the key like any layer's. So
//! `LayerStore::remove_unreferenced` removes a snapshot disk that no caller keeps; the next
//! user converts it again.
//!
//! The directory is already in the format the guest's overlay reads, the format the tar
//! path produces too: whiteouts are character devices 0:0, opaque directories carry
//! `trusted.overlay.opaque=y` (containerd's unpacker converts OCI whiteouts so, for a
//! rootful containerd). `mkfs.erofs` copies it as it is: entries, ownership, modes, mtimes,
//! symbolic links, hard links (by inode) and every xattr. Unlike the tar path, device nodes
//! other than whiteouts are kept too (containerd kept them); the guest mounts layers and
//! rootfs overlays `nodev`, so they cannot be opened.
//!
//! The conversion follows the tar path's discipline: the store lock shared (garbage
//! collection waits), the layer's lock exclusive (one converter per key across threads and
//! processes, the others wait and reuse), the image built into `tmp/` and renamed into
//! place. The directory is containerd's, root-owned and committed: it is trusted not to
//! change while `mkfs.erofs` reads it.

use std::collections::HashSet;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::digest::{DiffId, Digest};
use crate::layer::erofs::{ErofsBuilder, ErofsError};
use crate::layer::extract::{ExtractStats, OPAQUE_XATTR};
use crate::store::files::{self, TempFileGuard};
use crate::store::{ImageLayer, LayerConverter, LayerRecord, LayerStore, LayerStoreError};

/// Prefix of the hashed identity; a new scheme gets a new version.
const KEY_DOMAIN: &[u8] = b"vpod containerd-snapshot v1\0";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("could not {operation} {path}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("snapshot directory {0} is a symbolic link; pass the directory it points to")]
    SymbolicLink(PathBuf),
    #[error("snapshot {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("snapshot directory {dir} overlaps the layer store at {store}")]
    OverlapsStore { dir: PathBuf, store: PathBuf },
    #[error("snapshot directory {dir} has another filesystem mounted at {mount_point}")]
    MountPointInside { dir: PathBuf, mount_point: PathBuf },
    #[error("snapshot directory {dir} has more than {max} entries, the store's limit")]
    TooManyEntries { dir: PathBuf, max: u64 },
    #[error("snapshot directory {dir} could not be turned into an EROFS image")]
    Erofs {
        dir: PathBuf,
        #[source]
        source: ErofsError,
    },
    #[error("the layer store could not keep the snapshot's layer")]
    Store(#[from] LayerStoreError),
}

impl SnapshotError {
    fn io(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError {
        let path = path.to_owned();
        move |source| SnapshotError::Io {
            operation,
            path,
            source,
        }
    }
}

/// A snapshot directory, resolved and identified.
struct SnapshotDir {
    /// Canonical: symbolic links above it resolved, absolute.
    path: PathBuf,
    key: DiffId,
}

impl SnapshotDir {
    fn identify(dir: &Path) -> Result<SnapshotDir, SnapshotError> {
        let given = fs::symlink_metadata(dir).map_err(SnapshotError::io("inspect", dir))?;
        if given.file_type().is_symlink() {
            return Err(SnapshotError::SymbolicLink(dir.to_owned()));
        }
        if !given.is_dir() {
            return Err(SnapshotError::NotADirectory(dir.to_owned()));
        }
        // Resolves links in the components above (`/var/lib/containerd` may be one).
        let path = fs::canonicalize(dir).map_err(SnapshotError::io("resolve", dir))?;
        let meta = fs::symlink_metadata(&path).map_err(SnapshotError::io("inspect", &path))?;
        if !meta.is_dir() {
            return Err(SnapshotError::NotADirectory(dir.to_owned()));
        }
        let key = snapshot_key(&path, &meta);
        Ok(SnapshotDir { path, key })
    }
}

/// The synthetic diffID of the directory at canonical `path` with metadata `meta`.
fn snapshot_key(path: &Path, meta: &Metadata) -> DiffId {
    let mut identity = KEY_DOMAIN.to_vec();
    identity.extend_from_slice(path.as_os_str().as_bytes());
    identity.push(0);
    identity.extend_from_slice(&meta.dev().to_le_bytes());
    identity.extend_from_slice(&meta.ino().to_le_bytes());
    identity.extend_from_slice(&meta.ctime().to_le_bytes());
    identity.extend_from_slice(&meta.ctime_nsec().to_le_bytes());
    // std reads the birth time with statx; a filesystem without one contributes a marker.
    match meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
    {
        Some(born) => {
            identity.push(1);
            identity.extend_from_slice(&born.as_secs().to_le_bytes());
            identity.extend_from_slice(&born.subsec_nanos().to_le_bytes());
        }
        None => identity.push(0),
    }
    Digest::of_bytes(&identity)
}

impl LayerStore {
    /// The disk of the committed containerd snapshot directory `dir` (a lower directory of
    /// an overlay rootfs, `.../snapshots/<id>/fs`), converted with `mkfs.erofs` on first
    /// use and reused after that, by every thread and process of this node. `dir` itself
    /// must be a directory, not a symbolic link to one.
    pub fn layer_from_snapshot(&self, dir: &Path) -> Result<ImageLayer, SnapshotError> {
        self.layer_from_snapshot_reporting(dir)
            .map(|(layer, _)| layer)
    }

    /// As `layer_from_snapshot`, also saying whether this call converted the directory
    /// (`true`) or found its disk already there (`false`).
    pub fn layer_from_snapshot_reporting(
        &self,
        dir: &Path,
    ) -> Result<(ImageLayer, bool), SnapshotError> {
        let snapshot = SnapshotDir::identify(dir)?;
        self.check_outside_store(&snapshot.path)?;
        let key = snapshot.key;

        let store_lock_path = self.store_lock_path();
        // Held like an import's: garbage collection waits until the caller has the disk.
        let _store_lock = files::lock_shared(&store_lock_path)
            .map_err(SnapshotError::io("lock", &store_lock_path))?;
        if let Some(layer) = self.existing_layer(&key)? {
            return Ok((layer, false));
        }
        let layer_lock_path = self.layer_lock_path(&key);
        let _layer_lock = files::lock_exclusive(&layer_lock_path)
            .map_err(SnapshotError::io("lock", &layer_lock_path))?;
        // Another thread or process may have converted it while we waited.
        if let Some(layer) = self.existing_layer(&key)? {
            return Ok((layer, false));
        }
        self.remove_abandoned_images(&key)?;
        self.convert_snapshot(&snapshot).map(|layer| (layer, true))
    }

    /// Refuses a directory that holds the store or lies inside it: `mkfs.erofs` would read
    /// the image it is writing.
    fn check_outside_store(&self, dir: &Path) -> Result<(), SnapshotError> {
        let store =
            fs::canonicalize(self.root()).map_err(SnapshotError::io("resolve", self.root()))?;
        if store.starts_with(dir) || dir.starts_with(&store) {
            return Err(SnapshotError::OverlapsStore {
                dir: dir.to_owned(),
                store,
            });
        }
        Ok(())
    }

    fn existing_layer(&self, key: &DiffId) -> Result<Option<ImageLayer>, SnapshotError> {
        let path = self.layer_path(key);
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(ImageLayer {
                diff_id: *key,
                path,
                size: meta.len(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SnapshotError::io("inspect", &path)(e)),
        }
    }

    /// Builds, publishes and records the disk; the caller holds the layer's lock.
    fn convert_snapshot(&self, snapshot: &SnapshotDir) -> Result<ImageLayer, SnapshotError> {
        let key = snapshot.key;
        let stats = walk_snapshot(&snapshot.path, self.options.limits.max_entries)?;
        let image_temp = TempFileGuard {
            path: self
                .temp_dir()
                .join(files::unique_temp_name(&format!("{}.erofs", key.hex()))),
        };
        let builder = match &self.options.converter {
            LayerConverter::StagedMkfs(builder) => builder.clone(),
            LayerConverter::Writer => ErofsBuilder::default(),
        };
        builder
            .build(&snapshot.path, &image_temp.path, &key, stats.newest_mtime)
            .map_err(|source| SnapshotError::Erofs {
                dir: snapshot.path.clone(),
                source,
            })?;
        let size = fs::metadata(&image_temp.path)
            .map_err(SnapshotError::io("inspect", &image_temp.path))?
            .len();
        set_read_only(&image_temp.path)?;
        let image_path = self.layer_path(&key);
        files::rename_durably(&image_temp.path, &image_path)
            .map_err(SnapshotError::io("publish", &image_path))?;
        let record = LayerRecord {
            diff_id: key,
            erofs_size: size,
            tar_size: 0,
            stats,
            verified_blobs: Vec::new(),
        };
        self.write_record(&self.layer_record_path(&key), &record)?;
        Ok(ImageLayer {
            diff_id: key,
            path: image_path,
            size,
        })
    }

    /// Removes images of `key` that a crashed converter left in `tmp/`. Only the holder of
    /// the layer's lock converts it, so whatever is there is abandoned.
    fn remove_abandoned_images(&self, key: &DiffId) -> Result<(), SnapshotError> {
        let dir = self.temp_dir();
        let prefix = format!("{}.", key.hex());
        for entry in fs::read_dir(&dir).map_err(SnapshotError::io("list", &dir))? {
            let entry = entry.map_err(SnapshotError::io("list", &dir))?;
            if !entry.file_name().as_bytes().starts_with(prefix.as_bytes()) {
                continue;
            }
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SnapshotError::io("remove", &path)(e)),
            }
        }
        Ok(())
    }
}

/// Walks the snapshot without following symbolic links: counts what the record keeps,
/// finds the newest mtime (the image's reproducible build time: with it `mkfs.erofs`
/// changes no mtime), and refuses mount points and trees past the entry limit.
fn walk_snapshot(root: &Path, max_entries: u64) -> Result<ExtractStats, SnapshotError> {
    let root_meta = fs::symlink_metadata(root).map_err(SnapshotError::io("inspect", root))?;
    let device = root_meta.dev();
    let mut stats = ExtractStats {
        newest_mtime: root_meta.mtime(),
        ..ExtractStats::default()
    };
    count_opaque(root, &mut stats);
    let mut linked_files = HashSet::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(SnapshotError::io("list", &dir))? {
            let entry = entry.map_err(SnapshotError::io("list", &dir))?;
            let path = entry.path();
            // Does not follow a symbolic link.
            let meta = entry
                .metadata()
                .map_err(SnapshotError::io("inspect", &path))?;
            stats.entries += 1;
            if stats.entries > max_entries {
                return Err(SnapshotError::TooManyEntries {
                    dir: root.to_owned(),
                    max: max_entries,
                });
            }
            stats.newest_mtime = stats.newest_mtime.max(meta.mtime());
            let kind = meta.file_type();
            if kind.is_dir() {
                // Directories only: on an overlayfs host, files may report the device of the
                // layer below, directories always the overlay's.
                if meta.dev() != device {
                    return Err(SnapshotError::MountPointInside {
                        dir: root.to_owned(),
                        mount_point: path,
                    });
                }
                count_opaque(&path, &mut stats);
                pending.push(path);
            } else if kind.is_file() {
                // A hard-linked file's data is in the image once.
                if meta.nlink() == 1 || linked_files.insert(meta.ino()) {
                    stats.regular_files += 1;
                    stats.file_bytes += meta.len();
                }
            } else if kind.is_char_device() && meta.rdev() == 0 {
                stats.whiteouts += 1;
            }
        }
    }
    Ok(stats)
}

/// Counts `dir` if it carries `trusted.overlay.opaque=y`; a filesystem without xattrs has
/// no opaque directories.
fn count_opaque(dir: &Path, stats: &mut ExtractStats) {
    let mut value = [0u8; 8];
    if let Ok(len) = rustix::fs::lgetxattr(dir, OPAQUE_XATTR, &mut value[..]) {
        if value[..len] == *b"y" {
            stats.opaque_directories += 1;
        }
    }
}

fn set_read_only(path: &Path) -> Result<(), SnapshotError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
        .map_err(SnapshotError::io("protect", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(dir: &Path) -> DiffId {
        SnapshotDir::identify(dir).unwrap().key
    }

    #[test]
    fn snapshot_key_is_stable_for_one_directory() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("fs");
        fs::create_dir(&dir).unwrap();
        assert_eq!(key_of(&dir), key_of(&dir));
        // Another spelling of the same directory is the same snapshot.
        assert_eq!(key_of(&dir), key_of(&temp.path().join("fs/../fs")));
    }

    #[test]
    fn snapshot_key_differs_for_a_directory_recreated_at_the_same_path() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("fs");
        fs::create_dir(&dir).unwrap();
        let first = key_of(&dir);
        fs::remove_dir(&dir).unwrap();
        // Past the kernel's coarse timestamp granularity, as a real snapshot id reuse is.
        std::thread::sleep(std::time::Duration::from_millis(30));
        fs::create_dir(&dir).unwrap();
        assert_ne!(first, key_of(&dir));
    }

    #[test]
    fn snapshot_key_is_not_a_hash_of_the_path_alone() {
        let temp = tempfile::tempdir().unwrap();
        let dir = fs::canonicalize(temp.path()).unwrap();
        let mut plain = KEY_DOMAIN.to_vec();
        plain.extend_from_slice(dir.as_os_str().as_bytes());
        assert_ne!(key_of(&dir), Digest::of_bytes(&plain));
    }

    #[test]
    fn snapshot_walk_counts_entries_and_refuses_past_the_limit() {
        let temp = tempfile::tempdir().unwrap();
        fs::create_dir(temp.path().join("d")).unwrap();
        fs::write(temp.path().join("d/a"), b"abc").unwrap();
        fs::hard_link(temp.path().join("d/a"), temp.path().join("b")).unwrap();
        let stats = walk_snapshot(temp.path(), 3).unwrap();
        assert_eq!(stats.entries, 3);
        assert_eq!((stats.regular_files, stats.file_bytes), (1, 3));
        assert!(matches!(
            walk_snapshot(temp.path(), 2),
            Err(SnapshotError::TooManyEntries { max: 2, .. })
        ));
    }
}

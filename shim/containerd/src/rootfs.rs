//! A container's root from containerd's snapshotter: the committed lower snapshots of its
//! overlay mount, each a read-only layer disk converted once per node and shared by every
//! pod that uses it. The container's writable layer is on the pod's own disk in the guest,
//! so the upper directory containerd made stays empty (`ctr snapshot diff` sees nothing).

use std::path::{Path, PathBuf};

use containerd_shim_protos::types::mount::Mount;
use vpod_image::{ImageLayer, LayerStore};

/// Why the container's root cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("the container has no root file system mount")]
    None,
    #[error("the container's root is {0} mounts; one overlay or bind mount is expected")]
    Several(usize),
    #[error("the root file system mount is of type {0:?}; overlay and bind are supported")]
    Type(String),
    #[error("the overlay mount has no lowerdir option")]
    NoLowerDir,
    #[error("the snapshot directory {0} is not absolute")]
    Relative(String),
    #[error("the snapshot {0} could not be made a layer disk")]
    Convert(PathBuf, #[source] Box<vpod_image::store::SnapshotError>),
}

/// The snapshot directories of the root, lowest first.
pub fn snapshot_dirs(mounts: &[Mount]) -> Result<Vec<PathBuf>, RootfsError> {
    let mount = match mounts {
        [] => return Err(RootfsError::None),
        [one] => one,
        more => return Err(RootfsError::Several(more.len())),
    };
    let dirs: Vec<String> = match mount.type_.as_str() {
        "overlay" => {
            let lower = mount
                .options
                .iter()
                .find_map(|o| o.strip_prefix("lowerdir="))
                .ok_or(RootfsError::NoLowerDir)?;
            // overlayfs lists the top layer first.
            lower.split(':').rev().map(str::to_owned).collect()
        }
        "bind" | "rbind" => vec![mount.source.clone()],
        other => return Err(RootfsError::Type(other.to_owned())),
    };
    dirs.into_iter()
        .filter(|d| !d.is_empty())
        .map(|d| {
            if d.starts_with('/') {
                Ok(PathBuf::from(d))
            } else {
                Err(RootfsError::Relative(d))
            }
        })
        .collect()
}

/// The layer disks of the root, lowest first, converting the snapshots not converted yet.
pub fn layers(store: &LayerStore, mounts: &[Mount]) -> Result<Vec<ImageLayer>, RootfsError> {
    snapshot_dirs(mounts)?
        .into_iter()
        .map(|dir| layer(store, &dir))
        .collect()
}

fn layer(store: &LayerStore, dir: &Path) -> Result<ImageLayer, RootfsError> {
    store
        .layer_from_snapshot(dir)
        .map_err(|e| RootfsError::Convert(dir.to_owned(), Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(kind: &str, source: &str, options: &[&str]) -> Mount {
        Mount {
            type_: kind.to_owned(),
            source: source.to_owned(),
            options: options.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn overlay_lowerdirs_come_lowest_first_and_binds_as_one() {
        let m = mount(
            "overlay",
            "overlay",
            &[
                "index=off",
                "workdir=/s/3/work",
                "upperdir=/s/3/fs",
                "lowerdir=/s/2/fs:/s/1/fs",
            ],
        );
        assert_eq!(
            snapshot_dirs(&[m]).unwrap(),
            [PathBuf::from("/s/1/fs"), PathBuf::from("/s/2/fs")]
        );
        let b = mount("bind", "/s/1/fs", &["ro", "rbind"]);
        assert_eq!(snapshot_dirs(&[b]).unwrap(), [PathBuf::from("/s/1/fs")]);
    }

    #[test]
    fn odd_roots_are_refused() {
        assert!(matches!(snapshot_dirs(&[]), Err(RootfsError::None)));
        let tmpfs = mount("tmpfs", "none", &[]);
        assert!(matches!(
            snapshot_dirs(std::slice::from_ref(&tmpfs)),
            Err(RootfsError::Type(_))
        ));
        assert!(matches!(
            snapshot_dirs(&[tmpfs.clone(), tmpfs]),
            Err(RootfsError::Several(2))
        ));
        let no_lower = mount("overlay", "overlay", &["upperdir=/u"]);
        assert!(matches!(
            snapshot_dirs(&[no_lower]),
            Err(RootfsError::NoLowerDir)
        ));
        let relative = mount("overlay", "overlay", &["lowerdir=a:/b"]);
        assert!(matches!(
            snapshot_dirs(&[relative]),
            Err(RootfsError::Relative(_))
        ));
    }
}

//! Which of a container's mounts are plain emptyDirs, kept on disks of their own
//! ([`vpod_sandbox::dir_disk`]) rather than shared through the pod's virtiofsd.
//!
//! The kubelet makes an emptyDir at `<pods>/<pod uid>/volumes/kubernetes.io~empty-dir/<name>`
//! and passes that directory as the mount's host path. Medium "Memory" is a tmpfs the
//! kubelet mounted there (and hugepages media a hugetlbfs): those stay shared, as do all
//! other volumes, so their memory accounting stays the kubelet's. A plain one is a
//! directory on the node's disk, which is what goes on a disk of its own.

use std::path::Path;

use vpod_sandbox::dir_disk::IMAGE_NAME;
use vpod_sandbox::DirDisk;

use crate::runtime::RuntimeError;
use crate::state::MountRecord;

/// The kubelet's directory of a pod's emptyDirs (its volume plugin's escaped name).
const EMPTY_DIR_PLUGIN_DIR: &str = "kubernetes.io~empty-dir";

/// Whether `host_path` is a plain emptyDir: `.../volumes/kubernetes.io~empty-dir/<name>`,
/// a directory on something other than tmpfs or hugetlbfs.
pub fn is_plain_empty_dir(host_path: &str) -> bool {
    let path = Path::new(host_path);
    let plugin_dir = path.parent();
    let shaped = path.is_absolute()
        && path.file_name().is_some()
        && plugin_dir.and_then(Path::file_name) == Some(EMPTY_DIR_PLUGIN_DIR.as_ref())
        && plugin_dir.and_then(Path::parent).and_then(Path::file_name) == Some("volumes".as_ref());
    if !shaped {
        return false;
    }
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !metadata.is_dir() {
        return false;
    }
    match rustix::fs::statfs(path) {
        Ok(stat) => {
            let kind = stat.f_type;
            kind != TMPFS_MAGIC && kind != HUGETLBFS_MAGIC
        }
        Err(_) => false,
    }
}

/// `TMPFS_MAGIC` and `HUGETLBFS_MAGIC` of `statfs(2)`.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// The emptyDir whose `subPath` `host_path` is (`<pods>/<uid>/volume-subpaths/<name>/...`)
/// if that emptyDir is on a disk of its own.
fn sub_path_of_disk_backed(host_path: &str) -> Option<std::path::PathBuf> {
    let path = Path::new(host_path);
    let volume = path.parent()?.parent()?;
    let subpaths = volume.parent()?;
    if subpaths.file_name()? != "volume-subpaths" {
        return None;
    }
    let empty_dir = subpaths
        .parent()?
        .join("volumes")
        .join(EMPTY_DIR_PLUGIN_DIR)
        .join(volume.file_name()?);
    std::fs::symlink_metadata(empty_dir.join(IMAGE_NAME))
        .is_ok()
        .then_some(empty_dir)
}

/// Splits `mounts` into the plain emptyDirs, as disks of `size_bytes`, and the rest;
/// refuses a subPath of an emptyDir already on a disk.
pub fn split_mounts(
    mounts: &[MountRecord],
    size_bytes: u64,
) -> Result<(Vec<DirDisk>, Vec<MountRecord>), RuntimeError> {
    let mut disks = Vec::new();
    let mut rest = Vec::new();
    for (i, mount) in mounts.iter().enumerate() {
        if let Some(empty_dir) = sub_path_of_disk_backed(&mount.host_path) {
            return Err(RuntimeError::invalid(
                format!("config.mounts[{i}]"),
                format!(
                    "the mount at {} is a subPath of the emptyDir {}, which is on a disk of \
                     its own ([pod] empty_dir_disks = true): the kubelet prepared the subPath \
                     on the host directory, which does not hold that volume's files; turn \
                     empty_dir_disks off for pods that use subPaths of emptyDirs",
                    mount.container_path,
                    empty_dir.display()
                ),
            ));
        }
        if is_plain_empty_dir(&mount.host_path) {
            disks.push(DirDisk {
                host_dir: mount.host_path.clone().into(),
                container_path: mount.container_path.clone(),
                read_only: mount.readonly,
                size_bytes,
            });
        } else {
            rest.push(mount.clone());
        }
    }
    Ok((disks, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(host_path: &Path, container_path: &str) -> MountRecord {
        MountRecord {
            container_path: container_path.into(),
            host_path: host_path.display().to_string(),
            readonly: false,
            host_to_container: false,
        }
    }

    #[test]
    fn only_kubelet_shaped_empty_dirs_on_a_disk_go_to_disks() {
        // Beside the sources, not in /tmp, which may be a tmpfs.
        let root = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let volumes = root.path().join("pods/uid-1/volumes");
        let cache = volumes.join("kubernetes.io~empty-dir/cache");
        let config = volumes.join("kubernetes.io~configmap/settings");
        let plain = root.path().join("scratch");
        for dir in [&cache, &config, &plain] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let file = volumes.join("kubernetes.io~empty-dir/file");
        std::fs::write(&file, b"").unwrap();
        let link = volumes.join("kubernetes.io~empty-dir/link");
        std::os::unix::fs::symlink(&plain, &link).unwrap();
        let missing = volumes.join("kubernetes.io~empty-dir/missing");
        let mounts = [
            mount(&cache, "/cache"),
            mount(&config, "/etc/settings"),
            mount(&plain, "/scratch"),
            mount(&file, "/file"),
            mount(&link, "/link"),
            mount(&missing, "/missing"),
        ];
        let (disks, rest) = split_mounts(&mounts, 1 << 30).unwrap();
        assert_eq!(
            disks,
            vec![DirDisk {
                host_dir: cache.clone(),
                container_path: "/cache".into(),
                read_only: false,
                size_bytes: 1 << 30,
            }]
        );
        assert_eq!(rest.len(), 5);
        assert!(rest.iter().all(|m| m.container_path != "/cache"));
    }

    #[test]
    fn a_sub_path_of_an_empty_dir_on_a_disk_is_refused() {
        let root = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let pod = root.path().join("pods/uid-1");
        let cache = pod.join("volumes/kubernetes.io~empty-dir/cache");
        std::fs::create_dir_all(&cache).unwrap();
        let sub = pod.join("volume-subpaths/cache/app/0");
        std::fs::create_dir_all(&sub).unwrap();
        let mounts = [mount(&sub, "/etc/app.conf")];
        // Before the disk exists the subPath is an ordinary mount (through the share).
        let (disks, rest) = split_mounts(&mounts, 1 << 30).unwrap();
        assert!(disks.is_empty());
        assert_eq!(rest.len(), 1);
        std::fs::write(cache.join(IMAGE_NAME), b"").unwrap();
        let error = split_mounts(&mounts, 1 << 30).unwrap_err().to_string();
        assert!(
            error.contains("config.mounts[0]") && error.contains("empty_dir_disks"),
            "{error}"
        );
    }

    #[test]
    fn a_memory_empty_dir_is_a_tmpfs_and_stays_shared() {
        // /dev/shm is a tmpfs on every Linux host: give it the kubelet's shape.
        let root = std::path::PathBuf::from("/dev/shm").join(format!(
            "vpod-empty-dir-test-{}/volumes/kubernetes.io~empty-dir/memory",
            std::process::id()
        ));
        std::fs::create_dir_all(&root).unwrap();
        let shaped = is_plain_empty_dir(&root.display().to_string());
        std::fs::remove_dir_all(root.ancestors().nth(3).unwrap()).unwrap();
        assert!(!shaped);
    }
}

//! The pod's cgroup on the host. The VMM and virtiofsd of a pod's VM run in a `vpod-<id>`
//! leaf under the parent of the booting bundle's `linux.cgroupsPath`: for the CRI plugin's
//! sandbox that parent is the kubelet's pod cgroup (`cgroup_parent`), where runc would put
//! the pause container. The node then charges the VM to the pod, as the kubelet's pod
//! overhead expects. The leaf is made as `vpod-cri` makes its pods' (`vpod_sandbox::cgroup`)
//! and removed once the VM is gone, by the shim or by `delete` after a dead shim. A bundle
//! without a cgroups path, or a host without cgroup v2, gets none: the VM stays in the
//! shim's cgroup.

use std::path::{Path, PathBuf};

use vpod_sandbox::cgroup::{self, PodCgroup};

use crate::bundle::Bundle;

/// The parent named by an OCI `cgroupsPath`: the slice of systemd's `slice:prefix:name`,
/// else the directory above a cgroupfs path's last name; none for a path at the root.
fn parent_of(cgroups_path: &str) -> Option<&str> {
    let parent = match cgroups_path.split_once(':') {
        Some((slice, _)) => slice,
        None => cgroups_path
            .trim_end_matches('/')
            .rsplit_once('/')
            .map_or("", |(parent, _)| parent),
    };
    (!parent.trim_matches('/').is_empty()).then_some(parent)
}

/// Where pod `id`'s leaf goes for `bundle` (not made yet).
fn leaf(bundle: &Bundle, id: &str) -> Option<PodCgroup> {
    let path = bundle.spec.linux().as_ref()?.cgroups_path().as_ref()?;
    let parent = parent_of(path.to_str()?)?;
    let mount = match cgroup::cgroup2_mount() {
        Ok(Some(mount)) => mount,
        Ok(None) => {
            log::warn!(
                "no cgroup v2 hierarchy is mounted: pod {id}'s VM runs in the shim's cgroup"
            );
            return None;
        }
        Err(e) => {
            log::warn!(
                "finding the cgroup v2 hierarchy: {}",
                vpod_proto::error_chain(&e)
            );
            return None;
        }
    };
    match PodCgroup::under(&mount, parent, id) {
        Ok(leaf) => leaf,
        Err(e) => {
            log::warn!("pod {id}'s cgroup: {}", vpod_proto::error_chain(&e));
            None
        }
    }
}

/// Makes pod `id`'s leaf for `bundle`; its directory, or none (said in the log) when the
/// bundle names no cgroup or the leaf cannot be made.
pub fn make(bundle: &Bundle, id: &str) -> Option<PathBuf> {
    let leaf = leaf(bundle, id)?;
    match leaf.create() {
        Ok(()) => Some(leaf.dir()),
        Err(e) => {
            log::warn!(
                "making pod {id}'s cgroup {}: {}; its VM runs in the shim's cgroup",
                leaf.dir().display(),
                vpod_proto::error_chain(&e)
            );
            None
        }
    }
}

/// Removes the leaf `dir` once the pod's VMM and virtiofsd are gone.
pub fn remove(id: &str, dir: &Path) {
    log_removal(id, cgroup::remove(dir));
}

/// [`remove`] on a blocking thread, for the task service.
pub async fn remove_off_thread(id: &str, dir: PathBuf) {
    log_removal(id, cgroup::remove_off_thread(dir).await);
}

fn log_removal(id: &str, removed: Result<(), cgroup::CgroupError>) {
    if let Err(e) = removed {
        log::warn!(
            "removing pod {id}'s cgroup: {}",
            vpod_proto::error_chain(&e)
        );
    }
}

/// Removes what pod `id`'s leaf for the bundle in `bundle_dir` would be (for `delete`, after
/// a dead shim); nothing when the bundle cannot be read or names no cgroup.
pub fn remove_for_bundle(bundle_dir: &Path, id: &str) {
    let Ok(bundle) = Bundle::read(bundle_dir) else {
        return;
    };
    if let Some(leaf) = leaf(&bundle, id) {
        remove(id, &leaf.dir());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_the_pod_cgroup_above_the_container_s_own() {
        assert_eq!(
            parent_of("/kubepods/burstable/pod1234/0123abcd"),
            Some("/kubepods/burstable/pod1234")
        );
        assert_eq!(
            parent_of("kubepods-burstable-pod1234.slice:cri-containerd:0123abcd"),
            Some("kubepods-burstable-pod1234.slice")
        );
        assert_eq!(parent_of("/default/web"), Some("/default"));
        assert_eq!(parent_of("/web"), None);
        assert_eq!(parent_of("web"), None);
        assert_eq!(parent_of(":cri-containerd:web"), None);
    }
}

//! The pod's shared directory: one virtio-fs share the host serves (a virtiofsd of the
//! pod's), mounted at [`SHARE_GUEST_DIR`] by MountShare. The host bind-mounts each
//! container's volumes under `c/<container id>/<n>` in it; a container's bind mounts take
//! their sources only from there, resolved below the share without following symlinks, so
//! a request cannot bind the guest's own files (the agent's, another container's root)
//! into a container.

use std::ffi::CString;
use std::io;
use std::path::{Component, Path};

use vpod_proto::SHARE_GUEST_DIR;

use super::in_root::openat2;

/// Longest virtio-fs tag (the configuration space's tag field).
const MAX_TAG: usize = 36;

/// Readahead of the share, in KiB. A FUSE mount's bdi starts at the kernel's 128 KiB, so a
/// sequential read is one FUSE request, one round trip to virtiofsd, per 128 KiB; with
/// 4 MiB the kernel sends several larger requests (up to the max_pages virtiofsd
/// negotiates, 1 MiB, within the queue's size) at once. Readahead grows only as far as a
/// file is read sequentially, so small and random reads fetch no more than before.
pub const SHARE_READAHEAD_KB: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("the share tag {0:?} is not 1 to {MAX_TAG} bytes without NUL or whitespace")]
    BadTag(String),
    #[error("could not create the share's mount point {SHARE_GUEST_DIR}")]
    MountPoint(#[source] io::Error),
    #[error("could not mount the virtio-fs share {0:?} on {SHARE_GUEST_DIR}")]
    Mount(String, #[source] io::Error),
    #[error("the bind source {0:?} is not a clean path under {SHARE_GUEST_DIR}")]
    OutsideShare(String),
    #[error("the bind source {0:?} cannot be opened below the share without symlinks")]
    Source(String, #[source] io::Error),
}

/// Mounts the virtio-fs share `tag` at [`SHARE_GUEST_DIR`]; nothing when it is mounted.
pub fn mount_share(tag: &str) -> Result<(), ShareError> {
    if tag.is_empty()
        || tag.len() > MAX_TAG
        || tag.bytes().any(|b| b == 0 || b.is_ascii_whitespace())
    {
        return Err(ShareError::BadTag(tag.to_string()));
    }
    if is_mount_point(Path::new(SHARE_GUEST_DIR)) {
        return Ok(());
    }
    std::fs::create_dir_all(SHARE_GUEST_DIR).map_err(ShareError::MountPoint)?;
    let source = CString::new(tag).map_err(|_| ShareError::BadTag(tag.to_string()))?;
    let target = CString::new(SHARE_GUEST_DIR).map_err(|e| ShareError::MountPoint(e.into()))?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; data is null.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"virtiofs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ShareError::Mount(
            tag.to_string(),
            io::Error::last_os_error(),
        ));
    }
    set_share_readahead(Path::new(SHARE_GUEST_DIR));
    Ok(())
}

/// The bdi (`/sys/class/bdi/<name>`) of a FUSE mount whose `st_dev` is `dev`: FUSE names it
/// `<major>:<minor>` of its anonymous device.
fn fuse_bdi_name(dev: libc::dev_t) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

/// Sets the readahead of the FUSE mount at `dir` to [`SHARE_READAHEAD_KB`]. Best effort: a
/// share that keeps the default is slower, not wrong.
fn set_share_readahead(dir: &Path) {
    let dev = match std::fs::metadata(dir) {
        Ok(meta) => std::os::unix::fs::MetadataExt::dev(&meta),
        Err(e) => {
            eprintln!("vpod-init: could not stat {}: {e}", dir.display());
            return;
        }
    };
    let knob = Path::new("/sys/class/bdi")
        .join(fuse_bdi_name(dev))
        .join("read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, SHARE_READAHEAD_KB.to_string()) {
        eprintln!("vpod-init: could not set {}: {e}", knob.display());
    }
}

/// Whether `dir` is a mount point of this namespace (its own line in mountinfo).
fn is_mount_point(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let dir = dir.to_string_lossy();
    text.lines()
        .any(|line| line.split(' ').nth(4) == Some(dir.as_ref()))
}

/// The part of a bind source below [`SHARE_GUEST_DIR`], if it is a clean absolute path
/// there (no ".", "..", empty or trailing components) and not the share itself.
pub fn below_share(source: &str) -> Option<&str> {
    let rest = source.strip_prefix(SHARE_GUEST_DIR)?.strip_prefix('/')?;
    let clean = !rest.is_empty()
        && Path::new(rest)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !rest
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    clean.then_some(rest)
}

/// Checks that the bind source `source` is below the mounted share and reachable without
/// symlinks or leaving it (openat2 with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS from the
/// share's root). The components are the host's (`c/<id>/<n>`, which no container can
/// reach), so what is checked here is what the mount in the container's init binds.
pub fn check_bind_source(source: &str) -> Result<(), ShareError> {
    let rest = below_share(source).ok_or_else(|| ShareError::OutsideShare(source.to_string()))?;
    let open = |dirfd, path: &str, resolve| {
        let path =
            CString::new(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let fd = openat2(dirfd, &path, libc::O_PATH | libc::O_CLOEXEC, 0, resolve);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    let error = |e| ShareError::Source(source.to_string(), e);
    let share = open(libc::AT_FDCWD, SHARE_GUEST_DIR, 0).map_err(error)?;
    open(
        std::os::fd::AsRawFd::as_raw_fd(&share),
        rest,
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS,
    )
    .map(drop)
    .map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_sources_must_be_clean_paths_below_the_share() {
        assert_eq!(below_share("/run/vpod/share/c/x/0"), Some("c/x/0"));
        for bad in [
            "/run/vpod/share",
            "/run/vpod/share/",
            "/run/vpod/sharex/c",
            "/run/vpod/share/c/../../etc",
            "/run/vpod/share/./c",
            "/run/vpod/share//c",
            "/run/vpod/share/c/",
            "/etc",
            "relative",
        ] {
            assert_eq!(below_share(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_fuse_mounts_bdi_is_named_after_its_device_numbers() {
        assert_eq!(fuse_bdi_name(libc::makedev(0, 42)), "0:42");
        assert_eq!(fuse_bdi_name(libc::makedev(0, 300)), "0:300");
    }

    #[test]
    fn a_bad_tag_is_refused_before_anything_is_mounted() {
        assert!(matches!(mount_share(""), Err(ShareError::BadTag(_))));
        assert!(matches!(mount_share("a b"), Err(ShareError::BadTag(_))));
        assert!(matches!(
            mount_share(&"t".repeat(37)),
            Err(ShareError::BadTag(_))
        ));
    }
}

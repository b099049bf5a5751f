//! The pod's writable disk: a sparse raw file formatted ext4 on the host, holding every
//! container's overlay upper and work directories.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the writable disk could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("could not create the disk file {0}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("could not run mkfs.ext4 (install e2fsprogs)")]
    Mkfs(#[source] std::io::Error),
    #[error("mkfs.ext4 failed on {0}: {1}")]
    MkfsFailed(PathBuf, String),
}

/// Creates `path` as a sparse file of `size_bytes` and formats it ext4 (inode tables and the
/// journal are initialised lazily, so this writes a few MiB, not the whole disk).
pub fn create_writable_disk(path: &Path, size_bytes: u64) -> Result<(), DiskError> {
    let file = std::fs::File::create(path).map_err(|e| DiskError::Create(path.into(), e))?;
    file.set_len(size_bytes)
        .map_err(|e| DiskError::Create(path.into(), e))?;
    drop(file);
    format_ext4(path)
}

/// Formats the file at `path` ext4, lazily (see [`create_writable_disk`]).
pub fn format_ext4(path: &Path) -> Result<(), DiskError> {
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(path)
        .output()
        .map_err(DiskError::Mkfs)?;
    if !output.status.success() {
        return Err(DiskError::MkfsFailed(
            path.into(),
            String::from_utf8_lossy(&output.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

//! Building an EROFS image from a staged directory with erofs-utils' `mkfs.erofs`.
//!
//! Flags, for erofs-utils 1.5 (Debian bookworm), which reads only directories:
//! - no compression: guests read layers at memory speed and page cache is shared per disk;
//! - xattrs on (the default), so `trusted.overlay.opaque` and file capabilities survive;
//! - ownership and modes as staged (no `--all-root`);
//! - `-U` with a UUID derived from the diffID, and `SOURCE_DATE_EPOCH` set to the layer's
//!   newest tar mtime. erofs-utils 1.5 clamps every mtime to `SOURCE_DATE_EPOCH` and uses it
//!   as the build time: with the newest mtime nothing in the tar is changed, and the
//!   directories the extractor had to invent (and whiteouts) get a fixed time, so the same
//!   tar always gives the same image bytes. (`-T 0` would be reproducible too, but would
//!   zero every mtime, which breaks Python's `.pyc` checks and make.)

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::digest::DiffId;

#[derive(Debug, thiserror::Error)]
pub enum ErofsError {
    #[error("could not run {program}; install erofs-utils")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("could not flush the new image {path} to disk")]
    Sync {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// How to call `mkfs.erofs`.
#[derive(Debug, Clone)]
pub struct ErofsBuilder {
    pub mkfs_program: PathBuf,
}

impl Default for ErofsBuilder {
    fn default() -> Self {
        ErofsBuilder {
            mkfs_program: PathBuf::from("mkfs.erofs"),
        }
    }
}

impl ErofsBuilder {
    /// Builds `image` from `staging_dir` and flushes it to disk.
    pub fn build(
        &self,
        staging_dir: &Path,
        image: &Path,
        diff_id: &DiffId,
        newest_mtime: i64,
    ) -> Result<(), ErofsError> {
        let output = Command::new(&self.mkfs_program)
            .env("SOURCE_DATE_EPOCH", newest_mtime.max(0).to_string())
            .arg("--quiet")
            .arg(format!("-U{}", uuid_from_diff_id(diff_id)))
            .arg(image)
            .arg(staging_dir)
            .output()
            .map_err(|source| ErofsError::Spawn {
                program: self.mkfs_program.clone(),
                source,
            })?;
        if !output.status.success() {
            return Err(ErofsError::Failed {
                program: self.mkfs_program.clone(),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        File::open(image)
            .and_then(|file| file.sync_all())
            .map_err(|source| ErofsError::Sync {
                path: image.to_owned(),
                source,
            })
    }
}

/// The raw bytes of `uuid_from_diff_id`.
pub fn uuid_bytes_from_diff_id(diff_id: &DiffId) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&diff_id.as_bytes()[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

/// A version-4-shaped UUID from the diffID's first 16 bytes: stable per layer, so the guest
/// can also find a layer's disk by filesystem UUID.
pub fn uuid_from_diff_id(diff_id: &DiffId) -> String {
    let bytes = uuid_bytes_from_diff_id(diff_id);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn uuid_is_stable_and_well_formed() {
        let uuid = uuid_from_diff_id(&Digest::of_bytes(b"layer"));
        assert_eq!(uuid, uuid_from_diff_id(&Digest::of_bytes(b"layer")));
        assert_eq!(uuid.len(), 36);
        assert_eq!(uuid.as_bytes()[14], b'4');
    }
}

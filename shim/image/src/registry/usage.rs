//! How much disk the image store uses, and on which mount, for ImageFsInfo.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::registry::{FsUsage, ImagesError};
use crate::store::LayerStore;

/// What under the store root belongs to the store (the root may be shared with pod state,
/// which is not image storage).
const STORE_ENTRIES: &[&str] = &[
    "layers",
    "images",
    "tmp",
    "names.json",
    "names.lock",
    "store.lock",
];

pub(super) fn store_usage(store: &LayerStore) -> Result<FsUsage, ImagesError> {
    let root = store.root();
    let mut counted = Counted::default();
    for entry in STORE_ENTRIES {
        counted.add_tree(&root.join(entry))?;
    }
    Ok(FsUsage {
        timestamp: SystemTime::now(),
        mountpoint: mountpoint_of(root)?,
        used_bytes: counted.bytes,
        inodes_used: counted.inodes,
    })
}

#[derive(Default)]
struct Counted {
    bytes: u64,
    inodes: u64,
    seen: HashSet<(u64, u64)>,
}

impl Counted {
    /// Adds `path` and, for a directory, everything under it, without following links;
    /// entries vanishing meanwhile (a pull cleaning up) are skipped.
    fn add_tree(&mut self, path: &Path) -> Result<(), ImagesError> {
        let metadata = match fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ImagesError::io("inspect", path)(e)),
        };
        if self.seen.insert((metadata.dev(), metadata.ino())) {
            self.bytes += metadata.blocks() * 512;
            self.inodes += 1;
        }
        if metadata.is_dir() {
            let entries = match fs::read_dir(path) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(ImagesError::io("list", path)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(ImagesError::io("list", path))?;
                self.add_tree(&entry.path())?;
            }
        }
        Ok(())
    }
}

/// The mount point holding `path`: the longest mount point in /proc/self/mountinfo that is
/// an ancestor of its canonical form.
fn mountpoint_of(path: &Path) -> Result<PathBuf, ImagesError> {
    let canonical = fs::canonicalize(path).map_err(ImagesError::io("resolve", path))?;
    let mountinfo = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(mountinfo).map_err(ImagesError::io("read", mountinfo))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_field(field)))
        .filter(|mount| canonical.starts_with(mount))
        .max_by_key(|mount| mount.as_os_str().len())
        .unwrap_or_else(|| PathBuf::from("/")))
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let octal = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(value) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_fields_are_unescaped() {
        assert_eq!(unescape_mount_field(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape_mount_field(r"/plain"), "/plain");
        assert_eq!(unescape_mount_field(r"/x\"), r"/x\");
    }

    #[test]
    fn root_is_on_some_mount() {
        let mount = mountpoint_of(Path::new("/proc/self")).unwrap();
        assert_eq!(mount, PathBuf::from("/proc"));
    }
}

//! Extracting one layer tar into a private staging directory, safely.
//!
//! Every entry is created with `*at` system calls relative to a directory descriptor that
//! was reached from the staging root one component at a time with `O_NOFOLLOW`: a symbolic
//! link extracted earlier (`link -> /etc`) can never be followed by a later entry
//! (`link/passwd`), which is refused instead. Nothing else writes in the staging directory
//! while this runs, so a check cannot be raced.
//!
//! Decisions, applied to every layer:
//! - OCI whiteouts become overlayfs ones: `.wh.NAME` a character device 0:0 named `NAME`,
//!   `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory; other
//!   `.wh..wh.*` (AUFS bookkeeping) entries are skipped.
//! - Character and block devices are skipped and counted: a container image may not put
//!   device nodes on a VM's disk (a guest runtime creates `/dev` itself). FIFOs are kept.
//! - Ownership, mode and setuid/setgid/sticky bits are kept as the tar says, as containerd
//!   and Kata do: the files live on the VM's disk and the VM is the isolation boundary.
//! - Hard links must name an earlier non-directory entry of the same layer.
//! - PAX xattrs `user.*` and `security.capability` are kept; others (notably
//!   `trusted.overlay.*`, which only whiteout handling may set) are dropped and counted.
//! - Converting needs root: ownership, whiteout devices and `trusted.*` xattrs need it.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags, CWD};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::layer::tar_path::{LayerPath, TarPathError};

/// Layers with more entries than this are refused unless the store is told otherwise
/// ([`LayerLimits`]): the converter keeps each entry's metadata in memory until the end.
pub const MAX_ENTRIES_PER_LAYER: u64 = 500_000;
/// Layers whose uncompressed tar is larger than this are refused unless the store is told
/// otherwise: what a small compressed blob can expand to is bounded by it, on disk too.
pub const MAX_TAR_BYTES_PER_LAYER: u64 = 64 << 30;

/// What one layer may cost the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerLimits {
    /// Tar entries (files, directories, links, whiteouts).
    pub max_entries: u64,
    /// Bytes of the uncompressed tar stream, headers and padding included.
    pub max_tar_bytes: u64,
}

impl Default for LayerLimits {
    fn default() -> LayerLimits {
        LayerLimits {
            max_entries: MAX_ENTRIES_PER_LAYER,
            max_tar_bytes: MAX_TAR_BYTES_PER_LAYER,
        }
    }
}

pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
pub(crate) const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("could not read the next tar entry")]
    ReadArchive(#[source] io::Error),
    #[error("tar entry has an unsafe path")]
    UnsafePath(#[source] TarPathError),
    #[error("tar entry {entry} has a malformed header field")]
    MalformedHeader {
        entry: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "tar entry {entry} would be written through the symbolic link or non-directory {component}"
    )]
    ThroughNonDirectory { entry: String, component: String },
    #[error("hard link {entry} points to {target}, which is not an earlier file of this layer")]
    HardLinkTargetNotInLayer { entry: String, target: String },
    #[error("link entry {entry} names no target")]
    MissingLinkTarget { entry: String },
    #[error("whiteout entry {entry} names no file to hide")]
    InvalidWhiteout { entry: String },
    #[error("tar entry {entry} has type {kind:?}, which layers may not contain")]
    UnsupportedEntryType { entry: String, kind: u8 },
    #[error("tar entry {entry} is the layer root but is not a directory")]
    RootNotDirectory { entry: String },
    #[error("the layer has more than {0} entries, the store's limit")]
    TooManyEntries(u64),
    #[error("could not {operation} for tar entry {entry}; converting layers needs root (CAP_CHOWN, CAP_MKNOD, CAP_SYS_ADMIN for trusted.* xattrs)")]
    NeedsPrivilege {
        entry: String,
        operation: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("could not {operation} for tar entry {entry}")]
    Filesystem {
        entry: String,
        operation: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("tar entry {entry} has xattrs of {bytes} bytes; at most {max} fit an inode")]
    XattrsTooLarge { entry: String, bytes: u64, max: u64 },
    #[error("symbolic link {entry} has a target longer than 4095 bytes")]
    LinkTargetTooLong { entry: String },
    #[error("the layer's EROFS image would exceed 16 TiB")]
    ImageTooLarge,
    #[error("could not write the EROFS image {path}")]
    WriteImage {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not open the staging directory {0}")]
    OpenStaging(String, #[source] io::Error),
}

/// What an extraction did, kept in the layer's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtractStats {
    pub entries: u64,
    pub regular_files: u64,
    pub file_bytes: u64,
    pub whiteouts: u64,
    pub opaque_directories: u64,
    pub skipped_device_nodes: u64,
    pub skipped_xattrs: u64,
    /// The newest mtime of any entry: the image's reproducible build time.
    pub newest_mtime: i64,
}

/// Metadata applied to directories once all entries are in (children change a directory's
/// mtime, and a read-only mode must not block later entries).
#[derive(Default)]
struct DirectoryMetadata {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// One entry's header facts.
pub(crate) struct EntryHeader {
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime: i64,
    pub(crate) xattrs: Vec<(String, Vec<u8>)>,
}

/// Extracts tar entries under a staging root.
pub struct LayerExtractor {
    root: OwnedFd,
    stats: ExtractStats,
    /// Non-directories written so far: the only legal hard-link targets.
    non_directories: HashSet<LayerPath>,
    directories: BTreeMap<LayerPath, DirectoryMetadata>,
    copy_buffer: Vec<u8>,
    max_entries: u64,
}

impl LayerExtractor {
    /// Opens `staging_root`, an empty directory nobody else writes in.
    pub fn new(staging_root: &Path) -> Result<LayerExtractor, ExtractError> {
        let root = rustix::fs::openat(
            CWD,
            staging_root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ExtractError::OpenStaging(staging_root.display().to_string(), e.into()))?;
        Ok(LayerExtractor {
            root,
            stats: ExtractStats::default(),
            non_directories: HashSet::new(),
            directories: BTreeMap::new(),
            copy_buffer: vec![0; 256 * 1024],
            max_entries: MAX_ENTRIES_PER_LAYER,
        })
    }

    /// Refuses a layer with more than `max_entries` entries.
    pub fn with_max_entries(mut self, max_entries: u64) -> LayerExtractor {
        self.max_entries = max_entries;
        self
    }

    /// Extracts every entry of `archive`, then applies directory metadata. The archive's
    /// reader is left just after the end-of-archive marker.
    pub fn extract_all<R: Read>(
        mut self,
        archive: &mut tar::Archive<R>,
    ) -> Result<ExtractStats, ExtractError> {
        for entry in archive.entries().map_err(ExtractError::ReadArchive)? {
            let entry = entry.map_err(ExtractError::ReadArchive)?;
            self.stats.entries += 1;
            if self.stats.entries > self.max_entries {
                return Err(ExtractError::TooManyEntries(self.max_entries));
            }
            self.extract_entry(entry)?;
        }
        self.apply_directory_metadata()?;
        Ok(self.stats)
    }

    fn extract_entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let path = LayerPath::parse(&entry.path_bytes()).map_err(ExtractError::UnsafePath)?;
        let kind = entry.header().entry_type();
        let header = read_entry_header(&mut self.stats, &path, &mut entry)?;

        if let Some((parent, name)) = path.split_last() {
            let name_bytes = name.as_encoded_bytes();
            if name_bytes.starts_with(WHITEOUT_PREFIX) {
                return self.extract_whiteout(&path, parent, name_bytes);
            }
        }
        match kind {
            tar::EntryType::Directory => self.extract_directory(path, header),
            _ if path.is_root() => Err(ExtractError::RootNotDirectory {
                entry: path.to_string(),
            }),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.extract_regular(&path, header, &mut entry)
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ExtractError::MissingLinkTarget {
                        entry: path.to_string(),
                    })?
                    .into_owned();
                self.extract_symlink(&path, header, &target)
            }
            tar::EntryType::Link => {
                let target =
                    entry
                        .link_name_bytes()
                        .ok_or_else(|| ExtractError::MissingLinkTarget {
                            entry: path.to_string(),
                        })?;
                let target = LayerPath::parse(&target).map_err(ExtractError::UnsafePath)?;
                self.extract_hard_link(&path, &target)
            }
            tar::EntryType::Fifo => self.extract_fifo(&path, header),
            tar::EntryType::Char | tar::EntryType::Block => {
                self.stats.skipped_device_nodes += 1;
                Ok(())
            }
            // The tar reader folds these into the entries they describe; stray ones carry
            // nothing for the filesystem.
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => Ok(()),
            other => Err(ExtractError::UnsupportedEntryType {
                entry: path.to_string(),
                kind: other.as_byte(),
            }),
        }
    }

    fn extract_whiteout(
        &mut self,
        path: &LayerPath,
        parent: &[std::ffi::OsString],
        name: &[u8],
    ) -> Result<(), ExtractError> {
        let entry = path.to_string();
        let parent_fd = self.open_directory(&entry, parent, true)?;
        if name == OPAQUE_MARKER {
            rustix::fs::fsetxattr(&parent_fd, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(|e| fs_error(&entry, "set the opaque xattr", e))?;
            self.stats.opaque_directories += 1;
            return Ok(());
        }
        if name.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(ExtractError::InvalidWhiteout { entry });
        }
        let hidden = OsStr::from_bytes(hidden);
        self.remove_existing(&parent_fd, &entry, hidden, parent)?;
        rustix::fs::mknodat(
            &parent_fd,
            hidden,
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .map_err(|e| fs_error(&entry, "create the whiteout device", e))?;
        self.stats.whiteouts += 1;
        Ok(())
    }

    fn extract_directory(
        &mut self,
        path: LayerPath,
        header: EntryHeader,
    ) -> Result<(), ExtractError> {
        let entry = path.to_string();
        if let Some((parent, name)) = path.split_last() {
            let parent_fd = self.open_directory(&entry, parent, true)?;
            let existing = stat_no_follow(&parent_fd, name);
            if !existing
                .is_some_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Directory)
            {
                self.remove_existing(&parent_fd, &entry, name, parent)?;
                rustix::fs::mkdirat(&parent_fd, name, Mode::from_raw_mode(0o700))
                    .map_err(|e| fs_error(&entry, "create the directory", e))?;
            }
        }
        self.non_directories.remove(&path);
        self.directories.insert(
            path,
            DirectoryMetadata {
                mode: header.mode,
                uid: header.uid,
                gid: header.gid,
                mtime: header.mtime,
                xattrs: header.xattrs,
            },
        );
        Ok(())
    }

    fn extract_regular<R: Read>(
        &mut self,
        path: &LayerPath,
        header: EntryHeader,
        content: &mut R,
    ) -> Result<(), ExtractError> {
        let entry = path.to_string();
        let (parent, name) = self.prepare_non_directory(path)?;
        let fd = rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| fs_error(&entry, "create the file", e))?;
        let mut file = File::from(fd);
        let mut written = 0u64;
        loop {
            let n = match content.read(&mut self.copy_buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ExtractError::ReadArchive(e)),
            };
            file.write_all(&self.copy_buffer[..n])
                .map_err(|e| io_error(&entry, "write the file", e))?;
            written += n as u64;
        }
        apply_metadata(&file, &entry, &header)?;
        self.stats.regular_files += 1;
        self.stats.file_bytes += written;
        self.non_directories.insert(path.clone());
        Ok(())
    }

    fn extract_symlink(
        &mut self,
        path: &LayerPath,
        header: EntryHeader,
        target: &[u8],
    ) -> Result<(), ExtractError> {
        let entry = path.to_string();
        if target.is_empty() || target.contains(&0) {
            return Err(ExtractError::MissingLinkTarget { entry });
        }
        let (parent, name) = self.prepare_non_directory(path)?;
        // The target is stored, never resolved: it may point anywhere inside the image.
        rustix::fs::symlinkat(OsStr::from_bytes(target), &parent, name)
            .map_err(|e| fs_error(&entry, "create the symbolic link", e))?;
        rustix::fs::chownat(
            &parent,
            name,
            Some(rustix::fs::Uid::from_raw(header.uid)),
            Some(rustix::fs::Gid::from_raw(header.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fs_error(&entry, "set the link's owner", e))?;
        rustix::fs::utimensat(
            &parent,
            name,
            &timestamps(header.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fs_error(&entry, "set the link's mtime", e))?;
        self.non_directories.insert(path.clone());
        Ok(())
    }

    fn extract_hard_link(
        &mut self,
        path: &LayerPath,
        target: &LayerPath,
    ) -> Result<(), ExtractError> {
        let entry = path.to_string();
        if !self.non_directories.contains(target) {
            return Err(ExtractError::HardLinkTargetNotInLayer {
                entry,
                target: target.to_string(),
            });
        }
        if path == target {
            return Ok(());
        }
        let Some((target_parent, target_name)) = target.split_last() else {
            return Err(ExtractError::HardLinkTargetNotInLayer {
                entry,
                target: target.to_string(),
            });
        };
        let target_parent_fd = self.open_directory(&entry, target_parent, false)?;
        let (parent, name) = self.prepare_non_directory(path)?;
        // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        rustix::fs::linkat(
            &target_parent_fd,
            target_name,
            &parent,
            name,
            AtFlags::empty(),
        )
        .map_err(|e| fs_error(&entry, "create the hard link", e))?;
        self.non_directories.insert(path.clone());
        Ok(())
    }

    fn extract_fifo(&mut self, path: &LayerPath, header: EntryHeader) -> Result<(), ExtractError> {
        let entry = path.to_string();
        let (parent, name) = self.prepare_non_directory(path)?;
        rustix::fs::mknodat(&parent, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
            .map_err(|e| fs_error(&entry, "create the fifo", e))?;
        rustix::fs::chownat(
            &parent,
            name,
            Some(rustix::fs::Uid::from_raw(header.uid)),
            Some(rustix::fs::Gid::from_raw(header.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fs_error(&entry, "set the fifo's owner", e))?;
        // The name was just made a fifo in a directory only this extractor writes: chmodat
        // cannot be redirected through a symlink here.
        rustix::fs::chmodat(
            &parent,
            name,
            Mode::from_raw_mode(header.mode),
            AtFlags::empty(),
        )
        .map_err(|e| fs_error(&entry, "set the fifo's mode", e))?;
        rustix::fs::utimensat(
            &parent,
            name,
            &timestamps(header.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fs_error(&entry, "set the fifo's mtime", e))?;
        self.non_directories.insert(path.clone());
        Ok(())
    }

    /// Opens the parent of a non-directory entry and clears its name.
    fn prepare_non_directory<'p>(
        &mut self,
        path: &'p LayerPath,
    ) -> Result<(OwnedFd, &'p OsStr), ExtractError> {
        let entry = path.to_string();
        let (parent, name) = path
            .split_last()
            .ok_or_else(|| ExtractError::RootNotDirectory {
                entry: entry.clone(),
            })?;
        let parent_fd = self.open_directory(&entry, parent, true)?;
        self.remove_existing(&parent_fd, &entry, name, parent)?;
        Ok((parent_fd, name))
    }

    /// Walks from the staging root to `components` without following symbolic links,
    /// creating missing directories (root-owned, 0755, as Docker does) when `create`.
    fn open_directory(
        &self,
        entry: &str,
        components: &[std::ffi::OsString],
        create: bool,
    ) -> Result<OwnedFd, ExtractError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut current = rustix::fs::openat(&self.root, ".", flags, Mode::empty())
            .map_err(|e| fs_error(entry, "open the staging root", e))?;
        for (depth, component) in components.iter().enumerate() {
            let opened = match rustix::fs::openat(&current, component, flags, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    rustix::fs::mkdirat(&current, component, Mode::from_raw_mode(0o755))
                        .map_err(|e| fs_error(entry, "create a parent directory", e))?;
                    rustix::fs::openat(&current, component, flags, Mode::empty())
                }
                other => other,
            };
            current = match opened {
                Ok(fd) => fd,
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    let prefix: std::path::PathBuf = components[..=depth].iter().collect();
                    return Err(ExtractError::ThroughNonDirectory {
                        entry: entry.to_owned(),
                        component: format!("/{}", prefix.display()),
                    });
                }
                Err(e) => return Err(fs_error(entry, "open a parent directory", e)),
            };
        }
        Ok(current)
    }

    /// Removes whatever `name` is in `parent` (a later tar entry replaces an earlier one);
    /// a directory goes with everything under it.
    fn remove_existing(
        &mut self,
        parent: &OwnedFd,
        entry: &str,
        name: &OsStr,
        parent_components: &[std::ffi::OsString],
    ) -> Result<(), ExtractError> {
        let Some(stat) = stat_no_follow(parent, name) else {
            return Ok(());
        };
        let mut removed = LayerPath::parse(b"").map_err(ExtractError::UnsafePath)?;
        for component in parent_components
            .iter()
            .map(|c| c.as_os_str())
            .chain([name])
        {
            let mut raw = removed
                .to_relative_path()
                .into_os_string()
                .into_encoded_bytes();
            raw.push(b'/');
            raw.extend_from_slice(component.as_encoded_bytes());
            removed = LayerPath::parse(&raw).map_err(ExtractError::UnsafePath)?;
        }
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            remove_tree_at(parent, name).map_err(|e| io_error(entry, "replace a directory", e))?;
            self.directories
                .retain(|path, _| !path.starts_with(&removed));
            self.non_directories
                .retain(|path| !path.starts_with(&removed));
        } else {
            rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(|e| fs_error(entry, "replace an earlier entry", e))?;
            self.non_directories.remove(&removed);
        }
        Ok(())
    }

    fn apply_directory_metadata(&mut self) -> Result<(), ExtractError> {
        for (path, metadata) in std::mem::take(&mut self.directories) {
            let entry = path.to_string();
            let fd = match path.split_last() {
                None => rustix::fs::openat(
                    &self.root,
                    ".",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| fs_error(&entry, "open the directory", e))?,
                Some((parent, name)) => {
                    let parent_fd = self.open_directory(&entry, parent, false)?;
                    rustix::fs::openat(
                        &parent_fd,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| fs_error(&entry, "open the directory", e))?
                }
            };
            let header = EntryHeader {
                mode: metadata.mode,
                uid: metadata.uid,
                gid: metadata.gid,
                mtime: metadata.mtime,
                xattrs: metadata.xattrs,
            };
            apply_metadata(&fd, &entry, &header)?;
        }
        Ok(())
    }
}

/// The mode, owner, mtime and kept xattrs of `entry`; counts dropped xattrs and the
/// newest mtime in `stats`.
pub(crate) fn read_entry_header<R: Read>(
    stats: &mut ExtractStats,
    path: &LayerPath,
    entry: &mut tar::Entry<'_, R>,
) -> Result<EntryHeader, ExtractError> {
    let malformed = |source| ExtractError::MalformedHeader {
        entry: path.to_string(),
        source,
    };
    let out_of_range = || {
        malformed(io::Error::new(
            io::ErrorKind::InvalidData,
            "uid, gid or mtime out of range",
        ))
    };
    let header = entry.header();
    let raw = header.as_old();
    let mode = lenient_numeric(header.mode().map(u64::from), &raw.mode).map_err(malformed)?;
    let mode = u32::try_from(mode & 0o7777).map_err(|_| out_of_range())?;
    let uid = lenient_numeric(header.uid(), &raw.uid).map_err(malformed)?;
    let uid = u32::try_from(uid).map_err(|_| out_of_range())?;
    let gid = lenient_numeric(header.gid(), &raw.gid).map_err(malformed)?;
    let gid = u32::try_from(gid).map_err(|_| out_of_range())?;
    let mtime = lenient_numeric(header.mtime(), &raw.mtime).map_err(malformed)?;
    let mtime = i64::try_from(mtime).map_err(|_| out_of_range())?;
    stats.newest_mtime = stats.newest_mtime.max(mtime);
    let mut xattrs = Vec::new();
    if let Some(extensions) = entry.pax_extensions().map_err(malformed)? {
        for extension in extensions {
            let extension = extension.map_err(malformed)?;
            let Ok(key) = extension.key() else { continue };
            let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) else {
                continue;
            };
            if name.starts_with("user.") || name == "security.capability" {
                xattrs.push((name.to_owned(), extension.value_bytes().to_vec()));
            } else {
                stats.skipped_xattrs += 1;
            }
        }
    }
    Ok(EntryHeader {
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

/// Sets owner, then mode (chown clears setuid bits), xattrs, then mtime, on an open file or
/// directory.
fn apply_metadata(fd: impl AsFd, entry: &str, header: &EntryHeader) -> Result<(), ExtractError> {
    let fd = fd.as_fd();
    rustix::fs::fchown(
        fd,
        Some(rustix::fs::Uid::from_raw(header.uid)),
        Some(rustix::fs::Gid::from_raw(header.gid)),
    )
    .map_err(|e| fs_error(entry, "set the owner", e))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(header.mode))
        .map_err(|e| fs_error(entry, "set the mode", e))?;
    for (name, value) in &header.xattrs {
        rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty())
            .map_err(|e| fs_error(entry, "set an xattr", e))?;
    }
    rustix::fs::futimens(fd, &timestamps(header.mtime))
        .map_err(|e| fs_error(entry, "set the mtime", e))?;
    Ok(())
}

/// A numeric header field; an empty one (all NUL or spaces, as some writers leave unused
/// fields) reads as 0, like GNU tar does.
fn lenient_numeric(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Ok(value) => Ok(value),
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        Err(e) => Err(e),
    }
}

fn timestamps(mtime: i64) -> Timestamps {
    let time = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: time,
        last_modification: time,
    }
}

fn stat_no_follow(dir: &OwnedFd, name: &OsStr) -> Option<rustix::fs::Stat> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()
}

/// Removes directory `name` under `parent` and everything in it, never following links.
fn remove_tree_at(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for child in rustix::fs::Dir::read_from(&dir)? {
        let child = child?;
        let child_name = child.file_name().to_bytes();
        if child_name != b"." && child_name != b".." {
            children.push((child_name.to_vec(), child.file_type()));
        }
    }
    for (child_name, file_type) in children {
        let child_name = OsStr::from_bytes(&child_name);
        let is_directory = match file_type {
            FileType::Unknown => stat_no_follow(&dir, child_name)
                .is_some_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Directory),
            known => known == FileType::Directory,
        };
        if is_directory {
            remove_tree_at(&dir, child_name)?;
        } else {
            rustix::fs::unlinkat(&dir, child_name, AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

fn fs_error(entry: &str, operation: &'static str, errno: Errno) -> ExtractError {
    io_error(entry, operation, errno.into())
}

fn io_error(entry: &str, operation: &'static str, source: io::Error) -> ExtractError {
    if source.kind() == io::ErrorKind::PermissionDenied {
        ExtractError::NeedsPrivilege {
            entry: entry.to_owned(),
            operation,
            source,
        }
    } else {
        ExtractError::Filesystem {
            entry: entry.to_owned(),
            operation,
            source,
        }
    }
}

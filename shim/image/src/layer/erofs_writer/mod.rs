//! Writing a layer's EROFS image straight from its tar stream, in one pass.
//!
//! File data goes to the image as it arrives, each file from a fresh 4 KiB block
//! (`FLAT_PLAIN`); a file's last partial block is kept in memory instead and later stored
//! right after its inode (`FLAT_INLINE`), as `mkfs.erofs` does, while the budget for such
//! tails lasts. The tree (names, owners, modes, xattrs) is kept in memory; once the tar
//! ends (and its diffID is proven) `finish` lays out, after the data, the directories' full
//! blocks, then the metadata area (inodes with their xattrs and inline tails, root first),
//! then writes the superblock into block 0 and fsyncs once. Nothing but the image file is
//! created on the host: whiteouts are character devices 0:0 inside the image only.
//!
//! The decisions are the staged extractor's (see `extract`), entry by entry: the same path
//! checks, whiteouts and opaque directories, device nodes skipped, ownership and
//! setuid/setgid/sticky bits kept, hard links only to earlier non-directories of the layer,
//! later entries replacing earlier ones (a replaced file's blocks stay in the image,
//! unreferenced), and the same kept xattrs. Directories the tar does not list, and
//! whiteouts, are root-owned (0755 and 0000) with the image's build time as mtime, which is
//! the newest mtime in the tar, as the staged path gave them through `SOURCE_DATE_EPOCH`.
//!
//! Memory: about 110 bytes plus the name per tar entry while reading (a `Node` and its
//! directory entry), 36 more per entry while laying out, plus the inline tails, at most
//! `INLINE_TAIL_BUDGET` in all (later tails go to blocks of their own). With the store's
//! limit of 2,000,000 entries that is at most about 300 MiB plus names plus 64 MiB.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::layer::erofs_format::{
    xattr_area_size, Xattr, BLOCK_SIZE, EXTENDED_INODE_SIZE, FT_CHRDEV, FT_DIR, FT_FIFO,
    FT_REG_FILE, FT_SYMLINK, S_IFCHR, S_IFDIR, S_IFIFO, S_IFLNK, S_IFREG, TRUSTED_XATTR_INDEX,
};
use crate::layer::extract::{
    read_entry_header, EntryHeader, ExtractError, ExtractStats, AUFS_META_PREFIX,
    MAX_ENTRIES_PER_LAYER, OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX,
};
use crate::layer::tar_path::LayerPath;

mod layout;
#[cfg(test)]
mod tests;

/// Bytes of file tails kept in memory to be stored inline; beyond it tails take a block.
pub const INLINE_TAIL_BUDGET: usize = 64 << 20;
/// The longest symbolic link target (PATH_MAX less its NUL).
const MAX_LINK_TARGET: usize = 4095;
/// An inode with its xattrs must fit one block.
const MAX_XATTR_AREA: u64 = BLOCK_SIZE - EXTENDED_INODE_SIZE;
const OUTPUT_BUFFER: usize = 4 << 20;
/// The root directory's index in `nodes`.
const ROOT: u32 = 0;
/// A node's mtime that is the image's build time, known only at the end.
const BUILD_TIME: i64 = i64::MIN;

enum Body {
    Directory {
        /// Sorted by name bytes, as EROFS directories must be.
        children: BTreeMap<Box<[u8]>, u32>,
    },
    /// A regular file or a symbolic link's target: full blocks from `blkaddr`, and the
    /// tail kept for the metadata area if `tail` (else the last block is padded).
    Data {
        blkaddr: u32,
        tail: Option<Box<[u8]>>,
    },
    Whiteout,
    Fifo,
}

struct Node {
    body: Body,
    xattrs: Box<[Xattr]>,
    size: u64,
    mtime: i64,
    uid: u32,
    gid: u32,
    /// Type and permission bits.
    mode: u16,
}

impl Node {
    fn implicit_directory() -> Node {
        Node {
            body: Body::Directory {
                children: BTreeMap::new(),
            },
            xattrs: Box::new([]),
            size: 0,
            mtime: BUILD_TIME,
            uid: 0,
            gid: 0,
            mode: S_IFDIR | 0o755,
        }
    }

    fn is_directory(&self) -> bool {
        matches!(self.body, Body::Directory { .. })
    }

    fn file_type(&self) -> u8 {
        match self.body {
            Body::Directory { .. } => FT_DIR,
            Body::Data { .. } if self.mode & S_IFLNK == S_IFLNK => FT_SYMLINK,
            Body::Data { .. } => FT_REG_FILE,
            Body::Whiteout => FT_CHRDEV,
            Body::Fifo => FT_FIFO,
        }
    }
}

/// The image file behind a large buffer: written front to back, once.
///
/// Full buffers go to the disk with `O_DIRECT` where the filesystem takes it: a layer's
/// data then never passes through the page cache, so converting a big layer neither fills
/// the node's memory with its dirty pages (which pods compete with) nor pays the kernel's
/// copy into freshly allocated cache pages, and the final fsync has only the metadata left
/// to write. The last, partial buffer and the superblock are written through the page
/// cache (`O_DIRECT` is cleared first). Where `O_DIRECT` is refused (a filesystem without
/// it) or a direct write fails as unaligned, the image is written buffered, as before.
struct Output {
    file: File,
    path: PathBuf,
    buffer: AlignedBuffer,
    filled: usize,
    flushed: u64,
    direct: bool,
}

/// Alignment of the buffer, and of every length and offset written with `O_DIRECT`.
const DIRECT_ALIGN: usize = 4096;

/// `OUTPUT_BUFFER` bytes starting at a `DIRECT_ALIGN`-aligned address (a slice of a larger
/// allocation; no unsafe code needed).
struct AlignedBuffer {
    storage: Box<[u8]>,
    start: usize,
}

impl AlignedBuffer {
    fn new() -> AlignedBuffer {
        let storage = vec![0u8; OUTPUT_BUFFER + DIRECT_ALIGN].into_boxed_slice();
        let start = storage.as_ptr().align_offset(DIRECT_ALIGN);
        AlignedBuffer { storage, start }
    }
}

impl std::ops::Deref for AlignedBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + OUTPUT_BUFFER]
    }
}

impl std::ops::DerefMut for AlignedBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + OUTPUT_BUFFER]
    }
}

impl Output {
    /// Turns `O_DIRECT` on for the image file, if its filesystem takes it.
    fn try_direct(&mut self) {
        let Ok(flags) = rustix::fs::fcntl_getfl(&self.file) else {
            return;
        };
        self.direct =
            rustix::fs::fcntl_setfl(&self.file, flags | rustix::fs::OFlags::DIRECT).is_ok();
    }

    /// Goes on through the page cache.
    fn leave_direct(&mut self) -> Result<(), ExtractError> {
        if self.direct {
            rustix::fs::fcntl_getfl(&self.file)
                .and_then(|flags| {
                    rustix::fs::fcntl_setfl(&self.file, flags - rustix::fs::OFlags::DIRECT)
                })
                .map_err(|e| self.write_error(e.into()))?;
            self.direct = false;
        }
        Ok(())
    }

    fn position(&self) -> u64 {
        self.flushed + self.filled as u64
    }

    fn write_error(&self, source: io::Error) -> ExtractError {
        ExtractError::WriteImage {
            path: self.path.clone(),
            source,
        }
    }

    fn flush(&mut self) -> Result<(), ExtractError> {
        if !self.filled.is_multiple_of(DIRECT_ALIGN) {
            self.leave_direct()?;
        }
        let mut written = 0;
        while written < self.filled {
            match self.file.write(&self.buffer[written..self.filled]) {
                Ok(0) => return Err(self.write_error(io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Refused as unaligned: the rest goes through the page cache.
                Err(e)
                    if self.direct
                        && e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
                {
                    self.leave_direct()?
                }
                Err(e) => return Err(self.write_error(e)),
            }
            if !written.is_multiple_of(DIRECT_ALIGN) {
                self.leave_direct()?;
            }
        }
        self.flushed += self.filled as u64;
        self.filled = 0;
        Ok(())
    }

    fn write(&mut self, mut bytes: &[u8]) -> Result<(), ExtractError> {
        while !bytes.is_empty() {
            if self.filled == self.buffer.len() {
                self.flush()?;
            }
            let n = bytes.len().min(self.buffer.len() - self.filled);
            self.buffer[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    fn zeros(&mut self, mut count: u64) -> Result<(), ExtractError> {
        while count > 0 {
            if self.filled == self.buffer.len() {
                self.flush()?;
            }
            let n = (count as usize).min(self.buffer.len() - self.filled);
            self.buffer[self.filled..self.filled + n].fill(0);
            self.filled += n;
            count -= n as u64;
        }
        Ok(())
    }

    fn pad_to(&mut self, position: u64) -> Result<(), ExtractError> {
        self.zeros(position - self.position())
    }

    fn pad_to_block(&mut self) -> Result<(), ExtractError> {
        self.pad_to(self.position().next_multiple_of(BLOCK_SIZE))
    }

    /// Copies exactly `count` bytes of `reader` into the image, reading straight into the
    /// buffer.
    fn copy_from<R: Read>(&mut self, reader: &mut R, mut count: u64) -> Result<(), ExtractError> {
        while count > 0 {
            if self.filled == self.buffer.len() {
                self.flush()?;
            }
            let room = (count as usize).min(self.buffer.len() - self.filled);
            let n = match reader.read(&mut self.buffer[self.filled..self.filled + room]) {
                Ok(0) => {
                    return Err(ExtractError::ReadArchive(
                        io::ErrorKind::UnexpectedEof.into(),
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ExtractError::ReadArchive(e)),
            };
            self.filled += n;
            count -= n as u64;
        }
        Ok(())
    }

    /// The block the next byte lands in, which must be addressable.
    fn block_address(&self) -> Result<u32, ExtractError> {
        u32::try_from(self.position() / BLOCK_SIZE).map_err(|_| ExtractError::ImageTooLarge)
    }
}

/// Writes one layer's EROFS image from its tar entries.
pub struct ErofsLayerWriter {
    out: Output,
    nodes: Vec<Node>,
    stats: ExtractStats,
    inline_budget: usize,
    max_entries: u64,
}

impl ErofsLayerWriter {
    /// Creates the image file at `path`, which must not exist.
    pub fn create(path: &Path) -> Result<ErofsLayerWriter, ExtractError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| ExtractError::WriteImage {
                path: path.to_owned(),
                source,
            })?;
        let mut out = Output {
            file,
            path: path.to_owned(),
            buffer: AlignedBuffer::new(),
            filled: 0,
            flushed: 0,
            direct: false,
        };
        out.try_direct();
        // Block 0 holds the superblock, written last.
        out.zeros(BLOCK_SIZE)?;
        Ok(ErofsLayerWriter {
            out,
            nodes: vec![Node::implicit_directory()],
            stats: ExtractStats::default(),
            inline_budget: INLINE_TAIL_BUDGET,
            max_entries: MAX_ENTRIES_PER_LAYER,
        })
    }

    /// Refuses a layer with more than `max_entries` entries.
    pub fn with_max_entries(mut self, max_entries: u64) -> ErofsLayerWriter {
        self.max_entries = max_entries;
        self
    }

    /// Adds every entry of `archive`, writing file data as it comes. The archive's reader
    /// is left just after the end-of-archive marker.
    pub fn add_entries<R: Read>(
        &mut self,
        archive: &mut tar::Archive<R>,
    ) -> Result<(), ExtractError> {
        for entry in archive.entries().map_err(ExtractError::ReadArchive)? {
            let entry = entry.map_err(ExtractError::ReadArchive)?;
            self.stats.entries += 1;
            if self.stats.entries > self.max_entries {
                return Err(ExtractError::TooManyEntries(self.max_entries));
            }
            self.add_entry(entry)?;
        }
        Ok(())
    }

    fn add_entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let path = LayerPath::parse(&entry.path_bytes()).map_err(ExtractError::UnsafePath)?;
        let kind = entry.header().entry_type();
        let mut header = read_entry_header(&mut self.stats, &path, &mut entry)?;

        if let Some((parent, name)) = path.split_last() {
            let name_bytes = name.as_bytes();
            if name_bytes.starts_with(WHITEOUT_PREFIX) {
                return self.add_whiteout(&path, parent, name_bytes);
            }
        }
        match kind {
            tar::EntryType::Directory => self.add_directory(&path, header),
            _ if path.is_root() => Err(ExtractError::RootNotDirectory {
                entry: path.to_string(),
            }),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                self.add_regular(&path, header, size, &mut entry)
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ExtractError::MissingLinkTarget {
                        entry: path.to_string(),
                    })?
                    .into_owned();
                self.add_symlink(&path, header, &target)
            }
            tar::EntryType::Link => {
                let target =
                    entry
                        .link_name_bytes()
                        .ok_or_else(|| ExtractError::MissingLinkTarget {
                            entry: path.to_string(),
                        })?;
                let target = LayerPath::parse(&target).map_err(ExtractError::UnsafePath)?;
                self.add_hard_link(&path, &target)
            }
            tar::EntryType::Fifo => {
                let entry = path.to_string();
                let (parent, name) = self.parent_of_non_directory(&entry, &path)?;
                let xattrs = self.convert_xattrs(std::mem::take(&mut header.xattrs));
                check_xattr_area(&entry, &xattrs)?;
                let node = node_from_header(S_IFIFO, &header, xattrs, Body::Fifo, 0);
                self.insert(parent, name, node);
                Ok(())
            }
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

    fn add_whiteout(
        &mut self,
        path: &LayerPath,
        parent: &[OsString],
        name: &[u8],
    ) -> Result<(), ExtractError> {
        let entry = path.to_string();
        let parent = self.directory(&entry, parent)?;
        if name == OPAQUE_MARKER {
            let node = &mut self.nodes[parent as usize];
            let mut xattrs: Vec<Xattr> = std::mem::take(&mut node.xattrs).into();
            xattrs.retain(|x| !is_opaque(x));
            xattrs.push(opaque_xattr());
            xattrs.sort();
            check_xattr_area(&entry, &xattrs)?;
            self.nodes[parent as usize].xattrs = xattrs.into();
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
        let whiteout = Node {
            body: Body::Whiteout,
            xattrs: Box::new([]),
            size: 0,
            mtime: BUILD_TIME,
            uid: 0,
            gid: 0,
            mode: S_IFCHR,
        };
        self.insert(parent, hidden, whiteout);
        self.stats.whiteouts += 1;
        Ok(())
    }

    fn add_directory(
        &mut self,
        path: &LayerPath,
        mut header: EntryHeader,
    ) -> Result<(), ExtractError> {
        let entry = path.to_string();
        let index = match path.split_last() {
            None => ROOT,
            Some((parent, name)) => {
                let parent = self.directory(&entry, parent)?;
                match self.child(parent, name.as_bytes()) {
                    Some(existing) if self.nodes[existing as usize].is_directory() => existing,
                    _ => self.insert(parent, name.as_bytes(), Node::implicit_directory()),
                }
            }
        };
        let mut xattrs = self.convert_xattrs(std::mem::take(&mut header.xattrs));
        // An opaque marker seen before the directory's own entry still applies.
        if self.nodes[index as usize].xattrs.iter().any(is_opaque) {
            xattrs.push(opaque_xattr());
        }
        xattrs.sort();
        check_xattr_area(&entry, &xattrs)?;
        let node = &mut self.nodes[index as usize];
        node.xattrs = xattrs.into();
        node.mode = S_IFDIR | header.mode as u16;
        node.uid = header.uid;
        node.gid = header.gid;
        node.mtime = header.mtime;
        Ok(())
    }

    fn add_regular<R: Read>(
        &mut self,
        path: &LayerPath,
        mut header: EntryHeader,
        size: u64,
        content: &mut R,
    ) -> Result<(), ExtractError> {
        let entry = path.to_string();
        let (parent, name) = self.parent_of_non_directory(&entry, path)?;
        let xattrs = self.convert_xattrs(std::mem::take(&mut header.xattrs));
        check_xattr_area(&entry, &xattrs)?;
        let body = self.write_data(content, size, xattr_area_size(&xattrs))?;
        let node = node_from_header(S_IFREG, &header, xattrs, body, size);
        self.insert(parent, name, node);
        self.stats.regular_files += 1;
        self.stats.file_bytes += size;
        Ok(())
    }

    fn add_symlink(
        &mut self,
        path: &LayerPath,
        mut header: EntryHeader,
        target: &[u8],
    ) -> Result<(), ExtractError> {
        let entry = path.to_string();
        if target.is_empty() || target.contains(&0) {
            return Err(ExtractError::MissingLinkTarget { entry });
        }
        if target.len() > MAX_LINK_TARGET {
            return Err(ExtractError::LinkTargetTooLong { entry });
        }
        let (parent, name) = self.parent_of_non_directory(&entry, path)?;
        // The target is stored, never resolved: it may point anywhere inside the image.
        let size = target.len() as u64;
        let xattrs = self.convert_xattrs(std::mem::take(&mut header.xattrs));
        check_xattr_area(&entry, &xattrs)?;
        let body = self.write_data(&mut &target[..], size, xattr_area_size(&xattrs))?;
        let mut node = node_from_header(S_IFLNK, &header, xattrs, body, size);
        node.mode = S_IFLNK | 0o777;
        self.insert(parent, name, node);
        Ok(())
    }

    fn add_hard_link(&mut self, path: &LayerPath, target: &LayerPath) -> Result<(), ExtractError> {
        let entry = path.to_string();
        let linked = self.lookup(target).filter(|&index| {
            matches!(
                self.nodes[index as usize].body,
                Body::Data { .. } | Body::Fifo
            )
        });
        let Some(linked) = linked else {
            return Err(ExtractError::HardLinkTargetNotInLayer {
                entry,
                target: target.to_string(),
            });
        };
        if path == target {
            return Ok(());
        }
        let (parent, name) = self.parent_of_non_directory(&entry, path)?;
        self.link(parent, name, linked);
        Ok(())
    }

    /// Writes `size` bytes of `content` from the next block: all of them, or all but the
    /// last partial block, which is kept to be stored inline if it will fit beside an
    /// extended inode with `xattr_size` bytes of xattrs and the budget allows.
    fn write_data<R: Read>(
        &mut self,
        content: &mut R,
        size: u64,
        xattr_size: u64,
    ) -> Result<Body, ExtractError> {
        let tail_len = (size % BLOCK_SIZE) as usize;
        let inline = tail_len > 0
            && EXTENDED_INODE_SIZE + xattr_size + tail_len as u64 <= BLOCK_SIZE
            && tail_len <= self.inline_budget;
        let in_blocks = if inline { size - tail_len as u64 } else { size };
        let blkaddr = if in_blocks == 0 {
            0
        } else {
            self.out.block_address()?
        };
        self.out.copy_from(content, in_blocks)?;
        self.out.pad_to_block()?;
        self.out.block_address()?;
        let tail = if inline {
            let mut tail = vec![0; tail_len];
            content
                .read_exact(&mut tail)
                .map_err(ExtractError::ReadArchive)?;
            self.inline_budget -= tail_len;
            Some(tail.into_boxed_slice())
        } else {
            None
        };
        Ok(Body::Data { blkaddr, tail })
    }

    /// The kept PAX xattrs as EROFS entries, sorted, the last of a repeated name winning.
    /// Names EROFS cannot store (an empty name after the prefix, a value over 64 KiB,
    /// which no Linux filesystem takes either) are dropped and counted.
    fn convert_xattrs(&mut self, raw: Vec<(String, Vec<u8>)>) -> Vec<Xattr> {
        let mut by_name = BTreeMap::new();
        for (name, value) in raw {
            match Xattr::new(&name, &value) {
                Some(xattr) => {
                    by_name.insert((xattr.index, xattr.suffix.clone()), xattr);
                }
                None => self.stats.skipped_xattrs += 1,
            }
        }
        by_name.into_values().collect()
    }

    fn child(&self, directory: u32, name: &[u8]) -> Option<u32> {
        match &self.nodes[directory as usize].body {
            Body::Directory { children } => children.get(name).copied(),
            _ => None,
        }
    }

    /// Adds `node` as `name` in `directory`, replacing whatever was there; returns its index.
    fn insert(&mut self, directory: u32, name: &[u8], node: Node) -> u32 {
        let index = self.nodes.len() as u32;
        self.nodes.push(node);
        self.link(directory, name, index);
        index
    }

    fn link(&mut self, directory: u32, name: &[u8], index: u32) {
        if let Body::Directory { children } = &mut self.nodes[directory as usize].body {
            children.insert(name.into(), index);
        }
    }

    /// The directory at `components`, creating missing ones; a component that exists but is
    /// not a directory (a symbolic link above all) cannot be walked through.
    fn directory(&mut self, entry: &str, components: &[OsString]) -> Result<u32, ExtractError> {
        let mut current = ROOT;
        for (depth, component) in components.iter().enumerate() {
            current = match self.child(current, component.as_bytes()) {
                Some(next) if self.nodes[next as usize].is_directory() => next,
                Some(_) => {
                    let prefix: Vec<&[u8]> =
                        components[..=depth].iter().map(|c| c.as_bytes()).collect();
                    return Err(ExtractError::ThroughNonDirectory {
                        entry: entry.to_owned(),
                        component: format!("/{}", String::from_utf8_lossy(&prefix.join(&b'/'))),
                    });
                }
                None => self.insert(current, component.as_bytes(), Node::implicit_directory()),
            };
        }
        Ok(current)
    }

    fn parent_of_non_directory<'p>(
        &mut self,
        entry: &str,
        path: &'p LayerPath,
    ) -> Result<(u32, &'p [u8]), ExtractError> {
        let (parent, name) = path
            .split_last()
            .ok_or_else(|| ExtractError::RootNotDirectory {
                entry: entry.to_owned(),
            })?;
        Ok((self.directory(entry, parent)?, name.as_bytes()))
    }

    /// The node at `path` now, walking only through directories.
    fn lookup(&self, path: &LayerPath) -> Option<u32> {
        let mut current = ROOT;
        for component in path.components() {
            if !self.nodes[current as usize].is_directory() {
                return None;
            }
            current = self.child(current, component.as_bytes())?;
        }
        Some(current)
    }
}

fn node_from_header(
    file_type: u16,
    header: &EntryHeader,
    xattrs: Vec<Xattr>,
    body: Body,
    size: u64,
) -> Node {
    Node {
        body,
        xattrs: xattrs.into(),
        size,
        mtime: header.mtime,
        uid: header.uid,
        gid: header.gid,
        mode: file_type | header.mode as u16,
    }
}

/// `trusted.overlay.opaque=y`, which marks a directory that hides the lower layers'.
fn opaque_xattr() -> Xattr {
    Xattr {
        index: TRUSTED_XATTR_INDEX,
        suffix: OPAQUE_XATTR.as_bytes()["trusted.".len()..].into(),
        value: b"y"[..].into(),
    }
}

fn is_opaque(xattr: &Xattr) -> bool {
    xattr.index == TRUSTED_XATTR_INDEX
        && *xattr.suffix == OPAQUE_XATTR.as_bytes()["trusted.".len()..]
}

fn check_xattr_area(entry: &str, xattrs: &[Xattr]) -> Result<(), ExtractError> {
    let bytes = xattr_area_size(xattrs);
    if bytes > MAX_XATTR_AREA {
        return Err(ExtractError::XattrsTooLarge {
            entry: entry.to_owned(),
            bytes,
            max: MAX_XATTR_AREA,
        });
    }
    Ok(())
}

//! The second half of the writer: once the tar has ended, lay out the directories and the
//! metadata area after the file data, write them, then the superblock, and fsync.
//!
//! Image layout, in blocks:
//!   0                      superblock at byte 1024
//!   1 ..                   file data, in tar order (written while reading the tar)
//!   then                   directories' full blocks, breadth-first order
//!   meta_blkaddr ..        inodes (32-byte slots from here; slot 0 unused, the root at 1),
//!                          each followed by its xattrs and inline tail, never straddling a
//!                          block; breadth-first order, so a directory's children sit together

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;

use super::{Body, ErofsLayerWriter, Node, BUILD_TIME, ROOT};
use crate::layer::erofs_format::{
    put_dirent, put_inode, put_xattr_area, superblock_bytes, xattr_area_size, xattr_icount,
    DataLayout, InodeFields, Superblock, BLOCK_SIZE, COMPACT_INODE_SIZE, DIRENT_SIZE,
    EXTENDED_INODE_SIZE, INODE_SLOT, SUPERBLOCK_OFFSET,
};
use crate::layer::extract::{ExtractError, ExtractStats};

/// Where one reachable node goes, by its breadth-first position.
#[derive(Clone, Copy)]
struct Placement {
    nid: u64,
    blkaddr: u32,
    inline_len: u16,
    extended: bool,
    layout: DataLayout,
}

impl ErofsLayerWriter {
    /// Writes the directories, the metadata and the superblock (with `uuid`), and fsyncs
    /// the image. Call only once the tar's digests are proven.
    pub fn finish(mut self, uuid: [u8; 16]) -> Result<ExtractStats, ExtractError> {
        let build_time = self.stats.newest_mtime;
        let tree = Tree::walk(&self.nodes);

        // Directory sizes and placements (before nids: they depend on names only).
        let data_end = self.out.block_address()?;
        let mut next_dir_block = u64::from(data_end);
        let mut placements = Vec::with_capacity(tree.order.len());
        for (position, &index) in tree.order.iter().enumerate() {
            let node = &self.nodes[index as usize];
            let nlink = tree.nlink[index as usize];
            let mtime = resolve_mtime(node.mtime, build_time);
            let size = match node.body {
                Body::Directory { .. } => directory_size(&self.directory_entries(&tree, position)),
                _ => node.size,
            };
            let extended = mtime != build_time
                || node.uid > u32::from(u16::MAX)
                || node.gid > u32::from(u16::MAX)
                || nlink > u32::from(u16::MAX)
                || size > u64::from(u32::MAX);
            let inode_size = if extended {
                EXTENDED_INODE_SIZE
            } else {
                COMPACT_INODE_SIZE
            };
            let xattr_size = xattr_area_size(&node.xattrs);
            let (layout, blkaddr, inline_len) = match &node.body {
                Body::Directory { .. } => {
                    let tail = size % BLOCK_SIZE;
                    let full = size / BLOCK_SIZE;
                    let (layout, blocks, inline_len) = if tail == 0 {
                        (DataLayout::FlatPlain, full, 0)
                    } else if inode_size + xattr_size + tail <= BLOCK_SIZE {
                        (DataLayout::FlatInline, full, tail)
                    } else {
                        (DataLayout::FlatPlain, full + 1, 0)
                    };
                    let blkaddr = if blocks == 0 { 0 } else { next_dir_block };
                    next_dir_block += blocks;
                    let blkaddr =
                        u32::try_from(blkaddr).map_err(|_| ExtractError::ImageTooLarge)?;
                    (layout, blkaddr, inline_len)
                }
                Body::Data { blkaddr, tail } => match tail {
                    Some(tail) => (DataLayout::FlatInline, *blkaddr, tail.len() as u64),
                    None => (DataLayout::FlatPlain, *blkaddr, 0),
                },
                Body::Whiteout | Body::Fifo => (DataLayout::FlatPlain, 0, 0),
            };
            placements.push(Placement {
                nid: 0,
                blkaddr,
                inline_len: inline_len as u16,
                extended,
                layout,
            });
        }

        // Inode slots: nid 0 stays unused (readdir takes inode number 0 for a hole).
        let meta_blkaddr =
            u32::try_from(next_dir_block).map_err(|_| ExtractError::ImageTooLarge)?;
        let mut cursor = INODE_SLOT;
        for (position, &index) in tree.order.iter().enumerate() {
            let node = &self.nodes[index as usize];
            let placement = &mut placements[position];
            let inode_size = if placement.extended {
                EXTENDED_INODE_SIZE
            } else {
                COMPACT_INODE_SIZE
            };
            let need = inode_size + xattr_area_size(&node.xattrs) + u64::from(placement.inline_len);
            cursor = cursor.next_multiple_of(INODE_SLOT);
            if cursor % BLOCK_SIZE + need > BLOCK_SIZE {
                cursor = cursor.next_multiple_of(BLOCK_SIZE);
            }
            placement.nid = cursor / INODE_SLOT;
            cursor += need;
        }
        let total_blocks = u64::from(meta_blkaddr) + cursor.div_ceil(BLOCK_SIZE);
        let total_blocks = u32::try_from(total_blocks).map_err(|_| ExtractError::ImageTooLarge)?;

        // Directories' full blocks.
        for (position, &index) in tree.order.iter().enumerate() {
            let placement = placements[position];
            if !self.nodes[index as usize].is_directory() || placement.blkaddr == 0 {
                continue;
            }
            let bytes = self.directory_bytes(&tree, &placements, position);
            let in_blocks = bytes.len() - usize::from(placement.inline_len);
            self.out.write(&bytes[..in_blocks])?;
            self.out.pad_to_block()?;
        }

        // The metadata area.
        let meta_start = u64::from(meta_blkaddr) * BLOCK_SIZE;
        debug_assert_eq!(self.out.position(), meta_start);
        let mut scratch = Vec::with_capacity(BLOCK_SIZE as usize);
        for (position, &index) in tree.order.iter().enumerate() {
            let node = &self.nodes[index as usize];
            let placement = placements[position];
            let xattr_size = xattr_area_size(&node.xattrs);
            let mut size = node.size;
            scratch.clear();
            let mut inline: &[u8] = &[];
            let directory;
            match &node.body {
                Body::Directory { .. } => {
                    directory = self.directory_bytes(&tree, &placements, position);
                    size = directory.len() as u64;
                    inline = &directory[directory.len() - usize::from(placement.inline_len)..];
                }
                Body::Data {
                    tail: Some(tail), ..
                } => inline = tail,
                _ => {}
            }
            put_inode(
                &mut scratch,
                &InodeFields {
                    extended: placement.extended,
                    layout: placement.layout,
                    xattr_icount: xattr_icount(xattr_size),
                    mode: node.mode,
                    nlink: tree.nlink[index as usize],
                    size,
                    i_u: placement.blkaddr,
                    ino: position as u32 + 1,
                    uid: node.uid,
                    gid: node.gid,
                    mtime: resolve_mtime(node.mtime, build_time),
                },
            );
            put_xattr_area(&mut scratch, &node.xattrs);
            scratch.extend_from_slice(inline);
            self.out.pad_to(meta_start + placement.nid * INODE_SLOT)?;
            self.out.write(&scratch)?;
        }
        self.out.pad_to(u64::from(total_blocks) * BLOCK_SIZE)?;
        self.out.flush()?;
        // The superblock is 128 bytes inside block 0: not a direct write.
        self.out.leave_direct()?;

        let superblock = superblock_bytes(&Superblock {
            root_nid: placements[0].nid as u16,
            inodes: tree.order.len() as u64,
            build_time,
            blocks: total_blocks,
            meta_blkaddr,
            uuid,
        });
        let out = &self.out;
        out.file
            .write_all_at(&superblock, SUPERBLOCK_OFFSET)
            .and_then(|()| out.file.sync_all())
            .map_err(|e| out.write_error(e))?;
        Ok(self.stats)
    }

    /// The entries of the directory at breadth-first `position`, `.` and `..` included, in
    /// byte order of their names, as (name, node index).
    fn directory_entries<'n>(&'n self, tree: &Tree, position: usize) -> Vec<(&'n [u8], u32)> {
        let index = tree.order[position];
        let Body::Directory { children } = &self.nodes[index as usize].body else {
            return Vec::new();
        };
        let mut entries: Vec<(&[u8], u32)> = Vec::with_capacity(children.len() + 2);
        let parent = tree.parent[index as usize];
        let mut dots = [(&b"."[..], index), (&b".."[..], parent)]
            .into_iter()
            .peekable();
        for (name, &child) in children {
            while let Some(&dot) = dots.peek() {
                if dot.0 < &name[..] {
                    entries.push(dot);
                    dots.next();
                } else {
                    break;
                }
            }
            entries.push((name, child));
        }
        entries.extend(dots);
        entries
    }

    /// The directory's bytes: blocks of dirents then names, every block but the last padded.
    fn directory_bytes(&self, tree: &Tree, placements: &[Placement], position: usize) -> Vec<u8> {
        let entries = self.directory_entries(tree, position);
        let mut out = Vec::with_capacity(directory_size(&entries) as usize);
        let blocks = pack_blocks(&entries);
        let last = blocks.len() - 1;
        for (number, block) in blocks.into_iter().enumerate() {
            let start = out.len();
            let mut name_offset = DIRENT_SIZE as usize * block.len();
            for &(name, child) in block {
                let nid = placements[tree.position[child as usize] as usize].nid;
                put_dirent(
                    &mut out,
                    nid,
                    name_offset as u16,
                    self.nodes[child as usize].file_type(),
                );
                name_offset += name.len();
            }
            for &(name, _) in block {
                out.extend_from_slice(name);
            }
            if number != last {
                out.resize(start + BLOCK_SIZE as usize, 0);
            }
        }
        out
    }
}

/// Splits sorted entries into directory blocks, filling each as far as it goes.
fn pack_blocks<'e, 'n>(entries: &'e [(&'n [u8], u32)]) -> Vec<&'e [(&'n [u8], u32)]> {
    let mut blocks = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, (name, _)) in entries.iter().enumerate() {
        let need = DIRENT_SIZE + name.len() as u64;
        if used + need > BLOCK_SIZE {
            blocks.push(&entries[start..i]);
            start = i;
            used = 0;
        }
        used += need;
    }
    blocks.push(&entries[start..]);
    blocks
}

/// A directory's `i_size`: full blocks, then the bytes used in the last.
fn directory_size(entries: &[(&[u8], u32)]) -> u64 {
    let blocks = pack_blocks(entries);
    let last: u64 = blocks
        .last()
        .map(|b| b.iter().map(|(n, _)| DIRENT_SIZE + n.len() as u64).sum())
        .unwrap_or(0);
    (blocks.len() as u64 - 1) * BLOCK_SIZE + last
}

fn resolve_mtime(mtime: i64, build_time: i64) -> i64 {
    if mtime == BUILD_TIME {
        build_time
    } else {
        mtime
    }
}

/// The nodes reachable from the root, breadth-first, with their link counts and parents.
struct Tree {
    /// Node indexes, root first, each once (a hard-linked node where first met).
    order: Vec<u32>,
    /// By node index: position in `order` (`u32::MAX` if unreachable).
    position: Vec<u32>,
    /// By node index: names pointing at it (files), or 2 + subdirectories (directories).
    nlink: Vec<u32>,
    /// By node index: the parent directory (the root is its own).
    parent: Vec<u32>,
}

impl Tree {
    fn walk(nodes: &[Node]) -> Tree {
        let mut tree = Tree {
            order: vec![ROOT],
            position: vec![u32::MAX; nodes.len()],
            nlink: vec![0; nodes.len()],
            parent: vec![ROOT; nodes.len()],
        };
        tree.position[ROOT as usize] = 0;
        tree.nlink[ROOT as usize] = 2;
        let mut queue = VecDeque::from([ROOT]);
        while let Some(directory) = queue.pop_front() {
            let Body::Directory { children } = &nodes[directory as usize].body else {
                continue;
            };
            for &child in children.values() {
                let child_node = &nodes[child as usize];
                if child_node.is_directory() {
                    tree.nlink[directory as usize] += 1;
                    tree.nlink[child as usize] = 2;
                    tree.parent[child as usize] = directory;
                    queue.push_back(child);
                } else {
                    tree.nlink[child as usize] += 1;
                }
                if tree.position[child as usize] == u32::MAX {
                    tree.position[child as usize] = tree.order.len() as u32;
                    tree.order.push(child);
                }
            }
        }
        tree
    }
}

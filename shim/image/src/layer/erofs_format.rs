//! The on-disk EROFS structures the layer writer emits (uncompressed images only), as the
//! Linux kernel's `fs/erofs/erofs_fs.h` defines them: the superblock, compact (32-byte) and
//! extended (64-byte) inodes, in-inode xattrs and directory entries. Everything is
//! little-endian; these functions only serialise, the layout decisions are the writer's.

/// Block size: 4 KiB, the page size of every guest we boot.
pub const BLOCK_SIZE: u64 = 4096;
pub const BLOCK_SIZE_BITS: u8 = 12;
pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: usize = 128;
const SUPER_MAGIC: u32 = 0xE0F5_E1E2;
/// Extended inodes hold the mtime (not the ctime).
const FEATURE_COMPAT_MTIME: u32 = 0x2;

/// Inodes sit on 32-byte slots; a nid is a slot number counted from `meta_blkaddr`.
pub const INODE_SLOT: u64 = 32;
pub const COMPACT_INODE_SIZE: u64 = 32;
pub const EXTENDED_INODE_SIZE: u64 = 64;

/// Data layouts (`i_format` bits 1-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLayout {
    /// All data in contiguous blocks from `raw_blkaddr` (the last one zero-padded).
    FlatPlain = 0,
    /// Full blocks from `raw_blkaddr`, the tail right after the inode and its xattrs.
    FlatInline = 2,
}

pub const DIRENT_SIZE: u64 = 12;

/// Directory entry file types.
pub const FT_REG_FILE: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHRDEV: u8 = 3;
pub const FT_FIFO: u8 = 5;
pub const FT_SYMLINK: u8 = 7;

pub const S_IFIFO: u16 = 0o010000;
pub const S_IFCHR: u16 = 0o020000;
pub const S_IFDIR: u16 = 0o040000;
pub const S_IFREG: u16 = 0o100000;
pub const S_IFLNK: u16 = 0o120000;

/// The in-inode xattr header (`erofs_xattr_ibody_header`), before the entries.
pub const XATTR_IBODY_HEADER_SIZE: u64 = 12;

pub const TRUSTED_XATTR_INDEX: u8 = 4;
/// Name prefixes that xattr entries store as an index, not as text.
const XATTR_PREFIXES: [(&str, u8); 3] = [
    ("user.", 1),
    ("trusted.", TRUSTED_XATTR_INDEX),
    ("security.", 6),
];

/// An xattr split into its EROFS prefix index and the rest of its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Xattr {
    pub index: u8,
    pub suffix: Box<[u8]>,
    pub value: Box<[u8]>,
}

impl Xattr {
    /// `None` if the name has no prefix EROFS can index, or a part is too long to store.
    pub fn new(name: &str, value: &[u8]) -> Option<Xattr> {
        let (prefix, index) = XATTR_PREFIXES
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))?;
        let suffix = &name.as_bytes()[prefix.len()..];
        if suffix.is_empty() || suffix.len() > usize::from(u8::MAX) || value.len() > 0xffff {
            return None;
        }
        Some(Xattr {
            index: *index,
            suffix: suffix.into(),
            value: value.into(),
        })
    }

    /// Bytes of this entry: 4 of header, name, value, padded to 4.
    pub fn entry_size(&self) -> u64 {
        (4 + self.suffix.len() as u64 + self.value.len() as u64).next_multiple_of(4)
    }
}

/// Bytes of the in-inode xattr area for `xattrs` (0 without any).
pub fn xattr_area_size(xattrs: &[Xattr]) -> u64 {
    if xattrs.is_empty() {
        0
    } else {
        XATTR_IBODY_HEADER_SIZE + xattrs.iter().map(Xattr::entry_size).sum::<u64>()
    }
}

/// Appends the in-inode xattr area (header, then the entries) to `out`.
pub fn put_xattr_area(out: &mut Vec<u8>, xattrs: &[Xattr]) {
    if xattrs.is_empty() {
        return;
    }
    // h_name_filter (unused without the filter feature), no shared xattrs, reserved.
    out.extend_from_slice(&[0; XATTR_IBODY_HEADER_SIZE as usize]);
    for xattr in xattrs {
        let start = out.len();
        out.push(xattr.suffix.len() as u8);
        out.push(xattr.index);
        out.extend_from_slice(&(xattr.value.len() as u16).to_le_bytes());
        out.extend_from_slice(&xattr.suffix);
        out.extend_from_slice(&xattr.value);
        out.resize(start + xattr.entry_size() as usize, 0);
    }
}

/// `i_xattr_icount` for an xattr area of `area_size` bytes.
pub fn xattr_icount(area_size: u64) -> u16 {
    if area_size == 0 {
        0
    } else {
        (1 + (area_size - XATTR_IBODY_HEADER_SIZE) / 4) as u16
    }
}

/// Everything an on-disk inode says.
#[derive(Debug, Clone)]
pub struct InodeFields {
    pub extended: bool,
    pub layout: DataLayout,
    pub xattr_icount: u16,
    /// Type and permission bits.
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    /// `raw_blkaddr` for data, `rdev` for devices.
    pub i_u: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    /// Extended inodes only; compact ones take the superblock's build time.
    pub mtime: i64,
}

/// Appends the inode (32 or 64 bytes) to `out`. The caller checked that a compact inode's
/// fields fit 16 and 32 bits.
pub fn put_inode(out: &mut Vec<u8>, inode: &InodeFields) {
    let format = u16::from(inode.extended) | ((inode.layout as u16) << 1);
    out.extend_from_slice(&format.to_le_bytes());
    out.extend_from_slice(&inode.xattr_icount.to_le_bytes());
    out.extend_from_slice(&inode.mode.to_le_bytes());
    if inode.extended {
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&inode.size.to_le_bytes());
        out.extend_from_slice(&inode.i_u.to_le_bytes());
        out.extend_from_slice(&inode.ino.to_le_bytes());
        out.extend_from_slice(&inode.uid.to_le_bytes());
        out.extend_from_slice(&inode.gid.to_le_bytes());
        out.extend_from_slice(&(inode.mtime as u64).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&inode.nlink.to_le_bytes());
        out.extend_from_slice(&[0; 16]);
    } else {
        out.extend_from_slice(&(inode.nlink as u16).to_le_bytes());
        out.extend_from_slice(&(inode.size as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&inode.i_u.to_le_bytes());
        out.extend_from_slice(&inode.ino.to_le_bytes());
        out.extend_from_slice(&(inode.uid as u16).to_le_bytes());
        out.extend_from_slice(&(inode.gid as u16).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
    }
}

/// Appends one directory entry; `name_offset` is where its name starts in the block.
pub fn put_dirent(out: &mut Vec<u8>, nid: u64, name_offset: u16, file_type: u8) {
    out.extend_from_slice(&nid.to_le_bytes());
    out.extend_from_slice(&name_offset.to_le_bytes());
    out.push(file_type);
    out.push(0);
}

/// The superblock's fields.
#[derive(Debug, Clone)]
pub struct Superblock {
    pub root_nid: u16,
    pub inodes: u64,
    pub build_time: i64,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub uuid: [u8; 16],
}

/// The 128-byte superblock, to be written at byte 1024.
pub fn superblock_bytes(sb: &Superblock) -> [u8; SUPERBLOCK_SIZE] {
    let mut out = Vec::with_capacity(SUPERBLOCK_SIZE);
    out.extend_from_slice(&SUPER_MAGIC.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // no checksum (feature not set)
    out.extend_from_slice(&FEATURE_COMPAT_MTIME.to_le_bytes());
    out.push(BLOCK_SIZE_BITS);
    out.push(0); // sb_extslots
    out.extend_from_slice(&sb.root_nid.to_le_bytes());
    out.extend_from_slice(&sb.inodes.to_le_bytes());
    out.extend_from_slice(&(sb.build_time as u64).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // build_time_nsec
    out.extend_from_slice(&sb.blocks.to_le_bytes());
    out.extend_from_slice(&sb.meta_blkaddr.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // xattr_blkaddr: no shared xattrs
    out.extend_from_slice(&sb.uuid);
    out.extend_from_slice(&[0; 16]); // volume name
    out.extend_from_slice(&0u32.to_le_bytes()); // feature_incompat: none
    let mut bytes = [0u8; SUPERBLOCK_SIZE];
    bytes[..out.len()].copy_from_slice(&out);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_have_their_on_disk_sizes() {
        for extended in [false, true] {
            let mut out = Vec::new();
            put_inode(
                &mut out,
                &InodeFields {
                    extended,
                    layout: DataLayout::FlatInline,
                    xattr_icount: 0,
                    mode: S_IFREG | 0o644,
                    nlink: 1,
                    size: 5,
                    i_u: 0,
                    ino: 1,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                },
            );
            let expected = if extended {
                EXTENDED_INODE_SIZE
            } else {
                COMPACT_INODE_SIZE
            };
            assert_eq!(out.len() as u64, expected);
            assert_eq!(out[0], u8::from(extended) | 4);
        }
    }

    #[test]
    fn xattr_area_matches_its_icount() {
        let xattrs = vec![
            Xattr::new("user.note", b"kept").unwrap(),
            Xattr::new("trusted.overlay.opaque", b"y").unwrap(),
        ];
        let mut out = Vec::new();
        put_xattr_area(&mut out, &xattrs);
        assert_eq!(out.len() as u64, xattr_area_size(&xattrs));
        let icount = xattr_icount(out.len() as u64);
        assert_eq!(12 + 4 * (u64::from(icount) - 1), out.len() as u64);
        assert_eq!(out[12], 4, "name length of \"note\"");
        assert_eq!(out[13], 1, "user. prefix index");
        assert!(Xattr::new("system.posix_acl_access", b"").is_none());
        assert!(Xattr::new("user.", b"x").is_none());
    }
}

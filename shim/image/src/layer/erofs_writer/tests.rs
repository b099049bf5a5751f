//! The writer over a corpus of generated layer tars: every image passes `fsck.erofs` (which
//! also extracts every file), and mounted by the kernel it shows exactly what the staged
//! path (extract, then `mkfs.erofs`) shows for the same tar: names, types, modes, owners,
//! mtimes, contents, link targets, device numbers, link counts, hard-link groups, xattrs.
//! Needs root, `mount -t erofs` over a loop device and erofs-utils, as the store tests do.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use super::ErofsLayerWriter;
use crate::digest::Digest;
use crate::layer::erofs::ErofsBuilder;
use crate::layer::extract::{ExtractError, LayerExtractor};

const MTIME: u64 = 1_600_000_000;

/// A tar built entry by entry.
struct Corpus {
    builder: tar::Builder<Vec<u8>>,
}

#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
}

const FILE: Meta = Meta {
    mode: 0o644,
    uid: 0,
    gid: 0,
    mtime: MTIME,
};
const DIR: Meta = Meta {
    mode: 0o755,
    ..FILE
};

impl Corpus {
    fn new() -> Corpus {
        Corpus {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, meta: Meta, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(meta.mode);
        header.set_uid(meta.uid);
        header.set_gid(meta.gid);
        header.set_mtime(meta.mtime);
        header.set_size(size);
        header
    }

    fn file_with(&mut self, path: &str, data: &[u8], meta: Meta) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Regular, meta, data.len() as u64);
        self.builder.append_data(&mut header, path, data).unwrap();
        self
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_with(path, data, FILE)
    }

    fn dir_with(&mut self, path: &str, meta: Meta) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Directory, meta, 0);
        self.builder
            .append_data(&mut header, path, &[][..])
            .unwrap();
        self
    }

    fn dir(&mut self, path: &str) -> &mut Self {
        self.dir_with(path, DIR)
    }

    fn link(&mut self, kind: tar::EntryType, path: &str, target: &str) -> &mut Self {
        let mut header = Self::header(
            kind,
            Meta {
                mode: 0o777,
                ..FILE
            },
            0,
        );
        self.builder.append_link(&mut header, path, target).unwrap();
        self
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(tar::EntryType::Symlink, path, target)
    }

    fn hard_link(&mut self, path: &str, target: &str) -> &mut Self {
        self.link(tar::EntryType::Link, path, target)
    }

    fn special(&mut self, kind: tar::EntryType, path: &str) -> &mut Self {
        let mut header = Self::header(
            kind,
            Meta {
                mode: 0o640,
                ..FILE
            },
            0,
        );
        self.builder
            .append_data(&mut header, path, &[][..])
            .unwrap();
        self
    }

    fn pax_xattrs(&mut self, xattrs: &[(&str, &[u8])]) -> &mut Self {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(name, value)| (format!("SCHILY.xattr.{name}"), *value))
            .collect();
        self.builder
            .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        self
    }

    fn finish(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        builder.into_inner().unwrap()
    }
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn write_image(tar: &[u8], image: &Path, inline_budget: Option<usize>) -> Result<(), ExtractError> {
    let mut writer = ErofsLayerWriter::create(image)?;
    if let Some(budget) = inline_budget {
        writer.inline_budget = budget;
    }
    writer.add_entries(&mut tar::Archive::new(tar))?;
    writer.finish([7; 16])?;
    Ok(())
}

fn staged_image(tar: &[u8], dir: &Path) -> PathBuf {
    let staging = dir.join("staging");
    fs::create_dir(&staging).unwrap();
    fs::set_permissions(
        &staging,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let stats = LayerExtractor::new(&staging)
        .unwrap()
        .extract_all(&mut tar::Archive::new(tar))
        .expect("the staged path extracts the corpus");
    let image = dir.join("staged.erofs");
    ErofsBuilder::default()
        .build(&staging, &image, &Digest::of_bytes(tar), stats.newest_mtime)
        .expect("mkfs.erofs");
    image
}

fn fsck(image: &Path, dir: &Path) {
    let extract = dir.join("fsck-extract");
    let output = Command::new("fsck.erofs")
        .arg(format!("--extract={}", extract.display()))
        .arg(image)
        .output()
        .expect("run fsck.erofs (erofs-utils)");
    assert!(
        output.status.success(),
        "fsck.erofs {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

struct Mounted {
    dir: TempDir,
}

impl Mounted {
    fn new(image: &Path) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(image)
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mount {}: {}",
            image.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Mounted { dir }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Every path under `root` (root itself as "/") with what a reader can see of it.
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut first_path_of_inode: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let path = root.join(&relative);
        let meta = fs::symlink_metadata(&path).unwrap();
        let name = format!("/{}", relative.display());
        let kind = meta.file_type();
        let mut line = format!(
            "mode={:o} uid={} gid={} mtime={} nlink={}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            meta.mtime(),
            meta.nlink()
        );
        if kind.is_dir() {
            let mut children: Vec<_> = fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            children.sort();
            for child in children {
                stack.push(relative.join(child));
            }
        } else {
            let group = first_path_of_inode
                .entry(meta.ino())
                .or_insert_with(|| name.clone());
            line += &format!(" size={} group={group}", meta.size());
            if kind.is_file() {
                let hash = Sha256::digest(fs::read(&path).unwrap());
                line += &format!(" sha256={hash:x}");
            } else if kind.is_symlink() {
                line += &format!(" target={:?}", fs::read_link(&path).unwrap());
            } else if kind.is_char_device() || kind.is_block_device() {
                line += &format!(" rdev={}", meta.rdev());
            }
        }
        let mut names = vec![0u8; 65536];
        let len = rustix::fs::llistxattr(&path, &mut names[..]).unwrap();
        let mut xattr_names: Vec<&[u8]> = names[..len]
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty())
            .collect();
        xattr_names.sort();
        for xattr in xattr_names {
            let xattr_name = std::str::from_utf8(xattr).unwrap();
            let mut value = vec![0u8; 65536];
            let n = rustix::fs::lgetxattr(&path, xattr_name, &mut value[..]).unwrap();
            line += &format!(" xattr:{xattr_name}={:?}", &value[..n]);
        }
        out.insert(name, line);
    }
    out
}

/// Writes `tar` both ways and checks the written image against the staged one.
fn check_same_view(name: &str, tar: &[u8], inline_budget: Option<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let written = dir.path().join("written.erofs");
    write_image(tar, &written, inline_budget).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    fsck(&written, dir.path());
    let staged = staged_image(tar, dir.path());
    let written_view = describe(Mounted::new(&written).dir.path());
    let staged_view = describe(Mounted::new(&staged).dir.path());
    assert_eq!(
        written_view.keys().collect::<Vec<_>>(),
        staged_view.keys().collect::<Vec<_>>(),
        "{name}: the same paths"
    );
    for (path, line) in &written_view {
        assert_eq!(line, &staged_view[path], "{name}: {path}");
    }
}

#[test]
fn deep_tree() {
    let mut corpus = Corpus::new();
    let mut path = String::new();
    for depth in 0..120 {
        path += "d/";
        corpus.dir(&path);
        corpus.file(&format!("{path}f{depth}"), format!("{depth}").as_bytes());
    }
    check_same_view("deep", &corpus.finish(), None);
}

#[test]
fn many_small_files_and_large_directories() {
    let mut corpus = Corpus::new();
    corpus.dir("./");
    for i in 0..6000 {
        corpus.file(
            &format!("flat/file-{i:05}"),
            &pseudo_random(i % 300, i as u64),
        );
    }
    for d in 0..40 {
        for i in 0..(d * 7) {
            corpus.file(&format!("spread/{d}/f{i}"), format!("{d}/{i}").as_bytes());
        }
    }
    // Dirents of exactly one block, and of a tail too big to sit beside the inode.
    for i in 0..64 {
        corpus.file(&format!("exact/{:051}", i), b"");
        corpus.file(&format!("plain-tail/{:051}", i), b"");
    }
    corpus.file(&format!("exact/{}", "x".repeat(25)), b"");
    corpus.file(&format!("plain-tail/{}", "x".repeat(19)), b"");
    check_same_view("many-small", &corpus.finish(), None);
}

#[test]
fn big_files_and_block_edges() {
    let mut corpus = Corpus::new();
    corpus.file("big", &pseudo_random((5 << 20) + 123, 1));
    for size in [1, 4095, 4096, 4097, 8191, 8192, 12_000] {
        corpus.file(&format!("edge-{size}"), &pseudo_random(size, size as u64));
    }
    check_same_view("big", &corpus.finish(), None);
}

/// Full buffers go to the disk with O_DIRECT where the filesystem takes it, the rest
/// through the page cache; written all buffered (as on a filesystem without O_DIRECT) the
/// image is the same, byte for byte. Three full buffers and a partial one, so both kinds
/// of write and the switch between them happen.
#[test]
fn direct_and_buffered_writes_give_the_same_image() {
    let mut corpus = Corpus::new();
    corpus.file("big", &pseudo_random((3 * super::OUTPUT_BUFFER) + 4321, 9));
    corpus.file("small", b"tail");
    let tar = corpus.finish();
    // On a disk filesystem, or tmpfs from Linux 6.6 on, O_DIRECT is taken.
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, buffered: bool| {
        let path = dir.path().join(name);
        let mut writer = ErofsLayerWriter::create(&path).unwrap();
        let direct = writer.out.direct;
        if buffered {
            writer.out.leave_direct().unwrap();
        }
        writer
            .add_entries(&mut tar::Archive::new(&tar[..]))
            .unwrap();
        assert!(!writer.out.direct || !buffered);
        writer.finish([7; 16]).unwrap();
        (fs::read(&path).unwrap(), direct)
    };
    let (direct_image, was_direct) = write("direct.erofs", false);
    let (buffered_image, _) = write("buffered.erofs", true);
    assert!(
        was_direct,
        "the temporary directory's filesystem refused O_DIRECT"
    );
    assert_eq!(direct_image.len(), buffered_image.len());
    assert!(direct_image == buffered_image, "the two images differ");
    fsck(&dir.path().join("direct.erofs"), dir.path());
}

#[test]
fn tails_beyond_the_inline_budget_take_blocks() {
    let mut corpus = Corpus::new();
    for i in 0..50 {
        corpus.file(&format!("f{i}"), &pseudo_random(1000 + i * 97, i as u64));
    }
    check_same_view("budget", &corpus.finish(), Some(5000));
}

#[test]
fn hard_links_symlinks_and_fifos() {
    let mut corpus = Corpus::new();
    corpus
        .file("a/original", b"shared content")
        .hard_link("a/second", "a/original")
        .hard_link("b/third", "a/second")
        .symlink("a/sym", "../b/third")
        .hard_link("a/sym-link", "a/sym")
        .special(tar::EntryType::Fifo, "run/pipe")
        .hard_link("run/pipe2", "run/pipe")
        .file("replaced", b"old")
        .hard_link("keeps-old", "replaced")
        .file("replaced", b"new")
        .symlink("abs", "/etc/passwd")
        .symlink("long-target", &"t/".repeat(2000))
        .special(tar::EntryType::Char, "dev/null");
    check_same_view("links", &corpus.finish(), None);
}

#[test]
fn whiteouts_and_opaque_directories() {
    let mut corpus = Corpus::new();
    corpus
        .file(".wh.gone-at-root", b"")
        .dir("etc")
        .file("etc/.wh.motd", b"")
        .file("opaque-first/.wh..wh..opq", b"")
        .dir_with(
            "opaque-first",
            Meta {
                mode: 0o700,
                uid: 5,
                ..DIR
            },
        )
        .dir("opaque-after")
        .file("opaque-after/kept", b"k")
        .file("opaque-after/.wh..wh..opq", b"")
        .file("implicit/deeper/.wh..wh..opq", b"")
        .file("aufs/.wh..wh.plnk", b"")
        .file("later/x", b"x")
        .file("later/.wh.x", b"")
        .file("revived/.wh.y", b"")
        .file("revived/y", b"back");
    check_same_view("whiteouts", &corpus.finish(), None);
}

/// 255-byte names, which erofs-utils 1.5's `mkfs.erofs` fails on ("Could not format the
/// device"): checked against what the tar says instead of against the staged path.
#[test]
fn long_names() {
    let long = "n".repeat(255);
    let long_dir = "d".repeat(255);
    let mut corpus = Corpus::new();
    corpus
        .file(&long, b"long file")
        .dir(&format!("{long_dir}/"))
        .file(&format!("{long_dir}/{long}"), b"inside")
        .symlink(&"s".repeat(255), &long)
        .file(&format!("w/.wh.{}", "h".repeat(251)), b"");
    for i in 0..100 {
        corpus.file(&format!("many/{}{i:03}", "m".repeat(252)), b"");
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("long.erofs");
    write_image(&corpus.finish(), &image, None).unwrap();
    fsck(&image, dir.path());
    let mounted = Mounted::new(&image);
    let root = mounted.dir.path();
    assert_eq!(fs::read(root.join(&long)).unwrap(), b"long file");
    assert_eq!(
        fs::read(root.join(&long_dir).join(&long)).unwrap(),
        b"inside"
    );
    assert_eq!(
        fs::read_link(root.join("s".repeat(255))).unwrap(),
        Path::new(&long)
    );
    let whiteout = fs::symlink_metadata(root.join("w").join("h".repeat(251))).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert_eq!(fs::read_dir(root.join("many")).unwrap().count(), 100);
    assert!(root
        .join("many")
        .join(format!("{}042", "m".repeat(252)))
        .is_file());
}

#[test]
fn xattrs_owners_modes_and_times() {
    let mut corpus = Corpus::new();
    corpus
        .pax_xattrs(&[
            ("user.small", b"1"),
            ("user.bigger", &[b'v'; 1000]),
            (
                "security.capability",
                &[
                    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ],
            ),
            ("trusted.overlay.opaque", b"y"),
        ])
        .file("with-xattrs", b"x")
        .pax_xattrs(&[("user.dir", b"d")])
        .dir("xdir")
        .file("xdir/.wh..wh..opq", b"")
        .file_with(
            "setuid",
            b"s",
            Meta {
                mode: 0o4755,
                ..FILE
            },
        )
        .file_with(
            "sticky-setgid",
            b"s",
            Meta {
                mode: 0o3777,
                ..FILE
            },
        )
        .file_with("mode-zero", b"", Meta { mode: 0, ..FILE })
        .file_with(
            "big-ids",
            b"ids",
            Meta {
                uid: 70_000,
                gid: 100_000,
                ..FILE
            },
        )
        .file_with("old", b"o", Meta { mtime: 1, ..FILE })
        .file_with(
            "newest",
            b"n",
            Meta {
                mtime: MTIME + 10,
                ..FILE
            },
        )
        .dir_with("read-only", Meta { mode: 0o555, ..DIR })
        .file("read-only/child", b"c");
    check_same_view("xattrs", &corpus.finish(), None);
}

#[test]
fn empty_and_zero_files_and_replacements() {
    let mut corpus = Corpus::new();
    corpus
        .file("empty", b"")
        .dir("empty-dir")
        .file("zeros-1m", &vec![0; 1 << 20])
        .file("zeros-odd", &vec![0; 10_000])
        .file("a", b"first")
        .file("a", b"second")
        .dir("b/")
        .file("b/inner", b"gone")
        .file("b", b"file now")
        .file("c", b"file first")
        .dir("c/")
        .file("c/inner", b"kept")
        .symlink("d", "/nowhere")
        .file("d", b"plain");
    check_same_view("empty-replace", &corpus.finish(), None);
}

#[test]
fn hostile_entries_are_refused_as_by_the_staged_path() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("x.erofs");
    let mut corpus = Corpus::new();
    corpus.symlink("link", "/etc").file("ok", b"");
    let mut tar = corpus.finish();
    // Append `link/passwd` by hand: through the symlink.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = Corpus::header(tar::EntryType::Regular, FILE, 1);
    builder
        .append_data(&mut header, "link/passwd", &b"x"[..])
        .unwrap();
    let extra = builder.into_inner().unwrap();
    tar.truncate(tar.len() - 1024);
    tar.extend_from_slice(&extra);
    let error = write_image(&tar, &image, None).unwrap_err();
    assert!(
        matches!(error, ExtractError::ThroughNonDirectory { ref component, .. } if component == "/link"),
        "{error:?}"
    );

    let mut corpus = Corpus::new();
    corpus
        .file("f", b"")
        .pax_xattrs(&[("user.huge", &[0u8; 5000])])
        .file("g", b"");
    let error = write_image(&corpus.finish(), &dir.path().join("y.erofs"), None).unwrap_err();
    assert!(
        matches!(error, ExtractError::XattrsTooLarge { .. }),
        "{error:?}"
    );
}

#[test]
fn node_size_backs_the_stated_memory_bound() {
    // The module comment's per-entry figure rests on this.
    assert!(
        std::mem::size_of::<super::Node>() <= 80,
        "{}",
        std::mem::size_of::<super::Node>()
    );
}

//! `layer_tar`: an image layer blob (plain, gzip or zstd, as its magic bytes say) through
//! the store's single-pass EROFS writer, whiteouts, links and PAX xattrs included.
//!
//! Checked: no panic; a finished image is whole blocks with the EROFS magic. The staged
//! extractor (`layer::extract`, kept for comparison) is left out: it writes a real tree as
//! root, and a fuzzer that found an escape there would write on the fuzzing host.

use std::io::Read;
use std::path::Path;

use vpod_image::layer::decompress::open_decompressed;
use vpod_image::layer::erofs_writer::ErofsLayerWriter;
use vpod_image::oci::media_types::MEDIA_TYPE_DOCKER_LAYER_TAR;
use vpod_image::oci::writer::{encode_layer, LayerCompression};

use crate::guest::scratch_path;
use crate::Seed;

/// Bounds what a small compressed input may expand to (the store's own bound is 64 GiB).
const MAX_TAR_BYTES: u64 = 16 << 20;
const MAX_ENTRIES: u64 = 4096;
const EROFS_MAGIC: u32 = 0xe0f5_e1e2;
const BLOCK: u64 = 4096;

fn tar_stream(blob: &[u8]) -> Option<impl Read + '_> {
    let (reader, _) = open_decompressed(MEDIA_TYPE_DOCKER_LAYER_TAR, blob).ok()?;
    Some(reader.take(MAX_TAR_BYTES))
}

pub fn layer_tar(data: &[u8]) {
    let Some(stream) = tar_stream(data) else {
        return;
    };
    let image = scratch_path("layer.erofs");
    let mut writer = ErofsLayerWriter::create(&image)
        .expect("the image file")
        .with_max_entries(MAX_ENTRIES);
    let mut archive = tar::Archive::new(stream);
    let written = writer.add_entries(&mut archive).is_ok() && writer.finish([7; 16]).is_ok();
    if written {
        check_image(&image);
    }
    let _ = std::fs::remove_file(&image);
}

fn check_image(path: &Path) {
    let bytes = std::fs::read(path).expect("the finished image");
    assert_eq!(bytes.len() as u64 % BLOCK, 0, "an image of partial blocks");
    let magic = bytes
        .get(1024..1028)
        .map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    assert_eq!(magic, Some(EROFS_MAGIC), "no EROFS superblock");
}

/// A raw ustar entry, with any name and link bytes (the builder refuses hostile paths).
fn entry(out: &mut Vec<u8>, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) {
    let mut header = tar::Header::new_ustar();
    {
        let old = header.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    header.set_uid(1000);
    header.set_gid(1000);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

fn finish(mut tar: Vec<u8>) -> Vec<u8> {
    tar.extend_from_slice(&[0; 1024]);
    tar
}

fn basic() -> Vec<u8> {
    use tar::EntryType::*;
    let mut tar = Vec::new();
    entry(&mut tar, b"./", Directory, b"", b"");
    entry(&mut tar, b"etc/", Directory, b"", b"");
    entry(&mut tar, b"etc/hostname", Regular, b"", b"pod\n");
    entry(&mut tar, b"etc/big", Regular, b"", &[0x61; 5000]);
    entry(&mut tar, b"usr/bin/", Directory, b"", b"");
    entry(&mut tar, b"bin", Symlink, b"usr/bin", b"");
    entry(&mut tar, b"etc/hostname.link", Link, b"etc/hostname", b"");
    entry(&mut tar, b"run/fifo", Fifo, b"", b"");
    entry(&mut tar, b"dev/null", Char, b"", b"");
    finish(tar)
}

pub fn seeds() -> Vec<Seed> {
    use tar::EntryType::*;
    let mut whiteouts = Vec::new();
    entry(&mut whiteouts, b"etc/", Directory, b"", b"");
    entry(&mut whiteouts, b"etc/.wh.passwd", Regular, b"", b"");
    entry(&mut whiteouts, b"var/cache/.wh..wh..opq", Regular, b"", b"");
    entry(&mut whiteouts, b"var/cache/", Directory, b"", b"");
    entry(&mut whiteouts, b".wh..wh.plnk/", Directory, b"", b"");
    entry(&mut whiteouts, b"tmp/.wh.", Regular, b"", b"");
    let whiteouts = finish(whiteouts);

    let mut hostile = Vec::new();
    entry(&mut hostile, b"link", Symlink, b"/etc", b"");
    entry(&mut hostile, b"link/passwd", Regular, b"", b"owned");
    entry(&mut hostile, b"../escape", Regular, b"", b"x");
    entry(&mut hostile, b"/abs/file", Regular, b"", b"y");
    entry(&mut hostile, b"hard", Link, b"../../etc/shadow", b"");
    entry(&mut hostile, b"a/./b/../c", Regular, b"", b"z");
    let hostile = finish(hostile);

    let mut pax = tar::Builder::new(Vec::new());
    pax.append_pax_extensions([
        ("SCHILY.xattr.user.comment", &b"kept"[..]),
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
        ("SCHILY.xattr.security.capability", &[1, 0, 0, 2][..]),
    ])
    .expect("pax header");
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o4755);
    header.set_entry_type(Regular);
    let long = format!("{}/file", "d".repeat(150));
    pax.append_data(&mut header, &long, &b"abc"[..])
        .expect("long name");
    let pax = pax.into_inner().expect("tar");

    let gzip = encode_layer(&basic(), LayerCompression::Gzip)
        .expect("gzip")
        .blob;
    let zstd = encode_layer(&whiteouts, LayerCompression::Zstd)
        .expect("zstd")
        .blob;
    vec![
        ("basic", basic()),
        ("whiteouts", whiteouts),
        ("hostile-paths", hostile),
        ("pax-xattrs-long-name", pax),
        ("basic-gzip", gzip),
        ("whiteouts-zstd", zstd),
        ("truncated", basic()[..700].to_vec()),
    ]
}

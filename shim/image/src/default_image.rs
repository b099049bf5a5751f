//! The default image every vpod installation has: Debian's static busybox in two
//! gzip-compressed layers, written as an OCI layout tagged `latest`.
//!
//! Layer 1: the directory skeleton, `/bin/busybox`, one symlink per applet
//! (`busybox --list-full`), `/etc/passwd`, `/etc/group`, `/etc/motd`.
//! Layer 2: `/etc/vpod-release`, and a whiteout of `/etc/motd` (so the default image itself
//! exercises whiteouts end to end).
//!
//! Reproducible: fixed mtimes and owners, entries sorted, gzip without name or time; the same
//! busybox binary always gives the same manifest digest.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::image::{Arch, Config, Descriptor, ImageConfiguration, Os};

use crate::oci::layout::host_platform;
use crate::oci::writer::{encode_layer, LayerCompression, OciLayoutWriter, OciWriteError};

/// Where Debian's busybox-static installs the binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// The tag of the default image in its layout.
pub const DEFAULT_IMAGE_TAG: &str = "latest";
/// Every file's mtime: 2024-01-01T00:00:00Z.
const FIXED_MTIME: u64 = 1_704_067_200;
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum DefaultImageError {
    #[error("could not read the busybox binary {path}; install busybox-static")]
    ReadBusybox {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} --list-full failed: {detail}")]
    ListApplets { path: PathBuf, detail: String },
    #[error("could not build a layer tar")]
    Tar(#[source] io::Error),
    #[error("could not write the image layout")]
    Write(#[from] OciWriteError),
}

/// One tar entry of a layer being built.
enum LayerEntry {
    Directory { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Symlink { target: String },
}

/// Builds the default image from `busybox` into the OCI layout `out_dir` and returns the
/// manifest's descriptor (tagged `latest`).
pub fn build_default_image(
    out_dir: &Path,
    busybox: &Path,
) -> Result<Descriptor, DefaultImageError> {
    let busybox_binary =
        std::fs::read(busybox).map_err(|source| DefaultImageError::ReadBusybox {
            path: busybox.to_owned(),
            source,
        })?;
    let applets = list_applets(busybox)?;

    let mut base: Vec<(String, LayerEntry)> = Vec::new();
    for dir in [
        "bin", "dev", "etc", "proc", "sbin", "sys", "usr", "usr/bin", "usr/sbin", "var",
    ] {
        base.push((dir.to_owned(), LayerEntry::Directory { mode: 0o755 }));
    }
    base.push(("root".to_owned(), LayerEntry::Directory { mode: 0o700 }));
    base.push(("tmp".to_owned(), LayerEntry::Directory { mode: 0o1777 }));
    base.push((
        "bin/busybox".to_owned(),
        LayerEntry::File {
            mode: 0o755,
            content: busybox_binary,
        },
    ));
    for applet in applets {
        if applet != "bin/busybox" {
            base.push((
                applet,
                LayerEntry::Symlink {
                    target: "/bin/busybox".to_owned(),
                },
            ));
        }
    }
    base.push(file_entry(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ));
    base.push(file_entry("etc/group", "root:x:0:\nnogroup:x:65534:\n"));
    base.push(file_entry(
        "etc/motd",
        "This line is hidden by a whiteout in layer 2.\n",
    ));

    let top = vec![
        file_entry(
            "etc/vpod-release",
            "NAME=\"vpod default image\"\nVERSION=1\n",
        ),
        (
            "etc/.wh.motd".to_owned(),
            LayerEntry::File {
                mode: 0o644,
                content: Vec::new(),
            },
        ),
    ];

    let writer = OciLayoutWriter::create(out_dir)?;
    let mut layers = Vec::new();
    for entries in [base, top] {
        let tar = build_layer_tar(entries)?;
        let encoded = encode_layer(&tar, LayerCompression::Gzip)?;
        layers.push(writer.write_layer(&encoded)?);
    }
    let mut run = Config::default();
    run.set_env(Some(vec![DEFAULT_PATH.to_owned()]))
        .set_cmd(Some(vec!["sh".to_owned()]))
        .set_working_dir(Some("/".to_owned()))
        .set_labels(Some(
            [(
                "org.opencontainers.image.title".to_owned(),
                "vpod default image".to_owned(),
            )]
            .into(),
        ));
    let mut config = ImageConfiguration::default();
    config
        .set_architecture(Arch::from(host_platform()))
        .set_os(Os::Linux)
        .set_created(Some("2024-01-01T00:00:00Z".to_owned()))
        .set_config(Some(run));
    let manifest = writer.write_image(config, &layers, Some(DEFAULT_IMAGE_TAG))?;
    writer.write_index(vec![manifest.clone()])?;
    Ok(manifest)
}

fn file_entry(path: &str, content: &str) -> (String, LayerEntry) {
    (
        path.to_owned(),
        LayerEntry::File {
            mode: 0o644,
            content: content.as_bytes().to_vec(),
        },
    )
}

/// Applet paths, relative and sorted, e.g. `usr/bin/wc`.
fn list_applets(busybox: &Path) -> Result<Vec<String>, DefaultImageError> {
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|source| DefaultImageError::ReadBusybox {
            path: busybox.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(DefaultImageError::ListApplets {
            path: busybox.to_owned(),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let text = String::from_utf8(output.stdout).map_err(|_| DefaultImageError::ListApplets {
        path: busybox.to_owned(),
        detail: "the applet list is not UTF-8".to_owned(),
    })?;
    let mut applets: Vec<String> = text
        .lines()
        .map(|line| line.trim().trim_start_matches('/').to_owned())
        .filter(|line| !line.is_empty() && !line.split('/').any(|c| c == ".." || c.is_empty()))
        .collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}

/// A tar of `entries`, sorted by path, owned by root, all with the fixed mtime.
fn build_layer_tar(mut entries: Vec<(String, LayerEntry)>) -> Result<Vec<u8>, DefaultImageError> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut builder = tar::Builder::new(Vec::new());
    for (path, entry) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(FIXED_MTIME);
        match entry {
            LayerEntry::Directory { mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(mode);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), io::empty())
                    .map_err(DefaultImageError::Tar)?;
            }
            LayerEntry::File { mode, content } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(mode);
                header.set_size(content.len() as u64);
                builder
                    .append_data(&mut header, &path, content.as_slice())
                    .map_err(DefaultImageError::Tar)?;
            }
            LayerEntry::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder
                    .append_link(&mut header, &path, &target)
                    .map_err(DefaultImageError::Tar)?;
            }
        }
    }
    builder.into_inner().map_err(DefaultImageError::Tar)
}

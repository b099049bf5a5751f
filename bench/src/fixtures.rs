//! `vpod-bench prepare`, run natively before the guest-side benchmarks: everything they
//! need that is slow to make inside the emulated host, under `target/vpod-bench/`:
//!
//! - `vpod-bench-peer`: `bench/guest/peer.rs` compiled static (the in-guest reader and vsock
//!   endpoint, also run on the host side);
//! - `store/`: a layer store with the default image, a `tools` image (the peer binary at
//!   `/usr/local/bin/vpod-bench-peer`) and a `data` image (a 256 MiB file at
//!   `/bench/data.bin`), converted by the store as `vpod run` would;
//! - `data.bin`: the same 256 MiB for the host-side read;
//! - `rootfs/`: the default image's layers unpacked in order (whiteouts applied), the root
//!   filesystem of the `runc run` and `crun run` peers, and `config.json`, a `runc spec`
//!   template with our changes (no terminal, writable root, no network namespace: vpod
//!   containers share the pod VM's network);
//! - `images.json`: each image's config and layers (diffID, size), read by [`load_image`].

use anyhow::{bail, Context, Result};
use oci_spec::image::{Arch, ImageConfiguration, Os};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use vpod_image::oci::layout::OciLayout;
use vpod_image::oci::writer::{encode_layer, LayerCompression, OciLayoutWriter};
use vpod_image::{DiffId, ImageConfig, ImageLayer, LayerStore};

/// Where the fixtures live, under the checkout.
pub fn work_dir(root: &Path) -> PathBuf {
    root.join("target/vpod-bench")
}

pub const PEER_IN_IMAGE: &str = "/usr/local/bin/vpod-bench-peer";
pub const DATA_IN_IMAGE: &str = "/bench/data.bin";
pub const DATA_MIB: usize = 256;

/// One image of `images.json`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SavedImage {
    pub config: ImageConfig,
    /// (diffID, EROFS bytes), lowest first.
    pub layers: Vec<(DiffId, u64)>,
}

pub fn prepare(root: &Path) -> Result<()> {
    let work = work_dir(root);
    let default_layout = root.join("build/images/default");
    if !default_layout.join("index.json").exists() {
        bail!(
            "{} is missing: run `make image` first",
            default_layout.display()
        );
    }
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;

    let peer = work.join("vpod-bench-peer");
    let status = Command::new("rustc")
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["-C", "strip=symbols", "-o"])
        .arg(&peer)
        .arg(root.join("bench/guest/peer.rs"))
        .status()
        .context("running rustc for bench/guest/peer.rs")?;
    if !status.success() {
        bail!("rustc could not build bench/guest/peer.rs ({status})");
    }

    let store = LayerStore::open(work.join("store"))?;
    let mut images = BTreeMap::new();
    let default = store
        .import_oci_layout(&format!("oci:{}:latest", default_layout.display()))
        .context("importing the default image")?;
    images.insert("default", saved(&default.config, &default.layers));

    let tools_tar = single_file_tar(&PEER_IN_IMAGE[1..], &std::fs::read(&peer)?, 0o755)?;
    let tools = import_single_layer(&store, &work.join("layouts/tools"), tools_tar)?;
    images.insert("tools", saved(&tools.config, &tools.layers));

    let data = pseudo_random(DATA_MIB << 20);
    std::fs::write(work.join("data.bin"), &data)?;
    let data_tar = single_file_tar(&DATA_IN_IMAGE[1..], &data, 0o644)?;
    drop(data);
    let data_image = import_single_layer(&store, &work.join("layouts/data"), data_tar)?;
    images.insert("data", saved(&data_image.config, &data_image.layers));
    // The layout's blob is a second copy of the 256 MiB; the store has what it needs.
    std::fs::remove_dir_all(work.join("layouts"))?;
    std::fs::write(
        work.join("images.json"),
        serde_json::to_vec_pretty(&images)?,
    )?;

    let rootfs = work.join("rootfs");
    unpack_image(&default_layout, &rootfs)?;
    write_runtime_config(&work)?;
    println!(
        "prepare: fixtures in {} (peer, store with default/tools/data images, rootfs, config.json)",
        work.display()
    );
    Ok(())
}

fn saved(config: &ImageConfig, layers: &[ImageLayer]) -> SavedImage {
    SavedImage {
        config: config.clone(),
        layers: layers.iter().map(|l| (l.diff_id, l.size)).collect(),
    }
}

/// The image `name` of `images.json`, its layers' EROFS files looked up in `layers_dir`
/// (named `<hex>.erofs`, as in the store).
pub fn load_image(
    work: &Path,
    name: &str,
    layers_dir: &Path,
) -> Result<(ImageConfig, Vec<ImageLayer>)> {
    let path = work.join("images.json");
    let text = std::fs::read(&path)
        .with_context(|| format!("{} is missing: run `vpod-bench prepare`", path.display()))?;
    let mut images: BTreeMap<String, SavedImage> = serde_json::from_slice(&text)?;
    let image = images
        .remove(name)
        .with_context(|| format!("no image {name} in {}", path.display()))?;
    let layers = image
        .layers
        .into_iter()
        .map(|(diff_id, size)| ImageLayer {
            diff_id,
            path: layers_dir.join(format!("{}.erofs", diff_id.hex())),
            size,
        })
        .collect();
    Ok((image.config, layers))
}

/// The store's directory of `.erofs` files.
pub fn store_layers_dir(work: &Path) -> PathBuf {
    work.join("store/layers/sha256")
}

/// Deterministic bytes that do not compress (xorshift).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A tar with the parent directories of `path` and the file itself.
fn single_file_tar(path: &str, content: &[u8], mode: u32) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::with_capacity(content.len() + 8192));
    let mut parents = Vec::new();
    let mut parent = Path::new(path).parent();
    while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
        parents.push(p.to_path_buf());
        parent = p.parent();
    }
    for dir in parents.iter().rev() {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(1_704_067_200);
        builder.append_data(&mut header, dir, std::io::empty())?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_size(content.len() as u64);
    header.set_mtime(1_704_067_200);
    builder.append_data(&mut header, path, content)?;
    Ok(builder.into_inner()?)
}

/// Writes a one-layer OCI layout (uncompressed layer) and imports it.
fn import_single_layer(
    store: &LayerStore,
    layout: &Path,
    tar: Vec<u8>,
) -> Result<vpod_image::ImportedImage> {
    let writer = OciLayoutWriter::create(layout)?;
    let layer = writer.write_layer(&encode_layer(&tar, LayerCompression::None)?)?;
    drop(tar);
    let mut config = ImageConfiguration::default();
    config
        .set_architecture(Arch::from(vpod_image::oci::layout::host_platform()))
        .set_os(Os::Linux);
    let manifest = writer.write_image(config, &[layer], Some("latest"))?;
    writer.write_index(vec![manifest])?;
    Ok(store.import_oci_layout(&format!("oci:{}:latest", layout.display()))?)
}

/// Unpacks the image's layers in order into `dir`, applying whiteouts and opaque markers.
fn unpack_image(layout_dir: &Path, dir: &Path) -> Result<()> {
    let layout = OciLayout::new(layout_dir);
    let resolved = layout.resolve(Some("latest"))?;
    std::fs::create_dir_all(dir)?;
    for layer in &resolved.layers {
        let blob = std::fs::File::open(layout.blob_path(&layer.blob.digest))?;
        let reader: Box<dyn Read> = if layer.blob.media_type.as_ref().ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(blob))
        } else {
            Box::new(blob)
        };
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(true);
        archive.set_overwrite(true);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let parent = dir.join(path.parent().unwrap_or(Path::new("")));
            match name.as_deref() {
                Some(".wh..wh..opq") => {
                    for child in std::fs::read_dir(&parent)? {
                        remove_any(&child?.path())?;
                    }
                }
                Some(n) if n.starts_with(".wh.") => remove_any(&parent.join(&n[4..]))?,
                _ => {
                    // unpack_in refuses paths that leave `dir`.
                    entry.unpack_in(dir)?;
                }
            }
        }
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    Ok(())
}

/// `runc spec`'s template, changed to run like a vpod container: no terminal, a writable
/// root filesystem, and the namespaces vpod gives a container (mount, PID, UTS, IPC; the
/// network is the pod VM's). The command and root path are set per run by [`bundle`].
fn write_runtime_config(work: &Path) -> Result<()> {
    let scratch = work.join("spec");
    std::fs::create_dir_all(&scratch)?;
    let status = Command::new("runc")
        .arg("spec")
        .current_dir(&scratch)
        .status()
        .context("running `runc spec` (install runc: make deps)")?;
    if !status.success() {
        bail!("`runc spec` failed ({status})");
    }
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(scratch.join("config.json"))?)?;
    spec["process"]["terminal"] = false.into();
    spec["root"]["readonly"] = false.into();
    if let Some(namespaces) = spec["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|ns| ns["type"] != "network");
    }
    std::fs::write(work.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
    std::fs::remove_dir_all(scratch)?;
    Ok(())
}

/// Writes an OCI bundle at `dir` running `args` on the root filesystem `rootfs`.
pub fn bundle(work: &Path, dir: &Path, rootfs: &Path, args: &[&str]) -> Result<()> {
    let template = work.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&template).with_context(|| {
            format!(
                "{} is missing: run `vpod-bench prepare`",
                template.display()
            )
        })?)?;
    spec["process"]["args"] = args.iter().map(|a| a.to_string()).collect();
    spec["root"]["path"] = rootfs.to_string_lossy().into_owned().into();
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

/// `cp -a FROM TO` (keeps owners, modes, symlinks).
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("running cp")?;
    if !status.success() {
        bail!(
            "cp -a {} {} failed ({status})",
            from.display(),
            to.display()
        );
    }
    Ok(())
}

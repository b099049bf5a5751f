//! vpod's host runtime library. So far: the layer store, which turns OCI image layers into
//! read-only EROFS images that pod VMs attach as virtio-blk disks, image pulls from OCI
//! registries with the names and ids the CRI ImageService reports (`registry`), the default
//! image, and sandboxes: a pod's micro-VM and the containers in it (the `vpod` CLI drives
//! them).

pub mod default_image;
pub mod digest;
pub mod layer;
pub mod oci;
pub mod registry;
pub mod sandbox;
pub mod store;

pub use digest::{DiffId, Digest};
pub use store::{
    ImageConfig, ImageLayer, ImportedImage, LayerRecord, LayerStore, LayerStoreError,
    LayerStoreOptions,
};

use std::path::{Path, PathBuf};

/// The checkout (or install) holding `build/vmlinux`: `$VPOD_HOME`, else the nearest
/// ancestor of the running binary's directory that has it, else the working directory.
pub fn vpod_home() -> PathBuf {
    if let Some(home) = std::env::var_os("VPOD_HOME") {
        return PathBuf::from(home);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|dir| dir.join("build/vmlinux").exists())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| PathBuf::from("."))
}

/// An error and its sources on one line, joined by ": ".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

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

//! vpod's host runtime library. So far: the layer store, which turns OCI image layers into
//! read-only EROFS images that pod VMs attach as virtio-blk disks, and the default image.

pub mod default_image;
pub mod digest;
pub mod layer;
pub mod oci;
pub mod store;

pub use digest::{DiffId, Digest};
pub use store::{
    ImageConfig, ImageLayer, ImportedImage, LayerRecord, LayerStore, LayerStoreError,
    LayerStoreOptions,
};

//! vpod's image subsystem: the layer store, which turns OCI image layers into read-only
//! EROFS images that pod VMs attach as virtio-blk disks, image pulls from OCI registries
//! with the names and ids the CRI ImageService reports (`registry`), OCI image layouts, and
//! the default image. It knows nothing of sandboxes: the sandbox core and the front ends
//! (the `vpod` CLI, the CRI server) depend on it, never the other way round.

pub mod default_image;
pub mod digest;
pub mod layer;
pub mod oci;
pub mod registry;
pub mod runtime_spec;
pub mod store;

pub use digest::{DiffId, Digest};
pub use layer::extract::LayerLimits;
pub use store::{
    ImageConfig, ImageLayer, ImportedImage, LayerConverter, LayerRecord, LayerStore,
    LayerStoreError, LayerStoreOptions,
};

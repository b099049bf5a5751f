//! OCI image layouts, read and written with oci-spec's types: the media types beyond
//! oci-spec's, the conversion of oci-spec's digests to the store's, reading a layout, and
//! writing one.

pub mod convert;
pub mod layout;
pub mod media_types;
pub mod writer;

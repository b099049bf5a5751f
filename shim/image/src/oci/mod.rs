//! OCI image layouts: the spec's types, reading a layout, and writing one; the media types
//! beyond oci-spec's and the conversion of oci-spec's digests to the store's.

pub mod convert;
pub mod layout;
pub mod media_types;
pub mod spec;
pub mod writer;

//! OCI image layouts: the spec's types, reading a layout, and writing one.

pub mod layout;
pub mod spec;
pub mod writer;

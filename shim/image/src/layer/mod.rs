//! Turning one layer tar into an EROFS image: path sanitising, safe extraction into a
//! staging directory, decompression, and `mkfs.erofs`.

pub mod decompress;
pub mod erofs;
pub mod extract;
pub mod tar_path;

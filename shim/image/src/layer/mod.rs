//! Turning one layer tar into an EROFS image: path sanitising, decompression, and the
//! single-pass writer (`erofs_writer`) the store uses; the staged path (safe extraction into
//! a directory, then `mkfs.erofs`) stays for comparison.

pub mod decompress;
pub mod erofs;
pub mod erofs_format;
pub mod erofs_writer;
pub mod extract;
pub mod read_ahead;
pub mod tar_path;

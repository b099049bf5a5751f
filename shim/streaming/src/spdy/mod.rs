//! SPDY/3.1, as much of it as Kubernetes' streaming protocols use, written here because the
//! only Rust SPDY crates are GPL-3.0.
//!
//! [`frame`] is the byte codec (with [`headers`]' zlib contexts and [`dictionary`]'s preset
//! dictionary); [`session`] multiplexes the client's streams over one upgraded connection with
//! flow control in both directions.

pub(crate) mod dictionary;
pub mod frame;
pub mod headers;
pub mod session;

pub use frame::{Frame, FrameCodec, FrameError};
pub use headers::{HeaderError, Headers};
pub use session::{
    IncomingStream, Session, SessionConfig, SessionError, StreamReader, StreamWriter,
};

//! vpod-cri: a CRI runtime v1 server (RuntimeService and ImageService on a unix socket) in
//! which every pod sandbox is a micro-VM booted by the sandbox core (vpod-sandbox).
//!
//! - `config`: `/etc/vpod/config.toml`.
//! - `runtime`: pods and containers, their persisted records (`state`), recovery after a
//!   restart, log following (`logformat`).
//! - `server`: the gRPC services, thin over the runtime.

pub mod config;
pub mod filters;
pub mod guest_files;
pub mod ids;
pub mod images;
pub mod limits;
pub mod logformat;
pub mod runtime;
pub mod server;
pub mod sizing;
pub mod state;

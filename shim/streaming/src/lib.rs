//! vpod's CRI streaming server: the URLs that Exec, Attach and PortForward return, and the
//! protocols clients speak on them, independent of how containers run.
//!
//! A CRI server binds a [`StreamingServer`] with its [`Backend`], runs [`StreamingServer::serve`],
//! and answers each streaming RPC with [`StreamingUrls::url_for`]: a single-use token (one
//! minute to live, a bound on how many wait) under `http://ADDR/exec/TOKEN`, `/attach/TOKEN`
//! or `/portforward/TOKEN`, as the kubelet's streaming server does (`https://` when
//! [`Config::tls`] names a certificate and key: see [`tls`]). An unknown, spent or expired
//! token gets 404.
//!
//! Protocols, server side, all on one HTTP/1.1 upgrade (hyper):
//! - **SPDY/3.1** ([`spdy`], our own: the only Rust SPDY crates are GPL), which crictl before
//!   1.30 and the kubelet's proxy speak. Exec and attach negotiate `v4.channel.k8s.io` down to
//!   `channel.k8s.io` through `X-Stream-Protocol-Version`; the client opens one stream per
//!   `streamType` (`error`, `stdin`, `stdout`, `stderr`, `resize`). v4 gets a JSON
//!   metav1.Status on the error stream (the exit code as the `ExitCode` cause), older versions
//!   the plain message. Port-forward (`portforward.k8s.io`) pairs a `data` and an `error`
//!   stream per connection by their `requestID` header.
//! - **WebSocket** (tokio-tungstenite): `v5.channel.k8s.io`, `v4.channel.k8s.io`, the base64
//!   variants and the pre-v4 names; one channel byte per message (stdin 0, stdout 1,
//!   stderr 2, error 3, resize 4) and v5's close signal (255, channel). Port-forward over
//!   channels (two per requested port) or the KEP-4006 tunnel `SPDY/3.1+portforward.k8s.io`.
//!
//! The [`Backend`] contract: exec and attach get a [`StreamIo`] of bounded channels and run
//! until the process ends; port-forward returns a byte stream into the pod. A slow client
//! slows the backend (its sends wait), never our memory; a client that leaves drops the
//! backend's future, which must free what it holds on drop.

pub mod backend;
pub(crate) mod portforward;
pub(crate) mod remotecommand;
pub mod server;
pub mod spdy;
pub mod status;
pub mod tls;
pub mod tokens;
pub(crate) mod wsframe;

pub use backend::{
    Backend, BackendError, DuplexStream, ExecTarget, PortStream, StreamIo, TerminalSize,
};
pub use server::{Config, ServerError, StreamingServer, StreamingUrls, TlsConfig};
pub use tls::TlsError;
pub use tokens::{AttachRequest, ExecRequest, PortForwardRequest, StreamRequest, TokenError};

//! Port-forward: each client connection to a port becomes a backend connection into the pod,
//! with bytes copied both ways. [`spdy`] pairs a data and an error stream per connection;
//! [`websocket`] gives each requested port two channels, or tunnels SPDY inside WebSocket
//! messages (KEP-4006).

pub(crate) mod spdy;
pub(crate) mod websocket;

use crate::backend::BackendError;

/// The kubelet's words on the error stream when a forward fails (the CRI has no pod uid).
pub(crate) fn forward_error(port: u16, pod: &str, error: &BackendError) -> String {
    format!("error forwarding port {port} to pod {pod}, uid : {error}")
}

/// Bytes read from the backend per DATA frame or message.
pub(crate) const COPY_CHUNK: usize = 32 * 1024;

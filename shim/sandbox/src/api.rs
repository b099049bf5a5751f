//! A client of the VMM's control socket (newline-delimited JSON, see `vpod_vmm::api`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long one request may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmApiError {
    #[error("Could not talk to the VMM's control socket {0}.")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("The VMM's control socket {0} did not answer within {API_TIMEOUT:?}.")]
    Timeout(PathBuf),
    #[error("The VMM answered {0:?}, which is not a JSON object.")]
    BadReply(String),
    #[error("The VMM refused {op}: {message}")]
    Refused { op: String, message: String },
}

/// A disk the VMM attached to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachedSlot {
    pub slot: u32,
}

/// The control socket of one VMM.
#[derive(Debug, Clone)]
pub struct VmmApi {
    path: PathBuf,
}

impl VmmApi {
    pub fn new(path: impl Into<PathBuf>) -> VmmApi {
        VmmApi { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request and returns its reply object; an `error` reply is an error.
    pub async fn request(&self, request: Value) -> Result<Value, VmmApiError> {
        let op = request["op"].as_str().unwrap_or("?").to_string();
        let exchange = async {
            let mut stream = UnixStream::connect(&self.path).await?;
            let mut line = request.to_string();
            line.push('\n');
            stream.write_all(line.as_bytes()).await?;
            let mut reply = String::new();
            BufReader::new(stream).read_line(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        let reply = tokio::time::timeout(API_TIMEOUT, exchange)
            .await
            .map_err(|_| VmmApiError::Timeout(self.path.clone()))?
            .map_err(|e| VmmApiError::Io(self.path.clone(), e))?;
        let value: Value = serde_json::from_str(reply.trim())
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| VmmApiError::BadReply(reply.clone()))?;
        if let Some(message) = value.get("error") {
            return Err(VmmApiError::Refused {
                op,
                message: message.as_str().unwrap_or_default().to_string(),
            });
        }
        Ok(value)
    }

    /// Milliseconds from the VMM's start to the guest's init, once init has run.
    pub async fn boot_time_ms(&self) -> Result<Option<f64>, VmmApiError> {
        let reply = self.request(json!({"op": "boot_time"})).await?;
        Ok(reply["init_ms"].as_f64())
    }

    /// Attaches `path` read-only to the first empty slot under `serial`.
    pub async fn attach_read_only(
        &self,
        path: &Path,
        serial: &str,
    ) -> Result<AttachedSlot, VmmApiError> {
        let reply = self
            .request(json!({
                "op": "attach_disk",
                "path": path,
                "read_only": true,
                "serial": serial,
            }))
            .await?;
        let slot = reply["slot"]
            .as_u64()
            .and_then(|s| u32::try_from(s).ok())
            .ok_or_else(|| VmmApiError::BadReply(reply.to_string()))?;
        Ok(AttachedSlot { slot })
    }

    pub async fn detach(&self, slot: u32) -> Result<(), VmmApiError> {
        self.request(json!({"op": "detach_disk", "slot": slot}))
            .await
            .map(drop)
    }

    /// Asks the VMM to stop the VM at once.
    pub async fn stop(&self) -> Result<(), VmmApiError> {
        self.request(json!({"op": "stop", "timeout_ms": 0}))
            .await
            .map(drop)
    }
}

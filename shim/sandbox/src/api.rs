//! The VMM's control socket as the async sandbox code uses it: vpod_proto's typed, blocking
//! client ([`vpod_proto::vmm::VmmClient`]), run off the runtime's worker threads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vpod_proto::vmm::{ClientError, VmmClient};

/// How long one request may take to be written, and its reply to be read.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmApiError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot open {0} to attach it")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("the request to the VMM's control socket {0} did not finish")]
    Interrupted(PathBuf, #[source] tokio::task::JoinError),
}

/// A disk the VMM attached to a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachedSlot {
    pub slot: u32,
}

/// The control socket of one VMM.
#[derive(Debug, Clone)]
pub struct VmmApi {
    client: VmmClient,
}

impl VmmApi {
    pub fn new(path: impl Into<PathBuf>) -> VmmApi {
        VmmApi {
            client: VmmClient::new(path).with_timeout(API_TIMEOUT),
        }
    }

    pub fn path(&self) -> &Path {
        self.client.path()
    }

    /// Runs one blocking request on the runtime's blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        request: impl FnOnce(&VmmClient) -> Result<T, ClientError> + Send + 'static,
    ) -> Result<T, VmmApiError> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || request(&client))
            .await
            .map_err(|e| VmmApiError::Interrupted(self.client.path().to_path_buf(), e))?
            .map_err(VmmApiError::from)
    }

    /// Milliseconds from the VMM's start to the guest's init, once init has run.
    pub async fn boot_time_ms(&self) -> Result<Option<f64>, VmmApiError> {
        Ok(self.run(|client| client.boot_time()).await?.init_ms)
    }

    /// Attaches the file at `path` read-only to the first empty slot under `serial`. The
    /// file is opened here and passed over the socket: a jailed VMM cannot see the path.
    pub async fn attach_read_only(
        &self,
        path: &Path,
        serial: &str,
    ) -> Result<AttachedSlot, VmmApiError> {
        let file =
            std::fs::File::open(path).map_err(|e| VmmApiError::Open(path.to_path_buf(), e))?;
        self.attach_file(file, true, serial).await
    }

    /// Attaches the opened `file` (passed over the socket) to the first empty slot under
    /// `serial`.
    pub async fn attach_file(
        &self,
        file: std::fs::File,
        read_only: bool,
        serial: &str,
    ) -> Result<AttachedSlot, VmmApiError> {
        let serial = serial.to_string();
        let reply = self
            .run(move |client| {
                use std::os::fd::AsFd;
                client.attach_disk_fd(file.as_fd(), None, read_only, serial)
            })
            .await?;
        Ok(AttachedSlot { slot: reply.slot })
    }

    pub async fn detach(&self, slot: u32) -> Result<(), VmmApiError> {
        self.run(move |client| client.detach_slot(slot))
            .await
            .map(drop)
    }

    /// Asks the VMM to stop the VM at once.
    pub async fn stop(&self) -> Result<(), VmmApiError> {
        self.run(|client| client.stop(Duration::ZERO))
            .await
            .map(drop)
    }
}

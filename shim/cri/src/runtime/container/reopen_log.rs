//! ReopenContainerLog: reopen the running container's log file (after the kubelet rotated
//! it).

use super::open_log;
use crate::runtime::{lock, Runtime, RuntimeError};

impl Runtime {
    /// Reopens the running container's log file (after the kubelet rotated it).
    pub async fn reopen_log(&self, wanted: &str) -> Result<(), RuntimeError> {
        let (container, record) = self.running_container(wanted)?;
        let file = open_log(&record.log_path)?;
        *lock(&container.log) = file;
        Ok(())
    }
}

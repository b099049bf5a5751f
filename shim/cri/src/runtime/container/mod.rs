//! Containers, one file per verb: create (image layers attached as disks), start (with a
//! task following the output into the log file), stop, remove, status, list, exec, update
//! the resources, reopen the log.

mod create;
mod empty_dir;
mod exec_sync;
mod list;
mod remove;
mod reopen_log;
pub mod seccomp;
mod spec;
mod start;
mod status;
mod stop;
mod update;

use std::path::PathBuf;
use std::sync::Arc;

pub use create::CreateContainer;
pub use exec_sync::ExecOutput;

use super::{Container, Runtime, RuntimeError};
use crate::state::{ContainerPhase, ContainerRecord};

impl Runtime {
    /// The container `wanted` names and its record, if it is running.
    pub(in crate::runtime) fn running_container(
        &self,
        wanted: &str,
    ) -> Result<(Arc<Container>, ContainerRecord), RuntimeError> {
        let container = self.container(wanted)?;
        let record = container.record();
        if record.phase != ContainerPhase::Running {
            return Err(RuntimeError::FailedPrecondition(format!(
                "the container {} is not running",
                container.id
            )));
        }
        Ok((container, record))
    }
}

/// Opens (creating it and its directory) the log file for appending; none for no path.
pub(in crate::runtime) fn open_log(path: &str) -> Result<Option<std::fs::File>, RuntimeError> {
    if path.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(RuntimeError::io("create", parent))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map(Some)
        .map_err(RuntimeError::io("open the log file", &path))
}

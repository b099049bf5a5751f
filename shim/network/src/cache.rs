//! The per-pod record under the cache dir, `<cache_dir>/<sandbox_id>.json`, written
//! atomically (a temporary file, then rename) before each step of setup: first the intent
//! (the network as it will be run and the pod's arguments), then how many plugins were
//! started, then each result. Teardown needs nothing else, whether setup finished, stopped
//! half way, or never ran a plugin.
//!
//! Only the intent is fsynced. The progress writes that follow survive the crash this
//! record guards against (the runtime killed: the page cache stays), not a power loss;
//! libcni's own result cache is not fsynced either, and after a power loss the netns, the
//! links and the iptables rules are gone anyway. An fsync costs 3-4 ms here, and setup
//! writes the record five times or more.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// Why the pod record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create the cni cache dir {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("cannot write the cni cache file {0}")]
    Write(PathBuf, #[source] std::io::Error),
    #[error("cannot read the cni cache file {0}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("the cni cache file {0} is not a pod network record")]
    Corrupt(PathBuf, #[source] serde_json::Error),
    #[error("cannot remove the cni cache file {0}")]
    Remove(PathBuf, #[source] std::io::Error),
}

/// What this crate remembers of one pod's network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    pub sandbox_id: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// The network configuration list as ADD ran it (DEL must run the same one).
    pub network: Value,
    pub cni_args: String,
    /// Every capability argument of the pod; each plugin gets those it declares.
    pub capability_args: serde_json::Map<String, Value>,
    /// How many plugins' ADD were started, in order: DEL runs for these, in reverse.
    pub started: usize,
    /// The latest plugin's result (the final one once `complete`), as it printed it.
    pub result: Option<Value>,
    /// ADD finished for every plugin and the tap was joined.
    pub complete: bool,
}

pub fn path(dir: &Path, sandbox_id: &str) -> PathBuf {
    dir.join(format!("{sandbox_id}.json"))
}

/// Writes the first record of a pod, durably, failing with `Ok(false)` when the pod
/// already has one (the new file is linked into place, which never replaces a file).
pub fn create(dir: &Path, record: &PodRecord) -> Result<bool, CacheError> {
    let (temporary, target) = write_temporary(dir, record, true)?;
    let linked = std::fs::hard_link(&temporary, &target);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(CacheError::Write(target, e)),
    }
}

/// Replaces the record atomically (not fsynced, see the module's doc).
pub fn write(dir: &Path, record: &PodRecord) -> Result<(), CacheError> {
    let (temporary, target) = write_temporary(dir, record, false)?;
    std::fs::rename(&temporary, &target).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        CacheError::Write(target, e)
    })
}

/// The record in a temporary file of this thread's own, and the record's path.
fn write_temporary(
    dir: &Path,
    record: &PodRecord,
    durable: bool,
) -> Result<(PathBuf, PathBuf), CacheError> {
    std::fs::create_dir_all(dir).map_err(|e| CacheError::CreateDir(dir.to_owned(), e))?;
    let target = path(dir, &record.sandbox_id);
    let temporary = dir.join(format!(
        ".{}.json.{}.tmp",
        record.sandbox_id,
        rustix::thread::gettid().as_raw_nonzero()
    ));
    let write_error = |e| CacheError::Write(target.clone(), e);
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| write_error(e.into()))?;
    let mut file = std::fs::File::create(&temporary).map_err(write_error)?;
    file.write_all(&bytes).map_err(write_error)?;
    if durable {
        file.sync_all().map_err(write_error)?;
    }
    Ok((temporary, target))
}

/// The record of `sandbox_id`, if there is one.
pub fn read(dir: &Path, sandbox_id: &str) -> Result<Option<PodRecord>, CacheError> {
    let file = path(dir, sandbox_id);
    match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CacheError::Corrupt(file, e)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CacheError::Read(file, e)),
    }
}

/// Removes the record; a missing one is not an error.
pub fn remove(dir: &Path, sandbox_id: &str) -> Result<(), CacheError> {
    let file = path(dir, sandbox_id);
    match std::fs::remove_file(&file) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(CacheError::Remove(file, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("network");
        let record = PodRecord {
            sandbox_id: "abc".into(),
            netns: "/run/netns/vpod-abc".into(),
            ifname: "eth0".into(),
            network: serde_json::json!({"name": "n", "cniVersion": "1.0.0", "plugins": []}),
            cni_args: "IgnoreUnknown=1".into(),
            capability_args: Default::default(),
            started: 1,
            result: None,
            complete: false,
        };
        assert!(create(&cache, &record).unwrap());
        assert!(
            !create(&cache, &record).unwrap(),
            "a second create is refused"
        );
        write(&cache, &record).unwrap();
        let back = read(&cache, "abc").unwrap().unwrap();
        assert_eq!(back.started, 1);
        assert_eq!(back.netns, record.netns);
        remove(&cache, "abc").unwrap();
        remove(&cache, "abc").unwrap();
        assert!(read(&cache, "abc").unwrap().is_none());
        assert_eq!(
            std::fs::read_dir(&cache).unwrap().count(),
            0,
            "no temporary left"
        );
    }

    #[test]
    fn corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path(), "x"), b"{half").unwrap();
        let err = read(dir.path(), "x").unwrap_err();
        assert!(err.to_string().contains("x.json"), "{err}");
    }
}

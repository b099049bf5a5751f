//! What survives a restart of `vpod-cri`: one JSON record per pod and per container under
//! `<root>/cri/`, each written atomically (temporary file, fsync, rename, fsync of the
//! directory).
//!
//! ```text
//! <root>/cri/pods/<pod id>.json              a PodRecord
//! <root>/cri/containers/<container id>.json  a ContainerRecord
//! <root>/cri/offsets/<container id>         how far its log file has its output
//! <root>/cri/tmp/                            records being written
//! ```
//!
//! The log offset is rewritten in place (8 bytes, no fsync) after every write to the log
//! file: a killed daemon's writes stay in the page cache, so a restart resumes the log
//! exactly where it stopped (power loss may lose the tail of both).
//!
//! A record is written with phase `Creating` before anything with side effects (booting a
//! VM, creating a container in the guest) starts, so a daemon killed in the middle leaves a
//! record that the next start finds and undoes.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ids::is_runtime_id;

mod records;

pub use records::{
    ContainerLimits, ContainerPhase, ContainerRecord, ContainerSettings, MountRecord,
    PodNetworkRecord, PodPhase, PodRecord, PodSettings, PortMappingRecord,
};

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("could not {operation} {path}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the state record {path} is not valid")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn io_error(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_owned();
    move |source| StateError::Io {
        operation,
        path,
        source,
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating) `<root>/cri`.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        let state = StateDir {
            root: root.join("cri"),
        };
        for dir in [
            state.pods_dir(),
            state.containers_dir(),
            state.tmp_dir(),
            state.offsets_dir(),
        ] {
            fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        }
        Ok(state)
    }

    fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }

    fn containers_dir(&self) -> PathBuf {
        self.root.join("containers")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn offsets_dir(&self) -> PathBuf {
        self.root.join("offsets")
    }

    /// The log offset file of a container, opened (created) for updates.
    pub fn log_offset(&self, id: &str) -> Result<LogOffset, StateError> {
        let path = self.offsets_dir().join(id);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error("open", &path))?;
        Ok(LogOffset { file })
    }

    pub fn remove_log_offset(&self, id: &str) -> Result<(), StateError> {
        remove_if_present(&self.offsets_dir().join(id))
    }

    pub fn write_pod(&self, pod: &PodRecord) -> Result<(), StateError> {
        self.write(&self.pods_dir().join(format!("{}.json", pod.id)), pod)
    }

    pub fn write_container(&self, container: &ContainerRecord) -> Result<(), StateError> {
        let path = self.containers_dir().join(format!("{}.json", container.id));
        self.write(&path, container)
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), StateError> {
        remove_if_present(&self.pods_dir().join(format!("{id}.json")))
    }

    pub fn remove_container(&self, id: &str) -> Result<(), StateError> {
        remove_if_present(&self.containers_dir().join(format!("{id}.json")))
    }

    /// Every pod record, and the names of files that are not readable records.
    pub fn pods(&self) -> Result<(Vec<PodRecord>, Vec<PathBuf>), StateError> {
        read_all(&self.pods_dir())
    }

    pub fn containers(&self) -> Result<(Vec<ContainerRecord>, Vec<PathBuf>), StateError> {
        read_all(&self.containers_dir())
    }

    /// Removes leftovers of writes a crash interrupted.
    pub fn clean_tmp(&self) -> Result<(), StateError> {
        let dir = self.tmp_dir();
        for entry in fs::read_dir(&dir).map_err(io_error("list", &dir))? {
            let entry = entry.map_err(io_error("list", &dir))?;
            remove_if_present(&entry.path())?;
        }
        Ok(())
    }

    fn write<T: Serialize>(&self, path: &Path, record: &T) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| StateError::Record {
            path: path.to_owned(),
            source,
        })?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record");
        let temp = self.tmp_dir().join(format!(
            "{name}.{}.{}",
            std::process::id(),
            crate::logformat::now_ns()
        ));
        let result = (|| {
            let mut file = File::create(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&temp, path)?;
            File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result.map_err(io_error("write", path))
    }
}

/// How far a container's log file has its output, kept in an 8-byte file.
#[derive(Debug)]
pub struct LogOffset {
    file: File,
}

impl LogOffset {
    /// The stored offset; 0 for a new or short file.
    pub fn load(&self) -> u64 {
        use std::os::unix::fs::FileExt;
        let mut bytes = [0u8; 8];
        match self.file.read_exact_at(&mut bytes, 0) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => 0,
        }
    }

    pub fn store(&self, offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(&offset.to_le_bytes(), 0)
    }
}

fn remove_if_present(path: &Path) -> Result<(), StateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("remove", path)(e)),
    }
}

fn read_all<T: DeserializeOwned>(dir: &Path) -> Result<(Vec<T>, Vec<PathBuf>), StateError> {
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let id = name.to_str().and_then(|n| n.strip_suffix(".json"));
        if !id.is_some_and(is_runtime_id) {
            bad.push(path);
            continue;
        }
        let bytes = fs::read(&path).map_err(io_error("read", &path))?;
        match serde_json::from_slice(&bytes) {
            Ok(record) => records.push(record),
            Err(_) => bad.push(path),
        }
    }
    Ok((records, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let mut p = records::sample_pod(id);
        state.write_pod(&p).unwrap();
        p.phase = PodPhase::NotReady;
        state.write_pod(&p).unwrap();
        let (pods, bad) = state.pods().unwrap();
        assert_eq!(pods, vec![p]);
        assert!(bad.is_empty());
        state.remove_pod(id).unwrap();
        state.remove_pod(id).unwrap();
        assert!(state.pods().unwrap().0.is_empty());
        // Nothing is left in tmp/.
        assert_eq!(fs::read_dir(dir.path().join("cri/tmp")).unwrap().count(), 0);
    }

    #[test]
    fn foreign_and_corrupt_files_are_reported_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let pods = dir.path().join("cri/pods");
        fs::write(pods.join("notes.txt"), "x").unwrap();
        fs::write(pods.join(format!("{}.json", "a".repeat(32))), "{trunc").unwrap();
        let (records, bad) = state.pods().unwrap();
        assert!(records.is_empty());
        assert_eq!(bad.len(), 2);
    }

    #[test]
    fn log_offsets_are_kept_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let offset = state.log_offset("c1").unwrap();
        assert_eq!(offset.load(), 0);
        offset.store(12345).unwrap();
        offset.store(67890).unwrap();
        assert_eq!(state.log_offset("c1").unwrap().load(), 67890);
        state.remove_log_offset("c1").unwrap();
        assert_eq!(state.log_offset("c1").unwrap().load(), 0);
    }

    #[test]
    fn clean_tmp_removes_interrupted_writes() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        fs::write(dir.path().join("cri/tmp/x.json.1.2"), "half").unwrap();
        state.clean_tmp().unwrap();
        assert_eq!(fs::read_dir(dir.path().join("cri/tmp")).unwrap().count(), 0);
    }
}

//! File helpers for the store: crash-safe writes, unique temporary names, lock files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A name no other thread or process of this store uses: `<prefix>.<pid>.<n>.<nanos>`.
pub fn unique_temp_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}.{}.{n}.{nanos}", std::process::id())
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, never a mix:
/// temporary file in `temp_dir` (same filesystem), fsync, rename, fsync of the directory.
pub fn write_atomically(temp_dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = temp_dir.join(unique_temp_name(file_name));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        rename_durably(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Renames `from` to `to` and flushes the destination directory so the rename survives a
/// crash.
pub fn rename_durably(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    if let Some(parent) = to.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// An advisory lock held until dropped (the kernel releases it if the process dies).
pub struct HeldLock {
    _file: File,
}

/// Takes an exclusive lock on `path`, creating the file, waiting for other holders.
pub fn lock_exclusive(path: &Path) -> io::Result<HeldLock> {
    let file = open_lock_file(path)?;
    file.lock()?;
    Ok(HeldLock { _file: file })
}

/// Takes a shared lock on `path`, creating the file, waiting for an exclusive holder.
pub fn lock_shared(path: &Path) -> io::Result<HeldLock> {
    let file = open_lock_file(path)?;
    file.lock_shared()?;
    Ok(HeldLock { _file: file })
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// A directory removed (with its contents) when dropped, unless kept.
pub struct TempDirGuard {
    path: PathBuf,
}

impl TempDirGuard {
    pub fn create(path: PathBuf) -> io::Result<TempDirGuard> {
        fs::create_dir(&path)?;
        Ok(TempDirGuard { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        // remove_dir_all does not follow symbolic links inside the tree.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A file removed when dropped unless it was renamed away first.
pub struct TempFileGuard {
    pub path: PathBuf,
}

impl Drop for TempFileGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

//! Moving PID 1 off the initramfs mount, without copying it.
//!
//! The kernel starts init on "rootfs", the initramfs mount, which has no parent mount, and
//! pivot_root(2) refuses to pivot away from a root that has none (EINVAL). Every container
//! is started with pivot_root, so before anything else init bind-mounts the root onto a
//! directory of its own, moves that mount over `/` and chroots into it: the root is then a
//! mount with a parent (rootfs), and pivot_root works below it. The files stay where the
//! kernel unpacked them. (switch_root(8) copies the initramfs into a tmpfs instead, to free
//! it; here that copy was a few megabytes of guest memory and boot time for nothing.)
//!
//! Init also keeps its own binary's pages in place ([`pin_init`]) and tells the VMM where
//! they are: the VMM maps the initrd file over those guest pages, even where a virtio-fs
//! backend writes guest memory through a memfd of its own, which is sound only if none of
//! them is ever freed, moved or handed to a device. Locked pages are never evicted, and
//! never migrated once `vm.compact_unevictable_allowed` is 0 (our guest kernel has no
//! compaction at all).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

const NEW_ROOT: &str = "/.vpod-root";
const PAGE: usize = 4096;
const COMPACT_UNEVICTABLE: &str = "/proc/sys/vm/compact_unevictable_allowed";
/// statfs(2)'s type of a ramfs (include/uapi/linux/magic.h); libc does not name it.
const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;

/// Why init could not move off the initramfs mount, or keep its pages in place.
#[derive(Debug, thiserror::Error)]
pub enum RootSwitchError {
    #[error("could not prepare the mount point {0}")]
    Prepare(&'static str, #[source] io::Error),
    #[error("could not bind the root onto {0}")]
    Bind(&'static str, #[source] io::Error),
    #[error("could not move the bound root over / and enter it")]
    Enter(#[source] io::Error),
    #[error("could not lock the pages of {0} in memory")]
    Pin(String, #[source] io::Error),
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `/` is the initramfs itself: before anything is mounted, a tmpfs or ramfs root
/// is the kernel's rootfs (a mount with no parent).
fn on_initramfs() -> bool {
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: a NUL-terminated path and a buffer of the right type that outlive the call.
    if unsafe { libc::statfs(c"/".as_ptr(), stat.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs returned 0, so it filled the buffer.
    let kind = unsafe { stat.assume_init() }.f_type;
    kind == libc::TMPFS_MAGIC || kind == RAMFS_MAGIC
}

/// Moves init's root onto a mount of its own (see the module documentation). A root that
/// is not the initramfs (a disk) is left as it is.
pub fn leave_initramfs_mount() -> Result<(), RootSwitchError> {
    if !on_initramfs() {
        return Ok(());
    }
    let new_root = Path::new(NEW_ROOT);
    fs::create_dir_all(new_root).map_err(|e| RootSwitchError::Prepare(NEW_ROOT, e))?;
    let target = c_path(new_root).map_err(|e| RootSwitchError::Prepare(NEW_ROOT, e))?;
    // SAFETY: NUL-terminated strings that outlive the call; a bind of our own root.
    check(unsafe {
        libc::mount(
            c"/".as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    })
    .map_err(|e| RootSwitchError::Bind(NEW_ROOT, e))?;
    std::env::set_current_dir(new_root).map_err(RootSwitchError::Enter)?;
    // SAFETY: NUL-terminated strings that outlive the calls; MS_MOVE of our own bind mount.
    unsafe {
        check(libc::mount(
            c".".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        ))
        .map_err(RootSwitchError::Enter)?;
        check(libc::chroot(c".".as_ptr())).map_err(RootSwitchError::Enter)?;
    }
    std::env::set_current_dir("/").map_err(RootSwitchError::Enter)?;
    // The directory the bind went to is an empty one of the same file system, now at
    // /.vpod-root again; nothing needs it.
    let _ = fs::remove_dir(new_root);
    Ok(())
}

/// Keeps the pages of the file `init` (our binary on the initramfs) where they are: locks
/// them ([`lock_file_pages`]) and turns off the compaction of locked pages. Returns where
/// they are ([`frame_runs`]). Needs /proc.
pub fn pin_init(init: &Path) -> Result<Vec<(u64, u64)>, RootSwitchError> {
    let (at, len) = lock_file_pages(init)?;
    match fs::write(COMPACT_UNEVICTABLE, "0") {
        Ok(()) => {}
        // A kernel without compaction (ours) moves no page.
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(RootSwitchError::Pin(COMPACT_UNEVICTABLE.into(), e)),
    }
    frame_runs(at, len).map_err(|e| RootSwitchError::Pin("/proc/self/pagemap".into(), e))
}

/// The physical frames behind `len` bytes of this process's memory at `at` (page-aligned),
/// as runs (first frame, count), from `/proc/self/pagemap` (frame numbers need
/// CAP_SYS_ADMIN; without it they read as 0 and nothing is returned). Pages not present
/// are left out.
pub fn frame_runs(at: usize, len: usize) -> io::Result<Vec<(u64, u64)>> {
    const PRESENT: u64 = 1 << 63;
    const FRAME: u64 = (1 << 55) - 1;
    let pages = len.div_ceil(PAGE);
    let mut entries = vec![0u8; pages * 8];
    fs::File::open("/proc/self/pagemap")?.read_exact_at(&mut entries, (at / PAGE * 8) as u64)?;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for entry in entries.chunks_exact(8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(entry);
        let word = u64::from_le_bytes(word);
        let frame = word & FRAME;
        if word & PRESENT == 0 || frame == 0 {
            continue;
        }
        match runs.last_mut() {
            Some((first, count)) if *first + *count == frame => *count += 1,
            _ => runs.push((frame, 1)),
        }
    }
    Ok(runs)
}

/// Maps the whole of the file at `path` shared and locks the mapping, so its page-cache
/// pages stay in memory. The mapping (returned: address, length) is left in place for the
/// life of the process: unmapping would unlock it.
pub fn lock_file_pages(path: &Path) -> Result<(usize, usize), RootSwitchError> {
    let err = |e| RootSwitchError::Pin(path.display().to_string(), e);
    let file = fs::File::open(path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len() as usize;
    if len == 0 {
        return Ok((0, 0));
    }
    // SAFETY: a new shared read-only mapping of a file we opened; nothing else in the
    // process uses the range, and it is never unmapped.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            file.as_raw_fd(),
            0,
        )
    };
    if map == libc::MAP_FAILED {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: the range is the mapping just made.
    check(unsafe { libc::mlock(map, len) }).map_err(err)?;
    Ok((map as usize, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked_kib() -> u64 {
        fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmLck:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn a_file_s_pages_are_locked() {
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), vec![7u8; 256 << 10]).unwrap();
        let before = locked_kib();
        match lock_file_pages(file.path()) {
            Ok((at, len)) => {
                assert!(locked_kib() >= before + 256, "VmLck {}", locked_kib());
                // Root (CAP_SYS_ADMIN) reads the frames: 64 pages, all present.
                let runs = frame_runs(at, len).expect("pagemap");
                let pages: u64 = runs.iter().map(|r| r.1).sum();
                assert!(pages == 64 || runs.is_empty(), "{runs:?}");
            }
            // Without CAP_IPC_LOCK the memlock limit may be smaller than the file.
            Err(RootSwitchError::Pin(_, e)) if e.raw_os_error() == Some(libc::EPERM) => {}
            Err(RootSwitchError::Pin(_, e)) if e.raw_os_error() == Some(libc::ENOMEM) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(
            lock_file_pages(Path::new("/nonexistent/init")),
            Err(RootSwitchError::Pin(..))
        ));
    }
}

//! The system calls a jail is built with, each a thin checked wrapper.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path holds a NUL byte"))
}

fn c_str(text: &str) -> CString {
    // Only our own constant strings come here.
    CString::new(text).unwrap_or_default()
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    // SAFETY: unshare takes flags only; the process is single-threaded here (checked by the
    // kernel for the flags that need it).
    check(unsafe { libc::unshare(flags) })
}

/// setns(2) into the namespace `fd` refers to, of the kind `kind` (a `CLONE_NEW*` flag).
pub fn setns(fd: &impl AsRawFd, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: setns takes a descriptor and a flag, both plain integers; `fd` is open for the
    // call's length.
    check(unsafe { libc::setns(fd.as_raw_fd(), kind) })
}

/// fork(2): `Some(pid)` in the parent, `None` in the child.
pub fn fork() -> io::Result<Option<libc::pid_t>> {
    // SAFETY: called before the process starts any thread, so the child is a whole copy.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

fn mount(
    source: Option<&OsStr>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(|s| c_path(Path::new(s))).transpose()?;
    let target = c_path(target)?;
    let fstype = fstype.map(c_str);
    let data = data.map(c_str);
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    })
}

/// Makes every mount below `/` private, so nothing done in this namespace reaches the host.
pub fn make_mounts_private() -> io::Result<()> {
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
}

pub fn mount_tmpfs(target: &Path, options: &str) -> io::Result<()> {
    mount(
        Some(OsStr::new("tmpfs")),
        target,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(options),
    )
}

/// Binds `source` on `target`, then makes that mount nosuid, nodev, noexec and, when asked,
/// read-only (flags of a bind mount are set by remounting it).
pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    mount(Some(source.as_os_str()), target, None, libc::MS_BIND, None)?;
    let mut flags =
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    mount(None, target, None, flags, None)
}

/// Remounts the root (the jail's tmpfs) read-only.
pub fn remount_root_read_only() -> io::Result<()> {
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
    )
}

/// Makes `new_root` the root and drops every mount of the old one.
pub fn pivot_root(new_root: &Path) -> io::Result<()> {
    std::env::set_current_dir(new_root)?;
    let dot = c_str(".");
    // SAFETY: both arguments are NUL-terminated strings; pivot_root(".", ".") stacks the old
    // root on the new one, where the detach below takes it off.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as i32)?;
    // SAFETY: a NUL-terminated path and a flag.
    check(unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) })?;
    std::env::set_current_dir("/")
}

/// A character device node at `path` with the device number of the host's `like`, owned by
/// `uid`:`gid`, mode 0600.
pub fn make_char_device(path: &Path, like: &Path, uid: u32, gid: u32) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(like)?.rdev();
    let c = c_path(path)?;
    // SAFETY: a NUL-terminated path, a mode and a device number.
    check(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, rdev) })?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

pub fn set_hostname(name: &str) -> io::Result<()> {
    // SAFETY: the pointer and length describe `name`'s bytes.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// Closes every descriptor from 3 up that `keep` (ascending) does not hold.
pub fn close_other_fds(keep: &[RawFd]) -> io::Result<()> {
    let mut first: u32 = 3;
    for &fd in keep.iter().filter(|&&fd| fd >= 3) {
        let fd = fd as u32;
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = fd + 1;
    }
    close_range(first, u32::MAX)
}

fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: closes descriptors only; none of them is owned by a Rust value still in use
    // (the jail runs before the VMM opens anything, and kept ones are skipped).
    check(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) } as i32)
}

pub fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: `limit` is a valid rlimit for the call's duration.
    check(unsafe { libc::setrlimit(resource, &limit) })
}

fn prctl(option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used here take integer arguments only.
    check(unsafe { libc::prctl(option, arg, 0, 0, 0) })
}

/// Sets this thread's name (`comm`, at most 15 bytes), the process's for its main thread.
pub fn set_process_name(name: &str) -> io::Result<()> {
    let name = c_str(name);
    // SAFETY: a NUL-terminated string the kernel copies (up to 16 bytes).
    check(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) })
}

pub fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1)
}

/// Not dumpable: no core file of guest memory, and no ptrace by the same user.
pub fn set_not_dumpable() -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, 0)
}

pub fn set_parent_death_signal(signal: libc::c_int) -> io::Result<()> {
    prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong)
}

/// Empties the capability bounding set (so nothing regains a capability) and the ambient
/// set. Needs CAP_SETPCAP, so before the user changes.
pub fn drop_capability_sets() -> io::Result<()> {
    for cap in 0..=63 {
        // SAFETY: integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            // Past the kernel's last capability.
            if error.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(error);
        }
    }
    // SAFETY: integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    })
}

/// Runs as `uid`:`gid` with no supplementary groups. From root to another user the kernel
/// clears the permitted and effective capabilities; the inheritable set is cleared here.
pub fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: an empty group list (a null pointer with a zero count is allowed).
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresgid(gid, gid, gid) })?;
    // SAFETY: integer arguments only.
    check(unsafe { libc::setresuid(uid, uid, uid) })?;
    clear_capabilities()
}

fn clear_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: a version 3 header and the two data words it describes, both valid for the
    // call.
    check(unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } as i32)
}

/// Blocks `signals` in this thread: they stay pending until read or unblocked.
pub fn block_signals(signals: &[libc::c_int]) -> io::Result<()> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `mask` is a valid sigset_t.
    unsafe {
        libc::sigemptyset(&mut mask);
        for &signal in signals {
            libc::sigaddset(&mut mask, signal);
        }
    }
    // SAFETY: `mask` is initialised; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

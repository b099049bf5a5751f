//! Moving PID 1 off the initramfs.
//!
//! The kernel starts init on "rootfs", the initramfs mount, which has no parent mount, and
//! pivot_root(2) refuses to pivot away from it (EINVAL). Every container is started with
//! pivot_root, so before anything else init copies the initramfs into a tmpfs, frees the
//! old copy, moves the tmpfs over `/`, chroots into it and executes itself again there, as
//! switch_root(8) does. The copy is a few megabytes of memory-to-memory work.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Set in the environment of the re-executed init, so the switch happens once.
pub const SWITCHED_ENV: &str = "VPOD_INIT_ON_TMPFS";
const NEW_ROOT: &str = "/.vpod-root";

/// Why init could not move to a tmpfs root.
#[derive(Debug, thiserror::Error)]
pub enum RootSwitchError {
    #[error("could not prepare the tmpfs root at {0}")]
    Prepare(&'static str, #[source] io::Error),
    #[error("could not copy {0} into the tmpfs root")]
    Copy(String, #[source] io::Error),
    #[error("could not move the tmpfs over / and enter it")]
    Enter(#[source] io::Error),
    #[error("could not execute /init again from the tmpfs root")]
    Exec(#[source] io::Error),
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

/// Copies the tree under `from` into `to` (which exists): directories, regular files,
/// symbolic links, device nodes and FIFOs, with modes and owners. `skip` names entries of
/// `from` itself to leave out.
pub fn copy_tree(from: &Path, to: &Path, skip: &[&str]) -> Result<(), RootSwitchError> {
    let err = |p: &Path, e| RootSwitchError::Copy(p.display().to_string(), e);
    for entry in fs::read_dir(from).map_err(|e| err(from, e))? {
        let entry = entry.map_err(|e| err(from, e))?;
        let name = entry.file_name();
        if skip.iter().any(|s| name.as_bytes() == s.as_bytes()) {
            continue;
        }
        let source = entry.path();
        let target = to.join(&name);
        let meta = fs::symlink_metadata(&source).map_err(|e| err(&source, e))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(&target).map_err(|e| err(&source, e))?;
            copy_tree(&source, &target, &[])?;
            fs::set_permissions(&target, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(|e| err(&source, e))?;
        } else if kind.is_symlink() {
            let link = fs::read_link(&source).map_err(|e| err(&source, e))?;
            std::os::unix::fs::symlink(link, &target).map_err(|e| err(&source, e))?;
        } else if kind.is_file() {
            fs::copy(&source, &target).map_err(|e| err(&source, e))?;
        } else if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() {
            let c = c_path(&target).map_err(|e| err(&source, e))?;
            // SAFETY: `c` is a NUL-terminated path that outlives the call.
            check(unsafe { libc::mknod(c.as_ptr(), meta.mode(), meta.rdev()) })
                .map_err(|e| err(&source, e))?;
        } else {
            continue; // sockets: nothing in an initramfs needs one
        }
        let c = c_path(&target).map_err(|e| err(&source, e))?;
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        check(unsafe { libc::lchown(c.as_ptr(), meta.uid(), meta.gid()) })
            .map_err(|e| err(&source, e))?;
    }
    Ok(())
}

/// Moves init onto a tmpfs root and executes it again; returns only on failure.
pub fn move_to_tmpfs_root(argv0: &str, args: &[String]) -> RootSwitchError {
    match switch() {
        Ok(()) => {}
        Err(e) => return e,
    }
    let mut cmd = std::process::Command::new(argv0);
    cmd.args(args).env(SWITCHED_ENV, "1");
    use std::os::unix::process::CommandExt;
    RootSwitchError::Exec(cmd.exec())
}

fn switch() -> Result<(), RootSwitchError> {
    let new_root = Path::new(NEW_ROOT);
    fs::create_dir_all(new_root).map_err(|e| RootSwitchError::Prepare(NEW_ROOT, e))?;
    let target = c_path(new_root).map_err(|e| RootSwitchError::Prepare(NEW_ROOT, e))?;
    let fstype = c"tmpfs";
    let data = c"mode=0755";
    // SAFETY: NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    })
    .map_err(|e| RootSwitchError::Prepare(NEW_ROOT, e))?;
    copy_tree(Path::new("/"), new_root, &[&NEW_ROOT[1..]])?;
    // Free the initramfs copy: it is not reachable once the tmpfs covers /.
    for entry in fs::read_dir("/")
        .map_err(|e| RootSwitchError::Copy("/".into(), e))?
        .flatten()
    {
        if entry.file_name().as_bytes() == &NEW_ROOT.as_bytes()[1..] {
            continue;
        }
        let path = entry.path();
        let _ = if path.is_dir() && !path.is_symlink() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
    }
    std::env::set_current_dir(new_root).map_err(RootSwitchError::Enter)?;
    let dot = c".";
    let slash = c"/";
    // SAFETY: NUL-terminated strings that outlive the calls; MS_MOVE of our own tmpfs.
    unsafe {
        check(libc::mount(
            dot.as_ptr(),
            slash.as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        ))
        .map_err(RootSwitchError::Enter)?;
        check(libc::chroot(dot.as_ptr())).map_err(RootSwitchError::Enter)?;
    }
    std::env::set_current_dir("/").map_err(RootSwitchError::Enter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_keeps_files_links_modes_and_skips_named_entries() {
        let base = std::env::temp_dir().join(format!("vpod-root-switch-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        fs::create_dir_all(from.join("bin")).unwrap();
        fs::create_dir_all(&to).unwrap();
        fs::write(from.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(from.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("/bin/tool", from.join("bin/alias")).unwrap();
        fs::create_dir_all(from.join("skipme")).unwrap();
        copy_tree(&from, &to, &["skipme"]).unwrap();
        assert_eq!(fs::read(to.join("bin/tool")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            fs::metadata(to.join("bin/tool")).unwrap().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::read_link(to.join("bin/alias")).unwrap(),
            Path::new("/bin/tool")
        );
        assert!(!to.join("skipme").exists());
        fs::remove_dir_all(&base).unwrap();
    }
}

//! Paths inside a container's root, resolved by the kernel as if the root were `/`:
//! openat2(2) with RESOLVE_IN_ROOT clamps `..` and absolute symlinks at the root, and
//! RESOLVE_NO_MAGICLINKS refuses /proc-style links, so a hostile image's symlinks
//! (`/etc -> /../../run/vpod`) cannot lead the agent's writes, reads or mounts out of it.
//!
//! [`openat2`] is a bare system call that neither allocates nor locks, so a freshly cloned
//! container init may use it too; [`RootDir`] is the agent's own, allocating, interface.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// How every lookup below the root resolves.
pub const RESOLVE_SAFE: u64 = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;

#[derive(Debug, thiserror::Error)]
pub enum InRootError {
    #[error("the path {0:?} is not an absolute path without '..'")]
    BadPath(String),
    #[error("the path {0:?} contains a NUL byte")]
    NulByte(String),
    #[error("could not open the container root {0}")]
    OpenRoot(PathBuf, #[source] io::Error),
    #[error("could not create the directory {0} in the container")]
    CreateDir(String, #[source] io::Error),
    #[error("could not write {0} in the container")]
    Write(String, #[source] io::Error),
    #[error("could not read {0} in the container")]
    Read(String, #[source] io::Error),
    #[error("{0} in the container is larger than {1} bytes")]
    TooLarge(String, u64),
}

/// struct open_how of linux/openat2.h (libc's is non-exhaustive, so it cannot be built).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// openat2(2): a descriptor, or -1 with errno set. Allocation-free.
pub fn openat2(dirfd: RawFd, path: &CStr, flags: libc::c_int, mode: u32, resolve: u64) -> RawFd {
    let how = OpenHow {
        flags: flags as u64,
        mode: u64::from(mode),
        resolve,
    };
    // SAFETY: the path is NUL-terminated and `how` is a live open_how of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    rc as RawFd
}

/// An absolute container path as the relative path the lookups take ("." for the root).
pub fn relative(path: &str) -> Result<PathBuf, InRootError> {
    let bad = || InRootError::BadPath(path.to_string());
    if !path.starts_with('/') {
        return Err(bad());
    }
    let mut relative = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            Component::ParentDir | Component::Prefix(_) => return Err(bad()),
        }
    }
    if relative.as_os_str().is_empty() {
        relative.push(".");
    }
    Ok(relative)
}

fn c_path(path: &Path) -> Result<CString, InRootError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| InRootError::NulByte(path.display().to_string()))
}

fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: the descriptor was just returned by the kernel and nobody else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Symlinks followed while creating one directory, as the kernel's limit.
const MAX_LINKS: u32 = 40;

/// The target of the symlink `name` in `dir`, if it is one.
fn read_link_at(dir: &OwnedFd, name: &CStr) -> Option<Vec<u8>> {
    let mut buffer = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: a descriptor we own, a NUL-terminated name, and a live buffer of the size
    // passed; readlinkat does not follow the link.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    let n = usize::try_from(n).ok()?;
    buffer.truncate(n);
    Some(buffer)
}

/// A container's root directory, held open.
pub struct RootDir {
    fd: OwnedFd,
}

impl RootDir {
    pub fn open(root: &Path) -> Result<RootDir, InRootError> {
        let c_root = c_path(root)?;
        let fd = openat2(
            libc::AT_FDCWD,
            &c_root,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            0,
            0,
        );
        owned(fd)
            .map(|fd| RootDir { fd })
            .map_err(|e| InRootError::OpenRoot(root.to_path_buf(), e))
    }

    fn open_relative(&self, relative: &Path, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
        let c = CString::new(relative.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        owned(openat2(
            self.fd.as_raw_fd(),
            &c,
            flags | libc::O_CLOEXEC,
            mode,
            RESOLVE_SAFE,
        ))
    }

    /// mkdir -p of the absolute container path `dir` (mode 0755, owned by the agent's user);
    /// a descriptor of the directory it names. A dangling symlink on the way is followed
    /// (inside the root) and its target created, as mkdir -p through `/var/run -> /run`
    /// would when /run is missing.
    pub fn create_dir_all(&self, dir: &str) -> Result<OwnedFd, InRootError> {
        self.create_dir_all_at(&relative(dir)?, dir, 0)
    }

    /// mkdir -p of `relative` (which may hold ".." from link targets: the kernel resolves
    /// those inside the root too); `dir` names the request in errors.
    fn create_dir_all_at(
        &self,
        relative: &Path,
        dir: &str,
        links: u32,
    ) -> Result<OwnedFd, InRootError> {
        let error = |e| InRootError::CreateDir(dir.to_string(), e);
        let mut prefix = PathBuf::new();
        let mut parent = self
            .open_relative(Path::new("."), libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(error)?;
        for part in relative.components() {
            let name = match part {
                Component::Normal(name) => name,
                Component::ParentDir => {
                    prefix.push("..");
                    parent = self
                        .open_relative(&prefix, libc::O_PATH | libc::O_DIRECTORY, 0)
                        .map_err(error)?;
                    continue;
                }
                _ => continue,
            };
            let base = prefix.clone();
            prefix.push(name);
            let open = || self.open_relative(&prefix, libc::O_PATH | libc::O_DIRECTORY, 0);
            parent = match open() {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let name = CString::new(name.as_bytes())
                        .map_err(|_| InRootError::NulByte(dir.to_string()))?;
                    // SAFETY: a descriptor we own and a NUL-terminated single component;
                    // mkdirat never follows a symlink in its last component.
                    let rc = unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) };
                    if rc != 0 {
                        let e = io::Error::last_os_error();
                        if e.raw_os_error() != Some(libc::EEXIST) {
                            return Err(error(e));
                        }
                        if let Some(target) = read_link_at(&parent, &name) {
                            if links >= MAX_LINKS {
                                return Err(error(io::Error::from_raw_os_error(libc::ELOOP)));
                            }
                            let target = Path::new(std::ffi::OsStr::from_bytes(&target));
                            let followed = match target.strip_prefix("/") {
                                Ok(absolute) => absolute.to_path_buf(),
                                Err(_) => base.join(target),
                            };
                            self.create_dir_all_at(&followed, dir, links + 1)?;
                        }
                    }
                    open().map_err(error)?
                }
                Err(e) => return Err(error(e)),
            };
        }
        Ok(parent)
    }

    /// Writes `content` to the absolute container path `path` with permission bits `mode`,
    /// replacing whatever non-directory is there (a symlink is replaced, not followed);
    /// missing parent directories are created.
    pub fn write_file(&self, path: &str, content: &[u8], mode: u32) -> Result<(), InRootError> {
        let relative = relative(path)?;
        let error = |e| InRootError::Write(path.to_string(), e);
        let name = relative
            .file_name()
            .ok_or_else(|| InRootError::BadPath(path.to_string()))?;
        let parent_path = match relative.parent() {
            Some(p) if !p.as_os_str().is_empty() => format!("/{}", p.display()),
            _ => "/".to_string(),
        };
        let parent = self.create_dir_all(&parent_path)?;
        let c_name =
            CString::new(name.as_bytes()).map_err(|_| InRootError::NulByte(path.into()))?;
        let mut temporary = b".vpod-".to_vec();
        temporary.extend_from_slice(name.as_bytes());
        temporary.extend_from_slice(format!(".{}", std::process::id()).as_bytes());
        let c_temporary =
            CString::new(temporary).map_err(|_| InRootError::NulByte(path.to_string()))?;
        // SAFETY: a descriptor we own and a NUL-terminated single component. O_EXCL never
        // follows a symlink, so the file is created right here.
        let fd = unsafe {
            libc::openat(
                parent.as_raw_fd(),
                c_temporary.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        let fd = match owned(fd) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                // Left over by an agent that died mid-write: it is ours to remove.
                // SAFETY: as above; unlinkat does not follow symlinks.
                unsafe { libc::unlinkat(parent.as_raw_fd(), c_temporary.as_ptr(), 0) };
                // SAFETY: as above.
                owned(unsafe {
                    libc::openat(
                        parent.as_raw_fd(),
                        c_temporary.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600,
                    )
                })
                .map_err(error)?
            }
            Err(e) => return Err(error(e)),
        };
        let mut file = File::from(fd);
        let written = file
            .write_all(content)
            .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777)))
            .and_then(|()| {
                // SAFETY: both names are NUL-terminated single components in a directory
                // we hold; renameat replaces the target without following it.
                let rc = unsafe {
                    libc::renameat(
                        parent.as_raw_fd(),
                        c_temporary.as_ptr(),
                        parent.as_raw_fd(),
                        c_name.as_ptr(),
                    )
                };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        if let Err(e) = written {
            // SAFETY: as above.
            unsafe { libc::unlinkat(parent.as_raw_fd(), c_temporary.as_ptr(), 0) };
            return Err(error(e));
        }
        Ok(())
    }

    /// The content of the absolute container path `path`, None when it does not exist;
    /// a file larger than `limit` is an error.
    pub fn read_file(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>, InRootError> {
        let relative = relative(path)?;
        let error = |e| InRootError::Read(path.to_string(), e);
        let fd = match self.open_relative(&relative, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(error(e)),
        };
        let file = File::from(fd);
        let metadata = file.metadata().map_err(error)?;
        if !metadata.is_file() {
            return Err(error(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let mut content = Vec::new();
        file.take(limit + 1)
            .read_to_end(&mut content)
            .map_err(error)?;
        if content.len() as u64 > limit {
            return Err(InRootError::TooLarge(path.to_string(), limit));
        }
        Ok(Some(content))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root_with_escapes() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // Absolute and relative links that would leave the root if followed naively.
        symlink(&outside, root.join("abs")).unwrap();
        symlink("../../outside", root.join("real/up")).unwrap();
        symlink(format!("/../..{}", outside.display()), root.join("etc")).unwrap();
        // Where the absolute links land when resolved inside the root.
        std::fs::create_dir_all(root.join(outside.strip_prefix("/").unwrap())).unwrap();
        std::fs::create_dir_all(root.join("outside")).unwrap();
        (dir, root, outside)
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn relative_paths_refuse_dot_dot_and_relative_input() {
        assert_eq!(relative("/etc//hosts").unwrap(), Path::new("etc/hosts"));
        assert_eq!(relative("/").unwrap(), Path::new("."));
        assert!(relative("/a/../b").is_err());
        assert!(relative("etc").is_err());
    }

    #[test]
    fn writes_through_escaping_symlinks_stay_in_the_root() {
        let (_dir, root, outside) = root_with_escapes();
        let rootdir = RootDir::open(&root).unwrap();
        rootdir
            .write_file("/etc/resolv.conf", b"nameserver 10.0.0.1\n", 0o644)
            .unwrap();
        rootdir.write_file("/abs/x", b"x", 0o600).unwrap();
        rootdir.write_file("/real/up/y", b"y", 0o600).unwrap();
        assert_eq!(std::fs::read(root.join("outside/y")).unwrap(), b"y");
        assert!(entries(&outside).is_empty(), "{:?}", entries(&outside));
        // The absolute link /etc -> /../..<outside> resolved inside the root.
        let inside_target = root.join(outside.strip_prefix("/").unwrap());
        assert_eq!(
            std::fs::read(inside_target.join("resolv.conf")).unwrap(),
            b"nameserver 10.0.0.1\n"
        );
        let mode = std::fs::metadata(inside_target.join("resolv.conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn a_symlinked_file_is_replaced_not_followed() {
        let (_dir, root, outside) = root_with_escapes();
        std::fs::create_dir_all(root.join("real/etc")).unwrap();
        symlink(outside.join("hosts"), root.join("real/etc/hosts")).unwrap();
        let rootdir = RootDir::open(&root).unwrap();
        rootdir
            .write_file("/real/etc/hosts", b"127.0.0.1 localhost\n", 0)
            .unwrap();
        assert!(!outside.join("hosts").exists());
        let meta = std::fs::symlink_metadata(root.join("real/etc/hosts")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0);
        assert_eq!(
            std::fs::read(root.join("real/etc/hosts")).unwrap(),
            b"127.0.0.1 localhost\n"
        );
    }

    #[test]
    fn directories_are_created_below_the_root_only() {
        let (_dir, root, outside) = root_with_escapes();
        let rootdir = RootDir::open(&root).unwrap();
        rootdir.create_dir_all("/abs/a/b").unwrap();
        rootdir.create_dir_all("/new/dir").unwrap();
        symlink("/nowhere/../../x", root.join("dangling")).unwrap();
        rootdir.create_dir_all("/dangling/a").unwrap();
        assert!(root.join("x/a").is_dir() && root.join("nowhere").is_dir());
        symlink("../../../../../outside/deep", root.join("real/rel")).unwrap();
        rootdir.create_dir_all("/real/rel/b").unwrap();
        assert!(root.join("outside/deep/b").is_dir());
        symlink("loop", root.join("loop")).unwrap();
        assert!(rootdir.create_dir_all("/loop/a").is_err());
        assert!(entries(&outside).is_empty());
        assert!(root.join("new/dir").is_dir());
        assert!(root
            .join(outside.strip_prefix("/").unwrap())
            .join("a/b")
            .is_dir());
    }

    #[test]
    fn reads_stay_in_the_root_and_are_bounded() {
        let (_dir, root, outside) = root_with_escapes();
        std::fs::write(outside.join("passwd"), b"secret").unwrap();
        let rootdir = RootDir::open(&root).unwrap();
        assert_eq!(rootdir.read_file("/abs/passwd", 100).unwrap(), None);
        std::fs::write(root.join("real/big"), vec![b'x'; 101]).unwrap();
        assert!(matches!(
            rootdir.read_file("/real/big", 100),
            Err(InRootError::TooLarge(..))
        ));
        assert_eq!(
            rootdir.read_file("/real/big", 101).unwrap().unwrap().len(),
            101
        );
    }
}

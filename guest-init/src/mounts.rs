//! The filesystems PID 1 mounts before anything else runs.

use std::ffi::CString;
use std::path::Path;

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("could not create the mount point {0}")]
    MountPoint(String, #[source] std::io::Error),
    #[error("could not mount {fstype} on {target}")]
    Mount {
        fstype: String,
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not link {0}")]
    Link(String, #[source] std::io::Error),
}

/// One entry of the boot mount table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub fstype: &'static str,
    pub target: &'static str,
    pub flags: libc::c_ulong,
    pub data: &'static str,
}

const NOSUID: libc::c_ulong = libc::MS_NOSUID;
const NODEV: libc::c_ulong = libc::MS_NODEV;
const NOEXEC: libc::c_ulong = libc::MS_NOEXEC;

/// In order: each target lies on a filesystem mounted before it.
pub fn boot_mounts() -> Vec<Mount> {
    vec![
        Mount {
            fstype: "proc",
            target: "/proc",
            flags: NOSUID | NODEV | NOEXEC,
            data: "",
        },
        Mount {
            fstype: "sysfs",
            target: "/sys",
            flags: NOSUID | NODEV | NOEXEC,
            data: "",
        },
        Mount {
            fstype: "devtmpfs",
            target: "/dev",
            flags: NOSUID,
            data: "mode=0755",
        },
        Mount {
            fstype: "devpts",
            target: "/dev/pts",
            flags: NOSUID | NOEXEC,
            data: "newinstance,ptmxmode=0666,mode=0620",
        },
        Mount {
            fstype: "tmpfs",
            target: "/dev/shm",
            flags: NOSUID | NODEV,
            data: "mode=1777",
        },
        Mount {
            fstype: "tmpfs",
            target: "/tmp",
            flags: NOSUID | NODEV,
            data: "mode=1777",
        },
        Mount {
            fstype: "tmpfs",
            target: "/run",
            flags: NOSUID | NODEV,
            data: "mode=0755",
        },
        Mount {
            fstype: "cgroup2",
            target: "/sys/fs/cgroup",
            flags: NOSUID | NODEV | NOEXEC,
            data: "",
        },
    ]
}

/// The links a /dev is expected to have.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];

/// Privileged operations, behind a trait so the order of work is testable without root.
pub trait MountOps {
    fn make_dir(&mut self, path: &str) -> std::io::Result<()>;
    fn mount(&mut self, m: &Mount) -> std::io::Result<()>;
    fn symlink(&mut self, target: &str, link: &str) -> std::io::Result<()>;
}

/// Mounts the boot table. A filesystem already mounted there (EBUSY, e.g. a devtmpfs the
/// kernel mounted itself) is fine; a /dev/ptmx that already exists is left alone.
pub fn mount_all(ops: &mut dyn MountOps) -> Result<(), MountError> {
    for m in boot_mounts() {
        ops.make_dir(m.target)
            .map_err(|e| MountError::MountPoint(m.target.to_string(), e))?;
        match ops.mount(&m) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(source) => {
                return Err(MountError::Mount {
                    fstype: m.fstype.to_string(),
                    target: m.target.to_string(),
                    source,
                })
            }
        }
    }
    for (target, link) in DEV_LINKS {
        match ops.symlink(target, link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(MountError::Link(link.to_string(), e)),
        }
    }
    Ok(())
}

/// The real system calls.
pub struct SystemMounts;

fn c_string(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

impl MountOps for SystemMounts {
    fn make_dir(&mut self, path: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mount(&mut self, m: &Mount) -> std::io::Result<()> {
        let source = c_string(m.fstype)?;
        let target = c_string(m.target)?;
        let data = c_string(m.data)?;
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                source.as_ptr(),
                m.flags,
                data.as_ptr().cast(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn symlink(&mut self, target: &str, link: &str) -> std::io::Result<()> {
        if Path::new(link).exists() {
            return Ok(());
        }
        std::os::unix::fs::symlink(target, link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
        busy: Vec<&'static str>,
    }

    impl MountOps for Recorder {
        fn make_dir(&mut self, path: &str) -> std::io::Result<()> {
            self.log.push(format!("mkdir {path}"));
            Ok(())
        }
        fn mount(&mut self, m: &Mount) -> std::io::Result<()> {
            if self.busy.contains(&m.target) {
                return Err(std::io::Error::from_raw_os_error(libc::EBUSY));
            }
            self.log.push(format!("mount {} {}", m.fstype, m.target));
            Ok(())
        }
        fn symlink(&mut self, target: &str, link: &str) -> std::io::Result<()> {
            self.log.push(format!("ln {target} {link}"));
            Ok(())
        }
    }

    #[test]
    fn parents_are_mounted_before_children() {
        let table = boot_mounts();
        for (i, m) in table.iter().enumerate() {
            for later in &table[i + 1..] {
                assert!(
                    !m.target.starts_with(&format!("{}/", later.target)),
                    "{} before {}",
                    m.target,
                    later.target
                );
            }
        }
    }

    #[test]
    fn everything_the_issue_names_is_mounted() {
        let mut r = Recorder::default();
        mount_all(&mut r).unwrap();
        for want in [
            "proc /proc",
            "sysfs /sys",
            "devtmpfs /dev",
            "devpts /dev/pts",
            "tmpfs /dev/shm",
            "tmpfs /tmp",
            "cgroup2 /sys/fs/cgroup",
        ] {
            assert!(
                r.log.contains(&format!("mount {want}")),
                "missing {want}: {:?}",
                r.log
            );
        }
        assert!(r.log.contains(&"ln pts/ptmx /dev/ptmx".to_string()));
    }

    #[test]
    fn an_already_mounted_dev_is_accepted() {
        let mut r = Recorder {
            busy: vec!["/dev"],
            ..Default::default()
        };
        mount_all(&mut r).unwrap();
        assert!(!r.log.contains(&"mount devtmpfs /dev".to_string()));
        assert!(r.log.contains(&"mount devpts /dev/pts".to_string()));
    }
}

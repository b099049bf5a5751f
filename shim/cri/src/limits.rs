//! The node resources vpod-cri holds per pod, and what it does about their limits: the
//! file-descriptor limit is raised at start (as containerd's and dockerd's service units
//! do), and an error whose cause is an exhausted resource says which one and its limit.

use std::io;
use std::path::Path;

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Why the limit could not be read or raised.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("could not raise the open-file limit to {0}")]
    Raise(u64, #[source] io::Error),
}

/// The open-file limit before and after [`raise_fd_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub was: u64,
    pub now: u64,
}

/// The most a process may ask for: `fs.nr_open` (1048576 by default).
fn nr_open() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(1 << 20)
}

/// Raises the soft open-file limit as far as this process may: to `fs.nr_open` when it
/// may raise the hard limit too (root, CAP_SYS_RESOURCE), else to the hard limit. Every
/// pod holds a few descriptors here (its agent connections, its VMM's pipes, its log
/// files), so the kernel's default soft limit of 1024 would stop a node at about 150 pods.
pub fn raise_fd_limit() -> Result<FdLimit, LimitError> {
    let current = getrlimit(Resource::Nofile);
    let was = current.current.unwrap_or(u64::MAX);
    let hard = current.maximum.unwrap_or(u64::MAX);
    let ceiling = nr_open();
    if hard < ceiling {
        let wanted = Rlimit {
            current: Some(ceiling),
            maximum: Some(ceiling),
        };
        if setrlimit(Resource::Nofile, wanted).is_ok() {
            return Ok(FdLimit { was, now: ceiling });
        }
    }
    let target = hard.min(ceiling);
    if was >= target {
        return Ok(FdLimit { was, now: was });
    }
    let wanted = Rlimit {
        current: Some(target),
        maximum: current.maximum,
    };
    setrlimit(Resource::Nofile, wanted).map_err(|e| LimitError::Raise(target, e.into()))?;
    Ok(FdLimit { was, now: target })
}

/// A node resource that ran out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exhausted {
    /// This process's open-file limit (EMFILE).
    ProcessFds { open: Option<usize>, limit: u64 },
    /// The kernel's open-file table (ENFILE).
    NodeFds { max: Option<u64> },
    /// Memory (ENOMEM).
    Memory,
    /// Tasks: threads or processes (EAGAIN from fork or clone).
    Tasks { max: Option<u64> },
    /// Disk space or inodes (ENOSPC, EDQUOT).
    Disk,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exhausted::ProcessFds { open, limit } => {
                write!(f, "vpod-cri is out of file descriptors (")?;
                if let Some(open) = open {
                    write!(f, "{open} open, ")?;
                }
                write!(f, "limit {limit}; raise LimitNOFILE of its service)")
            }
            Exhausted::NodeFds { max } => match max {
                Some(max) => write!(f, "the node is out of file descriptors (fs.file-max {max})"),
                None => write!(f, "the node is out of file descriptors (fs.file-max)"),
            },
            Exhausted::Memory => write!(f, "the node is out of memory"),
            Exhausted::Tasks { max } => match max {
                Some(max) => write!(
                    f,
                    "no new thread or process could be made (kernel.threads-max {max}, or a pids or RLIMIT_NPROC limit)"
                ),
                None => write!(f, "no new thread or process could be made"),
            },
            Exhausted::Disk => write!(f, "the disk holding vpod's state is full"),
        }
    }
}

fn read_number(path: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The resource behind `errno`, if it names one. EAGAIN means tasks only where the caller
/// knows it came from making one (`spawning`), as it also means "try again" on sockets.
pub fn exhausted_by(errno: i32, spawning: bool) -> Option<Exhausted> {
    use rustix::io::Errno;
    match Errno::from_raw_os_error(errno) {
        Errno::MFILE => Some(Exhausted::ProcessFds {
            open: std::fs::read_dir(Path::new("/proc/self/fd"))
                .ok()
                .map(|d| d.count()),
            limit: getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX),
        }),
        Errno::NFILE => Some(Exhausted::NodeFds {
            max: read_number("/proc/sys/fs/file-max"),
        }),
        Errno::NOMEM => Some(Exhausted::Memory),
        Errno::NOSPC | Errno::DQUOT => Some(Exhausted::Disk),
        Errno::AGAIN if spawning => Some(Exhausted::Tasks {
            max: read_number("/proc/sys/kernel/threads-max"),
        }),
        _ => None,
    }
}

/// The exhausted resource anywhere in `error`'s chain of sources, if any.
pub fn exhausted(error: &(dyn std::error::Error + 'static)) -> Option<Exhausted> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(found) = io.raw_os_error().and_then(|n| exhausted_by(n, false)) {
                return Some(found);
            }
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("connecting to the agent")]
    struct Outer(#[source] io::Error);

    #[test]
    fn an_exhausted_resource_is_found_under_other_errors_and_named() {
        let error = Outer(io::Error::from_raw_os_error(24));
        let found = exhausted(&error).expect("EMFILE is an exhausted resource");
        let Exhausted::ProcessFds { open, limit } = &found else {
            panic!("EMFILE is this process's descriptors: {found:?}");
        };
        assert!(open.is_some_and(|n| n > 0));
        assert!(*limit > 0);
        let text = found.to_string();
        assert!(
            text.starts_with("vpod-cri is out of file descriptors ("),
            "{text}"
        );
        assert!(text.contains(&format!("limit {limit}")), "{text}");

        let full = Outer(io::Error::from_raw_os_error(28));
        assert_eq!(exhausted(&full), Some(Exhausted::Disk));
        let refused = Outer(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(exhausted(&refused), None);
        // EAGAIN is a resource only from a spawn.
        assert_eq!(exhausted(&Outer(io::Error::from_raw_os_error(11))), None);
        assert!(matches!(
            exhausted_by(11, true),
            Some(Exhausted::Tasks { .. })
        ));
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit_at_least() {
        let before = getrlimit(Resource::Nofile);
        let raised = raise_fd_limit().expect("raising the soft limit up to the hard one");
        let after = getrlimit(Resource::Nofile);
        assert_eq!(after.current, Some(raised.now));
        assert!(raised.now >= before.current.unwrap_or(0));
        let ceiling = before.maximum.unwrap_or(u64::MAX).min(nr_open());
        assert!(
            raised.now >= ceiling,
            "the soft limit {} is below the hard limit {ceiling}",
            raised.now
        );
    }
}

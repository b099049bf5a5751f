//! Pseudo-terminals for containers' processes: the agent keeps the master (reads the
//! output, writes the stdin, sets the window size), the process gets the slave as its
//! controlling terminal and stdin, stdout and stderr.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;

use super::in_root::{self, RESOLVE_SAFE};

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("could not open the terminal multiplexer {0}")]
    Open(String, #[source] io::Error),
    #[error("could not unlock the terminal or open its slave")]
    Peer(#[source] io::Error),
    #[error("could not set the terminal's size")]
    Size(#[source] io::Error),
    #[error("could not make the terminal non-blocking")]
    Register(#[source] io::Error),
}

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

/// A new pair, both ends close-on-exec.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

impl Pty {
    /// Opens a pair from the devpts instance of the multiplexer at `ptmx`.
    pub fn open(ptmx: &Path) -> Result<Pty, PtyError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(ptmx)
            .map_err(|e| PtyError::Open(ptmx.display().to_string(), e))?;
        Self::from_master(OwnedFd::from(file))
    }

    /// Opens a pair from the devpts instance mounted at `dev/pts` inside the root that
    /// `root` is a descriptor of (a container's), resolved without leaving that root, so
    /// the process sees its terminal in its own /dev/pts.
    pub fn open_in_root(root: BorrowedFd<'_>) -> Result<Pty, PtyError> {
        let fd = in_root::openat2(
            root.as_raw_fd(),
            c"dev/pts/ptmx",
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            0,
            RESOLVE_SAFE,
        );
        if fd < 0 {
            return Err(PtyError::Open(
                "dev/pts/ptmx".to_string(),
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: openat2 succeeded, so fd is an open descriptor nobody else owns.
        Self::from_master(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn from_master(master: OwnedFd) -> Result<Pty, PtyError> {
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads one int from a live local; a descriptor that is not a
        // multiplexer answers ENOTTY.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
            return Err(PtyError::Peer(io::Error::last_os_error()));
        }
        // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor of the slave
        // of exactly this master, or -1.
        let slave = unsafe {
            libc::ioctl(
                master.as_raw_fd(),
                libc::TIOCGPTPEER,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if slave < 0 {
            return Err(PtyError::Peer(io::Error::last_os_error()));
        }
        // SAFETY: the ioctl returned a new open descriptor nobody else owns.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        Ok(Pty { master, slave })
    }
}

/// Sets the window size of the terminal `fd` (either end); the kernel sends SIGWINCH to
/// its foreground process group.
pub fn set_size(fd: BorrowedFd<'_>, size: TerminalSize) -> Result<(), PtyError> {
    let winsize = libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a live local.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &winsize) } != 0 {
        return Err(PtyError::Size(io::Error::last_os_error()));
    }
    Ok(())
}

/// The agent's end of a terminal, non-blocking and driven by the runtime; read, write and
/// resize may run at once from different tasks.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    /// Takes the master; call it on a runtime.
    pub fn new(master: OwnedFd) -> Result<Self, PtyError> {
        let fd = master.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own, with integer arguments.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } != 0 {
            return Err(PtyError::Register(io::Error::last_os_error()));
        }
        // SAFETY: an OwnedFd is open, owned by the AsyncFd from here on, and always returns
        // the same descriptor.
        let fd = unsafe { AsyncFd::register(master) }
            .map_err(|e| PtyError::Register(e.into_parts().1))?;
        Ok(PtyMaster { fd })
    }

    /// Reads output; 0 at the end, when every slave descriptor is closed (the kernel's
    /// EIO then).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: read writes at most buf.len() bytes into the live buffer.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` as terminal input.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: write reads at most data.len() bytes of the live slice.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match result {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    pub fn resize(&self, size: TerminalSize) -> Result<(), PtyError> {
        set_size(self.fd.get_ref().as_fd(), size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pair_carries_bytes_both_ways_and_reports_its_size() {
        let pty = Pty::open(Path::new("/dev/ptmx")).unwrap();
        set_size(
            pty.master.as_fd(),
            TerminalSize {
                width: 100,
                height: 30,
            },
        )
        .unwrap();
        let mut winsize: libc::winsize = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one winsize into a live local.
        let rc = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut winsize) };
        assert_eq!(rc, 0);
        assert_eq!((winsize.ws_col, winsize.ws_row), (100, 30));
        let slave = std::fs::File::from(pty.slave);
        let master = PtyMaster::new(pty.master).unwrap();
        // The line discipline echoes input back to the master.
        master.write_all(b"hi\n").await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while !seen.ends_with(b"\n") {
            let n = master.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
        assert!(seen.starts_with(b"hi"), "{seen:?}");
        // The end of every slave is the end of the output.
        drop(slave);
        loop {
            if master.read(&mut buf).await.unwrap() == 0 {
                break;
            }
        }
    }
}

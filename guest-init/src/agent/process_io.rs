//! A process's stdio as the streaming calls (Exec, Attach) see it, in the agent's own terms:
//! what the host sends, what it gets, and the two kinds of descriptor behind them (pipes,
//! or a terminal's master for stdin and the merged output alike).

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;

use super::pty::{PtyMaster, TerminalSize};
use super::reaper::ExitStatus;
use super::stdio::Stream;

/// The largest output chunk one message carries.
pub const OUTPUT_CHUNK: usize = 32 * 1024;
/// Output messages queued per stream before the process's pipe stalls: with the chunk size,
/// the most a session holds in the agent beyond what HTTP/2's window holds.
pub const OUTPUT_QUEUE: usize = 8;

/// From the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessInput {
    Stdin(Vec<u8>),
    Resize(TerminalSize),
    CloseStdin,
    /// A signal for the process (exec only; 1..=64, checked on the way in).
    Signal(i32),
}

/// To the host, in this order: started, output, exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessOutput {
    Started(libc::pid_t),
    Output {
        stream: Stream,
        data: Vec<u8>,
        /// Bytes lost just before this chunk (attachers that fell behind the ring).
        dropped: u64,
    },
    Exited(ExitStatus),
}

/// Where a process's stdin is written.
pub enum StdinWriter {
    Pipe(pipe::Sender),
    Terminal(Arc<PtyMaster>),
}

impl StdinWriter {
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            StdinWriter::Pipe(pipe) => pipe.write_all(data).await,
            StdinWriter::Terminal(master) => master.write_all(data).await,
        }
    }
}

/// Where a process's output is read.
pub enum OutputReader {
    Pipe(pipe::Receiver),
    Terminal(Arc<PtyMaster>),
}

impl OutputReader {
    /// 0 at the end of the output.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            OutputReader::Pipe(pipe) => pipe.read(buf).await,
            OutputReader::Terminal(master) => master.read(buf).await,
        }
    }
}

/// Kills a process group (SIGKILL) when dropped while armed: a session's process must not
/// outlive the host's interest in it.
pub struct KillGroupOnDrop {
    group: libc::pid_t,
    armed: bool,
}

impl KillGroupOnDrop {
    /// `group` is the pid of a process that leads its own process group.
    pub fn new(group: libc::pid_t) -> Self {
        KillGroupOnDrop {
            group,
            armed: group > 1,
        }
    }

    pub fn kill(&self) {
        if self.armed {
            // SAFETY: kill takes plain integers; a negative pid names the group, which the
            // process leads and which cannot be reused before the process is reaped.
            unsafe { libc::kill(-self.group, libc::SIGKILL) };
        }
    }

    /// The process was reaped: its pid may be reused, so the group is no longer ours.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_never_arms_for_pids_that_name_every_process_or_the_caller_s_group() {
        // kill(-1) would signal every process, kill(-0) the agent's own group.
        for pid in [-5, 0, 1] {
            let guard = KillGroupOnDrop::new(pid);
            assert!(!guard.armed);
        }
        let mut guard = KillGroupOnDrop::new(1234);
        assert!(guard.armed);
        guard.disarm();
        assert!(!guard.armed);
    }
}

//! The task that follows a running container: its output into the CRI log file, then its
//! exit into the record. It has its own connection to the agent, so it holds no lock.
//!
//! Resuming after a daemon restart: the container's log offset file
//! ([`crate::state::LogOffset`]) keeps the position in its output (stdout and stderr
//! together, as the agent counts) up to which the log file has it, updated after every
//! write; a resumed follower asks the agent for the output from there.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use vpod_sandbox::OutputStream;
use vpod_sandbox::Sandbox;

use super::{lock, Container, Runtime};
use crate::logformat::{now_ns, CriLogFormatter, LogStream};
use crate::state::ContainerPhase;

impl Runtime {
    pub(super) fn spawn_follower(self: &Arc<Self>, container: Arc<Container>, pod_id: String) {
        let runtime = self.clone();
        let followed = container.clone();
        let task = tokio::spawn(async move { runtime.follow(followed, pod_id).await });
        *lock(&container.follower) = Some(task);
    }

    async fn follow(&self, container: Arc<Container>, pod_id: String) {
        let id = container.id.clone();
        let mut retry = Backoff::default();
        loop {
            let started = std::time::Instant::now();
            let (exit, vmm_running) =
                match Sandbox::open(&self.root, &pod_id, self.rpc_timeout).await {
                    Ok(handle) => {
                        let exit = self.follow_once(&container, &handle).await;
                        (exit, handle.vmm_running())
                    }
                    Err(e) => {
                        let running = !matches!(e, vpod_sandbox::SandboxError::VmmExited { .. });
                        (Err(e), running)
                    }
                };
            let e = match exit {
                Ok(exit) => {
                    if let Err(e) = self.record_exit(&container, &exit, "") {
                        tracing::warn!(container = %id, error = %super::error_chain(&e), "recording the exit");
                    }
                    return;
                }
                // A dead VM is found and reported by the pod's check.
                Err(_) if !vmm_running => return,
                Err(e) => e,
            };
            let message = super::error_chain(&e);
            if started.elapsed() >= FOLLOWED_LONG_ENOUGH {
                retry = Backoff::default();
            }
            // A connection lost while the VM runs (a keep-alive that ran out on a loaded
            // host, a reset) is not the container's end: follow it again from where the
            // log file has it.
            if e.is_connection_loss() {
                if let Some(pause) = retry.next() {
                    tracing::warn!(container = %id, error = %message, retry_in = ?pause, "lost the connection to the agent; following the container again");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            }
            tracing::warn!(container = %id, error = %message, "lost the container");
            let _ = self.update_container(&container, |c| {
                if c.phase == ContainerPhase::Running {
                    c.phase = ContainerPhase::Exited;
                    c.finished_at_ns = now_ns();
                    c.exit_code = 255;
                    c.reason = "Unknown".into();
                    c.message = message;
                }
            });
            return;
        }
    }

    /// Follows the container's output and exit on one connection to its agent.
    async fn follow_once(
        &self,
        container: &Container,
        handle: &Sandbox,
    ) -> Result<vpod_sandbox::ContainerExit, vpod_sandbox::SandboxError> {
        let pump = self.pump_output(container, handle);
        let wait = handle.wait(&container.id);
        tokio::pin!(pump, wait);
        tokio::select! {
            exit = &mut wait => {
                // The output ends with the process (unless a child holds the pipes open).
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut pump).await;
                exit
            }
            () = &mut pump => wait.await,
        }
    }

    /// Copies the container's output into its log file until the output ends.
    async fn pump_output(&self, container: &Container, handle: &Sandbox) {
        let offset_file = match self.state.log_offset(&container.id) {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!(container = %container.id, error = %e, "no log offset file; a restart may repeat output");
                None
            }
        };
        let skip_until = offset_file.as_ref().map_or(0, |f| f.load());
        let mut stream = match handle.stdio_from(&container.id, skip_until).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(container = %container.id, error = %super::error_chain(&e), "cannot read the container's output");
                return;
            }
        };
        let mut position: u64 = skip_until;
        let mut formatter = CriLogFormatter::new();
        let mut out = Vec::new();
        loop {
            let chunk = match stream.next_chunk().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(container = %container.id, error = %super::error_chain(&e), "output stream ended");
                    break;
                }
            };
            if chunk.dropped_bytes > 0 {
                tracing::warn!(container = %container.id, bytes = chunk.dropped_bytes, "output lost before it was logged");
            }
            // The agent numbers every byte of the output; an older agent does not (0).
            let start = if chunk.offset > 0 {
                chunk.offset
            } else {
                position + chunk.dropped_bytes
            };
            position = start + chunk.data.len() as u64;
            // What an earlier daemon already wrote is skipped.
            let fresh_from = skip_until
                .saturating_sub(start)
                .min(chunk.data.len() as u64) as usize;
            let data = &chunk.data[fresh_from..];
            if data.is_empty() {
                continue;
            }
            let stream_kind = if chunk.stream == OutputStream::Stderr {
                LogStream::Stderr
            } else {
                LogStream::Stdout
            };
            out.clear();
            formatter.push(now_ns(), stream_kind, data, &mut out);
            self.write_log(container, &out);
            let written = position - formatter.pending_len() as u64;
            if let Some(file) = &offset_file {
                let _ = file.store(written);
            }
        }
        out.clear();
        formatter.finish(now_ns(), &mut out);
        self.write_log(container, &out);
        if let Some(file) = &offset_file {
            let _ = file.store(position);
        }
    }

    fn write_log(&self, container: &Container, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(file) = lock(&container.log).as_mut() {
            if let Err(e) = file.write_all(bytes) {
                tracing::warn!(container = %container.id, error = %e, "writing the log file");
            }
        }
    }
}

/// A follower that ran this long before losing its connection starts its retries afresh.
const FOLLOWED_LONG_ENOUGH: Duration = Duration::from_secs(60);

/// Pauses between attempts to follow a container again: 1 s doubling to 16 s, seven
/// attempts (about 1.5 minutes) before the container is given up as lost.
#[derive(Debug, Default)]
struct Backoff {
    attempts: u32,
}

impl Backoff {
    const ATTEMPTS: u32 = 7;

    fn next(&mut self) -> Option<Duration> {
        if self.attempts >= Self::ATTEMPTS {
            return None;
        }
        let pause = Duration::from_secs(1 << self.attempts.min(4));
        self.attempts += 1;
        Some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_then_give_up() {
        let mut retry = Backoff::default();
        let pauses: Vec<u64> = std::iter::from_fn(|| retry.next())
            .map(|d| d.as_secs())
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 16, 16]);
        assert_eq!(retry.next(), None);
    }
}

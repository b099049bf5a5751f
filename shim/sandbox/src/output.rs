//! What the sandbox gives back from the guest, in its own types: a container's output
//! stream, an exec's result, a container's resource usage, the guest's figures. The agent's
//! wire types stop here.

use tonic::Streaming;
use vpod_proto::v1;

use super::agent::AgentError;
use super::SandboxError;

/// Which of the container's streams a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// A piece of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: OutputStream,
    pub data: Vec<u8>,
    /// Bytes lost before this chunk because the guest's ring overflowed before they were
    /// read.
    pub dropped_bytes: u64,
    /// The offset of this chunk's first byte in the container's output, stdout and stderr
    /// counted together in the order they were written (0 from an agent that does not
    /// number them).
    pub offset: u64,
}

/// A container's output as the guest streams it.
#[derive(Debug)]
pub struct ContainerOutput {
    stream: Streaming<v1::StdioChunk>,
}

impl ContainerOutput {
    pub(crate) fn new(stream: Streaming<v1::StdioChunk>) -> Self {
        ContainerOutput { stream }
    }

    /// The next chunk; `None` once both streams closed (or, without follow, at the output's
    /// end as of the request).
    pub async fn next_chunk(&mut self) -> Result<Option<OutputChunk>, SandboxError> {
        let chunk = self
            .stream
            .message()
            .await
            .map_err(|status| AgentError::Status {
                call: "ReadStdio",
                status: Box::new(status),
            })?;
        Ok(chunk.map(|c| OutputChunk {
            stream: if c.stream == v1::StdioStream::Stderr as i32 {
                OutputStream::Stderr
            } else {
                OutputStream::Stdout
            },
            data: c.data,
            dropped_bytes: c.dropped_bytes,
            offset: c.offset,
        }))
    }
}

/// How a process run in a container (exec) ended, with its output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The exit code, or 128 + the signal's number when killed (as a shell reports it).
    pub exit_code: i32,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// The signal that killed it.
    pub signal: Option<i32>,
}

impl From<v1::ExecSyncResponse> for ExecResult {
    fn from(r: v1::ExecSyncResponse) -> Self {
        ExecResult {
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code,
            timed_out: r.timed_out,
            signal: (r.signal != 0).then_some(r.signal),
        }
    }
}

/// A container's resource usage (its cgroup in the guest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    /// 0: no limit.
    pub memory_limit_bytes: u64,
    pub pids_current: u64,
    /// The guest's OOM kills in the container's cgroup (memory.events `oom_kill`).
    pub oom_kills: u64,
}

impl From<v1::ContainerStatsResponse> for ContainerStats {
    fn from(r: v1::ContainerStatsResponse) -> Self {
        ContainerStats {
            cpu_usage_ns: r.cpu_usage_ns,
            memory_usage_bytes: r.memory_usage_bytes,
            memory_limit_bytes: r.memory_limit_bytes,
            pids_current: r.pids_current,
            oom_kills: r.oom_kills,
        }
    }
}

/// The guest's kernel, memory and vCPUs as the agent sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestInfo {
    /// uname -r.
    pub kernel_release: String,
    /// From the kernel's boot to the moment vpod-init started.
    pub boot_to_init_ns: u64,
    /// Since vpod-init started.
    pub init_uptime_ns: u64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// Online vCPUs.
    pub vcpus: u32,
}

impl From<v1::GuestInfoResponse> for GuestInfo {
    fn from(r: v1::GuestInfoResponse) -> Self {
        GuestInfo {
            kernel_release: r.kernel_release,
            boot_to_init_ns: r.boot_to_init_ns,
            init_uptime_ns: r.init_uptime_ns,
            memory_total_bytes: r.memory_total_bytes,
            memory_available_bytes: r.memory_available_bytes,
            vcpus: r.vcpus,
        }
    }
}

//! `vpod-proto`: the wires of vpod.
//!
//! - `agent-server` and `agent-client`: the gRPC API between the vpod host and the agent
//!   (vpod-init) inside each micro-VM, generated from `agent.proto` at build time. The guest
//!   takes only the server; the client brings the host-side ways to reach the agent: a plain
//!   unix socket (tests, debugging) and the hybrid vsock unix socket of the VMM
//!   (`CONNECT <port>\n` / `OK <host_port>\n`, as Firecracker and Cloud Hypervisor do),
//!   and [`streaming`]: exec, attach and port-forward as plain tokio channels and streams.
//! - `authority`: the HTTP/2 `:authority` normaliser in front of the CRI socket.
//! - `grpc` (default): all three, the host's set. `cri` adds the CRI bindings.
//! - `vmm`: the contract between the host and vpod-vmm ([`vmm`]): the VM configuration, every
//!   control request and reply, and the guest port ABI, as serde types only. `vmm-client`
//!   adds a small blocking client of the control socket.

#[cfg(feature = "authority")]
pub mod authority;
#[cfg(feature = "agent-client")]
pub mod client;
pub mod error_chain;
#[cfg(feature = "agent-client")]
pub mod streaming;
#[cfg(feature = "vmm")]
pub mod vmm;

/// The generated messages, client (`agent_client`) and server (`agent_server`), each with
/// its feature.
#[cfg(any(feature = "agent-server", feature = "agent-client"))]
pub mod v1 {
    tonic::include_proto!("vpod.agent.v1");
}

/// The Container Runtime Interface (runtime v1) that kubelet and crictl speak, from the
/// maintained `k8s-cri` crate: messages, `runtime_service_server`, `image_service_server`
/// and their clients.
#[cfg(feature = "cri")]
pub use k8s_cri::v1 as cri;

pub use error_chain::error_chain;
#[cfg(feature = "agent-client")]
pub use v1::agent_client::AgentClient;
#[cfg(feature = "agent-server")]
pub use v1::agent_server::{Agent, AgentServer};

/// The guest vsock port the agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// Bumped when a message or RPC changes meaning; a host refuses other majors.
pub const PROTOCOL_MAJOR: u32 = 1;
/// Bumped when fields or RPCs are added.
pub const PROTOCOL_MINOR: u32 = 10;
/// The protocol minor that brought seccomp programs on CreateContainer: an older agent
/// ignores them, so a host must not send them to one.
pub const SECCOMP_MINOR: u32 = 5;
const _: () = assert!(PROTOCOL_MINOR >= SECCOMP_MINOR);
/// The protocol minor that brought MountShare and bind mounts from the pod's share: an
/// older agent cannot mount the share, so a host must not give its pod volumes.
pub const SHARE_MINOR: u32 = 6;
const _: () = assert!(PROTOCOL_MINOR >= SHARE_MINOR);
/// The protocol minor that brought block devices on CreateContainer: an older agent
/// ignores them, so a host must not give its containers raw block volumes.
pub const DEVICES_MINOR: u32 = 7;
const _: () = assert!(PROTOCOL_MINOR >= DEVICES_MINOR);

/// The first minor whose agent mounts a disk's filesystem at a container path
/// (`BlockDevice.filesystem`: emptyDirs on disks of their own).
pub const FILESYSTEM_DEVICES_MINOR: u32 = 8;
const _: () = assert!(PROTOCOL_MINOR >= FILESYSTEM_DEVICES_MINOR);
/// The first minor whose agent passes a signal on an Exec stream to its process; an
/// older agent refuses the message and kills the process.
pub const EXEC_SIGNAL_MINOR: u32 = 9;
const _: () = assert!(PROTOCOL_MINOR >= EXEC_SIGNAL_MINOR);
/// The first minor whose agent counts a container's OOM kills (`oom_kills` of
/// WaitContainer and ContainerStats); an older agent's 0 means "not known".
pub const OOM_KILLS_MINOR: u32 = 10;
const _: () = assert!(PROTOCOL_MINOR >= OOM_KILLS_MINOR);
/// Where the agent mounts the pod's virtio-fs share (MountShare).
pub const SHARE_GUEST_DIR: &str = "/run/vpod/share";

/// Why the host must not talk to an agent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    #[error("the agent speaks protocol {agent}.x, the host speaks {host}.x")]
    MajorMismatch { agent: u32, host: u32 },
}

/// The host's check of the agent's `GetVersion` answer.
#[cfg(feature = "agent-client")]
pub fn check_compatible(agent: &v1::GetVersionResponse) -> Result<(), VersionError> {
    if agent.protocol_major == PROTOCOL_MAJOR {
        Ok(())
    } else {
        Err(VersionError::MajorMismatch {
            agent: agent.protocol_major,
            host: PROTOCOL_MAJOR,
        })
    }
}

#[cfg(all(test, feature = "grpc"))]
mod tests {
    use super::v1::*;
    use super::*;
    use prost::Message;

    #[test]
    fn a_create_request_survives_encoding() {
        let request = CreateContainerRequest {
            id: "c1".into(),
            args: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["A=1".into()],
            cwd: "/work".into(),
            user: Some(User {
                uid: 1000,
                gid: 100,
                additional_gids: vec![10, 11],
                name: "nobody".into(),
                group: "staff".into(),
            }),
            mounts: vec![Mount {
                source: "/run/x".into(),
                destination: "/x".into(),
                r#type: "bind".into(),
                options: vec!["rbind".into(), "ro".into()],
            }],
            rlimits: vec![Rlimit {
                r#type: "RLIMIT_NOFILE".into(),
                soft: 1024,
                hard: 4096,
            }],
            capabilities: vec!["CAP_CHOWN".into()],
            readonly_rootfs: true,
            limits: Some(CgroupLimits {
                cpu_shares: 512,
                cpu_quota_us: 50_000,
                cpu_period_us: 100_000,
                memory_limit_bytes: 64 << 20,
                pids_limit: 100,
            }),
            layer_serials: vec!["sha256-aaaa".into(), "sha256-bbbb".into()],
            writable_serial: "rw-c1".into(),
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        assert_eq!(CreateContainerRequest::decode(&bytes[..]).unwrap(), request);
    }

    #[test]
    fn a_wait_status_is_either_a_code_or_a_signal() {
        let killed = WaitContainerResponse {
            status: Some(wait_container_response::Status::Signal(15)),
            started_at_ns: 1,
            finished_at_ns: 2,
            oom_kills: 1,
        };
        let decoded = WaitContainerResponse::decode(&killed.encode_to_vec()[..]).unwrap();
        assert_eq!(
            decoded.status,
            Some(wait_container_response::Status::Signal(15))
        );
        assert_eq!(decoded.oom_kills, 1);
        let exited = WaitContainerResponse {
            status: Some(wait_container_response::Status::ExitCode(0)),
            ..Default::default()
        };
        let decoded = WaitContainerResponse::decode(&exited.encode_to_vec()[..]).unwrap();
        assert_eq!(
            decoded.status,
            Some(wait_container_response::Status::ExitCode(0))
        );
    }

    #[test]
    fn stdio_chunks_keep_their_stream() {
        let chunk = StdioChunk {
            stream: StdioStream::Stderr as i32,
            data: b"oops\n".to_vec(),
            dropped_bytes: 0,
            offset: 1 << 40,
        };
        let decoded = StdioChunk::decode(&chunk.encode_to_vec()[..]).unwrap();
        assert_eq!(decoded.stream(), StdioStream::Stderr);
        assert_eq!(decoded.data, b"oops\n");
        assert_eq!(decoded.offset, 1 << 40);
    }

    #[test]
    fn a_different_major_is_refused_and_a_different_minor_accepted() {
        let mut agent = GetVersionResponse {
            agent_version: "9.9.9".into(),
            protocol_major: PROTOCOL_MAJOR,
            protocol_minor: PROTOCOL_MINOR + 3,
        };
        assert_eq!(check_compatible(&agent), Ok(()));
        agent.protocol_major = PROTOCOL_MAJOR + 1;
        assert_eq!(
            check_compatible(&agent),
            Err(VersionError::MajorMismatch {
                agent: PROTOCOL_MAJOR + 1,
                host: PROTOCOL_MAJOR
            })
        );
    }
}

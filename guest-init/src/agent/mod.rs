//! The agent: when the kernel gives vpod-init no command, PID 1 serves the vpod agent API
//! (`vpod-proto`) on AF_VSOCK port 1024 and runs containers for the host. The same server
//! runs on a unix socket outside a VM (`vpod-init --agent-unix PATH`) for tests and
//! debugging.

pub mod block_device;
pub mod cgroup;
pub mod container;
pub mod convert;
pub mod guest_info;
pub mod in_root;
pub mod network;
pub mod portforward;
pub mod process_io;
pub mod pty;
pub mod reaper;
pub mod rootfs;
pub mod service;
pub mod setup;
pub mod share;
pub mod spawn;
pub mod spawn_pod;
pub mod spec;
pub mod stdio;
pub mod users;

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_stream::wrappers::UnixListenerStream;

use container::ContainerManager;
use guest_info::GuestClock;
use reaper::Reaper;
use rootfs::{RootfsPaths, SystemMounts};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("could not start the agent's runtime")]
    Runtime(#[source] io::Error),
    #[error("could not start the reaper")]
    Reaper(#[source] io::Error),
    #[error("could not listen on {0}")]
    Listen(String, #[source] io::Error),
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// Where the agent finds and keeps things; the defaults are the guest's.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Mounts and per-container directories (`/run/vpod`).
    pub state_dir: PathBuf,
    pub sys_block: PathBuf,
    pub dev: PathBuf,
    pub cgroup_root: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            state_dir: PathBuf::from("/run/vpod"),
            sys_block: PathBuf::from("/sys/block"),
            dev: PathBuf::from("/dev"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

/// Where the agent listens.
#[derive(Debug, Clone)]
pub enum Listen {
    Vsock { port: u32 },
    Unix(PathBuf),
}

/// Runs the agent until the server fails. `clock` carries the boot time measured early.
pub fn run(config: AgentConfig, listen: Listen, clock: GuestClock) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(serve(config, listen, clock))
}

async fn serve(config: AgentConfig, listen: Listen, clock: GuestClock) -> Result<(), AgentError> {
    let reaper = Reaper::start().map_err(AgentError::Reaper)?;
    let containers = Arc::new(ContainerManager::new(
        RootfsPaths {
            state: config.state_dir.clone(),
            sys_block: config.sys_block.clone(),
            dev: config.dev.clone(),
        },
        cgroup::Cgroups::detect(&config.cgroup_root),
        reaper,
        Box::new(SystemMounts),
    ));
    let service = vpod_proto::AgentServer::new(service::AgentService { containers, clock });
    let router = tonic::transport::Server::builder().add_service(service);
    match listen {
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let listener = tokio::net::UnixListener::bind(&path)
                .map_err(|e| AgentError::Listen(path.display().to_string(), e))?;
            router
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
                .map_err(AgentError::Serve)
        }
        Listen::Vsock { port } => {
            // Containers talk to each other over localhost, with or without a NIC.
            if let Err(e) = bring_up_loopback().await {
                eprintln!("vpod-init: warning: {}", vpod_proto::error_chain(&e));
            }
            let address = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, port);
            let listener = tokio_vsock::VsockListener::bind(address)
                .map_err(|e| AgentError::Listen(format!("vsock port {port}"), e))?;
            router
                .serve_with_incoming(listener.incoming())
                .await
                .map_err(AgentError::Serve)
        }
    }
}

async fn bring_up_loopback() -> Result<(), network::NetworkError> {
    network::bring_up_loopback(&network::Rtnetlink::connect()?).await
}

pub(crate) fn c_string(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

pub(crate) fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

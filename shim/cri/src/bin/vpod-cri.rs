//! `vpod-cri`: the CRI runtime server (`vpod-cri --help`).
//!
//! Reads `/etc/vpod/config.toml` (absent: defaults), serves on `/run/vpod/cri.sock`, keeps
//! state, images and layer disks in `/var/lib/vpod`; Exec, Attach and PortForward hand out
//! URLs on the streaming server at `[streaming] address` (127.0.0.1 on a free port).
//! SIGTERM or SIGINT stops serving and leaves the pods running for the next start to
//! re-attach. Logs go to stderr; set `RUST_LOG` (e.g. `vpod_cri=debug`) for more.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use vpod_cri::config::{Config, DEFAULT_CONFIG};
use vpod_cri::runtime::{Runtime, StreamingBackend};
use vpod_streaming::StreamingServer;

/// vpod-cri: the CRI runtime v1 server, in which every pod sandbox is a micro-VM.
///
/// SIGTERM or SIGINT stops serving and leaves the pods running for the next start to
/// re-attach. Logs go to stderr; set RUST_LOG (e.g. vpod_cri=debug) for more.
#[derive(Parser)]
#[command(name = "vpod-cri", args_override_self = true)]
struct Args {
    /// The config file; a missing /etc/vpod/config.toml means all defaults, a missing FILE
    /// is an error [default: /etc/vpod/config.toml]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The unix socket to serve on; replaces the config's `socket`
    /// [default: /run/vpod/cri.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State, images and layer disks; replaces the config's `root` [default: /var/lib/vpod]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path, false)?,
        None => Config::load(std::path::Path::new(DEFAULT_CONFIG), true)?,
    };
    if let Some(socket) = args.socket {
        config.socket = socket;
    }
    if let Some(root) = args.root {
        config.root = root;
    }
    let socket = config.socket.clone();
    let streaming_config = config.streaming.server_config();
    let streaming_tls = streaming_config.tls.is_some();
    let assets = config.assets();
    tracing::info!(root = %config.root.display(), kernel = %assets.kernel.display(), initrd = %assets.initrd.display(), vmm = %assets.vmm.display(), "starting");
    let runtime = Runtime::open(config)
        .await
        .context("opening the runtime state")?;
    tokio::spawn(runtime.clone().watch_vms(Duration::from_secs(2)));
    let streaming = StreamingServer::bind(streaming_config, StreamingBackend::new(runtime.clone()))
        .await
        .context("starting the streaming server")?;
    let streaming_addr = streaming
        .local_addr()
        .context("reading the streaming server's address")?;
    tracing::info!(address = %streaming_addr, tls = streaming_tls, "serving exec, attach and port-forward");
    runtime.set_streaming_urls(streaming.urls());
    let streaming = tokio::spawn(streaming.serve());

    let mut sigterm = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => {},
            _ = sigint.recv() => {},
        }
        tracing::info!("shutting down; pods keep running");
    };
    let served = vpod_cri::server::serve(runtime.clone(), &socket, shutdown).await;
    // Open sessions end with the daemon (their agent streams with them).
    streaming.abort();
    // Whatever ended serving, the pods keep running for the next start.
    runtime.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(served?)
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // Before any thread starts, so that every one of them has it.
    match vpod_cri::limits::raise_fd_limit() {
        Ok(limit) => tracing::info!(was = limit.was, now = limit.now, "open-file limit"),
        Err(e) => {
            tracing::warn!(error = %vpod_cri::runtime::error_chain(&e), "keeping the open-file limit")
        }
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("vpod-cri: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `vpod-cri [--config FILE] [--socket PATH] [--root DIR]`: the CRI runtime server.
//!
//! Reads `/etc/vpod/config.toml` (absent: defaults), serves on `/run/vpod/cri.sock`, keeps
//! state, images and layer disks in `/var/lib/vpod`. SIGTERM or SIGINT stops serving and
//! leaves the pods running for the next start to re-attach. Logs go to stderr; set
//! `RUST_LOG` (e.g. `vpod_cri=debug`) for more.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use vpod_cri::config::{Config, DEFAULT_CONFIG};
use vpod_cri::runtime::Runtime;

const USAGE: &str = "usage: vpod-cri [--config FILE] [--socket PATH] [--root DIR]";

struct Args {
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
    root: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        config: None,
        socket: None,
        root: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let mut value = || -> anyhow::Result<PathBuf> {
            match inline.clone() {
                Some(v) => Ok(PathBuf::from(v)),
                None => args
                    .next()
                    .map(PathBuf::from)
                    .with_context(|| format!("{flag} needs a value\n{USAGE}")),
            }
        };
        match flag.as_str() {
            "--config" => parsed.config = Some(value()?),
            "--socket" => parsed.socket = Some(value()?),
            "--root" => parsed.root = Some(value()?),
            _ => bail!("unknown argument {arg}\n{USAGE}"),
        }
    }
    Ok(parsed)
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
    let assets = config.assets();
    tracing::info!(root = %config.root.display(), kernel = %assets.kernel.display(), initrd = %assets.initrd.display(), vmm = %assets.vmm.display(), "starting");
    let runtime = Runtime::open(config)
        .await
        .context("opening the runtime state")?;
    tokio::spawn(runtime.clone().watch_vms(Duration::from_secs(2)));

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
    let result = parse_args().and_then(|args| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(run(args))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("vpod-cri: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

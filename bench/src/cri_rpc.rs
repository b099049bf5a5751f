//! `vpod-bench cri-rpc`: the cost of accepting any `:authority` (vpod_proto::authority) on
//! the CRI socket. One process serves one real runtime twice, on two unix sockets: through
//! `AuthorityStream` (as vpod-cri does) and on the bare connection (tonic as it was before),
//! and one tonic client times Version and ListContainers round trips on each, call by call
//! in alternating order, so that drift hits both alike. No VM is involved.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_cri::config::Config;
use vpod_cri::runtime::Runtime;
use vpod_proto::authority::AuthorityStream;
use vpod_proto::cri::runtime_service_client::RuntimeServiceClient;
use vpod_proto::cri::{ListContainersRequest, VersionRequest};

/// Round trips of each kind on each server in a round.
const CALLS: usize = 500;

pub fn cri_rpc(root: &Path, rounds: usize) -> Result<Vec<Row>> {
    let scratch = tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let rows = rt.block_on(async {
        let config = Config {
            root: scratch.join("root"),
            ..Config::default()
        };
        let runtime = Runtime::open(config).await.context("opening a runtime")?;
        let normalised = scratch.join("normalised.sock");
        let bare = scratch.join("bare.sock");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.changed().await;
        };
        let a = UnixListener::bind(&normalised)?;
        let b = UnixListener::bind(&bare)?;
        let served_a = tokio::spawn(vpod_cri::server::serve_incoming(
            runtime.clone(),
            UnixListenerStream::new(a).map(|c| c.map(AuthorityStream::new)),
            stopped(stop_rx.clone()),
        ));
        let served_b = tokio::spawn(vpod_cri::server::serve_incoming(
            runtime.clone(),
            UnixListenerStream::new(b),
            stopped(stop_rx),
        ));
        let mut clients = [
            RuntimeServiceClient::new(vpod_proto::client::unix_channel(&normalised).await?),
            RuntimeServiceClient::new(vpod_proto::client::unix_channel(&bare).await?),
        ];
        let names = ["vpod-cri (authority normalised)", "tonic alone (before)"];
        let mut samples = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
        // Call by call, alternating which server goes first, so that drift and caches hit
        // both alike; the first round warms up and is not counted.
        for round in 0..=rounds {
            for call in 0..CALLS {
                let order = if call % 2 == 0 { [0, 1] } else { [1, 0] };
                for i in order {
                    let (version, list) = round_trip(&mut clients[i]).await?;
                    if round > 0 {
                        samples[i][0].push(version);
                        samples[i][1].push(list);
                    }
                }
            }
        }
        let _ = stop_tx.send(true);
        let _ = served_a.await;
        let _ = served_b.await;
        runtime.shutdown().await;
        let mut rows = Vec::new();
        for (i, name) in names.iter().enumerate() {
            for (j, rpc) in ["Version", "ListContainers"].iter().enumerate() {
                rows.push(Row::timing("cri-rpc", name, rpc, "native", &samples[i][j]));
            }
        }
        anyhow::Ok(rows)
    })?;
    let _ = std::fs::remove_dir_all(&scratch);
    println!("{}", table(&rows));
    for rpc in ["Version", "ListContainers"] {
        let p50 = |name: &str| {
            rows.iter()
                .find(|r| r.implementation.starts_with(name) && r.config == rpc)
                .and_then(|r| r.timing)
                .map(|t| t.p50)
        };
        if let (Some(after), Some(before)) = (p50("vpod-cri"), p50("tonic")) {
            println!(
                "cri-rpc: {rpc} p50 {:.1} us normalised vs {:.1} us bare: {:.3}x",
                after * 1000.0,
                before * 1000.0,
                after / before
            );
        }
    }
    write_jsonl(&root.join("bench/results"), "cri-rpc", &rows)?;
    Ok(rows)
}

/// One Version and one ListContainers round trip, each timed in ms.
async fn round_trip(
    client: &mut RuntimeServiceClient<tonic::transport::Channel>,
) -> Result<(f64, f64)> {
    let start = Instant::now();
    client
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await?;
    let version = start.elapsed().as_secs_f64() * 1000.0;
    let start = Instant::now();
    client
        .list_containers(ListContainersRequest::default())
        .await?;
    Ok((version, start.elapsed().as_secs_f64() * 1000.0))
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("vpod-bench-cri-rpc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

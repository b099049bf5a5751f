//! `vpod-bench net-pods`: TCP throughput and round-trip latency between pods on a CNI
//! bridge, and RunPodSandbox with and without a network, in one run; then, on the same
//! pods, the CRI streaming paths ([`crate::streaming`]: exec round trips, port-forward).
//!
//! - vpod: two pods through `vpod-cri` on the bridge of `shim/cri/tests/cri_network.rs`
//!   (Debian's bridge + host-local + portmap), each running the [`servers`]; the clients
//!   run in pod B by ExecSync.
//! - runc: two `runc` containers of the default image's root filesystem, each in a netns
//!   with a veth on the same bridge (made by vpod-network's `Cni::setup` from the same
//!   conflist, its tap closed and the tc redirect off `eth0`): the network path of a runc
//!   container. The same sinks; the clients run in container B's netns by `nsenter` with
//!   the host's busybox (the container's network path without `runc exec`'s own cost,
//!   which in the emulated host is 0.5 to 1 s and too uneven to subtract).
//! - the host: the bench's own network namespace (the bridge's gateway address), where the
//!   host's clients run.
//!
//! Throughput, `--mib` each way, every transfer timed by the bench's clock:
//! - pod to pod: `wget` in B of a file served by busybox `httpd` in A (sendfile, large
//!   writes, as real servers send; busybox `nc` writes 1 KiB at a time, one packet and so
//!   one guest exit per KiB, which measures the tool), from the client call (ExecSync,
//!   `nsenter`) to its return, less the median of that client's empty call in the same run;
//! - pod to host: the bench fetches the same file from A, from connect to close;
//! - host to pod: the bench writes 64 KiB at a time to A's `nc` sink, from connect until
//!   the sink closed the connection.
//!
//! Guest clocks are not used: in the emulated host they drift. Latency: the average of
//! `ping -c 20 -i 0.2`. The runc containers get CAP_NET_RAW for ping, as vpod's do.
//!
//! The whole run happens in a network namespace the bench makes on its main thread before
//! any other thread exists: the bridge, veths and iptables rules vanish with the process.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_network::{Cni, CniSettings, PodNetworkRequest};
use vpod_proto::cri::*;

use crate::cri::{connect, pod_config, pull_default, Clients, Daemon, Scratch};
use crate::fixtures::{bundle, copy_tree, work_dir};

const PLUGINS: &str = "/usr/lib/cni";
const NETWORK: &str = "vpodbench";
const BRIDGE: &str = "vpodbench0";
const GATEWAY: &str = "10.78.0.1";
/// Where each pod's and container's sink listens.
const SINK_PORT: u16 = 5001;
/// Where each pod's and container's HTTP server listens, serving [`BIG_FILE`].
const HTTP_PORT: u16 = 8080;
const BIG_FILE: &str = "big";

/// Each pod's and runc container's servers: busybox `httpd` serving a file of `mib` MiB
/// (it sends with sendfile, in large writes, as a real server does), and a sink that takes
/// one connection at a time and discards what it reads. The sink's `nc` gets a stdin that
/// never ends (a fifo it holds open both ways): busybox `nc` half-closes the connection
/// when its stdin ends, and a sender that sees that stops sending and exits 0.
fn servers(mib: u64) -> String {
    format!(
        "mkdir -p /www && dd if=/dev/zero of=/www/{BIG_FILE} bs=65536 count={} 2>/dev/null && \
         httpd -p {HTTP_PORT} -h /www && rm -f /tmp/idle && mkfifo /tmp/idle && \
         exec 3<>/tmp/idle && while :; do nc -l -p {SINK_PORT} <&3 > /dev/null; done",
        mib * 16
    )
}
const PINGS: &str = "20";
/// The host's busybox, the same build as the pods' image's, for the runc-side clients.
const BUSYBOX: &str = "/bin/busybox";
/// Attempts of one transfer (the pod's sink is briefly not listening between connections).
const ATTEMPTS: usize = 5;
/// Empty client calls timed to find what a call costs without a transfer.
const EMPTY_CALLS: usize = 5;

/// The settings of one `vpod-bench net-pods` run.
pub struct NetPodsBench {
    pub runs: usize,
    pub mib: u64,
    /// Pods started (one at a time) for each RunPodSandbox figure.
    pub runp_pods: usize,
    pub pod_mib: u64,
    pub host: String,
}

/// Runs the benchmark; call it on the main thread before any other thread exists.
pub fn net_pods(repo: &Path, bench: &NetPodsBench) -> Result<Vec<Row>> {
    if !Path::new(PLUGINS).join("bridge").exists() {
        bail!("the CNI plugins are not in {PLUGINS} (apt install containernetworking-plugins)");
    }
    // SAFETY: CLONE_NEWNET moves only this (the main) thread, before any other thread or
    // child exists; no file descriptor table is unshared, so no descriptor changes meaning.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .context("unsharing a network namespace of the bench's own (needs root)")?;
    run_quiet(Command::new("ip").args(["link", "set", "lo", "up"]))?;

    let scratch = Scratch::new("net-pods")?;
    let dirs = NetDirs::new(&scratch.dir)?;
    let rows = measure(repo, bench, &scratch.dir, &dirs)?;
    print!("{}", table(&rows));
    write_jsonl(&repo.join("bench/results"), "net-pods", &rows)?;
    Ok(rows)
}

fn measure(repo: &Path, bench: &NetPodsBench, scratch: &Path, dirs: &NetDirs) -> Result<Vec<Row>> {
    // Declared in reverse of their teardown: the runc containers, then their networks,
    // then the daemons and their pods' VMs.
    for daemon in ["without", "with"] {
        std::fs::create_dir_all(scratch.join(daemon))?;
    }
    let without = Daemon::start_with(
        repo,
        &scratch.join("without"),
        bench.pod_mib,
        &dirs.daemon_table(&dirs.empty_conf, "without"),
    )?;
    let with = Daemon::start_with(
        repo,
        &scratch.join("with"),
        bench.pod_mib,
        &dirs.daemon_table(&dirs.conf, "with"),
    )?;
    let runc_networks = RuncNetworks::new(dirs)?;
    let mut runc = RuncPeer::new(repo, scratch)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let logs = scratch.join("logs");
    let result = rt.block_on(async {
        let mut c_without = connect(&without.socket).await?;
        let mut c_with = connect(&with.socket).await?;
        let image = pull_default(&mut c_with, repo).await?;
        pull_default(&mut c_without, repo).await?;
        let mut rows = runp_rows(bench, &mut c_with, &mut c_without, &logs).await?;

        // The peers' endpoints: two pods and two runc containers.
        let command = servers(bench.mib);
        let pods = VpodPair::start(&mut c_with, &image, &logs, &command).await?;
        let containers = runc.start_pair(&runc_networks, &command)?;
        let gateway: IpAddr = GATEWAY.parse()?;
        eprintln!(
            "net-pods: vpod pods {} {}, runc containers {} {}, host {gateway}",
            pods.a_ip, pods.b_ip, containers.a_ip, containers.b_ip
        );
        let bytes = bench.mib << 20;
        let fetch_from = |ip: IpAddr| {
            format!("wget -q -O /dev/null http://{ip}:{HTTP_PORT}/{BIG_FILE}; echo \"rc $?\"")
        };
        // What a client call costs without a transfer, subtracted from each transfer.
        let mut empty_call = Vec::new();
        for client in [Client::Vpod(&pods), Client::Runc(&containers)] {
            let mut ms = Vec::new();
            for _ in 0..EMPTY_CALLS {
                let started = Instant::now();
                run_client(&mut runc, &mut c_with, &client, "echo \"rc 0\"").await?;
                ms.push(started.elapsed().as_secs_f64() * 1e3);
            }
            empty_call.push(median(&mut ms));
        }
        eprintln!(
            "net-pods: empty client call: vpod ExecSync {:.0} ms, runc-side nsenter {:.0} ms",
            empty_call[0], empty_call[1]
        );
        let ping = |ip: IpAddr| format!("ping -c {PINGS} -i 0.2 {ip}");

        let mut samples: Samples = Default::default();
        for run in 0..=bench.runs {
            // Run 0 warms both paths (ARP, the page cache, the sinks) and is not counted.
            let counted = run > 0;
            for (imp, peer_ip, client, overhead) in [
                ("vpod", pods.a_ip, Client::Vpod(&pods), empty_call[0]),
                ("runc", containers.a_ip, Client::Runc(&containers), empty_call[1]),
            ] {
                // Pod A's server sends to the client in pod B, and to the host.
                let to_pod = transfer(&mut runc, &mut c_with, &client, &fetch_from(peer_ip))
                    .await
                    .map(|ms| ms - overhead);
                let to_host = host_fetch(SocketAddr::new(peer_ip, HTTP_PORT), bytes);
                let from_host = host_send(SocketAddr::new(peer_ip, SINK_PORT), bytes);
                let (to_pod, to_host, from_host) = (
                    to_pod.with_context(|| format!("{imp} pod to pod"))?,
                    to_host.with_context(|| format!("{imp} pod to host"))?,
                    from_host.with_context(|| format!("{imp} host to pod"))?,
                );
                eprintln!(
                    "net-pods: run {run} {imp}: pod->pod {to_pod:.0} ms, pod->host {to_host:.0} ms, host->pod {from_host:.0} ms"
                );
                if counted {
                    samples.push(imp, "pod_to_pod_tcp", to_pod);
                    samples.push(imp, "pod_to_host_tcp", to_host);
                    samples.push(imp, "host_to_pod_tcp", from_host);
                }
                if counted && run <= 3 {
                    for (bench_name, ip) in [("pod_to_pod_rtt", peer_ip), ("pod_to_host_rtt", gateway)] {
                        let out = run_client(&mut runc, &mut c_with, &client, &ping(ip)).await?;
                        match parse_ping_avg(&out) {
                            Some(avg) => samples.push(imp, bench_name, avg),
                            None => eprintln!("net-pods: {imp} {bench_name}: no round-trip line in {out:?}"),
                        }
                    }
                }
            }
        }
        let host = bench.host.as_str();
        for imp in ["vpod", "runc"] {
            for name in ["pod_to_pod_tcp", "pod_to_host_tcp", "host_to_pod_tcp"] {
                let ms = samples.get(imp, name);
                let config = format!("{}mib", bench.mib);
                let mut row = Row::timing(name, imp, &config, host, &ms);
                row.mb_s = row.timing.map(|t| bytes as f64 / 1e6 / (t.p50 / 1e3));
                rows.push(row);
            }
            for name in ["pod_to_pod_rtt", "pod_to_host_rtt"] {
                let ms = samples.get(imp, name);
                if !ms.is_empty() {
                    rows.push(Row::timing(name, imp, "ping-20x0.2s", host, &ms));
                }
            }
        }
        // The streaming paths on the same pods: execs in pod B's container (and runc
        // container B), port-forward to pod A's server.
        let targets = crate::streaming::Targets {
            pod: &pods.pods[0],
            pod_addr: SocketAddr::new(pods.a_ip, HTTP_PORT),
            file: BIG_FILE,
            file_bytes: bytes,
            container: &pods.b_container,
            runc_id: &runc.started[1],
        };
        rows.extend(crate::streaming::measure(&mut c_with, &targets, 20, bench.runs, host).await?);
        pods.remove(&mut c_with).await?;
        Ok::<_, anyhow::Error>(rows)
    });
    drop(rt);
    drop(runc);
    drop(runc_networks);
    let logs = format!(
        "vpod-cri (with cni) log ends:\n{}\nvpod-cri (without) log ends:\n{}",
        with.log_tail(),
        without.log_tail()
    );
    result.context(logs)
}

/// RunPodSandbox, one pod at a time, alternately with the CNI network and without.
async fn runp_rows(
    bench: &NetPodsBench,
    with: &mut Clients,
    without: &mut Clients,
    logs: &Path,
) -> Result<Vec<Row>> {
    let (mut with_ms, mut without_ms) = (Vec::new(), Vec::new());
    // Pod 0 of each warms the page cache and is not counted.
    for i in 0..=bench.runp_pods {
        for (clients, samples, name) in [
            (&mut *with, &mut with_ms, "runp-with"),
            (&mut *without, &mut without_ms, "runp-without"),
        ] {
            let config = pod_config(&format!("{name}-{i}"), logs);
            let started = Instant::now();
            let id = run_pod(clients, config).await?;
            let took = started.elapsed().as_secs_f64() * 1e3;
            remove_pod(clients, &id).await?;
            eprintln!("net-pods: {name} {i}: RunPodSandbox {took:.0} ms");
            if i > 0 {
                samples.push(took);
            }
        }
    }
    let config = format!("{}pods-{}m", bench.runp_pods, bench.pod_mib);
    let host = bench.host.as_str();
    Ok(vec![
        Row::timing("runp_with_cni", "vpod", &config, host, &with_ms),
        Row::timing("runp_without_cni", "vpod", &config, host, &without_ms),
    ])
}

async fn run_pod(c: &mut Clients, config: PodSandboxConfig) -> Result<String> {
    let name = config.metadata.as_ref().map(|m| m.name.clone());
    Ok(c.runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .with_context(|| format!("RunPodSandbox of {name:?}"))?
        .into_inner()
        .pod_sandbox_id)
}

async fn remove_pod(c: &mut Clients, id: &str) -> Result<()> {
    c.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .with_context(|| format!("StopPodSandbox {id}"))?;
    crate::cri::remove_pod(c, id).await
}

/// Per (implementation, benchmark) samples in ms.
#[derive(Default)]
struct Samples(Vec<(&'static str, &'static str, f64)>);

impl Samples {
    fn push(&mut self, imp: &'static str, bench: &'static str, ms: f64) {
        self.0.push((imp, bench, ms));
    }

    fn get(&self, imp: &str, bench: &str) -> Vec<f64> {
        self.0
            .iter()
            .filter(|(i, b, _)| *i == imp && *b == bench)
            .map(|(_, _, ms)| *ms)
            .collect()
    }
}

/// Where a client command runs: pod B by ExecSync, or runc container B's netns.
enum Client<'a> {
    Vpod(&'a VpodPair),
    Runc(&'a RuncPair),
}

async fn run_client(
    runc: &mut RuncPeer,
    clients: &mut Clients,
    client: &Client<'_>,
    script: &str,
) -> Result<String> {
    match client {
        Client::Vpod(pods) => {
            let reply = clients
                .runtime
                .exec_sync(ExecSyncRequest {
                    container_id: pods.b_container.clone(),
                    cmd: ["sh", "-c", script].map(String::from).to_vec(),
                    timeout: 120,
                })
                .await
                .context("ExecSync")?
                .into_inner();
            Ok(String::from_utf8_lossy(&reply.stdout).into_owned())
        }
        Client::Runc(containers) => {
            let _ = runc;
            nsenter_exec(&containers.b_netns, script)
        }
    }
}

/// One transfer by `script` (ending in its `rc STATUS` line), timed from the client call
/// to its return; ms.
async fn transfer(
    runc: &mut RuncPeer,
    clients: &mut Clients,
    client: &Client<'_>,
    script: &str,
) -> Result<f64> {
    let mut last = String::new();
    for _ in 0..ATTEMPTS {
        let started = Instant::now();
        last = run_client(runc, clients, client, script).await?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if parse_status_line(&last) == Some(0) {
            return Ok(ms);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bail!("no successful transfer in {ATTEMPTS} attempts; the last printed {last:?}")
}

/// `rc STATUS`: the sender's status.
fn parse_status_line(out: &str) -> Option<i32> {
    out.lines()
        .find_map(|l| l.strip_prefix("rc "))?
        .trim()
        .parse()
        .ok()
}

fn median(ms: &mut [f64]) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// The average of busybox ping's `round-trip min/avg/max = A/B/C ms`.
fn parse_ping_avg(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.contains("min/avg/max"))?;
    let values = line.split('=').nth(1)?.split_whitespace().next()?;
    values.split('/').nth(1)?.parse().ok()
}

/// Sends `bytes` to a sink from the host and waits for it to close; ms.
fn host_send(addr: SocketAddr, bytes: u64) -> Result<f64> {
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let started = Instant::now();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(mut stream) => {
                stream.set_read_timeout(Some(Duration::from_secs(120)))?;
                let chunk = vec![0u8; 65536];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    stream.write_all(&chunk[..n])?;
                    left -= n as u64;
                }
                stream.shutdown(Shutdown::Write)?;
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest)?;
                return Ok(started.elapsed().as_secs_f64() * 1e3);
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Err(last.map_or_else(|| anyhow::anyhow!("no attempt"), anyhow::Error::from))
        .with_context(|| format!("connecting to {addr}"))
}

/// Fetches the big file from a pod's HTTP server into the host; ms from connecting until
/// the server closed the connection.
fn host_fetch(addr: SocketAddr, bytes: u64) -> Result<f64> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    stream.write_all(format!("GET /{BIG_FILE} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0u64;
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => received += n as u64,
        }
    }
    if received < bytes {
        bail!("{addr} sent {received} bytes, less than the {bytes} of the file");
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// The two vpod pods, each with a sink container.
struct VpodPair {
    pods: Vec<String>,
    b_container: String,
    a_ip: IpAddr,
    b_ip: IpAddr,
}

impl VpodPair {
    async fn start(c: &mut Clients, image: &str, logs: &Path, command: &str) -> Result<VpodPair> {
        let mut pods = Vec::new();
        let mut containers = Vec::new();
        let mut ips = Vec::new();
        for name in ["net-a", "net-b"] {
            let config = pod_config(name, logs);
            let id = run_pod(c, config.clone()).await?;
            pods.push(id.clone());
            let container = ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "sink".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: ["sh", "-c", command].map(String::from).to_vec(),
                log_path: "sink/0.log".into(),
                ..Default::default()
            };
            let ctr = c
                .runtime
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: id.clone(),
                    config: Some(container),
                    sandbox_config: Some(config),
                })
                .await
                .with_context(|| format!("CreateContainer in {name}"))?
                .into_inner()
                .container_id;
            c.runtime
                .start_container(StartContainerRequest {
                    container_id: ctr.clone(),
                })
                .await
                .with_context(|| format!("StartContainer in {name}"))?;
            containers.push(ctr);
            let status = c
                .runtime
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id.clone(),
                    verbose: false,
                })
                .await
                .with_context(|| format!("PodSandboxStatus of {name}"))?
                .into_inner();
            let ip = status
                .status
                .and_then(|s| s.network)
                .map(|n| n.ip)
                .with_context(|| format!("pod {name} reports no network"))?;
            ips.push(
                ip.parse::<IpAddr>()
                    .with_context(|| format!("pod {name}'s ip {ip:?}"))?,
            );
        }
        Ok(VpodPair {
            b_container: containers[1].clone(),
            a_ip: ips[0],
            b_ip: ips[1],
            pods,
        })
    }

    async fn remove(&self, c: &mut Clients) -> Result<()> {
        for pod in &self.pods {
            remove_pod(c, pod).await?;
        }
        Ok(())
    }
}

/// The scratch directories of the networks.
struct NetDirs {
    conf: PathBuf,
    empty_conf: PathBuf,
    ipam: PathBuf,
    base: PathBuf,
}

impl NetDirs {
    fn new(scratch: &Path) -> Result<NetDirs> {
        let base = scratch.join("net");
        let dirs = NetDirs {
            conf: base.join("net.d"),
            empty_conf: base.join("net.d-empty"),
            ipam: base.join("ipam"),
            base,
        };
        std::fs::create_dir_all(&dirs.conf)?;
        std::fs::create_dir_all(&dirs.empty_conf)?;
        // cri_network.rs's conflist: a bridge with host-local IPAM and masquerade, portmap.
        std::fs::write(
            dirs.conf.join("10-bench.conflist"),
            format!(
                r#"{{"cniVersion": "1.0.0", "name": "{NETWORK}", "plugins": [
  {{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true, "ipMasq": true,
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.78.0.0/24"}}]],
             "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{}"}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
]}}"#,
                dirs.ipam.display()
            ),
        )?;
        Ok(dirs)
    }

    fn netns_dir(&self, owner: &str) -> PathBuf {
        self.base.join(format!("netns-{owner}"))
    }

    /// vpod-cri's `[network]` table with `conf_dir`.
    fn daemon_table(&self, conf_dir: &Path, owner: &str) -> String {
        format!(
            "[network]\nconf_dir = \"{}\"\nnetns_dir = \"{}\"\nbin_dirs = [\"{PLUGINS}\"]\n",
            conf_dir.display(),
            self.netns_dir(owner).display()
        )
    }
}

impl Drop for NetDirs {
    fn drop(&mut self) {
        // Namespaces a failed run left mounted, so that the scratch directory can go.
        for owner in ["with", "without", "runc"] {
            let Ok(entries) = std::fs::read_dir(self.netns_dir(owner)) else {
                continue;
            };
            for entry in entries.flatten() {
                let _ = rustix::mount::unmount(entry.path(), rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

/// The runc containers' networks: a netns with a veth on the bridge each, torn down on drop.
struct RuncNetworks {
    cni: Cni,
    ids: Vec<String>,
}

impl RuncNetworks {
    fn new(dirs: &NetDirs) -> Result<RuncNetworks> {
        let mut settings = CniSettings::with_cache_dir(dirs.base.join("runc-cache"));
        settings.conf_dir = dirs.conf.clone();
        settings.bin_dirs = vec![PathBuf::from(PLUGINS)];
        settings.netns_dir = dirs.netns_dir("runc");
        settings.plugin_timeout = Duration::from_secs(60);
        let mut networks = RuncNetworks {
            cni: Cni::new(settings),
            ids: Vec::new(),
        };
        for id in ["runc-a", "runc-b"] {
            networks.ids.push(id.to_string());
            let pod = networks
                .cni
                .setup(&PodNetworkRequest {
                    sandbox_id: id.into(),
                    pod_name: id.into(),
                    pod_namespace: "bench".into(),
                    pod_uid: format!("uid-{id}"),
                    ..Default::default()
                })
                .with_context(|| format!("the network of {id}"))?;
            // No VM: the tap goes, and eth0's ingress (its redirect to the tap) with it, so
            // the netns is a plain veth netns as a runc container gets from a CNI runtime.
            drop(pod.tap);
            run_quiet(
                Command::new("nsenter")
                    .arg(format!("--net={}", pod.netns.display()))
                    .args(["tc", "qdisc", "del", "dev", "eth0", "ingress"]),
            )?;
        }
        Ok(networks)
    }

    fn netns(&self, id: &str) -> PathBuf {
        self.cni.netns_path(id)
    }

    fn ip(&self, id: &str) -> Result<IpAddr> {
        self.cni
            .pod_ips(id)
            .and_then(|ips| ips.into_iter().next())
            .with_context(|| format!("{id} has no address"))
    }
}

impl Drop for RuncNetworks {
    fn drop(&mut self) {
        for id in &self.ids {
            if let Err(e) = self.cni.teardown(id) {
                eprintln!("net-pods: tearing down the network of {id}: {e}");
            }
        }
    }
}

/// The runc side: a root filesystem copy and the containers started on it (deleted, by
/// their ids, on drop).
struct RuncPeer {
    work: PathBuf,
    rootfs: PathBuf,
    dir: PathBuf,
    started: Vec<String>,
}

/// The two runc containers, each running a sink in its own veth netns.
struct RuncPair {
    /// Container B's netns, where the runc-side clients run.
    b_netns: PathBuf,
    a_ip: IpAddr,
    b_ip: IpAddr,
}

impl RuncPeer {
    fn new(repo: &Path, scratch: &Path) -> Result<RuncPeer> {
        let work = work_dir(repo);
        let rootfs = scratch.join("rootfs");
        copy_tree(&work.join("rootfs"), &rootfs)
            .context("copying the runc root filesystem (run `vpod-bench prepare` first)")?;
        Ok(RuncPeer {
            work,
            rootfs,
            dir: scratch.to_path_buf(),
            started: Vec::new(),
        })
    }

    fn start_pair(&mut self, networks: &RuncNetworks, command: &str) -> Result<RuncPair> {
        for name in ["runc-a", "runc-b"] {
            let id = format!("vpod-bench-net-{}-{name}", std::process::id());
            let dir = self.dir.join(format!("bundle-{name}"));
            bundle(&self.work, &dir, &self.rootfs, &["sh", "-c", command])?;
            join_netns(&dir.join("config.json"), &networks.netns(name))?;
            self.started.push(id.clone());
            // The detached sink keeps runc's stdio: give it none, or a pipe would never end.
            let status = Command::new("runc")
                .args(["run", "--detach", "--bundle"])
                .arg(&dir)
                .arg(&id)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running runc run")?;
            if !status.success() {
                bail!("runc run --detach of {name} failed ({status})");
            }
        }
        Ok(RuncPair {
            b_netns: networks.netns("runc-b"),
            a_ip: networks.ip("runc-a")?,
            b_ip: networks.ip("runc-b")?,
        })
    }
}

/// `busybox sh -c SCRIPT` in the netns at `netns` (a runc container's): its stdout.
fn nsenter_exec(netns: &Path, script: &str) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args([BUSYBOX, "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .context("running nsenter")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for RuncPeer {
    fn drop(&mut self) {
        for id in &self.started {
            let _ = Command::new("runc")
                .args(["delete", "--force", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Puts the bundle's container into the netns at `netns`, with CAP_NET_RAW (ping) as
/// vpod's containers have it.
fn join_netns(config: &Path, netns: &Path) -> Result<()> {
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(config)?)?;
    let namespaces = spec["linux"]["namespaces"]
        .as_array_mut()
        .context("the bundle's spec has no namespaces")?;
    namespaces.retain(|ns| ns["type"] != "network");
    namespaces.push(serde_json::json!({"type": "network", "path": netns}));
    let caps = &mut spec["process"]["capabilities"];
    for set in ["bounding", "effective", "permitted"] {
        if let Some(list) = caps[set].as_array_mut() {
            list.push("CAP_NET_RAW".into());
        }
    }
    std::fs::write(config, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

fn run_quiet(command: &mut Command) -> Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", command.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            command.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_gives_the_senders_status() {
        assert_eq!(parse_status_line("noise\nrc 0\n"), Some(0));
        assert_eq!(parse_status_line("rc 1"), Some(1));
        assert_eq!(parse_status_line("nothing"), None);
    }

    #[test]
    fn ping_summary_gives_the_average() {
        let out = "20 packets transmitted, 20 packets received, 0% packet loss\n\
                   round-trip min/avg/max = 0.070/0.450/0.831 ms\n";
        assert_eq!(parse_ping_avg(out), Some(0.45));
        assert_eq!(parse_ping_avg("100% packet loss"), None);
    }
}

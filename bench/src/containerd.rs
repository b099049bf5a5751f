//! `vpod-bench containerd`: vpod as containerd's runtime class, measured in one run beside
//! vpod-cri and beside containerd with runc (the floor: a container with no VM at all).
//!
//! - pod to running: RunPodSandbox + CreateContainer + StartContainer of the container
//!   `vpod-bench cri` starts ([`cri::sleeper`]: it prints a line and sleeps), until
//!   ContainerStatus says running and until its line is in its CRI log file; one pod at a
//!   time, the three ways interleaved run by run, each pod stopped and removed after:
//!   containerd's CRI plugin with the runtime handler `vpod` (`containerd-shim-vpod-v2`),
//!   `vpod-cri` (as `vpod-bench cri` starts it), and containerd's CRI plugin with runc;
//! - the shim's own memory: `--pods` pods of each runtime running at once through
//!   containerd, `/proc/PID/smaps_rollup` of every shim process of our containerd (Rss,
//!   Pss, and Private_Dirty: what one more shim costs, its binary's text being shared).
//!
//! containerd's pods use the node's network: vpod-cri runs here without a CNI config, so
//! its pods have no network, and neither way pays for CNI.
//!
//! Everything is under a scratch directory on /tmp (a tmpfs inside the emulated KVM
//! host): containerd's config, root, state and sockets (Debian's containerd 1.6, its CRI
//! plugin on, `target/release` first on its PATH), vpod's config (`VPOD_CONFIG`, pods
//! sized as vpod-cri's) and the shim's state root, and vpod-cri's. The images are offline:
//! the default image (`build/images/default`) tarred and imported into `k8s.io` with
//! `ctr images import`, and a pause image for the CRI plugin's `sandbox_image` written
//! from its layers. On the way out, error or not, every pod left is removed through the
//! CRI, containerd and vpod-cri are stopped by PID, shims still serving our socket are
//! killed with their children, pod VMs left under the shim's root are destroyed, mounts
//! under the scratch directory are detached and the directory is removed.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_bench::stats::median_u64;
use vpod_proto::cri::image_service_client::ImageServiceClient;
use vpod_proto::cri::runtime_service_client::RuntimeServiceClient;
use vpod_proto::cri::*;

use crate::cri::{self, ms, Clients, Daemon, PodTimes};
use node::Containerd;
use vpod_e2e::procfs::shims_of;

mod node;

/// The default image's name in containerd.
const DEFAULT_IMAGE: &str = "vpod.test/default:latest";
/// The pause image's name: the CRI plugin's `sandbox_image`.
const PAUSE_IMAGE: &str = "vpod.test/pause:latest";
/// The containerd namespace of the CRI plugin's pods and images.
const CRI_NAMESPACE: &str = "k8s.io";
const VPOD_SHIM: &str = "containerd-shim-vpod-v2";
const RUNC_SHIM: &str = "containerd-shim-runc-v2";
/// The target for the shim's own memory per pod.
const SHIM_TARGET_KIB: u64 = 5 * 1024;
/// How long the pods of the memory figure run before the shims are read.
const SETTLE: Duration = Duration::from_secs(5);

/// The settings of one `vpod-bench containerd` run.
pub struct ContainerdBench {
    pub runs: usize,
    /// Pods of each runtime running at once while the shims' memory is read.
    pub pods: usize,
    pub host: String,
    /// Guest memory of each pod, vpod-cri's and the shim's alike.
    pub pod_mib: u64,
}

/// One way of starting a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Route {
    /// containerd's CRI plugin, runtime handler `vpod`.
    ContainerdVpod,
    VpodCri,
    /// containerd's CRI plugin, runtime handler `runc`.
    ContainerdRunc,
}

impl Route {
    const ALL: [Route; 3] = [Route::VpodCri, Route::ContainerdVpod, Route::ContainerdRunc];

    fn label(self) -> &'static str {
        match self {
            Route::ContainerdVpod => "containerd+vpod",
            Route::VpodCri => "vpod-cri",
            Route::ContainerdRunc => "containerd+runc",
        }
    }

    fn handler(self) -> &'static str {
        match self {
            Route::ContainerdVpod => "vpod",
            Route::VpodCri => "",
            Route::ContainerdRunc => "runc",
        }
    }
}

pub fn containerd(repo: &Path, bench: &ContainerdBench) -> Result<Vec<Row>> {
    let shim = repo.join("target/release").join(VPOD_SHIM);
    if !shim.is_file() {
        bail!("{} is missing: run `make rust`", shim.display());
    }
    // Short: a pod's sockets are `<vpod root>/containerd/k8s.io/sandboxes/<32 chars>/vm/
    // vsock.sock`, and a unix socket's path has at most 107 bytes.
    let dir = PathBuf::from(format!("/tmp/vpod-bench-ctrd-{}", std::process::id()));
    // Declared first, dropped last: vpod-cri's directory is inside its scratch directory.
    let node = Containerd::start(repo, &dir, bench.pod_mib)?;
    node.import_images(repo)?;
    let cri_dir = dir.join("vpod-cri");
    std::fs::create_dir_all(&cri_dir)?;
    let daemon = Daemon::start(repo, &cri_dir, bench.pod_mib)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let ctrd = connect_cri(&node.socket).await?;
        wait_for_images(&ctrd, &[DEFAULT_IMAGE, PAUSE_IMAGE]).await?;
        let mut vpod_cri = cri::connect(&daemon.socket).await?;
        let vpod_cri_image = cri::pull_default(&mut vpod_cri, repo).await?;
        let bench_run = BenchRun {
            ctrd: ctrd.clone(),
            vpod_cri,
            vpod_cri_image,
            logs: dir.join("pod-logs"),
            node: &node,
        };
        let measured = bench_run.measure(bench).await;
        remove_every_pod(&ctrd).await;
        measured
    });
    let rows = result.with_context(|| {
        format!(
            "containerd's log ends:\n{}\n--- vpod-cri's log ends:\n{}",
            node.log_tail(40),
            daemon.log_tail()
        )
    })?;
    drop(daemon);
    drop(node);
    print!("{}", table(&rows));
    print_summary(&rows, bench);
    write_jsonl(&repo.join("bench/results"), "containerd", &rows)?;
    Ok(rows)
}

/// The clients and names of one run.
struct BenchRun<'a> {
    ctrd: Clients,
    vpod_cri: Clients,
    /// The default image's id in vpod-cri.
    vpod_cri_image: String,
    logs: PathBuf,
    node: &'a Containerd,
}

impl BenchRun<'_> {
    async fn measure(&self, bench: &ContainerdBench) -> Result<Vec<Row>> {
        // Untimed: binaries, image layers and the kernel in the page cache.
        for route in Route::ALL {
            self.one_pod(route, "warm-up").await?;
        }
        let mut samples: HashMap<(Route, &str), Vec<f64>> = HashMap::new();
        for i in 0..bench.runs {
            for route in Route::ALL {
                let t = self.one_pod(route, &format!("one-{i}")).await?;
                eprintln!(
                    "containerd: run {i}, {}: runp {:.0} ms, create {:.0} ms, start {:.0} ms, \
                     running at {:.0} ms, output at {:.0} ms",
                    route.label(),
                    ms(t.runp),
                    ms(t.create),
                    ms(t.start),
                    ms(t.running),
                    ms(t.output)
                );
                for (key, value) in [
                    ("runp", t.runp),
                    ("create", t.create),
                    ("start", t.start),
                    ("running", t.running),
                    ("output", t.output),
                ] {
                    samples.entry((route, key)).or_default().push(ms(value));
                }
            }
        }
        let (host, config) = (bench.host.as_str(), format!("1pod-{}m", bench.pod_mib));
        let mut rows = Vec::new();
        for (key, name) in [
            ("runp", "containerd_runp"),
            ("create", "containerd_create"),
            ("start", "containerd_start"),
            ("running", "containerd_pod_to_running"),
            ("output", "containerd_pod_to_output"),
        ] {
            for route in Route::ALL {
                let series = samples.get(&(route, key)).map_or(&[][..], Vec::as_slice);
                rows.push(Row::timing(name, route.label(), &config, host, series));
            }
        }
        let config = format!("{}pods-{}m", bench.pods, bench.pod_mib);
        for (route, program) in [
            (Route::ContainerdVpod, VPOD_SHIM),
            (Route::ContainerdRunc, RUNC_SHIM),
        ] {
            let shims = self.shims_with_pods(route, program, bench.pods).await?;
            eprintln!(
                "containerd: {} pods of {}: {} {program} processes: {shims:?}",
                bench.pods,
                route.label(),
                shims.len()
            );
            let median =
                |f: fn(&ShimMemory) -> u64| median_u64(&shims.iter().map(f).collect::<Vec<_>>());
            for (name, kib) in [
                ("containerd_shim_rss", median(|m| m.rss)),
                ("containerd_shim_pss", median(|m| m.pss)),
                ("containerd_shim_private_dirty", median(|m| m.private_dirty)),
            ] {
                rows.push(memory_row(name, program, &config, host, kib));
            }
        }
        Ok(rows)
    }

    /// Starts pod `name` the `route` way, times it, then stops and removes it.
    async fn one_pod(&self, route: Route, name: &str) -> Result<PodTimes> {
        let (id, times) = self.start_pod(route, name).await?;
        stop_and_remove(&mut self.clients(route), &id).await?;
        Ok(times)
    }

    fn clients(&self, route: Route) -> Clients {
        match route {
            Route::VpodCri => self.vpod_cri.clone(),
            Route::ContainerdVpod | Route::ContainerdRunc => self.ctrd.clone(),
        }
    }

    /// Starts pod `name` (with a [`cri::sleeper`]) the `route` way: its id and times.
    async fn start_pod(&self, route: Route, name: &str) -> Result<(String, PodTimes)> {
        let logs = self.logs.join(route.label());
        // The kubelet makes the pod's log directory.
        std::fs::create_dir_all(logs.join(name))?;
        let (pod, container) = match route {
            Route::VpodCri => (
                cri::pod_config(name, &logs),
                cri::sleeper(&self.vpod_cri_image),
            ),
            Route::ContainerdVpod | Route::ContainerdRunc => (
                on_node_network(cri::pod_config(name, &logs)),
                on_node_network_container(cri::sleeper(DEFAULT_IMAGE)),
            ),
        };
        let log_file = logs.join(name).join(&container.log_path);
        cri::time_pod(
            self.clients(route),
            route.handler(),
            pod,
            container,
            &log_file,
        )
        .await
        .map(|(id, _, times)| (id, times))
        .with_context(|| format!("pod {name} through {}", route.label()))
    }

    /// The memory of each `program` shim of our containerd while `pods` pods run the
    /// `route` way; the pods are removed after.
    async fn shims_with_pods(
        &self,
        route: Route,
        program: &str,
        pods: usize,
    ) -> Result<Vec<ShimMemory>> {
        let mut ids = Vec::new();
        let mut measured = async {
            for i in 0..pods {
                let (id, times) = self.start_pod(route, &format!("idle-{i}")).await?;
                ids.push(id);
                eprintln!(
                    "containerd: idle pod {i} of {}: running at {:.0} ms",
                    route.label(),
                    ms(times.running)
                );
            }
            tokio::time::sleep(SETTLE).await;
            let memory: Vec<ShimMemory> = shims_of(&self.node.socket)
                .into_iter()
                .filter(|(_, name)| name == program)
                .filter_map(|(pid, _)| {
                    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
                    Some(ShimMemory::parse(&text))
                })
                .collect();
            if memory.is_empty() {
                bail!("no {program} process of our containerd to measure");
            }
            Ok(memory)
        }
        .await;
        let mut clients = self.clients(route);
        for id in &ids {
            if let Err(e) = stop_and_remove(&mut clients, id).await {
                measured = measured.and(Err(e));
            }
        }
        measured
    }
}

/// `pod` in the node's network namespace (no CNI), and so with the node's hostname, as the
/// kubelet asks for a `hostNetwork` pod.
fn on_node_network(pod: PodSandboxConfig) -> PodSandboxConfig {
    PodSandboxConfig {
        hostname: String::new(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(node_network()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..pod
    }
}

/// `container` as the kubelet asks for it in a pod on the node's network.
fn on_node_network_container(container: ContainerConfig) -> ContainerConfig {
    ContainerConfig {
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(node_network()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..container
    }
}

fn node_network() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        ..Default::default()
    }
}

async fn stop_and_remove(clients: &mut Clients, id: &str) -> Result<()> {
    clients
        .runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .with_context(|| format!("StopPodSandbox {id}"))?;
    cri::remove_pod(clients, id).await
}

/// Every pod containerd's CRI plugin still has, stopped and removed (what a failed run
/// left); errors are only printed, and the whole is bounded.
async fn remove_every_pod(clients: &Clients) {
    let mut clients = clients.clone();
    let removal = async {
        let listed = clients
            .runtime
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items;
        for pod in listed {
            if let Err(e) = stop_and_remove(&mut clients, &pod.id).await {
                eprintln!("containerd: cleaning up: {e:#}");
            }
        }
        Ok::<_, tonic::Status>(())
    };
    match tokio::time::timeout(Duration::from_secs(180), removal).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("containerd: listing the pods left: {e}"),
        Err(_) => eprintln!("containerd: removing the pods left took over 180 s"),
    }
}

/// Connects to containerd's CRI plugin and waits (up to 60 s) until it says RuntimeReady.
async fn connect_cri(socket: &Path) -> Result<Clients> {
    let channel = vpod_proto::client::unix_channel(socket)
        .await
        .context("connecting to containerd's CRI plugin")?;
    let mut clients = Clients {
        runtime: RuntimeServiceClient::new(channel.clone()),
        images: ImageServiceClient::new(channel),
    };
    let started = Instant::now();
    loop {
        let conditions = match clients
            .runtime
            .status(StatusRequest { verbose: false })
            .await
        {
            Ok(answer) => answer
                .into_inner()
                .status
                .map(|s| s.conditions)
                .unwrap_or_default(),
            Err(e) => bail!("Status of containerd's CRI plugin: {e}"),
        };
        if conditions
            .iter()
            .any(|c| c.r#type == "RuntimeReady" && c.status)
        {
            return Ok(clients);
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("containerd's CRI plugin is not ready after 60 s: {conditions:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 60 s) until the CRI plugin knows every one of `images`.
async fn wait_for_images(clients: &Clients, images: &[&str]) -> Result<()> {
    let mut clients = clients.clone();
    let started = Instant::now();
    for image in images {
        loop {
            let known = clients
                .images
                .image_status(ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: image.to_string(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .with_context(|| format!("ImageStatus of {image}"))?
                .into_inner()
                .image
                .is_some();
            if known {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("containerd's CRI plugin does not know {image} 60 s after its import");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// A shim process's memory from `/proc/PID/smaps_rollup`, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ShimMemory {
    rss: u64,
    pss: u64,
    /// Pages written by this process alone: its heap, stacks, data.
    private_dirty: u64,
}

impl ShimMemory {
    fn parse(text: &str) -> ShimMemory {
        let mut m = ShimMemory::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(key), Some(Ok(kib))) = (words.next(), words.next().map(str::parse)) else {
                continue;
            };
            match key {
                "Rss:" => m.rss = kib,
                "Pss:" => m.pss = kib,
                "Private_Dirty:" => m.private_dirty = kib,
                _ => {}
            }
        }
        m
    }
}

fn memory_row(bench: &str, program: &str, config: &str, host: &str, kib: Option<u64>) -> Row {
    Row {
        rss_kib: kib,
        ..Row::timing(bench, program, config, host, &[])
    }
}

/// The same-run ratios and the target, from the rows.
fn print_summary(rows: &[Row], bench: &ContainerdBench) {
    let row = |name: &str, imp: &str| {
        rows.iter()
            .find(|r| r.bench == name && r.implementation == imp)
    };
    for (name, what) in [
        ("containerd_pod_to_running", "pod to running"),
        ("containerd_pod_to_output", "pod to its first log line"),
    ] {
        let p50 = |route: Route| {
            row(name, route.label())
                .and_then(|r| r.timing)
                .map_or(f64::NAN, |t| t.p50)
        };
        let (vpod, cri, runc) = (
            p50(Route::ContainerdVpod),
            p50(Route::VpodCri),
            p50(Route::ContainerdRunc),
        );
        println!(
            "{what}, p50: containerd+vpod {vpod:.0} ms / vpod-cri {cri:.0} ms = {:.2}x; \
             / containerd+runc {runc:.0} ms = {:.2}x",
            vpod / cri,
            vpod / runc
        );
    }
    for (name, what) in [
        ("containerd_shim_private_dirty", "Private_Dirty"),
        ("containerd_shim_pss", "Pss"),
    ] {
        let kib = |program: &str| row(name, program).and_then(|r| r.rss_kib).unwrap_or(0);
        let (vpod, runc) = (kib(VPOD_SHIM), kib(RUNC_SHIM));
        let verdict = if vpod <= SHIM_TARGET_KIB {
            "MET"
        } else {
            "MISSED"
        };
        println!(
            "{verdict} shim memory per pod, {what} (median, {} pods): {VPOD_SHIM} {vpod} KiB \
             (target <= {SHIM_TARGET_KIB} KiB); {RUNC_SHIM} {runc} KiB ({:.2}x)",
            bench.pods,
            vpod as f64 / runc as f64
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_rollup_gives_rss_pss_and_private_dirty() {
        let text = "55d0c8e5a000-7ffc6a3f2000 ---p 00000000 00:00 0  [rollup]\n\
                    Rss:                6240 kB\nPss:                3120 kB\n\
                    Pss_Anon:           1800 kB\nShared_Clean:       2900 kB\n\
                    Private_Clean:       100 kB\nPrivate_Dirty:      1840 kB\n";
        assert_eq!(
            ShimMemory::parse(text),
            ShimMemory {
                rss: 6240,
                pss: 3120,
                private_dirty: 1840
            }
        );
    }

    #[test]
    fn containerd_pods_ask_for_the_node_network() {
        let pod = on_node_network(cri::pod_config("p", Path::new("/tmp/logs")));
        let options = pod
            .linux
            .and_then(|l| l.security_context)
            .and_then(|s| s.namespace_options);
        assert_eq!(options.map(|o| o.network), Some(NamespaceMode::Node as i32));
        assert_eq!(pod.log_directory, "/tmp/logs/p");
    }
}

//! `vpod-bench cri`: the CRI runtime measured through its gRPC API, as a kubelet or crictl
//! drives it, beside `runc` in the same run (the floor: a container with no VM at all).
//!
//! - RunPodSandbox latency (the pod VM booted and its agent answering);
//! - pod to running: RunPodSandbox + CreateContainer + StartContainer of a container that
//!   prints one line and sleeps, until ContainerStatus reports it running, and until its
//!   line is in its CRI log file on the host; one pod at a time, and 10 pods at once;
//! - host memory per idle pod ([`crate::cri_memory`]).
//!
//! `vpod-cri` runs with its root, socket and logs in a scratch directory on /tmp (a tmpfs
//! inside the emulated KVM host), pods sized by its config (`VPOD_BENCH_CRI_POD_MIB`,
//! default 128).
//! runc runs `echo` (to its line) and `create` + `start` of `sleep` (to running) on the
//! default image's root filesystem from `vpod-bench prepare`.

use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use vpod_bench::measure::timed_run;
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_proto::cri::image_service_client::ImageServiceClient;
use vpod_proto::cri::runtime_service_client::RuntimeServiceClient;
use vpod_proto::cri::*;

use crate::fixtures::{bundle, copy_tree, work_dir};

/// What the timed containers print first.
pub const READY: &str = "vpod-bench: running";
const LIMIT: Duration = Duration::from_secs(300);
/// Log files are polled this often for the container's first line.
const POLL: Duration = Duration::from_millis(2);

/// The settings of one `vpod-bench cri` run.
pub struct CriBench {
    pub runs: usize,
    pub host: String,
    pub pod_mib: u64,
    /// Pods started at once for the concurrent figure.
    pub concurrent: usize,
    /// Pod counts at which idle memory is read (ascending); empty skips memory.
    pub memory_pods: Vec<usize>,
    /// The share settings idle memory is read under, one daemon each, in this order.
    pub memory_volumes: Vec<VolumesMode>,
}

/// How the pods of an idle-memory run stand with the per-pod share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumesMode {
    /// `[pod] volumes = false`: no share, no virtiofsd, guest RAM not in a memfd.
    Off,
    /// The default (`volumes = true`): every pod has its share; no volume mounted.
    On,
    /// `volumes = true` and each pod's container mounts a host directory.
    Mounted,
    /// `volumes = false` and `ksm = true`, with the host's ksmd running for the measure.
    Ksm,
    /// The default, its pods booting `build/initrd.img` (busybox included) instead of the
    /// pod initrd, for the pod initrd's saving in the same run.
    BusyboxInitrd,
    /// The default with `share_boot_files = false`: each guest gets a private copy of the
    /// kernel's code, for the shared code's saving in the same run.
    PrivateBootFiles,
    /// `volumes = false` with `share_boot_files = false`: private guest RAM, where the
    /// initrd's pages are shared too, against `off`.
    PrivateBootFilesOff,
    /// The default with the guest kernel's own free page reporting order (its 4 MiB
    /// pageblock) instead of the one the VMM sets, for that setting's saving in the same run.
    KernelReportingOrder,
}

impl VolumesMode {
    /// The suffix of the results' config, and the `VPOD_BENCH_CRI_VOLUMES` word.
    pub fn name(self) -> &'static str {
        match self {
            VolumesMode::Off => "off",
            VolumesMode::On => "on",
            VolumesMode::Mounted => "mounted",
            VolumesMode::Ksm => "ksm",
            VolumesMode::BusyboxInitrd => "busybox-initrd",
            VolumesMode::PrivateBootFiles => "private-boot-files",
            VolumesMode::PrivateBootFilesOff => "private-boot-files-off",
            VolumesMode::KernelReportingOrder => "kernel-reporting-order",
        }
    }
}

impl CriBench {
    /// `runs` and `host` from the command line; the rest from the environment:
    /// `VPOD_BENCH_CRI_POD_MIB` (guest memory of each pod, default 128),
    /// `VPOD_BENCH_CRI_CONCURRENT` (pods started at once, default 10) and
    /// `VPOD_BENCH_CRI_MEMORY_PODS` (comma-separated pod counts, default `10,50`; empty skips),
    /// `VPOD_BENCH_CRI_VOLUMES` (comma-separated [`VolumesMode`] names, default `on`;
    /// `ksm` starts the host's ksmd for its measure and puts its settings back after;
    /// `busybox-initrd` boots the initrd with busybox; `private-boot-files` copies the
    /// kernel's code into each guest; `kernel-reporting-order` leaves the guest's free page
    /// reporting order at the kernel's default).
    pub fn from_env(runs: usize, host: &str) -> Result<CriBench> {
        let number = |name: &str, default: u64| -> Result<u64> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a number")),
                Err(_) => Ok(default),
            }
        };
        let memory_pods =
            std::env::var("VPOD_BENCH_CRI_MEMORY_PODS").unwrap_or_else(|_| "10,50".into());
        let mut memory_pods = memory_pods
            .split(',')
            .filter(|w| !w.trim().is_empty())
            .map(|w| w.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .context("VPOD_BENCH_CRI_MEMORY_PODS is not a list of numbers")?;
        memory_pods.sort_unstable();
        let volumes = std::env::var("VPOD_BENCH_CRI_VOLUMES").unwrap_or_else(|_| "on".into());
        let memory_volumes = volumes
            .split(',')
            .map(|w| match w.trim() {
                "off" => Ok(VolumesMode::Off),
                "on" => Ok(VolumesMode::On),
                "mounted" => Ok(VolumesMode::Mounted),
                "ksm" => Ok(VolumesMode::Ksm),
                "busybox-initrd" => Ok(VolumesMode::BusyboxInitrd),
                "private-boot-files" => Ok(VolumesMode::PrivateBootFiles),
                "private-boot-files-off" => Ok(VolumesMode::PrivateBootFilesOff),
                "kernel-reporting-order" => Ok(VolumesMode::KernelReportingOrder),
                other => {
                    bail!("VPOD_BENCH_CRI_VOLUMES: {other:?} is not off, on, mounted, ksm, busybox-initrd, private-boot-files, private-boot-files-off or kernel-reporting-order")
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CriBench {
            memory_volumes,
            runs,
            host: host.to_string(),
            pod_mib: number("VPOD_BENCH_CRI_POD_MIB", 128)?,
            concurrent: number("VPOD_BENCH_CRI_CONCURRENT", 10)? as usize,
            memory_pods,
        })
    }
}

/// A scratch directory on /tmp, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Result<Scratch> {
        Scratch::new_in(&std::env::temp_dir(), name)
    }

    /// As [`Scratch::new`], under `base` instead of the temporary directory.
    pub fn new_in(base: &Path, name: &str) -> Result<Scratch> {
        let dir = base.join(format!("vpod-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `vpod-cri` process of this benchmark; on drop it is stopped (SIGTERM, by PID) and
/// every VMM it left under its root killed (by PID).
pub struct Daemon {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Daemon {
    pub fn start(repo: &Path, dir: &Path, pod_mib: u64) -> Result<Daemon> {
        Daemon::start_with(repo, dir, pod_mib, "")
    }

    /// [`Daemon::start`] with more of vpod-cri's config.toml (whole tables, such as
    /// `[network]`) after its `[pod]` table.
    pub fn start_with(repo: &Path, dir: &Path, pod_mib: u64, tables: &str) -> Result<Daemon> {
        Daemon::start_configured(repo, dir, pod_mib, 64, tables)
    }

    /// [`Daemon::start_with`] with each pod's writable disk `disk_mib` large; `tables` may
    /// begin with more keys of the `[pod]` table.
    pub fn start_configured(
        repo: &Path,
        dir: &Path,
        pod_mib: u64,
        disk_mib: u64,
        tables: &str,
    ) -> Result<Daemon> {
        Daemon::start_full(repo, dir, pod_mib, disk_mib, "", tables)
    }

    /// [`Daemon::start_configured`] with `top`, keys of the config's top level (such as
    /// `initrd = "..."`), before its tables.
    pub fn start_full(
        repo: &Path,
        dir: &Path,
        pod_mib: u64,
        disk_mib: u64,
        top: &str,
        tables: &str,
    ) -> Result<Daemon> {
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "{top}[pod]\ndefault_memory_mib = {pod_mib}\nmin_memory_mib = {pod_mib}\n\
                 agent_timeout_secs = 240\nwritable_disk_mib = {disk_mib}\n{tables}"
            ),
        )?;
        let (root, socket, log) = (
            dir.join("root"),
            dir.join("cri.sock"),
            dir.join("vpod-cri.log"),
        );
        let child = Command::new(repo.join("target/release/vpod-cri"))
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&socket)
            .arg("--root")
            .arg(&root)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting target/release/vpod-cri (run `make` first)")?;
        let mut daemon = Daemon {
            root,
            socket,
            log,
            child,
        };
        let started = Instant::now();
        while !daemon.socket.exists() {
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "vpod-cri exited ({status}) before serving:\n{}",
                    daemon.log_tail()
                );
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("vpod-cri made no socket in 60 s:\n{}", daemon.log_tail());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(daemon)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// PIDs of the live virtiofsd processes whose command line names a path under the root.
    pub fn virtiofsd_pids(&self) -> Vec<u32> {
        let inside = format!("{}/", self.root.display());
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                stat.contains("(virtiofsd) ")
                    && !stat.contains(") Z ")
                    && String::from_utf8_lossy(&cmdline).contains(&inside)
            })
            .collect()
    }

    /// PIDs of the `vpod-vmm` processes whose command line names `<root>/sandboxes/<pod>/`
    /// (every pod's when `pod` is empty).
    pub fn vmm_pids(&self, pod: &str) -> Vec<u32> {
        vpod_sandbox::vmm::vmm_processes_under(&self.root.join("sandboxes").join(pod))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID, which we have not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        for pid in self.vmm_pids("") {
            // SAFETY: kill(2) on a VMM process this benchmark's daemon started (its command
            // line names our scratch root).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Both CRI clients on one channel (cheap to clone; calls multiplex over HTTP/2).
#[derive(Clone)]
pub struct Clients {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

pub async fn connect(socket: &Path) -> Result<Clients> {
    let channel = vpod_proto::client::unix_channel(socket)
        .await
        .context("connecting to vpod-cri")?;
    Ok(Clients {
        runtime: RuntimeServiceClient::new(channel.clone()),
        images: ImageServiceClient::new(channel),
    })
}

/// The pod config of pod `name`, its logs under `logs/<name>`.
pub fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(name).display().to_string(),
        ..Default::default()
    }
}

/// A container that prints [`READY`] and sleeps.
pub fn sleeper(image: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "sleeper".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: ["sh", "-c", &format!("echo {READY}; exec sleep 100000")]
            .map(String::from)
            .to_vec(),
        log_path: "sleeper/0.log".into(),
        ..Default::default()
    }
}

/// Imports the embedded default image; its id.
pub async fn pull_default(clients: &mut Clients, repo: &Path) -> Result<String> {
    let reference = format!("oci:{}:latest", repo.join("build/images/default").display());
    let response = clients
        .images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .context("PullImage of the default image")?;
    Ok(response.into_inner().image_ref)
}

/// The times of one pod's start, from before RunPodSandbox.
#[derive(Debug, Clone, Copy)]
pub struct PodTimes {
    pub runp: Duration,
    pub create: Duration,
    pub start: Duration,
    /// ContainerStatus said running (after StartContainer returned).
    pub running: Duration,
    /// The container's first line was in its log file.
    pub output: Duration,
}

/// A pod started by [`start_pod`].
#[derive(Debug, Clone)]
pub struct StartedPod {
    pub pod: String,
    pub container: String,
    pub times: PodTimes,
}

/// Runs pod `name` with a [`sleeper`] container.
pub async fn start_pod(
    clients: Clients,
    name: String,
    image: String,
    logs: PathBuf,
) -> Result<StartedPod> {
    start_pod_with(clients, name, image, logs, Vec::new()).await
}

/// [`start_pod`] with `mounts` in the container.
pub async fn start_pod_with(
    clients: Clients,
    name: String,
    image: String,
    logs: PathBuf,
    mounts: Vec<Mount>,
) -> Result<StartedPod> {
    let log_file = logs.join(&name).join("sleeper/0.log");
    let container = ContainerConfig {
        mounts,
        ..sleeper(&image)
    };
    let (pod, container, times) =
        time_pod(clients, "", pod_config(&name, &logs), container, &log_file)
            .await
            .with_context(|| format!("pod {name}"))?;
    Ok(StartedPod {
        pod,
        container,
        times,
    })
}

/// RunPodSandbox with `handler`, CreateContainer and StartContainer, then ContainerStatus
/// until the container runs and the log file until it has [`READY`]: the pod's and the
/// container's ids and the times from before RunPodSandbox.
pub async fn time_pod(
    mut clients: Clients,
    handler: &str,
    pod: PodSandboxConfig,
    container: ContainerConfig,
    log_file: &Path,
) -> Result<(String, String, PodTimes)> {
    let t0 = Instant::now();
    let id = clients
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id;
    let runp = t0.elapsed();
    let container = clients
        .runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(container),
            sandbox_config: Some(pod),
        })
        .await
        .context("CreateContainer")?
        .into_inner()
        .container_id;
    let create = t0.elapsed();
    clients
        .runtime
        .start_container(StartContainerRequest {
            container_id: container.clone(),
        })
        .await
        .context("StartContainer")?;
    let start = t0.elapsed();
    loop {
        let status = clients
            .runtime
            .container_status(ContainerStatusRequest {
                container_id: container.clone(),
                verbose: false,
            })
            .await
            .context("ContainerStatus")?
            .into_inner()
            .status
            .context("ContainerStatus returned no status")?;
        if status.state == ContainerState::ContainerRunning as i32 {
            break;
        }
        if status.state != ContainerState::ContainerCreated as i32 || t0.elapsed() > LIMIT {
            bail!("the container is not running after StartContainer: {status:?}");
        }
        tokio::time::sleep(POLL).await;
    }
    let running = t0.elapsed();
    loop {
        let text = tokio::fs::read_to_string(log_file)
            .await
            .unwrap_or_default();
        if text.contains(READY) {
            break;
        }
        if t0.elapsed() > LIMIT {
            bail!("{READY:?} never reached {}", log_file.display());
        }
        tokio::time::sleep(POLL).await;
    }
    let output = t0.elapsed();
    let times = PodTimes {
        runp,
        create: create - runp,
        start: start - create,
        running,
        output,
    };
    Ok((id, container, times))
}

pub async fn remove_pod(clients: &mut Clients, pod: &str) -> Result<()> {
    clients
        .runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await
        .with_context(|| format!("RemovePodSandbox {pod}"))?;
    Ok(())
}

/// Starts `names` at once; in order.
pub async fn start_pods(
    clients: &Clients,
    names: Vec<String>,
    image: &str,
    logs: &Path,
) -> Result<Vec<StartedPod>> {
    start_pods_with(clients, names, image, logs, &[]).await
}

/// [`start_pods`] with `mounts` in each container.
pub async fn start_pods_with(
    clients: &Clients,
    names: Vec<String>,
    image: &str,
    logs: &Path,
    mounts: &[Mount],
) -> Result<Vec<StartedPod>> {
    let tasks: Vec<_> = names
        .into_iter()
        .map(|name| {
            tokio::spawn(start_pod_with(
                clients.clone(),
                name,
                image.to_string(),
                logs.to_path_buf(),
                mounts.to_vec(),
            ))
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.context("a pod-start task panicked")??);
    }
    Ok(out)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// runc beside vpod: `runc run` of `echo` (to its line on stdout) and `runc create` +
/// `runc start` of `sleep` (to running), on one root filesystem copy.
struct Runc {
    work: PathBuf,
    rootfs: PathBuf,
    dir: PathBuf,
    next: usize,
}

impl Runc {
    fn new(repo: &Path, scratch: &Path) -> Result<Runc> {
        let work = work_dir(repo);
        let rootfs = scratch.join("rootfs");
        copy_tree(&work.join("rootfs"), &rootfs)
            .context("copying the runc root filesystem (run `vpod-bench prepare` first)")?;
        Ok(Runc {
            work,
            rootfs,
            dir: scratch.to_path_buf(),
            next: 0,
        })
    }

    fn bundle(&mut self, args: &[&str]) -> Result<(PathBuf, String)> {
        self.next += 1;
        let id = format!("vpod-bench-cri-{}-{}", std::process::id(), self.next);
        let dir = self.dir.join(format!("bundle-{}", self.next));
        bundle(&self.work, &dir, &self.rootfs, args)?;
        Ok((dir, id))
    }

    /// `runc run` of `echo READY`: ms to the line.
    fn run_echo(&mut self) -> Result<f64> {
        let (dir, id) = self.bundle(&["echo", READY])?;
        let mut cmd = Command::new("runc");
        cmd.args(["run", "--bundle"]).arg(&dir).arg(&id);
        let run = timed_run(&mut cmd, Some(READY), 0, LIMIT).context("runc run")?;
        let _ = std::fs::remove_dir_all(dir);
        run.to_marker_ms.context("runc run printed no line")
    }

    /// `runc create` + `runc start` of `sleep`: ms until start returns (the process runs);
    /// then the container is killed and deleted.
    fn create_start_sleep(&mut self) -> Result<f64> {
        let (dir, id) = self.bundle(&["sleep", "100000"])?;
        let quiet = |args: &[&str]| {
            Command::new("runc")
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
        };
        let started = Instant::now();
        let created = quiet(&["create", "--bundle", &dir.display().to_string(), &id])?;
        let began = quiet(&["start", &id])?;
        let took = ms(started.elapsed());
        let _ = quiet(&["delete", "--force", &id]);
        let _ = std::fs::remove_dir_all(dir);
        if !created.success() || !began.success() {
            bail!("runc create/start of sleep failed ({created}, {began})");
        }
        Ok(took)
    }
}

/// Runs `runs` `runc run` of `echo` at once; each one's ms to its line.
fn runc_concurrent(runc: &mut Runc, n: usize) -> Result<Vec<f64>> {
    let mut handles = Vec::new();
    for _ in 0..n {
        let (dir, id) = runc.bundle(&["echo", READY])?;
        handles.push(std::thread::spawn(move || -> Result<f64> {
            let mut cmd = Command::new("runc");
            cmd.args(["run", "--bundle"]).arg(&dir).arg(&id);
            let run = timed_run(&mut cmd, Some(READY), 0, LIMIT).context("runc run")?;
            let _ = std::fs::remove_dir_all(dir);
            run.to_marker_ms.context("runc run printed no line")
        }));
    }
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a runc thread panicked"))?
        })
        .collect()
}

pub fn cri(repo: &Path, bench: &CriBench) -> Result<Vec<Row>> {
    let scratch = Scratch::new("cri")?;
    let logs = scratch.dir.join("logs");
    let daemon = Daemon::start(repo, &scratch.dir, bench.pod_mib)?;
    let mut runc = Runc::new(repo, &scratch.dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let mut clients = connect(&daemon.socket).await?;
        let image = pull_default(&mut clients, repo).await?;
        let host = bench.host.as_str();
        let mib = bench.pod_mib;

        // Untimed: binaries, image layers and the kernel in the page cache.
        let warm = start_pod(clients.clone(), "warm-up".into(), image.clone(), logs.clone()).await?;
        remove_pod(&mut clients, &warm.pod).await?;
        runc.run_echo()?;
        runc.create_start_sleep()?;

        let mut one: HashMap<&str, Vec<f64>> = HashMap::new();
        for i in 0..bench.runs {
            let started = start_pod(clients.clone(), format!("one-{i}"), image.clone(), logs.clone()).await?;
            remove_pod(&mut clients, &started.pod).await?;
            let t = started.times;
            eprintln!(
                "cri: pod {i}: runp {:.0} ms, create {:.0} ms, start {:.0} ms, running at {:.0} ms, output at {:.0} ms",
                ms(t.runp), ms(t.create), ms(t.start), ms(t.running), ms(t.output)
            );
            for (key, value) in [
                ("runp", t.runp),
                ("create", t.create),
                ("start", t.start),
                ("running", t.running),
                ("output", t.output),
            ] {
                one.entry(key).or_default().push(ms(value));
            }
            one.entry("runc_output").or_default().push(runc.run_echo()?);
            one.entry("runc_running").or_default().push(runc.create_start_sleep()?);
        }
        let config1 = format!("1pod-{mib}m");
        let mut rows = vec![
            Row::timing("cri_runp", "vpod", &config1, host, &one["runp"]),
            Row::timing("cri_create", "vpod", &config1, host, &one["create"]),
            Row::timing("cri_start", "vpod", &config1, host, &one["start"]),
            Row::timing("cri_pod_to_running", "vpod", &config1, host, &one["running"]),
            Row::timing("cri_pod_to_output", "vpod", &config1, host, &one["output"]),
            Row::timing("cri_pod_to_running", "runc", &config1, host, &one["runc_running"]),
            Row::timing("cri_pod_to_output", "runc", &config1, host, &one["runc_output"]),
        ];

        let n = bench.concurrent;
        if n > 0 {
            let names = (0..n).map(|i| format!("many-{i}")).collect();
            let started = start_pods(&clients, names, &image, &logs).await?;
            for p in &started {
                remove_pod(&mut clients, &p.pod).await?;
            }
            let runc_many = runc_concurrent(&mut runc, n)?;
            let pick = |f: fn(&PodTimes) -> Duration| -> Vec<f64> {
                started.iter().map(|p| ms(f(&p.times))).collect()
            };
            let config = format!("{n}pods-{mib}m");
            rows.push(Row::timing("cri_runp", "vpod", &config, host, &pick(|t| t.runp)));
            rows.push(Row::timing("cri_pod_to_running", "vpod", &config, host, &pick(|t| t.running)));
            rows.push(Row::timing("cri_pod_to_output", "vpod", &config, host, &pick(|t| t.output)));
            rows.push(Row::timing("cri_pod_to_output", "runc", &config, host, &runc_many));
            eprintln!("cri: {n} pods at once: output at {:?} ms", pick(|t| t.output));
        }
        Ok::<_, anyhow::Error>(rows)
    });
    let rows = result.with_context(|| format!("vpod-cri's log ends:\n{}", daemon.log_tail()))?;
    print!("{}", table(&rows));
    write_jsonl(&repo.join("bench/results"), "cri-latency", &rows)?;
    drop(daemon);
    if !bench.memory_pods.is_empty() {
        crate::cri_memory::idle_memory(repo, bench)?;
    }
    Ok(rows)
}

//! Guest-side benchmarks on containers: `pod-start` (container create + start to its first
//! line on the host, in a running pod, beside `runc run` and `crun run` of the same command
//! on the same root filesystem) and `run-true` (`vpod run -- true` end to end beside
//! `runc run` and `crun run` of `true`). Inside the emulated KVM host on our machines.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vpod_bench::measure::timed_run;
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_image::runtime_spec::{runtime_spec, ProcessOverrides};
use vpod_image::{ImageConfig, ImageLayer};
use vpod_sandbox::{
    ContainerSpec, ContainerStdin, OutputStream, RootfsSource, Sandbox, SandboxConfig,
};

use crate::fixtures::{self, bundle, copy_tree, load_image, work_dir};

pub const LIMIT: Duration = Duration::from_secs(120);
/// What the timed containers print: their "running" signal.
pub const READY: &str = "vpod-bench: running";

/// Scratch space on the (emulated) host's /tmp, which is a tmpfs there: whiteouts, layer
/// disks and runc's root filesystem all live on the same kind of storage.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("vpod-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch { dir })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies the layer disks of the images `names` into `scratch/layers`; the images with
/// their layers' paths there.
pub fn stage_images(
    root: &Path,
    scratch: &Scratch,
    names: &[&str],
) -> Result<Vec<(ImageConfig, Vec<ImageLayer>)>> {
    let work = work_dir(root);
    let layers_dir = scratch.dir.join("layers");
    std::fs::create_dir_all(&layers_dir)?;
    let mut images = Vec::new();
    for name in names {
        let (config, layers) = load_image(&work, name, &layers_dir)?;
        for layer in &layers {
            let file = format!("{}.erofs", layer.diff_id.hex());
            if !layer.path.exists() {
                std::fs::copy(fixtures::store_layers_dir(&work).join(&file), &layer.path)
                    .with_context(|| format!("copying layer {file}"))?;
            }
        }
        images.push((config, layers));
    }
    Ok(images)
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub async fn start_pod(root: &Path, scratch: &Scratch, memory_mib: u64) -> Result<Sandbox> {
    let mut config = SandboxConfig::new(
        "bench",
        scratch.dir.join("state"),
        root.join("target/release/vpod-vmm"),
        root.join("build/vmlinux"),
        root.join("build/pod-initrd.img"),
    );
    config.memory_mib = memory_mib;
    config.agent_timeout = Duration::from_secs(90);
    config.rpc_timeout = Duration::from_secs(60);
    Sandbox::start(config).await.context("starting the pod VM")
}

pub fn spec(
    id: &str,
    config: &ImageConfig,
    layers: Vec<ImageLayer>,
    args: &[&str],
) -> ContainerSpec {
    let overrides = ProcessOverrides {
        command: args.iter().map(|a| a.to_string()).collect(),
        ..ProcessOverrides::default()
    };
    ContainerSpec {
        id: id.to_string(),
        spec: runtime_spec(config, &overrides).expect("the benchmark's command makes a spec"),
        rootfs: RootfsSource::Layers(layers),
        files: Vec::new(),
        stdin: ContainerStdin::default(),
        block_volumes: Vec::new(),
        dir_disks: Vec::new(),
    }
}

/// Runs a container to its end: its stdout (what reached the host), and the times from
/// before create to its first stdout chunk containing `marker` (when given) and to the
/// create + start calls' return.
pub struct ContainerRun {
    pub stdout: String,
    pub to_marker: Option<Duration>,
    pub create_start: Duration,
    pub exit_code: i32,
}

pub async fn run_container(
    sandbox: &mut Sandbox,
    spec: ContainerSpec,
    marker: Option<&str>,
) -> Result<ContainerRun> {
    let id = spec.id.clone();
    let started = Instant::now();
    sandbox
        .create_container(spec)
        .await
        .context("creating a container")?;
    sandbox
        .start_container(&id)
        .await
        .context("starting a container")?;
    let create_start = started.elapsed();
    let mut stdio = sandbox.stdio(&id).await.context("opening its output")?;
    let mut stdout = String::new();
    let mut to_marker = None;
    loop {
        let chunk = tokio::time::timeout(LIMIT, stdio.next_chunk())
            .await
            .context("the container's output stalled")?
            .context("reading the container's output")?;
        let Some(chunk) = chunk else { break };
        if chunk.stream == OutputStream::Stdout {
            stdout.push_str(&String::from_utf8_lossy(&chunk.data));
        }
        if to_marker.is_none() && marker.is_some_and(|m| stdout.contains(m)) {
            to_marker = Some(started.elapsed());
        }
    }
    let exit = sandbox
        .wait(&id)
        .await
        .context("waiting for the container")?;
    sandbox
        .remove_container(&id)
        .await
        .context("removing the container")?;
    if marker.is_some() && to_marker.is_none() {
        bail!("container {id} never printed {marker:?}; it printed {stdout:?}");
    }
    Ok(ContainerRun {
        stdout,
        to_marker,
        create_start,
        exit_code: exit.code,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The OCI runtimes beside vpod, by binary name.
const RUNTIMES: [&str; 2] = ["runc", "crun"];

fn runtime_run(name: &str, bundle: &Path, id: &str, marker: Option<&str>) -> Result<f64> {
    let mut cmd = Command::new(name);
    cmd.args(["run", "--bundle"]).arg(bundle).arg(id);
    let run = timed_run(&mut cmd, marker, 0, LIMIT).with_context(|| format!("{name} run"))?;
    Ok(run.to_marker_ms.unwrap_or(run.to_exit_ms))
}

/// Container start in a running pod, `runs` containers per configuration, interleaved with
/// `runc run` and `crun run` of the same command. Configurations: `attach` (the container's
/// layers are attached for it and detached after it, as for the first container of an
/// image in a pod) and `shared` (a sibling container of the same image keeps them attached).
pub fn pod_start(root: &Path, runs: usize, host: &str) -> Result<Vec<Row>> {
    let scratch = Scratch::new("pod-start")?;
    let work = work_dir(root);
    let rootfs = scratch.dir.join("rootfs");
    copy_tree(&work.join("rootfs"), &rootfs)?;
    let echo = ["echo", READY];
    let bundle_dir = scratch.dir.join("bundle-echo");
    bundle(&work, &bundle_dir, &rootfs, &echo)?;
    let mut images = stage_images(root, &scratch, &["default"])?;
    let (config, layers) = images.remove(0);

    let rt = runtime()?;
    let mut sandbox = rt.block_on(start_pod(root, &scratch, 256))?;
    // One untimed run of each first: binaries and the root filesystem in the page cache.
    rt.block_on(run_container(
        &mut sandbox,
        spec("warm-up", &config, layers.clone(), &echo),
        Some(READY),
    ))?;
    for name in RUNTIMES {
        runtime_run(name, &bundle_dir, &format!("{name}-warm-up"), Some(READY))?;
    }
    let mut rows = Vec::new();
    for mode in ["attach", "shared"] {
        if mode == "shared" {
            let holder = spec("holder", &config, layers.clone(), &["sleep", "100000"]);
            rt.block_on(async {
                sandbox.create_container(holder).await?;
                sandbox.start_container("holder").await.map(drop)
            })
            .context("starting the container that holds the layers")?;
        }
        let mut vpod = Vec::new();
        let mut vpod_rpc = Vec::new();
        let mut peers = vec![Vec::new(); RUNTIMES.len()];
        for i in 0..runs {
            let id = format!("{mode}-{i}");
            let run = rt.block_on(run_container(
                &mut sandbox,
                spec(&id, &config, layers.clone(), &echo),
                Some(READY),
            ))?;
            vpod.push(ms(run.to_marker.unwrap_or_default()));
            vpod_rpc.push(ms(run.create_start));
            for (k, name) in RUNTIMES.iter().enumerate() {
                peers[k].push(runtime_run(
                    name,
                    &bundle_dir,
                    &format!("{name}-{id}"),
                    Some(READY),
                )?);
            }
        }
        if mode == "shared" {
            rt.block_on(sandbox.remove_container("holder"))?;
        }
        let config = format!("layers-{mode}");
        rows.push(Row::timing("container_start", "vpod", &config, host, &vpod));
        rows.push(Row::timing(
            "container_create_rpc",
            "vpod",
            &config,
            host,
            &vpod_rpc,
        ));
        for (k, name) in RUNTIMES.iter().enumerate() {
            rows.push(Row::timing(
                "container_start",
                name,
                &config,
                host,
                &peers[k],
            ));
        }
    }
    rt.block_on(sandbox.stop())?;
    print!("{}", table(&rows));
    write_jsonl(&root.join("bench/results"), "container-start", &rows)?;
    Ok(rows)
}

/// `vpod run -- true` end to end (store warm: the layers were converted by a first run,
/// recorded alone as `cold-store`), interleaved with `runc run` and `crun run` of `true`
/// (after one untimed run of each).
pub fn run_true(root: &Path, runs: usize, host: &str) -> Result<Vec<Row>> {
    let scratch = Scratch::new("run-true")?;
    let work = work_dir(root);
    let rootfs = scratch.dir.join("rootfs");
    copy_tree(&work.join("rootfs"), &rootfs)?;
    let bundle_dir = scratch.dir.join("bundle-true");
    bundle(&work, &bundle_dir, &rootfs, &["true"])?;
    let vpod_root = scratch.dir.join("vpod-root");
    let vpod = root.join("target/release/vpod");
    let vpod_run = || {
        let mut cmd = Command::new(&vpod);
        cmd.arg("run")
            .arg("--root")
            .arg(&vpod_root)
            .args(["--", "true"]);
        cmd
    };
    let cold = timed_run(&mut vpod_run(), None, 0, LIMIT).context("vpod run (cold store)")?;
    for name in RUNTIMES {
        runtime_run(name, &bundle_dir, &format!("{name}-true-warm-up"), None)?;
    }
    let mut ours = Vec::new();
    let mut peers = vec![Vec::new(); RUNTIMES.len()];
    for i in 0..runs {
        let run = timed_run(&mut vpod_run(), None, 0, LIMIT).context("vpod run")?;
        ours.push(run.to_exit_ms);
        for (k, name) in RUNTIMES.iter().enumerate() {
            peers[k].push(runtime_run(
                name,
                &bundle_dir,
                &format!("{name}-true-{i}"),
                None,
            )?);
        }
    }
    let mut rows = vec![
        Row::timing("run_true", "vpod", "cold-store", host, &[cold.to_exit_ms]),
        Row::timing("run_true", "vpod", "warm-store", host, &ours),
    ];
    for (k, name) in RUNTIMES.iter().enumerate() {
        rows.push(Row::timing("run_true", name, "warm-store", host, &peers[k]));
    }
    print!("{}", table(&rows));
    write_jsonl(&root.join("bench/results"), "run-true", &rows)?;
    Ok(rows)
}

//! `vpod`: runs a container in its own micro-VM; `vpod --help` and `vpod run --help` say
//! how (the command line is in [`args`]).
//!
//! `run` imports the image into the layer store at `--root`, boots a pod VM, runs the
//! container with its output streamed to ours, and exits with the container's exit code.
//! `-d` leaves the pod running; `--pod ID` adds the container to a running pod instead of
//! booting one. `exec` ([`exec`]: `-i` and `-t` for an interactive session), `logs`, `rm`
//! and `ps` work on pods left running.

mod args;
mod exec;
mod network;
mod pull;
mod terminal;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};
use vpod_image::default_image::DEFAULT_IMAGE_TAG;
use vpod_image::runtime_spec::{runtime_spec, ProcessOverrides};
use vpod_image::LayerStore;
use vpod_sandbox::network_files::{DnsConfig, NetworkIdentity};
use vpod_sandbox::{
    ContainerExit, ContainerOutput, ContainerSpec, ContainerStdin, OutputStream, RootfsSource,
    Sandbox, SandboxConfig,
};

use args::{Cli, LogsCommand, PsCommand, PullCommand, RmCommand, VpodCommand};

/// Deadline of agent calls from `exec`, `rm` and `--pod`.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// vpod's own failures, as Docker reports them.
const EXIT_VPOD_ERROR: u8 = 125;

/// What `vpod run` was asked for ([`args::RunCommand`] reads it).
#[derive(Debug)]
struct RunArgs {
    vcpus: u8,
    memory_mib: u64,
    overrides: ProcessOverrides,
    root: PathBuf,
    stop_timeout: Duration,
    timings: bool,
    image: Option<String>,
    vmm: Option<PathBuf>,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    /// Jail the pod's VMM (`--no-jail` turns it off).
    jail: bool,
    detach: bool,
    pod: Option<String>,
    name: Option<String>,
    hostname: Option<String>,
    add_hosts: Vec<(String, String)>,
    dns: Vec<String>,
    /// On vpod's bridge network (`--network bridge` or a `--publish`).
    network: bool,
    publish: Vec<network::Publish>,
}

fn random_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

async fn run(args: RunArgs) -> anyhow::Result<i32> {
    let started = Instant::now();
    let home = vpod_sandbox::vpod_home();
    let vmm = match args.vmm {
        Some(vmm) => vmm,
        None => std::env::current_exe()
            .context("finding this binary")?
            .with_file_name("vpod-vmm"),
    };
    let image = match args.image {
        Some(image) => image,
        None => {
            let dir = home.join("build/images/default");
            if !dir.join("index.json").exists() {
                bail!(
                    "the default image {} is missing: build it with `make image` \
                     (target/release/vpod-default-image build/images/default)",
                    dir.display()
                );
            }
            format!("oci:{}:{DEFAULT_IMAGE_TAG}", dir.display())
        }
    };
    let imported = if image.starts_with("oci:") {
        LayerStore::open(&args.root)
            .with_context(|| format!("opening the layer store in {}", args.root.display()))?
            .import_oci_layout(&image)
            .with_context(|| format!("importing {image}"))?
    } else {
        pull::ensure_image(&args.root, &image, &pull::PullOptions::default())
            .await?
            .image
    };
    let import_time = started.elapsed();
    let mut runtime_spec =
        runtime_spec(&imported.config, &args.overrides).context("creating the container")?;
    runtime_spec.set_hostname(args.hostname.clone());

    if args.pod.is_some() && args.network {
        bail!("--network and --publish apply to a new pod, not to one joined with --pod");
    }
    let mut sandbox = match &args.pod {
        Some(pod) => Sandbox::open(&args.root, pod, RPC_TIMEOUT)
            .await
            .with_context(|| format!("opening pod {pod}"))?,
        None => {
            let pod_id = random_id()?;
            let mut config = SandboxConfig::new(
                pod_id.clone(),
                &args.root,
                vmm,
                args.kernel.unwrap_or_else(|| home.join("build/vmlinux")),
                args.initrd
                    .unwrap_or_else(|| home.join("build/pod-initrd.img")),
            );
            config.vcpus = args.vcpus;
            config.memory_mib = args.memory_mib;
            config.die_with_parent = !args.detach;
            if !args.jail {
                config.jail = None;
            }
            if args.network {
                let (guest, _ip) = network::set_up(&args.root, &pod_id, &args.publish)?;
                config.network = guest;
            }
            match Sandbox::start(config).await {
                Ok(sandbox) => sandbox,
                Err(e) => {
                    if args.network {
                        network::tear_down(&args.root, &pod_id)?;
                    }
                    return Err(anyhow::Error::new(e).context("starting the pod VM"));
                }
            }
        }
    };
    let id = match (&args.name, &args.pod) {
        (Some(name), _) => name.clone(),
        (None, Some(_)) => random_id()?,
        (None, None) => sandbox.id().to_string(),
    };
    let files = NetworkIdentity {
        hostname: args.hostname.clone(),
        extra_hosts: args.add_hosts.clone(),
        dns: DnsConfig {
            servers: args.dns.clone(),
            ..DnsConfig::default()
        },
    }
    .files();
    let spec = ContainerSpec {
        id: id.clone(),
        spec: runtime_spec,
        rootfs: RootfsSource::Layers(imported.layers),
        files,
        stdin: ContainerStdin::default(),
        block_volumes: Vec::new(),
        dir_disks: Vec::new(),
    };
    if args.detach {
        let created = create_and_start(&mut sandbox, spec).await;
        if created.is_ok() {
            println!("{id}");
            sandbox
                .leave_running()
                .context("recording the pod's state")?;
        } else if args.pod.is_none() {
            let pod_id = sandbox.id().to_string();
            sandbox.stop().await.context("stopping the pod VM")?;
            network::tear_down(&args.root, &pod_id)?;
        }
        return created.map(|_| 0);
    }
    let outcome = run_container(&mut sandbox, spec, args.stop_timeout).await;
    let stopped = sandbox.timings();
    if args.pod.is_some() {
        sandbox
            .leave_running()
            .context("recording the pod's state")?;
    } else {
        let pod_id = sandbox.id().to_string();
        sandbox.stop().await.context("stopping the pod VM")?;
        network::tear_down(&args.root, &pod_id)?;
    }
    let (code, create_start) = outcome?;
    if args.timings {
        eprintln!(
            "vpod: timings import_ms={} disk_ms={} vmm_to_agent_ms={} vmm_to_init_ms={} \
             create_start_ms={} total_ms={}",
            ms(import_time),
            ms(stopped.disk),
            ms(stopped.vmm_to_agent),
            stopped
                .vmm_to_init_ms
                .map_or("-".to_string(), |v| format!("{v:.1}")),
            ms(create_start),
            ms(started.elapsed()),
        );
    }
    Ok(code)
}

/// Creates and starts the container; how long that took.
async fn create_and_start(sandbox: &mut Sandbox, spec: ContainerSpec) -> anyhow::Result<Duration> {
    let id = spec.id.clone();
    let started = Instant::now();
    sandbox
        .create_container(spec)
        .await
        .context("creating the container")?;
    sandbox
        .start_container(&id)
        .await
        .context("starting the container")?;
    Ok(started.elapsed())
}

/// Creates, starts and waits for the container, streaming its output; its exit code and
/// how long create + start took.
async fn run_container(
    sandbox: &mut Sandbox,
    spec: ContainerSpec,
    stop_timeout: Duration,
) -> anyhow::Result<(i32, Duration)> {
    let id = spec.id.clone();
    let create_start = create_and_start(sandbox, spec).await?;
    let stdio = sandbox
        .stdio(&id)
        .await
        .context("reading the container's output")?;
    let pump = tokio::spawn(pump_stdio(stdio));

    let exit = wait_forwarding_signals(sandbox, &id, stop_timeout).await?;
    // The rest of the output follows the exit closely; a stuck stream must not keep us.
    if tokio::time::timeout(Duration::from_secs(5), pump)
        .await
        .is_err()
    {
        eprintln!("vpod: the container's output did not end within 5 s after it exited");
    }
    sandbox
        .remove_container(&id)
        .await
        .context("removing the container")?;
    Ok((exit.code, create_start))
}

/// Waits for the container; SIGINT or SIGTERM to us sends it SIGTERM, then SIGKILL after
/// `stop_timeout`.
async fn wait_forwarding_signals(
    sandbox: &Sandbox,
    id: &str,
    stop_timeout: Duration,
) -> anyhow::Result<ContainerExit> {
    let mut sigint = signal(SignalKind::interrupt()).context("handling SIGINT")?;
    let mut sigterm = signal(SignalKind::terminate()).context("handling SIGTERM")?;
    let wait = sandbox.wait(id);
    tokio::pin!(wait);
    let mut kill_at: Option<tokio::time::Instant> = None;
    let exit = loop {
        let kill_timer = async {
            match kill_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            exit = &mut wait => break exit.context("waiting for the container")?,
            _ = sigint.recv() => {},
            _ = sigterm.recv() => {},
            _ = kill_timer => {
                sandbox.signal(id, 9).await.context("killing the container")?;
                kill_at = Some(tokio::time::Instant::now() + Duration::from_secs(3600));
                continue;
            }
        }
        if kill_at.is_none() {
            sandbox
                .signal(id, 15)
                .await
                .context("stopping the container")?;
            kill_at = Some(tokio::time::Instant::now() + stop_timeout);
        }
    };
    Ok(exit)
}

async fn pump_stdio(mut stdio: ContainerOutput) {
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Ok(Some(chunk)) = stdio.next_chunk().await {
        let result = if chunk.stream == OutputStream::Stderr {
            stderr
                .write_all(&chunk.data)
                .await
                .and(stderr.flush().await)
        } else {
            stdout
                .write_all(&chunk.data)
                .await
                .and(stdout.flush().await)
        };
        if result.is_err() {
            break;
        }
    }
}

/// The pod and container that `POD:CONTAINER` or a container name means: the pod of that
/// name (a container started with `vpod run -d` has its pod's id), else the pod whose
/// sandbox.json lists the container.
fn find_container(root: &Path, target: &str) -> anyhow::Result<(String, String)> {
    if let Some((pod, container)) = target.split_once(':') {
        return Ok((pod.to_string(), container.to_string()));
    }
    let sandboxes = root.join("sandboxes");
    if sandboxes.join(target).join("sandbox.json").exists() {
        return Ok((target.to_string(), target.to_string()));
    }
    let entries = std::fs::read_dir(&sandboxes)
        .into_iter()
        .flatten()
        .flatten();
    for entry in entries {
        let state = std::fs::read_to_string(entry.path().join("sandbox.json")).unwrap_or_default();
        let state: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
        if state["containers"].get(target).is_some() {
            return Ok((
                entry.file_name().to_string_lossy().into_owned(),
                target.to_string(),
            ));
        }
    }
    bail!(
        "no pod in {} has a container named {target}",
        sandboxes.display()
    )
}

async fn logs(args: LogsCommand) -> anyhow::Result<i32> {
    let (pod, container) = find_container(&args.root, &args.target)?;
    let sandbox = Sandbox::open(&args.root, &pod, RPC_TIMEOUT)
        .await
        .with_context(|| format!("opening pod {pod}"))?;
    let stdio = if args.follow {
        sandbox.stdio_from(&container, 0).await
    } else {
        sandbox.stdio_until_now(&container, 0).await
    }
    .context("reading the container's output")?;
    pump_stdio(stdio).await;
    Ok(0)
}

async fn remove(args: RmCommand) -> anyhow::Result<i32> {
    for pod in &args.pods {
        match Sandbox::open(&args.root, pod, RPC_TIMEOUT).await {
            Ok(sandbox) => sandbox
                .stop()
                .await
                .with_context(|| format!("stopping {pod}"))?,
            Err(e) => {
                // A pod whose VM is gone (or unreachable) is cleaned up by hand.
                eprintln!("vpod: {pod}: {e}; removing what is left");
                let dir = args.root.join("sandboxes").join(pod);
                if let Ok(pid) = std::fs::read_to_string(dir.join("vmm.pid")) {
                    if let Ok(pid) = pid.trim().parse() {
                        vpod_sandbox::vmm::VmmProcess::adopt(pid).kill_and_reap();
                    }
                }
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        // After the VM: a pod run with --network or --publish releases its address and ports.
        network::tear_down(&args.root, pod)?;
    }
    Ok(0)
}

fn list(args: PsCommand) -> anyhow::Result<i32> {
    let dir = args.root.join("sandboxes");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    for entry in entries.flatten() {
        let state = std::fs::read_to_string(entry.path().join("sandbox.json")).unwrap_or_default();
        let state: serde_json::Value = serde_json::from_str(&state).unwrap_or_default();
        let containers: Vec<&str> = state["containers"]
            .as_object()
            .map(|c| c.keys().map(String::as_str).collect())
            .unwrap_or_default();
        println!(
            "{} vmm_pid={} containers={}",
            entry.file_name().to_string_lossy(),
            state["vmm_pid"],
            containers.join(",")
        );
    }
    Ok(0)
}

async fn pull_image(args: PullCommand) -> anyhow::Result<i32> {
    let options = pull::PullOptions {
        insecure_registries: args.insecure_registry,
        max_concurrent_downloads: Some(args.max_concurrent_downloads),
    };
    let record = pull::pull_command(&args.root, &args.image, &options).await?;
    println!("{}", record.id);
    Ok(0)
}

fn block_on(work: impl std::future::Future<Output = anyhow::Result<i32>>) -> anyhow::Result<i32> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(work)
}

fn main() -> ExitCode {
    let result = match Cli::parse_with_image().command {
        VpodCommand::Run(args) => block_on(run(args.into_run_args())),
        VpodCommand::Exec(args) => block_on(exec::exec(args)),
        VpodCommand::Rm(args) => block_on(remove(args)),
        VpodCommand::Logs(args) => block_on(logs(args)),
        VpodCommand::Ps(args) => list(args),
        VpodCommand::Pull(args) => block_on(pull_image(args)),
    };
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("vpod: {e:#}");
            ExitCode::from(EXIT_VPOD_ERROR)
        }
    }
}

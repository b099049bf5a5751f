//! The harness of the CRI end-to-end tests: each test runs where guests boot (through
//! `vpod_e2e`'s guest host: inside the emulated KVM host on machines whose KVM cannot boot
//! Linux), starts a `vpod-cri` with a fresh root and socket, and talks CRI to it over the
//! unix socket.

#![allow(dead_code)]

pub mod registry;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tonic::transport::Channel;
use vpod_e2e::process::send_signal;
use vpod_e2e::{built, repo_root, GuestHost};
use vpod_proto::cri::image_service_client::ImageServiceClient;
use vpod_proto::cri::runtime_service_client::RuntimeServiceClient;
use vpod_proto::cri::*;

/// Runs `body`, the test `test_name`, where guests boot (see `vpod_e2e::guest_host`), on a
/// tokio runtime.
pub fn in_guest_host<F, Fut>(test_name: &str, limit: Duration, body: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    in_guest_host_with_memory(test_name, limit, None, body)
}

/// As [`in_guest_host`], with `memory_mib` for the emulated host (many pods need more).
pub fn in_guest_host_with_memory<F, Fut>(
    test_name: &str,
    limit: Duration,
    memory_mib: Option<u32>,
    body: F,
) where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut host = GuestHost::new(limit).test_name(test_name);
    if let Some(mib) = memory_mib {
        host = host.memory_mib(mib);
    }
    run_where_guests_boot(host, body)
}

/// As [`in_guest_host`], in a network namespace of the test's own (loopback up), so that
/// the bridges, veths and iptables rules CNI plugins make in the "host" namespace never touch
/// the machine's network and go with the test. The daemon and every command the test runs
/// inherit it.
pub fn in_guest_host_own_network<F, Fut>(test_name: &str, limit: Duration, body: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let host = GuestHost::new(limit).test_name(test_name);
    run_where_guests_boot_in(host, true, body)
}

fn run_where_guests_boot<F, Fut>(host: GuestHost, body: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    run_where_guests_boot_in(host, false, body)
}

fn run_where_guests_boot_in<F, Fut>(host: GuestHost, own_network: bool, body: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    host.run(|| {
        if own_network {
            // Before the runtime's threads exist: they inherit this thread's namespace.
            // SAFETY: CLONE_NEWNET changes only this thread's network namespace; no file
            // descriptor table is unshared, so no descriptor of ours changes meaning.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
                .expect("a network namespace of the test's own");
            let up = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("running ip");
            assert!(up.success(), "bringing lo up in the test's namespace");
        }
        built("target/release/vpod-cri");
        built("target/release/vpod-vmm");
        built("build/vmlinux");
        built("build/pod-initrd.img");
        built("build/images/default/index.json");
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(body());
    })
}

/// A `vpod-cri` with its own root and socket; killed (by PID) and cleaned up on drop,
/// with every VMM it left.
pub struct Daemon {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log_dir: PathBuf,
    pub stderr_log: PathBuf,
    child: Option<Child>,
}

/// Where the test's root lives: /tmp (a tmpfs inside the emulated host; the layer store
/// needs device nodes that the shared checkout cannot hold).
fn scratch_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/vpod-cri-e2e-{name}-{}", std::process::id()))
}

impl Daemon {
    pub fn start(name: &str) -> Daemon {
        Daemon::start_with_config(name, "")
    }

    /// As [`Daemon::start`], with `extra` appended to the config file.
    pub fn start_with_config(name: &str, extra: &str) -> Daemon {
        let dir = scratch_dir(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the scratch directory");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[pod]\ndefault_memory_mib = 128\nmin_memory_mib = 128\nagent_timeout_secs = 400\nwritable_disk_mib = 64\n{extra}"
            ),
        )
        .expect("the config file");
        let mut daemon = Daemon {
            root: dir.join("root"),
            socket: dir.join("cri.sock"),
            config,
            log_dir: dir.join("logs"),
            stderr_log: dir.join("vpod-cri.log"),
            child: None,
        };
        daemon.spawn();
        daemon
    }

    /// Starts the daemon process (again) and waits for its socket.
    pub fn spawn(&mut self) {
        self.spawn_with_env(&[]);
    }

    /// As [`Daemon::spawn`], with extra environment variables (test hooks).
    pub fn spawn_with_env(&mut self, env: &[(&str, &str)]) {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_log)
            .expect("the daemon's log");
        let child = Command::new(repo_root().join("target/release/vpod-cri"))
            .arg("--config")
            .arg(&self.config)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--root")
            .arg(&self.root)
            .env("RUST_LOG", "vpod_cri=debug,info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("vpod-cri starts");
        self.child = Some(child);
        let started = Instant::now();
        while !self.socket.exists() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("vpod-cri exited ({status}) before serving\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "vpod-cri did not create its socket within 60 s\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: a clean stop.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), Signal::TERM);
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub async fn connect(&self) -> Clients {
        connect(&self.socket).await
    }

    /// PIDs of the VMM processes that run pods of this daemon's root.
    pub fn vmm_pids(&self) -> Vec<u32> {
        vpod_sandbox::vmm::vmm_processes_under(&self.root.join("sandboxes"))
    }

    /// Directories under `<root>/sandboxes`.
    pub fn sandbox_dirs(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("sandboxes"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Files under `<root>/cri/pods` and `<root>/cri/containers`.
    pub fn state_entries(&self) -> Vec<String> {
        let mut all = Vec::new();
        for sub in ["cri/pods", "cri/containers"] {
            if let Ok(entries) = std::fs::read_dir(self.root.join(sub)) {
                all.extend(
                    entries
                        .flatten()
                        .map(|e| format!("{sub}/{}", e.file_name().to_string_lossy())),
                );
            }
        }
        all.sort();
        all
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        for pid in self.vmm_pids() {
            send_signal(pid, Signal::KILL);
        }
        // A pod's share: its virtiofsd killed and its mounts gone before the removal.
        for pod in self.sandbox_dirs() {
            let dir = self.root.join("sandboxes").join(pod);
            if let Err(e) = vpod_sandbox::share::destroy_leftovers(&dir) {
                eprintln!("cleaning up {}: {e}", dir.display());
            }
        }
        if std::thread::panicking() {
            eprintln!("--- vpod-cri log\n{}", self.log());
        }
        if let Some(dir) = self.root.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Both CRI clients on one channel.
#[derive(Clone)]
pub struct Clients {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

/// Connects to the daemon's socket. The socket's file appears at bind(2), a moment before
/// listen(2): a connection refused in that moment is tried again, for at most 10 s.
pub async fn connect(socket: &Path) -> Clients {
    let started = Instant::now();
    let channel = loop {
        match vpod_proto::client::unix_channel(socket).await {
            Ok(channel) => break channel,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                eprintln!("connecting to vpod-cri: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connecting to vpod-cri: {e:?}"),
        }
    };
    Clients {
        runtime: RuntimeServiceClient::new(channel.clone()),
        images: ImageServiceClient::new(channel),
    }
}

/// The default image as a reference vpod-cri can pull.
pub fn default_image() -> String {
    format!(
        "oci:{}:latest",
        repo_root().join("build/images/default").display()
    )
}

pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.join(name).display().to_string(),
        dns_config: Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["e2e.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        annotations: HashMap::from([("note".to_string(), "kept as is".to_string())]),
        ..Default::default()
    }
}

pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        envs: vec![KeyValue {
            key: "GREETING".into(),
            value: "hello from vpod".into(),
        }],
        labels: HashMap::from([("tier".to_string(), name.to_string())]),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

pub async fn run_pod(clients: &mut Clients, config: PodSandboxConfig) -> String {
    clients
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id
}

/// RunPodSandbox in a task of its own, for a test that crashes the daemon meanwhile.
pub fn spawn_run_pod(
    clients: &Clients,
    config: PodSandboxConfig,
) -> tokio::task::JoinHandle<Result<tonic::Response<RunPodSandboxResponse>, tonic::Status>> {
    let mut racer = clients.clone();
    tokio::spawn(async move {
        racer
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
    })
}

pub async fn create_container(
    clients: &mut Clients,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> Result<String, tonic::Status> {
    clients
        .runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

/// CreateContainer then StartContainer; the container's id.
pub async fn start_container(
    c: &mut Clients,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let id = create_container(c, pod_id, pod, config)
        .await
        .expect("CreateContainer");
    c.runtime
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect("StartContainer");
    id
}

pub async fn pull(clients: &mut Clients, image: &str) -> String {
    clients
        .images
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("PullImage")
        .into_inner()
        .image_ref
}

/// StopPodSandbox then RemovePodSandbox of `id`, each expected to succeed.
pub async fn stop_and_remove_pod(clients: &mut Clients, id: &str) {
    clients
        .runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .expect("StopPodSandbox");
    clients
        .runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        })
        .await
        .expect("RemovePodSandbox");
}

pub async fn container_status(clients: &mut Clients, id: &str) -> ContainerStatus {
    clients
        .runtime
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("a status")
}

pub async fn pod_status(clients: &mut Clients, id: &str) -> PodSandboxStatusResponse {
    clients
        .runtime
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner()
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of a CRI log file's records (`<time> <stream> <tag> <text>`).
pub fn log_texts(path: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ' ');
            let _time = parts.next()?;
            let stream = parts.next()?;
            let _tag = parts.next()?;
            Some((stream.to_string(), parts.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// ExecSync of `cmd` in `container` with a `timeout_secs` limit: stdout, stderr, exit code.
pub async fn exec_text(
    c: &mut Clients,
    container: &str,
    cmd: &[&str],
    timeout_secs: i64,
) -> (String, String, i32) {
    let out = c
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.exit_code,
    )
}

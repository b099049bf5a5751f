//! containerd's CRI plugin through the project's tonic CRI client (`vpod_proto::cri`) on
//! containerd's socket, and the request shapes the tests send (as vpod-cri's tests send
//! them).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vpod_proto::cri::image_service_client::ImageServiceClient;
use vpod_proto::cri::runtime_service_client::RuntimeServiceClient;
use vpod_proto::cri::*;

/// How long one CRI call may go unanswered (a pod VM boots under TCG, its image's layers
/// become disks) before the test fails rather than hangs.
const CALL_LIMIT: Duration = Duration::from_secs(150);

/// The answer to `call`, or a failed test naming `what`: an error status, or no answer
/// within [`CALL_LIMIT`] (more for an ExecSync of `extra` seconds).
async fn answer<T>(
    what: &str,
    extra: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> T {
    match tokio::time::timeout(CALL_LIMIT + extra, call).await {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => panic!("{what}: {status:?}"),
        Err(_) => panic!("{what} got no answer within {:?}", CALL_LIMIT + extra),
    }
}

/// Both CRI clients on one channel.
#[derive(Clone)]
pub struct Clients {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

/// Connects to the CRI plugin on containerd's `socket` and waits (up to 60 s) until its
/// Status says RuntimeReady, and NetworkReady too when `network` (its CNI config loaded).
pub async fn connect(socket: &Path, network: bool) -> Clients {
    let channel = vpod_proto::client::unix_channel(socket)
        .await
        .unwrap_or_else(|e| panic!("connecting to {}: {e:?}", socket.display()));
    let mut clients = Clients {
        runtime: RuntimeServiceClient::new(channel.clone()),
        images: ImageServiceClient::new(channel),
    };
    let started = Instant::now();
    loop {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            clients.runtime.status(StatusRequest { verbose: false }),
        )
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within 10 s")));
        let ready = |conditions: &[RuntimeCondition], name: &str| {
            conditions.iter().any(|c| c.r#type == name && c.status)
        };
        let last = match reply {
            Ok(status) => {
                let conditions = status
                    .into_inner()
                    .status
                    .map(|s| s.conditions)
                    .unwrap_or_default();
                if ready(&conditions, "RuntimeReady")
                    && (!network || ready(&conditions, "NetworkReady"))
                {
                    return clients;
                }
                format!("{conditions:?}")
            }
            Err(status) => format!("{status:?}"),
        };
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the CRI plugin is not ready after 60 s: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pod's config, logging under `log_dir/<name>` (made here: the kubelet makes it).
pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    let log_directory = log_dir.join(name);
    std::fs::create_dir_all(&log_directory).expect("the pod's log directory");
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.display().to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// A container's config running `command` in `image`, logging to `<name>/0.log` under its
/// pod's log directory.
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
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// RunPodSandbox of `config` with the runtime handler `handler`; the pod's id.
pub async fn run_pod(c: &mut Clients, config: &PodSandboxConfig, handler: &str) -> String {
    let request = RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.into(),
    };
    answer(
        &format!("RunPodSandbox with the handler {handler:?}"),
        Duration::ZERO,
        c.runtime.run_pod_sandbox(request),
    )
    .await
    .pod_sandbox_id
}

/// CreateContainer then StartContainer; the container's id.
pub async fn start_container(
    c: &mut Clients,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let request = CreateContainerRequest {
        pod_sandbox_id: pod_id.into(),
        config: Some(config),
        sandbox_config: Some(pod.clone()),
    };
    let id = answer(
        &format!("CreateContainer in {pod_id}"),
        Duration::ZERO,
        c.runtime.create_container(request),
    )
    .await
    .container_id;
    let request = StartContainerRequest {
        container_id: id.clone(),
    };
    answer(
        &format!("StartContainer {id}"),
        Duration::ZERO,
        c.runtime.start_container(request),
    )
    .await;
    id
}

/// ExecSync of `cmd` in `container` (at most `timeout_secs`): stdout, stderr, exit code.
pub async fn exec_text(
    c: &mut Clients,
    container: &str,
    cmd: &[&str],
    timeout_secs: i64,
) -> (String, String, i32) {
    let request = ExecSyncRequest {
        container_id: container.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: timeout_secs,
    };
    let out = answer(
        &format!("ExecSync {cmd:?} in {container}"),
        Duration::from_secs(timeout_secs.unsigned_abs()),
        c.runtime.exec_sync(request),
    )
    .await;
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.exit_code,
    )
}

/// The container's state.
pub async fn container_state(c: &mut Clients, id: &str) -> ContainerState {
    container_status(c, id).await.state()
}

/// The container's status.
pub async fn container_status(c: &mut Clients, id: &str) -> ContainerStatus {
    let request = ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    };
    answer(
        &format!("ContainerStatus {id}"),
        Duration::ZERO,
        c.runtime.container_status(request),
    )
    .await
    .status
    .expect("a container status")
}

/// Waits (up to `limit`) until the container has exited; its status then.
pub async fn wait_exited(c: &mut Clients, id: &str, limit: Duration) -> ContainerStatus {
    let started = std::time::Instant::now();
    loop {
        let status = container_status(c, id).await;
        if status.state() == ContainerState::ContainerExited {
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "{id} did not exit within {limit:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pod's IP, from PodSandboxStatus (empty when it has none).
pub async fn pod_ip(c: &mut Clients, pod_id: &str) -> String {
    let request = PodSandboxStatusRequest {
        pod_sandbox_id: pod_id.into(),
        verbose: false,
    };
    answer(
        &format!("PodSandboxStatus {pod_id}"),
        Duration::ZERO,
        c.runtime.pod_sandbox_status(request),
    )
    .await
    .status
    .and_then(|s| s.network)
    .map(|n| n.ip)
    .unwrap_or_default()
}

/// StopContainer (SIGTERM, SIGKILL after `grace_secs`) then RemoveContainer.
pub async fn stop_and_remove_container(c: &mut Clients, id: &str, grace_secs: i64) {
    let request = StopContainerRequest {
        container_id: id.into(),
        timeout: grace_secs,
    };
    answer(
        &format!("StopContainer {id}"),
        Duration::from_secs(grace_secs.unsigned_abs()),
        c.runtime.stop_container(request),
    )
    .await;
    let request = RemoveContainerRequest {
        container_id: id.into(),
    };
    answer(
        &format!("RemoveContainer {id}"),
        Duration::ZERO,
        c.runtime.remove_container(request),
    )
    .await;
}

/// StopPodSandbox then RemovePodSandbox.
pub async fn stop_and_remove_pod(c: &mut Clients, id: &str) {
    let request = StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    };
    answer(
        &format!("StopPodSandbox {id}"),
        Duration::ZERO,
        c.runtime.stop_pod_sandbox(request),
    )
    .await;
    let request = RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    };
    answer(
        &format!("RemovePodSandbox {id}"),
        Duration::ZERO,
        c.runtime.remove_pod_sandbox(request),
    )
    .await;
}

/// The text of a CRI log file's records (`<time> <stream> <tag> <text>`): (stream, text).
pub fn log_records(path: &Path) -> Vec<(String, String)> {
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

//! `vpod-crictl`: a small CRI client for the flows of crictl that the demo and the
//! benchmarks use (Debian bookworm ships no cri-tools). Same verbs and config files as
//! crictl; see `vpod-crictl --help` ([`args`]).

mod args;
mod config_json;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tonic::transport::Channel;
use vpod_proto::cri::image_service_client::ImageServiceClient;
use vpod_proto::cri::runtime_service_client::RuntimeServiceClient;
use vpod_proto::cri::*;

use args::{CommandLine, Verb};
use config_json::from_crictl_json;

const DEFAULT_ENDPOINT: &str = "unix:///run/vpod/cri.sock";

struct Cli {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    timings: bool,
}

impl Cli {
    /// Runs `call`, printing its time under `--timings`.
    async fn timed<T, F>(&self, what: &str, call: F) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let result = call.await;
        if self.timings {
            eprintln!(
                "vpod-crictl: {what} {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        result.map(tonic::Response::into_inner)
    }
}

/// A gRPC failure as one line: the call, the status code and the server's message.
fn rpc_error(what: &str) -> impl FnOnce(tonic::Status) -> anyhow::Error + '_ {
    move |status| anyhow::anyhow!("{what} failed: {:?}: {}", status.code(), status.message())
}

/// The socket path of `unix:///PATH` (or a plain path).
fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        bail!("the runtime endpoint {endpoint:?} is not unix:///ABSOLUTE/PATH");
    }
    Ok(PathBuf::from(path))
}

/// A channel to the CRI server on the unix socket of `endpoint`.
async fn channel(endpoint: &str) -> Result<Channel> {
    let socket = socket_path(endpoint)?;
    vpod_proto::client::unix_channel(&socket)
        .await
        .with_context(|| format!("connecting to {}", socket.display()))
}

async fn connect(runtime: &str, image: Option<&str>, timings: bool) -> Result<Cli> {
    let runtime_channel = channel(runtime).await?;
    let image_channel = match image {
        Some(image) if image != runtime => channel(image).await?,
        _ => runtime_channel.clone(),
    };
    Ok(Cli {
        runtime: RuntimeServiceClient::new(runtime_channel),
        images: ImageServiceClient::new(image_channel),
        timings,
    })
}

fn read_config<T: serde::de::DeserializeOwned>(path: &str, what: &'static str) -> Result<T> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    };
    from_crictl_json(&text, what).with_context(|| format!("reading {path}"))
}

fn state_name(name: &str) -> String {
    let short = name
        .trim_start_matches("CONTAINER_")
        .trim_start_matches("SANDBOX_");
    if short == "NOTREADY" {
        return "NotReady".into();
    }
    let mut out = short.to_ascii_lowercase();
    if let Some(first) = out.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    out
}

fn age(created_ns: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let secs = (now - created_ns).max(0) / 1_000_000_000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a CRI log file's records: stdout records on stdout, stderr ones on stderr,
/// partial (`P`) records joined to the next.
fn print_log(path: &str) -> Result<()> {
    use std::io::Write as _;
    let text = std::fs::read(path).with_context(|| format!("reading the log file {path}"))?;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(4, |&b| b == b' ');
        let (_time, stream, tag) = (parts.next(), parts.next(), parts.next());
        let body = parts.next().unwrap_or_default();
        let sink: &mut dyn std::io::Write = if stream == Some(b"stderr".as_slice()) {
            &mut err
        } else {
            &mut out
        };
        sink.write_all(body)?;
        if tag != Some(b"P".as_slice()) {
            sink.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

async fn container_status(
    cli: &Cli,
    container_id: String,
    verbose: bool,
) -> Result<ContainerStatusResponse> {
    let request = ContainerStatusRequest {
        container_id,
        verbose,
    };
    cli.timed(
        "ContainerStatus",
        cli.runtime.clone().container_status(request),
    )
    .await
    .map_err(rpc_error("ContainerStatus"))
}

/// Runs one verb; the process's exit status (exec passes the command's on).
async fn run(cli: &mut Cli, verb: Verb) -> Result<i32> {
    match verb {
        Verb::Version => {
            let v = cli
                .timed(
                    "Version",
                    cli.runtime.clone().version(VersionRequest::default()),
                )
                .await
                .map_err(rpc_error("Version"))?;
            println!("Version:  {}", v.version);
            println!("RuntimeName:  {}", v.runtime_name);
            println!("RuntimeVersion:  {}", v.runtime_version);
            println!("RuntimeApiVersion:  {}", v.runtime_api_version);
        }
        Verb::Pull { image } => {
            let request = PullImageRequest {
                image: Some(ImageSpec {
                    image,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let r = cli
                .timed("PullImage", cli.images.clone().pull_image(request))
                .await
                .map_err(rpc_error("PullImage"))?;
            println!("Image is up to date for {}", r.image_ref);
        }
        Verb::Images { quiet } => {
            let r = cli
                .timed(
                    "ListImages",
                    cli.images.clone().list_images(ListImagesRequest::default()),
                )
                .await
                .map_err(rpc_error("ListImages"))?;
            if quiet {
                r.images.iter().for_each(|i| println!("{}", i.id));
            } else {
                println!("{:<72} {:<40} {:>10}", "IMAGE ID", "REPO TAGS", "SIZE");
                for i in &r.images {
                    println!("{:<72} {:<40} {:>10}", i.id, i.repo_tags.join(","), i.size);
                }
            }
        }
        Verb::Rmi { images } => {
            for image in images {
                let request = RemoveImageRequest {
                    image: Some(ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                };
                cli.timed("RemoveImage", cli.images.clone().remove_image(request))
                    .await
                    .map_err(rpc_error("RemoveImage"))?;
                println!("Deleted: {image}");
            }
        }
        Verb::Runp { runtime, config } => {
            let config: PodSandboxConfig = read_config(&config, "pod sandbox config")?;
            let request = RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: runtime.unwrap_or_default(),
            };
            let r = cli
                .timed(
                    "RunPodSandbox",
                    cli.runtime.clone().run_pod_sandbox(request),
                )
                .await
                .map_err(rpc_error("RunPodSandbox"))?;
            println!("{}", r.pod_sandbox_id);
        }
        Verb::Pods { quiet } => {
            let r = cli
                .timed(
                    "ListPodSandbox",
                    cli.runtime
                        .clone()
                        .list_pod_sandbox(ListPodSandboxRequest::default()),
                )
                .await
                .map_err(rpc_error("ListPodSandbox"))?;
            if quiet {
                r.items.iter().for_each(|p| println!("{}", p.id));
            } else {
                println!(
                    "{:<32}  {:<10}  {:<8}  {:<24}  {:<16}  ATTEMPT",
                    "POD ID", "CREATED", "STATE", "NAME", "NAMESPACE"
                );
                for p in &r.items {
                    let meta = p.metadata.clone().unwrap_or_default();
                    let state = PodSandboxState::try_from(p.state)
                        .map(|s| state_name(s.as_str_name()))
                        .unwrap_or_else(|_| "Unknown".into());
                    println!(
                        "{:<32}  {:<10}  {:<8}  {:<24}  {:<16}  {}",
                        p.id,
                        age(p.created_at),
                        state,
                        meta.name,
                        meta.namespace,
                        meta.attempt
                    );
                }
            }
        }
        Verb::Inspectp { pod } => {
            let request = PodSandboxStatusRequest {
                pod_sandbox_id: pod,
                verbose: true,
            };
            let r = cli
                .timed(
                    "PodSandboxStatus",
                    cli.runtime.clone().pod_sandbox_status(request),
                )
                .await
                .map_err(rpc_error("PodSandboxStatus"))?;
            print_json(&r)?;
        }
        Verb::Stopp { pods } => {
            for pod in pods {
                let request = StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                };
                cli.timed(
                    "StopPodSandbox",
                    cli.runtime.clone().stop_pod_sandbox(request),
                )
                .await
                .map_err(rpc_error("StopPodSandbox"))?;
                println!("Stopped sandbox {pod}");
            }
        }
        Verb::Rmp { pods } => {
            for pod in pods {
                let request = RemovePodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                };
                cli.timed(
                    "RemovePodSandbox",
                    cli.runtime.clone().remove_pod_sandbox(request),
                )
                .await
                .map_err(rpc_error("RemovePodSandbox"))?;
                println!("Removed sandbox {pod}");
            }
        }
        Verb::Create {
            pod,
            container_config,
            pod_config,
        } => {
            let config: ContainerConfig = read_config(&container_config, "container config")?;
            let sandbox: PodSandboxConfig = read_config(&pod_config, "pod sandbox config")?;
            let request = CreateContainerRequest {
                pod_sandbox_id: pod,
                config: Some(config),
                sandbox_config: Some(sandbox),
            };
            let r = cli
                .timed(
                    "CreateContainer",
                    cli.runtime.clone().create_container(request),
                )
                .await
                .map_err(rpc_error("CreateContainer"))?;
            println!("{}", r.container_id);
        }
        Verb::Start { containers } => {
            for id in containers {
                let request = StartContainerRequest {
                    container_id: id.clone(),
                };
                cli.timed(
                    "StartContainer",
                    cli.runtime.clone().start_container(request),
                )
                .await
                .map_err(rpc_error("StartContainer"))?;
                println!("{id}");
            }
        }
        Verb::Ps { all, quiet, pod } => {
            let filter = ContainerFilter {
                pod_sandbox_id: pod.unwrap_or_default(),
                state: (!all).then_some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            };
            let request = ListContainersRequest {
                filter: Some(filter),
            };
            let r = cli
                .timed(
                    "ListContainers",
                    cli.runtime.clone().list_containers(request),
                )
                .await
                .map_err(rpc_error("ListContainers"))?;
            if quiet {
                r.containers.iter().for_each(|c| println!("{}", c.id));
            } else {
                println!(
                    "{:<32}  {:<24}  {:<10}  {:<8}  {:<16}  {:<7}  POD ID",
                    "CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT"
                );
                for c in &r.containers {
                    let meta = c.metadata.clone().unwrap_or_default();
                    let state = ContainerState::try_from(c.state)
                        .map(|s| state_name(s.as_str_name()))
                        .unwrap_or_else(|_| "Unknown".into());
                    let image: String = c.image_ref.chars().take(24).collect();
                    println!(
                        "{:<32}  {:<24}  {:<10}  {:<8}  {:<16}  {:<7}  {}",
                        c.id,
                        image,
                        age(c.created_at),
                        state,
                        meta.name,
                        meta.attempt,
                        c.pod_sandbox_id
                    );
                }
            }
        }
        Verb::Inspect { container } => {
            print_json(&container_status(cli, container, true).await?)?;
        }
        Verb::Logs { container } => {
            let status = container_status(cli, container, false)
                .await?
                .status
                .context("the runtime returned no status")?;
            if status.log_path.is_empty() {
                bail!("the container has no log file (its config set no log_path)");
            }
            print_log(&status.log_path)?;
        }
        Verb::Exec {
            sync: _,
            timeout,
            mut words,
        } => {
            let cmd = words.split_off(1);
            let request = ExecSyncRequest {
                container_id: words.remove(0),
                cmd,
                timeout,
            };
            let r = cli
                .timed("ExecSync", cli.runtime.clone().exec_sync(request))
                .await
                .map_err(rpc_error("ExecSync"))?;
            use std::io::Write as _;
            std::io::stdout().write_all(&r.stdout)?;
            std::io::stderr().write_all(&r.stderr)?;
            return Ok(r.exit_code);
        }
        Verb::Stop {
            timeout,
            containers,
        } => {
            for id in containers {
                let request = StopContainerRequest {
                    container_id: id.clone(),
                    timeout,
                };
                cli.timed("StopContainer", cli.runtime.clone().stop_container(request))
                    .await
                    .map_err(rpc_error("StopContainer"))?;
                println!("{id}");
            }
        }
        Verb::Rm { containers } => {
            for id in containers {
                let request = RemoveContainerRequest {
                    container_id: id.clone(),
                };
                cli.timed(
                    "RemoveContainer",
                    cli.runtime.clone().remove_container(request),
                )
                .await
                .map_err(rpc_error("RemoveContainer"))?;
                println!("{id}");
            }
        }
        Verb::Update {
            cpu_share,
            cpu_quota,
            cpu_period,
            memory,
            containers,
        } => {
            // Zero: keep the container's value (clap has refused a call that changes none).
            let linux = LinuxContainerResources {
                cpu_shares: cpu_share.unwrap_or(0),
                cpu_quota: cpu_quota.unwrap_or(0),
                cpu_period: cpu_period.unwrap_or(0),
                memory_limit_in_bytes: memory.unwrap_or(0),
                ..Default::default()
            };
            for id in containers {
                let request = UpdateContainerResourcesRequest {
                    container_id: id.clone(),
                    linux: Some(linux.clone()),
                    ..Default::default()
                };
                cli.timed(
                    "UpdateContainerResources",
                    cli.runtime.clone().update_container_resources(request),
                )
                .await
                .map_err(rpc_error("UpdateContainerResources"))?;
                println!("{id}");
            }
        }
    }
    Ok(0)
}

async fn main_async(args: CommandLine) -> Result<i32> {
    let endpoint = args.runtime_endpoint.unwrap_or_else(|| {
        std::env::var("CONTAINER_RUNTIME_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
    });
    let image_endpoint = args.image_endpoint.or_else(|| {
        std::env::var("IMAGE_SERVICE_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
    });
    let mut cli = tokio::time::timeout(
        Duration::from_secs(30),
        connect(&endpoint, image_endpoint.as_deref(), args.timings),
    )
    .await
    .context("connecting to the runtime took over 30 s")??;
    run(&mut cli, args.verb).await
}

fn main() -> std::process::ExitCode {
    let args = CommandLine::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(main_async(args)));
    match result {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            eprintln!("vpod-crictl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_state_names_read_like_crictls() {
        assert_eq!(
            socket_path("unix:///run/vpod/cri.sock").unwrap(),
            PathBuf::from("/run/vpod/cri.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
        assert_eq!(state_name("CONTAINER_RUNNING"), "Running");
        assert_eq!(state_name("SANDBOX_NOTREADY"), "NotReady");
    }
}

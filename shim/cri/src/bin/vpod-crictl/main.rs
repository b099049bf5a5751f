//! `vpod-crictl`: a small CRI client for the flows of crictl that the demo and the
//! benchmarks use (Debian bookworm ships no cri-tools). Same verbs and config files as
//! crictl; see [`USAGE`].

mod config_json;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tonic::transport::Channel;
use vpod_proto::cri::image_service_client::ImageServiceClient;
use vpod_proto::cri::runtime_service_client::RuntimeServiceClient;
use vpod_proto::cri::*;

use config_json::from_crictl_json;

const USAGE: &str = "\
usage: vpod-crictl [--runtime-endpoint unix:///PATH] [--image-endpoint unix:///PATH]
                   [--timings] COMMAND [ARGS]

The runtime endpoint defaults to $CONTAINER_RUNTIME_ENDPOINT, else
unix:///run/vpod/cri.sock; the image endpoint to $IMAGE_SERVICE_ENDPOINT, else the
runtime endpoint.
--timings prints each call's time on stderr (`vpod-crictl: <call> <ms> ms`).

  version                               runtime name and versions
  pull IMAGE                            pull an image, print its id
  images [-q]                           list images
  rmi IMAGE...                          remove images
  runp POD.json                         run a pod sandbox, print its id
  pods [-q]                             list pod sandboxes
  inspectp POD                          a pod's status as JSON
  stopp POD...                          stop pods
  rmp POD...                            remove pods (running ones are stopped first)
  create POD CONTAINER.json POD.json    create a container in a pod, print its id
  start CONTAINER...                    start containers
  ps [-a] [-q] [--pod POD]              list containers (running ones unless -a)
  inspect CONTAINER                     a container's status as JSON
  logs CONTAINER                        a container's log (read from its log file)
  exec [-s] [--timeout SECS] CONTAINER CMD [ARG...]
                                        run a command in a container, wait for it
  stop [--timeout SECS] CONTAINER...    stop containers (SIGTERM, SIGKILL after SECS)
  rm CONTAINER...                       remove containers
  update [--cpu-share N] [--cpu-quota N] [--cpu-period N] [--memory BYTES] CONTAINER...
                                        change running containers' limits (limits
                                        not given keep their values)

POD.json and CONTAINER.json are crictl's files: the CRI PodSandboxConfig and
ContainerConfig with proto field names (log_directory, or logDirectory); fields left out
take their zero values; enums are numbers. `-` reads the file from stdin.";

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

/// Options of one verb: flags (with or without a value) then positional words.
struct VerbArgs {
    flags: Vec<(String, Option<String>)>,
    words: Vec<String>,
}

impl VerbArgs {
    /// Splits `args`; `valued` flags take the next word; flags end at the first word when
    /// `stop_at_word` (exec's command keeps its own flags).
    fn parse(args: &[String], valued: &[&str], stop_at_word: bool) -> Result<VerbArgs> {
        let mut parsed = VerbArgs {
            flags: Vec::new(),
            words: Vec::new(),
        };
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            if arg == "--" {
                parsed.words.extend(rest.cloned());
                break;
            }
            if arg.starts_with('-') && arg.len() > 1 {
                let (flag, inline) = match arg.split_once('=') {
                    Some((f, v)) => (f.to_string(), Some(v.to_string())),
                    None => (arg.clone(), None),
                };
                let value = if valued.contains(&flag.as_str()) {
                    Some(match inline {
                        Some(v) => v,
                        None => rest
                            .next()
                            .cloned()
                            .context(format!("{flag} needs a value"))?,
                    })
                } else {
                    None
                };
                parsed.flags.push((flag, value));
                continue;
            }
            parsed.words.push(arg.clone());
            if stop_at_word {
                parsed.words.extend(rest.cloned());
                break;
            }
        }
        Ok(parsed)
    }

    fn has(&self, names: &[&str]) -> bool {
        self.flags.iter().any(|(f, _)| names.contains(&f.as_str()))
    }

    fn value(&self, names: &[&str]) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(f, _)| names.contains(&f.as_str()))
            .and_then(|(_, v)| v.as_deref())
    }

    /// Refuses flags outside `known`.
    fn only(&self, known: &[&str]) -> Result<()> {
        match self
            .flags
            .iter()
            .find(|(f, _)| !known.contains(&f.as_str()))
        {
            Some((flag, _)) => bail!("unknown flag {flag}\n{USAGE}"),
            None => Ok(()),
        }
    }

    fn exactly(&self, n: usize, what: &str) -> Result<&[String]> {
        if self.words.len() != n {
            bail!("expected {what}\n{USAGE}");
        }
        Ok(&self.words)
    }

    fn at_least_one(&self, what: &str) -> Result<&[String]> {
        if self.words.is_empty() {
            bail!("expected {what}\n{USAGE}");
        }
        Ok(&self.words)
    }
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

/// Runs one verb; the process's exit status (exec passes the command's on).
async fn run(cli: &mut Cli, verb: &str, args: &[String]) -> Result<i32> {
    match verb {
        "version" => {
            VerbArgs::parse(args, &[], false)?.exactly(0, "no arguments")?;
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
        "pull" => {
            let a = VerbArgs::parse(args, &[], false)?;
            let image = &a.exactly(1, "IMAGE")?[0];
            let request = PullImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
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
        "images" => {
            let a = VerbArgs::parse(args, &[], false)?;
            a.only(&["-q", "--quiet"])?;
            let r = cli
                .timed(
                    "ListImages",
                    cli.images.clone().list_images(ListImagesRequest::default()),
                )
                .await
                .map_err(rpc_error("ListImages"))?;
            if a.has(&["-q", "--quiet"]) {
                r.images.iter().for_each(|i| println!("{}", i.id));
            } else {
                println!("{:<72} {:<40} {:>10}", "IMAGE ID", "REPO TAGS", "SIZE");
                for i in &r.images {
                    println!("{:<72} {:<40} {:>10}", i.id, i.repo_tags.join(","), i.size);
                }
            }
        }
        "rmi" => {
            for image in VerbArgs::parse(args, &[], false)?.at_least_one("IMAGE...")? {
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
        "runp" => {
            let a = VerbArgs::parse(args, &["--runtime"], false)?;
            let path = &a.exactly(1, "POD.json")?[0];
            let config: PodSandboxConfig = read_config(path, "pod sandbox config")?;
            let request = RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: a.value(&["--runtime"]).unwrap_or_default().to_string(),
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
        "pods" => {
            let a = VerbArgs::parse(args, &[], false)?;
            a.only(&["-q", "--quiet"])?;
            let r = cli
                .timed(
                    "ListPodSandbox",
                    cli.runtime
                        .clone()
                        .list_pod_sandbox(ListPodSandboxRequest::default()),
                )
                .await
                .map_err(rpc_error("ListPodSandbox"))?;
            if a.has(&["-q", "--quiet"]) {
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
        "inspectp" => {
            let a = VerbArgs::parse(args, &[], false)?;
            let request = PodSandboxStatusRequest {
                pod_sandbox_id: a.exactly(1, "POD")?[0].clone(),
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
        "stopp" | "rmp" => {
            for pod in VerbArgs::parse(args, &[], false)?.at_least_one("POD...")? {
                if verb == "stopp" {
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
                } else {
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
        }
        "create" => {
            let a = VerbArgs::parse(args, &[], false)?;
            let words = a.exactly(3, "POD CONTAINER.json POD.json")?;
            let config: ContainerConfig = read_config(&words[1], "container config")?;
            let pod: PodSandboxConfig = read_config(&words[2], "pod sandbox config")?;
            let request = CreateContainerRequest {
                pod_sandbox_id: words[0].clone(),
                config: Some(config),
                sandbox_config: Some(pod),
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
        "start" => {
            for id in VerbArgs::parse(args, &[], false)?.at_least_one("CONTAINER...")? {
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
        "ps" => {
            let a = VerbArgs::parse(args, &["--pod", "-p"], false)?;
            a.only(&["-a", "--all", "-q", "--quiet", "--pod", "-p"])?;
            let filter = ContainerFilter {
                pod_sandbox_id: a.value(&["--pod", "-p"]).unwrap_or_default().to_string(),
                state: (!a.has(&["-a", "--all"])).then_some(ContainerStateValue {
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
            if a.has(&["-q", "--quiet"]) {
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
        "inspect" | "logs" => {
            let a = VerbArgs::parse(args, &[], false)?;
            let request = ContainerStatusRequest {
                container_id: a.exactly(1, "CONTAINER")?[0].clone(),
                verbose: verb == "inspect",
            };
            let r = cli
                .timed(
                    "ContainerStatus",
                    cli.runtime.clone().container_status(request),
                )
                .await
                .map_err(rpc_error("ContainerStatus"))?;
            if verb == "inspect" {
                print_json(&r)?;
            } else {
                let status = r.status.context("the runtime returned no status")?;
                if status.log_path.is_empty() {
                    bail!("the container has no log file (its config set no log_path)");
                }
                print_log(&status.log_path)?;
            }
        }
        "exec" => {
            let a = VerbArgs::parse(args, &["--timeout"], true)?;
            a.only(&["-s", "--sync", "--timeout"])?;
            if a.words.len() < 2 {
                bail!("expected CONTAINER CMD [ARG...]\n{USAGE}");
            }
            let timeout = match a.value(&["--timeout"]) {
                Some(t) => t.parse().context("--timeout needs whole seconds")?,
                None => 0,
            };
            let request = ExecSyncRequest {
                container_id: a.words[0].clone(),
                cmd: a.words[1..].to_vec(),
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
        "stop" | "rm" => {
            let a = VerbArgs::parse(args, &["--timeout"], false)?;
            let timeout: i64 = match a.value(&["--timeout"]) {
                Some(t) => t.parse().context("--timeout needs whole seconds")?,
                None => 0,
            };
            for id in a.at_least_one("CONTAINER...")? {
                if verb == "stop" {
                    let request = StopContainerRequest {
                        container_id: id.clone(),
                        timeout,
                    };
                    cli.timed("StopContainer", cli.runtime.clone().stop_container(request))
                        .await
                        .map_err(rpc_error("StopContainer"))?;
                } else {
                    let request = RemoveContainerRequest {
                        container_id: id.clone(),
                    };
                    cli.timed(
                        "RemoveContainer",
                        cli.runtime.clone().remove_container(request),
                    )
                    .await
                    .map_err(rpc_error("RemoveContainer"))?;
                }
                println!("{id}");
            }
        }
        "update" => {
            let valued = ["--cpu-share", "--cpu-quota", "--cpu-period", "--memory"];
            let a = VerbArgs::parse(args, &valued, false)?;
            a.only(&valued)?;
            let number = |flag: &str| -> Result<i64> {
                match a.value(&[flag]) {
                    None => Ok(0),
                    Some(v) => match v.parse::<i64>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => bail!("{flag} needs a positive whole number, not {v:?}"),
                    },
                }
            };
            let linux = LinuxContainerResources {
                cpu_shares: number("--cpu-share")?,
                cpu_quota: number("--cpu-quota")?,
                cpu_period: number("--cpu-period")?,
                memory_limit_in_bytes: number("--memory")?,
                ..Default::default()
            };
            if linux == LinuxContainerResources::default() {
                bail!("nothing to update: give --cpu-share, --cpu-quota, --cpu-period or --memory\n{USAGE}");
            }
            for id in a.at_least_one("CONTAINER...")? {
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
        _ => bail!("unknown command {verb:?}\n{USAGE}"),
    }
    Ok(0)
}

async fn main_async() -> Result<i32> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut endpoint = std::env::var("CONTAINER_RUNTIME_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
    let mut image_endpoint = std::env::var("IMAGE_SERVICE_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    let mut timings = false;
    let mut rest = args.iter();
    let verb = loop {
        let Some(arg) = rest.next() else {
            bail!("{USAGE}");
        };
        match arg.split_once('=') {
            Some(("--runtime-endpoint" | "-r", value)) => endpoint = value.to_string(),
            Some(("--image-endpoint" | "-i", value)) => image_endpoint = Some(value.to_string()),
            _ => match arg.as_str() {
                "--runtime-endpoint" | "-r" => {
                    endpoint = rest
                        .next()
                        .context("--runtime-endpoint needs a value")?
                        .clone()
                }
                "--image-endpoint" | "-i" => {
                    image_endpoint = Some(
                        rest.next()
                            .context("--image-endpoint needs a value")?
                            .clone(),
                    )
                }
                "--timings" => timings = true,
                "-h" | "--help" | "help" => {
                    println!("{USAGE}");
                    return Ok(0);
                }
                flag if flag.starts_with('-') => bail!("unknown flag {flag}\n{USAGE}"),
                verb => break verb.to_string(),
            },
        }
    };
    let args: Vec<String> = rest.cloned().collect();
    let mut cli = tokio::time::timeout(
        Duration::from_secs(30),
        connect(&endpoint, image_endpoint.as_deref(), timings),
    )
    .await
    .context("connecting to the runtime took over 30 s")??;
    run(&mut cli, &verb, &args).await
}

fn main() -> std::process::ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(main_async()));
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

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn exec_keeps_the_commands_own_flags() {
        let a =
            VerbArgs::parse(&words("-s --timeout 5 abc ls -l /"), &["--timeout"], true).unwrap();
        assert_eq!(a.value(&["--timeout"]), Some("5"));
        assert!(a.has(&["-s"]));
        assert_eq!(a.words, words("abc ls -l /"));
    }

    #[test]
    fn endpoints_and_state_names_read_like_crictls() {
        assert_eq!(
            socket_path("unix:///run/vpod/cri.sock").unwrap(),
            PathBuf::from("/run/vpod/cri.sock")
        );
        assert!(socket_path("tcp://127.0.0.1:1").is_err());
        assert_eq!(state_name("CONTAINER_RUNNING"), "Running");
        assert_eq!(state_name("SANDBOX_NOTREADY"), "NotReady");
        let a = VerbArgs::parse(&words("--pod=p1 -a"), &["--pod"], false).unwrap();
        assert_eq!(a.value(&["--pod", "-p"]), Some("p1"));
        assert!(a.only(&["-a", "--pod"]).is_ok() && a.only(&["-a"]).is_err());
    }
}

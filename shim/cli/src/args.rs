//! The command line of `vpod`: what each subcommand takes, as clap reads it.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use vpod_image::runtime_spec::ProcessOverrides;

use crate::network::Publish;
use crate::RunArgs;

const DEFAULT_ROOT: &str = "/var/lib/vpod";

const AFTER_HELP: &str = "\
vpod exits with the container's exit code (128 + the signal when it was killed; 125 when vpod
itself failed, 2 for a bad command line).

Assets: vpod-vmm next to this binary, build/vmlinux and build/pod-initrd.img of the checkout
holding this binary (or $VPOD_HOME); `vpod run --vmm, --kernel, --initrd` override them.";

/// vpod: runs a container in its own micro-VM.
#[derive(Debug, Parser)]
#[command(
    name = "vpod",
    arg_required_else_help = true,
    // A flag given twice keeps its last value (in every subcommand: a global setting).
    args_override_self = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: VpodCommand,
}

#[derive(Debug, Subcommand)]
pub enum VpodCommand {
    /// Boot a pod VM, run a container in it with its output streamed to ours, exit with its
    /// status
    Run(Box<RunCommand>),
    /// Run a process in a container of a running pod and exit with its status
    Exec(ExecCommand),
    /// Print a detached container's output: stdout to stdout, stderr to stderr
    Logs(LogsCommand),
    /// Stop pods and remove what is left of them
    Rm(RmCommand),
    /// List the pods under the state root
    Ps(PsCommand),
    /// Pull an image from its registry into the layer store, converting each layer as it
    /// downloads
    Pull(PullCommand),
}

const RUN_AFTER_HELP: &str = "\
IMAGE is oci:PATH[:TAG], or a registry reference with a registry, tag or digest in it
(busybox:1.36, registry.lan:5000/app, library/busybox), pulled first if the store lacks it;
without it, the default image in build/images/default (made by `make image`). Any other
first word (busybox, /bin/sh) is the command's. SIGINT and SIGTERM are
forwarded to the container as SIGTERM, followed by SIGKILL after --stop-timeout.
-h is --hostname, as in `docker run`; help is --help.";

/// `vpod run`. `-h` is `--hostname` here, as in `docker run`, so only `--help` asks for help.
#[derive(Debug, Args)]
#[command(disable_help_flag = true, after_help = RUN_AFTER_HELP)]
pub struct RunCommand {
    /// Leave the pod running and print the container's id (for a new pod, the pod's id)
    #[arg(short = 'd', long)]
    detach: bool,
    /// Add the container to this running pod instead of booting one
    #[arg(long, value_name = "ID")]
    pod: Option<String>,
    /// The container's name (default: the pod's id; in --pod, a random id)
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// vCPUs of the pod VM
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: u8,
    /// Memory of the pod VM
    #[arg(short = 'm', long, value_name = "MiB", default_value_t = 256)]
    memory: u64,
    /// An environment variable, added to the image's; repeatable
    #[arg(short = 'e', long, value_name = "K=V")]
    env: Vec<String>,
    /// The working directory
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<String>,
    /// The user and group: numbers, or names looked up in the image's /etc/passwd and
    /// /etc/group
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// The container's host name, written to its /etc/hostname and /etc/hosts
    #[arg(short = 'h', long, value_name = "NAME")]
    hostname: Option<String>,
    /// A line of the container's /etc/hosts; repeatable
    #[arg(long, value_name = "HOST:IP", value_parser = host_and_ip)]
    add_host: Vec<(String, String)>,
    /// A name server of the container's /etc/resolv.conf; repeatable
    #[arg(long, value_name = "IP", value_parser = ip_address)]
    dns: Vec<String>,
    /// Replaces the image's Entrypoint, and then also its Cmd (as in `docker run`)
    #[arg(long, value_name = "PROG")]
    entrypoint: Option<String>,
    /// The pod's network: none (loopback only), or bridge: vpod's CNI bridge (10.89.0.0/16,
    /// NAT to the outside; the configuration is <root>/cni/net.d)
    #[arg(long, value_name = "none|bridge", default_value = "none", value_parser = ["none", "bridge"])]
    network: String,
    /// Forward a host port to the container (on the bridge network); repeatable
    #[arg(short = 'p', long, value_name = "[IP:]HOST:CONTAINER[/PROTO]")]
    publish: Vec<Publish>,
    /// The state root: the layer store and the pods
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Seconds from the SIGTERM that vpod forwards to the SIGKILL
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    stop_timeout: u64,
    /// Print where the time went on stderr at the end
    #[arg(long)]
    timings: bool,
    /// The VMM binary [default: vpod-vmm next to vpod]
    #[arg(long, value_name = "PATH")]
    vmm: Option<PathBuf>,
    /// The guest kernel [default: build/vmlinux]
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// The guest initrd [default: build/pod-initrd.img]
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Run the VMM unconfined, as root (development only: by default it runs jailed, in
    /// namespaces of its own, as an unprivileged user, seccomp-filtered)
    #[arg(long)]
    no_jail: bool,
    /// Print help
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// IMAGE (oci:PATH[:TAG]), then the command and its arguments; `--` may come before either
    #[arg(value_names = ["IMAGE", "CMD"], trailing_var_arg = true)]
    words: Vec<String>,
    /// Taken out of `words` by [`Cli::try_from_argv`].
    #[arg(skip)]
    image: Option<String>,
}

const EXEC_AFTER_HELP: &str = "\
Without -i or -t the process's stdin is /dev/null and its output is printed when it ends.
-i streams our stdin to it (our end of input closes its stdin); -t gives it a terminal
(needs one on our stdin: with -i it is put in raw mode for the session, and window size
changes follow). vpod exits with the process's status (128 + the signal when it was killed,
137 when --timeout killed it).";

/// `vpod exec`.
#[derive(Debug, Args)]
#[command(after_help = EXEC_AFTER_HELP)]
pub struct ExecCommand {
    /// Stream our stdin to the process (its end closes the process's stdin)
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run the process on a pseudo-terminal, sized and resized as ours (stdin must be one)
    #[arg(short = 't', long)]
    pub tty: bool,
    /// The state root
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Seconds after which the process is killed (fractions allowed; 0: no limit)
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = seconds)]
    pub timeout: Duration,
    /// The pod, and the container in it (default: the one named as the pod)
    #[arg(value_name = "POD[:CONTAINER]")]
    pub target: String,
    /// The command and its arguments, after `--`
    #[arg(value_name = "CMD", last = true, required = true)]
    pub command: Vec<String>,
}

/// `vpod logs`.
#[derive(Debug, Args)]
pub struct LogsCommand {
    /// Follow the output until the container ends
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The state root
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// A container started with `vpod run -d` (its name or its pod's id), or POD:CONTAINER
    #[arg(value_name = "NAME|POD:CONTAINER")]
    pub target: String,
}

/// `vpod rm`.
#[derive(Debug, Args)]
pub struct RmCommand {
    /// The state root
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// The pods to stop
    #[arg(value_name = "POD", required = true)]
    pub pods: Vec<String>,
}

/// `vpod pull`.
#[derive(Debug, Args)]
pub struct PullCommand {
    /// The state root
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// A registry (`host[:port]`) reached over plain HTTP; repeatable (a loopback registry
    /// needs none)
    #[arg(long, value_name = "HOST[:PORT]")]
    pub insecure_registry: Vec<String>,
    /// Layers fetched and converted at the same time
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_concurrent_downloads: usize,
    /// The image: a registry reference (`busybox`, `registry.lan:5000/app:v1`,
    /// `repo@sha256:...`)
    #[arg(value_name = "IMAGE")]
    pub image: String,
}

/// `vpod ps`.
#[derive(Debug, Args)]
pub struct PsCommand {
    /// The state root
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
}

impl Cli {
    /// Parses the process's arguments; a bad command line ends the process with clap's
    /// message and status 2.
    pub fn parse_with_image() -> Cli {
        Cli::try_from_argv(std::env::args_os().collect()).unwrap_or_else(|e| e.exit())
    }

    /// IMAGE is the first word of `run` when it starts with `oci:` and no `--` came before
    /// it; flags after it are still the run's, so the words after it are parsed again.
    fn try_from_argv(argv: Vec<OsString>) -> Result<Cli, clap::Error> {
        let mut cli = Cli::try_parse_from(&argv)?;
        let VpodCommand::Run(run) = &cli.command else {
            return Ok(cli);
        };
        let Some(first) = run.words.first().filter(|w| is_image_word(w)) else {
            return Ok(cli);
        };
        // Everything from the first word on is kept word for word (trailing_var_arg), so the
        // words are the end of argv.
        let image_at = argv.len() - run.words.len();
        if argv[image_at - 1] == "--" {
            return Ok(cli);
        }
        let image = first.clone();
        let without_image = argv[..image_at].iter().chain(&argv[image_at + 1..]);
        cli = Cli::try_parse_from(without_image)?;
        if let VpodCommand::Run(run) = &mut cli.command {
            run.image = Some(image);
        }
        Ok(cli)
    }
}

/// Whether `word`, the first of `vpod run`'s words, names an image rather than a command:
/// `oci:PATH[:TAG]`, or a registry reference that shows a registry, a tag or a digest
/// (`busybox:1.36`, `registry.lan:5000/app`, `library/busybox`, `app@sha256:...`). A bare
/// name (`busybox`) and a path (`/bin/sh`, `./run`) are commands.
pub fn is_image_word(word: &str) -> bool {
    if word.starts_with("oci:") {
        return true;
    }
    if word.starts_with(['/', '.', '-']) || !word.contains(['/', ':', '@']) {
        return false;
    }
    vpod_image::registry::ImageReference::parse(word).is_ok()
}

impl RunCommand {
    pub fn into_run_args(self) -> RunArgs {
        RunArgs {
            vcpus: self.vcpus,
            memory_mib: self.memory,
            overrides: ProcessOverrides {
                entrypoint: self.entrypoint.map(|e| vec![e]),
                command: self.words,
                env: self.env,
                workdir: self.workdir,
                user: self.user,
            },
            root: self.root,
            stop_timeout: Duration::from_secs(self.stop_timeout),
            timings: self.timings,
            image: self.image,
            vmm: self.vmm,
            kernel: self.kernel,
            initrd: self.initrd,
            jail: !self.no_jail,
            detach: self.detach,
            pod: self.pod,
            name: self.name,
            hostname: self.hostname,
            add_hosts: self.add_host,
            dns: self.dns,
            network: self.network == "bridge" || !self.publish.is_empty(),
            publish: self.publish,
        }
    }
}

fn host_and_ip(value: &str) -> Result<(String, String), String> {
    value
        .split_once(':')
        .filter(|(host, ip)| !host.is_empty() && ip.parse::<IpAddr>().is_ok())
        .map(|(host, ip)| (host.to_string(), ip.to_string()))
        .ok_or_else(|| "takes HOST:IP".to_string())
}

/// The address as it was written, once it reads as one.
fn ip_address(value: &str) -> Result<String, String> {
    value
        .parse::<IpAddr>()
        .map(|_| value.to_string())
        .map_err(|_| "takes an IP address".to_string())
}

fn seconds(value: &str) -> Result<Duration, String> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| "takes seconds (0 or more)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::try_from_argv(line.split_whitespace().map(OsString::from).collect())
    }

    fn run(line: &str) -> RunArgs {
        match parse(line).expect("parses").command {
            VpodCommand::Run(run) => run.into_run_args(),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults_match_the_help() {
        let r = run("vpod run");
        assert_eq!((r.vcpus, r.memory_mib), (1, 256));
        assert_eq!(r.root, PathBuf::from("/var/lib/vpod"));
        assert_eq!(r.stop_timeout, Duration::from_secs(10));
        assert!(r.image.is_none() && r.overrides.command.is_empty());
        assert!(!r.detach && !r.timings);
        assert!(!r.network && r.publish.is_empty());
    }

    #[test]
    fn publish_implies_the_bridge_network() {
        assert!(run("vpod run --network bridge").network);
        let r = run("vpod run -p 8080:80 -p 127.0.0.1:5353:53/udp");
        assert!(r.network);
        assert_eq!(r.publish.len(), 2);
        assert!(parse("vpod run --network host").is_err());
        assert!(parse("vpod run -p 80").is_err());
    }

    #[test]
    fn run_oci_word_is_the_image_and_flags_may_follow_it() {
        let r = run("vpod run -e A=1 oci:/img:t --timings -e B=2 -- sh -c x");
        assert_eq!(r.image.as_deref(), Some("oci:/img:t"));
        assert!(r.timings);
        assert_eq!(r.overrides.env, ["A=1", "B=2"]);
        assert_eq!(r.overrides.command, ["sh", "-c", "x"]);
        let r = run("vpod run oci:/img sh -c x");
        assert_eq!(r.image.as_deref(), Some("oci:/img"));
        assert_eq!(r.overrides.command, ["sh", "-c", "x"]);
        let r = run("vpod run oci:/img");
        assert!(r.image.is_some() && r.overrides.command.is_empty());
        let r = run("vpod run oci:/a oci:/b");
        assert_eq!(r.image.as_deref(), Some("oci:/a"));
        assert_eq!(r.overrides.command, ["oci:/b"]);
    }

    #[test]
    fn run_registry_reference_with_a_registry_tag_or_digest_is_the_image() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for image in [
            "busybox:1.36",
            "library/busybox",
            "registry.lan:5000/app",
            "127.0.0.1:5000/team/app:v1",
            &format!("app@{digest}"),
        ] {
            let r = run(&format!("vpod run -d {image} --timings sh -c x"));
            assert_eq!(r.image.as_deref(), Some(image));
            assert!(r.detach && r.timings);
            assert_eq!(r.overrides.command, ["sh", "-c", "x"]);
        }
        // Commands: a bare name, paths, and words no reference can be.
        for command in ["busybox", "/bin/sh", "./run", "a:b:c", "UPPER/case", "x@y"] {
            let r = run(&format!("vpod run {command} arg"));
            assert!(r.image.is_none(), "{command} was taken for an image");
            assert_eq!(r.overrides.command, [command, "arg"]);
        }
        // Ps, Pull and friends take their own operands.
        let Cli {
            command: VpodCommand::Pull(pull),
        } = parse("vpod pull --root /r --max-concurrent-downloads 5 busybox").unwrap()
        else {
            panic!("not a pull");
        };
        assert_eq!(pull.image, "busybox");
        assert_eq!(pull.max_concurrent_downloads, 5);
        assert_eq!(pull.root, PathBuf::from("/r"));
    }

    #[test]
    fn run_other_first_word_starts_the_command_with_all_after_it() {
        let r = run("vpod run --memory 128 top -d 1 --timings");
        assert_eq!(r.memory_mib, 128);
        assert!(r.image.is_none() && !r.detach && !r.timings);
        assert_eq!(r.overrides.command, ["top", "-d", "1", "--timings"]);
        let r = run("vpod run -- oci:/x -d");
        assert!(r.image.is_none());
        assert_eq!(r.overrides.command, ["oci:/x", "-d"]);
    }

    #[test]
    fn run_short_flags_and_inline_values_read_as_before() {
        let r = run("vpod run -d -m 64 -e K=V -w /tmp -u 1:2 -h web --vcpus=2 --add-host db:10.0.0.2 --dns ::1 --entrypoint /bin/sh --stop-timeout 3 --pod p --name c -- true");
        assert!(r.detach);
        assert_eq!((r.vcpus, r.memory_mib), (2, 64));
        assert_eq!(r.overrides.workdir.as_deref(), Some("/tmp"));
        assert_eq!(r.overrides.user.as_deref(), Some("1:2"));
        assert_eq!(r.overrides.entrypoint, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(r.hostname.as_deref(), Some("web"));
        assert_eq!(r.add_hosts, [("db".to_string(), "10.0.0.2".to_string())]);
        assert_eq!(r.dns, ["::1"]);
        assert_eq!(r.stop_timeout, Duration::from_secs(3));
        assert_eq!(
            (r.pod.as_deref(), r.name.as_deref()),
            (Some("p"), Some("c"))
        );
        // A flag given twice keeps the last value, as before.
        assert_eq!(
            run("vpod run --root /a --root /b").root,
            PathBuf::from("/b")
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for line in [
            "vpod",
            "vpod frob",
            "vpod run --frob",
            "vpod run oci:/img --frob",
            "vpod run --vcpus many",
            "vpod run --add-host db",
            "vpod run --dns example.org",
            "vpod run --memory",
            "vpod exec pod",
            "vpod exec pod sh -c x",
            "vpod exec --timeout -1 pod -- true",
            "vpod logs",
            "vpod rm",
            "vpod ps extra",
        ] {
            let err = parse(line).err().unwrap_or_else(|| panic!("{line} parsed"));
            assert_eq!(err.exit_code(), 2, "{line}: {err}");
        }
    }

    #[test]
    fn exec_logs_rm_ps_take_their_operands() {
        let VpodCommand::Exec(e) = parse("vpod exec --root /r p:c --timeout 1.5 -- sh -c x")
            .unwrap()
            .command
        else {
            panic!("not exec");
        };
        assert_eq!((e.root, e.target.as_str()), (PathBuf::from("/r"), "p:c"));
        assert_eq!(e.timeout, Duration::from_millis(1500));
        assert_eq!(e.command, ["sh", "-c", "x"]);
        assert!(!e.interactive && !e.tty);
        for (line, interactive, tty) in [
            ("vpod exec -it p -- sh", true, true),
            ("vpod exec -i p -- cat", true, false),
            ("vpod exec --tty p -- sh", false, true),
            ("vpod exec --interactive -t p -- sh", true, true),
        ] {
            let VpodCommand::Exec(e) = parse(line).unwrap().command else {
                panic!("not exec: {line}");
            };
            assert_eq!((e.interactive, e.tty), (interactive, tty), "{line}");
            assert_eq!(e.target, "p", "{line}");
        }
        let VpodCommand::Logs(l) = parse("vpod logs -f --root /r web").unwrap().command else {
            panic!("not logs");
        };
        assert!(l.follow && l.target == "web");
        let VpodCommand::Rm(r) = parse("vpod rm a b").unwrap().command else {
            panic!("not rm");
        };
        assert_eq!(r.pods, ["a", "b"]);
        assert!(matches!(
            parse("vpod ps").unwrap().command,
            VpodCommand::Ps(_)
        ));
    }
}

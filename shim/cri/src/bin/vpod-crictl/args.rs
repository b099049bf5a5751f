//! The command line of `vpod-crictl`: crictl's global flags and the verbs we speak, with
//! crictl's flag spellings.

use clap::{ArgGroup, Parser, Subcommand};

const AFTER_HELP: &str = "\
POD.json and CONTAINER.json are crictl's files: the CRI PodSandboxConfig and
ContainerConfig with proto field names (log_directory, or logDirectory); fields left out
take their zero values; enums are numbers. `-` reads the file from stdin.";

/// vpod-crictl: a small CRI client for the flows of crictl that the demo and the benchmarks
/// use.
#[derive(Debug, Parser)]
#[command(
    name = "vpod-crictl",
    arg_required_else_help = true,
    args_override_self = true,
    after_help = AFTER_HELP
)]
pub struct CommandLine {
    /// The CRI server [default: $CONTAINER_RUNTIME_ENDPOINT, else unix:///run/vpod/cri.sock]
    #[arg(short = 'r', long, value_name = "unix:///PATH")]
    pub runtime_endpoint: Option<String>,
    /// The image service [default: $IMAGE_SERVICE_ENDPOINT, else the runtime endpoint]
    #[arg(short = 'i', long, value_name = "unix:///PATH")]
    pub image_endpoint: Option<String>,
    /// Print each call's time on stderr (`vpod-crictl: <call> <ms> ms`)
    #[arg(long)]
    pub timings: bool,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Print the runtime's name and versions
    Version,
    /// Pull an image, print its id
    Pull {
        #[arg(value_name = "IMAGE")]
        image: String,
    },
    /// List images
    Images {
        /// Only the ids
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images
    Rmi {
        #[arg(value_name = "IMAGE", required = true)]
        images: Vec<String>,
    },
    /// Run a pod sandbox, print its id
    Runp {
        /// The runtime handler (a RuntimeClass's)
        #[arg(long, value_name = "HANDLER")]
        runtime: Option<String>,
        #[arg(value_name = "POD.json")]
        config: String,
    },
    /// List pod sandboxes
    Pods {
        /// Only the ids
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print a pod's status as JSON
    Inspectp {
        #[arg(value_name = "POD")]
        pod: String,
    },
    /// Stop pods
    Stopp {
        #[arg(value_name = "POD", required = true)]
        pods: Vec<String>,
    },
    /// Remove pods (running ones are stopped first)
    Rmp {
        #[arg(value_name = "POD", required = true)]
        pods: Vec<String>,
    },
    /// Create a container in a pod, print its id
    Create {
        #[arg(value_name = "POD")]
        pod: String,
        #[arg(value_name = "CONTAINER.json")]
        container_config: String,
        #[arg(value_name = "POD.json")]
        pod_config: String,
    },
    /// Start containers
    Start {
        #[arg(value_name = "CONTAINER", required = true)]
        containers: Vec<String>,
    },
    /// List containers (running ones unless -a)
    Ps {
        /// Containers in every state
        #[arg(short, long)]
        all: bool,
        /// Only the ids
        #[arg(short, long)]
        quiet: bool,
        /// Only the containers of this pod
        #[arg(short, long, value_name = "POD")]
        pod: Option<String>,
    },
    /// Print a container's status as JSON
    Inspect {
        #[arg(value_name = "CONTAINER")]
        container: String,
    },
    /// Print a container's log (read from its log file)
    Logs {
        #[arg(value_name = "CONTAINER")]
        container: String,
    },
    /// Run a command in a container, wait for it and exit with its status
    Exec {
        /// Accepted for crictl's sake: every exec here is synchronous (ExecSync)
        #[arg(short, long)]
        sync: bool,
        /// Seconds after which the command is killed (0: no limit)
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        timeout: i64,
        /// The container, then the command: every word after the container is the
        /// command's, flags included
        #[arg(value_names = ["CONTAINER", "CMD"], num_args = 2.., required = true, trailing_var_arg = true)]
        words: Vec<String>,
    },
    /// Stop containers (SIGTERM, SIGKILL after the timeout)
    Stop {
        /// Seconds from SIGTERM to SIGKILL
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        timeout: i64,
        #[arg(value_name = "CONTAINER", required = true)]
        containers: Vec<String>,
    },
    /// Remove containers
    Rm {
        #[arg(value_name = "CONTAINER", required = true)]
        containers: Vec<String>,
    },
    /// Change running containers' limits (limits not given keep their values)
    #[command(group(ArgGroup::new("limits").required(true).multiple(true)))]
    Update {
        /// CPU shares
        #[arg(long, value_name = "N", group = "limits", value_parser = positive)]
        cpu_share: Option<i64>,
        /// CPU CFS quota in microseconds
        #[arg(long, value_name = "N", group = "limits", value_parser = positive)]
        cpu_quota: Option<i64>,
        /// CPU CFS period in microseconds
        #[arg(long, value_name = "N", group = "limits", value_parser = positive)]
        cpu_period: Option<i64>,
        /// Memory limit
        #[arg(long, value_name = "BYTES", group = "limits", value_parser = positive)]
        memory: Option<i64>,
        #[arg(value_name = "CONTAINER", required = true)]
        containers: Vec<String>,
    },
}

fn positive(value: &str) -> Result<i64, String> {
    match value.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("needs a positive whole number".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(line: &str) -> Result<CommandLine, clap::Error> {
        CommandLine::try_parse_from(line.split_whitespace())
    }

    #[test]
    fn command_line_is_consistent() {
        CommandLine::command().debug_assert();
    }

    #[test]
    fn exec_keeps_the_commands_own_flags() {
        let cli = parse("vpod-crictl exec -s --timeout 5 abc ls -l --timeout /").unwrap();
        let Verb::Exec {
            sync,
            timeout,
            words,
        } = cli.verb
        else {
            panic!("not exec");
        };
        assert!(sync);
        assert_eq!(timeout, 5);
        assert_eq!(words, ["abc", "ls", "-l", "--timeout", "/"]);
    }

    #[test]
    fn global_flags_come_before_the_verb() {
        let cli =
            parse("vpod-crictl -r unix:///a --image-endpoint=unix:///b --timings ps -aq --pod=p1")
                .unwrap();
        assert_eq!(cli.runtime_endpoint.as_deref(), Some("unix:///a"));
        assert_eq!(cli.image_endpoint.as_deref(), Some("unix:///b"));
        assert!(cli.timings);
        let Verb::Ps { all, quiet, pod } = cli.verb else {
            panic!("not ps");
        };
        assert!(all && quiet);
        assert_eq!(pod.as_deref(), Some("p1"));
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for line in [
            "vpod-crictl",
            "vpod-crictl frob",
            "vpod-crictl pull",
            "vpod-crictl pull a b",
            "vpod-crictl exec abc",
            "vpod-crictl stop --timeout soon abc",
            "vpod-crictl update abc",
            "vpod-crictl update --memory lots abc",
            "vpod-crictl update --memory 0 abc",
            "vpod-crictl update --cpus 2 abc",
            "vpod-crictl update --memory 1",
            "vpod-crictl images --pod p",
        ] {
            let err = parse(line).err().unwrap_or_else(|| panic!("{line} parsed"));
            assert_eq!(err.exit_code(), 2, "{line}: {err}");
        }
    }
}

//! Command-line and environment options of the runner.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Why the options could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("option {option} wants a positive whole number, not `{value}`")]
    NotANumber { option: String, value: String },
    #[error("path {0} cannot be shared with the emulated host: it must be absolute UTF-8 without whitespace")]
    UnshareablePath(PathBuf),
}

/// Time limits that decide when the emulated host is declared stalled or the run too long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From QEMU's start to the host's "ready" line.
    pub boot: Duration,
    /// Longest silence (no heartbeat, no output) once the command runs.
    pub stall: Duration,
    /// The whole run, boot included, per attempt.
    pub total: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            boot: Duration::from_secs(90),
            stall: Duration::from_secs(30),
            total: Duration::from_secs(3600),
        }
    }
}

/// Everything one run needs to know, from the arguments and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub command: Vec<String>,
    pub memory_mib: u32,
    pub limits: Limits,
    /// How many times a stalled or crashed host is started again.
    pub retries: u32,
}

const AFTER_HELP: &str = "\
Exits with COMMAND's status; 124 when the time limit passes; 125 when the emulated host
fails or stalls after its retry; 2, before any host starts, for a bad command line.
Environment defaults: VPOD_KVM_HOST_MEMORY_MIB, VPOD_KVM_HOST_TIMEOUT_SECS,
VPOD_KVM_HOST_STALL_SECS, VPOD_KVM_HOST_BOOT_SECS, VPOD_KVM_HOST_SHARE (the writable
share; default the git top level of the current directory), VPOD_KVM_HOST_RETRY_LOG (a
file each retry is appended to).";

/// Runs COMMAND inside an emulated KVM host (QEMU TCG, AMD SVM, kvm_amd) in the current
/// directory, with the machine's root shared read-only (writable overlay) and the checkout
/// shared writable.
#[derive(Debug, Parser)]
#[command(
    name = "vpod-kvm-host",
    bin_name = "tests/kvm-host/run",
    args_override_self = true,
    after_help = AFTER_HELP
)]
pub struct CommandLine {
    /// Memory of the emulated host [default: 4096]
    #[arg(long, value_name = "MIB", value_parser = positive)]
    memory: Option<u64>,
    /// Time limit of the whole run, boot included, per attempt [default: 3600]
    #[arg(long, value_name = "SECS", value_parser = positive)]
    timeout: Option<u64>,
    /// Longest silence (no heartbeat, no output) once the command runs [default: 30]
    #[arg(long, value_name = "SECS", value_parser = positive)]
    stall: Option<u64>,
    /// Time from QEMU's start to the host's "ready" line [default: 90]
    #[arg(long, value_name = "SECS", value_parser = positive)]
    boot: Option<u64>,
    /// How many times a stalled or crashed host is started again
    #[arg(long, value_name = "N", default_value_t = 1)]
    retries: u32,
    /// The command and its arguments; a command that starts with a dash needs `--` first
    #[arg(value_name = "COMMAND", required = true, trailing_var_arg = true)]
    command: Vec<String>,
}

fn positive(value: &str) -> Result<u64, String> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("wants a positive whole number".to_string()),
    }
}

fn number(option: &str, value: &str) -> Result<u64, ConfigError> {
    positive(value).map_err(|_| ConfigError::NotANumber {
        option: option.to_string(),
        value: value.to_string(),
    })
}

impl Options {
    /// The options of `cli`; `env` looks up the environment defaults of those it leaves out.
    pub fn new(
        cli: CommandLine,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env_number = |name: &str| -> Result<Option<u64>, ConfigError> {
            env(name).map(|v| number(name, v.trim())).transpose()
        };
        let memory_mib = cli
            .memory
            .or(env_number("VPOD_KVM_HOST_MEMORY_MIB")?)
            .unwrap_or(4096);
        let defaults = Limits::default();
        let secs = |flag: Option<u64>, name: &str, default: Duration| {
            Ok::<_, ConfigError>(match flag.or(env_number(name)?) {
                Some(n) => Duration::from_secs(n),
                None => default,
            })
        };
        Ok(Options {
            command: cli.command,
            memory_mib: u32::try_from(memory_mib).unwrap_or(u32::MAX),
            limits: Limits {
                boot: secs(cli.boot, "VPOD_KVM_HOST_BOOT_SECS", defaults.boot)?,
                stall: secs(cli.stall, "VPOD_KVM_HOST_STALL_SECS", defaults.stall)?,
                total: secs(cli.timeout, "VPOD_KVM_HOST_TIMEOUT_SECS", defaults.total)?,
            },
            retries: cli.retries,
        })
    }
}

/// Checks that a path can travel on the emulated host's kernel command line.
pub fn shareable(path: PathBuf) -> Result<PathBuf, ConfigError> {
    match path.to_str() {
        Some(s) if path.is_absolute() && !s.chars().any(char::is_whitespace) => Ok(path),
        _ => Err(ConfigError::UnshareablePath(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<CommandLine, clap::Error> {
        CommandLine::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
    }

    fn options(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Options {
        Options::new(parse(args).expect("parses"), env).expect("valid")
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn command_line_is_consistent() {
        CommandLine::command().debug_assert();
    }

    #[test]
    fn command_after_double_dash_keeps_its_own_flags() {
        let o = options(&["--", "ls", "-l", "--", "x"], &no_env);
        assert_eq!(o.command, ["ls", "-l", "--", "x"]);
    }

    #[test]
    fn command_without_double_dash_stops_option_parsing() {
        let o = options(&["--memory", "2048", "sh", "-c", "exit 3"], &no_env);
        assert_eq!(o.memory_mib, 2048);
        assert_eq!(o.command, ["sh", "-c", "exit 3"]);
        let o = options(&["true", "--timeout", "5"], &no_env);
        assert_eq!(o.command, ["true", "--timeout", "5"]);
        assert_eq!(o.limits, Limits::default());
    }

    #[test]
    fn missing_command_bad_numbers_and_unknown_flags_are_usage_errors() {
        for args in [
            &["--"][..],
            &[],
            &["--timeout", "soon", "true"],
            &["--stall", "0", "true"],
            &["--retries", "-1", "true"],
            &["--frobnicate", "true"],
            &["--boot"],
        ] {
            let err = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn environment_sets_defaults_and_flags_override_them() {
        let env = |k: &str| match k {
            "VPOD_KVM_HOST_TIMEOUT_SECS" => Some("60".to_string()),
            "VPOD_KVM_HOST_STALL_SECS" => Some("5".to_string()),
            "VPOD_KVM_HOST_MEMORY_MIB" => Some(" 1024\n".to_string()),
            _ => None,
        };
        let o = options(&["--stall", "7", "true"], &env);
        assert_eq!(o.limits.total, Duration::from_secs(60));
        assert_eq!(o.limits.stall, Duration::from_secs(7));
        assert_eq!(o.limits.boot, Limits::default().boot);
        assert_eq!(o.memory_mib, 1024);
        assert_eq!(o.retries, 1);
    }

    #[test]
    fn a_bad_environment_number_is_named() {
        let env = |k: &str| (k == "VPOD_KVM_HOST_BOOT_SECS").then(|| "0".to_string());
        assert_eq!(
            Options::new(parse(&["true"]).unwrap(), &env),
            Err(ConfigError::NotANumber {
                option: "VPOD_KVM_HOST_BOOT_SECS".into(),
                value: "0".into()
            })
        );
    }

    #[test]
    fn retries_may_be_zero() {
        assert_eq!(options(&["--retries", "0", "true"], &no_env).retries, 0);
    }

    #[test]
    fn paths_with_spaces_or_relative_are_not_shareable() {
        assert!(shareable("/work/main".into()).is_ok());
        assert!(shareable("/work/my checkout".into()).is_err());
        assert!(shareable("relative".into()).is_err());
    }
}

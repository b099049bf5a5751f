//! Command-line and environment options of the runner.

use std::path::PathBuf;
use std::time::Duration;

/// Why the options could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("No command given: usage is `run [OPTIONS] [--] COMMAND [ARGS...]`.")]
    NoCommand,
    #[error("Option {0} needs a value.")]
    MissingValue(String),
    #[error("Option {option} wants a positive whole number, not `{value}`.")]
    NotANumber { option: String, value: String },
    #[error("Unknown option {0}; put `--` before a command that starts with a dash.")]
    UnknownOption(String),
    #[error("Path {0} cannot be shared with the emulated host: it must be absolute UTF-8 without whitespace.")]
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

/// Everything one run needs to know, parsed from the arguments and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub command: Vec<String>,
    pub memory_mib: u32,
    pub limits: Limits,
    /// How many times a stalled or crashed host is started again.
    pub retries: u32,
    pub help: bool,
}

pub const USAGE: &str = "usage: tests/kvm-host/run [--memory MIB] [--timeout SECS] [--stall SECS] \
[--boot SECS] [--retries N] [--] COMMAND [ARGS...]

Runs COMMAND inside an emulated KVM host (QEMU TCG, AMD SVM, kvm_amd) in the current
directory, with the machine's root shared read-only (writable overlay) and the checkout
shared writable. Exits with COMMAND's status; 124 when the time limit passes; 125 when the
emulated host fails or stalls after its retry.
Environment defaults: VPOD_KVM_HOST_MEMORY_MIB, VPOD_KVM_HOST_TIMEOUT_SECS,
VPOD_KVM_HOST_STALL_SECS, VPOD_KVM_HOST_BOOT_SECS, VPOD_KVM_HOST_SHARE (the writable
share; default the git top level of the current directory), VPOD_KVM_HOST_RETRY_LOG (a
file each retry is appended to).";

fn number(option: &str, value: &str) -> Result<u64, ConfigError> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError::NotANumber {
            option: option.to_string(),
            value: value.to_string(),
        }),
    }
}

impl Options {
    /// Parses `args` (without the program name); `env` looks up environment defaults.
    pub fn parse(
        args: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut opts = Options {
            command: Vec::new(),
            memory_mib: 4096,
            limits: Limits::default(),
            retries: 1,
            help: false,
        };
        let env_number = |name: &str| -> Result<Option<u64>, ConfigError> {
            env(name).map(|v| number(name, v.trim())).transpose()
        };
        if let Some(n) = env_number("VPOD_KVM_HOST_MEMORY_MIB")? {
            opts.memory_mib = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(n) = env_number("VPOD_KVM_HOST_TIMEOUT_SECS")? {
            opts.limits.total = Duration::from_secs(n);
        }
        if let Some(n) = env_number("VPOD_KVM_HOST_STALL_SECS")? {
            opts.limits.stall = Duration::from_secs(n);
        }
        if let Some(n) = env_number("VPOD_KVM_HOST_BOOT_SECS")? {
            opts.limits.boot = Duration::from_secs(n);
        }

        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            let mut value = |name: &str| -> Result<u64, ConfigError> {
                let v = rest
                    .next()
                    .ok_or_else(|| ConfigError::MissingValue(name.to_string()))?;
                number(name, v)
            };
            match arg.as_str() {
                "--" => {
                    opts.command.extend(rest.by_ref().cloned());
                    break;
                }
                "-h" | "--help" => opts.help = true,
                "--memory" => opts.memory_mib = u32::try_from(value(arg)?).unwrap_or(u32::MAX),
                "--timeout" => opts.limits.total = Duration::from_secs(value(arg)?),
                "--stall" => opts.limits.stall = Duration::from_secs(value(arg)?),
                "--boot" => opts.limits.boot = Duration::from_secs(value(arg)?),
                "--retries" => {
                    let name = arg.clone();
                    let v = rest
                        .next()
                        .ok_or_else(|| ConfigError::MissingValue(name.clone()))?;
                    opts.retries = v.parse().map_err(|_| ConfigError::NotANumber {
                        option: name,
                        value: v.clone(),
                    })?;
                }
                s if s.starts_with('-') => return Err(ConfigError::UnknownOption(s.to_string())),
                _ => {
                    opts.command.push(arg.clone());
                    opts.command.extend(rest.by_ref().cloned());
                    break;
                }
            }
        }
        if opts.command.is_empty() && !opts.help {
            return Err(ConfigError::NoCommand);
        }
        Ok(opts)
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

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn command_after_double_dash_keeps_its_own_flags() {
        let o = Options::parse(&args(&["--", "ls", "-l", "--", "x"]), &no_env).unwrap();
        assert_eq!(o.command, args(&["ls", "-l", "--", "x"]));
    }

    #[test]
    fn command_without_double_dash_stops_option_parsing() {
        let o =
            Options::parse(&args(&["--memory", "2048", "sh", "-c", "exit 3"]), &no_env).unwrap();
        assert_eq!(o.memory_mib, 2048);
        assert_eq!(o.command, args(&["sh", "-c", "exit 3"]));
    }

    #[test]
    fn missing_command_is_an_error() {
        assert_eq!(
            Options::parse(&args(&["--"]), &no_env),
            Err(ConfigError::NoCommand)
        );
        assert_eq!(Options::parse(&[], &no_env), Err(ConfigError::NoCommand));
    }

    #[test]
    fn bad_numbers_and_unknown_flags_are_named() {
        assert_eq!(
            Options::parse(&args(&["--timeout", "soon", "true"]), &no_env),
            Err(ConfigError::NotANumber {
                option: "--timeout".into(),
                value: "soon".into()
            })
        );
        assert_eq!(
            Options::parse(&args(&["--stall", "0", "true"]), &no_env),
            Err(ConfigError::NotANumber {
                option: "--stall".into(),
                value: "0".into()
            })
        );
        assert_eq!(
            Options::parse(&args(&["--frobnicate", "true"]), &no_env),
            Err(ConfigError::UnknownOption("--frobnicate".into()))
        );
        assert_eq!(
            Options::parse(&args(&["--boot"]), &no_env),
            Err(ConfigError::MissingValue("--boot".into()))
        );
    }

    #[test]
    fn environment_sets_defaults_and_flags_override_them() {
        let env = |k: &str| match k {
            "VPOD_KVM_HOST_TIMEOUT_SECS" => Some("60".to_string()),
            "VPOD_KVM_HOST_STALL_SECS" => Some("5".to_string()),
            _ => None,
        };
        let o = Options::parse(&args(&["--stall", "7", "true"]), &env).unwrap();
        assert_eq!(o.limits.total, Duration::from_secs(60));
        assert_eq!(o.limits.stall, Duration::from_secs(7));
        assert_eq!(o.limits.boot, Limits::default().boot);
        assert_eq!(o.retries, 1);
    }

    #[test]
    fn retries_may_be_zero() {
        let o = Options::parse(&args(&["--retries", "0", "true"]), &no_env).unwrap();
        assert_eq!(o.retries, 0);
    }

    #[test]
    fn paths_with_spaces_or_relative_are_not_shareable() {
        assert!(shareable("/work/main".into()).is_ok());
        assert!(shareable("/work/my checkout".into()).is_err());
        assert!(shareable("relative".into()).is_err());
    }
}

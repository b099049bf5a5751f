//! Running one CNI plugin binary: the `CNI_*` environment, the configuration on stdin, its
//! stdout read up to a cap, a deadline, and the spec's error object turned into an error
//! that names the plugin.

use serde::Deserialize;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The most a plugin may print on stdout (a result is a few KiB); more is an error.
pub const MAX_OUTPUT: usize = 1 << 20;
/// What is kept of a plugin's stderr for an error message.
const MAX_STDERR: usize = 4096;

/// Why a plugin did not give a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run cni plugin {plugin} ({path})")]
    Spawn {
        plugin: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cni plugin {plugin} did not finish {command} within {timeout:?}; killed")]
    Timeout {
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },
    #[error("cni plugin {plugin} printed more than {limit} bytes")]
    OutputTooLarge { plugin: String, limit: usize },
    #[error(
        "cni plugin {plugin} failed {command} (code {code}): {msg}{}",
        details_suffix(details)
    )]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u32,
        msg: String,
        details: String,
    },
    #[error("cni plugin {plugin} failed {command} with {status} and no error object: {stderr}")]
    Exited {
        plugin: String,
        command: &'static str,
        status: ExitStatus,
        stderr: String,
    },
    #[error("cannot wait for cni plugin {plugin}")]
    Wait {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(" ({details})")
    }
}

/// The spec's error object, printed on stdout with a non-zero exit.
#[derive(Deserialize)]
struct PluginErrorObject {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// The two verbs this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
        }
    }
}

/// Everything one run of a plugin needs besides its stdin.
pub struct Invocation<'a> {
    pub command: CniCommand,
    pub plugin: &'a str,
    pub path: &'a Path,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub cni_args: &'a str,
    pub bin_dirs: &'a [PathBuf],
    pub timeout: Duration,
}

impl Invocation<'_> {
    /// Runs the plugin with `stdin` and returns its stdout when it succeeded.
    pub fn run(&self, stdin: &[u8]) -> Result<Vec<u8>, ExecError> {
        let plugin = || self.plugin.to_owned();
        let cni_path = std::env::join_paths(self.bin_dirs).unwrap_or_default();
        let mut child = Command::new(self.path)
            .env("CNI_COMMAND", self.command.as_str())
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_NETNS", self.netns)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_ARGS", self.cni_args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ExecError::Spawn {
                plugin: plugin(),
                path: self.path.to_owned(),
                source,
            })?;
        let deadline = Instant::now() + self.timeout;

        let (sender, outputs) = mpsc::channel();
        if let Some(mut pipe) = child.stdin.take() {
            let input = stdin.to_vec();
            // A plugin that exits without reading its stdin breaks the pipe; its exit status
            // is what counts, so the write's own error is not.
            std::thread::spawn(move || drop(pipe.write_all(&input)));
        }
        for (stream, cap) in [(0, MAX_OUTPUT), (1, MAX_STDERR)] {
            let pipe: Option<Box<dyn Read + Send>> = if stream == 0 {
                child.stdout.take().map(|p| Box::new(p) as _)
            } else {
                child.stderr.take().map(|p| Box::new(p) as _)
            };
            if let Some(pipe) = pipe {
                let sender = sender.clone();
                std::thread::spawn(move || drop(sender.send((stream, read_capped(pipe, cap)))));
            }
        }
        drop(sender);

        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() >= deadline => {
                    // Killing and reaping our own child: the pid cannot have been reused.
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(self.timeout_error());
                }
                Ok(None) => std::thread::sleep(Duration::from_micros(250)),
                Err(source) => {
                    return Err(ExecError::Wait {
                        plugin: plugin(),
                        source,
                    })
                }
            }
        };

        let (mut stdout, mut stderr) = (None, None);
        while stdout.is_none() || stderr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match outputs.recv_timeout(left) {
                Ok((0, output)) => stdout = Some(output),
                Ok((_, output)) => stderr = Some(output),
                // A grandchild holding the pipes open past the deadline.
                Err(mpsc::RecvTimeoutError::Timeout) => return Err(self.timeout_error()),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let stdout = stdout.unwrap_or_default();
        let stderr = stderr.unwrap_or_default();
        if stdout.truncated {
            return Err(ExecError::OutputTooLarge {
                plugin: plugin(),
                limit: MAX_OUTPUT,
            });
        }
        if status.success() {
            return Ok(stdout.bytes);
        }
        match serde_json::from_slice::<PluginErrorObject>(&stdout.bytes) {
            Ok(error) => Err(ExecError::Plugin {
                plugin: plugin(),
                command: self.command.as_str(),
                code: error.code,
                msg: error.msg,
                details: error.details,
            }),
            Err(_) => Err(ExecError::Exited {
                plugin: plugin(),
                command: self.command.as_str(),
                status,
                stderr: String::from_utf8_lossy(&stderr.bytes).trim().to_owned(),
            }),
        }
    }

    fn timeout_error(&self) -> ExecError {
        ExecError::Timeout {
            plugin: self.plugin.to_owned(),
            command: self.command.as_str(),
            timeout: self.timeout,
        }
    }
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Reads a pipe to its end, keeping at most `cap` bytes and draining the rest so the
/// writer never blocks on a full pipe.
fn read_capped(mut pipe: impl Read, cap: usize) -> Captured {
    let mut captured = Captured::default();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buffer) {
            Ok(0) => return captured,
            Ok(n) => {
                let room = cap - captured.bytes.len();
                captured.bytes.extend_from_slice(&buffer[..n.min(room)]);
                captured.truncated |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return captured,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn run(path: &Path, timeout: Duration) -> Result<Vec<u8>, ExecError> {
        Invocation {
            command: CniCommand::Add,
            plugin: "fake",
            path,
            container_id: "c1",
            netns: Path::new("/var/run/netns/x"),
            ifname: "eth0",
            cni_args: "IgnoreUnknown=1",
            bin_dirs: &[],
            timeout,
        }
        .run(b"{\"cniVersion\":\"1.0.0\"}")
    }

    #[test]
    fn plugin_sees_environment_and_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(
            dir.path(),
            "fake",
            "echo \"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME $CNI_ARGS\"; cat",
        );
        let out = run(&path, Duration::from_secs(10)).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "ADD c1 eth0 IgnoreUnknown=1\n{\"cniVersion\":\"1.0.0\"}"
        );
    }

    #[test]
    fn plugin_error_object_becomes_an_error_naming_the_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(
            dir.path(),
            "fake",
            r#"echo '{"cniVersion":"1.0.0","code":11,"msg":"no more addresses","details":"range full"}'; exit 1"#,
        );
        let err = run(&path, Duration::from_secs(10)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("fake") && text.contains("no more addresses") && text.contains("code 11"),
            "{text}"
        );
    }

    #[test]
    fn plugin_exit_without_error_object_reports_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(dir.path(), "fake", "echo garbage; echo boom >&2; exit 3");
        let text = run(&path, Duration::from_secs(10)).unwrap_err().to_string();
        assert!(text.contains("boom") && text.contains("fake"), "{text}");
    }

    #[test]
    fn plugin_huge_output_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(dir.path(), "fake", "head -c 8000000 /dev/zero");
        let err = run(&path, Duration::from_secs(20)).unwrap_err();
        assert!(matches!(err, ExecError::OutputTooLarge { .. }), "{err}");
    }

    #[test]
    fn plugin_past_its_deadline_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let path = script(dir.path(), "fake", "exec sleep 30");
        let started = Instant::now();
        let err = run(&path, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

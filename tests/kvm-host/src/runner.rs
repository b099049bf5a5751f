//! One run: boot the emulated host, run the job, follow its output, judge its progress, and
//! start it again once if it stalled or died.

use crate::config::Limits;
use crate::job::{job_script, shell_quote};
use crate::output::{Console, Tail};
use crate::qemu::{host_args, Assets, HostSpec};
use crate::watch::{Verdict, Watch};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Status returned when the total time limit passes, as timeout(1) does.
pub const EXIT_TIMED_OUT: i32 = 124;
/// Status returned when the emulated host itself fails, after its retries.
pub const EXIT_HOST_FAILED: i32 = 125;
/// Status returned when the runner is interrupted.
pub const EXIT_INTERRUPTED: i32 = 130;

const POLL: Duration = Duration::from_millis(20);

/// Why a run could not even be attempted.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not create the io directory {path}")]
    IoDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not start {program}; is qemu-system-x86 installed?")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("lost track of the emulated host")]
    Follow(#[source] io::Error),
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Job {
    pub command: Vec<String>,
    pub cwd: PathBuf,
    pub env: Vec<(String, String)>,
    pub share: Option<PathBuf>,
    pub memory_mib: u32,
    pub limits: Limits,
    pub retries: u32,
    /// Each retry is appended here as one line, so a whole test run can count them.
    pub retry_log: Option<PathBuf>,
    pub qemu: String,
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    Finished(i32),
    /// The host stopped making progress or died without a status: worth one more try.
    Failed(String),
    /// Our init reported a fault that another attempt would meet again.
    InitFailed(String),
    TimedOut(String),
    Interrupted,
}

/// The emulated host of one attempt; killing QEMU and removing the io directory happen on
/// drop, whatever path the attempt left by.
struct Attempt {
    child: Option<Child>,
    io_dir: PathBuf,
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Only our own child, by its PID.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.io_dir);
    }
}

fn describe(command: &[String]) -> String {
    let words: Vec<String> = command
        .iter()
        .map(|w| {
            if w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+".contains(c))
                && !w.is_empty()
            {
                w.clone()
            } else {
                shell_quote(w)
            }
        })
        .collect();
    words.join(" ")
}

fn report(
    what: &str,
    job: &Job,
    attempt: u32,
    started: Instant,
    output_bytes: u64,
    console: &Console,
    io_dir: &Path,
) -> String {
    let mut text = format!(
        "{what} while running `{}` (attempt {attempt}, {:.0} s in, {output_bytes} bytes of output so far)",
        describe(&job.command),
        started.elapsed().as_secs_f64()
    );
    let lines: Vec<&str> = console.recent().collect();
    if !lines.is_empty() {
        text.push_str("; last console lines:");
        for line in lines {
            text.push_str("\n    | ");
            text.push_str(line);
        }
    }
    if let Ok(qemu_log) = fs::read_to_string(io_dir.join("qemu.log")) {
        for line in qemu_log
            .lines()
            .filter(|l| !l.contains("TCG doesn't support requested feature"))
        {
            text.push_str("\n    qemu: ");
            text.push_str(line);
        }
    }
    text
}

fn new_io_dir(attempt: u32) -> Result<PathBuf, RunError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = std::env::temp_dir().join(format!(
        "vpod-kvm-host.{}.{attempt}.{nanos:x}",
        std::process::id()
    ));
    fs::create_dir(&path).map_err(|source| RunError::IoDir {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

fn run_attempt(
    job: &Job,
    assets: &Assets,
    attempt: u32,
    stop: &AtomicBool,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<AttemptEnd, RunError> {
    let io_dir = new_io_dir(attempt)?;
    let mut host = Attempt {
        child: None,
        io_dir: io_dir.clone(),
    };
    let io_err = |source| RunError::IoDir {
        path: io_dir.clone(),
        source,
    };
    fs::write(
        io_dir.join("job.sh"),
        job_script(&job.cwd, &job.env, &job.command),
    )
    .map_err(io_err)?;
    let qemu_log = fs::File::create(io_dir.join("qemu.log")).map_err(io_err)?;

    let spec = HostSpec {
        assets,
        memory_mib: job.memory_mib,
        io_dir: &io_dir,
        share: job.share.as_deref(),
    };
    let started = Instant::now();
    let child = Command::new(&job.qemu)
        .args(host_args(&spec))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(qemu_log)
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: job.qemu.clone(),
            source,
        })?;
    let child = host.child.insert(child);

    let mut out = Tail::new(io_dir.join("stdout"));
    let mut err = Tail::new(io_dir.join("stderr"));
    let mut console = Console::new(io_dir.join("console.log"), 12);
    let mut watch = Watch::new(job.limits, started);
    let mut output_bytes = 0u64;
    let mut init_error = None;

    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(AttemptEnd::Interrupted);
        }
        let exited = child.try_wait().map_err(RunError::Follow)?;
        let now = Instant::now();
        let moved = out.pump(stdout).map_err(RunError::Follow)?
            + err.pump(stderr).map_err(RunError::Follow)?;
        output_bytes += moved as u64;
        let news = console.poll().map_err(RunError::Follow)?;
        if news.ready {
            watch.ready(now);
        }
        if news.grew || moved > 0 {
            watch.progress(now);
        }
        if news.init_error.is_some() {
            init_error = news.init_error;
        }
        if exited.is_some() {
            host.child = None;
            // Whatever the host wrote before it powered off is complete on our side.
            output_bytes += (out.pump(stdout).map_err(RunError::Follow)?
                + err.pump(stderr).map_err(RunError::Follow)?) as u64;
            console.poll().map_err(RunError::Follow)?;
            if let Ok(status) = fs::read_to_string(io_dir.join("status")) {
                if let Ok(code) = status.trim().parse::<i32>() {
                    return Ok(AttemptEnd::Finished(code));
                }
            }
            let what = match init_error {
                Some(msg) => {
                    return Ok(AttemptEnd::InitFailed(report(
                        &format!("the emulated host's init failed: {msg}"),
                        job,
                        attempt,
                        started,
                        output_bytes,
                        &console,
                        &io_dir,
                    )))
                }
                None => "the emulated host exited without the command's status",
            };
            return Ok(AttemptEnd::Failed(report(
                what,
                job,
                attempt,
                started,
                output_bytes,
                &console,
                &io_dir,
            )));
        }
        match watch.verdict(now) {
            Verdict::Alive => {}
            Verdict::BootStalled { waited } => {
                let what = format!(
                    "the emulated host did not come up within {} s",
                    waited.as_secs()
                );
                return Ok(AttemptEnd::Failed(report(
                    &what,
                    job,
                    attempt,
                    started,
                    output_bytes,
                    &console,
                    &io_dir,
                )));
            }
            Verdict::Stalled { silent } => {
                let what = format!(
                    "the emulated host stalled: no heartbeat or output for {} s",
                    silent.as_secs()
                );
                return Ok(AttemptEnd::Failed(report(
                    &what,
                    job,
                    attempt,
                    started,
                    output_bytes,
                    &console,
                    &io_dir,
                )));
            }
            Verdict::TimedOut { elapsed } => {
                let what = format!("time limit passed ({} s)", elapsed.as_secs());
                return Ok(AttemptEnd::TimedOut(report(
                    &what,
                    job,
                    attempt,
                    started,
                    output_bytes,
                    &console,
                    &io_dir,
                )));
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Runs the job, retrying a failed host up to `job.retries` times; returns the exit status
/// the runner should exit with.
pub fn run(
    job: &Job,
    assets: &Assets,
    stop: &AtomicBool,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<i32, RunError> {
    let mut retries = 0;
    for attempt in 1.. {
        let end = run_attempt(job, assets, attempt, stop, stdout, stderr)?;
        match end {
            AttemptEnd::Finished(code) => {
                if retries > 0 {
                    let _ = writeln!(
                        stderr,
                        "vpod-kvm-host: finished after {retries} retry(ies); status {code}"
                    );
                }
                return Ok(code);
            }
            AttemptEnd::Interrupted => {
                let _ = writeln!(stderr, "vpod-kvm-host: interrupted; emulated host stopped");
                return Ok(EXIT_INTERRUPTED);
            }
            AttemptEnd::TimedOut(text) => {
                let _ = writeln!(stderr, "vpod-kvm-host: {text}");
                return Ok(EXIT_TIMED_OUT);
            }
            AttemptEnd::InitFailed(text) => {
                let _ = writeln!(stderr, "vpod-kvm-host: {text}");
                return Ok(EXIT_HOST_FAILED);
            }
            AttemptEnd::Failed(text) => {
                if retries >= job.retries {
                    let _ = writeln!(stderr, "vpod-kvm-host: {text}\nvpod-kvm-host: giving up after {retries} retry(ies)");
                    return Ok(EXIT_HOST_FAILED);
                }
                retries += 1;
                let _ = writeln!(
                    stderr,
                    "vpod-kvm-host: RETRY {retries} of {}: {text}",
                    job.retries
                );
                if let Some(log) = &job.retry_log {
                    let first_line = text.lines().next().unwrap_or_default();
                    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
                        let _ = writeln!(f, "{first_line}");
                    }
                }
            }
        }
    }
    unreachable!("the attempt loop only ends by returning")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_described_readably() {
        let cmd: Vec<String> = ["sh", "-c", "echo hi; exit 7", "a=b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(describe(&cmd), "sh -c 'echo hi; exit 7' a=b");
    }
}

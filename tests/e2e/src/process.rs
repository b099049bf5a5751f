//! Processes under time limits: [`run_with_limit`] for a command run to completion, and
//! [`Background`] for one that runs while the test waits for its output and signals it.
//! Neither lets a test hang: a process past its limit is killed by its PID.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

/// What a finished command left.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// The lines of stdout, without their ends.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout_text().lines().map(str::to_string).collect()
    }
    /// The lines of stderr, without their ends.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr_text().lines().map(str::to_string).collect()
    }
    /// Whether stdout has exactly the line `want`.
    pub fn has_stdout_line(&self, want: &str) -> bool {
        self.stdout_text().lines().any(|l| l == want)
    }
    /// Whether stderr has exactly the line `want`.
    pub fn has_stderr_line(&self, want: &str) -> bool {
        self.stderr_text().lines().any(|l| l == want)
    }
    /// The rest of the first stdout line that starts with `prefix`.
    pub fn stdout_after(&self, prefix: &str) -> Option<String> {
        self.stdout_text()
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_string)
    }
    /// Status and both streams, for assertion messages.
    pub fn explain(&self) -> String {
        format!(
            "status {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code(),
            self.elapsed,
            self.stdout_text(),
            self.stderr_text()
        )
    }
}

/// Sends `signal` to `pid` (a process the test started, or one it found by its PID file);
/// a process that is already gone is not an error.
pub fn send_signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs `cmd` to completion, killing it (by its PID) if it outlives `limit`, so a test
/// never hangs. Panics on a timeout with what the command printed so far.
pub fn run_with_limit(cmd: &mut Command, limit: Duration) -> Finished {
    let started = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "{cmd:?} did not finish within {limit:?}\n--- stdout\n{}\n--- stderr\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// A line (with its end) or the end of one of the child's streams.
enum Output {
    Line(Stream, Vec<u8>),
    End,
}

fn forward(pipe: impl Read + Send + 'static, stream: Stream, to: Sender<Output>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        loop {
            let mut line = Vec::new();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if to.send(Output::Line(stream, line)).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.send(Output::End);
    });
}

/// A process running in the background, its output collected as it comes; killed (by its
/// PID) when dropped before it was waited for.
pub struct Background {
    child: Option<Child>,
    output: Receiver<Output>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    open_streams: usize,
    started: Instant,
    what: String,
}

impl Background {
    /// Starts `cmd` with stdin from /dev/null and both streams collected.
    pub fn spawn(cmd: &mut Command) -> Background {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let (to, output) = mpsc::channel();
        forward(
            child.stdout.take().expect("piped stdout"),
            Stream::Stdout,
            to.clone(),
        );
        forward(
            child.stderr.take().expect("piped stderr"),
            Stream::Stderr,
            to,
        );
        Background {
            child: Some(child),
            output,
            stdout: Vec::new(),
            stderr: Vec::new(),
            open_streams: 2,
            started: Instant::now(),
            what: format!("{cmd:?}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        send_signal(self.pid(), signal);
    }

    /// Collects output until `until` holds or `wait` passes; whether it held.
    fn collect(&mut self, wait: Duration, until: impl Fn(&Background) -> bool) -> bool {
        let deadline = Instant::now() + wait;
        while !until(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(Output::Line(Stream::Stdout, line)) => self.stdout.extend(line),
                Ok(Output::Line(Stream::Stderr, line)) => self.stderr.extend(line),
                Ok(Output::End) => self.open_streams -= 1,
                Err(RecvTimeoutError::Timeout) => return until(self),
                Err(RecvTimeoutError::Disconnected) => {
                    self.open_streams = 0;
                    return until(self);
                }
            }
        }
        true
    }

    /// Waits up to `limit` for a stdout line for which `matches` holds (line ends and
    /// carriage returns trimmed) and returns it; panics with what the process printed when
    /// none comes.
    pub fn wait_for_stdout_line_where(
        &mut self,
        limit: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> String {
        let find = |b: &Background| {
            String::from_utf8_lossy(&b.stdout)
                .lines()
                .map(str::trim_end)
                .find(|l| matches(l))
                .map(str::to_string)
        };
        if !self.collect(limit, |b| find(b).is_some()) {
            panic!(
                "{} printed no awaited line within {limit:?}\n--- stdout\n{}\n--- stderr\n{}",
                self.what,
                String::from_utf8_lossy(&self.stdout),
                String::from_utf8_lossy(&self.stderr)
            );
        }
        find(self).expect("the line was seen")
    }

    /// Waits up to `limit` for stdout to have the line `want`.
    pub fn wait_for_stdout_line(&mut self, want: &str, limit: Duration) {
        self.wait_for_stdout_line_where(limit, |l| l == want);
    }

    /// Waits for the process to end, killing it if it outlives `limit` (counted from now)
    /// and then panicking with what it printed; `elapsed` counts from the spawn.
    pub fn wait(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let mut child = self.child.take().expect("not waited for yet");
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait works") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.collect(Duration::from_secs(1), |b| b.open_streams == 0);
                panic!(
                    "{} did not finish within {limit:?}\n--- stdout\n{}\n--- stderr\n{}",
                    self.what,
                    String::from_utf8_lossy(&self.stdout),
                    String::from_utf8_lossy(&self.stderr)
                );
            }
            self.collect(Duration::from_millis(10), |_| false);
        };
        let elapsed = self.started.elapsed();
        // A grandchild that kept the pipes open must not hang the test: the streams get a
        // few seconds to end after the process did.
        self.collect(Duration::from_secs(5), |b| b.open_streams == 0);
        Finished {
            status,
            stdout: std::mem::take(&mut self.stdout),
            stderr: std::mem::take(&mut self.stderr),
            elapsed,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn a_background_process_is_seen_line_by_line_then_waited_for() {
        let mut running = Background::spawn(&mut sh("echo err >&2; echo ready; exec sleep 30"));
        running.wait_for_stdout_line("ready", Duration::from_secs(10));
        running.signal(Signal::TERM);
        let done = running.wait(Duration::from_secs(10));
        assert_eq!(done.status.code(), None, "{}", done.explain());
        assert_eq!(done.stdout_text(), "ready\n");
        assert_eq!(done.stderr_lines(), ["err"]);
        assert!(done.elapsed < Duration::from_secs(10));
    }

    #[test]
    fn a_finished_command_keeps_its_status_and_streams() {
        let done = run_with_limit(
            &mut sh("echo a; echo b >&2; exit 3"),
            Duration::from_secs(10),
        );
        assert_eq!(done.code(), Some(3));
        assert!(done.has_stdout_line("a") && done.has_stderr_line("b"));
        assert_eq!(done.stdout_after("a"), Some(String::new()));
    }
}

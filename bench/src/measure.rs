//! Measuring one run of a VMM: time from spawn to a marker line on its stdout, time to its
//! exit, its peak resident memory, and its memory beyond the guest RAM it backs.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Why a run could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("could not start {0}")]
    Spawn(String, #[source] std::io::Error),
    #[error("{program} did not print {marker:?} within {limit:?}; it printed: {seen}")]
    NoMarker {
        program: String,
        marker: String,
        limit: Duration,
        seen: String,
    },
    #[error("{0} did not exit within the time limit")]
    NoExit(String),
    #[error("{program} exited with {code:?}, not the expected {expected}")]
    BadExit {
        program: String,
        code: Option<i32>,
        expected: i32,
    },
    #[error("waiting for the child failed")]
    Wait(#[source] std::io::Error),
}

/// One measured run.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// CLOCK_MONOTONIC in nanoseconds just before the spawn, to compare with times the
    /// child reports on that clock.
    pub started_monotonic_ns: u64,
    pub to_marker_ms: Option<f64>,
    pub to_exit_ms: f64,
    pub exit_code: Option<i32>,
    /// Peak resident set of the child, from wait4(2).
    pub max_rss_kib: u64,
    /// The first 64 KiB of what it printed on stderr.
    pub stderr: String,
}

fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

/// Reads stdout lines on a thread and sends when the marker shows up.
fn watch_stdout(
    child: &mut Child,
    marker: &str,
) -> (mpsc::Receiver<Instant>, std::thread::JoinHandle<String>) {
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take();
    let marker = marker.as_bytes().to_vec();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let Some(mut stdout) = stdout else {
            return String::new();
        };
        // Raw reads, not lines: a marker need not end with a newline (QEMU's debug console
        // prints the guest's one byte and nothing after it).
        let mut window: Vec<u8> = Vec::new();
        let mut sent = false;
        let mut chunk = [0u8; 4096];
        loop {
            let n = match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !sent {
                window.extend_from_slice(&chunk[..n]);
                if window.windows(marker.len()).any(|w| w == marker.as_slice()) {
                    let _ = tx.send(Instant::now());
                    sent = true;
                }
                // Keep only what a marker split across reads could still need.
                let keep = marker.len().saturating_sub(1);
                if window.len() > keep {
                    window.drain(..window.len() - keep);
                }
            }
            if seen.len() < 4096 {
                seen.extend_from_slice(&chunk[..n.min(4096 - seen.len())]);
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    (rx, handle)
}

/// CLOCK_MONOTONIC in nanoseconds, the clock `Instant` reads.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, which lives for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

/// How a child ended: its wait status, peak RSS in KiB, and when wait4(2) returned.
type Reaped = (libc::c_int, u64, Instant);

/// Reaps `pid` with a blocking wait4(2) on a thread of its own, so that nothing polls while
/// the child runs (inside the one-CPU emulated host a polling loop would take CPU from the
/// very processes being timed). `None` when `limit` passes first; the caller then kills the
/// child, and the thread reaps it.
fn wait_with_rusage(
    pid: libc::pid_t,
    limit: Duration,
    started: Instant,
) -> Result<Option<Reaped>, MeasureError> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = loop {
            let mut status = 0;
            // SAFETY: rusage is plain data that wait4 fills in.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: pointers to live locals; blocks until the child `pid` ends.
            let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            let now = Instant::now();
            if rc == pid {
                break Ok((status, u64::try_from(usage.ru_maxrss).unwrap_or(0), now));
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                break Err(error);
            }
        };
        let _ = tx.send(result);
    });
    match rx.recv_timeout(limit.saturating_sub(started.elapsed())) {
        Ok(Ok(reaped)) => Ok(Some(reaped)),
        Ok(Err(e)) => Err(MeasureError::Wait(e)),
        Err(_) => Ok(None),
    }
}

/// Runs `cmd` to its exit, timing the marker (if any) and the exit from just before spawn.
pub fn timed_run(
    cmd: &mut Command,
    marker: Option<&str>,
    expected_exit: i32,
    limit: Duration,
) -> Result<Run, MeasureError> {
    let program = program_name(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started_monotonic_ns = monotonic_ns();
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| MeasureError::Spawn(program.clone(), e))?;
    let (marker_rx, reader) = watch_stdout(&mut child, marker.unwrap_or("\u{0}never"));
    let stderr_pipe = child.stderr.take();
    let stderr_reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut text = String::new();
        if let Some(pipe) = stderr_pipe {
            let _ = pipe.take(64 * 1024).read_to_string(&mut text);
        }
        text
    });
    let pid = child.id() as libc::pid_t;
    let Some((status, max_rss_kib, exited)) = wait_with_rusage(pid, limit, started)? else {
        // The reaping thread collects it.
        let _ = child.kill();
        return Err(MeasureError::NoExit(program));
    };
    let seen = reader.join().unwrap_or_default();
    let stderr = stderr_reader.join().unwrap_or_default();
    let to_marker_ms = match marker {
        Some(m) => match marker_rx.try_recv() {
            Ok(at) => Some(at.duration_since(started).as_secs_f64() * 1e3),
            Err(_) => {
                return Err(MeasureError::NoMarker {
                    program,
                    marker: m.to_string(),
                    limit,
                    seen,
                })
            }
        },
        None => None,
    };
    let exit_code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if exit_code != Some(expected_exit) {
        return Err(MeasureError::BadExit {
            program,
            code: exit_code,
            expected: expected_exit,
        });
    }
    Ok(Run {
        started_monotonic_ns,
        to_marker_ms,
        to_exit_ms: exited.duration_since(started).as_secs_f64() * 1e3,
        exit_code,
        max_rss_kib,
        stderr,
    })
}

/// Resident memory of a process from /proc/PID/smaps: the total, and the part in mappings
/// at least `guest_kib` large (the guest RAM it backs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    pub total_kib: u64,
    pub guest_kib: u64,
}

impl Resident {
    pub fn overhead_kib(&self) -> u64 {
        self.total_kib.saturating_sub(self.guest_kib)
    }
}

/// Parses smaps text. A mapping counts as guest memory when its size is at least
/// `guest_kib` (VMMs map guest RAM in one or a few regions that large).
pub fn parse_smaps(text: &str, guest_kib: u64) -> Resident {
    let mut total = 0;
    let mut guest = 0;
    let mut current_is_guest = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        let value = words.next().and_then(|v| v.parse::<u64>().ok());
        match (key, value) {
            ("Size:", Some(kib)) => current_is_guest = kib >= guest_kib,
            ("Rss:", Some(kib)) => {
                total += kib;
                if current_is_guest {
                    guest += kib;
                }
            }
            _ => {}
        }
    }
    Resident {
        total_kib: total,
        guest_kib: guest,
    }
}

/// Starts `cmd`, waits for the marker, reads its smaps and its children's, then stops it
/// (SIGKILL, our child; a jailed VMM under it dies with it).
pub fn resident_after_marker(
    cmd: &mut Command,
    marker: &str,
    guest_kib: u64,
    limit: Duration,
) -> Result<Resident, MeasureError> {
    let program = program_name(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| MeasureError::Spawn(program.clone(), e))?;
    let (marker_rx, reader) = watch_stdout(&mut child, marker);
    let got = marker_rx.recv_timeout(limit);
    // Let the VMM settle after the guest's last word.
    std::thread::sleep(Duration::from_millis(200));
    // The process and its children: a jailed VMM runs under its keeper.
    let pid = child.id();
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let mut smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    for child_pid in children.split_whitespace() {
        smaps += &std::fs::read_to_string(format!("/proc/{child_pid}/smaps")).unwrap_or_default();
    }
    let _ = child.kill();
    let _ = child.wait();
    let seen = reader.join().unwrap_or_default();
    if got.is_err() {
        return Err(MeasureError::NoMarker {
            program,
            marker: marker.to_string(),
            limit,
            seen,
        });
    }
    Ok(parse_smaps(&smaps, guest_kib))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_separates_guest_ram_from_the_rest() {
        let text = "\
55d0-55e0 r-xp 00000000 08:01 1 /usr/bin/vmm
Size:                 64 kB
Rss:                  60 kB
7f00-8f00 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:                2048 kB
7ff0-7ff8 rw-p 00000000 00:00 0 [heap]
Size:                512 kB
Rss:                 300 kB
";
        let r = parse_smaps(text, 131072);
        assert_eq!(
            r,
            Resident {
                total_kib: 2408,
                guest_kib: 2048
            }
        );
        assert_eq!(r.overhead_kib(), 360);
    }

    #[test]
    fn timed_run_sees_marker_exit_code_and_rss() {
        // The pause keeps the marker well before the exit: the reader thread that stamps
        // the marker may otherwise run after the exit has been seen.
        let run = timed_run(
            Command::new("/bin/sh").args(["-c", "echo booting; echo READY; sleep 1; exit 3"]),
            Some("READY"),
            3,
            Duration::from_secs(10),
        )
        .unwrap();
        let marker = run.to_marker_ms.unwrap();
        assert!(marker > 0.0 && marker <= run.to_exit_ms);
        assert!(run.max_rss_kib > 0);
    }

    #[test]
    fn a_marker_without_a_newline_is_seen_when_printed() {
        let run = timed_run(
            Command::new("/bin/sh").args(["-c", "printf 'x{'; sleep 2; exit 1"]),
            Some("{"),
            1,
            Duration::from_secs(10),
        )
        .unwrap();
        let marker = run.to_marker_ms.unwrap();
        // Stamped when printed, not at the exit two seconds later (1.7 s to spare for a
        // reader thread that runs late).
        assert!(
            marker + 300.0 < run.to_exit_ms,
            "{marker} vs {}",
            run.to_exit_ms
        );
        assert!(run.started_monotonic_ns > 0);
    }

    #[test]
    fn missing_marker_and_wrong_status_are_errors() {
        let r = timed_run(
            Command::new("/bin/true").arg("x"),
            Some("READY"),
            0,
            Duration::from_secs(5),
        );
        assert!(matches!(r, Err(MeasureError::NoMarker { .. })));
        let r = timed_run(
            &mut Command::new("/bin/false"),
            None,
            0,
            Duration::from_secs(5),
        );
        assert!(matches!(
            r,
            Err(MeasureError::BadExit { code: Some(1), .. })
        ));
    }
}

//! Processes found through /proc: the shims of one containerd (by the `-address` its
//! socket is passed as), their descendants, and killing them by PID. Nothing here panics: the
//! fixture's drop uses it while a failed test unwinds.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use vpod_e2e::process::send_signal;

pub use vpod_e2e::procfs::{cmdline, descendants, is_alive};

/// The live shim processes of the containerd whose socket is `address`.
pub fn shims_of(address: &Path) -> Vec<u32> {
    vpod_e2e::procfs::shims_of(address)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect()
}

/// SIGKILLs `pids` and waits up to `limit` for them to end (to be reaped, or to be zombies
/// of a parent that is not ours); whether they all did.
pub fn kill_and_wait(pids: &[u32], limit: Duration) -> bool {
    for &pid in pids {
        send_signal(pid, Signal::KILL);
    }
    let deadline = Instant::now() + limit;
    loop {
        if pids.iter().all(|&pid| !is_alive(pid)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` (stdin from /dev/null, stdout and stderr collected), killing it by its PID if
/// it outlives `limit`: its output, or None when it could not start or was killed. For the
/// fixture's drop, which must neither hang nor panic.
pub fn run_quietly(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    Some(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Reads `pipe` to its end on a thread of its own.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

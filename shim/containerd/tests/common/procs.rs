//! Processes found through /proc: the shims of one containerd (by the `-address` its
//! socket is passed as), their descendants, and killing them by PID. Nothing here panics: the
//! fixture's drop uses it while a failed test unwinds.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use vpod_e2e::process::send_signal;

/// The PIDs of every process now.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// `pid`'s arguments (empty for a kernel thread or a process that is gone).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// `pid`'s parent and whether it is a zombie, from /proc/PID/stat ("pid (comm) S ppid ...";
/// the name may hold spaces and parentheses, so the fields are read after the last ')').
fn stat(pid: u32) -> Option<(u32, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let zombie = fields.next()? == "Z";
    Some((fields.next()?.parse().ok()?, zombie))
}

/// Whether `pid` is a process that has not ended (not a zombie).
pub fn is_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(_, zombie)| !zombie)
}

/// The live shim processes (`containerd-shim-*`) started by the containerd whose socket is
/// `address`: every v2 shim is given `-address <containerd's socket>`.
pub fn shims_of(address: &Path) -> Vec<u32> {
    let plain = address.display().to_string();
    let url = format!("unix://{plain}");
    all_pids()
        .into_iter()
        .filter(|&pid| is_alive(pid))
        .filter(|&pid| {
            let args = cmdline(pid);
            let is_shim = args.first().is_some_and(|program| {
                Path::new(program)
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with("containerd-shim"))
            });
            is_shim
                && args
                    .windows(2)
                    .any(|w| w[0] == "-address" && (w[1] == plain || w[1] == url))
        })
        .collect()
}

/// The live descendants of `roots`, at any depth, in no particular order.
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|pid| {
            stat(pid)
                .filter(|(_, zombie)| !zombie)
                .map(|(ppid, _)| (pid, ppid))
        })
        .collect();
    let mut found: Vec<u32> = Vec::new();
    let mut frontier: Vec<u32> = roots.to_vec();
    while let Some(parent) = frontier.pop() {
        for &(pid, _) in parents.iter().filter(|(_, ppid)| *ppid == parent) {
            if !found.contains(&pid) && !roots.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
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

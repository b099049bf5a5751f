//! Support for end-to-end tests that boot real guests.
//!
//! A test builds the command it would run on a host with real KVM; [`guest_command`] runs it
//! directly there, or inside the emulated KVM host (`tests/kvm-host/run`) where `/dev/kvm`
//! cannot boot Linux. `tests/guest-mode` makes that decision, once per run.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where guest-booting commands run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    /// `/dev/kvm` from kvm_intel or kvm_amd.
    Native,
    /// Inside the emulated KVM host.
    Emulated,
}

/// The checkout's top directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the checkout exists")
}

/// A file the build makes; a missing one fails the test with the command that makes it.
pub fn built(relative: &str) -> PathBuf {
    let path = repo_root().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `make` (or `make test`) first",
        path.display()
    );
    path
}

/// Asks `tests/guest-mode` (honouring VPOD_GUEST_MODE), once per test process.
pub fn guest_mode() -> GuestMode {
    static MODE: OnceLock<GuestMode> = OnceLock::new();
    *MODE.get_or_init(|| {
        let out = Command::new(repo_root().join("tests/guest-mode"))
            .stderr(Stdio::inherit())
            .output()
            .expect("tests/guest-mode runs");
        match String::from_utf8_lossy(&out.stdout).trim() {
            "native" => GuestMode::Native,
            "emulated" => GuestMode::Emulated,
            other => panic!("tests/guest-mode answered {other:?}"),
        }
    })
}

/// `program args...` as a command that can boot a guest on this machine.
pub fn guest_command<I, S>(program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    match guest_mode() {
        GuestMode::Native => {
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd
        }
        GuestMode::Emulated => kvm_host_command(program, args),
    }
}

/// `program args...` inside the emulated KVM host, whatever this machine's KVM.
pub fn kvm_host_command<I, S>(program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(repo_root().join("tests/kvm-host/run"));
    // make builds the runner before the tests; a build here would fight cargo's lock.
    cmd.env("VPOD_KVM_HOST_NO_BUILD", "1")
        .arg("--")
        .arg(program)
        .args(args);
    cmd.current_dir(repo_root());
    cmd
}

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

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

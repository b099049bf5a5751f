//! The runner's retry, stall and time-limit handling, driven by a fake QEMU: a shell
//! script that plays a healthy, frozen, silent or crashing emulated host in milliseconds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const FAKE_QEMU: &str = r#"#!/bin/sh
# Plays the emulated host: finds the io directory from the -serial file: argument.
for a in "$@"; do case "$a" in file:*) console=${a#file:} ;; esac; done
io=$(dirname "$console")
case "$FAKE_MODE" in
  ok)
    echo "vpod-kvm-host: ready" > "$console"
    sh "$io/job.sh" > "$io/stdout" 2> "$io/stderr"
    echo $? > "$io/status" ;;
  frozen) exec sleep 600 ;;
  silent) echo "vpod-kvm-host: ready" > "$console"; exec sleep 600 ;;
  busy)
    echo "vpod-kvm-host: ready" > "$console"
    [ -n "$FAKE_STATE" ] && touch "$FAKE_STATE"
    while :; do echo "vpod-kvm-host: heartbeat" >> "$console"; sleep 0.2; done ;;
  crash) echo "[ 1.0] oops" > "$console"; echo "qemu: fatal" >&2; exit 1 ;;
  init-error) echo "vpod-kvm-host: error: cannot mount the io share" > "$console"; exit 0 ;;
  flaky)
    if [ -e "$FAKE_STATE" ]; then
      echo "vpod-kvm-host: ready" > "$console"
      sh "$io/job.sh" > "$io/stdout" 2> "$io/stderr"; echo $? > "$io/status"
    else
      touch "$FAKE_STATE"; exec sleep 600
    fi ;;
esac
"#;

struct Fake {
    dir: PathBuf,
}

impl Fake {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("vpod-fake-host-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        std::fs::write(dir.join("assets/vmlinuz"), b"k").unwrap();
        std::fs::write(dir.join("assets/initrd.cpio"), b"i").unwrap();
        write_script(&dir.join("qemu"), FAKE_QEMU);
        write_script(
            &dir.join("prepare"),
            &format!("#!/bin/sh\necho {}\n", dir.join("assets").display()),
        );
        Fake { dir }
    }

    fn run(&self, mode: &str, args: &[&str]) -> (Output, Duration) {
        let (out, took, _) = self.run_with_pid(mode, args);
        (out, took)
    }

    /// Also returns the runner's PID, which names its io directories.
    fn run_with_pid(&self, mode: &str, args: &[&str]) -> (Output, Duration, u32) {
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_vpod-kvm-host"))
            .args(["--boot", "2", "--stall", "2", "--timeout", "20"])
            .args(args)
            .env("VPOD_KVM_HOST_QEMU", self.dir.join("qemu"))
            .env("VPOD_KVM_HOST_PREPARE", self.dir.join("prepare"))
            .env("VPOD_KVM_HOST_RETRY_LOG", self.dir.join("retries"))
            .env("VPOD_KVM_HOST_SHARE", "")
            .env("FAKE_MODE", mode)
            .env("FAKE_STATE", self.dir.join("state"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        (out, started.elapsed(), pid)
    }

    fn retries_logged(&self) -> usize {
        std::fs::read_to_string(self.dir.join("retries"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn healthy_host_passes_output_and_status_through() {
    let fake = Fake::new("ok");
    let (out, _) = fake.run(
        "ok",
        &["--", "sh", "-c", "echo 'a b'; echo oops >&2; exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a b\n");
    assert_eq!(stderr(&out), "oops\n");
    assert_eq!(fake.retries_logged(), 0);
}

#[test]
fn host_that_never_boots_is_retried_once_then_fails_with_125() {
    let fake = Fake::new("frozen");
    let (out, took) = fake.run("frozen", &["true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.contains("RETRY 1 of 1: the emulated host did not come up within"),
        "{err}"
    );
    assert!(err.contains("giving up after 1 retry"), "{err}");
    assert_eq!(fake.retries_logged(), 1);
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn silent_host_after_ready_is_a_stall_reported_with_the_command() {
    let fake = Fake::new("silent");
    let (out, _) = fake.run("silent", &["--retries", "0", "--", "my-test", "--flag"]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(err.contains("stalled: no heartbeat or output for"), "{err}");
    assert!(err.contains("while running `my-test --flag`"), "{err}");
    assert!(err.contains("| vpod-kvm-host: ready"), "{err}");
    assert_eq!(fake.retries_logged(), 0);
}

#[test]
fn stall_then_success_counts_one_retry_and_returns_the_status() {
    let fake = Fake::new("flaky");
    let (out, _) = fake.run("flaky", &["sh", "-c", "echo fine; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fine\n");
    let err = stderr(&out);
    assert!(err.contains("RETRY 1 of 1"), "{err}");
    assert!(err.contains("finished after 1 retry"), "{err}");
    assert_eq!(fake.retries_logged(), 1);
}

#[test]
fn busy_host_past_the_time_limit_gives_124_without_retry() {
    let fake = Fake::new("busy");
    let started = Instant::now();
    let (out, _) = fake.run("busy", &["--timeout", "3", "--", "sleep", "100"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("time limit passed"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(fake.retries_logged(), 0);
}

#[test]
fn crashed_host_is_retried_and_its_messages_reported() {
    let fake = Fake::new("crash");
    let (out, _) = fake.run("crash", &["true"]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(err.contains("exited without the command's status"), "{err}");
    assert!(err.contains("qemu: qemu: fatal"), "{err}");
    assert!(err.contains("| [ 1.0] oops"), "{err}");
    assert_eq!(fake.retries_logged(), 1);
}

#[test]
fn init_error_is_not_retried() {
    let fake = Fake::new("init-error");
    let (out, _) = fake.run("init-error", &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("init failed: cannot mount the io share"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fake.retries_logged(), 0);
}

#[test]
fn no_temporary_directories_are_left_behind() {
    let fake = Fake::new("cleanup");
    let (_, _, ok_pid) = fake.run_with_pid("ok", &["true"]);
    let (_, _, frozen_pid) = fake.run_with_pid("frozen", &["--retries", "0", "--", "true"]);
    for pid in [ok_pid, frozen_pid] {
        let prefix = format!("vpod-kvm-host.{pid}.");
        let left: Vec<String> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

#[test]
fn sigterm_stops_the_host_and_cleans_up() {
    let fake = Fake::new("sigterm");
    let running = fake.dir.join("running");
    let child = Command::new(env!("CARGO_BIN_EXE_vpod-kvm-host"))
        .args(["--", "sleep", "100"])
        .env("VPOD_KVM_HOST_QEMU", fake.dir.join("qemu"))
        .env("VPOD_KVM_HOST_PREPARE", fake.dir.join("prepare"))
        .env("VPOD_KVM_HOST_SHARE", "")
        .env("FAKE_MODE", "busy")
        .env("FAKE_STATE", &running)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // The runner handles signals from before it starts QEMU: wait until the host runs.
    let waiting = Instant::now();
    while !running.exists() {
        assert!(
            waiting.elapsed() < Duration::from_secs(60),
            "the fake host never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: signalling our own child by its PID.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let out = child.wait_with_output().unwrap();
    // Well before the 100 s job would end (a hang guard, not a speed check).
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(130));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    let prefix = format!("vpod-kvm-host.{pid}.");
    let left = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with(&prefix));
    assert!(!left, "io directory left behind");
}

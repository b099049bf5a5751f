//! VMM-core tests on real KVM with the stub guests (any /dev/kvm, PVM included): the console
//! marker, reset, SIGTERM, and the one-line errors for bad input. Every child process is
//! killed by PID if it outlives its time limit, so no test can hang.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod support;
use support::{built, kvm_available, repo_root};

const VMM: &str = env!("CARGO_BIN_EXE_vpod-vmm");

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

fn kill(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's PID, which has not been reaped yet.
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

/// Runs the VMM with `args`; after `signal_after` (if any) sends SIGTERM; kills it with
/// SIGKILL at `limit` and fails the test.
fn run_vmm(args: &[&str], signal_after: Option<Duration>, limit: Duration) -> Finished {
    let mut child = Command::new(VMM)
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the VMM starts");
    let out = drain(child.stdout.take().expect("piped"));
    let err = drain(child.stderr.take().expect("piped"));
    let started = Instant::now();
    let mut signalled = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait works") {
            break status;
        }
        if let Some(after) = signal_after {
            if !signalled && started.elapsed() >= after {
                kill(&child, libc::SIGTERM);
                signalled = true;
            }
        }
        if started.elapsed() > limit {
            kill(&child, libc::SIGKILL);
            let _ = child.wait();
            panic!(
                "vpod-vmm {args:?} did not finish within {limit:?}\nstdout: {}\nstderr: {}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn assert_one_line_error(result: &Finished, needle: &str) {
    assert_eq!(result.status.code(), Some(125), "stderr: {}", result.stderr);
    let lines: Vec<&str> = result.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got {:?}", result.stderr);
    assert!(lines[0].starts_with("vpod-vmm: error: "), "{}", lines[0]);
    assert!(lines[0].contains(needle), "{:?} lacks {needle:?}", lines[0]);
    assert!(!result.stderr.contains("panicked"));
}

#[test]
fn stub_prints_its_marker_and_resets_with_code_0() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let stub = built("build/stub.elf");
    let stub = stub.to_str().expect("UTF-8 path");
    let result = run_vmm(
        &["--kernel", stub, "--initrd", "/dev/null", "--timings"],
        None,
        Duration::from_secs(20),
    );
    assert_eq!(result.stdout, "vpod-stub: ready\n");
    assert_eq!(result.status.code(), Some(0), "stderr: {}", result.stderr);
    assert!(
        result
            .stderr
            .starts_with("vpod-vmm: timings init_ms=- exit_ms="),
        "{}",
        result.stderr
    );
}

#[test]
fn stub_runs_with_several_vcpus_and_more_memory() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let stub = built("build/stub.elf");
    let stub = stub.to_str().expect("UTF-8 path");
    let result = run_vmm(
        &[
            "--kernel",
            stub,
            "--vcpus",
            "4",
            "--memory",
            "4096",
            "--console",
            "stdio",
        ],
        None,
        Duration::from_secs(20),
    );
    assert_eq!(result.stdout, "vpod-stub: ready\n");
    assert_eq!(result.status.code(), Some(0), "stderr: {}", result.stderr);
}

#[test]
fn console_off_hides_the_marker_and_file_console_keeps_it() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let stub = built("build/stub.elf");
    let stub = stub.to_str().expect("UTF-8 path");
    let result = run_vmm(
        &["--kernel", stub, "--console", "off"],
        None,
        Duration::from_secs(20),
    );
    assert_eq!(result.stdout, "");
    assert_eq!(result.status.code(), Some(0));

    let log = std::env::temp_dir().join(format!("vpod-vmm-console-{}", std::process::id()));
    let console = format!("file:{}", log.display());
    let result = run_vmm(
        &["--kernel", stub, "--console", &console],
        None,
        Duration::from_secs(20),
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert_eq!(result.status.code(), Some(0));
    assert_eq!(text, "vpod-stub: ready\n");
}

#[test]
fn idle_stub_runs_until_sigterm_then_exits_143() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let stub = built("build/stub-idle.elf");
    let stub = stub.to_str().expect("UTF-8 path");
    let started = Instant::now();
    let result = run_vmm(
        &["--kernel", stub, "--vcpus", "2"],
        Some(Duration::from_millis(700)),
        Duration::from_secs(20),
    );
    let elapsed = started.elapsed();
    assert_eq!(result.stdout, "vpod-stub: ready\n");
    assert_eq!(result.status.code(), Some(143), "stderr: {}", result.stderr);
    assert!(
        elapsed >= Duration::from_millis(700),
        "exited before the signal"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "took {elapsed:?} to stop"
    );
}

#[test]
fn missing_kernel_is_a_one_line_error() {
    let result = run_vmm(
        &["--kernel", "/nonexistent/vmlinux"],
        None,
        Duration::from_secs(20),
    );
    assert_one_line_error(&result, "/nonexistent/vmlinux");
}

#[test]
fn text_file_as_kernel_is_a_one_line_error() {
    let result = run_vmm(&["--kernel", "Cargo.toml"], None, Duration::from_secs(20));
    if !kvm_available() {
        assert_eq!(result.status.code(), Some(125));
        return;
    }
    assert_one_line_error(&result, "is not an ELF vmlinux or bzImage");
}

#[test]
fn out_of_range_memory_is_a_one_line_error() {
    for memory in ["1", "100000000", "lots"] {
        let result = run_vmm(&["--memory", memory], None, Duration::from_secs(20));
        assert_one_line_error(&result, "--memory");
    }
}

#[test]
fn zero_vcpus_is_a_one_line_error() {
    let result = run_vmm(&["--vcpus", "0"], None, Duration::from_secs(20));
    assert_one_line_error(&result, "--vcpus");
}

#[test]
fn unknown_flag_is_a_one_line_error() {
    let result = run_vmm(&["--frobnicate"], None, Duration::from_secs(20));
    assert_one_line_error(&result, "--frobnicate");
}

#[test]
fn missing_disk_is_a_one_line_error() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let stub = built("build/stub.elf");
    let stub = stub.to_str().expect("UTF-8 path");
    let result = run_vmm(
        &["--kernel", stub, "--disk", "/nonexistent/disk.img,ro"],
        None,
        Duration::from_secs(20),
    );
    assert_one_line_error(&result, "/nonexistent/disk.img");
}

#[test]
fn missing_initrd_is_a_one_line_error() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let stub = built("build/stub.elf");
    let stub = stub.to_str().expect("UTF-8 path");
    let result = run_vmm(
        &["--kernel", stub, "--initrd", "/nonexistent/initrd.img"],
        None,
        Duration::from_secs(20),
    );
    assert_one_line_error(&result, "/nonexistent/initrd.img");
}

#[test]
fn quote_in_guest_command_is_a_one_line_error() {
    let result = run_vmm(&["--", "echo", "\"hi\""], None, Duration::from_secs(20));
    assert_one_line_error(&result, "double quote");
}

#[test]
fn help_lists_the_exit_codes() {
    let result = run_vmm(&["--help"], None, Duration::from_secs(20));
    assert_eq!(result.status.code(), Some(0));
    for needle in ["--kernel", "--disk", "120", "125", "143"] {
        assert!(result.stdout.contains(needle), "help lacks {needle}");
    }
}

#[test]
fn stub_runs_with_a_nic_on_a_tap_in_a_network_namespace_of_its_own() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let stub = built("build/stub.elf");
    let stub = stub.to_str().expect("UTF-8 path");
    // The VMM inherits this thread's namespace, made for the test and gone after it.
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare touches no memory; CLONE_NEWNET moves only this thread.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return None;
                }
                let args = ["--kernel", stub, "--initrd", "/dev/null"];
                let nics = [
                    "--net",
                    "tap=vpodvm0",
                    "--net",
                    "tap=vpodvm1,mac=02:00:00:00:00:07",
                ];
                Some(run_vmm(
                    &[&args[..], &nics[..]].concat(),
                    None,
                    Duration::from_secs(20),
                ))
            })
            .join()
            .expect("netns thread")
    });
    let Some(result) = result else {
        eprintln!("skipped: cannot make a network namespace");
        return;
    };
    assert_eq!(
        result.stdout, "vpod-stub: ready\n",
        "stderr: {}",
        result.stderr
    );
    assert_eq!(result.status.code(), Some(0), "stderr: {}", result.stderr);
}

#[test]
fn bad_mac_is_a_one_line_error() {
    let result = run_vmm(
        &["--net", "tap=t0,mac=02:00:00:00:00"],
        None,
        Duration::from_secs(20),
    );
    assert_one_line_error(&result, "the mac must be six hex bytes xx:xx:xx:xx:xx:xx");
    assert!(!result.stderr.trim_end().ends_with('.'));
}

//! The emulated KVM host runner is reliable: it returns the command's status and output
//! intact, gives a real /dev/kvm, and boots repeatedly without a stall slipping by.
//! These run inside the emulated host whatever this machine's KVM is: they test the runner.

use std::time::Duration;
use vpod_e2e::{kvm_host_command, run_with_limit, sha256_hex};

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn exit_status_seven_comes_back_as_seven() {
    let done = run_with_limit(
        &mut kvm_host_command("sh", ["-c", "echo out; echo err >&2; exit 7"]),
        LIMIT,
    );
    assert_eq!(done.code(), Some(7), "stderr: {}", done.stderr_text());
    assert_eq!(done.stdout_text(), "out\n");
    assert!(
        done.stderr_text().starts_with("err\n"),
        "stderr: {}",
        done.stderr_text()
    );
}

#[test]
fn one_megabyte_of_output_arrives_intact() {
    // 1 MiB of varied bytes, checksummed inside the host and compared out here.
    let script =
        "head -c 1048576 /dev/urandom > /tmp/blob && sha256sum /tmp/blob >&2 && cat /tmp/blob";
    let done = run_with_limit(&mut kvm_host_command("sh", ["-c", script]), LIMIT);
    assert_eq!(done.code(), Some(0), "stderr: {}", done.stderr_text());
    assert_eq!(done.stdout.len(), 1 << 20);
    let inside = done.stderr_text();
    let expected = inside.split_whitespace().next().unwrap_or_default();
    assert_eq!(sha256_hex(&done.stdout), expected);
}

#[test]
fn host_has_a_working_dev_kvm_and_the_writable_checkout() {
    let probe = format!("target/kvm-host-probe-{}", std::process::id());
    let script = format!(
        "test -c /dev/kvm && grep -qw svm /proc/cpuinfo && test -d /sys/module/kvm_amd && pwd && echo hi > {probe}"
    );
    let done = run_with_limit(&mut kvm_host_command("sh", ["-c", &script]), LIMIT);
    assert_eq!(done.code(), Some(0), "stderr: {}", done.stderr_text());
    let root = vpod_e2e::repo_root();
    assert_eq!(
        done.stdout_text().trim(),
        root.to_str().expect("utf-8 path")
    );
    let written = root.join(&probe);
    assert_eq!(
        std::fs::read_to_string(&written).expect("file written inside shows outside"),
        "hi\n"
    );
    std::fs::remove_file(written).expect("probe removed");
}

#[test]
fn twenty_consecutive_runs_succeed_and_retries_are_counted() {
    let mut retried = 0;
    for run in 1..=20 {
        let done = run_with_limit(
            &mut kvm_host_command("true", std::iter::empty::<&str>()),
            LIMIT,
        );
        let stderr = done.stderr_text();
        assert_eq!(done.code(), Some(0), "run {run} failed: {stderr}");
        if stderr.contains("vpod-kvm-host: RETRY") {
            retried += 1;
            eprintln!("run {run} needed a retry:\n{stderr}");
        }
    }
    eprintln!("kvm-host reliability: 20 of 20 runs succeeded, {retried} needed a retry");
    // One retry in twenty is the harness working; more means the host setup is unsound.
    assert!(retried <= 1, "{retried} of 20 runs needed a retry");
}

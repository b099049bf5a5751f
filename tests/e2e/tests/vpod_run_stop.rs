//! How `vpod run` ends when it is told to or when its VM dies: SIGTERM reaches the
//! container, SIGKILL follows the grace period, a container starts with no signal ignored,
//! and a VM killed under a running container is an error, not a hang. One emulated host
//! (where guests need one) runs every check here.

use std::time::{Duration, Instant};

use rustix::process::Signal;
use vpod_e2e::process::send_signal;
use vpod_e2e::vpod::VpodRoot;
use vpod_e2e::{in_guest_host, Checks, Finished};

const LIMIT: Duration = Duration::from_secs(900);
/// From `vpod run` to the container's first line: a pod boot, slow in the emulated host.
const READY_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn vpod_run_stops_on_signals_and_when_its_vm_dies() {
    in_guest_host(LIMIT, || {
        Checks::new()
            .check("sigterm_reaches_a_container_that_traps_it", polite)
            .check("sigkill_follows_the_grace_period", stubborn)
            .check("top_as_the_container_s_pid_1_ends_on_sigterm", top)
            .check(
                "a_container_starts_with_no_signal_ignored",
                no_signal_ignored,
            )
            .check("the_vm_dying_under_a_container_is_an_error", vm_dies)
            .finish();
    });
}

/// Starts `vpod run ARGS`, waits for the container's `ready` line, sends vpod SIGTERM and
/// waits for it: what it left, and the time from the signal to its end.
fn stop_when_ready(args: &[&str]) -> (Finished, Duration) {
    let root = VpodRoot::new("stop");
    let mut vpod = root.spawn_run(args);
    vpod.wait_for_stdout_line("ready", READY_LIMIT);
    let signalled = Instant::now();
    vpod.signal(Signal::TERM);
    let done = vpod.wait(Duration::from_secs(120));
    (done, signalled.elapsed())
}

fn polite() {
    let (done, _) = stop_when_ready(&[
        "--",
        "sh",
        "-c",
        r#"trap "echo term; exit 7" TERM; echo ready; while :; do sleep 0.1; done"#,
    ]);
    assert_eq!(done.code(), Some(7), "{}", done.explain());
}

fn stubborn() {
    let (done, took) = stop_when_ready(&[
        "--stop-timeout",
        "2",
        "--",
        "sh",
        "-c",
        r#"trap "" TERM; echo ready; while :; do sleep 0.1; done"#,
    ]);
    assert_eq!(done.code(), Some(137), "{}", done.explain());
    assert!(
        took >= Duration::from_secs(2),
        "SIGKILL came before the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

fn top() {
    // busybox top, the container's PID 1 (sh execs it), ends on its own SIGTERM handler at
    // once, as under runc: not at the SIGKILL after the grace period.
    let (done, took) = stop_when_ready(&[
        "--stop-timeout",
        "120",
        "--",
        "sh",
        "-c",
        "echo ready; top -b -d 1",
    ]);
    assert_eq!(done.code(), Some(143), "{}", done.explain());
    // Half the grace period: room for a busy emulated host, far from the SIGKILL.
    assert!(took < Duration::from_secs(60), "{took:?}");
}

fn no_signal_ignored() {
    // The agent's SIGPIPE, ignored by Rust's runtime, must not leak into a container:
    // `yes | head` relies on SIGPIPE. (`; true` makes grep the shell's child: busybox sh
    // exec'ing a lone command passes on its own ignored SIGQUIT, on any host.)
    let root = VpodRoot::new("sigign");
    let done = root.run(&["--", "sh", "-c", "grep ^SigIgn /proc/self/status; true"]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    assert!(
        done.has_stdout_line("SigIgn:\t0000000000000000"),
        "{}",
        done.explain()
    );
}

fn vm_dies() {
    let root = VpodRoot::new("vmdies");
    let mut vpod = root.spawn_run(&["--", "sh", "-c", "echo ready; sleep 1000"]);
    vpod.wait_for_stdout_line("ready", READY_LIMIT);
    let vmms = root.vmm_pids();
    assert_eq!(vmms.len(), 1, "one VMM for the pod: {vmms:?}");
    let killed = Instant::now();
    send_signal(vmms[0], Signal::KILL);
    let done = vpod.wait(Duration::from_secs(120));
    let took = killed.elapsed();
    assert_eq!(done.code(), Some(125), "{}", done.explain());
    // Well before its 1000 s sleep would end.
    assert!(
        took < Duration::from_secs(60),
        "vpod took {took:?} to notice\n{}",
        done.explain()
    );
    assert!(
        done.stderr_text().contains("the pod's VM ended"),
        "{}",
        done.explain()
    );
    assert_eq!(root.pods(), Vec::<String>::new(), "the pod was left behind");
}

//! Detached pods through `vpod run -d`, `ps`, `exec`, `logs` and `rm`: a second container
//! shares the pod but not its namespaces, exec returns the command's streams and status and
//! honours its timeout, logs (followed or not) keep stdout and stderr apart, and removal
//! leaves nothing. One emulated host (where guests need one) runs every check here.

use std::time::Duration;

use vpod_e2e::vpod::VpodRoot;
use vpod_e2e::{in_guest_host, Checks};

const LIMIT: Duration = Duration::from_secs(900);

#[test]
fn detached_pods_list_exec_log_and_are_removed() {
    in_guest_host(LIMIT, || {
        let root = VpodRoot::new("pods");
        let pod = root.run_detached(&["--", "sh", "-c", "echo one > /marker; exec sleep 1000"]);
        let second = root.run(&["-d", "--pod", &pod, "--name", "c2", "--", "sleep", "1000"]);
        let mut checks = Checks::new();
        checks
            .check("a_second_container_joins_the_pod", || {
                assert_eq!(second.code(), Some(0), "{}", second.explain());
            })
            .check("ps_lists_the_pod_with_both_containers", || {
                ps_lists(&root, &pod)
            })
            .check("exec_returns_the_command_s_streams_and_status", || {
                exec_streams_and_status(&root, &pod)
            })
            .check("exec_timeout_ends_a_long_command", || {
                exec_timeout(&root, &pod)
            })
            .check("containers_of_a_pod_have_their_own_namespaces", || {
                own_namespaces(&root, &pod)
            })
            .check("the_pod_s_vmm_runs_jailed_and_filtered", || {
                jailed(&root, &pod)
            })
            .check(
                "the_guest_runs_on_kernel_code_shared_from_the_file_after_boot",
                || shared_kernel_text(&root, &pod),
            )
            .check("rm_removes_the_pod", || remove(&root, &pod))
            .check("logs_of_a_detached_container_keep_their_streams", || {
                logs(&root)
            });
        checks.finish();
    });
}

fn ps_lists(root: &VpodRoot, pod: &str) {
    let done = root.vpod("ps", &[]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    // `<pod> vmm_pid=<pid> containers=<name>,<name>`
    let line = done
        .stdout_lines()
        .into_iter()
        .find(|l| l.split(' ').next() == Some(pod))
        .unwrap_or_else(|| panic!("no line for {pod}\n{}", done.explain()));
    let containers = line
        .split(' ')
        .find_map(|w| w.strip_prefix("containers="))
        .unwrap_or_default();
    let mut containers: Vec<&str> = containers.split(',').collect();
    containers.sort_unstable();
    let mut want = vec![pod, "c2"];
    want.sort_unstable();
    assert_eq!(containers, want, "{line}");
}

fn exec_streams_and_status(root: &VpodRoot, pod: &str) {
    let done = root.vpod(
        "exec",
        &[
            pod,
            "--",
            "sh",
            "-c",
            "echo exec-out; echo exec-err >&2; exit 5",
        ],
    );
    assert_eq!(done.code(), Some(5), "{}", done.explain());
    assert!(done.has_stdout_line("exec-out"), "{}", done.explain());
    assert!(done.has_stderr_line("exec-err"), "{}", done.explain());
}

fn exec_timeout(root: &VpodRoot, pod: &str) {
    let done = root.vpod("exec", &["--timeout", "1", pod, "--", "sleep", "30"]);
    assert_ne!(done.code(), Some(0), "{}", done.explain());
    assert!(
        done.elapsed < Duration::from_secs(15),
        "exec --timeout 1 took {:?}\n{}",
        done.elapsed,
        done.explain()
    );
}

/// What a container of the pod sees of itself.
#[derive(Debug)]
struct Seen {
    pid_namespace: String,
    mount_namespace: String,
    marker: String,
    sleeps: String,
}

fn seen_from(root: &VpodRoot, target: &str) -> Seen {
    let done = root.vpod(
        "exec",
        &[
            target,
            "--",
            "sh",
            "-c",
            "readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; \
             cat /marker 2>/dev/null || echo none; ps -o comm | grep -c sleep",
        ],
    );
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    match done.stdout_lines().as_slice() {
        [pid, mnt, marker, sleeps] => Seen {
            pid_namespace: pid.clone(),
            mount_namespace: mnt.clone(),
            marker: marker.clone(),
            sleeps: sleeps.clone(),
        },
        _ => panic!("four lines expected from {target}\n{}", done.explain()),
    }
}

fn own_namespaces(root: &VpodRoot, pod: &str) {
    let first = seen_from(root, pod);
    let second = seen_from(root, &format!("{pod}:c2"));
    assert_ne!(
        first.pid_namespace, second.pid_namespace,
        "same PID namespace"
    );
    assert_ne!(
        first.mount_namespace, second.mount_namespace,
        "same mount namespace"
    );
    assert_eq!(
        (first.marker.as_str(), second.marker.as_str()),
        ("one", "none")
    );
    // Each sees only its own sleep.
    assert_eq!((first.sleeps.as_str(), second.sleeps.as_str()), ("1", "1"));
}

/// A `/proc/PID/status` field of `pid`, trimmed.
fn status_field(pid: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The pid of the pod's jailed VMM, the only child of the keeper named in `vmm.pid`.
fn jailed_vmm(root: &VpodRoot, pod: &str) -> String {
    let keeper = std::fs::read_to_string(root.sandbox_dir(pod).join("vmm.pid")).expect("vmm.pid");
    let keeper = keeper.trim();
    assert_eq!(status_field(keeper, "Name"), "vpod-vmm");
    let children = std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children"))
        .expect("the keeper's children");
    children
        .split_whitespace()
        .next()
        .expect("a jailed VMM")
        .to_string()
}

fn jailed(root: &VpodRoot, pod: &str) {
    let vmm = jailed_vmm(root, pod);
    let vmm = vmm.as_str();
    assert_eq!(status_field(vmm, "Name"), "vpod-vmm-jailed");
    let uid: u32 = status_field(vmm, "Uid")
        .split_whitespace()
        .next()
        .and_then(|u| u.parse().ok())
        .expect("a uid");
    assert!(uid >= 2_000_000_000, "the VMM runs as uid {uid}");
    assert_eq!(status_field(vmm, "CapEff"), "0000000000000000");
    assert_eq!(status_field(vmm, "CapBnd"), "0000000000000000");
    assert_eq!(status_field(vmm, "NoNewPrivs"), "1");
    assert!(
        status_field(vmm, "NSpid").ends_with("\t1"),
        "not its PID namespace's first"
    );
    for kind in ["mnt", "pid", "net", "ipc", "uts"] {
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("ns");
        assert_ne!(
            ns(vmm),
            ns("self"),
            "the VMM shares the host's {kind} namespace"
        );
    }
    // Every thread under its filter.
    let tasks = std::fs::read_dir(format!("/proc/{vmm}/task")).expect("tasks");
    let mut threads = 0;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        assert!(
            status.contains("Seccomp:\t2\n"),
            "thread {:?} is not filtered",
            task.file_name()
        );
        threads += 1;
    }
    assert!(threads >= 2, "{threads} threads");
    // Its root: the pod's files and /dev/kvm, none of the host's.
    let jail = format!("/proc/{vmm}/root");
    for absent in ["etc", "usr", "bin", "proc", "sys", "home"] {
        assert!(
            !std::path::Path::new(&jail).join(absent).exists(),
            "/{absent} is in the jail"
        );
    }
    let devices: Vec<String> = std::fs::read_dir(format!("{jail}/dev"))
        .expect("/dev in the jail")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(devices, ["kvm"]);
}

/// The mappings in `pid`'s smaps of a file whose path ends with `suffix`: (their total
/// size, their Rss, and the copied-on-write pages among them), KiB.
fn file_mappings(pid: &str, suffix: &str) -> (u64, u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("the VMM's smaps");
    let (mut size, mut rss, mut copied) = (0, 0, 0);
    let mut in_kernel = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') {
            in_kernel = line.ends_with(suffix);
            continue;
        }
        let kib = || -> u64 {
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        match first {
            "Size:" if in_kernel => size += kib(),
            "Rss:" if in_kernel => rss += kib(),
            "Anonymous:" if in_kernel => copied += kib(),
            _ => {}
        }
    }
    (size, rss, copied)
}

/// A few seconds after its boot the pod's guest runs on the kernel file's code pages, mapped
/// copy-on-write into its RAM wherever it left the code unchanged (most of the kernel's
/// 8 MiB of .text; the pages its boot patched stay its own), and on the pod initrd's pages
/// wherever its initramfs holds them (the agent's binary), and goes on working after the
/// swap, which it spent paused.
fn shared_kernel_text(root: &VpodRoot, pod: &str) {
    let vmm = jailed_vmm(root, pod);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (size, rss, copied) = loop {
        let found = file_mappings(&vmm, "/vmlinux");
        if found.0 > 0 || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(size >= 4096, "{size} KiB of the kernel file mapped");
    assert!(size <= 8192, "{size} KiB of the kernel file mapped");
    assert!(
        copied <= 64,
        "{copied} KiB copied among the shared pages (Rss {rss} KiB)"
    );
    let done = root.vpod("exec", &[pod, "--", "sh", "-c", "echo after-sharing"]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    assert!(done.has_stdout_line("after-sharing"), "{}", done.explain());
    let (_, rss_after, _) = file_mappings(&vmm, "/vmlinux");
    assert!(rss_after > 0, "the guest ran none of the shared code");
    // The agent is about 3.4 MB; its pages on the initramfs and those of the initrd copy
    // the guest freed after unpacking it (a pod without a share: private guest RAM) match.
    let (initrd, _, _) = file_mappings(&vmm, "/pod-initrd.img");
    assert!(initrd >= 2048, "{initrd} KiB of the initrd mapped");
}

fn remove(root: &VpodRoot, pod: &str) {
    let done = root.vpod("rm", &[pod]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    assert_eq!(root.pods(), Vec::<String>::new(), "pods left after rm");
}

fn logs(root: &VpodRoot) {
    let pod = root.run_detached(&[
        "--user",
        "nobody",
        "--",
        "sh",
        "-c",
        "echo out1; echo err1 >&2; sleep 3; echo out2",
    ]);
    let followed = root.vpod("logs", &["-f", &pod]);
    let container = format!("{pod}:{pod}");
    let read = root.vpod("logs", &[&container]);
    for done in [&followed, &read] {
        assert_eq!(done.code(), Some(0), "{}", done.explain());
        for (line, on_stdout) in [("out1", true), ("out2", true), ("err1", false)] {
            assert_eq!(done.has_stdout_line(line), on_stdout, "{}", done.explain());
            assert_eq!(done.has_stderr_line(line), !on_stdout, "{}", done.explain());
        }
    }
    let missing = root.vpod("logs", &["nosuch"]);
    assert_ne!(missing.code(), Some(0), "{}", missing.explain());
    let done = root.vpod("rm", &[&pod]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
}

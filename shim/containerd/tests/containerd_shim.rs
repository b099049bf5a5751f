//! containerd-shim-vpod-v2 under Debian's containerd 1.6, in the emulated KVM host: `ctr run`
//! with the runtime `io.containerd.vpod.v2` runs a container in a pod VM of its own (the
//! guest kernel answers `uname -r`), with its output, exit status, exec, kill and removal;
//! containerd's CRI plugin runs a vpod pod (runtime handler `vpod`) beside a runc pod, on
//! one CNI bridge; and a shim killed with SIGKILL leaves nothing once containerd has
//! cleaned up after it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::containerd::{CRI_NAMESPACE, CTR_NAMESPACE, SUBNET};
use common::cri::{self, Clients};
use common::procs::is_alive;
use common::*;
use rustix::process::Signal;
use vpod_e2e::net::{http_get_eventually, veth_count};
use vpod_e2e::process::send_signal;
use vpod_proto::cri::{
    ContainerState, ContainerStatsRequest, LinuxContainerConfig, LinuxContainerResources, Mount,
    PodSandboxConfig,
};

/// The runtime a test body drives, and what its containers see.
struct Runtime {
    /// `ctr run --runtime`.
    ctr_runtime: &'static str,
    /// The CRI plugin's runtime handler.
    cri_handler: &'static str,
    /// What `uname -r` prints in its containers.
    kernel_release: String,
    /// Whether its pods are VMs whose VMMs run under the shim's state root.
    boots_vms: bool,
}

fn vpod() -> Runtime {
    let guest = guest_kernel_release();
    assert_ne!(
        guest,
        host_kernel_release(),
        "the guest kernel must differ from the host's for `uname -r` to tell them apart"
    );
    Runtime {
        ctr_runtime: VPOD_RUNTIME,
        cri_handler: "vpod",
        kernel_release: guest,
        boots_vms: true,
    }
}

fn runc() -> Runtime {
    Runtime {
        ctr_runtime: RUNC_RUNTIME,
        cri_handler: "runc",
        kernel_release: host_kernel_release(),
        boots_vms: false,
    }
}

/// A container that ends at once, status 0, on SIGTERM (a plain `sleep` as its PID 1 would
/// ignore the signal), running `first` before it waits.
fn waits_for_sigterm(first: &str) -> Vec<String> {
    let script = format!("trap 'exit 0' TERM; {first} sleep 1000 & wait");
    vec!["sh".into(), "-c".into(), script]
}

fn task_stopped(c: &Containerd, id: &str) -> Result<(), String> {
    match c.task(id) {
        Some(task) if task.status == "STOPPED" => Ok(()),
        other => Err(format!("the task is {other:?}")),
    }
}

#[test]
fn ctr_run_with_the_vpod_runtime_runs_in_a_vm_of_its_own() {
    in_guest_host(
        "ctr_run_with_the_vpod_runtime_runs_in_a_vm_of_its_own",
        Duration::from_secs(480),
        || ctr_run_exec_kill_and_remove(&vpod()),
    );
}

fn ctr_run_exec_kill_and_remove(runtime: &Runtime) {
    let c = Containerd::start("ctr-run", Setup::default());
    let fifo_dir = c.fifo_dir.display().to_string();

    // In the foreground: both streams apart, and the command's exit status as ctr's.
    let once = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        runtime.ctr_runtime,
        "--fifo-dir",
        &fifo_dir,
        DEFAULT_IMAGE,
        "once",
        "sh",
        "-c",
        "uname -r; echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(once.code(), Some(3), "{}", once.explain());
    assert_eq!(
        once.stdout_lines(),
        [runtime.kernel_release.as_str(), "out"],
        "{}",
        once.explain()
    );
    assert!(once.has_stderr_line("err"), "{}", once.explain());
    let containers = c.ctr_ok(&["containers", "ls", "-q"]);
    assert_eq!(containers.stdout_text(), "", "--rm removed the container");

    // Detached, then exec, kill, removal.
    let command = waits_for_sigterm("");
    let mut run = vec![
        "run",
        "-d",
        "--null-io",
        "--runtime",
        runtime.ctr_runtime,
        DEFAULT_IMAGE,
        "sleeper",
    ];
    run.extend(command.iter().map(String::as_str));
    c.ctr_ok(&run);
    let task = c.task("sleeper").expect("ctr tasks ls lists the task");
    assert_eq!(task.status, "RUNNING", "{task:?}");
    if runtime.boots_vms {
        assert!(!c.vmm_pids().is_empty(), "a VMM runs under the shim's root");
        assert_eq!(c.sandbox_dirs().len(), 1, "one pod directory");
    }

    let exec = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "--fifo-dir",
        &fifo_dir,
        "sleeper",
        "sh",
        "-c",
        "echo hi; exit 5",
    ]);
    assert_eq!(exec.code(), Some(5), "{}", exec.explain());
    assert_eq!(exec.stdout_lines(), ["hi"], "{}", exec.explain());
    assert_eq!(c.task("sleeper").map(|t| t.status), Some("RUNNING".into()));

    // Kill of an exec: the signal reaches the exec's process, whose trap sets its status.
    let mut exec = c.ctr_command(CTR_NAMESPACE);
    exec.args([
        "tasks",
        "exec",
        "--exec-id",
        "e-term",
        "--fifo-dir",
        &fifo_dir,
    ])
    .args([
        "sleeper",
        "sh",
        "-c",
        "trap 'exit 7' TERM; sleep 1000 & wait",
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null());
    let mut exec = exec.spawn().expect("ctr tasks exec");
    eventually("the exec runs", Duration::from_secs(60), || {
        match c.ctr(&["tasks", "ps", "sleeper"]).stdout_text() {
            text if text.lines().count() >= 3 => Ok(()),
            text => Err(text),
        }
    });
    // Its trap is set before `sleep` starts: give the shell a moment to get there.
    std::thread::sleep(Duration::from_secs(2));
    c.ctr_ok(&["tasks", "kill", "--exec-id", "e-term", "sleeper"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        match exec.try_wait().expect("waiting for ctr tasks exec") {
            Some(status) => break Some(status),
            None if std::time::Instant::now() > deadline => {
                let _ = exec.kill();
                let _ = exec.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(7),
        "the exec's trap ran"
    );

    // containerd restarted under the running task finds its shim again.
    let mut c = c;
    let pid = task.pid;
    c.restart();
    let again = c
        .task("sleeper")
        .expect("the restarted containerd lists the task");
    assert_eq!(
        (again.status.as_str(), again.pid),
        ("RUNNING", pid),
        "{again:?}"
    );
    let exec = c.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "e2",
        "--fifo-dir",
        &fifo_dir,
        "sleeper",
        "sh",
        "-c",
        "echo after the restart",
    ]);
    assert_eq!(exec.code(), Some(0), "{}", exec.explain());
    assert_eq!(
        exec.stdout_lines(),
        ["after the restart"],
        "{}",
        exec.explain()
    );

    c.ctr_ok(&["tasks", "kill", "sleeper"]);
    eventually(
        "the task STOPPED after SIGTERM",
        Duration::from_secs(30),
        || task_stopped(&c, "sleeper"),
    );
    // `ctr tasks rm` exits with the task's status: the trap's 0.
    c.ctr_ok(&["tasks", "rm", "sleeper"]);
    c.ctr_ok(&["containers", "rm", "sleeper"]);
    assert_eq!(c.tasks(CTR_NAMESPACE), []);
    c.wait_until_nothing_left_of_pods(Duration::from_secs(30));
}

#[test]
fn a_killed_shim_leaves_nothing_behind() {
    in_guest_host(
        "a_killed_shim_leaves_nothing_behind",
        Duration::from_secs(480),
        || killed_shim_is_cleaned_up_after(&vpod()),
    );
}

/// The entries of /run/netns (named network namespaces).
fn named_netns() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn killed_shim_is_cleaned_up_after(runtime: &Runtime) {
    let c = Containerd::start("killed", Setup::default());
    let taps_before = taps();
    let netns_before = named_netns();
    c.ctr_ok(&[
        "run",
        "-d",
        "--null-io",
        "--runtime",
        runtime.ctr_runtime,
        DEFAULT_IMAGE,
        "victim",
        "sleep",
        "1000",
    ]);
    let task = c.task("victim").expect("ctr tasks ls lists the task");
    assert_eq!(task.status, "RUNNING", "{task:?}");
    let shim = c
        .shim_pid(CTR_NAMESPACE, "victim")
        .expect("the task's shim is found (its bundle's shim.pid, or -id victim)");
    assert!(c.shim_pids().contains(&shim), "{shim} is one of our shims");
    // ctr's spec puts the container in the cgroup /<namespace>/<id>: the VM's VMM is in a
    // leaf beside it, which `delete` must remove after the dead shim.
    let leaf = format!("/{CTR_NAMESPACE}/vpod-victim");
    if runtime.boots_vms {
        let vmms = c.vmm_pids();
        assert!(!vmms.is_empty(), "a VMM runs under the shim's root");
        assert_eq!(c.sandbox_dirs().len(), 1, "one pod directory");
        for pid in vmms {
            assert_eq!(cgroup_of(pid), leaf, "VMM {pid}'s cgroup");
        }
    }

    send_signal(shim, Signal::KILL);
    eventually("the shim gone", Duration::from_secs(10), || {
        if is_alive(shim) {
            Err(format!("{shim} lives"))
        } else {
            Ok(())
        }
    });
    // containerd sees its shim's connection end, runs `<shim> delete` for the bundle and
    // publishes the task's exit.
    eventually(
        "the task no longer RUNNING",
        Duration::from_secs(90),
        || match c.task("victim") {
            Some(task) if task.status == "RUNNING" => Err(format!("{task:?}")),
            _ => Ok(()),
        },
    );
    let rm = c.ctr(&["tasks", "rm", "-f", "victim"]);
    assert!(
        rm.status.success() || rm.stderr_text().contains("not found"),
        "ctr tasks rm -f: {}\n--- containerd's log\n{}",
        rm.explain(),
        c.log_tail(60)
    );
    c.ctr_ok(&["containers", "rm", "victim"]);
    assert_eq!(c.tasks(CTR_NAMESPACE), []);
    c.wait_until_nothing_left_of_pods(Duration::from_secs(60));
    let mount = vpod_sandbox::cgroup::cgroup2_mount()
        .expect("reading the mounts")
        .expect("a cgroup v2 hierarchy");
    let leaf_dir = mount.join(leaf.trim_start_matches('/'));
    assert!(!leaf_dir.exists(), "{} is left", leaf_dir.display());
    assert_eq!(taps(), taps_before, "no tap left");
    assert_eq!(
        named_netns(),
        netns_before,
        "no named network namespace left"
    );
}

#[test]
fn a_runc_pod_and_a_vpod_pod_run_side_by_side_through_containerd_cri() {
    in_guest_host(
        "a_runc_pod_and_a_vpod_pod_run_side_by_side_through_containerd_cri",
        Duration::from_secs(480),
        || pods_side_by_side(&runc(), &vpod()),
    );
}

/// The kubelet's pod cgroup the tests' CRI pods name (`linux.cgroup_parent`): the CRI
/// plugin puts the sandbox's `cgroupsPath` under it, runc's pause container there, and the
/// vpod shim its VMM in a `vpod-<id>` leaf beside.
const POD_CGROUP_PARENT: &str = "/vpod-shim-e2e";

/// A CRI pod config under [`POD_CGROUP_PARENT`].
fn pod_config(name: &str, c: &Containerd) -> PodSandboxConfig {
    let mut pod = cri::pod_config(name, &c.pod_log_dir);
    pod.linux.get_or_insert_with(Default::default).cgroup_parent = POD_CGROUP_PARENT.into();
    pod
}

/// The host's directory of [`POD_CGROUP_PARENT`].
fn pod_cgroup_parent_dir() -> PathBuf {
    let mount = vpod_sandbox::cgroup::cgroup2_mount()
        .expect("reading the mounts")
        .expect("a cgroup v2 hierarchy");
    mount.join(POD_CGROUP_PARENT.trim_start_matches('/'))
}

/// The cgroup (v2) process `pid` is in.
fn cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_owned()
}

/// Checks that no pod VM's cgroup is left under [`POD_CGROUP_PARENT`], then removes the
/// parent (the kubelet's part; runc's leaf went with its container).
fn pod_cgroups_are_gone() {
    let parent = pod_cgroup_parent_dir();
    let leaves: Vec<String> = std::fs::read_dir(&parent)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("vpod-"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(leaves, Vec::<String>::new(), "the pods' cgroups are gone");
    let _ = std::fs::remove_dir(&parent);
}

/// A pod of each runtime with one container, through the CRI plugin.
struct TwoPods {
    pods: [String; 2],
    containers: [String; 2],
}

/// The names of the `i`th pod of [`start_two_pods`] and of its container.
fn pod_and_container_names(i: usize, runtime: &Runtime) -> (String, String) {
    let handler = runtime.cri_handler;
    (format!("pod{i}-{handler}"), format!("ctr{i}-{handler}"))
}

/// RunPodSandbox of a pod for each runtime at once, then a container in each running
/// `command(i, runtime)`.
async fn start_two_pods(
    cri: &Clients,
    c: &Containerd,
    runtimes: [&Runtime; 2],
    command: impl Fn(usize, &Runtime) -> Vec<String>,
) -> TwoPods {
    let names = [0, 1].map(|i| pod_and_container_names(i, runtimes[i]));
    let pod_configs = [0, 1].map(|i| pod_config(&names[i].0, c));
    let (mut a, mut b) = (cri.clone(), cri.clone());
    let (first, second) = tokio::join!(
        cri::run_pod(&mut a, &pod_configs[0], runtimes[0].cri_handler),
        cri::run_pod(&mut b, &pod_configs[1], runtimes[1].cri_handler),
    );
    let pods = [first, second];
    let container_configs = [0, 1].map(|i| {
        let command = command(i, runtimes[i]);
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        let mut config = cri::container_config(&names[i].1, DEFAULT_IMAGE, &command);
        // A host directory (hostPath): for a vpod pod it reaches the guest through the
        // pod's shared directory.
        let volume = c.dir.join("volume");
        std::fs::create_dir_all(&volume).expect("the volume's directory");
        std::fs::write(volume.join("greeting"), "hello from the host\n").expect("greeting");
        config.mounts = vec![Mount {
            container_path: "/vol".into(),
            host_path: volume.display().to_string(),
            ..Default::default()
        }];
        config
    });
    let [first_config, second_config] = container_configs;
    let (first, second) = tokio::join!(
        cri::start_container(&mut a, &pods[0], &pod_configs[0], first_config),
        cri::start_container(&mut b, &pods[1], &pod_configs[1], second_config),
    );
    TwoPods {
        pods,
        containers: [first, second],
    }
}

/// Stops and removes both pods' containers, then the pods.
async fn remove_two_pods(cri: &Clients, two: &TwoPods) {
    let (mut a, mut b) = (cri.clone(), cri.clone());
    tokio::join!(
        cri::stop_and_remove_container(&mut a, &two.containers[0], 10),
        cri::stop_and_remove_container(&mut b, &two.containers[1], 10),
    );
    tokio::join!(
        cri::stop_and_remove_pod(&mut a, &two.pods[0]),
        cri::stop_and_remove_pod(&mut b, &two.pods[1]),
    );
}

/// Waits (up to 60 s) until the CRI log file `path` has the stdout record `text`.
async fn log_has(path: &Path, text: &str) {
    let started = std::time::Instant::now();
    loop {
        let records = cri::log_records(path);
        if records
            .iter()
            .any(|(stream, t)| stream == "stdout" && t == text)
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} has no stdout record {text:?}: {records:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pods_side_by_side(first: &Runtime, second: &Runtime) {
    let c = Containerd::start(
        "cri",
        Setup {
            cni_bridge: true,
            ..Setup::default()
        },
    );
    block_on(async {
        let mut cri = cri::connect(&c.socket, true).await;
        let two = start_two_pods(&cri, &c, [first, second], |_, _| {
            waits_for_sigterm("uname -r;")
        })
        .await;
        if first.boots_vms || second.boots_vms {
            let vmms = c.vmm_pids();
            assert!(!vmms.is_empty(), "a VMM runs under the shim's root");
            // The VMM (its keeper and the jailed VMM) runs in the pod's cgroup.
            for pid in vmms {
                let cgroup = cgroup_of(pid);
                assert!(
                    cgroup.starts_with(&format!("{POD_CGROUP_PARENT}/vpod-")),
                    "VMM {pid} is in the cgroup {cgroup:?}"
                );
            }
        }
        for (i, runtime) in [first, second].into_iter().enumerate() {
            let container = &two.containers[i];
            let (pod_name, container_name) = pod_and_container_names(i, runtime);
            let log = c
                .pod_log_dir
                .join(&pod_name)
                .join(container_name)
                .join("0.log");
            log_has(&log, &runtime.kernel_release).await;
            assert_eq!(
                cri::container_state(&mut cri, container).await,
                ContainerState::ContainerRunning
            );
            let uname = cri::exec_text(&mut cri, container, &["uname", "-r"], 60).await;
            assert_eq!(
                uname,
                (format!("{}\n", runtime.kernel_release), String::new(), 0)
            );
            let streams = cri::exec_text(
                &mut cri,
                container,
                &["sh", "-c", "echo out; echo err >&2; exit 4"],
                60,
            )
            .await;
            assert_eq!(
                streams,
                ("out\n".into(), "err\n".into(), 4),
                "{}",
                runtime.cri_handler
            );
            // The volume, through the pod's shared directory. (runc's exec in the emulated
            // host, whose root is an initramfs, runc cannot pivot from, starts in that
            // root rather than the container's: the volume is checked in the VM only.)
            if runtime.boots_vms {
                let handler = runtime.cri_handler;
                let write = format!("cat /vol/greeting; echo from-{handler} > /vol/from-{handler}");
                let volume = cri::exec_text(&mut cri, container, &["sh", "-c", &write], 60).await;
                assert_eq!(volume, ("hello from the host\n".into(), String::new(), 0));
                let written = std::fs::read_to_string(c.dir.join(format!("volume/from-{handler}")));
                assert_eq!(
                    written.ok().as_deref(),
                    Some(format!("from-{handler}\n").as_str()),
                    "the host sees what the container wrote"
                );
            }
            // Stats: the container's cgroup, the guest's for vpod (the shim's Stats).
            let stats = cri
                .runtime
                .container_stats(ContainerStatsRequest {
                    container_id: container.clone(),
                })
                .await
                .expect("ContainerStats")
                .into_inner()
                .stats
                .expect("stats");
            let memory = stats
                .memory
                .and_then(|m| m.working_set_bytes)
                .map(|v| v.value);
            assert!(
                memory.is_some_and(|bytes| bytes > 0),
                "{}: memory working set {memory:?}",
                runtime.cri_handler
            );
            if runtime.boots_vms {
                oom_killed_container_is_reported(&mut cri, &c, &two.pods[i], &pod_name).await;
            }
        }
        remove_two_pods(&cri, &two).await;
    });
    let left = c.ctr_in(CRI_NAMESPACE, &["containers", "ls", "-q"]);
    assert_eq!(
        left.stdout_text(),
        "",
        "the CRI plugin removed every container"
    );
    c.wait_until_nothing_left_of_pods(Duration::from_secs(60));
    assert_eq!(veth_count(), 0, "no veth left");
    pod_cgroups_are_gone();
}

/// A second container in the pod, limited to 32 MiB, that reads 64 MiB into one buffer:
/// the guest's OOM killer ends it, the shim publishes TaskOOM, and containerd's CRI plugin
/// gives the reason `OOMKilled`.
async fn oom_killed_container_is_reported(
    cri: &mut Clients,
    c: &Containerd,
    pod_id: &str,
    pod_name: &str,
) {
    let mut config = cri::container_config(
        "hog",
        DEFAULT_IMAGE,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
    );
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let pod = pod_config(pod_name, c);
    let hog = cri::start_container(cri, pod_id, &pod, config).await;
    let status = cri::wait_exited(cri, &hog, Duration::from_secs(120)).await;
    assert_eq!(
        (status.reason.as_str(), status.exit_code),
        ("OOMKilled", 137),
        "the hog's status: {status:?}"
    );
    cri::stop_and_remove_container(cri, &hog, 10).await;
}

#[test]
fn the_vpod_pod_gets_an_ip_from_cni_and_reaches_the_runc_pod() {
    in_guest_host(
        "the_vpod_pod_gets_an_ip_from_cni_and_reaches_the_runc_pod",
        Duration::from_secs(480),
        || pods_reach_each_other(&runc(), &vpod()),
    );
}

/// What the `i`th pod (of `runtime`) serves over HTTP in [`pods_reach_each_other`]: its name.
fn served_text(i: usize, runtime: &Runtime) -> String {
    pod_and_container_names(i, runtime).0
}

fn pods_reach_each_other(first: &Runtime, second: &Runtime) {
    let c = Containerd::start(
        "cni",
        Setup {
            cni_bridge: true,
            ..Setup::default()
        },
    );
    let subnet_prefix = SUBNET.trim_end_matches("0/24");
    let runtimes = [first, second];
    block_on(async {
        let mut cri = cri::connect(&c.socket, true).await;
        // Each serves its pod's name on port 8080 (busybox httpd, in the background).
        let two = start_two_pods(&cri, &c, runtimes, |i, runtime| {
            waits_for_sigterm(&format!(
                "mkdir -p /tmp/www && echo {} > /tmp/www/index.html && httpd -p 8080 -h /tmp/www &&",
                served_text(i, runtime)
            ))
        })
        .await;
        let mut ips = Vec::new();
        for (i, runtime) in runtimes.into_iter().enumerate() {
            let ip = cri::pod_ip(&mut cri, &two.pods[i]).await;
            assert!(
                ip.starts_with(subnet_prefix),
                "the {} pod's IP {ip:?} is in {SUBNET}",
                runtime.cri_handler
            );
            ips.push(ip);
        }
        // The host (the test's namespace, on the bridge) reaches both.
        for (i, ip) in ips.iter().enumerate() {
            let addr: SocketAddr = format!("{ip}:8080").parse().expect("an address");
            let body =
                tokio::task::block_in_place(|| http_get_eventually(addr, Duration::from_secs(60)));
            assert_eq!(
                body,
                format!("{}\n", served_text(i, runtimes[i])),
                "GET http://{addr}/"
            );
        }
        // Each pod reaches the other.
        for (from, to) in [(1, 0), (0, 1)] {
            let url = format!("http://{}:8080/", ips[to]);
            let got = cri::exec_text(
                &mut cri,
                &two.containers[from],
                // No `-T`: Debian's busybox-static wget crashes with it; ExecSync's
                // timeout bounds the fetch.
                &["wget", "-qO-", &url],
                60,
            )
            .await;
            assert_eq!(
                got,
                (
                    format!("{}\n", served_text(to, runtimes[to])),
                    String::new(),
                    0
                ),
                "the {} pod fetching {url}",
                runtimes[from].cri_handler
            );
        }
        remove_two_pods(&cri, &two).await;
    });
    c.wait_until_nothing_left_of_pods(Duration::from_secs(60));
    assert_eq!(veth_count(), 0, "no veth left");
    assert_eq!(
        c.cni_allocations(),
        Vec::<String>::new(),
        "every IP released"
    );
    pod_cgroups_are_gone();
}

//! State that survives: a restarted `vpod-cri` (even after kill -9) re-attaches to running
//! pods and resumes their logs; a daemon killed during RunPodSandbox or CreateContainer
//! leaves nothing behind after the restart; a VM that dies is reported; a pod's cgroup
//! on the host (its VMM's and virtiofsd's) goes with its VM, crash or not. And 20 pods
//! created at once.

mod common;

use std::time::Duration;

use common::*;
use vpod_proto::cri::*;

/// The numbers of the "tick N" lines in a log, in order.
fn ticks(log_path: &str) -> Vec<u64> {
    log_texts(log_path)
        .into_iter()
        .filter_map(|(_, text)| text.strip_prefix("tick ")?.parse().ok())
        .collect()
}

async fn containers(c: &mut Clients) -> Vec<Container> {
    c.runtime
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
}

async fn pods(c: &mut Clients) -> Vec<PodSandbox> {
    c.runtime
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items
}

#[test]
fn restarts_reattach_and_crashes_during_runp_and_create_leak_nothing() {
    in_guest_host(
        "restarts_reattach_and_crashes_during_runp_and_create_leak_nothing",
        Duration::from_secs(600),
        || async {
            let mut daemon = Daemon::start("state");
            let mut c = daemon.connect().await;
            let image = pull(&mut c, &default_image()).await;
            let pod = pod_config("keep", &daemon.log_dir);
            let pod_id = run_pod(&mut c, pod.clone()).await;
            let ticker = create_container(
                &mut c,
                &pod_id,
                &pod,
                container_config(
                    "ticker",
                    &image,
                    &[
                        "sh",
                        "-c",
                        "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
                    ],
                ),
            )
            .await
            .expect("CreateContainer");
            c.runtime
                .start_container(StartContainerRequest {
                    container_id: ticker.clone(),
                })
                .await
                .expect("StartContainer");
            let log_path = container_status(&mut c, &ticker).await.log_path;
            eventually("ticks in the log", Duration::from_secs(20), || {
                let n = ticks(&log_path).len();
                async move { n >= 3 }
            })
            .await;

            // kill -9: the VM keeps running; a new daemon re-attaches and keeps logging.
            let vmm = daemon.vmm_pids();
            assert_eq!(vmm.len(), 1);
            daemon.kill9();
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(daemon.vmm_pids(), vmm, "the VMM outlives the daemon");
            let before = ticks(&log_path).len();
            daemon.spawn();
            let mut c = daemon.connect().await;
            let status = pod_status(&mut c, &pod_id).await.status.unwrap();
            assert_eq!(status.state, PodSandboxState::SandboxReady as i32);
            let ctr = container_status(&mut c, &ticker).await;
            assert_eq!(ctr.state, ContainerState::ContainerRunning as i32);
            let out = c
                .runtime
                .exec_sync(ExecSyncRequest {
                    container_id: ticker.clone(),
                    cmd: vec!["echo".into(), "still here".into()],
                    timeout: 20,
                })
                .await
                .expect("ExecSync after the restart")
                .into_inner();
            assert_eq!(out.stdout, b"still here\n");
            eventually("ticks after the restart", Duration::from_secs(20), || {
                let n = ticks(&log_path).len();
                async move { n >= before + 10 }
            })
            .await;
            // Nothing lost while the daemon was down, nothing written twice.
            let seen = ticks(&log_path);
            let expected: Vec<u64> = (0..seen.len() as u64).collect();
            assert_eq!(seen, expected, "the log resumes exactly where it stopped");

            // A VM that stalls (as on a host loaded past its cores) for longer than the
            // agent connection's keep-alive (a ping within 30 s, its answer within 60 s):
            // its connections drop, its container is not lost.
            // The jailed VMM itself: stopping its keeper would stall nothing.
            let jailed = vpod_sandbox::vmm::jailed_vmm_of(vmm[0]).expect("a jailed VMM");
            let vmm_pid = rustix::process::Pid::from_raw(jailed as i32).unwrap();
            rustix::process::kill_process(vmm_pid, rustix::process::Signal::STOP).unwrap();
            tokio::time::sleep(Duration::from_secs(95)).await;
            rustix::process::kill_process(vmm_pid, rustix::process::Signal::CONT).unwrap();
            let before = ticks(&log_path).len();
            eventually("ticks after the stall", Duration::from_secs(60), || {
                let n = ticks(&log_path).len();
                async move { n >= before + 10 }
            })
            .await;
            let ctr = container_status(&mut c, &ticker).await;
            assert_eq!(
                ctr.state,
                ContainerState::ContainerRunning as i32,
                "the container outlives a stalled VM: {ctr:?}"
            );
            assert!(
                daemon.log().contains("following the container again"),
                "the stall did break the agent connection (else this tests nothing)"
            );
            let seen = ticks(&log_path);
            let expected: Vec<u64> = (0..seen.len() as u64).collect();
            assert_eq!(seen, expected, "nothing lost or repeated over the stall");

            // kill -9 during RunPodSandbox (the VM is booting).
            let keep_entries = daemon.state_entries();
            let runp = spawn_run_pod(&c, pod_config("doomed", &daemon.log_dir));
            eventually("the second VMM starting", Duration::from_secs(20), || {
                let n = daemon.vmm_pids().len();
                async move { n == 2 }
            })
            .await;
            daemon.kill9();
            let _ = runp.await;
            assert_eq!(
                daemon.vmm_pids().len(),
                2,
                "the booting VMM survived the crash"
            );
            daemon.spawn();
            let mut c = daemon.connect().await;
            assert_eq!(daemon.vmm_pids(), vmm, "only the first pod's VMM is left");
            assert_eq!(daemon.sandbox_dirs(), vec![pod_id.clone()]);
            assert_eq!(daemon.state_entries(), keep_entries);
            let listed = pods(&mut c).await;
            assert_eq!(listed.len(), 1, "{listed:?}");
            // The name is free again.
            let retry = run_pod(&mut c, pod_config("doomed", &daemon.log_dir)).await;
            c.runtime
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: retry,
                })
                .await
                .expect("RemovePodSandbox");

            // kill -9 during CreateContainer, after the guest made the container and before
            // the daemon recorded it.
            daemon.kill9();
            daemon.spawn_with_env(&[("VPOD_CRI_TEST_DELAY_CREATE_MS", "30000")]);
            let c = daemon.connect().await;
            let mut racer = c.clone();
            let (pod_for_task, pod_id_for_task, image_for_task) =
                (pod.clone(), pod_id.clone(), image.clone());
            let create = tokio::spawn(async move {
                create_container(
                    &mut racer,
                    &pod_id_for_task,
                    &pod_for_task,
                    container_config("late", &image_for_task, &["sleep", "3600"]),
                )
                .await
            });
            let sandbox_json = daemon
                .root
                .join("sandboxes")
                .join(&pod_id)
                .join("sandbox.json");
            eventually(
                "the guest creating the container",
                Duration::from_secs(30),
                || {
                    let text = std::fs::read_to_string(&sandbox_json).unwrap_or_default();
                    let log = daemon.log();
                    async move {
                        text.matches("\"l-").count() > 0
                            && log.contains("test hook: pausing before recording the container")
                    }
                },
            )
            .await;
            assert_eq!(daemon.state_entries().len(), keep_entries.len() + 1);
            daemon.kill9();
            let _ = create.await;
            daemon.spawn();
            let mut c = daemon.connect().await;
            assert_eq!(daemon.state_entries(), keep_entries);
            let listed = containers(&mut c).await;
            assert_eq!(listed.len(), 1, "{listed:?}");
            let text = std::fs::read_to_string(&sandbox_json).unwrap();
            let state: serde_json::Value = serde_json::from_str(&text).unwrap();
            let guest_containers: Vec<&String> =
                state["containers"].as_object().unwrap().keys().collect();
            assert_eq!(guest_containers, vec![&ticker], "{text}");
            // The name is free again, and the pod still takes containers.
            let late = create_container(
                &mut c,
                &pod_id,
                &pod,
                container_config("late", &image, &["sleep", "3600"]),
            )
            .await
            .expect("CreateContainer after the crash");
            c.runtime
                .start_container(StartContainerRequest {
                    container_id: late.clone(),
                })
                .await
                .expect("StartContainer");

            // A VM that dies is reported: pod NotReady, containers Exited.
            for pid in daemon.vmm_pids() {
                let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
                rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
            }
            let mut probe = c.clone();
            let pid2 = pod_id.clone();
            eventually("the dead VM reported", Duration::from_secs(20), || {
                let mut probe = probe.clone();
                let pid2 = pid2.clone();
                async move {
                    pod_status(&mut probe, &pid2).await.status.unwrap().state
                        == PodSandboxState::SandboxNotready as i32
                }
            })
            .await;
            let dead = container_status(&mut probe, &late).await;
            assert_eq!(dead.state, ContainerState::ContainerExited as i32);
            assert_eq!(dead.reason, "VmExited");
            c.runtime
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod_id.clone(),
                })
                .await
                .expect("RemovePodSandbox");
            assert!(daemon.state_entries().is_empty());
            assert!(daemon.sandbox_dirs().is_empty());
        },
    );
}

#[test]
fn twenty_pods_created_at_once_all_run() {
    in_guest_host_with_memory(
        "twenty_pods_created_at_once_all_run",
        Duration::from_secs(900),
        Some(6144),
        || async {
            let daemon = Daemon::start("twenty");
            let c = daemon.connect().await;
            let started = std::time::Instant::now();
            let mut tasks = Vec::new();
            for i in 0..20 {
                let mut c = c.clone();
                let config = pod_config(&format!("pod-{i}"), &daemon.log_dir);
                tasks.push(tokio::spawn(async move { run_pod(&mut c, config).await }));
            }
            let mut ids = Vec::new();
            for task in tasks {
                ids.push(task.await.expect("the RunPodSandbox task"));
            }
            println!("20 pods ready in {:?}", started.elapsed());
            let mut c = c.clone();
            let ready = pods(&mut c).await;
            assert_eq!(ready.len(), 20);
            assert!(ready
                .iter()
                .all(|p| p.state == PodSandboxState::SandboxReady as i32));
            assert_eq!(daemon.vmm_pids().len(), 20);
            let mut tasks = Vec::new();
            for id in ids {
                let mut c = c.clone();
                tasks.push(tokio::spawn(async move {
                    c.runtime
                        .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                        .await
                }));
            }
            for task in tasks {
                task.await.unwrap().expect("RemovePodSandbox");
            }
            assert!(daemon.vmm_pids().is_empty());
            assert!(daemon.sandbox_dirs().is_empty());
            assert!(daemon.state_entries().is_empty());
        },
    );
}

/// The cgroup v2 path of process `pid` (`/proc/PID/cgroup`'s `0::` line); empty when gone.
fn cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or_default()
        .to_string()
}

/// The pod's recorded VMM (`vmm.pid`) and its descendants (the VMM the jail's waiting
/// process starts).
fn vmm_and_children(sandbox_dir: &std::path::Path) -> Vec<u32> {
    let pid: u32 = std::fs::read_to_string(sandbox_dir.join("vmm.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&parent) = tree.get(next) {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        tree.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
        next += 1;
    }
    tree
}

/// `/proc/PID/comm`, for messages.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Removes the test's cgroup parents (the kubelet's, here made by the runtime), deepest
/// first, whatever the test left.
struct CgroupParents(std::path::PathBuf);

impl Drop for CgroupParents {
    fn drop(&mut self) {
        fn rmdir_all(dir: &std::path::Path) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    rmdir_all(&entry.path());
                }
            }
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            for _ in 0..300 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        rmdir_all(&self.0);
    }
}

/// A pod with a `cgroup_parent` (the kubelet's cgroupfs form) runs its VMM (and the jail's
/// process around it) and its virtiofsd in a leaf under it, which is charged the guest's
/// memory; the leaf survives a kill -9 of the daemon while the VM runs, goes at
/// StopPodSandbox, and is removed by the restarted daemon when the pod's VM died meanwhile.
#[test]
fn a_pod_s_vmm_and_virtiofsd_run_in_its_cgroup_which_goes_when_the_vm_does() {
    in_guest_host(
        "a_pod_s_vmm_and_virtiofsd_run_in_its_cgroup_which_goes_when_the_vm_does",
        Duration::from_secs(600),
        || async {
            let mount = vpod_sandbox::cgroup::cgroup2_mount()
                .unwrap()
                .expect("the emulated host mounts cgroup2");
            let top = format!("vpod-e2e-{}", std::process::id());
            let _parents = CgroupParents(mount.join(&top));
            let mut daemon = Daemon::start("cgroups");
            let mut c = daemon.connect().await;
            let parent = |uid: &str| format!("/{top}/kubepods/burstable/pod{uid}");
            let mut live = pod_config("cg-live", &daemon.log_dir);
            live.linux = Some(LinuxPodSandboxConfig {
                cgroup_parent: parent("live"),
                ..Default::default()
            });
            let mut dying = pod_config("cg-dying", &daemon.log_dir);
            dying.linux = Some(LinuxPodSandboxConfig {
                cgroup_parent: parent("dying"),
                ..Default::default()
            });
            let live_id = run_pod(&mut c, live).await;
            let dying_id = run_pod(&mut c, dying).await;
            let live_leaf = format!("{}/vpod-{live_id}", parent("live"));
            let dying_leaf = format!("{}/vpod-{dying_id}", parent("dying"));
            let live_dir = mount.join(live_leaf.trim_start_matches('/'));
            let dying_dir = mount.join(dying_leaf.trim_start_matches('/'));
            let sandboxes = daemon.root.join("sandboxes");

            // The VMM (and its children) and virtiofsd are in the leaf, nothing else is.
            let vmm = vmm_and_children(&sandboxes.join(&live_id));
            for pid in &vmm {
                assert_eq!(cgroup_of(*pid), live_leaf, "VMM process {pid}");
            }
            let procs = std::fs::read_to_string(live_dir.join("cgroup.procs")).unwrap();
            let in_leaf: Vec<u32> = procs.lines().filter_map(|p| p.parse().ok()).collect();
            let named: Vec<(u32, String)> = in_leaf.iter().map(|&p| (p, comm(p))).collect();
            let virtiofsd = named.iter().filter(|(_, c)| c == "virtiofsd").count();
            assert!(virtiofsd > 0, "no virtiofsd in {named:?}");
            // KVM's own worker of the VM (`kvm-nx-lpage-recovery-<VMM pid>`) runs in the
            // cgroup of the process that made the VM: charged to the pod as well.
            let stray: Vec<&(u32, String)> = named
                .iter()
                .filter(|(pid, c)| !vmm.contains(pid) && c != "virtiofsd" && !c.starts_with("kvm-"))
                .collect();
            assert!(
                stray.is_empty(),
                "{stray:?} in the leaf: {named:?}, VMM {vmm:?}"
            );
            assert!(!in_leaf.contains(&daemon.pid()));
            // The guest's memory is charged there: its kernel and init touched MiBs.
            let charged = vpod_sandbox::cgroup::memory_current(&live_dir)
                .expect("the leaf has memory.current");
            println!("the live pod's leaf is charged {} KiB", charged >> 10);
            assert!(charged >= 8 << 20, "memory.current {charged}");

            // A daemon killed and restarted leaves a running pod's leaf alone.
            daemon.kill9();
            daemon.spawn();
            assert_eq!(cgroup_of(vmm[0]), live_leaf);
            // The other pod's VM dies while no daemon runs: the restarted one removes its leaf.
            daemon.kill9();
            let dying_vmm = vmm_and_children(&sandboxes.join(&dying_id));
            for pid in &dying_vmm {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(*pid as i32).unwrap(),
                    rustix::process::Signal::KILL,
                );
            }
            assert!(dying_dir.exists());
            daemon.spawn();
            let mut c = daemon.connect().await;
            assert!(
                !dying_dir.exists(),
                "the dead pod's leaf outlived the restart\n{}",
                daemon.log()
            );
            assert!(live_dir.exists());
            stop_and_remove_pod(&mut c, &dying_id).await;

            // StopPodSandbox removes the leaf; the parent (the kubelet's) stays.
            c.runtime
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: live_id.clone(),
                })
                .await
                .expect("StopPodSandbox");
            assert!(!live_dir.exists(), "the leaf outlived StopPodSandbox");
            assert!(live_dir.parent().unwrap().exists());
            stop_and_remove_pod(&mut c, &live_id).await;
            assert!(!live_dir.exists());
        },
    );
}

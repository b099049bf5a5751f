//! Many containers on one `vpod-cri`: more than 1,024 descriptors open in it (the kernel's
//! default soft limit, which it raises at start), and every container still logs and
//! answers ExecSync. Each container holds three in vpod-cri (its log file, its follower's
//! connection to the agent, the VMM's pidfd that follower waits on), each pod about four,
//! so six pods of sixty containers cross the line with few VMs, which the emulated host's
//! one CPU could not run by the hundred.

mod common;

use std::time::Duration;

use common::*;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use vpod_proto::cri::*;

const PODS: usize = 6;
const PER_POD: usize = 60;

/// Descriptors open in process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The soft open-file limit of process `pid`, from its limits file.
fn soft_fd_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[test]
fn more_than_1024_descriptors_in_vpod_cri_and_every_container_answers() {
    in_guest_host_with_memory(
        "more_than_1024_descriptors_in_vpod_cri_and_every_container_answers",
        Duration::from_secs(1500),
        Some(4096),
        || async {
            // vpod-cri inherits the kernel's default soft limit, as from a plain shell.
            let limit = getrlimit(Resource::Nofile);
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(1024),
                    maximum: limit.maximum,
                },
            )
            .expect("lowering this test's soft limit to 1024");
            let daemon = Daemon::start("density");
            let pid = daemon.pid();
            let raised = soft_fd_limit(pid).expect("vpod-cri's limits");
            assert!(raised > 1024, "vpod-cri kept a soft limit of {raised}");
            assert!(daemon.log().contains("open-file limit"), "{}", daemon.log());

            let mut c = daemon.connect().await;
            let image = pull(&mut c, &default_image()).await;
            let mut tasks = Vec::new();
            for p in 0..PODS {
                let mut c = c.clone();
                let image = image.clone();
                let mut pod = pod_config(&format!("dense-{p}"), &daemon.log_dir);
                // Room in the guest for sixty containers.
                pod.linux = Some(LinuxPodSandboxConfig {
                    resources: Some(LinuxContainerResources {
                        memory_limit_in_bytes: 192 << 20,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                tasks.push(tokio::spawn(async move {
                    let pod_id = run_pod(&mut c, pod.clone()).await;
                    let mut containers = Vec::new();
                    for i in 0..PER_POD {
                        let name = format!("c{p}-{i}");
                        let config = container_config(
                            &name,
                            &image,
                            &["sh", "-c", "echo up $0; exec sleep 1000000", &name],
                        );
                        let id = start_container(&mut c, &pod_id, &pod, config).await;
                        containers.push((name, id));
                    }
                    (pod_id, containers)
                }));
            }
            let mut pods = Vec::new();
            for task in tasks {
                pods.push(task.await.expect("a pod's task"));
            }
            let fds = open_fds(pid);
            println!(
                "{PODS} pods, {} containers: {fds} descriptors open in vpod-cri",
                PODS * PER_POD
            );
            assert!(
                fds > 1024,
                "only {fds} descriptors open in vpod-cri: the test did not cross the default limit"
            );

            for (_, containers) in &pods {
                for (name, id) in containers {
                    let log_path = container_status(&mut c, id).await.log_path;
                    let wanted = format!("up {name}");
                    eventually(&format!("{name}'s log"), Duration::from_secs(60), || {
                        let found = log_texts(&log_path).iter().any(|(_, t)| *t == wanted);
                        async move { found }
                    })
                    .await;
                    let (out, _, code) = exec_text(&mut c, id, &["echo", name], 60).await;
                    assert_eq!((out.trim(), code), (name.as_str(), 0), "ExecSync in {name}");
                }
            }
            let running = c
                .runtime
                .list_containers(ListContainersRequest::default())
                .await
                .expect("ListContainers")
                .into_inner()
                .containers;
            assert_eq!(running.len(), PODS * PER_POD);
            assert!(running
                .iter()
                .all(|c| c.state == ContainerState::ContainerRunning as i32));
            assert!(
                !daemon.log().contains("lost the container"),
                "{}",
                daemon.log()
            );

            for (pod_id, _) in pods {
                c.runtime
                    .remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: pod_id,
                    })
                    .await
                    .expect("RemovePodSandbox");
            }
            assert!(daemon.vmm_pids().is_empty());
            assert!(daemon.sandbox_dirs().is_empty());
            let left = open_fds(pid);
            assert!(left < 64, "{left} descriptors left open in vpod-cri");
        },
    );
}

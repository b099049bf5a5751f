//! crictl's flows against a running `vpod-cri`, with real pod VMs: pull, runp, create,
//! start, ps, pods, inspect, inspectp, logs (the log file), exec -s, stats, statsp, stop,
//! rm, stopp, rmp, rmi; and the bad-input answers.

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;
use vpod_proto::cri::*;

#[test]
fn a_pod_runs_a_container_whose_log_exec_and_stats_work_and_removal_leaves_nothing() {
    in_guest_host(
        "a_pod_runs_a_container_whose_log_exec_and_stats_work_and_removal_leaves_nothing",
        Duration::from_secs(300),
        || async {
            let daemon = Daemon::start("flow");
            let mut c = daemon.connect().await;

            let version = c
                .runtime
                .version(VersionRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert_eq!(version.runtime_name, "vpod");
            assert_eq!(version.runtime_api_version, "v1");
            // The kubelet's evented PLEG: every lifecycle change, as it is recorded.
            let mut events = c
                .runtime
                .get_container_events(GetEventsRequest {})
                .await
                .expect("GetContainerEvents")
                .into_inner();
            let status = c
                .runtime
                .status(StatusRequest { verbose: true })
                .await
                .unwrap()
                .into_inner();
            let ready = status
                .status
                .unwrap()
                .conditions
                .into_iter()
                .find(|c| c.r#type == "RuntimeReady")
                .unwrap();
            assert!(ready.status, "{ready:?}");

            // pull
            let image_id = pull(&mut c, &default_image()).await;
            assert!(image_id.starts_with("sha256:"), "{image_id}");
            let listed = c
                .images
                .list_images(ListImagesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .images;
            assert!(listed.iter().any(|i| i.id == image_id), "{listed:?}");

            // runp
            let mut pod = pod_config("web", &daemon.log_dir);
            // Pod sysctls, applied in each container's IPC namespace.
            pod.linux = Some(LinuxPodSandboxConfig {
                sysctls: [
                    ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
                    ("fs.mqueue.msg_max".to_string(), "100".to_string()),
                ]
                .into(),
                ..Default::default()
            });
            let pod_id = run_pod(&mut c, pod.clone()).await;
            assert_eq!(pod_id.len(), 32);

            // A second pod with the same metadata is a conflict.
            let again = c
                .runtime
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(pod.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .unwrap_err();
            assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");

            // create + start: prints, then serves exec until stopped.
            let script =
                "echo out:$GREETING; echo err:$(hostname) >&2; cat /etc/vpod-release >/dev/null; \
                          trap 'echo bye; exit 3' TERM; while true; do sleep 0.2; done";
            let config = container_config("app", &image_id, &["sh", "-c", script]);
            let ctr = create_container(&mut c, &pod_id, &pod, config.clone())
                .await
                .expect("CreateContainer");
            let conflict = create_container(&mut c, &pod_id, &pod, config.clone())
                .await
                .unwrap_err();
            assert_eq!(conflict.code(), Code::AlreadyExists, "{conflict:?}");
            // A volume whose host path is missing: refused, not started without it.
            let mut with_dir = container_config("dir-volume", &image_id, &["true"]);
            with_dir.mounts = vec![Mount {
                container_path: "/data".into(),
                host_path: daemon.log_dir.join("missing").display().to_string(),
                ..Default::default()
            }];
            let refused = create_container(&mut c, &pod_id, &pod, with_dir)
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
            assert!(
                refused.message().contains("config.mounts") && refused.message().contains("/data"),
                "{refused:?}"
            );
            let created = container_status(&mut c, &ctr).await;
            assert_eq!(created.state, ContainerState::ContainerCreated as i32);
            // A unique prefix works like the whole id.
            c.runtime
                .start_container(StartContainerRequest {
                    container_id: ctr[..8].to_string(),
                })
                .await
                .expect("StartContainer");

            // ps / pods with filters
            let running = c
                .runtime
                .list_containers(ListContainersRequest {
                    filter: Some(ContainerFilter {
                        state: Some(ContainerStateValue {
                            state: ContainerState::ContainerRunning as i32,
                        }),
                        pod_sandbox_id: pod_id.clone(),
                        label_selector: [("tier".to_string(), "app".to_string())].into(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner()
                .containers;
            assert_eq!(running.len(), 1, "{running:?}");
            assert_eq!(running[0].id, ctr);
            let pods = c
                .runtime
                .list_pod_sandbox(ListPodSandboxRequest {
                    filter: Some(PodSandboxFilter {
                        state: Some(PodSandboxStateValue {
                            state: PodSandboxState::SandboxReady as i32,
                        }),
                        label_selector: [("app".to_string(), "web".to_string())].into(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner()
                .items;
            assert_eq!(pods.len(), 1);
            assert_eq!(pods[0].annotations["note"], "kept as is");
            let none = c
                .runtime
                .list_pod_sandbox(ListPodSandboxRequest {
                    filter: Some(PodSandboxFilter {
                        label_selector: [("app".to_string(), "other".to_string())].into(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap()
                .into_inner()
                .items;
            assert!(none.is_empty());

            // inspect / inspectp
            let status = container_status(&mut c, &ctr).await;
            assert_eq!(status.state, ContainerState::ContainerRunning as i32);
            assert!(status.started_at > 0 && status.created_at > 0);
            assert_eq!(status.image_id, image_id);
            let log_path = status.log_path.clone();
            assert!(log_path.ends_with("web/app/0.log"), "{log_path}");
            let podst = pod_status(&mut c, &pod_id).await;
            let ps = podst.status.unwrap();
            assert_eq!(ps.state, PodSandboxState::SandboxReady as i32);
            assert_eq!(ps.metadata.unwrap().name, "web");
            assert_eq!(podst.containers_statuses.len(), 1);
            assert!(
                podst.info["info"].contains("\"memoryMiB\":128"),
                "{:?}",
                podst.info
            );

            // logs: the file has both streams in CRI format.
            eventually(
                "the container's output in its log",
                Duration::from_secs(20),
                || {
                    let texts = log_texts(&log_path);
                    async move {
                        texts.contains(&("stdout".into(), "out:hello from vpod".into()))
                            && texts.contains(&("stderr".into(), "err:web".into()))
                    }
                },
            )
            .await;
            let raw = std::fs::read_to_string(&log_path).unwrap();
            let first = raw.lines().next().unwrap();
            assert!(
                first.len() > 30 && first.as_bytes()[10] == b'T' && first[..30].ends_with('Z'),
                "{first}"
            );

            // exec -s: output, exit code, timeout.
            let out = c
                .runtime
                .exec_sync(ExecSyncRequest {
                    container_id: ctr.clone(),
                    cmd: vec!["sh".into(), "-c".into(), "echo $GREETING; exit 7".into()],
                    timeout: 20,
                })
                .await
                .expect("ExecSync")
                .into_inner();
            assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from vpod\n");
            assert_eq!(out.exit_code, 7);
            let timed_out = c
                .runtime
                .exec_sync(ExecSyncRequest {
                    container_id: ctr.clone(),
                    cmd: vec!["sleep".into(), "30".into()],
                    timeout: 1,
                })
                .await
                .unwrap_err();
            assert_eq!(timed_out.code(), Code::DeadlineExceeded, "{timed_out:?}");

            // stats / statsp
            let stats = c
                .runtime
                .container_stats(ContainerStatsRequest {
                    container_id: ctr.clone(),
                })
                .await
                .expect("ContainerStats")
                .into_inner()
                .stats
                .unwrap();
            let memory = stats.memory.unwrap().working_set_bytes.unwrap().value;
            assert!(memory > 0, "{memory}");
            assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
            let listed = c
                .runtime
                .list_container_stats(ListContainerStatsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .stats;
            assert_eq!(listed.len(), 1);
            let pstats = c
                .runtime
                .pod_sandbox_stats(PodSandboxStatsRequest {
                    pod_sandbox_id: pod_id.clone(),
                })
                .await
                .expect("PodSandboxStats")
                .into_inner()
                .stats
                .unwrap();
            let linux = pstats.linux.unwrap();
            assert!(linux.memory.unwrap().working_set_bytes.unwrap().value > 0);
            assert_eq!(linux.containers.len(), 1);
            let all = c
                .runtime
                .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .stats;
            assert_eq!(all.len(), 1);

            // The log file can be reopened after rotation.
            std::fs::rename(&log_path, format!("{log_path}.1")).unwrap();
            c.runtime
                .reopen_container_log(ReopenContainerLogRequest {
                    container_id: ctr.clone(),
                })
                .await
                .expect("ReopenContainerLog");

            // stop: SIGTERM runs the trap; the exit code and the last words are kept.
            c.runtime
                .stop_container(StopContainerRequest {
                    container_id: ctr.clone(),
                    timeout: 10,
                })
                .await
                .expect("StopContainer");
            let exited = container_status(&mut c, &ctr).await;
            assert_eq!(exited.state, ContainerState::ContainerExited as i32);
            assert_eq!(exited.exit_code, 3, "{exited:?}");
            assert!(exited.finished_at >= exited.started_at);
            assert_eq!(exited.reason, "Error");
            let texts = log_texts(&log_path);
            assert!(
                texts.contains(&("stdout".into(), "bye".into())),
                "the reopened log has the last line: {texts:?}"
            );

            let exited_update = c
                .runtime
                .update_container_resources(UpdateContainerResourcesRequest {
                    container_id: ctr.clone(),
                    linux: Some(LinuxContainerResources {
                        memory_limit_in_bytes: 64 << 20,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(
                exited_update.code(),
                Code::FailedPrecondition,
                "{exited_update:?}"
            );

            // rm
            c.runtime
                .remove_container(RemoveContainerRequest {
                    container_id: ctr.clone(),
                })
                .await
                .expect("RemoveContainer");
            let gone = c
                .runtime
                .container_status(ContainerStatusRequest {
                    container_id: ctr.clone(),
                    verbose: false,
                })
                .await
                .unwrap_err();
            assert_eq!(gone.code(), Code::NotFound);
            // Stop and remove of a removed container succeed (CRI idempotence).
            c.runtime
                .stop_container(StopContainerRequest {
                    container_id: ctr.clone(),
                    timeout: 1,
                })
                .await
                .expect("StopContainer of a removed container");
            c.runtime
                .remove_container(RemoveContainerRequest {
                    container_id: ctr.clone(),
                })
                .await
                .expect("RemoveContainer again");
            let mut seen = Vec::new();
            while seen.len() < 4 {
                let event = tokio::time::timeout(Duration::from_secs(30), events.message())
                    .await
                    .expect("an event within 30 s")
                    .expect("the event stream")
                    .expect("an open event stream");
                if event.container_id != ctr {
                    continue;
                }
                let kind = ContainerEventType::try_from(event.container_event_type).unwrap();
                if kind != ContainerEventType::ContainerDeletedEvent {
                    let pod_status = event.pod_sandbox_status.as_ref().expect("pod status");
                    assert_eq!(pod_status.id, pod_id);
                    assert!(
                        event.containers_statuses.iter().any(|s| s.id == ctr),
                        "{event:?}"
                    );
                }
                assert!(event.created_at > 0);
                seen.push(kind);
            }
            assert_eq!(
                seen,
                vec![
                    ContainerEventType::ContainerCreatedEvent,
                    ContainerEventType::ContainerStartedEvent,
                    ContainerEventType::ContainerStoppedEvent,
                    ContainerEventType::ContainerDeletedEvent,
                ]
            );

            // A container still running when its pod is removed: rmp stops the pod first.
            let sleeper = create_container(
                &mut c,
                &pod_id,
                &pod,
                container_config("sleeper", &image_id, &["sleep", "3600"]),
            )
            .await
            .expect("CreateContainer");
            c.runtime
                .start_container(StartContainerRequest {
                    container_id: sleeper.clone(),
                })
                .await
                .expect("StartContainer");

            // Resources: a container's memory and CPU limits, set at creation and changed
            // while it runs, land in its cgroup in the guest. The container needs
            // CAP_SYS_ADMIN to mount cgroup2 and look (it has no /sys of its own).
            let mut limited = container_config("limited", &image_id, &["sleep", "3600"]);
            limited.linux = Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    memory_limit_in_bytes: 96 << 20,
                    ..Default::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        add_capabilities: vec!["SYS_ADMIN".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            });
            let limited = create_container(&mut c, &pod_id, &pod, limited)
                .await
                .expect("CreateContainer with resources");
            c.runtime
                .start_container(StartContainerRequest {
                    container_id: limited.clone(),
                })
                .await
                .expect("StartContainer");
            let read_limits = "mkdir -p /tmp/cg && { [ -e /tmp/cg/cgroup.procs ] || \
                               mount -t cgroup2 none /tmp/cg; } && \
                               g=/tmp/cg$(cut -d: -f3 /proc/self/cgroup) && \
                               cat $g/memory.max $g/cpu.max";
            let limits = exec(&mut c, &limited, &["sh", "-c", read_limits]).await;
            assert_eq!(
                limits.0,
                format!("{}\nmax 100000\n", 96 << 20),
                "{limits:?}"
            );
            c.runtime
                .update_container_resources(UpdateContainerResourcesRequest {
                    container_id: limited.clone(),
                    linux: Some(LinuxContainerResources {
                        memory_limit_in_bytes: 48 << 20,
                        cpu_quota: 50_000,
                        cpu_period: 100_000,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .await
                .expect("UpdateContainerResources");
            let limits = exec(&mut c, &limited, &["sh", "-c", read_limits]).await;
            assert_eq!(
                limits.0,
                format!("{}\n50000 100000\n", 48 << 20),
                "{limits:?}"
            );
            let reported = container_status(&mut c, &limited)
                .await
                .resources
                .and_then(|r| r.linux)
                .expect("ContainerStatus reports the resources");
            assert_eq!(reported.memory_limit_in_bytes, 48 << 20);
            assert_eq!((reported.cpu_quota, reported.cpu_period), (50_000, 100_000));
            let unknown = c
                .runtime
                .update_container_resources(UpdateContainerResourcesRequest {
                    container_id: "0123456789abcdef".into(),
                    linux: Some(LinuxContainerResources::default()),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");

            // The OOM killer: a container limited to 32 MiB that reads 64 MiB into one
            // buffer is killed in the guest, and its reason says so, as kubelet expects.
            let mut hog = container_config(
                "hog",
                &image_id,
                &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
            );
            hog.linux = Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    memory_limit_in_bytes: 32 << 20,
                    ..Default::default()
                }),
                ..Default::default()
            });
            let hog = create_container(&mut c, &pod_id, &pod, hog)
                .await
                .expect("CreateContainer of the hog");
            c.runtime
                .start_container(StartContainerRequest {
                    container_id: hog.clone(),
                })
                .await
                .expect("StartContainer of the hog");
            let started = std::time::Instant::now();
            let hog_status = loop {
                let status = container_status(&mut c, &hog).await;
                if status.state == ContainerState::ContainerExited as i32 {
                    break status;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "the hog still runs: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            assert_eq!(
                (hog_status.reason.as_str(), hog_status.exit_code),
                ("OOMKilled", 137),
                "{hog_status:?}"
            );

            // Security context: capabilities relative to the default set, a read-only root.
            let mut locked = container_config("locked", &image_id, &["sleep", "3600"]);
            locked.linux = Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        drop_capabilities: vec!["ALL".into()],
                        add_capabilities: vec!["NET_BIND_SERVICE".into()],
                        ..Default::default()
                    }),
                    readonly_rootfs: true,
                    ..Default::default()
                }),
                ..Default::default()
            });
            let locked = create_container(&mut c, &pod_id, &pod, locked)
                .await
                .expect("CreateContainer with a security context");
            c.runtime
                .start_container(StartContainerRequest {
                    container_id: locked.clone(),
                })
                .await
                .expect("StartContainer");
            let caps = exec(&mut c, &locked, &["grep", "CapEff", "/proc/self/status"]).await;
            // CAP_NET_BIND_SERVICE is bit 10.
            assert_eq!(caps.0, "CapEff:\t0000000000000400\n", "{caps:?}");
            let write = exec(&mut c, &locked, &["sh", "-c", "echo x > /probe"]).await;
            assert_ne!(write.2, 0, "{write:?}");
            assert!(write.1.contains("Read-only file system"), "{write:?}");
            // Without paths of its own, a container gets containerd's masked and read-only
            // lists (/proc/sys among them); the pod's sysctls are there.
            let sys = exec(
                &mut c,
                &locked,
                &[
                    "sh",
                    "-c",
                    "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/fs/mqueue/msg_max; \
                     echo 0 > /proc/sys/kernel/shm_rmid_forced",
                ],
            )
            .await;
            assert_eq!(sys.0, "1\n100\n", "{sys:?}");
            assert!(sys.1.contains("Read-only file system"), "{sys:?}");

            // Supplemental groups, no_new_privs, masked and read-only paths of its own;
            // exec'd processes get the same.
            let mut guarded = container_config("guarded", &image_id, &["sleep", "3600"]);
            guarded.linux = Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    supplemental_groups: vec![1234, 5678],
                    no_new_privs: true,
                    masked_paths: vec!["/etc/hostname".into(), "/var".into()],
                    readonly_paths: vec!["/tmp".into()],
                    ..Default::default()
                }),
                ..Default::default()
            });
            let guarded = create_container(&mut c, &pod_id, &pod, guarded)
                .await
                .expect("CreateContainer with groups and paths");
            c.runtime
                .start_container(StartContainerRequest {
                    container_id: guarded.clone(),
                })
                .await
                .expect("StartContainer");
            let seen = exec(
                &mut c,
                &guarded,
                &[
                    "sh",
                    "-c",
                    "id -G; grep NoNewPrivs /proc/self/status; \
                     echo \"hostname=[$(cat /etc/hostname)] var=[$(ls -A /var)]\"; \
                     touch /tmp/x",
                ],
            )
            .await;
            let lines: Vec<&str> = seen.0.lines().collect();
            let groups: Vec<&str> = lines.first().map_or(vec![], |l| l.split(' ').collect());
            assert!(
                groups.first() == Some(&"0")
                    && groups.contains(&"1234")
                    && groups.contains(&"5678"),
                "{seen:?}"
            );
            assert_eq!(
                lines[1..],
                ["NoNewPrivs:\t1", "hostname=[] var=[]"],
                "{seen:?}"
            );
            assert!(seen.1.contains("Read-only file system"), "{seen:?}");
            // Without namespace options, containers share the pod's PID namespace (as under
            // containerd): guarded sees the sleep of locked and limited too.
            let count_sleeps = "grep -lx sleep /proc/[0-9]*/comm | wc -l";
            let shared = exec(&mut c, &guarded, &["sh", "-c", count_sleeps]).await;
            let sleeps: u32 = shared.0.trim().parse().unwrap_or(0);
            assert!(sleeps >= 3, "{shared:?}");
            // With pid = CONTAINER, only its own.
            let mut own = container_config("own-pid", &image_id, &["sleep", "3600"]);
            own.linux = Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        pid: NamespaceMode::Container as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            let own = create_container(&mut c, &pod_id, &pod, own)
                .await
                .expect("CreateContainer with a PID namespace of its own");
            c.runtime
                .start_container(StartContainerRequest {
                    container_id: own.clone(),
                })
                .await
                .expect("StartContainer");
            let alone = exec(&mut c, &own, &["sh", "-c", count_sleeps]).await;
            assert_eq!(alone.0.trim(), "1", "{alone:?}");

            // An image in use is not removed.
            let in_use = c
                .images
                .remove_image(RemoveImageRequest {
                    image: Some(ImageSpec {
                        image: image_id.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap_err();
            assert_eq!(in_use.code(), Code::FailedPrecondition, "{in_use:?}");

            assert_eq!(daemon.vmm_pids().len(), 1);
            c.runtime
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod_id.clone(),
                })
                .await
                .expect("RemovePodSandbox of a running pod");
            assert!(daemon.vmm_pids().is_empty(), "the VMM is gone");
            assert!(
                daemon.sandbox_dirs().is_empty(),
                "{:?}",
                daemon.sandbox_dirs()
            );
            assert!(
                daemon.state_entries().is_empty(),
                "{:?}",
                daemon.state_entries()
            );

            // stopp + rmp of a second pod.
            // Its name is not a host name (68 characters, mixed case) and it asks for none:
            // the host name is made from the name, as the kubelet makes it.
            let long_name = "PodSandbox-for-create-container-e2e-0123456789abcdef-0123456789abcde";
            let mut pod2 = pod_config(long_name, &daemon.log_dir);
            pod2.hostname = String::new();
            let pod2_id = run_pod(&mut c, pod2).await;
            let st = pod_status(&mut c, &pod2_id).await.status.unwrap();
            assert!(
                st.network.is_none(),
                "no network status without an IP: {st:?}"
            );
            c.runtime
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod2_id.clone(),
                })
                .await
                .expect("StopPodSandbox");
            let st = pod_status(&mut c, &pod2_id).await.status.unwrap();
            assert_eq!(st.state, PodSandboxState::SandboxNotready as i32);
            assert!(daemon.vmm_pids().is_empty());
            // Stopping twice is fine.
            c.runtime
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod2_id.clone(),
                })
                .await
                .expect("StopPodSandbox again");
            c.runtime
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod2_id.clone(),
                })
                .await
                .expect("RemovePodSandbox");
            // Stop and remove of a removed pod succeed (CRI idempotence).
            c.runtime
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod2_id.clone(),
                })
                .await
                .expect("StopPodSandbox of a removed pod");
            c.runtime
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod2_id.clone(),
                })
                .await
                .expect("RemovePodSandbox again");
            assert!(
                daemon.state_entries().is_empty(),
                "{:?}",
                daemon.state_entries()
            );

            // rmi, now that nothing uses it.
            c.images
                .remove_image(RemoveImageRequest {
                    image: Some(ImageSpec {
                        image: image_id.clone(),
                        ..Default::default()
                    }),
                })
                .await
                .expect("RemoveImage");
            let after = c
                .images
                .image_status(ImageStatusRequest {
                    image: Some(ImageSpec {
                        image: image_id.clone(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner();
            assert!(after.image.is_none());
        },
    );
}

/// Asserts that a request failed with `code` and a message mentioning `mention`.
fn expect<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    mention: &str,
) {
    let status = result.expect_err("the request must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(mention),
        "{mention:?} not in {:?}",
        status.message()
    );
}

#[test]
fn bad_requests_get_invalid_argument_not_found_and_unimplemented() {
    in_guest_host(
        "bad_requests_get_invalid_argument_not_found_and_unimplemented",
        Duration::from_secs(120),
        || async {
            let daemon = Daemon::start("bad");
            let mut c = daemon.connect().await;
            expect(
                c.runtime
                    .run_pod_sandbox(RunPodSandboxRequest::default())
                    .await,
                Code::InvalidArgument,
                "config",
            );
            let mut no_name = pod_config("x", &daemon.log_dir);
            no_name.metadata.as_mut().unwrap().name.clear();
            expect(
                c.runtime
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(no_name),
                        runtime_handler: String::new(),
                    })
                    .await,
                Code::InvalidArgument,
                "config.metadata.name",
            );
            // Stop and remove of an unknown pod or container: nothing to reclaim, success.
            c.runtime
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: "0123456789abcdef".into(),
                })
                .await
                .expect("StopPodSandbox of an unknown pod");
            c.runtime
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: "0123456789abcdef".into(),
                })
                .await
                .expect("RemovePodSandbox of an unknown pod");
            c.runtime
                .stop_container(StopContainerRequest {
                    container_id: "0123456789abcdef".into(),
                    timeout: 0,
                })
                .await
                .expect("StopContainer of an unknown container");
            c.runtime
                .remove_container(RemoveContainerRequest {
                    container_id: "0123456789abcdef".into(),
                })
                .await
                .expect("RemoveContainer of an unknown container");
            expect(
                c.runtime
                    .stop_pod_sandbox(StopPodSandboxRequest::default())
                    .await,
                Code::InvalidArgument,
                "pod_sandbox_id",
            );
            expect(
                c.runtime
                    .container_status(ContainerStatusRequest {
                        container_id: "feedface".into(),
                        verbose: false,
                    })
                    .await,
                Code::NotFound,
                "feedface",
            );
            let pod = pod_config("p", &daemon.log_dir);
            expect(
                c.runtime
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: "abcdef".into(),
                        config: Some(container_config("a", "img", &["true"])),
                        sandbox_config: Some(pod.clone()),
                    })
                    .await,
                Code::NotFound,
                "abcdef",
            );
            let mut no_image = container_config("a", "img", &["true"]);
            no_image.image = None;
            expect(
                c.runtime
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: "abcdef".into(),
                        config: Some(no_image),
                        sandbox_config: None,
                    })
                    .await,
                Code::InvalidArgument,
                "config.image.image",
            );
            expect(
                c.runtime
                    .exec_sync(ExecSyncRequest {
                        container_id: "abc".into(),
                        cmd: vec![],
                        timeout: 0,
                    })
                    .await,
                Code::InvalidArgument,
                "cmd",
            );
            // Streaming: the kubelet's checks, then the container or pod must exist.
            expect(
                c.runtime.exec(ExecRequest::default()).await,
                Code::InvalidArgument,
                "container_id",
            );
            let unknown_exec = ExecRequest {
                container_id: "feedface".into(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            };
            expect(
                c.runtime.exec(unknown_exec.clone()).await,
                Code::NotFound,
                "feedface",
            );
            expect(
                c.runtime
                    .exec(ExecRequest {
                        cmd: vec![],
                        ..unknown_exec.clone()
                    })
                    .await,
                Code::InvalidArgument,
                "cmd",
            );
            expect(
                c.runtime
                    .exec(ExecRequest {
                        tty: true,
                        stderr: true,
                        ..unknown_exec
                    })
                    .await,
                Code::InvalidArgument,
                "tty and stderr",
            );
            expect(
                c.runtime.attach(AttachRequest::default()).await,
                Code::InvalidArgument,
                "container_id",
            );
            expect(
                c.runtime.port_forward(PortForwardRequest::default()).await,
                Code::InvalidArgument,
                "pod_sandbox_id",
            );
            expect(
                c.runtime
                    .port_forward(PortForwardRequest {
                        pod_sandbox_id: "abcdef".into(),
                        port: vec![8080],
                    })
                    .await,
                Code::NotFound,
                "abcdef",
            );
            expect(
                c.runtime
                    .checkpoint_container(CheckpointContainerRequest::default())
                    .await,
                Code::Unimplemented,
                "CheckpointContainer",
            );
            expect(
                c.images.pull_image(PullImageRequest::default()).await,
                Code::InvalidArgument,
                "image",
            );
            // Nothing was left behind by the refused requests.
            assert!(daemon.state_entries().is_empty());
            assert!(daemon.sandbox_dirs().is_empty());
        },
    );
}

/// ExecSync of `cmd` in `container`: stdout, stderr, exit code.
async fn exec(c: &mut Clients, container: &str, cmd: &[&str]) -> (String, String, i32) {
    exec_text(c, container, cmd, 20).await
}

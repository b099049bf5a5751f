//! The agent on the host: `vpod-init --agent-unix` in a temp dir, driven over gRPC with a
//! busybox root directory. Needs root (namespaces, overlay, mounts); skipped otherwise.
//! This host's /sys/fs/cgroup is not cgroup2, and the tests point the agent at a plain
//! directory anyway, so containers run without cgroups (the degraded path).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{mounts_under, Agent};
use vpod_proto::v1::{self, wait_container_response::Status as Ended};

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "pwd", "readlink", "hostname", "true", "ls", "id", "grep",
    "chmod", "mkdir", "touch",
];

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test ran out of time");
}

#[tokio::test]
async fn version_and_guest_info_answer() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let version = agent
            .client
            .get_version(v1::GetVersionRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(version.protocol_major, vpod_proto::PROTOCOL_MAJOR);
        vpod_proto::check_compatible(&version).unwrap();
        let info = agent
            .client
            .guest_info(v1::GuestInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(info.vcpus >= 1 && info.memory_total_bytes > 0);
        assert!(
            agent.log().contains("cgroup2"),
            "no cgroup warning in {}",
            agent.log()
        );
    })
    .await;
}

#[tokio::test]
async fn output_reaches_read_stdio_and_the_exit_code_reaches_wait() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let request = agent.create_request("c1", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
        agent.run(request).await;
        let (out, err) = agent.output("c1").await;
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
        let wait = agent.wait("c1").await;
        assert_eq!(wait.status, Some(Ended::ExitCode(3)));
        assert!(wait.finished_at_ns >= wait.started_at_ns && wait.started_at_ns > 0);
        let stats = agent
            .client
            .container_stats(v1::ContainerStatsRequest { id: "c1".into() })
            .await
            .unwrap_err();
        assert_eq!(stats.code(), tonic::Code::FailedPrecondition);
        agent.remove("c1").await;
        assert!(
            mounts_under(agent.dir()).is_empty(),
            "{:?}",
            mounts_under(agent.dir())
        );
        assert!(!agent.dir().join("state/containers/c1").exists());
    })
    .await;
}

#[tokio::test]
async fn env_cwd_args_and_hostname_are_applied() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let mut request = agent.create_request(
            "c2",
            &[
                "sh",
                "-c",
                "echo \"$FOO|$(pwd)|$0|$1|$(hostname)\"",
                "zero",
                "one",
            ],
        );
        request.env.push("FOO=bar baz".into());
        request.cwd = "/work".into();
        request.hostname = "box-1".into();
        agent.run(request).await;
        let (out, err) = agent.output("c2").await;
        assert_eq!(out, "bar baz|/work|zero|one|box-1\n", "stderr: {err}");
        assert_eq!(agent.wait("c2").await.status, Some(Ended::ExitCode(0)));
        agent.remove("c2").await;
    })
    .await;
}

#[tokio::test]
async fn exec_sync_collects_output_and_kills_on_timeout() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        agent
            .run(agent.create_request("c3", &["sleep", "100"]))
            .await;
        let done = agent
            .exec(
                "c3",
                &[
                    "sh",
                    "-c",
                    "echo o; echo e >&2; cat /proc/1/cmdline; exit 4",
                ],
                0,
            )
            .await;
        assert_eq!(String::from_utf8_lossy(&done.stderr), "e\n");
        // /proc is the container's: its PID 1 is the sleep.
        assert_eq!(String::from_utf8_lossy(&done.stdout), "o\nsleep\x00100\x00");
        assert_eq!((done.exit_code, done.timed_out), (4, false));

        let started = Instant::now();
        let slow = agent.exec("c3", &["sleep", "100"], 300).await;
        assert!(slow.timed_out);
        assert_eq!(
            (slow.signal, slow.exit_code),
            (libc::SIGKILL, 128 + libc::SIGKILL)
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        let missing = agent.exec("c3", &["no-such-program"], 0).await;
        assert_eq!(missing.exit_code, 127);
        agent.remove("c3").await;
        assert!(mounts_under(agent.dir()).is_empty());
    })
    .await;
}

#[tokio::test]
async fn signals_reach_the_container_init_as_the_kernel_allows() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        // A PID namespace's init gets only the signals it handles (SIGKILL aside): busybox
        // sleep handles none, so SIGTERM is ignored, as with runc and Kata.
        agent
            .run(agent.create_request("c4", &["sleep", "100"]))
            .await;
        agent
            .client
            .signal_container(v1::SignalContainerRequest {
                id: "c4".into(),
                signal: libc::SIGTERM,
            })
            .await
            .unwrap();
        let still_running =
            tokio::time::timeout(Duration::from_millis(300), agent.wait("c4")).await;
        assert!(still_running.is_err());
        agent
            .client
            .signal_container(v1::SignalContainerRequest {
                id: "c4".into(),
                signal: libc::SIGKILL,
            })
            .await
            .unwrap();
        assert_eq!(
            agent.wait("c4").await.status,
            Some(Ended::Signal(libc::SIGKILL))
        );

        // A shell that traps TERM and then kills itself... is still init; it exits instead.
        let trapping = agent.create_request(
            "c5",
            &[
                "sh",
                "-c",
                "trap 'exit 143' TERM; echo ready; while true; do sleep 0.05; done",
            ],
        );
        agent.run(trapping).await;
        let mut stream = agent
            .client
            .read_stdio(v1::ReadStdioRequest {
                container_id: "c5".into(),
                from_offset: 0,
                no_follow: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().data, b"ready\n");
        agent
            .client
            .signal_container(v1::SignalContainerRequest {
                id: "c5".into(),
                signal: libc::SIGTERM,
            })
            .await
            .unwrap();
        assert_eq!(agent.wait("c5").await.status, Some(Ended::ExitCode(143)));
        let gone = agent
            .client
            .signal_container(v1::SignalContainerRequest {
                id: "c5".into(),
                signal: libc::SIGTERM,
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::FailedPrecondition);
        agent.remove("c4").await;
        agent.remove("c5").await;
    })
    .await;
}

#[tokio::test]
async fn containers_have_their_own_pid_and_mount_namespaces() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else { return };
        // Both stay alive (reading stdin) while compared: a dead namespace's inode number
        // can be reused by the next one.
        let script = "echo $$; readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; echo x > /tmp/mine; ls /tmp; read line; echo got $line";
        for id in ["a", "b"] {
            let mut request = agent.create_request(id, &["sh", "-c", script]);
            request.stdin = true;
            agent.run(request).await;
        }
        let a = agent.first_lines("a", 4).await;
        let b = agent.first_lines("b", 4).await;
        assert_eq!(a[0], "1", "{a:?}");
        assert_eq!(b[0], "1", "{b:?}");
        assert_ne!(a[1], b[1], "same PID namespace");
        assert_ne!(a[2], b[2], "same mount namespace");
        let written = agent
            .client
            .write_stdin(v1::WriteStdinRequest { container_id: "a".into(), data: b"hi\n".to_vec() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(written.written, 3);
        agent
            .client
            .close_stdin(v1::CloseStdinRequest { container_id: "b".into() })
            .await
            .unwrap();
        assert!(agent.output("a").await.0.ends_with("got hi\n"));
        assert!(agent.output("b").await.0.ends_with("got\n"));
        let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        assert_ne!(a[2], ours.to_string_lossy());
        // Each wrote into its own upper dir; the shared image is untouched.
        assert_eq!(a[3], "mine");
        assert!(!agent.image().join("tmp/mine").exists());
        let duplicate = agent
            .client
            .create_container(agent.create_request("a", &["true"]))
            .await
            .unwrap_err();
        assert_eq!(duplicate.code(), tonic::Code::AlreadyExists);
        agent.remove("a").await;
        agent.remove("b").await;
        let unknown = agent
            .client
            .wait_container(v1::WaitContainerRequest { id: "a".into() })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        assert!(mounts_under(agent.dir()).is_empty());
    })
    .await;
}

/// A directory beside the image that symlinks in the image point at; nothing may appear
/// in it.
fn outside_dir(agent: &Agent) -> PathBuf {
    let outside = agent.dir().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    outside
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn files_are_written_inside_the_root_even_through_hostile_symlinks() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let outside = outside_dir(&agent);
        let image = agent.image();
        std::fs::write(image.join("etc/hostname"), "from-image\n").unwrap();
        // /etc/resolv.conf points out of the root; /evil is an absolute link out of it.
        std::os::unix::fs::symlink(outside.join("resolv.conf"), image.join("etc/resolv.conf"))
            .unwrap();
        std::os::unix::fs::symlink(&outside, image.join("evil")).unwrap();
        std::os::unix::fs::symlink("../../../../../../..", image.join("etc/up")).unwrap();
        let mut request = agent.create_request(
            "f1",
            &[
                "sh",
                "-c",
                "cat /etc/resolv.conf /etc/hostname /evil/hosts /etc/up/x",
            ],
        );
        let file = |path: &str, content: &str, mode: u32| v1::ContainerFile {
            path: path.into(),
            content: content.as_bytes().to_vec(),
            mode,
        };
        request.files = vec![
            file("/etc/resolv.conf", "nameserver 10.0.0.10\n", 0o644),
            file("/etc/hostname", "pod-a\n", 0),
            file("/evil/hosts", "10.0.0.2 db\n", 0o600),
            file("/etc/up/x", "clamped\n", 0o644),
        ];
        agent.run(request).await;
        let (out, err) = agent.output("f1").await;
        assert_eq!(
            out, "nameserver 10.0.0.10\npod-a\n10.0.0.2 db\nclamped\n",
            "stderr: {err}"
        );
        assert_eq!(agent.wait("f1").await.status, Some(Ended::ExitCode(0)));
        assert!(
            dir_entries(&outside).is_empty(),
            "{:?}",
            dir_entries(&outside)
        );
        assert!(!agent.dir().join("x").exists());
        // The image (the lower layer) is untouched: the files went to the upper dir.
        assert_eq!(
            std::fs::read_to_string(image.join("etc/hostname")).unwrap(),
            "from-image\n"
        );
        agent.remove("f1").await;

        let mut bad = agent.create_request("f2", &["true"]);
        bad.files = vec![file("/etc/../../x", "", 0)];
        let refused = agent.client.create_container(bad).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    })
    .await;
}

#[tokio::test]
async fn user_names_resolve_in_the_container_s_passwd_and_group() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let image = agent.image();
        std::fs::write(
            image.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            image.join("etc/group"),
            "root:x:0:\nwheel:x:10:root,app\napp:x:1001:\nstaff:x:50:\naudio:x:29:app\n",
        )
        .unwrap();
        let script = "echo $(id -u) $(id -g) $(id -G) $HOME";
        let cases: [(&str, v1::User, &str); 3] = [
            (
                "u1",
                v1::User {
                    name: "app".into(),
                    ..Default::default()
                },
                "1000 1001 1001 10 29 /home/app\n",
            ),
            (
                "u2",
                v1::User {
                    uid: 1000,
                    gid: 7,
                    ..Default::default()
                },
                "1000 7 7 10 29 /home/app\n",
            ),
            (
                "u3",
                v1::User {
                    name: "app".into(),
                    group: "staff".into(),
                    ..Default::default()
                },
                "1000 50 50 /home/app\n",
            ),
        ];
        for (id, user, expected) in cases {
            let mut request = agent.create_request(id, &["sh", "-c", script]);
            request.user = Some(user);
            agent.run(request).await;
            let (out, err) = agent.output(id).await;
            assert_eq!(out, expected, "{id}: stderr {err}");
            agent.remove(id).await;
        }
        let mut ghost = agent.create_request("u4", &["true"]);
        ghost.user = Some(v1::User {
            name: "ghost".into(),
            ..Default::default()
        });
        let refused = agent.client.create_container(ghost).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(
            refused.message().contains("\"ghost\""),
            "{}",
            refused.message()
        );
        // The failed create left nothing mounted.
        assert!(mounts_under(&agent.dir().join("state")).is_empty());
    })
    .await;
}

#[tokio::test]
async fn mount_destinations_and_cwd_resolve_inside_the_root() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let outside = outside_dir(&agent);
        let image = agent.image();
        std::os::unix::fs::symlink(&outside, image.join("mnt")).unwrap();
        std::os::unix::fs::symlink("/../../../../..", image.join("up")).unwrap();
        // Inside the container, /mnt resolves to <root><outside>: the tmpfs must be there.
        let script = format!(
            "echo hi > /mnt/data/f && cat /mnt/data/f && pwd && grep -c ' {}/data ' /proc/self/mountinfo",
            outside.display()
        );
        let mut request = agent.create_request("m1", &["sh", "-c", &script]);
        request.mounts = vec![v1::Mount {
            source: "tmpfs".into(),
            destination: "/mnt/data".into(),
            r#type: "tmpfs".into(),
            options: vec!["size=1m".into()],
        }];
        request.cwd = "/up/new/dir".into();
        agent.run(request).await;
        let (out, err) = agent.output("m1").await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.first().copied(), Some("hi"), "stderr: {err}");
        assert_eq!(lines.get(1).copied(), Some("/new/dir"), "stderr: {err}");
        assert_eq!(lines.get(2).copied(), Some("1"), "stderr: {err}");
        assert_eq!(agent.wait("m1").await.status, Some(Ended::ExitCode(0)));
        assert!(dir_entries(&outside).is_empty(), "{:?}", dir_entries(&outside));
        assert!(!agent.dir().join("new").exists());
        assert!(!Path::new("/new/dir").exists());
        agent.remove("m1").await;
        assert!(mounts_under(agent.dir()).is_empty());
    })
    .await;
}

#[tokio::test]
async fn read_stdio_resumes_from_a_byte_offset() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        agent
            .run(agent.create_request("o1", &["sh", "-c", "echo hello; echo world"]))
            .await;
        assert_eq!(agent.wait("o1").await.status, Some(Ended::ExitCode(0)));
        for (from, expected) in [
            (0, "hello\nworld\n"),
            (3, "lo\nworld\n"),
            (8, "rld\n"),
            (12, ""),
        ] {
            let mut stream = agent
                .client
                .read_stdio(v1::ReadStdioRequest {
                    container_id: "o1".into(),
                    from_offset: from,
                    no_follow: false,
                })
                .await
                .unwrap()
                .into_inner();
            let mut text = Vec::new();
            let mut next = from;
            while let Some(chunk) = stream.message().await.unwrap() {
                assert_eq!(chunk.offset, next, "from {from}");
                assert_eq!(chunk.dropped_bytes, 0);
                next += chunk.data.len() as u64;
                text.extend_from_slice(&chunk.data);
            }
            assert_eq!(String::from_utf8_lossy(&text), expected, "from {from}");
        }
        agent.remove("o1").await;
    })
    .await;
}

#[tokio::test]
async fn read_stdio_without_follow_ends_at_the_current_output() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        agent
            .run(agent.create_request("o2", &["sh", "-c", "echo early; sleep 100"]))
            .await;
        assert_eq!(agent.first_lines("o2", 1).await, ["early"]);
        // The container still runs: a non-following reader gets what is there and ends.
        let mut stream = agent
            .client
            .read_stdio(v1::ReadStdioRequest {
                container_id: "o2".into(),
                from_offset: 1,
                no_follow: true,
            })
            .await
            .unwrap()
            .into_inner();
        let mut text = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            text.extend_from_slice(&chunk.data);
        }
        assert_eq!(text, b"arly\n");
        agent.remove("o2").await;
    })
    .await;
}

#[tokio::test]
async fn capabilities_are_added_and_dropped_from_the_default_set_and_the_root_can_be_read_only() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let script = "grep CapEff /proc/self/status; echo x > /probe && echo wrote; true";
        let mut request = agent.create_request("k1", &["sh", "-c", script]);
        request.drop_capabilities = vec!["ALL".into()];
        request.add_capabilities = vec!["NET_BIND_SERVICE".into()];
        request.readonly_rootfs = true;
        agent.run(request).await;
        let (out, err) = agent.output("k1").await;
        // CAP_NET_BIND_SERVICE is bit 10.
        assert_eq!(out, "CapEff:\t0000000000000400\n", "stderr: {err}");
        assert!(err.contains("Read-only file system"), "{err}");
        agent.remove("k1").await;

        let mut request =
            agent.create_request("k2", &["sh", "-c", "grep CapEff /proc/self/status"]);
        request.drop_capabilities = vec!["KILL".into()];
        request.add_capabilities = vec!["SYS_ADMIN".into()];
        agent.run(request).await;
        let (out, err) = agent.output("k2").await;
        // The default set (0xa80425fb) without KILL (bit 5), with SYS_ADMIN (bit 21).
        assert_eq!(out, "CapEff:\t00000000a82425db\n", "stderr: {err}");
        agent.remove("k2").await;
    })
    .await;
}

#[tokio::test]
async fn update_container_refuses_unknown_exited_and_cgroupless_containers() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let update = |id: &str| v1::UpdateContainerRequest {
            id: id.into(),
            limits: Some(v1::CgroupLimits {
                memory_limit_bytes: 64 << 20,
                ..Default::default()
            }),
        };
        let unknown = agent
            .client
            .update_container(update("nope"))
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

        let request = agent.create_request("u1", &["sleep", "30"]);
        agent.run(request).await;
        // This host gives the agent no cgroup2 root: a clear refusal, not a silent success.
        let no_cgroup = agent
            .client
            .update_container(update("u1"))
            .await
            .unwrap_err();
        assert_eq!(no_cgroup.code(), tonic::Code::FailedPrecondition);
        assert!(no_cgroup.message().contains("no cgroup"), "{no_cgroup:?}");
        agent
            .client
            .signal_container(v1::SignalContainerRequest {
                id: "u1".into(),
                signal: 9,
            })
            .await
            .unwrap();
        agent.wait("u1").await;
        let exited = agent
            .client
            .update_container(update("u1"))
            .await
            .unwrap_err();
        assert_eq!(exited.code(), tonic::Code::FailedPrecondition);
        assert!(exited.message().contains("exited"), "{exited:?}");
        agent.remove("u1").await;
    })
    .await;
}

#[tokio::test]
async fn the_security_context_applies_groups_no_new_privs_masks_read_only_paths_and_sysctls() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let host_value = || std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").unwrap();
        let before = host_value();
        let script = "id -G; grep NoNewPrivs /proc/self/status; \
                      echo \"file=[$(cat /etc/masked-file)]\"; echo \"dir=[$(ls /etc/masked-dir)]\"; \
                      touch /ro/new && echo ro-writable; \
                      echo \"shm=$(cat /proc/sys/kernel/shm_rmid_forced) mq=$(cat /proc/sys/fs/mqueue/msg_max)\"; \
                      echo x > /proc/sys/kernel/shm_rmid_forced && echo sys-writable; true";
        let mut request = agent.create_request("sc1", &["sh", "-c", script]);
        request.user = Some(v1::User {
            additional_gids: vec![1234, 5678],
            ..Default::default()
        });
        request.no_new_privs = true;
        let file = |path: &str, content: &[u8]| v1::ContainerFile {
            path: path.into(),
            content: content.to_vec(),
            mode: 0o644,
        };
        request.files = vec![
            file("/etc/masked-file", b"secret"),
            file("/etc/masked-dir/inside", b"secret"),
            file("/ro/old", b"kept"),
        ];
        request.masked_paths = vec![
            "/etc/masked-file".into(),
            "/etc/masked-dir".into(),
            "/not/there".into(),
        ];
        request.readonly_paths = vec!["/ro".into(), "/proc/sys".into(), "/nowhere".into()];
        request.sysctls = [
            ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
            ("fs/mqueue/msg_max".to_string(), "100".to_string()),
        ]
        .into();
        agent.run(request).await;
        let (out, err) = agent.output("sc1").await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "0 1234 5678",
                "NoNewPrivs:\t1",
                "file=[]",
                "dir=[]",
                "shm=1 mq=100"
            ],
            "stderr: {err}"
        );
        assert!(err.contains("Read-only file system"), "{err}");
        // The IPC-namespaced sysctl changed in the container's namespace only.
        assert_eq!(host_value(), before);
        agent.remove("sc1").await;

        // A sysctl name that could walk out of /proc/sys is refused.
        let mut bad = agent.create_request("sc2", &["true"]);
        bad.sysctls = [("kernel/../../etc/passwd".to_string(), "x".to_string())].into();
        let refused = agent.client.create_container(bad).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    })
    .await;
}

#[tokio::test]
async fn a_signal_sent_before_the_init_handles_it_arrives_once_it_does() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        // SIGTERM at once, while the shell (the namespace's init) has no handler yet: the
        // kernel would drop it; the agent holds it until the trap is set.
        let late_trap = agent.create_request(
            "d1",
            &[
                "sh",
                "-c",
                "sleep 0.5; trap 'echo got-term; exit 143' TERM; echo ready; \
                 while true; do sleep 0.05; done",
            ],
        );
        agent.run(late_trap).await;
        agent
            .client
            .signal_container(v1::SignalContainerRequest {
                id: "d1".into(),
                signal: libc::SIGTERM,
            })
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), agent.wait("d1"))
            .await
            .expect("the held-back SIGTERM ended the container");
        assert_eq!(ended.status, Some(Ended::ExitCode(143)));
        let (out, _) = agent.output("d1").await;
        assert_eq!(out, "ready\ngot-term\n");
        agent.remove("d1").await;
    })
    .await;
}

#[tokio::test]
async fn containers_sharing_the_pod_pid_namespace_see_each_other() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let mut first = agent.create_request("p1", &["sleep", "1234"]);
        first.share_pod_pid_namespace = true;
        agent.run(first).await;
        let look = "cat /proc/[0-9]*/cmdline; echo; echo self=$$";
        let mut second = agent.create_request("p2", &["sh", "-c", look]);
        second.share_pod_pid_namespace = true;
        agent.run(second).await;
        let (out, err) = agent.output("p2").await;
        assert!(
            out.contains("sleep\x001234"),
            "the shared namespace shows p1: {out:?} {err}"
        );
        // PID 1 is the holder, not a container's process.
        assert!(!out.contains("self=1\n"), "{out:?}");
        let alone = agent.create_request("p3", &["sh", "-c", look]);
        agent.run(alone).await;
        let (out, _) = agent.output("p3").await;
        assert!(
            !out.contains("1234"),
            "a container of its own sees no other: {out:?}"
        );
        assert!(out.contains("self=1\n"), "{out:?}");
        // Not its namespace's init, p1 gets SIGTERM at once (sleep does not handle it).
        agent
            .client
            .signal_container(v1::SignalContainerRequest {
                id: "p1".into(),
                signal: libc::SIGTERM,
            })
            .await
            .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(10), agent.wait("p1"))
            .await
            .expect("SIGTERM ended p1");
        assert_eq!(ended.status, Some(Ended::Signal(libc::SIGTERM)));
        for id in ["p1", "p2", "p3"] {
            agent.remove(id).await;
        }
    })
    .await;
}

/// `programs` as CreateContainer carries them: `struct sock_filter`s in native byte order.
fn seccomp_bytes(program: seccompiler::BpfProgram) -> Vec<u8> {
    program
        .iter()
        .flat_map(|i| {
            let mut b = i.code.to_ne_bytes().to_vec();
            b.extend([i.jt, i.jf]);
            b.extend(i.k.to_ne_bytes());
            b
        })
        .collect()
}

/// A program that fails `calls` with `errno` and allows the rest.
fn deny(calls: &[i64], errno: u32) -> Vec<u8> {
    let filter = seccompiler::SeccompFilter::new(
        calls.iter().map(|nr| (*nr, vec![])).collect(),
        seccompiler::SeccompAction::Allow,
        seccompiler::SeccompAction::Errno(errno),
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap();
    seccomp_bytes(filter.try_into().unwrap())
}

#[tokio::test]
async fn seccomp_programs_filter_the_container_and_its_execs() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        // Root with the default capabilities (no CAP_SYS_ADMIN) and without no_new_privs:
        // the agent must hold CAP_SYS_ADMIN until the programs are in, then drop it.
        let script = "grep -E '^(Seccomp|CapEff):' /proc/self/status; \
                      touch /tmp/f; chmod 600 /tmp/f && echo chmod-allowed; \
                      mkdir /tmp/d && echo mkdir-allowed; echo done; sleep 1000";
        let mut request = agent.create_request("sec1", &["sh", "-c", script]);
        request.seccomp_filters = vec![
            deny(&[libc::SYS_chmod, libc::SYS_fchmodat], libc::EPERM as u32),
            deny(&[libc::SYS_mkdir, libc::SYS_mkdirat], libc::EACCES as u32),
        ];
        agent.run(request).await;
        let lines = agent.first_lines("sec1", 3).await;
        // Filtered, with containerd's default capabilities and not CAP_SYS_ADMIN (bit 21).
        assert_eq!(
            lines,
            ["CapEff:\t00000000a80425fb", "Seccomp:\t2", "done"],
            "chmod and mkdir must both have failed"
        );
        // An exec gets the same programs.
        let exec = agent
            .exec(
                "sec1",
                &[
                    "sh",
                    "-c",
                    "grep Seccomp: /proc/self/status; chmod 600 /tmp; mkdir /tmp/e",
                ],
                10_000,
            )
            .await;
        assert_eq!(String::from_utf8_lossy(&exec.stdout), "Seccomp:\t2\n");
        let err = String::from_utf8_lossy(&exec.stderr);
        assert!(err.contains("Operation not permitted"), "{err}");
        assert!(err.contains("Permission denied"), "{err}");
        agent.remove("sec1").await;

        // Without programs, nothing is filtered.
        agent
            .run(agent.create_request("sec2", &["grep", "Seccomp:", "/proc/self/status"]))
            .await;
        let (out, _) = agent.output("sec2").await;
        assert_eq!(out, "Seccomp:\t0\n");
        agent.remove("sec2").await;

        // A program that is not whole instructions is refused before anything runs.
        let mut bad = agent.create_request("sec3", &["true"]);
        bad.seccomp_filters = vec![vec![0; 12]];
        let refused = agent.client.create_container(bad).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    })
    .await;
}

//! The agent's streaming calls (Exec, Attach, PortForward) on the host, through the host's
//! helpers in `vpod_proto::streaming`: `vpod-init --agent-unix` in a temp dir with a
//! busybox root directory. Needs root; skipped otherwise.

mod support;

use std::time::{Duration, Instant};

use support::Agent;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::Code;
use vpod_proto::streaming::{self, ExecOptions, Output, ProcessExit, TerminalSize};
use vpod_proto::v1;

const TEST_TIMEOUT: Duration = Duration::from_secs(90);
const APPLETS: &[&str] = &["sh", "cat", "sleep", "echo", "stty", "yes", "true", "tty"];

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test ran out of time");
}

/// A container running `args`, started.
async fn container(agent: &mut Agent, id: &str, args: &[&str]) {
    let request = agent.create_request(id, args);
    agent.run(request).await;
}

fn exec_options(id: &str, args: &[&str]) -> ExecOptions {
    ExecOptions {
        container_id: id.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Reads output until `text` (stdout and stderr together) contains `needle`.
async fn read_until(output: &mut mpsc::Receiver<Output>, text: &mut String, needle: &str) {
    while !text.contains(needle) {
        match output.recv().await {
            Some(Output::Stdout(data)) | Some(Output::Stderr(data)) => {
                text.push_str(&String::from_utf8_lossy(&data));
            }
            Some(Output::Dropped(_)) => {}
            None => panic!("the output ended before {needle:?} in {text:?}"),
        }
    }
}

/// Everything left, by stream.
async fn drain(output: &mut mpsc::Receiver<Output>) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(chunk) = output.recv().await {
        match chunk {
            Output::Stdout(data) => out.extend(data),
            Output::Stderr(data) => err.extend(data),
            Output::Dropped(n) => panic!("{n} bytes dropped"),
        }
    }
    (out, err)
}

/// Live pids on this host whose process group is `group`.
fn group_members(group: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: comm may hold spaces, so count after ')'.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        // A zombie is dead already: one whose parent died waits for the container's init
        // to reap it, which `sleep` as init never does (as under runc).
        if fields.get(2) == Some(&group.to_string().as_str()) && fields.first() != Some(&"Z") {
            members.push(pid);
        }
    }
    members
}

async fn until_gone(group: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !group_members(group).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            group_members(group)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rss_kib(pid: libc::pid_t) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn exec_pipes_stdin_to_cat_and_returns_the_exit_code() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        container(&mut agent, "c1", &["sleep", "1000"]).await;
        let mut options = exec_options("c1", &["sh", "-c", "cat; echo done >&2; exit 7"]);
        options.stdin = true;
        let mut exec = streaming::exec(&mut agent.client, options).await.unwrap();
        assert!(exec.pid > 0);
        let sent: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let input = exec.input.clone();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for piece in sent.chunks(10_000) {
                    input.stdin(piece.to_vec()).await.unwrap();
                }
                input.close_stdin().await.unwrap();
            })
        };
        let (out, err) = drain(&mut exec.output).await;
        writer.await.unwrap();
        assert_eq!(out.len(), sent.len());
        assert!(out == sent, "stdout is not what stdin got");
        assert_eq!(err, b"done\n");
        let exit = exec.exit.await.unwrap();
        assert_eq!(
            exit,
            ProcessExit {
                exit_code: 7,
                signal: None
            }
        );
        agent.remove("c1").await;
    })
    .await;
}

#[tokio::test]
async fn exec_with_a_terminal_sees_resizes_and_echoes() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        container(&mut agent, "c1", &["sleep", "1000"]).await;
        let mut options = exec_options("c1", &["sh"]);
        options.stdin = true;
        options.tty = true;
        options.terminal_size = Some(TerminalSize {
            width: 80,
            height: 24,
        });
        let mut exec = streaming::exec(&mut agent.client, options).await.unwrap();
        let mut text = String::new();
        exec.input.stdin("stty size\n").await.unwrap();
        read_until(&mut exec.output, &mut text, "24 80").await;
        let size = TerminalSize {
            width: 100,
            height: 30,
        };
        exec.input.resize(size).await.unwrap();
        exec.input
            .stdin("stty size; echo hi-$((1+2))\n")
            .await
            .unwrap();
        read_until(&mut exec.output, &mut text, "30 100").await;
        // The terminal echoes the command line, then the shell runs it.
        read_until(&mut exec.output, &mut text, "hi-3").await;
        assert!(text.contains("echo hi-$((1+2))"), "{text:?}");
        // The terminal comes from the container's own /dev/pts.
        exec.input.stdin("tty; exit 5\n").await.unwrap();
        let (rest, _) = drain(&mut exec.output).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.contains("\n/dev/pts/0"), "{rest:?}");
        assert_eq!(exec.exit.await.unwrap().exit_code, 5);
        agent.remove("c1").await;
    })
    .await;
}

#[tokio::test]
async fn attachers_get_the_output_from_when_they_join_and_the_log_keeps_it_all() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let ticker = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done";
        container(&mut agent, "c1", &["sh", "-c", ticker]).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut first = streaming::attach(&mut agent.client, "c1", false)
            .await
            .unwrap();
        let mut second = streaming::attach(&mut agent.client, "c1", false)
            .await
            .unwrap();
        assert_eq!(first.pid, second.pid);
        let (mut a, mut b) = (String::new(), String::new());
        read_until(&mut first.output, &mut a, "\n").await;
        read_until(&mut second.output, &mut b, "\n").await;
        assert!(!a.contains("tick 0") && a.starts_with("tick "), "{a:?}");
        assert!(!b.contains("tick 0") && b.starts_with("tick "), "{b:?}");
        // One leaving does not disturb the other.
        drop(first);
        read_until(&mut second.output, &mut b, "tick 4").await;
        let log = agent
            .client
            .read_stdio(v1::ReadStdioRequest {
                container_id: "c1".into(),
                from_offset: 0,
                no_follow: true,
            })
            .await
            .unwrap()
            .into_inner();
        let mut log = log;
        let mut logged = String::new();
        while let Some(chunk) = log.message().await.unwrap() {
            logged.push_str(&String::from_utf8_lossy(&chunk.data));
        }
        assert!(logged.starts_with("tick 0\ntick 1\n"), "{logged:?}");
        agent.remove("c1").await;
        drain(&mut second.output).await;
        assert_eq!(second.exit.await.unwrap().signal, Some(libc::SIGKILL));
    })
    .await;
}

#[tokio::test]
async fn attach_writes_stdin_and_stdin_once_closes_it_when_the_attacher_is_done() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let mut request = agent.create_request("c1", &["cat"]);
        request.stdin = true;
        request.stdin_once = true;
        // The first container in the pod's shared PID namespace: its holder is cloned
        // from the agent while this container's stdin pipe is open, and must not keep it.
        request.share_pod_pid_namespace = true;
        agent.run(request).await;
        let mut attached = streaming::attach(&mut agent.client, "c1", true)
            .await
            .unwrap();
        attached.input.stdin("hello\n").await.unwrap();
        let mut text = String::new();
        read_until(&mut attached.output, &mut text, "hello\n").await;
        attached.input.close_stdin().await.unwrap();
        drain(&mut attached.output).await;
        assert_eq!(attached.exit.await.unwrap().exit_code, 0);
        // Without stdin on the container, attaching with stdin is refused.
        let mut request = agent.create_request("c2", &["sleep", "1000"]);
        request.stdin = false;
        agent.run(request).await;
        let refused = streaming::attach(&mut agent.client, "c2", true).await;
        assert_eq!(refused.err().unwrap().code(), Code::FailedPrecondition);
        agent.remove("c1").await;
        agent.remove("c2").await;
    })
    .await;
}

#[tokio::test]
async fn a_terminal_container_takes_input_and_resizes_through_attach() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let mut request = agent.create_request("c1", &["sh"]);
        request.stdin = true;
        request.terminal = true;
        request.terminal_size = Some(v1::TerminalSize {
            width: 80,
            height: 24,
        });
        agent.run(request).await;
        let mut attached = streaming::attach(&mut agent.client, "c1", true)
            .await
            .unwrap();
        let size = TerminalSize {
            width: 120,
            height: 40,
        };
        attached.input.resize(size).await.unwrap();
        attached.input.stdin("stty size; tty\n").await.unwrap();
        let mut text = String::new();
        read_until(&mut attached.output, &mut text, "40 120").await;
        // Its terminal is in its own /dev/pts.
        read_until(&mut attached.output, &mut text, "\n/dev/pts/0").await;
        attached.input.stdin("exit 3\n").await.unwrap();
        let (_, err) = drain(&mut attached.output).await;
        assert!(err.is_empty(), "a terminal merges stderr into stdout");
        assert_eq!(attached.exit.await.unwrap().exit_code, 3);
        agent.remove("c1").await;
        assert!(support::mounts_under(agent.dir()).is_empty());
    })
    .await;
}

#[tokio::test]
async fn an_exec_ends_with_its_process_even_when_a_background_child_keeps_its_output_open() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        container(&mut agent, "c1", &["sleep", "1000"]).await;
        let options = exec_options("c1", &["sh", "-c", "sleep 1000 & echo hi; exit 3"]);
        let started = Instant::now();
        let mut exec = streaming::exec(&mut agent.client, options).await.unwrap();
        let (out, _) = drain(&mut exec.output).await;
        assert_eq!(out, b"hi\n");
        assert_eq!(exec.exit.await.unwrap().exit_code, 3);
        assert!(started.elapsed() < Duration::from_secs(10));
        agent.remove("c1").await;
    })
    .await;
}

#[tokio::test]
async fn a_client_that_drops_mid_stream_gets_the_process_group_killed() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        container(&mut agent, "c1", &["sleep", "1000"]).await;
        let options = exec_options("c1", &["sh", "-c", "sleep 1000 & echo started; wait"]);
        let mut exec = streaming::exec(&mut agent.client, options).await.unwrap();
        let mut text = String::new();
        read_until(&mut exec.output, &mut text, "started").await;
        let group = exec.pid;
        assert_eq!(group_members(group).len(), 2, "sh and its sleep");
        drop(exec);
        until_gone(group).await;
        // The container itself is untouched.
        let again = streaming::exec(&mut agent.client, exec_options("c1", &["true"]))
            .await
            .unwrap();
        assert_eq!(again.exit.await.unwrap().exit_code, 0);
        agent.remove("c1").await;
    })
    .await;
}

#[tokio::test]
async fn a_client_that_never_reads_stalls_the_process_and_memory_stays_bounded() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        container(&mut agent, "c1", &["sleep", "1000"]).await;
        let exec = streaming::exec(&mut agent.client, exec_options("c1", &["yes"]))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = rss_kib(agent.pid());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(agent.pid());
        assert!(
            after < before + 4 * 1024,
            "the agent grew from {before} KiB to {after} KiB"
        );
        let state = std::fs::read_to_string(format!("/proc/{}/stat", exec.pid)).unwrap();
        let state = state.rsplit_once(") ").unwrap().1.chars().next().unwrap();
        assert_eq!(state, 'S', "yes should be blocked writing its pipe");
        let group = exec.pid;
        drop(exec);
        until_gone(group).await;
        agent.remove("c1").await;
    })
    .await;
}

#[tokio::test]
async fn unknown_containers_are_not_found_missing_programs_and_bad_ports_invalid() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let exec = streaming::exec(&mut agent.client, exec_options("nope", &["true"])).await;
        assert_eq!(exec.err().unwrap().code(), Code::NotFound);
        let attach = streaming::attach(&mut agent.client, "nope", false).await;
        assert_eq!(attach.err().unwrap().code(), Code::NotFound);
        container(&mut agent, "c1", &["sleep", "1000"]).await;
        let missing = streaming::exec(&mut agent.client, exec_options("c1", &["nope"])).await;
        assert_eq!(missing.err().unwrap().code(), Code::InvalidArgument);
        agent.remove("c1").await;
        let port = streaming::port_forward(&mut agent.client, 0).await;
        assert_eq!(port.err().unwrap().code(), Code::InvalidArgument);
        // A port nothing listens on: bind one, note it, close it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = listener.local_addr().unwrap().port();
        drop(listener);
        let refused = streaming::port_forward(&mut agent.client, closed).await;
        let status = refused.err().unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains(&closed.to_string()), "{status:?}");
    })
    .await;
}

const FORWARD_BYTES: usize = 10 << 20;

/// Byte `i` of connection `n`'s stream in direction `up`.
fn pattern(n: u8, up: bool, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(n * 2 + u8::from(up))
        })
        .collect()
}

#[tokio::test]
async fn port_forward_carries_10_mib_each_way_on_several_connections_at_once() {
    bounded(async {
        let Some(agent) = Agent::start(APPLETS).await else {
            return;
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        const CONNECTIONS: u8 = 4;
        // The server: per connection, reads the first byte (which connection), then
        // sends its download while reading the whole upload, and checks it.
        let server = tokio::spawn(async move {
            let mut handlers = Vec::new();
            for _ in 0..CONNECTIONS {
                let (socket, _) = listener.accept().await.unwrap();
                handlers.push(tokio::spawn(async move {
                    let (mut read, mut write) = socket.into_split();
                    let n = read.read_u8().await.unwrap();
                    let send = async {
                        write
                            .write_all(&pattern(n, false, FORWARD_BYTES))
                            .await
                            .unwrap();
                        write.shutdown().await.unwrap();
                    };
                    let receive = async {
                        let mut got = Vec::new();
                        read.read_to_end(&mut got).await.unwrap();
                        got
                    };
                    let ((), got) = tokio::join!(send, receive);
                    assert!(got == pattern(n, true, FORWARD_BYTES), "upload {n} differs");
                }));
            }
            for handler in handlers {
                handler.await.unwrap();
            }
        });
        let mut clients = Vec::new();
        for n in 0..CONNECTIONS {
            let mut client = agent.client.clone();
            clients.push(tokio::spawn(async move {
                let stream = streaming::port_forward(&mut client, port).await.unwrap();
                let (mut read, mut write) = tokio::io::split(stream);
                let send = async {
                    write.write_u8(n).await.unwrap();
                    write
                        .write_all(&pattern(n, true, FORWARD_BYTES))
                        .await
                        .unwrap();
                    write.shutdown().await.unwrap();
                };
                let receive = async {
                    let mut got = Vec::new();
                    read.read_to_end(&mut got).await.unwrap();
                    got
                };
                let ((), got) = tokio::join!(send, receive);
                assert!(
                    got == pattern(n, false, FORWARD_BYTES),
                    "download {n} differs"
                );
            }));
        }
        for client in clients {
            client.await.unwrap();
        }
        server.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn port_forward_falls_back_to_ipv6_localhost_and_half_closes_both_ways() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        let Ok(listener) = tokio::net::TcpListener::bind("[::1]:0").await else {
            eprintln!("skipped: no IPv6 loopback");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        // The server answers after the client's half-close, then closes its side.
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            socket.read_to_end(&mut request).await.unwrap();
            socket.write_all(b"got: ").await.unwrap();
            socket.write_all(&request).await.unwrap();
            socket.shutdown().await.unwrap();
        });
        let mut stream = streaming::port_forward(&mut agent.client, port)
            .await
            .unwrap();
        stream.write_all(b"ping").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"got: ping");
        server.await.unwrap();
    })
    .await;
}

/// An exec through the raw call, for inputs the host's helpers do not send (signals): its
/// input sender, its pid, and its responses.
async fn raw_exec(
    agent: &mut Agent,
    args: &[&str],
) -> (
    mpsc::Sender<v1::ExecInput>,
    u32,
    tonic::Streaming<v1::ProcessOutput>,
) {
    let (sender, receiver) = mpsc::channel(8);
    let start = v1::ExecStart {
        container_id: "c1".into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    sender
        .send(v1::ExecInput {
            input: Some(v1::exec_input::Input::Start(start)),
        })
        .await
        .unwrap();
    let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
    let mut responses = agent.client.exec(stream).await.unwrap().into_inner();
    let pid = match responses.message().await.unwrap() {
        Some(v1::ProcessOutput {
            output: Some(v1::process_output::Output::Started(started)),
            ..
        }) => started.pid,
        other => panic!("no start: {other:?}"),
    };
    (sender, pid, responses)
}

/// Reads responses until the exit: what stdout had, and the exit.
async fn until_exit(
    responses: &mut tonic::Streaming<v1::ProcessOutput>,
) -> (String, v1::ProcessExited) {
    let mut out = String::new();
    loop {
        match responses.message().await.unwrap().and_then(|m| m.output) {
            Some(v1::process_output::Output::Stdout(data)) => {
                out.push_str(&String::from_utf8_lossy(&data))
            }
            Some(v1::process_output::Output::Exit(exited)) => return (out, exited),
            Some(_) => {}
            None => panic!("the stream ended without an exit: {out:?}"),
        }
    }
}

#[tokio::test]
async fn a_signal_on_the_exec_stream_reaches_the_process_and_sigkill_its_whole_group() {
    bounded(async {
        let Some(mut agent) = Agent::start(APPLETS).await else {
            return;
        };
        container(&mut agent, "c1", &["sleep", "1000"]).await;
        let signal = |n| v1::ExecInput {
            input: Some(v1::exec_input::Input::Signal(n)),
        };
        // SIGTERM: the process's trap runs, and its exit code is reported.
        let trap = "trap 'echo term; exit 7' TERM; echo ready; while :; do sleep 1 & wait; done";
        let (input, _pid, mut responses) = raw_exec(&mut agent, &["sh", "-c", trap]).await;
        let first = responses.message().await.unwrap().and_then(|m| m.output);
        assert!(
            matches!(&first, Some(v1::process_output::Output::Stdout(d)) if d == b"ready\n"),
            "{first:?}"
        );
        input.send(signal(libc::SIGTERM)).await.unwrap();
        let (out, exited) = until_exit(&mut responses).await;
        assert_eq!(out, "term\n");
        assert_eq!((exited.exit_code, exited.signal), (7, 0));
        // SIGKILL: the exec and the child it left in the background go, and the exit comes.
        let script = "sleep 1000 & echo started; wait";
        let (input, pid, mut responses) = raw_exec(&mut agent, &["sh", "-c", script]).await;
        let first = responses.message().await.unwrap().and_then(|m| m.output);
        assert!(
            matches!(&first, Some(v1::process_output::Output::Stdout(d)) if d == b"started\n"),
            "{first:?}"
        );
        assert_eq!(group_members(pid).len(), 2, "sh and its sleep");
        input.send(signal(libc::SIGKILL)).await.unwrap();
        let (_, exited) = until_exit(&mut responses).await;
        assert_eq!((exited.exit_code, exited.signal), (137, libc::SIGKILL));
        until_gone(pid).await;
        agent.remove("c1").await;
    })
    .await;
}

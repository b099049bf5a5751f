//! Exec, Attach and PortForward through `vpod-cri`'s streaming server, driven by the real
//! crictl 1.26 (`/opt/cri-tools-1.26/crictl`, which speaks SPDY/3.1 for all three), against
//! one pod in a VM: exec with stdin piped, with a terminal and with an exit code, and one
//! whose client leaves (its process is killed); attach to a container with a terminal and
//! stdin; port-forward to a server that listens only on the pod's localhost, several
//! connections at once.

mod common;
/// The streaming crate's SPDY test client (over its public frame codec), shared rather
/// than copied.
#[path = "../../streaming/tests/common/mod.rs"]
mod spdy_client;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vpod_proto::cri::*;

const CRICTL: &str = "/opt/cri-tools-1.26/crictl";

/// crictl against the daemon, with `stdin` fed to it (then closed).
fn crictl(daemon: &Daemon, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = crictl_command(daemon, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crictl runs");
    let mut input = child.stdin.take().expect("crictl's stdin");
    let data = stdin.to_vec();
    // A thread of its own: crictl may not read all of it before it exits.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("crictl finishes");
    let _ = writer.join();
    out
}

/// As [`crictl`], on a terminal of its own (`script`) sized 45 rows by 123 columns: crictl
/// refuses `-t` unless its stdin is a terminal, and sends that terminal's size. `stdin` is
/// typed into that terminal, so it is also echoed.
fn crictl_on_terminal(daemon: &Daemon, args: &[&str], stdin: &[u8]) -> Output {
    let quote = |arg: &str| format!("'{}'", arg.replace('\'', r"'\''"));
    let command = crictl_command(daemon, args);
    let line: Vec<String> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| quote(&arg.to_string_lossy()))
        .collect();
    let mut child = Command::new("script")
        .args([
            "-qec",
            &format!("stty rows 45 cols 123 && exec {}", line.join(" ")),
            "/dev/null",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script runs");
    let mut input = child.stdin.take().expect("script's stdin");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("script finishes");
    let _ = writer.join();
    out
}

fn crictl_command(daemon: &Daemon, args: &[&str]) -> Command {
    let endpoint = format!("unix://{}", daemon.socket.display());
    let mut command = Command::new(CRICTL);
    command
        .arg("--runtime-endpoint")
        .arg(&endpoint)
        .arg("--image-endpoint")
        .arg(&endpoint)
        .arg("--timeout")
        .arg("60s")
        .args(args);
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn explain(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// `crictl port-forward POD LOCAL:REMOTE`, once it says it forwards.
struct Forward(Child);

impl Forward {
    fn start(daemon: &Daemon, pod_id: &str, local: u16, remote: u16) -> Forward {
        let mapping = format!("{local}:{remote}");
        let mut child = crictl_command(daemon, &["port-forward", pod_id, &mapping])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("crictl port-forward runs");
        let stdout = child.stdout.take().expect("crictl's stdout");
        let mut lines = BufReader::new(stdout).lines();
        let started = Instant::now();
        loop {
            let line = lines
                .next()
                .expect("crictl port-forward said nothing before it ended")
                .expect("crictl's output");
            if line.contains("Forwarding from 127.0.0.1") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{line}");
        }
        // Keep draining its output so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Forward(child)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HTTP/1.0 GET of `path` on 127.0.0.1:`port`: the whole answer.
fn http_get(port: u16, path: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the forward");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("sending the request");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("reading the answer");
    answer
}

/// The pod's processes' command lines (its containers share one PID namespace).
async fn processes(c: &mut Clients, container: &str) -> String {
    let ps = c
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: container.into(),
            cmd: vec!["ps".into(), "-o".into(), "args".into()],
            timeout: 20,
        })
        .await
        .expect("ExecSync ps")
        .into_inner();
    text(&ps.stdout)
}

/// A local port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn crictl_exec_attach_and_port_forward_reach_the_pod_vm() {
    if !Path::new(CRICTL).exists() {
        // cri-tools is not packaged by Debian and cannot be fetched by CI; the same paths
        // are driven by vpod's own SPDY client below, which always runs.
        eprintln!("skipped: {CRICTL} (crictl 1.26, built from cri-tools' source) is not installed");
        return;
    }
    in_guest_host(
        "crictl_exec_attach_and_port_forward_reach_the_pod_vm",
        Duration::from_secs(400),
        || async {
            let daemon = Daemon::start("streaming");
            let mut c = daemon.connect().await;
            let image = pull(&mut c, &default_image()).await;
            let pod = pod_config("stream", &daemon.log_dir);
            let pod_id = run_pod(&mut c, pod.clone()).await;
            let shell = start_container(
                &mut c,
                &pod_id,
                &pod,
                container_config("shell", &image, &["sleep", "3600"]),
            )
            .await;
            let web = start_container(
                &mut c,
                &pod_id,
                &pod,
                localhost_web(&image, "hello-through-the-tunnel"),
            )
            .await;
            let mut console = container_config("console", &image, &["sh"]);
            console.tty = true;
            console.stdin = true;
            console.stdin_once = true;
            let console = start_container(&mut c, &pod_id, &pod, console).await;

            // Exec with stdin piped: cat echoes it and ends at its end.
            let out = crictl(&daemon, &["exec", "-i", &shell, "cat"], b"piped through\n");
            assert!(out.status.success(), "{}", explain(&out));
            assert_eq!(text(&out.stdout), "piped through\n", "{}", explain(&out));

            // Output on both streams, and the exit code of the command.
            let out = crictl(
                &daemon,
                &["exec", &shell, "sh", "-c", "echo out; echo err >&2; exit 3"],
                b"",
            );
            // crictl 1.26 exits 1 and says the code (later ones exit with it).
            assert!(!out.status.success(), "{}", explain(&out));
            assert!(
                text(&out.stderr).contains("exit code 3"),
                "{}",
                explain(&out)
            );
            assert_eq!(text(&out.stdout), "out\n", "{}", explain(&out));
            assert!(text(&out.stderr).starts_with("err\n"), "{}", explain(&out));

            // With a terminal: the command sees one, sized as crictl's own once its first
            // resize arrived (the process may start before it).
            let out = crictl_on_terminal(
                &daemon,
                &[
                    "exec",
                    "-it",
                    &shell,
                    "sh",
                    "-c",
                    "tty; for i in $(seq 50); do [ \"$(stty size)\" = '45 123' ] && break; \
                     sleep 0.1; done; echo size=$(stty size); exit 5",
                ],
                b"",
            );
            assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
            let seen = text(&out.stdout);
            assert!(seen.contains("/dev/pts/"), "{}", explain(&out));
            assert!(seen.contains("size=45 123"), "{}", explain(&out));
            assert!(seen.contains("exit code 5"), "{}", explain(&out));

            // A client that leaves mid-exec takes its process with it.
            let mut leaver = crictl_command(&daemon, &["exec", &shell, "sleep", "4242"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("crictl exec runs");
            let sleeping = |c: &Clients| {
                let mut c = c.clone();
                let shell = shell.clone();
                async move { processes(&mut c, &shell).await.contains("sleep 4242") }
            };
            eventually("the exec'd sleep runs", Duration::from_secs(30), || {
                sleeping(&c)
            })
            .await;
            leaver.kill().expect("killing crictl");
            let _ = leaver.wait();
            eventually(
                "the exec'd sleep is killed after its client left",
                Duration::from_secs(30),
                || {
                    let running = sleeping(&c);
                    async move { !running.await }
                },
            )
            .await;

            // Port-forward to the server on the pod's 127.0.0.1: several connections over
            // one forward, at once.
            let local = free_port();
            let forward = Forward::start(&daemon, &pod_id, local, 8080);
            let gets: Vec<_> = (0..4)
                .map(|_| std::thread::spawn(move || http_get(local, "/index.html")))
                .collect();
            for get in gets {
                let answer = get.join().expect("a GET through the forward");
                assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
                assert!(answer.contains("hello-through-the-tunnel"), "{answer}");
            }
            drop(forward);

            // Attach to the container with a terminal (TERM set as containerd sets it) and
            // stdin: what it is told to run, it runs; its exit ends the attach.
            let out = crictl_on_terminal(
                &daemon,
                &["attach", "-it", &console],
                b"echo attached-$((6 * 7)) $TERM $(tty)\nexit 0\n",
            );
            assert!(
                text(&out.stdout).contains("attached-42 xterm /dev/pts/0"),
                "{}",
                explain(&out)
            );
            eventually(
                "the console container exits",
                Duration::from_secs(30),
                || {
                    let mut c = c.clone();
                    let console = console.clone();
                    async move {
                        container_status(&mut c, &console).await.state
                            == ContainerState::ContainerExited as i32
                    }
                },
            )
            .await;

            // Attach without a terminal (critest's attach spec): the shell runs what it is
            // sent, and crictl closing stdin at its end closes the shell's (stdin_once),
            // which ends it and the attach. Bounded: a stream that never ends fails here.
            let mut reader = container_config("reader", &image, &["sh"]);
            reader.stdin = true;
            reader.stdin_once = true;
            let reader = start_container(&mut c, &pod_id, &pod, reader).await;
            let mut bounded = crictl_command(&daemon, &["attach", "-i", &reader]);
            let program = bounded.get_program().to_owned();
            let args: Vec<_> = bounded.get_args().map(|a| a.to_owned()).collect();
            bounded = Command::new("timeout");
            bounded.arg("60").arg(program).args(args);
            let mut child = bounded
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("crictl attach runs");
            child
                .stdin
                .take()
                .expect("crictl's stdin")
                .write_all(b"echo hello\n")
                .expect("writing to crictl");
            let out = child.wait_with_output().expect("crictl attach finishes");
            assert!(out.status.success(), "{}", explain(&out));
            assert_eq!(text(&out.stdout), "hello\n", "{}", explain(&out));

            // Exec in a container that is gone, and in an unknown one.
            let out = crictl(&daemon, &["exec", &console, "true"], b"");
            assert!(!out.status.success(), "{}", explain(&out));
            let out = crictl(&daemon, &["exec", "0123456789abcdef", "true"], b"");
            assert!(!out.status.success(), "{}", explain(&out));
            assert!(text(&out.stderr).contains("NotFound"), "{}", explain(&out));

            // The exec'd processes are gone: only the long-lived ones remain.
            let ps = processes(&mut c, &shell).await;
            assert!(!ps.contains("cat"), "{ps}");
            assert!(ps.contains("httpd"), "{ps}");
            let _ = web;
        },
    );
}

/// A container serving `page` as /index.html on the pod's 127.0.0.1:8080 only: reachable
/// through the VM's tunnel, never through a host-side dial.
fn localhost_web(image: &str, page: &str) -> ContainerConfig {
    let script = format!(
        "mkdir -p /www && echo {page} > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www"
    );
    container_config("web", image, &["sh", "-c", &script])
}

/// The v4 error stream's JSON Status, the server's own output aside.
async fn spdy_exec(url: &str, stdin: Option<&[u8]>) -> (Vec<u8>, Vec<u8>, String) {
    use spdy_client::SpdyClient;
    use vpod_streaming::spdy::Frame;
    let (mut client, head) = SpdyClient::connect(url, "v4.channel.k8s.io").await;
    assert!(head.contains("v4.channel.k8s.io"), "{head}");
    let error = client.open(&[("streamType", "error")]).await;
    let input = match stdin {
        Some(_) => Some(client.open(&[("streamType", "stdin")]).await),
        None => None,
    };
    let stdout = client.open(&[("streamType", "stdout")]).await;
    let stderr = client.open(&[("streamType", "stderr")]).await;
    if let (Some(id), Some(data)) = (input, stdin) {
        client.data(id, data, true).await;
    }
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(frame) = client.next().await {
        match frame {
            Frame::Data {
                stream_id, data, ..
            } if stream_id == stdout => out.extend(&data),
            Frame::Data {
                stream_id, data, ..
            } if stream_id == stderr => err.extend(&data),
            Frame::Data {
                stream_id, data, ..
            } if stream_id == error => status.extend(&data),
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    (out, err, String::from_utf8_lossy(&status).into_owned())
}

/// Attaches over SPDY v4 with stdin, stdout and stderr, sends `echo hello`, waits for its
/// output, then closes stdin and reads until the server ends the session: stdout, stderr
/// and the error stream's status. Bounded, so a stream that never ends fails the test.
async fn spdy_attach_echo(url: &str) -> (Vec<u8>, Vec<u8>, String) {
    use spdy_client::SpdyClient;
    use vpod_streaming::spdy::Frame;
    let (mut client, head) = SpdyClient::connect(url, "v4.channel.k8s.io").await;
    assert!(head.contains("v4.channel.k8s.io"), "{head}");
    let error = client.open(&[("streamType", "error")]).await;
    let stdin = client.open(&[("streamType", "stdin")]).await;
    let stdout = client.open(&[("streamType", "stdout")]).await;
    let stderr = client.open(&[("streamType", "stderr")]).await;
    // As critest: the attach stays quiet for a while before anything is sent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    client.data(stdin, b"echo -n hello\n", false).await;
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
    let mut closed = false;
    let read = async {
        while let Some(frame) = client.next().await {
            match frame {
                Frame::Data {
                    stream_id, data, ..
                } if stream_id == stdout => out.extend(&data),
                Frame::Data {
                    stream_id, data, ..
                } if stream_id == stderr => err.extend(&data),
                Frame::Data {
                    stream_id, data, ..
                } if stream_id == error => status.extend(&data),
                Frame::GoAway { .. } => break,
                _ => {}
            }
            if !closed && out.ends_with(b"hello") {
                closed = true;
                // As client-go does every 5 s: pings on a quiet session.
                client.send(Frame::Ping { id: 1 }).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                client.data(stdin, b"", true).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("the attach ends once its stdin is closed");
    (out, err, String::from_utf8_lossy(&status).into_owned())
}

/// What a port-forward data stream to `port` gives back for `request` (sent, then FIN).
async fn spdy_port_forward(url: &str, port: u16, request: &[u8]) -> Vec<u8> {
    use spdy_client::SpdyClient;
    use vpod_streaming::spdy::Frame;
    let (mut client, head) = SpdyClient::connect(url, "portforward.k8s.io").await;
    assert!(head.contains("portforward.k8s.io"), "{head}");
    let port = port.to_string();
    client
        .open(&[("streamType", "error"), ("port", &port), ("requestID", "0")])
        .await;
    let data = client
        .open(&[("streamType", "data"), ("port", &port), ("requestID", "0")])
        .await;
    client.data(data, request, true).await;
    let mut got = Vec::new();
    while let Some(frame) = client.next().await {
        match frame {
            Frame::Data {
                stream_id,
                data: bytes,
                fin,
            } if stream_id == data => {
                got.extend(&bytes);
                if fin {
                    break;
                }
            }
            Frame::GoAway { .. } | Frame::RstStream { .. } => break,
            _ => {}
        }
    }
    got
}

#[test]
fn vpods_own_spdy_client_execs_and_port_forwards_into_the_pod_vm() {
    in_guest_host(
        "vpods_own_spdy_client_execs_and_port_forwards_into_the_pod_vm",
        Duration::from_secs(400),
        || async {
            let daemon = Daemon::start("spdy");
            let mut c = daemon.connect().await;
            let image = pull(&mut c, &default_image()).await;
            let pod = pod_config("spdy", &daemon.log_dir);
            let pod_id = run_pod(&mut c, pod.clone()).await;
            let shell = start_container(
                &mut c,
                &pod_id,
                &pod,
                container_config("shell", &image, &["sleep", "3600"]),
            )
            .await;
            start_container(
                &mut c,
                &pod_id,
                &pod,
                localhost_web(&image, "hello-over-spdy"),
            )
            .await;
            let exec_url = |c: &mut Clients, cmd: &[&str], stdin: bool| {
                let request = ExecRequest {
                    container_id: shell.clone(),
                    cmd: cmd.iter().map(|s| s.to_string()).collect(),
                    tty: false,
                    stdin,
                    stdout: true,
                    stderr: true,
                };
                let mut runtime = c.runtime.clone();
                async move { runtime.exec(request).await.expect("Exec").into_inner().url }
            };

            // stdin through cat, and a Success status.
            let url = exec_url(&mut c, &["cat"], true).await;
            let (out, _, status) = spdy_exec(&url, Some(b"through the vm\n")).await;
            assert_eq!(text(&out), "through the vm\n");
            assert_eq!(status, r#"{"metadata":{},"status":"Success"}"#);

            // The exit code in the status, stderr apart from stdout.
            let url = exec_url(
                &mut c,
                &["sh", "-c", "echo out; echo err >&2; exit 3"],
                false,
            )
            .await;
            let (out, err, status) = spdy_exec(&url, None).await;
            assert_eq!((text(&out), text(&err)), ("out\n".into(), "err\n".into()));
            assert!(
                status.contains(r#""reason":"NonZeroExitCode""#)
                    && status.contains(r#"{"reason":"ExitCode","message":"3"}"#),
                "{status}"
            );

            // A token works once.
            let again =
                spdy_client::http_get(&url, &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")])
                    .await;
            assert_eq!(again.0, 404, "{}", again.1);

            // Attach without a terminal to a shell fed by attachers, as critest's attach
            // spec does: what it is sent it runs, and the client closing stdin (a FIN on
            // the stdin stream) closes the shell's (stdin_once), which ends it and the
            // attach.
            let mut console = container_config("console", &image, &["/bin/sh"]);
            console.stdin = true;
            console.stdin_once = true;
            console.log_path = String::new();
            console.linux = Some(Default::default());
            let console = start_container(&mut c, &pod_id, &pod, console).await;
            let url = c
                .runtime
                .attach(AttachRequest {
                    container_id: console,
                    stdin: true,
                    tty: false,
                    stdout: true,
                    stderr: true,
                })
                .await
                .expect("Attach")
                .into_inner()
                .url;
            let (out, err, status) = spdy_attach_echo(&url).await;
            assert_eq!((text(&out), text(&err)), ("hello".into(), String::new()));
            assert_eq!(status, r#"{"metadata":{},"status":"Success"}"#);

            // Port-forward to a server only on the pod's localhost.
            let url = c
                .runtime
                .port_forward(PortForwardRequest {
                    pod_sandbox_id: pod_id.clone(),
                    port: vec![8080],
                })
                .await
                .expect("PortForward")
                .into_inner()
                .url;
            let reply = spdy_port_forward(
                &url,
                8080,
                b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n",
            )
            .await;
            let reply = text(&reply);
            assert!(
                reply.starts_with("HTTP/1.") && reply.contains("hello-over-spdy"),
                "{reply}"
            );
        },
    );
}

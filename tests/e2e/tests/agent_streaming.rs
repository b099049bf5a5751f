//! The agent's streaming calls in a real pod VM, over the VMM's hybrid vsock, through the
//! host's helpers (`vpod_proto::streaming`): exec with a terminal (its size, resizes, the
//! container's own /dev/pts) and with stdin, port-forward to servers in a container, one
//! of them listening on the container's localhost only, and attach to a container whose
//! shell has a terminal. The container's root is the
//! guest's own (busybox), through `rootfs_path`.

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use vpod_e2e::{built, in_guest_host, repo_root, Background, Checks};
use vpod_proto::streaming::{self, ExecOptions, Output, TerminalSize};
use vpod_proto::{v1, AgentClient};

const LIMIT: Duration = Duration::from_secs(900);
const PAGE: &[u8] = b"hello through port-forward\n";
const ECHO_BYTES: usize = 1 << 20;

#[test]
fn exec_with_a_terminal_and_port_forward_reach_a_pod_vm_over_vsock() {
    in_guest_host(LIMIT, || {
        let vmm = built("target/release/vpod-vmm");
        built("build/vmlinux");
        built("build/initrd.img");
        let dir = tempfile::tempdir().expect("a temp dir");
        let socket = dir.path().join("vsock.sock");
        // No command: vpod-init serves the agent.
        let _vm = Background::spawn(
            Command::new(vmm)
                .args(["--memory", "256", "--vsock"])
                .arg(&socket)
                .current_dir(repo_root()),
        );
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let mut client = runtime.block_on(connect(&socket));
        runtime.block_on(start_servers(&mut client));
        let mut checks = Checks::new();
        checks
            .check("exec_with_a_terminal_sees_its_size_and_resizes", || {
                runtime.block_on(terminal(client.clone()))
            })
            .check("exec_with_stdin_returns_it_and_the_exit_code", || {
                runtime.block_on(stdin(client.clone()))
            })
            .check(
                "port_forward_reaches_a_server_on_the_container_s_localhost",
                || runtime.block_on(localhost_page(client.clone())),
            )
            .check("port_forward_connections_echo_both_ways_at_once", || {
                runtime.block_on(echoes(client.clone()))
            })
            .check("attach_drives_a_terminal_container_s_shell", || {
                runtime.block_on(attach_terminal(client.clone()))
            });
        checks.finish();
    });
}

/// The agent, once the guest booted (the handshake fails until it listens).
async fn connect(socket: &std::path::Path) -> AgentClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(mut client) = vpod_proto::client::connect_hybrid_vsock(socket, 1024).await {
            if client.get_version(v1::GetVersionRequest {}).await.is_ok() {
                return client;
            }
        }
        assert!(Instant::now() < deadline, "the agent never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A container on the guest's root running httpd on 127.0.0.1:8080 (serving PAGE) and a
/// `cat` echo server on port 8081.
async fn start_servers(client: &mut AgentClient<Channel>) {
    let script = "httpd -f -p 127.0.0.1:8080 -h /www & nc -ll -p 8081 -e cat & exec sleep 1000";
    client
        .create_container(v1::CreateContainerRequest {
            id: "c1".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin:/sbin:/usr/bin:/usr/sbin".into()],
            rootfs_path: "/".into(),
            files: vec![v1::ContainerFile {
                path: "/www/page.txt".into(),
                content: PAGE.to_vec(),
                mode: 0o644,
            }],
            ..Default::default()
        })
        .await
        .expect("CreateContainer");
    client
        .start_container(v1::StartContainerRequest { id: "c1".into() })
        .await
        .expect("StartContainer");
}

fn exec_options(args: &[&str]) -> ExecOptions {
    ExecOptions {
        container_id: "c1".into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn read_until(
    output: &mut tokio::sync::mpsc::Receiver<Output>,
    text: &mut String,
    needle: &str,
) {
    while !text.contains(needle) {
        match output.recv().await {
            Some(Output::Stdout(data)) | Some(Output::Stderr(data)) => {
                text.push_str(&String::from_utf8_lossy(&data));
            }
            Some(Output::Dropped(_)) => {}
            None => panic!("the output ended before {needle:?}: {text:?}"),
        }
    }
}

async fn terminal(mut client: AgentClient<Channel>) {
    let mut options = exec_options(&["sh"]);
    options.tty = true;
    options.stdin = true;
    options.terminal_size = Some(TerminalSize {
        width: 80,
        height: 24,
    });
    let mut exec = streaming::exec(&mut client, options).await.expect("Exec");
    let mut text = String::new();
    exec.input.stdin("stty size\n").await.unwrap();
    read_until(&mut exec.output, &mut text, "24 80").await;
    let size = TerminalSize {
        width: 132,
        height: 43,
    };
    exec.input.resize(size).await.unwrap();
    exec.input.stdin("stty size; tty; exit 4\n").await.unwrap();
    read_until(&mut exec.output, &mut text, "43 132").await;
    read_until(&mut exec.output, &mut text, "/dev/pts/").await;
    while exec.output.recv().await.is_some() {}
    assert_eq!(exec.exit.await.expect("an exit").exit_code, 4);
}

async fn stdin(mut client: AgentClient<Channel>) {
    let mut options = exec_options(&["sh", "-c", "cat; exit 9"]);
    options.stdin = true;
    let mut exec = streaming::exec(&mut client, options).await.expect("Exec");
    let sent: Vec<u8> = (0..ECHO_BYTES).map(|i| (i * 7) as u8).collect();
    let input = exec.input.clone();
    let data = sent.clone();
    let writer = tokio::spawn(async move {
        input.stdin(data).await.unwrap();
        input.close_stdin().await.unwrap();
    });
    let mut got = Vec::new();
    while let Some(chunk) = exec.output.recv().await {
        if let Output::Stdout(data) = chunk {
            got.extend(data);
        }
    }
    writer.await.unwrap();
    assert!(got == sent, "{} bytes back of {}", got.len(), sent.len());
    assert_eq!(exec.exit.await.expect("an exit").exit_code, 9);
}

async fn localhost_page(mut client: AgentClient<Channel>) {
    // httpd may still be starting.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match streaming::port_forward(&mut client, 8080).await {
            Ok(stream) => break stream,
            Err(status) => {
                assert!(Instant::now() < deadline, "{status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    stream
        .write_all(b"GET /page.txt HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.ends_with(std::str::from_utf8(PAGE).unwrap()),
        "{response}"
    );
}

async fn echoes(client: AgentClient<Channel>) {
    let mut connections = Vec::new();
    for n in 0..3u8 {
        let mut client = client.clone();
        connections.push(tokio::spawn(async move {
            let stream = streaming::port_forward(&mut client, 8081)
                .await
                .expect("PortForward");
            let (mut read, mut write) = tokio::io::split(stream);
            let sent: Vec<u8> = (0..ECHO_BYTES).map(|i| (i as u8) ^ n).collect();
            let send = async {
                write.write_all(&sent).await.unwrap();
                write.shutdown().await.unwrap();
            };
            let receive = async {
                let mut got = Vec::new();
                read.read_to_end(&mut got).await.unwrap();
                got
            };
            let ((), got) = tokio::join!(send, receive);
            assert!(got == sent, "connection {n}: {} bytes back", got.len());
        }));
    }
    for connection in connections {
        connection.await.unwrap();
    }
}

async fn attach_terminal(mut client: AgentClient<Channel>) {
    client
        .create_container(v1::CreateContainerRequest {
            id: "tty".into(),
            args: vec!["sh".into()],
            env: vec!["PATH=/bin:/sbin:/usr/bin:/usr/sbin".into()],
            rootfs_path: "/".into(),
            terminal: true,
            stdin: true,
            terminal_size: Some(v1::TerminalSize {
                width: 80,
                height: 24,
            }),
            ..Default::default()
        })
        .await
        .expect("CreateContainer");
    client
        .start_container(v1::StartContainerRequest { id: "tty".into() })
        .await
        .expect("StartContainer");
    let mut attached = streaming::attach(&mut client, "tty", true)
        .await
        .expect("Attach");
    let size = TerminalSize {
        width: 100,
        height: 50,
    };
    attached.input.resize(size).await.unwrap();
    attached.input.stdin("stty size; tty\n").await.unwrap();
    let mut text = String::new();
    read_until(&mut attached.output, &mut text, "50 100").await;
    read_until(&mut attached.output, &mut text, "/dev/pts/0").await;
    attached.input.stdin("exit 6\n").await.unwrap();
    while attached.output.recv().await.is_some() {}
    assert_eq!(attached.exit.await.expect("an exit").exit_code, 6);
}

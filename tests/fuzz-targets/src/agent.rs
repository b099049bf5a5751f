//! `agent_request`: the guest agent's decoding of every request it serves: the protobuf
//! message as tonic hands it over, then the agent's checks and conversions to its own types
//! (`vpod_init::agent::convert`), and the pure steps those types go through before
//! anything is made (cgroup files, the user from the container's /etc/passwd and
//! /etc/group).
//!
//! Input: byte 0 picks the request (see [`Rpc`]), the rest is its protobuf encoding.

use prost::Message;
use vpod_init::agent::cgroup::limit_files;
use vpod_init::agent::convert::{self, stream};
use vpod_init::agent::users::{self, UserRequest};
use vpod_proto::v1;

use crate::Seed;

/// The requests, by the selector byte (modulo their count).
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum Rpc {
    CreateContainer,
    UpdateContainer,
    ExecSync,
    SignalContainer,
    ConfigureNetwork,
    Exec,
    Attach,
    PortForward,
    MountShare,
    ReadStdio,
    WriteStdin,
    /// Not a request: /etc/passwd, a 0 byte, /etc/group, a 0 byte, the user spec.
    Users,
}

const RPCS: [Rpc; 12] = [
    Rpc::CreateContainer,
    Rpc::UpdateContainer,
    Rpc::ExecSync,
    Rpc::SignalContainer,
    Rpc::ConfigureNetwork,
    Rpc::Exec,
    Rpc::Attach,
    Rpc::PortForward,
    Rpc::MountShare,
    Rpc::ReadStdio,
    Rpc::WriteStdin,
    Rpc::Users,
];

pub fn agent_request(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match RPCS[usize::from(selector) % RPCS.len()] {
        Rpc::CreateContainer => {
            let Ok(request) = v1::CreateContainerRequest::decode(body) else {
                return;
            };
            let passwd = file_text(&request, "/etc/passwd");
            let group = file_text(&request, "/etc/group");
            if let Ok(spec) = convert::create_request(request) {
                let _ = limit_files(&spec.limits);
                let user = UserRequest {
                    uid: spec.process.uid,
                    gid: spec.process.gid,
                    additional_gids: spec.process.additional_gids.clone(),
                    name: spec.user_name.clone(),
                    group: spec.group_name.clone(),
                };
                let _ = users::resolve_in(&user, passwd.as_deref(), group.as_deref());
            }
        }
        Rpc::UpdateContainer => {
            if let Ok(request) = v1::UpdateContainerRequest::decode(body) {
                let limits = convert::cgroup_limits(&request.limits.unwrap_or_default());
                let _ = limit_files(&limits);
                let _ = convert::container_id(&request.id, "id");
            }
        }
        Rpc::ExecSync => {
            if let Ok(request) = v1::ExecSyncRequest::decode(body) {
                let _ = convert::exec_request(request);
            }
        }
        Rpc::SignalContainer => {
            if let Ok(request) = v1::SignalContainerRequest::decode(body) {
                let _ = convert::container_id(&request.id, "id");
            }
        }
        Rpc::ConfigureNetwork => {
            if let Ok(request) = v1::ConfigureNetworkRequest::decode(body) {
                let _ = convert::network_request(request);
            }
        }
        Rpc::Exec => {
            // The stream's messages: the first must start the exec, later ones feed it.
            for (i, message) in messages::<v1::ExecInput>(body).into_iter().enumerate() {
                if i == 0 {
                    let _ = stream::exec_start(Some(message));
                } else {
                    let _ = stream::exec_input(message);
                }
            }
        }
        Rpc::Attach => {
            for (i, message) in messages::<v1::AttachInput>(body).into_iter().enumerate() {
                if i == 0 {
                    let _ = stream::attach_start(Some(message));
                } else {
                    let _ = stream::attach_input(message);
                }
            }
        }
        Rpc::PortForward => {
            for (i, message) in messages::<v1::PortForwardInput>(body)
                .into_iter()
                .enumerate()
            {
                if i == 0 {
                    let _ = stream::port_forward_start(Some(message));
                } else {
                    let _ = stream::port_forward_input(message);
                }
            }
        }
        Rpc::MountShare => {
            if let Ok(request) = v1::MountShareRequest::decode(body) {
                let _ = vpod_init::agent::share::below_share(&request.tag);
            }
        }
        Rpc::ReadStdio => {
            if let Ok(request) = v1::ReadStdioRequest::decode(body) {
                let _ = convert::container_id(&request.container_id, "container_id");
            }
        }
        Rpc::WriteStdin => {
            if let Ok(request) = v1::WriteStdinRequest::decode(body) {
                let _ = convert::container_id(&request.container_id, "container_id");
            }
        }
        Rpc::Users => {
            let mut parts = body.splitn(3, |&b| b == 0);
            let passwd = String::from_utf8_lossy(parts.next().unwrap_or_default());
            let group = String::from_utf8_lossy(parts.next().unwrap_or_default());
            let spec = String::from_utf8_lossy(parts.next().unwrap_or_default());
            let (name, group_name) = match spec.split_once(':') {
                Some((user, group)) => (user.to_string(), Some(group.to_string())),
                None => (spec.to_string(), None),
            };
            let request = UserRequest {
                name: (!name.is_empty()).then_some(name),
                group: group_name,
                ..UserRequest::default()
            };
            let _ = users::resolve_in(&request, Some(&passwd), Some(&group));
        }
    }
}

/// What the request writes at `path`, as text: the container's user database when the host
/// supplies it (the image's own is read the same way).
fn file_text(request: &v1::CreateContainerRequest, path: &str) -> Option<String> {
    let file = request.files.iter().find(|f| f.path == path)?;
    Some(String::from_utf8_lossy(&file.content).into_owned())
}

/// A stream's messages, each length-delimited as gRPC frames carry them; up to the first
/// that does not decode.
fn messages<M: Message + Default>(mut body: &[u8]) -> Vec<M> {
    let mut out = Vec::new();
    while !body.is_empty() && out.len() < 64 {
        match M::decode_length_delimited(&mut body) {
            Ok(message) => out.push(message),
            Err(_) => break,
        }
    }
    out
}

fn encoded(rpc: Rpc, message: &impl Message) -> Vec<u8> {
    let mut out = vec![rpc as u8];
    message.encode(&mut out).expect("a Vec grows");
    out
}

fn stream_encoded<M: Message>(rpc: Rpc, messages: &[M]) -> Vec<u8> {
    let mut out = vec![rpc as u8];
    for message in messages {
        message
            .encode_length_delimited(&mut out)
            .expect("a Vec grows");
    }
    out
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

pub fn seeds() -> Vec<Seed> {
    let create = v1::CreateContainerRequest {
        id: "c1".into(),
        args: strings(&["/bin/sh", "-c", "echo hi"]),
        env: strings(&["PATH=/usr/bin:/bin", "HOME=/root"]),
        cwd: "/".into(),
        user: Some(v1::User {
            uid: 0,
            gid: 0,
            additional_gids: vec![10],
            name: "app".into(),
            group: "staff".into(),
        }),
        hostname: "pod".into(),
        mounts: vec![
            v1::Mount {
                source: "/run/vpod/share/c/c1/0".into(),
                destination: "/data".into(),
                r#type: "bind".into(),
                options: strings(&["rbind", "ro", "nosuid"]),
            },
            v1::Mount {
                source: "tmpfs".into(),
                destination: "/tmp".into(),
                r#type: "tmpfs".into(),
                options: strings(&["nosuid", "size=64m", "mode=1777"]),
            },
        ],
        rlimits: vec![v1::Rlimit {
            r#type: "RLIMIT_NOFILE".into(),
            soft: 1024,
            hard: 4096,
        }],
        capabilities: strings(&["CAP_CHOWN", "NET_BIND_SERVICE"]),
        limits: Some(v1::CgroupLimits {
            cpu_shares: 512,
            cpu_quota_us: 50_000,
            cpu_period_us: 100_000,
            memory_limit_bytes: 64 << 20,
            pids_limit: 100,
        }),
        layer_serials: strings(&["layer0", "layer1"]),
        writable_serial: "rw".into(),
        files: vec![
            v1::ContainerFile {
                path: "/etc/passwd".into(),
                content: b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
                    .to_vec(),
                mode: 0o644,
            },
            v1::ContainerFile {
                path: "/etc/group".into(),
                content: b"root:x:0:\nstaff:x:50:app\n".to_vec(),
                mode: 0,
            },
        ],
        add_capabilities: strings(&["NET_ADMIN"]),
        drop_capabilities: strings(&["MKNOD"]),
        masked_paths: strings(&["/proc/kcore"]),
        readonly_paths: strings(&["/proc/sys"]),
        sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
        seccomp_filters: vec![vec![0x06, 0, 0, 0, 0, 0, 0xff, 0x7f]],
        devices: vec![v1::BlockDevice {
            serial: "vol0".into(),
            container_path: "/dev/xvda".into(),
            read_only: true,
            filesystem: "ext4".into(),
        }],
        ..Default::default()
    };
    let exec_start = v1::ExecInput {
        input: Some(v1::exec_input::Input::Start(v1::ExecStart {
            container_id: "c1".into(),
            args: strings(&["ls", "-l"]),
            env: strings(&["A=b"]),
            cwd: "/tmp".into(),
            tty: true,
            stdin: true,
            terminal_size: Some(v1::TerminalSize {
                width: 80,
                height: 24,
            }),
        })),
    };
    let exec_stdin = v1::ExecInput {
        input: Some(v1::exec_input::Input::Stdin(b"input\n".to_vec())),
    };
    let exec_resize = v1::ExecInput {
        input: Some(v1::exec_input::Input::Resize(v1::TerminalSize {
            width: 120,
            height: 40,
        })),
    };
    let attach = [
        v1::AttachInput {
            input: Some(v1::attach_input::Input::Start(v1::AttachStart {
                container_id: "c1".into(),
                stdin: true,
            })),
        },
        v1::AttachInput {
            input: Some(v1::attach_input::Input::CloseStdin(v1::Eof {})),
        },
    ];
    let forward = [
        v1::PortForwardInput {
            input: Some(v1::port_forward_input::Input::Start(v1::PortForwardStart {
                port: 8080,
            })),
        },
        v1::PortForwardInput {
            input: Some(v1::port_forward_input::Input::Data(b"GET /".to_vec())),
        },
    ];
    let network = v1::ConfigureNetworkRequest {
        interfaces: vec![v1::Interface {
            mac: "02:00:00:00:00:01".into(),
            name: "eth0".into(),
            mtu: 1500,
            addresses: strings(&["10.88.0.5/16", "fd00::5/64"]),
            new_mac: "02:42:0a:58:00:05".into(),
        }],
        routes: vec![
            v1::Route {
                destination: "0.0.0.0/0".into(),
                gateway: "10.88.0.1".into(),
                interface: "eth0".into(),
            },
            v1::Route {
                destination: "10.96.0.0/12".into(),
                gateway: String::new(),
                interface: "eth0".into(),
            },
        ],
    };
    vec![
        ("create-container", encoded(Rpc::CreateContainer, &create)),
        (
            "update-container",
            encoded(
                Rpc::UpdateContainer,
                &v1::UpdateContainerRequest {
                    id: "c1".into(),
                    limits: create.limits,
                },
            ),
        ),
        (
            "exec-sync",
            encoded(
                Rpc::ExecSync,
                &v1::ExecSyncRequest {
                    container_id: "c1".into(),
                    args: strings(&["cat", "/etc/hostname"]),
                    env: strings(&["X=1"]),
                    cwd: "/".into(),
                    timeout_ms: 5000,
                },
            ),
        ),
        (
            "signal-container",
            encoded(
                Rpc::SignalContainer,
                &v1::SignalContainerRequest {
                    id: "c1".into(),
                    signal: 15,
                },
            ),
        ),
        (
            "configure-network",
            encoded(Rpc::ConfigureNetwork, &network),
        ),
        (
            "exec-stream",
            stream_encoded(Rpc::Exec, &[exec_start, exec_stdin, exec_resize]),
        ),
        ("attach-stream", stream_encoded(Rpc::Attach, &attach)),
        ("port-forward", stream_encoded(Rpc::PortForward, &forward)),
        (
            "mount-share",
            encoded(
                Rpc::MountShare,
                &v1::MountShareRequest {
                    tag: "vpod-share".into(),
                },
            ),
        ),
        (
            "read-stdio",
            encoded(
                Rpc::ReadStdio,
                &v1::ReadStdioRequest {
                    container_id: "c1".into(),
                    from_offset: 10,
                    no_follow: true,
                },
            ),
        ),
        (
            "write-stdin",
            encoded(
                Rpc::WriteStdin,
                &v1::WriteStdinRequest {
                    container_id: "c1".into(),
                    data: b"hello".to_vec(),
                },
            ),
        ),
        ("users", {
            let mut out = vec![Rpc::Users as u8];
            out.extend_from_slice(
                b"root:x:0:0::/root:/bin/sh\n+nis\napp:x:1000:100:App:/home/app:/bin/false\n\0",
            );
            out.extend_from_slice(b"root:x:0:\nusers:x:100:app, other\n\0app:users");
            out
        }),
    ]
}

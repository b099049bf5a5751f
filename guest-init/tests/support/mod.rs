//! An agent for host-side tests: `vpod-init --agent-unix` in a temp dir with a busybox
//! root directory, driven over gRPC. Needs root (namespaces, overlay, mounts); `start`
//! answers None otherwise. Containers run without cgroups (the tests point the agent at a
//! plain directory). Each test file uses a different part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vpod_proto::v1;
use vpod_proto::AgentClient;

/// One agent process with its own temp dir; killed by pid and unmounted on drop.
pub struct Agent {
    child: Child,
    dir: tempfile::TempDir,
    pub client: AgentClient<Channel>,
}

impl Agent {
    /// An agent whose image has busybox with `applets` linked in /bin.
    pub async fn start(applets: &[&str]) -> Option<Agent> {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("image");
        for sub in ["bin", "tmp", "etc", "work"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in applets {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let not_cgroup2 = dir.path().join("cgroup");
        std::fs::create_dir(&not_cgroup2).unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_vpod-init"))
            .arg("--agent-unix")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--cgroup-root")
            .arg(&not_cgroup2)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log")).unwrap())
            .spawn()
            .unwrap();
        let mut agent_child = Some(child);
        // The socket's file appears at bind(2), a moment before listen(2): retry.
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            if socket.exists() {
                if let Ok(client) = vpod_proto::client::connect_unix(&socket).await {
                    break client;
                }
            }
            if Instant::now() >= deadline {
                kill(agent_child.take().unwrap());
                panic!("the agent did not listen");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Some(Agent {
            child: agent_child.take().unwrap(),
            dir,
            client,
        })
    }

    /// The agent's pid on this host.
    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// The agent's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The agent's temp dir (its state, the image, the socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn image(&self) -> PathBuf {
        self.dir.path().join("image")
    }

    pub fn create_request(&self, id: &str, args: &[&str]) -> v1::CreateContainerRequest {
        v1::CreateContainerRequest {
            id: id.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec!["PATH=/bin".into()],
            rootfs_path: self.image().display().to_string(),
            ..Default::default()
        }
    }

    pub async fn run(&mut self, request: v1::CreateContainerRequest) {
        let id = request.id.clone();
        self.client.create_container(request).await.unwrap();
        self.client
            .start_container(v1::StartContainerRequest { id })
            .await
            .unwrap();
    }

    /// Everything the container wrote, by stream, until both streams closed.
    pub async fn output(&mut self, id: &str) -> (String, String) {
        let mut stream = self
            .client
            .read_stdio(v1::ReadStdioRequest {
                container_id: id.into(),
                from_offset: 0,
                no_follow: false,
            })
            .await
            .unwrap()
            .into_inner();
        let (mut out, mut err) = (String::new(), String::new());
        while let Some(chunk) = stream.message().await.unwrap() {
            let text = String::from_utf8_lossy(&chunk.data).into_owned();
            match chunk.stream() {
                v1::StdioStream::Stdout => out.push_str(&text),
                _ => err.push_str(&text),
            }
        }
        (out, err)
    }

    /// The first `n` lines of stdout, while the container may still run.
    pub async fn first_lines(&mut self, id: &str, n: usize) -> Vec<String> {
        let mut stream = self
            .client
            .read_stdio(v1::ReadStdioRequest {
                container_id: id.into(),
                from_offset: 0,
                no_follow: false,
            })
            .await
            .unwrap()
            .into_inner();
        let mut text = String::new();
        while text.lines().count() < n || !text.ends_with('\n') {
            let Some(chunk) = stream.message().await.unwrap() else {
                break;
            };
            if chunk.stream() == v1::StdioStream::Stdout {
                text.push_str(&String::from_utf8_lossy(&chunk.data));
            }
        }
        text.lines().map(str::to_string).collect()
    }

    pub async fn wait(&mut self, id: &str) -> v1::WaitContainerResponse {
        self.client
            .wait_container(v1::WaitContainerRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn exec(&mut self, id: &str, args: &[&str], timeout_ms: u64) -> v1::ExecSyncResponse {
        self.client
            .exec_sync(v1::ExecSyncRequest {
                container_id: id.into(),
                args: args.iter().map(|s| s.to_string()).collect(),
                timeout_ms,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn remove(&mut self, id: &str) {
        self.client
            .remove_container(v1::RemoveContainerRequest { id: id.into() })
            .await
            .unwrap();
    }
}

fn kill(mut child: Child) {
    // SAFETY: kill takes plain integers; the pid is our child's, not yet waited for.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.wait();
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Its children first: container inits and the pod's PID namespace holder would
        // outlive it (each is the init of a PID namespace, which its end takes down).
        // SAFETY: kill takes plain integers; the pid is our child's, not yet waited for.
        unsafe { libc::kill(self.pid(), libc::SIGSTOP) };
        for child in children_of(self.pid()) {
            // SAFETY: kill takes plain integers; the stopped agent reaps nothing, so its
            // children's pids (zombies included) cannot be reused meanwhile.
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
        // SAFETY: kill takes plain integers; the pid is our child's, not yet waited for.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.wait();
        let mut left = mounts_under(self.dir.path());
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in left {
            let path = std::ffi::CString::new(mount).unwrap();
            // SAFETY: the path is NUL-terminated and outlives the call.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// The processes whose parent is `parent`.
fn children_of(parent: libc::pid_t) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<libc::pid_t>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid ...: comm may hold spaces, so count after ')'.
                let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
                after.split_whitespace().nth(1) == Some(&parent.to_string())
            })
        })
        .collect()
}

/// Mount points at or below `dir` in this (the agent's) mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

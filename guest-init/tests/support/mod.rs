//! An agent for host-side tests: `vpod-init --agent-unix` in a temp dir with a busybox
//! root directory, driven over gRPC. Needs root (namespaces, overlay, mounts); `start`
//! answers None otherwise. Containers run without cgroups (the tests point the agent at a
//! plain directory).

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
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            if Instant::now() >= deadline {
                kill(agent_child.take().unwrap());
                panic!("the agent did not listen");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let client = match vpod_proto::client::connect_unix(&socket).await {
            Ok(client) => client,
            Err(e) => {
                kill(agent_child.take().unwrap());
                panic!("could not connect to the agent: {e}");
            }
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

/// Mount points at or below `dir` in this (the agent's) mount namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

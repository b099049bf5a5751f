//! [`Containerd`]: Debian's containerd 1.6 with a config, root, state directory and sockets
//! of its own under a scratch directory (never the machine's /var/lib/containerd or
//! /run/containerd), `target/release` first on its PATH so that the runtime type
//! `io.containerd.vpod.v2` finds `containerd-shim-vpod-v2`, and vpod's config in
//! `VPOD_CONFIG`. Its drop stops everything it started and removes everything it made.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use vpod_e2e::process::send_signal;
use vpod_e2e::{repo_root, run_with_limit, Finished};

use super::images::{test_image_archives, PAUSE_IMAGE};
use super::procs::{descendants, kill_and_wait, run_quietly, shims_of};
use super::{eventually, mounts_under, RUNC_RUNTIME, VPOD_RUNTIME};
use vpod_e2e::procfs::{new_cgroup_candidates, remove_cgroup_tree, remove_stale_under};

/// The containerd namespace the CRI plugin keeps its pods, containers and images in.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The namespace plain `ctr` commands use.
pub const CTR_NAMESPACE: &str = "default";
/// The CNI bridge of [`Setup::cni_bridge`], in the test's own network namespace.
pub const BRIDGE: &str = "vpodctrd0";
/// The name of that CNI network.
pub const CNI_NETWORK: &str = "vpod-ctrd-e2e";
/// The pods' subnet on that bridge (its gateway, the bridge, is `.1`).
pub const SUBNET: &str = "10.78.0.0/24";
/// How long one `ctr` command may take (the emulated host is slow; a pod VM boots in it).
const CTR_LIMIT: Duration = Duration::from_secs(180);

/// How a [`Containerd`] is set up.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// A CNI network for the CRI plugin's pods: Debian's bridge plugin ([`BRIDGE`], the
    /// gateway) with host-local addresses from [`SUBNET`]. It makes the bridge in the
    /// test's network namespace, which [`super::in_guest_host`] makes the test's own.
    pub cni_bridge: bool,
    /// Appended to vpod's config file after its `[pod]` table: more `[pod]` keys, or
    /// tables of their own.
    pub vpod_config_extra: String,
    /// More environment for containerd, which passes it on to the shims (`RUST_LOG`, ...).
    pub env: Vec<(String, String)>,
}

/// A task as `ctr tasks ls` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub pid: u32,
    /// RUNNING, STOPPED, CREATED, PAUSED, ...
    pub status: String,
}

/// What pods of the shim left behind, found from the outside.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodLeftovers {
    /// Live VMMs of pods under the shim's root ([`Containerd::vmm_pids`]).
    pub vmms: Vec<u32>,
    /// Pod directories ([`Containerd::sandbox_dirs`]).
    pub pod_dirs: Vec<PathBuf>,
    /// Mount points under the shim's root.
    pub mounts: Vec<String>,
    /// Live shims of this containerd.
    pub shims: Vec<u32>,
}

/// A containerd of the test's own; see the module's documentation.
pub struct Containerd {
    /// The scratch directory everything lives under.
    pub dir: PathBuf,
    /// containerd's gRPC socket: for `ctr` and for the CRI plugin's clients.
    pub socket: PathBuf,
    /// containerd's state directory (the shims' bundles are in
    /// `io.containerd.runtime.v2.task/<namespace>/<id>`).
    pub state: PathBuf,
    /// vpod's state root, `root` in vpod's config: the shim's.
    pub vpod_root: PathBuf,
    /// vpod's config file, in containerd's (and so the shims') `VPOD_CONFIG`.
    pub vpod_config: PathBuf,
    /// Where `ctr run` and `ctr tasks exec` are to make their FIFOs (`--fifo-dir`): not
    /// their default, /run/containerd/fifo.
    pub fifo_dir: PathBuf,
    /// Where pods' CRI log directories go.
    pub pod_log_dir: PathBuf,
    /// containerd's stdout and stderr, the shims' logs among them.
    pub log: PathBuf,
    /// The environment it was started with, for [`Containerd::restart`].
    env: Vec<(String, String)>,
    /// The CNI bridge it configured, deleted on drop.
    bridge: Option<&'static str>,
    child: Option<Child>,
    /// Whether /run/containerd was there before: if not, what the shims and runc leave in it
    /// is removed on drop.
    run_containerd_existed: bool,
    /// The cgroups named after containerd namespaces that were not there before.
    new_cgroup_candidates: Vec<PathBuf>,
}

impl Containerd {
    /// Starts a containerd under `/tmp/vpod-ctrd-<name>-<pid>` (a tmpfs in the emulated
    /// host, where overlayfs can have its upper directories), waits until it answers and
    /// imports the test images into the CRI plugin's namespace and the default one.
    pub fn start(name: &str, setup: Setup) -> Containerd {
        let dir = PathBuf::from(format!("/tmp/vpod-ctrd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = Containerd {
            socket: dir.join("containerd.sock"),
            state: dir.join("state"),
            vpod_root: dir.join("vpod"),
            vpod_config: dir.join("vpod.toml"),
            fifo_dir: dir.join("fifo"),
            pod_log_dir: dir.join("pod-logs"),
            log: dir.join("containerd.log"),
            bridge: setup.cni_bridge.then_some(BRIDGE),
            env: setup.env.clone(),
            child: None,
            run_containerd_existed: Path::new("/run/containerd").exists(),
            new_cgroup_candidates: new_cgroup_candidates(&[CTR_NAMESPACE, CRI_NAMESPACE]),
            dir,
        };
        for sub in [
            "cni/net.d",
            "cni/ipam",
            "fifo",
            "pod-logs",
            "runc",
            "images",
        ] {
            std::fs::create_dir_all(c.dir.join(sub)).expect("the scratch directory");
        }
        std::fs::write(c.dir.join("containerd.toml"), c.containerd_config())
            .expect("containerd's config");
        std::fs::write(&c.vpod_config, c.vpod_config_text(&setup.vpod_config_extra))
            .expect("vpod's config");
        if setup.cni_bridge {
            std::fs::write(c.dir.join("cni/net.d/10-vpod-e2e.conflist"), c.conflist())
                .expect("the CNI config");
        }
        c.spawn(&setup.env);
        c.wait_until_serving();
        c.import_test_images();
        c
    }

    /// containerd's config (version 2). Plugins it cannot use here are off; the CRI plugin
    /// finds the pause image locally (never the internet), runs runc by default and vpod
    /// for the `vpod` handler, and keeps pods' network namespaces under its state directory.
    fn containerd_config(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
plugin_dir = ""
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.opt",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  level = "info"

[metrics]
  address = ""

# A pod VM's shim under TCG is slow to clean up after and to stop.
[timeouts]
  "io.containerd.timeout.shim.cleanup" = "60s"
  "io.containerd.timeout.shim.load" = "30s"
  "io.containerd.timeout.shim.shutdown" = "30s"
  "io.containerd.timeout.task.state" = "10s"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_selinux = false
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "{RUNC_RUNTIME}"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.vpod]
      runtime_type = "{VPOD_RUNTIME}"
"#,
            socket = self.socket.display(),
        )
    }

    /// vpod's config: the shim's state root here, pods sized as the CRI tests size them.
    fn vpod_config_text(&self, extra: &str) -> String {
        format!(
            "root = \"{}\"\n\n[pod]\ndefault_memory_mib = 256\nagent_timeout_secs = 400\nwritable_disk_mib = 64\n{extra}\n",
            self.vpod_root.display()
        )
    }

    /// A node's pod network: a bridge that is the gateway, host-local addresses.
    fn conflist(&self) -> String {
        format!(
            r#"{{"cniVersion": "1.0.0", "name": "{CNI_NETWORK}", "plugins": [
  {{"type": "bridge", "bridge": "{BRIDGE}", "isGateway": true,
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{SUBNET}"}}]],
             "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{}"}}}}
]}}"#,
            self.dir.join("cni/ipam").display()
        )
    }

    /// Stops containerd (SIGTERM, as a service manager would) while its shims and their
    /// tasks run on, and starts it again on the same state: it finds the shims through
    /// their bundles' address files.
    pub fn restart(&mut self) {
        self.stop_containerd();
        let env = self.env.clone();
        self.spawn(&env);
        self.wait_until_serving();
    }

    fn spawn(&mut self, env: &[(String, String)]) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("containerd's log");
        let path = format!(
            "{}:{}",
            repo_root().join("target/release").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(self.dir.join("containerd.toml"))
            .env("PATH", path)
            .env("VPOD_CONFIG", &self.vpod_config)
            .env("VPOD_HOME", repo_root())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("containerd's log"))
            .stderr(log)
            .spawn()
            .expect("/usr/bin/containerd starts");
        self.child = Some(child);
    }

    /// Waits (up to 90 s) until `ctr version` gets containerd's answer.
    fn wait_until_serving(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "containerd exited ({status}) before serving\n{}",
                    self.log_tail(200)
                );
            }
            if self.socket.exists() && self.ctr(&["version"]).status.success() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "containerd did not answer within 90 s\n{}",
                self.log_tail(200)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn import_test_images(&self) {
        for archive in test_image_archives(&self.dir.join("images")) {
            for namespace in [CRI_NAMESPACE, CTR_NAMESPACE] {
                let tar = archive.tar.display().to_string();
                self.ctr_in_ok(
                    namespace,
                    &["images", "import", "--base-name", archive.base_name, &tar],
                );
            }
        }
    }

    /// `ctr --address <socket> --namespace <namespace>`, to add arguments to.
    pub fn ctr_command(&self, namespace: &str) -> Command {
        let mut cmd = Command::new("/usr/bin/ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", namespace]);
        cmd
    }

    /// `ctr args...` in the default namespace, run to completion (at most 180 s).
    pub fn ctr(&self, args: &[&str]) -> Finished {
        self.ctr_in(CTR_NAMESPACE, args)
    }

    /// `ctr args...` in `namespace`, run to completion (at most 180 s).
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Finished {
        run_with_limit(self.ctr_command(namespace).args(args), CTR_LIMIT)
    }

    /// As [`Containerd::ctr`], failing the test (with containerd's log) unless it succeeds.
    pub fn ctr_ok(&self, args: &[&str]) -> Finished {
        self.ctr_in_ok(CTR_NAMESPACE, args)
    }

    /// As [`Containerd::ctr_in`], failing the test (with containerd's log) unless it
    /// succeeds.
    pub fn ctr_in_ok(&self, namespace: &str, args: &[&str]) -> Finished {
        let done = self.ctr_in(namespace, args);
        assert!(
            done.status.success(),
            "ctr -n {namespace} {} failed: {}\n--- containerd's log\n{}",
            args.join(" "),
            done.explain(),
            self.log_tail(100)
        );
        done
    }

    /// The tasks of `namespace`, from `ctr tasks ls`.
    pub fn tasks(&self, namespace: &str) -> Vec<Task> {
        let listed = self.ctr_in_ok(namespace, &["tasks", "ls"]);
        listed
            .stdout_lines()
            .iter()
            .skip(1)
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                Some(Task {
                    id: words.next()?.to_string(),
                    pid: words.next()?.parse().ok()?,
                    status: words.next()?.to_string(),
                })
            })
            .collect()
    }

    /// The task `id` of the default namespace, if there is one.
    pub fn task(&self, id: &str) -> Option<Task> {
        self.tasks(CTR_NAMESPACE).into_iter().find(|t| t.id == id)
    }

    /// The bundle directory containerd made for the task `id` of `namespace`.
    pub fn bundle(&self, namespace: &str, id: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task")
            .join(namespace)
            .join(id)
    }

    /// The shim processes this containerd started that are alive now.
    pub fn shim_pids(&self) -> Vec<u32> {
        shims_of(&self.socket)
    }

    /// The shim serving the task `id` of `namespace`: the PID in its bundle's `shim.pid`,
    /// else the one of our shims given `-id <id>`.
    pub fn shim_pid(&self, namespace: &str, id: &str) -> Option<u32> {
        let from_file = std::fs::read_to_string(self.bundle(namespace, id).join("shim.pid"))
            .ok()
            .and_then(|text| text.trim().parse().ok());
        from_file.or_else(|| {
            self.shim_pids().into_iter().find(|&pid| {
                let args = super::procs::cmdline(pid);
                args.windows(2).any(|w| w[0] == "-id" && w[1] == id)
                    && args
                        .windows(2)
                        .any(|w| w[0] == "-namespace" && w[1] == namespace)
            })
        })
    }

    /// The live `vpod-vmm` processes of pods under the shim's root (the jailed VMMs under
    /// their keepers among them).
    pub fn vmm_pids(&self) -> Vec<u32> {
        let keepers = vpod_sandbox::vmm::vmm_processes_under(&self.vpod_root);
        let jailed = keepers
            .iter()
            .filter_map(|&pid| vpod_sandbox::vmm::jailed_vmm_of(pid));
        keepers.iter().copied().chain(jailed).collect()
    }

    /// The pod directories the shim has: the entries of every directory named
    /// `sandboxes` under its root.
    pub fn sandbox_dirs(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut todo = vec![(self.vpod_root.clone(), 0)];
        while let Some((dir, depth)) = todo.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                if !is_dir {
                    continue;
                }
                if entry.file_name() == "sandboxes" {
                    found.extend(
                        std::fs::read_dir(entry.path())
                            .into_iter()
                            .flatten()
                            .flatten()
                            .map(|pod| pod.path()),
                    );
                } else if depth < 3 {
                    todo.push((entry.path(), depth + 1));
                }
            }
        }
        found
    }

    /// The mount points under the shim's root.
    pub fn mounts_under_vpod_root(&self) -> Vec<String> {
        mounts_under(&self.vpod_root)
    }

    /// The addresses host-local holds for pods of [`Setup::cni_bridge`]'s network (its lock
    /// and last-reserved files aside).
    pub fn cni_allocations(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("cni/ipam").join(CNI_NETWORK))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect()
    }

    /// What pods left now.
    pub fn pod_leftovers(&self) -> PodLeftovers {
        PodLeftovers {
            vmms: self.vmm_pids(),
            pod_dirs: self.sandbox_dirs(),
            mounts: self.mounts_under_vpod_root(),
            shims: self.shim_pids(),
        }
    }

    /// Waits up to `limit` until nothing of a pod is left: no VMM, no pod directory, no
    /// mount under the shim's root, no shim of this containerd; fails the test otherwise.
    pub fn wait_until_nothing_left_of_pods(&self, limit: Duration) {
        eventually(
            "every pod VM, pod directory, mount and shim gone",
            limit,
            || {
                let left = self.pod_leftovers();
                if left == PodLeftovers::default() {
                    return Ok(());
                }
                Err(format!(
                    "{left:?}\n--- containerd's log\n{}",
                    self.log_tail(60)
                ))
            },
        );
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Every task killed and deleted and every container deleted, in every namespace, by
    /// containerd itself (which has the shims clean up), each command bounded.
    fn remove_tasks_and_containers(&self) {
        let list = |namespace: Option<&str>, what: &[&str]| -> Vec<String> {
            let mut cmd = self.ctr_command(namespace.unwrap_or(CTR_NAMESPACE));
            run_quietly(cmd.args(what), Duration::from_secs(30))
                .map(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .lines()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        for namespace in list(None, &["namespaces", "ls", "-q"]) {
            let ns = Some(namespace.as_str());
            for task in list(ns, &["tasks", "ls", "-q"]) {
                let _ = run_quietly(
                    self.ctr_command(&namespace)
                        .args(["tasks", "delete", "--force", &task]),
                    Duration::from_secs(30),
                );
            }
            for container in list(ns, &["containers", "ls", "-q"]) {
                let _ = run_quietly(
                    self.ctr_command(&namespace)
                        .args(["containers", "delete", &container]),
                    Duration::from_secs(30),
                );
            }
        }
    }

    /// SIGTERM to containerd (by its PID), SIGKILL after 20 s.
    fn stop_containerd(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        send_signal(child.id(), Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Shims still running (a task containerd could not delete), with everything under
    /// them, then pod VMs and their virtiofsd that outlived their shim.
    fn kill_leftover_processes(&self) {
        let shims = self.shim_pids();
        let mut doomed = descendants(&shims);
        doomed.extend(&shims);
        doomed.extend(self.vmm_pids());
        if !doomed.is_empty() {
            eprintln!("containerd fixture: killing leftover processes {doomed:?}");
            kill_and_wait(&doomed, Duration::from_secs(5));
        }
        for pod in self.sandbox_dirs() {
            if let Err(e) = vpod_sandbox::share::destroy_leftovers(&pod) {
                eprintln!("containerd fixture: cleaning up {}: {e}", pod.display());
            }
        }
    }

    /// The shims' sockets and runc's state that /run/containerd kept (when it was not
    /// there before this containerd): sockets nobody listens on, then empty directories.
    fn remove_run_containerd_leftovers(&self) {
        if !self.run_containerd_existed {
            remove_stale_under(Path::new("/run/containerd"));
        }
    }
}

/// Unmounts (lazily) every mount under `dir`, the latest first, until none is left.
fn unmount_all_under(dir: &Path) {
    for _ in 0..10 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for point in mounts.iter().rev() {
            let _ = rustix::mount::unmount(point.as_str(), rustix::mount::UnmountFlags::DETACH);
        }
    }
    eprintln!(
        "containerd fixture: mounts left under {}: {:?}",
        dir.display(),
        mounts_under(dir)
    );
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // The log first: if the cleanup below takes long, the runner's limit may end this
        // process before it is done.
        if std::thread::panicking() {
            eprintln!(
                "--- containerd's log (the shims' among it), last 300 lines\n{}",
                self.log_tail(300)
            );
        }
        if self.child.is_some() {
            self.remove_tasks_and_containers();
            self.stop_containerd();
        }
        self.kill_leftover_processes();
        unmount_all_under(&self.dir);
        if let Some(bridge) = self.bridge {
            let _ = run_quietly(
                Command::new("ip").args(["link", "delete", bridge]),
                Duration::from_secs(10),
            );
        }
        self.remove_run_containerd_leftovers();
        for cgroup in &self.new_cgroup_candidates {
            remove_cgroup_tree(cgroup);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("containerd fixture: removing {}: {e}", self.dir.display());
        }
    }
}

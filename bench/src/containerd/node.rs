//! The containerd `vpod-bench containerd` runs: Debian's containerd with its config, root,
//! state, sockets and images under one scratch directory, and what finding and cleaning up
//! after its shims takes.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vpod_image::oci::layout::OciLayout;
use vpod_image::oci::writer::OciLayoutWriter;

use vpod_e2e::procfs::{
    descendants, live_parent, new_cgroup_candidates, remove_cgroup_tree, remove_stale_under,
    shims_of,
};

use super::{CRI_NAMESPACE, DEFAULT_IMAGE, PAUSE_IMAGE};

/// Debian's containerd with everything of its own under one scratch directory; its drop
/// stops it and removes everything it and its shims left (see the documentation of `vpod-bench containerd`).
pub(super) struct Containerd {
    dir: PathBuf,
    pub(super) socket: PathBuf,
    /// vpod's state root: the shim's pods are under `containerd/<namespace>/sandboxes`.
    vpod_root: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Whether /run/containerd was there before (the shims' sockets go there).
    run_containerd_existed: bool,
    /// The cgroups of containerd namespaces that were not there before.
    new_cgroups: Vec<PathBuf>,
}

impl Containerd {
    pub(super) fn start(repo: &Path, dir: &Path, pod_mib: u64) -> Result<Containerd> {
        let _ = std::fs::remove_dir_all(dir);
        for sub in ["cni/net.d", "runc", "images"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let mut node = Containerd {
            dir: dir.to_path_buf(),
            socket: dir.join("containerd.sock"),
            vpod_root: dir.join("v"),
            log: dir.join("containerd.log"),
            child: None,
            run_containerd_existed: Path::new("/run/containerd").exists(),
            new_cgroups: new_cgroup_candidates(&[CRI_NAMESPACE]),
        };
        let config = dir.join("containerd.toml");
        std::fs::write(&config, node.config())?;
        let vpod_config = dir.join("vpod.toml");
        std::fs::write(
            &vpod_config,
            format!(
                "root = \"{}\"\n\n[pod]\ndefault_memory_mib = {pod_mib}\nmin_memory_mib = {pod_mib}\n\
                 agent_timeout_secs = 240\nwritable_disk_mib = 64\n",
                node.vpod_root.display()
            ),
        )?;
        let path = format!(
            "{}:{}",
            repo.join("target/release").display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let log = std::fs::File::create(&node.log)?;
        node.child = Some(
            Command::new("/usr/bin/containerd")
                .arg("--config")
                .arg(&config)
                .env("PATH", path)
                .env("VPOD_CONFIG", &vpod_config)
                .env("VPOD_HOME", repo)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting /usr/bin/containerd (apt-get install containerd)")?,
        );
        node.wait_until_serving()?;
        Ok(node)
    }

    /// containerd's config: plugins it cannot use here off; the CRI plugin with the local
    /// pause image, runc by default and the shim for the handler `vpod`; no CNI config.
    fn config(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.opt",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

# A pod VM is slow to boot and to stop in the emulated host.
[timeouts]
  "io.containerd.timeout.shim.cleanup" = "60s"
  "io.containerd.timeout.shim.load" = "30s"
  "io.containerd.timeout.shim.shutdown" = "30s"
  "io.containerd.timeout.task.state" = "10s"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni/net.d"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.vpod]
      runtime_type = "io.containerd.vpod.v2"
"#,
            socket = self.socket.display(),
        )
    }

    /// Waits (up to 90 s) until `ctr version` gets containerd's answer.
    fn wait_until_serving(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "containerd exited ({status}) before serving:\n{}",
                    self.log_tail(40)
                );
            }
            if self.socket.exists() && self.ctr(&["version"]).is_ok() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(90) {
                bail!("containerd did not answer in 90 s:\n{}", self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr --address <socket> --namespace k8s.io args...`, which must succeed.
    fn ctr(&self, args: &[&str]) -> Result<()> {
        let out = Command::new("/usr/bin/ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", CRI_NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running /usr/bin/ctr")?;
        if !out.status.success() {
            bail!(
                "ctr {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The default image and a pause image from its layers, tarred and imported into the
    /// CRI plugin's namespace (unpacked into the overlayfs snapshotter).
    pub(super) fn import_images(&self, repo: &Path) -> Result<()> {
        let images = self.dir.join("images");
        let default = repo.join("build/images/default");
        let pause = images.join("pause-layout");
        write_pause_layout(&default, &pause)?;
        for (layout, name) in [(default, DEFAULT_IMAGE), (pause, PAUSE_IMAGE)] {
            let (base, _tag) = name.split_once(':').context("an image name with a tag")?;
            let tar = images.join(format!("{}.tar", base.replace('/', "_")));
            tar_layout(&layout, &tar)?;
            self.ctr(&[
                "images",
                "import",
                "--base-name",
                base,
                &tar.display().to_string(),
            ])
            .with_context(|| format!("importing {name}"))?;
        }
        Ok(())
    }

    pub(super) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // The shims' lines come with blank ones between them.
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM to containerd, SIGKILL after 20 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's PID, which we have not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Shims still serving our socket and everything under them (runc's containers), then
    /// the pod VMs (and their virtiofsd and mounts) left under the shim's state root.
    fn kill_leftovers(&self) {
        let shims: Vec<u32> = shims_of(&self.socket)
            .into_iter()
            .map(|(pid, _)| pid)
            .collect();
        let mut doomed = descendants(&shims);
        doomed.extend(&shims);
        if !doomed.is_empty() {
            eprintln!("containerd: killing leftover processes {doomed:?}");
        }
        for &pid in &doomed {
            // SAFETY: kill(2) on a shim of our containerd (its `-address` is our socket) or
            // a process under one.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while doomed.iter().any(|&pid| live_parent(pid).is_some()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let namespaces = std::fs::read_dir(self.vpod_root.join("containerd"));
        for namespace in namespaces.into_iter().flatten().flatten() {
            let state = namespace.path();
            let pods = std::fs::read_dir(state.join("sandboxes"));
            for pod in pods.into_iter().flatten().flatten() {
                let id = pod.file_name().to_string_lossy().into_owned();
                if let Err(e) = vpod_sandbox::destroy_leftovers(&state, &id) {
                    eprintln!("containerd: cleaning up pod {id}: {e}");
                }
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
        self.kill_leftovers();
        if let Err(e) = vpod_sandbox::share::unmount_under(&self.dir) {
            eprintln!("containerd: {e}");
        }
        if !self.run_containerd_existed {
            remove_stale_under(Path::new("/run/containerd"));
        }
        for cgroup in &self.new_cgroups {
            remove_cgroup_tree(cgroup);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("containerd: removing {}: {e}", self.dir.display());
        }
    }
}

/// What the pause image runs: it waits, and SIGTERM ends it at once with status 0.
const PAUSE_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done",
];

/// The default image's layers under a config whose entrypoint is [`PAUSE_COMMAND`], as an
/// OCI layout at `to` tagged `latest`.
fn write_pause_layout(default: &Path, to: &Path) -> Result<()> {
    let layout = OciLayout::new(default);
    let image = layout
        .resolve(Some("latest"))
        .with_context(|| format!("reading {} (run `make image`)", default.display()))?;
    let writer = OciLayoutWriter::create(to)?;
    let mut layers = Vec::new();
    for layer in &image.layers {
        let bytes = std::fs::read(layout.blob_path(&layer.blob.digest))?;
        let descriptor = writer.write_blob(layer.blob.media_type.clone(), &bytes)?;
        layers.push((descriptor, layer.diff_id));
    }
    let mut config = image.config.clone();
    let mut process = config.config().clone().unwrap_or_default();
    process
        .set_entrypoint(Some(PAUSE_COMMAND.map(String::from).to_vec()))
        .set_cmd(None);
    config.set_config(Some(process));
    let manifest = writer.write_image(config, &layers, Some("latest"))?;
    writer.write_index(vec![manifest])?;
    Ok(())
}

/// `layout` as the tar `ctr images import` reads: its entries at the top.
fn tar_layout(layout: &Path, tar: &Path) -> Result<()> {
    let mut builder = tar::Builder::new(std::fs::File::create(tar)?);
    for file in ["oci-layout", "index.json"] {
        builder.append_path_with_name(layout.join(file), file)?;
    }
    builder.append_dir_all("blobs", layout.join("blobs"))?;
    builder.into_inner()?.sync_all()?;
    Ok(())
}

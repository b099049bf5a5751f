//! The `vpod` command (`target/release/vpod`) with a layer store root of its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rustix::process::Signal;

use crate::process::{run_with_limit, send_signal, Background, Finished};
use crate::{built, repo_root};

/// How long one `vpod` command may take in a test (a pod boot in the emulated host is a few
/// seconds; this only keeps a hang from lasting).
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// A store root for `vpod --root`, in a fresh directory under /tmp (inside the emulated KVM
/// host a tmpfs) or under a directory the test chose. Dropping it kills every VMM its pods
/// left running (by the PIDs in their `vmm.pid`) and removes it.
pub struct VpodRoot {
    dir: tempfile::TempDir,
}

impl VpodRoot {
    /// A fresh root; `name` only labels its directory. Fails the test when the binaries,
    /// the kernel, the initrd or the default image are not built.
    pub fn new(name: &str) -> VpodRoot {
        VpodRoot::new_in(name, &std::env::temp_dir())
    }

    /// A fresh root under `parent`.
    pub fn new_in(name: &str, parent: &Path) -> VpodRoot {
        built("target/release/vpod");
        built("target/release/vpod-vmm");
        built("build/vmlinux");
        built("build/pod-initrd.img");
        built("build/images/default/index.json");
        let dir = tempfile::Builder::new()
            .prefix(&format!("vpod-e2e-{name}-"))
            .tempdir_in(parent)
            .unwrap_or_else(|e| panic!("a directory under {}: {e}", parent.display()));
        VpodRoot { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `vpod VERB --root ROOT ARGS...`, run in the checkout.
    pub fn command(&self, verb: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(repo_root().join("target/release/vpod"));
        cmd.arg(verb).arg("--root").arg(self.path());
        if verb == "run" {
            cmd.arg("--initrd")
                .arg(repo_root().join("build/pod-initrd.img"));
        }
        cmd.args(args).current_dir(repo_root());
        cmd
    }

    /// Runs `vpod VERB --root ROOT ARGS...` to completion.
    pub fn vpod(&self, verb: &str, args: &[&str]) -> Finished {
        run_with_limit(&mut self.command(verb, args), COMMAND_LIMIT)
    }

    /// `vpod run` with this root and ARGS (options, then `--` and the command).
    pub fn run(&self, args: &[&str]) -> Finished {
        self.vpod("run", args)
    }

    /// `vpod run` in the background.
    pub fn spawn_run(&self, args: &[&str]) -> Background {
        Background::spawn(&mut self.command("run", args))
    }

    /// `vpod run -d ARGS...`: the pod's name, which it prints; panics when it fails.
    pub fn run_detached(&self, args: &[&str]) -> String {
        let mut all = vec!["-d"];
        all.extend_from_slice(args);
        let done = self.run(&all);
        assert_eq!(done.code(), Some(0), "vpod run -d\n{}", done.explain());
        let name = done.stdout_text().trim().to_string();
        assert!(!name.is_empty(), "vpod run -d printed no name");
        name
    }

    /// Names of the pods under `ROOT/sandboxes`.
    pub fn pods(&self) -> Vec<String> {
        let mut pods: Vec<String> = std::fs::read_dir(self.path().join("sandboxes"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        pods.sort();
        pods
    }

    /// PIDs of the VMMs of this root's pods, from their `vmm.pid` files.
    pub fn vmm_pids(&self) -> Vec<u32> {
        self.pods()
            .iter()
            .filter_map(|pod| {
                let file = self.sandbox_dir(pod).join("vmm.pid");
                std::fs::read_to_string(file).ok()?.trim().parse().ok()
            })
            .collect()
    }

    pub fn sandbox_dir(&self, pod: &str) -> PathBuf {
        self.path().join("sandboxes").join(pod)
    }
}

impl Drop for VpodRoot {
    fn drop(&mut self) {
        for pid in self.vmm_pids() {
            send_signal(pid, Signal::KILL);
        }
    }
}

//! The pod's `vpod-vmm` process: started in its own process group on a typed configuration
//! (`--config`, [`vpod_proto::vmm::VmConfig`]), killed by its PID. Each NIC's tap reaches
//! it as an inherited descriptor under the number it has here, named in the configuration.

use crate::owned_process::OwnedProcess;
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use vpod_proto::vmm::config::DEFAULT_GUEST_CID;
use vpod_proto::vmm::{
    BalloonConfig, Console, DiskConfig, DiskSource, FsConfig, JailConfig, NetConfig, TapSource,
    VmConfig, VsockConfig, JAILED_VMM_NAME,
};

use crate::jail::VmmJail;
use crate::network::Nic;

/// How to start the VMM of one pod.
#[derive(Debug, Clone)]
pub struct VmmLaunch {
    pub program: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub disk_slots: u32,
    /// The disks, in the order the guest sees them.
    pub disks: Vec<DiskConfig>,
    /// The NICs, in the order the guest finds them: their taps are inherited.
    pub nics: Vec<Nic>,
    /// virtio-fs shares (the pod's share, when it has one).
    pub fs: Vec<FsConfig>,
    pub console_log: PathBuf,
    pub vsock_socket: PathBuf,
    pub api_socket: PathBuf,
    /// Where the VMM's configuration is written for it to read.
    pub config_file: PathBuf,
    /// Where the VMM's own stderr goes.
    pub stderr_log: PathBuf,
    /// Kill the VMM when the thread that started it ends (the foreground `vpod run`).
    pub die_with_parent: bool,
    /// The virtio-balloon (free page reporting, stats, a target through the API socket).
    pub balloon: Option<BalloonConfig>,
    /// Guest RAM offered to KSM.
    pub ksm: bool,
    /// Once booted, the guest pages holding the kernel's code and the initrd's pages mapped
    /// copy-on-write from those files, shared with every VM of the same files
    /// (`VmConfig.private_boot_files` when false).
    pub share_boot_files: bool,
    /// Kernel parameters after the VMM's base command line (`VmConfig.kernel_params`).
    pub kernel_params: Vec<String>,
    /// The pod's cgroup v2 directory: the VMM joins it itself (`VmConfig.cgroup`) before it
    /// forks its keeper or allocates anything.
    pub cgroup: Option<PathBuf>,
    /// Confine the VMM ([`crate::jail`]); `None` only for development. Its console file
    /// and sockets must then be in one directory of their own.
    pub jail: Option<VmmJail>,
    /// The network namespace a jailed VMM joins (the pod's, where its taps are); `None`:
    /// an empty one of its own.
    pub netns: Option<PathBuf>,
}

/// A running (or ended, not yet reaped) VMM: our child, or adopted from an earlier `vpod`
/// (a detached pod), which we can signal but not reap.
#[derive(Debug)]
pub struct VmmProcess {
    process: OwnedProcess,
}

impl VmmLaunch {
    /// What the VMM is told: no command after `--`, so the guest's init serves the agent.
    pub fn vm_config(&self) -> VmConfig {
        VmConfig {
            initrd: Some(self.initrd.clone()),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disks: self.disks.clone(),
            disk_slots: self.disk_slots,
            net: self
                .nics
                .iter()
                .map(|nic| NetConfig {
                    source: TapSource::Fd(nic.tap.as_raw_fd() as u32),
                    mac: Some(nic.interface.mac.to_string()),
                })
                .collect(),
            fs: self.fs.clone(),
            console: Console::File(self.console_log.clone()),
            vsock: Some(VsockConfig {
                uds_path: self.vsock_socket.clone(),
                guest_cid: DEFAULT_GUEST_CID,
            }),
            api_socket: Some(self.api_socket.clone()),
            balloon: self.balloon,
            ksm: self.ksm,
            private_boot_files: !self.share_boot_files,
            // Every pod boots vpod-init, which keeps its pages in place.
            initrd_pages_stay: true,
            kernel_params: self.kernel_params.clone(),
            cgroup: self.cgroup.clone(),
            jail: self.jail.as_ref().map(|jail| JailConfig {
                netns: self.netns.clone(),
                ..JailConfig::new(&jail.root, jail.uid, jail.gid)
            }),
            ..VmConfig::new(&self.kernel)
        }
    }

    /// Writes `config` to the configuration file and returns the command that reads it.
    fn command(&self, config: &VmConfig) -> std::io::Result<Command> {
        std::fs::write(&self.config_file, config.to_json())?;
        let mut cmd = Command::new(&self.program);
        cmd.arg("--config").arg(&self.config_file);
        Ok(cmd)
    }

    /// Starts the VMM.
    pub fn spawn(&self) -> std::io::Result<VmmProcess> {
        // The child's stdio is set up before the taps are made inheritable: 0 to 2 would go.
        if let Some(nic) = self.nics.iter().find(|nic| nic.tap.as_raw_fd() < 3) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the tap of {} is descriptor {}, which the VMM's stdio replaces",
                    nic.interface.name,
                    nic.tap.as_raw_fd()
                ),
            ));
        }
        let stderr = File::create(&self.stderr_log)?;
        let mut config = self.vm_config();
        for path in [&self.console_log, &self.vsock_socket, &self.api_socket] {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
        }
        // Opened here, inherited by the VMM: its jail's user may not open the pod's files.
        let mut disk_files = Vec::new();
        if let Some(jail) = &self.jail {
            let vm_dir = self.api_socket.parent().unwrap_or(Path::new("/"));
            let sockets: Vec<&Path> = self.fs.iter().map(|fs| fs.socket.as_path()).collect();
            jail.prepare(vm_dir, &sockets)?;
            for disk in &mut config.disks {
                if let DiskSource::Path(path) = &disk.source {
                    let file = std::fs::OpenOptions::new()
                        .read(true)
                        .write(!disk.read_only)
                        .open(path)?;
                    disk.source = DiskSource::Fd(file.as_raw_fd() as u32);
                    disk_files.push(file);
                }
            }
        }
        let mut cmd = self.command(&config)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own group: a terminal's Ctrl-C goes to `vpod`, which stops the pod itself.
            .process_group(0);
        inherit_fds(
            &mut cmd,
            self.nics
                .iter()
                .map(|nic| nic.tap.as_raw_fd())
                .chain(disk_files.iter().map(|file| file.as_raw_fd()))
                .collect(),
        );
        if self.die_with_parent {
            // SAFETY: between fork and exec only the async-signal-safe prctl system call
            // runs; it touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd.spawn()?;
        Ok(VmmProcess {
            process: OwnedProcess::spawned(child),
        })
    }
}

/// Lets the program `cmd` runs inherit `fds` under their numbers: their close-on-exec flag
/// is cleared in the child only (the flag belongs to the descriptor table, which the child
/// has its own copy of), so nothing else this process starts inherits them. The caller
/// keeps them open until the spawn returns.
fn inherit_fds(cmd: &mut Command, fds: Vec<RawFd>) {
    if fds.is_empty() {
        return;
    }
    // SAFETY: between fork and exec only fcntl runs, an async-signal-safe system call, on
    // descriptors that the caller keeps open across the spawn; `fds` was allocated before
    // the fork and is only read.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                // SAFETY: `fd` is open in this child, a copy of the parent's table.
                let fd = BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
}

impl VmmProcess {
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The VMM a detached pod recorded, if `pid` still is a vpod-vmm.
    pub fn adopt(pid: u32) -> VmmProcess {
        VmmProcess {
            process: OwnedProcess::adopted(pid),
        }
    }

    /// Whether an adopted PID still names a live vpod-vmm (not one reused by another program).
    fn adopted_alive(&self) -> bool {
        is_live_vmm(self.process.pid())
    }

    /// The exit status once the VMM has ended (and is reaped), without blocking. An adopted
    /// VMM that ended reports a SIGKILL-like status, its real status being its parent's.
    pub fn try_wait(&self) -> Option<ExitStatus> {
        if self.process.is_child() {
            return self.process.try_wait_child();
        }
        if self.adopted_alive() {
            return None;
        }
        Some(std::os::unix::process::ExitStatusExt::from_raw(9))
    }

    /// Waits until the VMM ends, without polling: its pidfd becomes readable when it exits
    /// (one descriptor while waiting). Where pidfds are missing (Linux before 5.3), checks
    /// once a second.
    pub async fn exited(&self) -> ExitStatus {
        if let Some(status) = self.try_wait() {
            return status;
        }
        let pidfd = rustix::process::Pid::from_raw(self.pid() as i32).and_then(|pid| {
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
        });
        // An adopted PID may have ended, and been reused, before the pidfd was opened.
        if let Some(status) = self.try_wait() {
            return status;
        }
        if let Some(fd) = pidfd {
            // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, which owns it (open, the
            // same descriptor) until it is dropped.
            let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
            if let Ok(fd) = registered {
                let _ = fd.readable().await;
            }
        }
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Waits up to `limit` for the VMM to end.
    pub async fn wait_for_exit(&self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL by PID (only while not reaped or, adopted, while it still is a vpod-vmm, so
    /// the PID is still the VMM's) and reap it when it is our child. A jailed VMM is killed
    /// first and its keeper given a moment to end after it, so that once this returns the VMM
    /// has let go of the pod's files, taps and sockets (killing the keeper alone would have
    /// the kernel kill the VMM only as the keeper dies).
    pub fn kill_and_reap(&self) {
        if let Some(jailed) = jailed_vmm_of(self.pid()) {
            if let Some(pid) = rustix::process::Pid::from_raw(jailed as i32) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
            let deadline = Instant::now() + KEEPER_GRACE;
            while Instant::now() < deadline && self.keeper_running() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.process.kill_and_reap(is_live_vmm);
    }

    fn keeper_running(&self) -> bool {
        if self.process.is_child() {
            self.process.try_wait_child().is_none()
        } else {
            self.adopted_alive()
        }
    }

    /// The jailed VMM process under this one (its keeper), when the VMM is jailed.
    pub fn jailed_pid(&self) -> Option<u32> {
        jailed_vmm_of(self.pid())
    }
}

/// How long a keeper whose jailed VMM was killed may take to end on its own.
const KEEPER_GRACE: Duration = Duration::from_secs(2);

/// The jailed VMM whose keeper is `pid` (the keeper's only child), if it is one.
pub fn jailed_vmm_of(pid: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    let child: u32 = children.split_whitespace().next()?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
    let live = stat.contains(&format!("({JAILED_VMM_NAME}) ")) && !stat.contains(") Z ");
    live.then_some(child)
}

/// The last `max` bytes of `path`, for error messages (empty when unreadable).
pub fn file_tail(path: &Path, max: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(max);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Whether `pid` is a live `vpod-vmm` process (not a zombie, not a PID reused by another
/// program). The one test of "is this one of our VMMs" with [`vmm_processes_under`].
pub fn is_live_vmm(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) state ...": the name is "vpod-vmm", a zombie's state is Z.
    stat.contains("(vpod-vmm) ") && !stat.contains(") Z ")
}

/// PIDs of the live `vpod-vmm` processes whose command line names a path inside `dir` (a
/// sandbox's directory, or a state root holding many): the VMMs a runtime started there,
/// found again after it lost track of them.
pub fn vmm_processes_under(dir: &Path) -> Vec<u32> {
    let Some(dir) = dir.to_str() else {
        return Vec::new();
    };
    let inside = format!("{}/", dir.trim_end_matches('/'));
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if !is_live_vmm(pid) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let names_dir = cmdline
            .split(|&b| b == 0)
            .any(|arg| arg.windows(inside.len()).any(|w| w == inside.as_bytes()));
        if names_dir {
            pids.push(pid);
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_launch_becomes_one_typed_config_file() {
        let dir = std::env::temp_dir().join(format!("vpod-launch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let launch = VmmLaunch {
            program: "/usr/bin/vpod-vmm".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            vcpus: 2,
            memory_mib: 512,
            disk_slots: 8,
            disks: vec![DiskConfig::path("/pod/writable.img").serial("rw-p1")],
            nics: Vec::new(),
            fs: vec![FsConfig::new("/pod/fs.sock", "vpod-share")],
            console_log: "/pod/console.log".into(),
            vsock_socket: "/pod/vsock.sock".into(),
            api_socket: "/pod/api.sock".into(),
            config_file: dir.join("vmm.json"),
            stderr_log: "/pod/vmm.log".into(),
            die_with_parent: false,
            balloon: Some(BalloonConfig::default()),
            ksm: false,
            share_boot_files: true,
            kernel_params: vec!["x=1".into()],
            cgroup: Some("/sys/fs/cgroup/kubepods/pod1/vpod-p1".into()),
            jail: None,
            netns: None,
        };
        let cmd = launch.command(&launch.vm_config()).expect("config written");
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(
            args,
            [
                std::ffi::OsStr::new("--config"),
                launch.config_file.as_os_str()
            ]
        );
        let text = std::fs::read(&launch.config_file).expect("config file");
        let config = VmConfig::from_json(&text).expect("a VM configuration");
        assert_eq!(config, launch.vm_config());
        assert_eq!(config.kernel, PathBuf::from("/k"));
        assert_eq!(config.initrd, Some(PathBuf::from("/i")));
        assert_eq!(
            (config.vcpus, config.memory_mib, config.disk_slots),
            (2, 512, 8)
        );
        assert_eq!(config.disks[0].serial, "rw-p1");
        assert_eq!(config.console, Console::File("/pod/console.log".into()));
        assert_eq!(config.api_socket, Some(PathBuf::from("/pod/api.sock")));
        assert!(config.init_args.is_empty());
        assert!(config.net.is_empty());
        assert_eq!(config.fs, [FsConfig::new("/pod/fs.sock", "vpod-share")]);
        let balloon = config.balloon.expect("a balloon");
        assert!(balloon.free_page_reporting && balloon.deflate_on_oom);
        assert!(!config.ksm);
        assert!(!config.private_boot_files, "boot files shared by default");
        assert!(config.initrd_pages_stay);
        assert_eq!(config.kernel_params, ["x=1"]);
        assert_eq!(
            config.cgroup,
            Some(PathBuf::from("/sys/fs/cgroup/kubepods/pod1/vpod-p1"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn nic(tap: std::fs::File, name: &str, mac: [u8; 6]) -> Nic {
        use crate::network::{GuestInterface, MacAddress};
        Nic {
            tap: std::sync::Arc::new(tap.into()),
            interface: GuestInterface {
                name: name.into(),
                mac: MacAddress(mac),
                new_mac: None,
                mtu: 0,
                addresses: Vec::new(),
            },
        }
    }

    #[test]
    fn each_nic_is_its_tap_descriptor_and_mac_in_the_vm_config() {
        let dir = tempfile::tempdir().unwrap();
        let eth0 = nic(tempfile::tempfile().unwrap(), "eth0", [2, 0, 0, 0, 0, 1]);
        let eth1 = nic(tempfile::tempfile().unwrap(), "eth1", [2, 0, 0, 0, 0, 0xa2]);
        let fds = [eth0.tap.as_raw_fd() as u32, eth1.tap.as_raw_fd() as u32];
        let launch = VmmLaunch {
            program: "/usr/bin/vpod-vmm".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            vcpus: 1,
            memory_mib: 256,
            disk_slots: 0,
            disks: Vec::new(),
            nics: vec![eth0, eth1],
            fs: Vec::new(),
            console_log: "/pod/console.log".into(),
            vsock_socket: "/pod/vsock.sock".into(),
            api_socket: "/pod/api.sock".into(),
            config_file: dir.path().join("vmm.json"),
            stderr_log: "/pod/vmm.log".into(),
            die_with_parent: false,
            balloon: None,
            ksm: true,
            share_boot_files: false,
            kernel_params: Vec::new(),
            cgroup: None,
            jail: None,
            netns: None,
        };
        launch.command(&launch.vm_config()).expect("config written");
        let text = std::fs::read(&launch.config_file).expect("config file");
        let config = VmConfig::from_json(&text).expect("a VM configuration");
        assert_eq!(
            config.net,
            [
                NetConfig {
                    source: TapSource::Fd(fds[0]),
                    mac: Some("02:00:00:00:00:01".into()),
                },
                NetConfig {
                    source: TapSource::Fd(fds[1]),
                    mac: Some("02:00:00:00:00:a2".into()),
                },
            ]
        );
        // KSM, asked for, reaches the VMM's configuration.
        assert!(config.ksm);
        assert!(config.private_boot_files);
        assert!(String::from_utf8_lossy(&text).contains("\"ksm\""));
    }

    #[test]
    fn an_inherited_descriptor_reaches_the_child_and_stays_close_on_exec_here() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tap-stand-in");
        // std opens files close-on-exec, as the network crate opens taps.
        let file = std::fs::File::create(&path).unwrap();
        let fd = file.as_raw_fd();
        let mut cmd = Command::new("readlink");
        cmd.arg(format!("/proc/self/fd/{fd}"));
        inherit_fds(&mut cmd, vec![fd]);
        let output = cmd.output().expect("readlink runs");
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            path.to_str().unwrap()
        );
        let flags = rustix::io::fcntl_getfd(&file).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
        // Without it, the child does not see the descriptor.
        let output = Command::new("readlink")
            .arg(format!("/proc/self/fd/{fd}"))
            .output()
            .expect("readlink runs");
        assert!(!output.status.success());
    }
}

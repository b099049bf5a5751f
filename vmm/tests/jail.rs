//! The jail on real KVM with the stub guests: the VMM confined (its own PID and mount
//! namespaces, a root holding only what its configuration names, an unprivileged uid, no
//! capabilities, no_new_privs) while its keeper, the launcher's child, relays signals and
//! the exit; and the cgroup the configuration names. Every process is killed by PID if it
//! outlives its time limit.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vpod_proto::vmm::{Console, DiskConfig, JailConfig, VmConfig, VmmClient, VsockConfig};

mod support;
use support::{built, wait_for};

const VMM: &str = env!("CARGO_BIN_EXE_vpod-vmm");
/// The jail's user in these tests: no account of the host has it.
const JAIL_UID: u32 = 4_000_123;

/// A pod-like directory: `vm/` (the VMM's, owned by the jail's user), `jail/` (the root's
/// mount point) and a read-only disk; removed with everything in it.
struct PodDir(PathBuf);

impl PodDir {
    fn new(name: &str) -> PodDir {
        let dir = std::env::temp_dir().join(format!("vpod-jail-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("vm")).expect("vm dir");
        std::fs::create_dir_all(dir.join("jail")).expect("jail dir");
        // Only root may enter the pod directory: the jailed VMM reaches vm/ through the jail.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        std::os::unix::fs::chown(dir.join("vm"), Some(JAIL_UID), Some(JAIL_UID)).expect("chown");
        std::fs::write(dir.join("layer.img"), vec![0u8; 1 << 20]).expect("disk");
        PodDir(dir.canonicalize().expect("canonical"))
    }

    fn config(&self, kernel: PathBuf) -> VmConfig {
        VmConfig {
            disks: vec![DiskConfig::path(self.0.join("layer.img"))
                .read_only(true)
                .serial("layer")],
            console: Console::File(self.0.join("vm/console.log")),
            vsock: Some(VsockConfig {
                uds_path: self.0.join("vm/vsock.sock"),
                guest_cid: 3,
            }),
            api_socket: Some(self.0.join("vm/api.sock")),
            jail: Some(JailConfig::new(self.0.join("jail"), JAIL_UID, JAIL_UID)),
            ..VmConfig::new(kernel)
        }
    }

    fn spawn(&self, config: &VmConfig) -> Keeper {
        self.spawn_program(Path::new(VMM), config)
    }

    fn spawn_program(&self, vmm: &Path, config: &VmConfig) -> Keeper {
        let file = self.0.join("vmm.json");
        std::fs::write(&file, config.to_json()).expect("config");
        let child = Command::new(vmm)
            .arg("--config")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the VMM starts");
        Keeper { child }
    }
}

impl Drop for PodDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The launched process (the keeper), killed if a test leaves it running.
struct Keeper {
    child: Child,
}

impl Keeper {
    /// The jailed VMM: the keeper's only child.
    fn vmm_pid(&self) -> u32 {
        let keeper = self.child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let children =
                std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children"))
                    .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                return pid.parse().expect("a PID");
            }
            assert!(Instant::now() < deadline, "the keeper has no child");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("vpod-vmm did not end within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in the status of {pid}"))
        .trim()
        .to_string()
}

fn gone(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // A zombie still has /proc/PID, but no longer any memory or descriptors.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = state
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        if state.is_empty() || zombie {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Every path in the tree under `root`, relative to it.
fn tree(root: &Path) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            paths.insert(
                path.strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string(),
            );
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    paths
}

#[test]
fn a_jailed_vmm_runs_unprivileged_in_a_root_of_its_own_and_stops_through_its_keeper() {
    let pod = PodDir::new("confined");
    let stub = built("build/stub-idle.elf");
    // An inheritable descriptor the configuration does not name: the jail closes it.
    let stray = std::fs::File::open("/dev/null").expect("open");
    rustix::io::fcntl_setfd(&stray, rustix::io::FdFlags::empty()).expect("inheritable");
    let mut keeper = pod.spawn(&pod.config(stub.clone()));
    let api = pod.0.join("vm/api.sock");
    wait_for(&api);
    let vmm = keeper.vmm_pid();

    assert_eq!(
        status_field(vmm, "Uid"),
        format!("{JAIL_UID}\t{JAIL_UID}\t{JAIL_UID}\t{JAIL_UID}")
    );
    assert_eq!(
        status_field(vmm, "Gid"),
        format!("{JAIL_UID}\t{JAIL_UID}\t{JAIL_UID}\t{JAIL_UID}")
    );
    assert_eq!(status_field(vmm, "Groups"), "");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(vmm, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(vmm, "NoNewPrivs"), "1");
    // The first process of its own PID namespace.
    assert_eq!(status_field(vmm, "NSpid"), format!("{vmm}\t1"));
    let ns =
        |pid: u32, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("ns");
    let me = std::process::id();
    for kind in ["mnt", "ipc", "uts", "net"] {
        assert_ne!(ns(vmm, kind), ns(me, kind), "{kind} namespace");
    }

    // Its root holds the configuration's files, its own directory and /dev/kvm: nothing else.
    let root = PathBuf::from(format!("/proc/{vmm}/root"));
    let pod_path = pod
        .0
        .strip_prefix("/")
        .expect("absolute")
        .display()
        .to_string();
    let stub_path = stub
        .strip_prefix("/")
        .expect("absolute")
        .display()
        .to_string();
    let mut expected: BTreeSet<String> = ["dev", "dev/kvm"].iter().map(|s| s.to_string()).collect();
    for path in [&stub_path, &format!("{pod_path}/layer.img")] {
        let mut prefix = PathBuf::new();
        for part in Path::new(path).components() {
            prefix.push(part);
            expected.insert(prefix.display().to_string());
        }
    }
    for file in ["vm", "vm/api.sock", "vm/vsock.sock", "vm/console.log"] {
        expected.insert(format!("{pod_path}/{file}"));
    }
    assert_eq!(tree(&root), expected);
    let mounts = std::fs::read_to_string(format!("/proc/{vmm}/mountinfo")).expect("mountinfo");
    let root_mount = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .expect("root");
    assert!(
        root_mount.contains(" ro,") && root_mount.contains(" - tmpfs "),
        "{root_mount}"
    );
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{vmm}/fd"))
        .expect("fds")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !fds.contains(&stray.as_raw_fd().to_string())
            || std::fs::read_link(format!("/proc/{vmm}/fd/{}", stray.as_raw_fd()))
                .is_ok_and(|p| p != Path::new("/dev/null")),
        "the stray descriptor reached the jailed VMM"
    );
    let limits = std::fs::read_to_string(format!("/proc/{vmm}/limits")).expect("limits");
    assert!(limits
        .lines()
        .any(|l| l.starts_with("Max core file size") && l.contains(" 0 ")));
    assert!(limits
        .lines()
        .any(|l| l.starts_with("Max open files") && l.contains(" 4096 ")));
    assert!(limits
        .lines()
        .any(|l| l.starts_with("Max locked memory") && l.contains(" 0 ")));

    // The host reaches its control socket at the configured path.
    let state = VmmClient::new(&api).state().expect("state");
    assert_eq!(state.vcpus, 1);

    keeper.signal(libc::SIGTERM);
    let status = keeper.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(143), "stderr: {}", keeper.stderr());
    assert!(
        gone(vmm, Duration::from_secs(1)),
        "the VMM outlived its keeper"
    );
    // The jail was the VMM's own mount namespace: the host's mount point is still empty.
    assert_eq!(
        std::fs::read_dir(pod.0.join("jail")).expect("jail").count(),
        0
    );
}

#[test]
fn killing_the_keeper_kills_the_jailed_vmm() {
    let pod = PodDir::new("keeper-killed");
    let mut keeper = pod.spawn(&pod.config(built("build/stub-idle.elf")));
    wait_for(&pod.0.join("vm/api.sock"));
    let vmm = keeper.vmm_pid();
    keeper.signal(libc::SIGKILL);
    let status = keeper.wait(Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(
        gone(vmm, Duration::from_secs(5)),
        "the VMM outlived its killed keeper"
    );
}

#[test]
fn the_keeper_ends_with_the_guest_s_exit_and_passes_its_console_on() {
    let pod = PodDir::new("exit");
    let config = VmConfig {
        console: Console::Stdio,
        ..pod.config(built("build/stub.elf"))
    };
    let mut keeper = pod.spawn(&config);
    let status = keeper.wait(Duration::from_secs(20));
    let mut stdout = String::new();
    use std::io::Read;
    keeper
        .child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut stdout)
        .expect("stdout");
    assert_eq!(stdout, "vpod-stub: ready\n");
    assert_eq!(status.code(), Some(0), "stderr: {}", keeper.stderr());
}

#[test]
fn a_jail_without_its_root_directory_is_a_one_line_error() {
    let pod = PodDir::new("no-root");
    let mut config = pod.config(built("build/stub-idle.elf"));
    if let Some(jail) = &mut config.jail {
        jail.root = pod.0.join("missing");
    }
    let mut keeper = pod.spawn(&config);
    let status = keeper.wait(Duration::from_secs(10));
    let stderr = keeper.stderr();
    assert_eq!(status.code(), Some(125), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("jail: the root") && stderr.contains("missing"),
        "{stderr}"
    );
}

/// A named network namespace (`ip netns add`), deleted when dropped.
struct NamedNetns(String);

impl NamedNetns {
    fn new(name: &str) -> NamedNetns {
        let name = format!("vpod-jail-{name}-{}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("ip (iproute2)");
        assert!(status.success(), "ip netns add {name}: {status}");
        NamedNetns(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Given a network namespace (the pod's, in a runtime), the jailed VMM joins it rather than
/// make one of its own; the other namespaces are still new. A path that is not there is a
/// one-line error naming it.
#[test]
fn a_jailed_vmm_joins_the_network_namespace_it_is_given() {
    use std::os::unix::fs::MetadataExt;
    let pod = PodDir::new("netns");
    let netns = NamedNetns::new("joined");
    let mut config = pod.config(built("build/stub-idle.elf"));
    if let Some(jail) = &mut config.jail {
        jail.netns = Some(netns.path());
    }
    let mut keeper = pod.spawn(&config);
    wait_for(&pod.0.join("vm/api.sock"));
    let vmm = keeper.vmm_pid();
    let ns =
        |pid: u32, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("ns");
    let inode = std::fs::metadata(netns.path()).expect("the netns").ino();
    assert_eq!(
        ns(vmm, "net"),
        PathBuf::from(format!("net:[{inode}]")),
        "the VMM is not in the namespace it was given"
    );
    let me = std::process::id();
    for kind in ["mnt", "ipc", "uts"] {
        assert_ne!(ns(vmm, kind), ns(me, kind), "{kind} namespace");
    }
    keeper.signal(libc::SIGTERM);
    let status = keeper.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(143), "stderr: {}", keeper.stderr());

    let missing = pod.0.join("no-such-netns");
    if let Some(jail) = &mut config.jail {
        jail.netns = Some(missing.clone());
    }
    let mut keeper = pod.spawn(&config);
    let status = keeper.wait(Duration::from_secs(10));
    let stderr = keeper.stderr();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot be found") && stderr.contains(&missing.display().to_string()),
        "{stderr}"
    );
}

/// The host's cgroup v2 mount point, from this process's mountinfo.
fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let line = mounts
        .lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|fs| fs.starts_with("cgroup2 "))
        })
        .expect("this host has a cgroup v2 hierarchy mounted");
    PathBuf::from(line.split(' ').nth(4).expect("mount point"))
}

/// A cgroup made for one test and removed after it.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn the_keeper_and_the_jailed_vmm_run_in_the_cgroup_they_are_given() {
    let pod = PodDir::new("cgroup");
    let cgroup = Cgroup(cgroup2_mount().join(format!("vpod-jail-test-{}", std::process::id())));
    std::fs::create_dir(&cgroup.0).expect("a cgroup");
    let relative = format!(
        "0::/{}\n",
        cgroup.0.file_name().expect("name").to_string_lossy()
    );
    let config = VmConfig {
        cgroup: Some(cgroup.0.clone()),
        ..pod.config(built("build/stub-idle.elf"))
    };
    let mut keeper = pod.spawn(&config);
    wait_for(&pod.0.join("vm/api.sock"));
    let vmm = keeper.vmm_pid();
    for pid in [keeper.child.id(), vmm] {
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
        assert!(
            membership.lines().any(|l| format!("{l}\n") == relative),
            "{pid}: {membership}"
        );
    }
    let procs = std::fs::read_to_string(cgroup.0.join("cgroup.procs")).expect("procs");
    assert_eq!(procs.lines().count(), 2, "{procs}");
    keeper.signal(libc::SIGTERM);
    assert_eq!(keeper.wait(Duration::from_secs(20)).code(), Some(143));
}

#[test]
fn a_jailed_vmm_that_makes_a_call_outside_its_filter_dies_by_sigsys_and_says_which() {
    // The first process of a PID namespace ignores signals it sends itself: the handler must
    // still end it, and its keeper must end the same way.
    let pod = PodDir::new("probe");
    let probe = built("target/seccomp-probe/release/vpod-vmm");
    let mut keeper = pod.spawn_program(&probe, &pod.config(built("build/stub-seccomp-probe.elf")));
    let status = keeper.wait(Duration::from_secs(20));
    let stderr = keeper.stderr();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGSYS),
        "{status:?}: {stderr}"
    );
    assert_eq!(
        vpod_vmm::seccomp::seccomp_kill_from_log(&stderr),
        Some((libc::SYS_reboot as u64, "vcpu".to_string())),
        "{stderr}"
    );
}

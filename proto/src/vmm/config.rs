//! The VM configuration a launcher hands vpod-vmm (`--config FILE`, JSON): what the command
//! line flags say, as one typed value. The VMM checks the values (ranges, serial lengths)
//! when it turns this into its own configuration.
//!
//! ```json
//! {"kernel": "/var/lib/vpod/vmlinux", "initrd": "/var/lib/vpod/initrd.img",
//!  "vcpus": 2, "memory_mib": 512,
//!  "disks": [{"path": "/pods/p1/writable.img", "serial": "rw-p1"},
//!            {"fd": 3, "read_only": true, "serial": "layer-0"}],
//!  "disk_slots": 8, "console": {"file": "/pods/p1/console.log"},
//!  "vsock": {"uds_path": "/pods/p1/vsock.sock"}, "net": [{"fd": 4, "mac": "02:00:00:00:00:01"}],
//!  "fs": [{"socket": "/pods/p1/fs.sock", "tag": "vpod-share"}],
//!  "api_socket": "/pods/p1/api.sock"}
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The guest's vCPUs when the configuration does not say.
pub const DEFAULT_VCPUS: u8 = 1;
/// The guest's memory in MiB when the configuration does not say.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// The guest's vsock CID when the configuration does not say.
pub const DEFAULT_GUEST_CID: u32 = 3;

/// Everything needed to build and run one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// ELF vmlinux (PVH note or not) or bzImage.
    pub kernel: PathBuf,
    /// The initramfs; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// The base kernel command line; the VMM's default when absent. The virtio devices and
    /// the guest command are appended either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Kernel parameters appended to the base line (`page_reporting.page_reporting_order=9`),
    /// one word each: no whitespace, no double quote, not `--`. A parameter the VMM would
    /// add on its own (see [`BalloonConfig`]) is not added when one here names it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_params: Vec<String>,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// virtio-blk disks, in the order the guest sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    /// Empty virtio-blk devices after the disks, filled and emptied through the control
    /// socket.
    #[serde(default)]
    pub disk_slots: u32,
    #[serde(default)]
    pub console: Console,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// virtio-net NICs backed by taps, in the order the guest sees them (eth0 first before
    /// the guest renames anything).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    /// virtio-fs shares served by vhost-user backends (a virtiofsd each); with any, guest
    /// memory is a shared memfd the backends map.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<FsConfig>,
    /// Where the control socket listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<PathBuf>,
    /// The virtio-balloon device: free page reporting, stats, a target the control socket
    /// sets (`balloon`, `set_balloon`); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
    /// Guest RAM is offered to KSM (`madvise(MADV_MERGEABLE)`): identical pages of VMs
    /// that opted in are merged once the host runs ksmd. Only for VMs of mutually trusted
    /// tenants: merging is a timing side channel between them. Private guest RAM only: a
    /// VM with `fs` shares (shared memfd) cannot have it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ksm: bool,
    /// Keep the guest's own copies of what it booted from. By default, a few seconds after
    /// the start, the VMM maps the kernel file copy-on-write over the kernel code pages the
    /// guest left unchanged, and (without `fs` shares) the initrd file over the guest pages
    /// that hold its pages (the agent unpacked into the tmpfs root), so VMs booting the same
    /// files share those page-cache pages (about 7 MiB per VM for ours), at the cost of a
    /// flush+reload timing channel on those pages between them, the kind shared libraries
    /// have between host processes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private_boot_files: bool,
    /// The guest keeps each page that holds a page of its initrd where it is and never hands
    /// one to a device: it runs on the files its kernel unpacked without copying or deleting
    /// them, and moves no page (vpod-init, which locks its own binary's pages, on our guest
    /// kernel, which has no compaction; the pod initrd and the host runtime ship together).
    /// The VMM then also shares the initrd's pages where `fs` shares map guest RAM (without
    /// this it does so only where guest RAM is private), and adds `retain_initrd` to the
    /// command line, so that the kernel keeps its copy of the initrd rather than free it for
    /// reuse.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub initrd_pages_stay: bool,
    /// Handed to the guest's init as its arguments (after ` -- ` on the kernel command line).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_args: Vec<String>,
    /// Print the timings line on stderr at exit.
    #[serde(default)]
    pub timings: bool,
    /// A cgroup v2 directory (`/sys/fs/cgroup/...`, made by the launcher) the VMM moves
    /// itself into first, before it allocates anything, so that all its memory and CPU are
    /// charged there (the pod's cgroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// Confine the VMM before it builds the VM: namespaces, a root of its own, an
    /// unprivileged uid, no capabilities. None: it runs as it was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<JailConfig>,
    /// Install the seccomp filters, one per thread kind, once the VM is built. Off only for
    /// development.
    #[serde(default = "default_true")]
    pub seccomp: bool,
}

/// How the VMM confines itself ([`VmConfig::jail`]). It starts as root, moves into new
/// PID, mount, IPC and UTS namespaces (a first process stays outside, waits for the VMM and
/// passes its exit status and the signals it gets on), makes a tmpfs on `root` its root
/// holding only the files the configuration names (kernel, initrd, disks by path, the
/// directories of its console file and sockets, each fs socket) at their own paths, and
/// `/dev/kvm` (and `/dev/net/tun` when a NIC is a tap by name) as device nodes of its own;
/// closes every descriptor the configuration does not name, then runs as `uid`:`gid` with
/// no capabilities, `no_new_privs`, no core files and the limits below. Its network
/// namespace is `netns` when one is named (the pod's, where its taps are, as Firecracker's
/// jailer takes `--netns`), else a new empty one, or the one it started in when a NIC is a
/// tap by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// An existing empty directory the jail's root is mounted on (inside the VMM's own
    /// mount namespace: the host sees it empty).
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// RLIMIT_NOFILE.
    #[serde(default = "default_max_open_files")]
    pub max_open_files: u64,
    /// RLIMIT_MEMLOCK in bytes: the VMM locks no memory, so none by default.
    #[serde(default)]
    pub max_locked_bytes: u64,
    /// A network namespace to join (a path such as `/run/netns/NAME` or
    /// `/proc/PID/ns/net`) instead of making an empty one: joining an existing namespace
    /// costs microseconds where making one costs most of a millisecond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
}

/// The process name (`comm`) a jailed VMM gives itself. Its keeper keeps `vpod-vmm`, the
/// name its launcher knows, so a launcher scanning processes by name finds each VMM once,
/// and the jailed one under it (the keeper's only child) by this name.
pub const JAILED_VMM_NAME: &str = "vpod-vmm-jailed";

/// The VMM's open-descriptor limit in a jail when the configuration does not say.
pub const DEFAULT_JAIL_MAX_OPEN_FILES: u64 = 4096;

fn default_max_open_files() -> u64 {
    DEFAULT_JAIL_MAX_OPEN_FILES
}

impl JailConfig {
    /// A jail on `root` running as `uid`:`gid`, other settings at their defaults.
    pub fn new(root: impl Into<PathBuf>, uid: u32, gid: u32) -> Self {
        JailConfig {
            root: root.into(),
            uid,
            gid,
            max_open_files: DEFAULT_JAIL_MAX_OPEN_FILES,
            max_locked_bytes: 0,
            netns: None,
        }
    }
}

fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}

fn default_memory_mib() -> u64 {
    DEFAULT_MEMORY_MIB
}

impl VmConfig {
    /// A VM of `kernel` with every other setting at its default.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            kernel_params: Vec::new(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            disks: Vec::new(),
            disk_slots: 0,
            console: Console::default(),
            vsock: None,
            net: Vec::new(),
            fs: Vec::new(),
            api_socket: None,
            balloon: None,
            ksm: false,
            private_boot_files: false,
            initrd_pages_stay: false,
            init_args: Vec::new(),
            timings: false,
            cgroup: None,
            jail: None,
            seccomp: true,
        }
    }

    /// The configuration as JSON, for `--config FILE`.
    pub fn to_json(&self) -> String {
        // Plain structs with string keys: serialising them cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a configuration; the error says where the JSON is wrong.
    pub fn from_json(text: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(text)
    }
}

/// Where the guest's serial console goes: `"stdio"`, `"off"` or `{"file": PATH}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Console {
    #[default]
    Stdio,
    Off,
    File(PathBuf),
}

/// Whether `param` can be one of [`VmConfig::kernel_params`]: one word the kernel hands on
/// as it is (not empty, no whitespace, no double quote) and not `--`, which would start the
/// guest command.
pub fn is_kernel_param(param: &str) -> bool {
    !param.is_empty()
        && param != "--"
        && !param.contains('"')
        && !param.chars().any(char::is_whitespace)
}

/// The virtio-balloon device. Stats and inflate/deflate are always on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// The guest reports its free pages and the VMM releases the host memory behind them.
    /// The VMM asks the guest (`page_reporting.page_reporting_order=`) to report free blocks
    /// as small as the host pages guest RAM sits on: 4 KiB where it is a shared memfd (a VM
    /// with `fs` shares), 2 MiB where it is private (transparent huge pages), rather than
    /// the kernel's default of 4 MiB.
    #[serde(default = "default_true")]
    pub free_page_reporting: bool,
    /// The guest takes pages back from the balloon rather than kill a process.
    #[serde(default = "default_true")]
    pub deflate_on_oom: bool,
}

impl Default for BalloonConfig {
    fn default() -> Self {
        BalloonConfig {
            free_page_reporting: true,
            deflate_on_oom: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// The virtio-vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Host clients connect here and send `CONNECT <port>\n`; guest connections to host port
    /// P reach the unix socket `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// 3 or more.
    #[serde(default = "default_guest_cid")]
    pub guest_cid: u32,
}

fn default_guest_cid() -> u32 {
    DEFAULT_GUEST_CID
}

/// Where a disk's bytes come from. On the wire the source is flat beside the disk's other
/// fields: `"path": P` or `"fd": N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A file the VMM opens itself.
    Path(PathBuf),
    /// A descriptor. In a [`VmConfig`], one the VMM inherited from its launcher (so a VMM that
    /// cannot see host paths still gets its disks); in an `attach_disk` request, the index
    /// among the descriptors the client passed over the control socket (SCM_RIGHTS) and no
    /// request has used yet, oldest first (usually 0, the one sent with the request).
    Fd(u32),
}

/// Why a disk's source is not one of path or fd.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiskSourceError {
    #[error("a disk needs a \"path\" or an \"fd\"")]
    Missing,
    #[error("a disk takes a \"path\" or an \"fd\", not both")]
    Both,
}

impl DiskSource {
    /// The source from its flat wire fields.
    pub(super) fn from_fields(
        path: Option<PathBuf>,
        fd: Option<u32>,
    ) -> Result<Self, DiskSourceError> {
        match (path, fd) {
            (Some(path), None) => Ok(DiskSource::Path(path)),
            (None, Some(fd)) => Ok(DiskSource::Fd(fd)),
            (None, None) => Err(DiskSourceError::Missing),
            (Some(_), Some(_)) => Err(DiskSourceError::Both),
        }
    }

    /// The flat wire fields `path` and `fd`.
    pub(super) fn into_fields(self) -> (Option<PathBuf>, Option<u32>) {
        match self {
            DiskSource::Path(path) => (Some(path), None),
            DiskSource::Fd(fd) => (None, Some(fd)),
        }
    }
}

/// One virtio-blk disk: `{"path": P | "fd": N, "read_only": B, "serial": S}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DiskFields", into = "DiskFields")]
pub struct DiskConfig {
    pub source: DiskSource,
    pub read_only: bool,
    /// The id the guest reads from `/sys/block/vdX/serial`: at most 20 bytes.
    pub serial: String,
}

impl DiskConfig {
    /// A writable disk on the file at `path`, without a serial.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        DiskConfig {
            source: DiskSource::Path(path.into()),
            read_only: false,
            serial: String::new(),
        }
    }

    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    pub fn serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = serial.into();
        self
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fd: Option<u32>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    serial: String,
}

impl TryFrom<DiskFields> for DiskConfig {
    type Error = DiskSourceError;

    fn try_from(fields: DiskFields) -> Result<Self, Self::Error> {
        Ok(DiskConfig {
            source: DiskSource::from_fields(fields.path, fields.fd)?,
            read_only: fields.read_only,
            serial: fields.serial,
        })
    }
}

impl From<DiskConfig> for DiskFields {
    fn from(disk: DiskConfig) -> Self {
        let (path, fd) = disk.source.into_fields();
        DiskFields {
            path,
            fd,
            read_only: disk.read_only,
            serial: disk.serial,
        }
    }
}

/// One virtio-fs share: `{"socket": PATH, "tag": TAG, "queue_size": N}`, the backend's
/// vhost-user socket and the tag the guest mounts (`mount -t virtiofs TAG DIR`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The vhost-user socket the backend (virtiofsd) listens on.
    pub socket: PathBuf,
    /// 1 to 36 bytes (the virtio-fs configuration space's tag field).
    pub tag: String,
    /// The request queue's size; the VMM's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_size: Option<u16>,
}

impl FsConfig {
    pub fn new(socket: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        FsConfig {
            socket: socket.into(),
            tag: tag.into(),
            queue_size: None,
        }
    }
}

/// Where a NIC's tap comes from. On the wire the source is flat beside the NIC's other
/// fields: `"tap": NAME` or `"fd": N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// A tap the VMM opens by name in its own network namespace (`/dev/net/tun`,
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`; created if it does not exist).
    Name(String),
    /// A tap descriptor the VMM inherited from its launcher, opened with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` (the launcher may have opened it inside the pod's
    /// network namespace, which the VMM need not be in).
    Fd(u32),
}

/// Why a NIC's source is not one of tap or fd.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TapSourceError {
    #[error("a nic needs a \"tap\" or an \"fd\"")]
    Missing,
    #[error("a nic takes a \"tap\" or an \"fd\", not both")]
    Both,
}

/// One virtio-net NIC: `{"tap": NAME | "fd": N, "mac": "02:00:00:00:00:01"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "NetFields", into = "NetFields")]
pub struct NetConfig {
    pub source: TapSource,
    /// The guest NIC's MAC, `xx:xx:xx:xx:xx:xx`; the VMM picks a locally administered one when
    /// absent.
    pub mac: Option<String>,
}

impl NetConfig {
    /// A NIC on the tap named `name`, MAC chosen by the VMM.
    pub fn tap(name: impl Into<String>) -> Self {
        NetConfig {
            source: TapSource::Name(name.into()),
            mac: None,
        }
    }

    pub fn mac(mut self, mac: impl Into<String>) -> Self {
        self.mac = Some(mac.into());
        self
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fd: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
}

impl TryFrom<NetFields> for NetConfig {
    type Error = TapSourceError;

    fn try_from(fields: NetFields) -> Result<Self, Self::Error> {
        let source = match (fields.tap, fields.fd) {
            (Some(name), None) => TapSource::Name(name),
            (None, Some(fd)) => TapSource::Fd(fd),
            (None, None) => return Err(TapSourceError::Missing),
            (Some(_), Some(_)) => return Err(TapSourceError::Both),
        };
        Ok(NetConfig {
            source,
            mac: fields.mac,
        })
    }
}

impl From<NetConfig> for NetFields {
    fn from(net: NetConfig) -> Self {
        let (tap, fd) = match net.source {
            TapSource::Name(name) => (Some(name), None),
            TapSource::Fd(fd) => (None, Some(fd)),
        };
        NetFields {
            tap,
            fd,
            mac: net.mac,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> VmConfig {
        VmConfig {
            initrd: Some("/i.img".into()),
            cmdline: Some("console=ttyS0".into()),
            vcpus: 4,
            memory_mib: 2048,
            disks: vec![
                DiskConfig::path("/rw.img").serial("rw-p1"),
                DiskConfig {
                    source: DiskSource::Fd(3),
                    read_only: true,
                    serial: "layer-0".into(),
                },
            ],
            disk_slots: 8,
            console: Console::File("/console.log".into()),
            vsock: Some(VsockConfig {
                uds_path: "/v.sock".into(),
                guest_cid: 7,
            }),
            net: vec![
                NetConfig::tap("tap0").mac("02:00:00:00:00:01"),
                NetConfig {
                    source: TapSource::Fd(5),
                    mac: None,
                },
            ],
            fs: vec![
                FsConfig::new("/fs.sock", "share"),
                FsConfig {
                    queue_size: Some(128),
                    ..FsConfig::new("/fs2.sock", "other")
                },
            ],
            api_socket: Some("/api.sock".into()),
            init_args: vec!["sh".into(), "-c".into(), "echo hi".into()],
            timings: true,
            cgroup: Some("/sys/fs/cgroup/pod1/vmm".into()),
            jail: Some(JailConfig::new("/pods/p1/jail", 4_000_001, 4_000_001)),
            seccomp: false,
            ..VmConfig::new("/vmlinux")
        }
    }

    #[test]
    fn a_full_config_survives_json() {
        let config = full();
        assert_eq!(
            VmConfig::from_json(config.to_json().as_bytes()).ok(),
            Some(config)
        );
        let minimal = VmConfig::new("/vmlinux");
        assert_eq!(
            VmConfig::from_json(minimal.to_json().as_bytes()).ok(),
            Some(minimal)
        );
    }

    #[test]
    fn only_the_kernel_is_required_and_defaults_fill_the_rest() {
        let config = VmConfig::from_json(br#"{"kernel": "/k"}"#).expect("valid");
        assert_eq!(config, VmConfig::new("/k"));
        assert_eq!((config.vcpus, config.memory_mib), (1, 128));
        assert_eq!(config.console, Console::Stdio);
        let vsock: VsockConfig = serde_json::from_str(r#"{"uds_path": "/v"}"#).expect("valid");
        assert_eq!(vsock.guest_cid, 3);
    }

    #[test]
    fn disks_are_flat_on_the_wire() {
        let disk = DiskConfig::path("/a.img").read_only(true).serial("s");
        assert_eq!(
            serde_json::to_value(&disk).expect("encodes"),
            serde_json::json!({"path": "/a.img", "read_only": true, "serial": "s"})
        );
        let fd: DiskConfig = serde_json::from_str(r#"{"fd": 4}"#).expect("valid");
        assert_eq!(fd.source, DiskSource::Fd(4));
        assert!(!fd.read_only);
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let error = |text: &str| {
            VmConfig::from_json(text.as_bytes())
                .expect_err("refused")
                .to_string()
        };
        assert!(error("{").contains("EOF"));
        assert!(error("{}").contains("missing field `kernel`"));
        assert!(error(r#"{"kernel": "/k", "vcpu": 2}"#).contains("unknown field `vcpu`"));
        assert!(error(r#"{"kernel": "/k", "vcpus": 300}"#).contains("invalid value"));
        assert!(error(r#"{"kernel": "/k", "disks": [{"serial": "x"}]}"#)
            .contains("a disk needs a \"path\" or an \"fd\""));
        assert!(
            error(r#"{"kernel": "/k", "disks": [{"path": "/a", "fd": 3}]}"#).contains("not both")
        );
        assert!(
            error(r#"{"kernel": "/k", "disks": [{"path": "/a", "ro": true}]}"#)
                .contains("unknown field")
        );
        assert!(error(r#"{"kernel": "/k", "console": "tty"}"#).contains("unknown variant"));
        assert!(
            error(r#"{"kernel": "/k", "net": [{"mac": "02:00:00:00:00:01"}]}"#)
                .contains("a nic needs a \"tap\" or an \"fd\"")
        );
        assert!(error(r#"{"kernel": "/k", "net": [{"tap": "t", "fd": 3}]}"#).contains("not both"));
        assert!(
            error(r#"{"kernel": "/k", "fs": [{"socket": "/s"}]}"#).contains("missing field `tag`")
        );
        assert!(
            error(r#"{"kernel": "/k", "fs": [{"socket": "/s", "tag": "t", "dax": true}]}"#)
                .contains("unknown field `dax`")
        );
    }

    #[test]
    fn fs_shares_are_flat_on_the_wire() {
        let share = FsConfig::new("/fs.sock", "vpod");
        assert_eq!(
            serde_json::to_value(&share).expect("encodes"),
            serde_json::json!({"socket": "/fs.sock", "tag": "vpod"})
        );
        let sized: FsConfig =
            serde_json::from_str(r#"{"socket": "/s", "tag": "t", "queue_size": 64}"#)
                .expect("valid");
        assert_eq!(sized.queue_size, Some(64));
    }
}

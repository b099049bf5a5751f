//! The VM's configuration and the command-line syntax that produces it: flags for humans, or
//! `--config FILE` with the typed configuration a launcher writes
//! ([`vpod_proto::vmm::VmConfig`], checked and converted in [`crate::convert`]).

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use crate::arch::layout::{MAX_MEMORY_MIB, MIN_MEMORY_MIB};
use crate::arch::mptable::MAX_VCPUS;
use crate::convert::ConvertError;
use crate::devices::virtio::net::MacAddress;

/// Longest serial a virtio-blk disk can report (the GET_ID answer).
pub const DISK_SERIAL_LEN: usize = 20;

/// The base kernel command line when `--cmdline` is not given: quiet (every console byte is a
/// VM exit), reset through the i8042 on reboot, reboot at once on panic, one UART, and no
/// probing for hardware this VMM does not emulate. `noreplace-smp` keeps a one-vCPU guest
/// from rewriting the ~4,000 `lock` prefixes spread over its code, which would give it a
/// private copy of about 440 more of the code pages it otherwise shares with other VMs of
/// the same kernel once booted (see `arch::kernel_text`); a lock prefix on one CPU costs a
/// few cycles.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet reboot=k panic=-1 \
8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd i8042.nopnp swiotlb=noforce \
tsc=reliable no_timer_check noreplace-smp";

/// Default kernel, relative to the working directory (the repository root).
pub const DEFAULT_KERNEL: &str = "build/vmlinux";
/// Default initrd, used only when it exists.
pub const DEFAULT_INITRD: &str = "build/initrd.img";
pub use vpod_proto::vmm::config::{DEFAULT_MEMORY_MIB, DEFAULT_VCPUS};

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleConfig {
    Stdio,
    Off,
    File(PathBuf),
}

/// Where a disk's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A file the VMM opens.
    Path(PathBuf),
    /// A descriptor the VMM inherited from its launcher, checked open when the configuration
    /// was read (so its number cannot have been reused since) and duplicated when the disk
    /// is opened.
    Inherited(RawFd),
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub source: DiskSource,
    pub read_only: bool,
    /// Up to [`DISK_SERIAL_LEN`] bytes, zero-padded when reported.
    pub serial: Vec<u8>,
}

/// The virtio-vsock device (`--vsock PATH[,cid=N]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The VM's unix socket; guest connections to host port P go to `PATH_P`.
    pub uds_path: PathBuf,
    pub guest_cid: u64,
}

/// The virtio-balloon device (`--balloon`, `--balloon=no-reporting`): stats always,
/// deflate on OOM always, free page reporting unless turned off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonConfig {
    pub free_page_reporting: bool,
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

/// Where a NIC's tap comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapSource {
    /// A tap the VMM opens (or creates) by name in its own network namespace.
    Name(String),
    /// A tap descriptor the VMM inherited from its launcher, opened with `IFF_TAP |
    /// IFF_NO_PI | IFF_VNET_HDR` (perhaps in another network namespace), checked open when
    /// the configuration was read and duplicated when the device is made.
    Inherited(RawFd),
}

/// One virtio-net NIC (`--net tap=NAME[,mac=MAC]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: TapSource,
    pub mac: MacAddress,
}

/// Longest tap name (IFNAMSIZ less the terminating zero).
pub const MAX_TAP_NAME_LEN: usize = 15;

/// Parses `xx:xx:xx:xx:xx:xx` (hex digits of either case).
pub fn parse_mac(text: &str) -> Option<MacAddress> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Whether `mac` can be a NIC's own address (not a group address).
pub fn is_unicast(mac: &MacAddress) -> bool {
    mac[0] & 1 == 0
}

/// A locally administered unicast MAC for a NIC given none: random, unlikely to repeat
/// across the VMs of one host.
pub fn generated_mac() -> MacAddress {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness once per process, then stepped.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let bytes = hasher.finish().to_le_bytes();
    // Locally administered (bit 1) and unicast (bit 0 clear).
    [
        (bytes[0] & 0xfc) | 0x02,
        bytes[1],
        bytes[2],
        bytes[3],
        bytes[4],
        bytes[5],
    ]
}

/// One virtio-fs share (`--fs socket=PATH,tag=TAG[,queue_size=N]`): a vhost-user backend
/// (virtiofsd) listening on `socket`, mounted in the guest as `mount -t virtiofs TAG DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    pub socket: PathBuf,
    pub tag: String,
    pub queue_size: u16,
}

/// Most virtio-fs shares one VM takes (`--fs`; vpod uses one per pod).
pub const MAX_FS_SHARES: usize = 4;
/// Longest virtio-fs tag (the configuration space's tag field, not zero-terminated when full).
pub const FS_TAG_MAX_LEN: usize = 36;
/// The request queue's size when `queue_size` is not given.
pub const FS_DEFAULT_QUEUE_SIZE: u16 = 256;
/// Largest request queue (libvhost-user's, and so virtiofsd's, limit).
pub const FS_MAX_QUEUE_SIZE: u16 = 1024;

/// Why a virtio-fs tag cannot be used, if it cannot.
pub fn fs_tag_problem(tag: &str) -> Option<&'static str> {
    if tag.is_empty() {
        Some("the tag is empty")
    } else if tag.len() > FS_TAG_MAX_LEN {
        Some("the tag is longer than 36 bytes")
    } else if tag.bytes().any(|b| b == 0 || b.is_ascii_control()) {
        Some("the tag contains a control character")
    } else {
        None
    }
}

/// Whether a virtio-fs request queue can have `size` entries.
pub fn valid_fs_queue_size(size: u16) -> bool {
    size.is_power_of_two() && (2..=FS_MAX_QUEUE_SIZE).contains(&size)
}

/// Most empty disk slots (`--disk-slots`).
pub const MAX_DISK_SLOTS: u32 = 16;

/// Where the initrd comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitrdConfig {
    /// Given with `--initrd`: it must exist.
    Required(PathBuf),
    /// The default path: used if it exists.
    IfPresent(PathBuf),
    /// No initrd (a configuration file that names none).
    None,
}

/// Everything needed to build and run one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: InitrdConfig,
    /// The base command line (the default, or `--cmdline`).
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub disks: Vec<DiskConfig>,
    pub console: ConsoleConfig,
    /// Print the timings line on exit.
    pub timings: bool,
    /// Words after `--`, handed to the guest's init as its arguments.
    pub init_args: Vec<String>,
    /// Empty virtio-blk devices after the disks, filled at runtime through the API.
    pub disk_slots: u32,
    pub vsock: Option<VsockConfig>,
    /// virtio-net NICs, in the order the guest finds them.
    pub net: Vec<NetConfig>,
    /// virtio-fs shares; with any, guest memory is a shared memfd the backends map.
    pub fs: Vec<FsConfig>,
    /// The control socket (`--api PATH`).
    pub api_socket: Option<PathBuf>,
    /// The virtio-balloon device.
    pub balloon: Option<BalloonConfig>,
    /// Guest RAM offered to KSM (`--ksm`); private guest memory only.
    pub ksm: bool,
    /// Keep the guest's copies of the kernel's code and the initrd's pages rather than share
    /// them with those files once it has booted (`--private-boot-files`).
    pub private_boot_files: bool,
    /// The guest keeps its initrd's pages in place (`VmConfig.initrd_pages_stay` of the
    /// wire configuration): they are shared with a virtio-fs share too.
    pub initrd_pages_stay: bool,
    /// The cgroup v2 directory the VMM moves itself into before anything else.
    pub cgroup: Option<PathBuf>,
    /// How the VMM confines itself before it builds the VM; none: it does not.
    pub jail: Option<vpod_proto::vmm::JailConfig>,
    /// Install the seccomp filters once the VM is built (`--no-seccomp` turns them off).
    pub seccomp: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            kernel: PathBuf::from(DEFAULT_KERNEL),
            initrd: InitrdConfig::IfPresent(PathBuf::from(DEFAULT_INITRD)),
            cmdline: DEFAULT_CMDLINE.to_string(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            disks: Vec::new(),
            console: ConsoleConfig::Stdio,
            timings: false,
            init_args: Vec::new(),
            disk_slots: 0,
            vsock: None,
            net: Vec::new(),
            fs: Vec::new(),
            api_socket: None,
            balloon: None,
            ksm: false,
            private_boot_files: false,
            initrd_pages_stay: false,
            cgroup: None,
            jail: None,
            seccomp: true,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliAction {
    Run(Box<VmConfig>),
    Help,
    Version,
}

/// Errors in the command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown flag {0} (see --help)")]
    UnknownFlag(String),
    #[error("--balloon takes no value or \"no-reporting\", not {0:?}")]
    BadBalloon(String),
    #[error("--ksm offers private guest memory to KSM; a VM with --fs shares has shared memory, which KSM does not merge")]
    KsmWithSharedMemory,
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(String),
    #[error("--vcpus must be a number from 1 to {MAX_VCPUS}, not {0:?}")]
    BadVcpus(String),
    #[error(
        "--memory must be a number of MiB from {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB}, not {0:?}"
    )]
    BadMemory(String),
    #[error("--console must be stdio, off or file:PATH, not {0:?}")]
    BadConsole(String),
    #[error("--disk {0:?}: {1}")]
    BadDisk(String, String),
    #[error("--vsock {0:?}: {1}")]
    BadVsock(String, String),
    #[error("--net {0:?}: {1}")]
    BadNet(String, String),
    #[error("--fs {0:?}: {1}")]
    BadFs(String, String),
    #[error("at most {MAX_FS_SHARES} --fs shares are supported")]
    TooManyFs,
    #[error("--disk-slots must be a number from 0 to {MAX_DISK_SLOTS}, not {0:?}")]
    BadDiskSlots(String),
    #[error("unexpected argument {0:?} (guest command words go after --)")]
    UnexpectedArgument(String),
    #[error(
        "guest argument {0:?} contains a double quote, which the kernel command line cannot carry"
    )]
    QuoteInInitArg(String),
    #[error("--config cannot be combined with {0} (the file holds the whole configuration)")]
    ConfigWithFlags(String),
    #[error("cannot read the configuration file {0}: {1}")]
    ReadConfig(PathBuf, String),
    #[error("the configuration file {0} is not a VM configuration: {1}")]
    ParseConfig(PathBuf, String),
    #[error("the configuration file {0}: {1}")]
    InvalidConfig(PathBuf, ConvertError),
}

fn parse_disk(spec: &str) -> Result<DiskConfig, ConfigError> {
    let bad = |why: &str| ConfigError::BadDisk(spec.to_string(), why.to_string());
    let mut parts = spec.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(bad("the path is empty"));
    }
    let mut disk = DiskConfig {
        source: DiskSource::Path(PathBuf::from(path)),
        read_only: false,
        serial: Vec::new(),
    };
    for option in parts {
        if option == "ro" {
            disk.read_only = true;
        } else if option == "rw" {
            disk.read_only = false;
        } else if let Some(serial) = option.strip_prefix("serial=") {
            if serial.len() > DISK_SERIAL_LEN {
                return Err(bad("the serial is longer than 20 bytes"));
            }
            disk.serial = serial.as_bytes().to_vec();
        } else {
            return Err(bad(&format!("unknown option {option:?}")));
        }
    }
    Ok(disk)
}

fn parse_vsock(spec: &str) -> Result<VsockConfig, ConfigError> {
    let bad = |why: &str| ConfigError::BadVsock(spec.to_string(), why.to_string());
    let mut parts = spec.split(',');
    let path = parts.next().unwrap_or_default();
    if path.is_empty() {
        return Err(bad("the path is empty"));
    }
    let mut vsock = VsockConfig {
        uds_path: PathBuf::from(path),
        guest_cid: crate::devices::virtio::vsock::DEFAULT_GUEST_CID,
    };
    for option in parts {
        match option.strip_prefix("cid=").map(str::parse::<u32>) {
            Some(Ok(cid)) if cid >= 3 => vsock.guest_cid = u64::from(cid),
            Some(_) => return Err(bad("the CID must be a number from 3 to 4294967295")),
            None => return Err(bad(&format!("unknown option {option:?}"))),
        }
    }
    Ok(vsock)
}

fn parse_net(spec: &str) -> Result<NetConfig, ConfigError> {
    let bad = |why: &str| ConfigError::BadNet(spec.to_string(), why.to_string());
    let mut tap = None;
    let mut mac = None;
    for option in spec.split(',') {
        if let Some(name) = option.strip_prefix("tap=") {
            if name.is_empty() || name.len() > MAX_TAP_NAME_LEN {
                return Err(bad("the tap name must be 1 to 15 bytes"));
            }
            tap = Some(TapSource::Name(name.to_string()));
        } else if let Some(text) = option.strip_prefix("mac=") {
            match parse_mac(text) {
                Some(address) if is_unicast(&address) => mac = Some(address),
                Some(_) => return Err(bad("the mac is a multicast address")),
                None => return Err(bad("the mac must be six hex bytes xx:xx:xx:xx:xx:xx")),
            }
        } else {
            return Err(bad(&format!("unknown option {option:?}")));
        }
    }
    Ok(NetConfig {
        tap: tap.ok_or_else(|| bad("tap=NAME is missing"))?,
        mac: mac.unwrap_or_else(generated_mac),
    })
}

fn parse_fs(spec: &str) -> Result<FsConfig, ConfigError> {
    let bad = |why: &str| ConfigError::BadFs(spec.to_string(), why.to_string());
    let mut socket = None;
    let mut tag = None;
    let mut queue_size = FS_DEFAULT_QUEUE_SIZE;
    for option in spec.split(',') {
        if let Some(path) = option.strip_prefix("socket=") {
            if path.is_empty() {
                return Err(bad("the socket path is empty"));
            }
            socket = Some(PathBuf::from(path));
        } else if let Some(name) = option.strip_prefix("tag=") {
            if let Some(problem) = fs_tag_problem(name) {
                return Err(bad(problem));
            }
            tag = Some(name.to_string());
        } else if let Some(size) = option.strip_prefix("queue_size=") {
            queue_size = match size.parse::<u16>() {
                Ok(n) if valid_fs_queue_size(n) => n,
                _ => return Err(bad("the queue size must be a power of two from 2 to 1024")),
            };
        } else {
            return Err(bad(&format!("unknown option {option:?}")));
        }
    }
    Ok(FsConfig {
        socket: socket.ok_or_else(|| bad("socket=PATH is missing"))?,
        tag: tag.ok_or_else(|| bad("tag=TAG is missing"))?,
        queue_size,
    })
}

/// `--balloon` (free page reporting on) or `--balloon=no-reporting`.
fn parse_balloon(value: Option<&str>) -> Result<BalloonConfig, ConfigError> {
    match value {
        None | Some("reporting") => Ok(BalloonConfig::default()),
        Some("no-reporting") => Ok(BalloonConfig {
            free_page_reporting: false,
            ..BalloonConfig::default()
        }),
        Some(other) => Err(ConfigError::BadBalloon(other.to_string())),
    }
}

fn parse_disk_slots(value: &str) -> Result<u32, ConfigError> {
    match value.parse::<u32>() {
        Ok(n) if n <= MAX_DISK_SLOTS => Ok(n),
        _ => Err(ConfigError::BadDiskSlots(value.to_string())),
    }
}

fn parse_console(value: &str) -> Result<ConsoleConfig, ConfigError> {
    match value {
        "stdio" => Ok(ConsoleConfig::Stdio),
        "off" => Ok(ConsoleConfig::Off),
        _ => match value.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(ConsoleConfig::File(PathBuf::from(path))),
            _ => Err(ConfigError::BadConsole(value.to_string())),
        },
    }
}

/// Whether the VMM runs `vcpus` vCPUs (flags and configuration files alike).
pub fn valid_vcpus(vcpus: u8) -> bool {
    (1..=MAX_VCPUS).contains(&vcpus)
}

/// Whether the VMM gives a guest `memory_mib` MiB.
pub fn valid_memory_mib(memory_mib: u64) -> bool {
    (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&memory_mib)
}

fn parse_vcpus(value: &str) -> Result<u8, ConfigError> {
    match value.parse::<u8>() {
        Ok(n) if valid_vcpus(n) => Ok(n),
        _ => Err(ConfigError::BadVcpus(value.to_string())),
    }
}

fn parse_memory(value: &str) -> Result<u64, ConfigError> {
    match value.parse::<u64>() {
        Ok(n) if valid_memory_mib(n) => Ok(n),
        _ => Err(ConfigError::BadMemory(value.to_string())),
    }
}

/// Reads and checks the configuration file `--config` names.
fn read_config_file(path: &Path) -> Result<VmConfig, ConfigError> {
    let text =
        std::fs::read(path).map_err(|e| ConfigError::ReadConfig(path.into(), e.to_string()))?;
    let wire = vpod_proto::vmm::VmConfig::from_json(&text)
        .map_err(|e| ConfigError::ParseConfig(path.into(), e.to_string()))?;
    VmConfig::try_from(wire).map_err(|e| ConfigError::InvalidConfig(path.into(), e))
}

/// Parses the arguments after the program name.
pub fn parse_args<I>(args: I) -> Result<CliAction, ConfigError>
where
    I: IntoIterator<Item = OsString>,
{
    let mut config = VmConfig::default();
    let mut config_file: Option<PathBuf> = None;
    // The first flag or word that sets something, to refuse beside --config.
    let mut first_setting: Option<String> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|raw| ConfigError::NotUtf8(raw.to_string_lossy().into_owned()))?;
        if arg == "--" {
            first_setting.get_or_insert_with(|| arg.clone());
            for word in args.by_ref() {
                let word = word
                    .into_string()
                    .map_err(|raw| ConfigError::NotUtf8(raw.to_string_lossy().into_owned()))?;
                if word.contains('"') {
                    return Err(ConfigError::QuoteInInitArg(word));
                }
                config.init_args.push(word);
            }
            break;
        }
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(CliAction::Help),
            "-V" | "--version" => return Ok(CliAction::Version),
            "--timings" => {
                first_setting.get_or_insert_with(|| flag.clone());
                config.timings = true;
                continue;
            }
            "--balloon" => {
                first_setting.get_or_insert_with(|| flag.clone());
                config.balloon = Some(parse_balloon(inline_value.as_deref())?);
                continue;
            }
            "--no-seccomp" => {
                first_setting.get_or_insert_with(|| flag.clone());
                config.seccomp = false;
                continue;
            }
            "--ksm" => {
                first_setting.get_or_insert_with(|| flag.clone());
                config.ksm = true;
                continue;
            }
            "--private-boot-files" => {
                first_setting.get_or_insert_with(|| flag.clone());
                config.private_boot_files = true;
                continue;
            }
            "--config" => {}
            "--kernel" | "--initrd" | "--cmdline" | "--vcpus" | "--memory" | "--disk"
            | "--console" | "--vsock" | "--net" | "--fs" | "--disk-slots" | "--api" => {
                first_setting.get_or_insert_with(|| flag.clone());
            }
            _ if flag.starts_with('-') => return Err(ConfigError::UnknownFlag(flag)),
            _ => return Err(ConfigError::UnexpectedArgument(arg)),
        }
        let value = match inline_value {
            Some(value) => value,
            None => args
                .next()
                .ok_or_else(|| ConfigError::MissingValue(flag.clone()))?
                .into_string()
                .map_err(|raw| ConfigError::NotUtf8(raw.to_string_lossy().into_owned()))?,
        };
        match flag.as_str() {
            "--kernel" => config.kernel = PathBuf::from(value),
            "--initrd" => config.initrd = InitrdConfig::Required(PathBuf::from(value)),
            "--cmdline" => config.cmdline = value,
            "--vcpus" => config.vcpus = parse_vcpus(&value)?,
            "--memory" => config.memory_mib = parse_memory(&value)?,
            "--disk" => config.disks.push(parse_disk(&value)?),
            "--console" => config.console = parse_console(&value)?,
            "--vsock" => config.vsock = Some(parse_vsock(&value)?),
            "--net" => config.net.push(parse_net(&value)?),
            "--fs" if config.fs.len() >= MAX_FS_SHARES => return Err(ConfigError::TooManyFs),
            "--fs" => config.fs.push(parse_fs(&value)?),
            "--disk-slots" => config.disk_slots = parse_disk_slots(&value)?,
            "--api" if !value.is_empty() => config.api_socket = Some(PathBuf::from(value)),
            "--api" => return Err(ConfigError::MissingValue(flag)),
            "--config" if !value.is_empty() => config_file = Some(PathBuf::from(value)),
            "--config" => return Err(ConfigError::MissingValue(flag)),
            _ => return Err(ConfigError::UnknownFlag(flag)),
        }
    }
    if let Some(path) = config_file {
        if let Some(setting) = first_setting {
            return Err(ConfigError::ConfigWithFlags(setting));
        }
        config = read_config_file(&path)?;
    }
    if config.ksm && !config.fs.is_empty() {
        return Err(ConfigError::KsmWithSharedMemory);
    }
    Ok(CliAction::Run(Box::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<CliAction, ConfigError> {
        parse_args(words.iter().map(OsString::from))
    }

    fn config(words: &[&str]) -> VmConfig {
        match parse(words) {
            Ok(CliAction::Run(config)) => *config,
            other => panic!("expected a VM config, got {other:?}"),
        }
    }

    #[test]
    fn no_arguments_give_the_defaults() {
        let c = config(&[]);
        assert_eq!(c, VmConfig::default());
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.kernel, PathBuf::from("build/vmlinux"));
    }

    #[test]
    fn all_flags_are_understood() {
        let c = config(&[
            "--kernel",
            "k",
            "--initrd=i",
            "--cmdline",
            "console=ttyS0",
            "--vcpus",
            "4",
            "--memory",
            "2048",
            "--disk",
            "a.img,ro,serial=layer0",
            "--disk",
            "b.img",
            "--console",
            "file:/tmp/log",
            "--timings",
            "--",
            "sh",
            "-c",
            "echo hi",
        ]);
        assert_eq!(c.kernel, PathBuf::from("k"));
        assert_eq!(c.initrd, InitrdConfig::Required(PathBuf::from("i")));
        assert_eq!(c.cmdline, "console=ttyS0");
        assert_eq!((c.vcpus, c.memory_mib, c.timings), (4, 2048, true));
        assert_eq!(c.disks.len(), 2);
        assert!(c.disks[0].read_only);
        assert_eq!(c.disks[0].serial, b"layer0");
        assert!(!c.disks[1].read_only);
        assert_eq!(c.console, ConsoleConfig::File(PathBuf::from("/tmp/log")));
        assert_eq!(c.init_args, vec!["sh", "-c", "echo hi"]);
    }

    #[test]
    fn words_after_the_separator_are_not_flags() {
        let c = config(&["--", "--vcpus", "0"]);
        assert_eq!(c.init_args, vec!["--vcpus", "0"]);
        assert_eq!(c.vcpus, 1);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(matches!(
            parse(&["--vcpus", "0"]),
            Err(ConfigError::BadVcpus(_))
        ));
        assert!(matches!(
            parse(&["--vcpus", "33"]),
            Err(ConfigError::BadVcpus(_))
        ));
        assert!(matches!(
            parse(&["--memory", "1"]),
            Err(ConfigError::BadMemory(_))
        ));
        assert!(matches!(
            parse(&["--memory", "100000000"]),
            Err(ConfigError::BadMemory(_))
        ));
        assert!(matches!(
            parse(&["--memory", "-5"]),
            Err(ConfigError::BadMemory(_))
        ));
        assert!(matches!(
            parse(&["--console", "tty"]),
            Err(ConfigError::BadConsole(_))
        ));
        assert!(matches!(
            parse(&["--disk", ",ro"]),
            Err(ConfigError::BadDisk(..))
        ));
        assert!(matches!(
            parse(&["--disk", "a,serial=123456789012345678901"]),
            Err(ConfigError::BadDisk(..))
        ));
        assert!(matches!(
            parse(&["--disk", "a,rx"]),
            Err(ConfigError::BadDisk(..))
        ));
        assert!(matches!(
            parse(&["--frobnicate"]),
            Err(ConfigError::UnknownFlag(_))
        ));
        assert!(matches!(
            parse(&["--kernel"]),
            Err(ConfigError::MissingValue(_))
        ));
        assert!(matches!(
            parse(&["stray"]),
            Err(ConfigError::UnexpectedArgument(_))
        ));
        assert!(matches!(
            parse(&["--", "say \"hi\""]),
            Err(ConfigError::QuoteInInitArg(_))
        ));
    }

    #[test]
    fn balloon_flag_parses() {
        assert_eq!(config(&[]).balloon, None);
        let on = config(&["--balloon"]).balloon.expect("balloon");
        assert!(on.free_page_reporting && on.deflate_on_oom);
        let off = config(&["--balloon=no-reporting"])
            .balloon
            .expect("balloon");
        assert!(!off.free_page_reporting);
        assert!(matches!(
            parse(&["--balloon=maybe"]),
            Err(ConfigError::BadBalloon(v)) if v == "maybe"
        ));
        assert!(matches!(
            parse(&["--balloon", "--config", "x.json"]),
            Err(ConfigError::ConfigWithFlags(f)) if f == "--balloon"
        ));
    }

    #[test]
    fn ksm_flag_parses_and_is_refused_with_shared_memory() {
        assert!(config(&["--ksm"]).ksm);
        assert!(!config(&[]).ksm);
        assert_eq!(
            parse(&["--ksm", "--fs", "socket=/s,tag=t"]),
            Err(ConfigError::KsmWithSharedMemory)
        );
    }

    #[test]
    fn boot_files_are_shared_unless_asked_private() {
        assert!(!config(&[]).private_boot_files);
        assert!(config(&["--private-boot-files"]).private_boot_files);
        let wire = vpod_proto::vmm::VmConfig {
            private_boot_files: true,
            ..vpod_proto::vmm::VmConfig::new("/k")
        };
        assert!(wire.to_json().contains("\"private_boot_files\": true"));
        let back = vpod_proto::vmm::VmConfig::from_json(wire.to_json().as_bytes()).expect("json");
        assert!(back.private_boot_files);
    }

    #[test]
    fn vsock_slots_and_api_flags_parse() {
        let c = config(&[
            "--vsock",
            "/run/vm.sock,cid=7",
            "--disk-slots",
            "4",
            "--api=/run/api.sock",
        ]);
        let vsock = c.vsock.expect("vsock");
        assert_eq!(vsock.uds_path, PathBuf::from("/run/vm.sock"));
        assert_eq!(vsock.guest_cid, 7);
        assert_eq!(c.disk_slots, 4);
        assert_eq!(c.api_socket, Some(PathBuf::from("/run/api.sock")));
        assert_eq!(
            config(&["--vsock", "v.sock"])
                .vsock
                .expect("vsock")
                .guest_cid,
            3
        );
        for bad in ["", ",cid=3", "v,cid=2", "v,cid=x", "v,port=1"] {
            assert!(
                matches!(parse(&["--vsock", bad]), Err(ConfigError::BadVsock(..))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            parse(&["--disk-slots", "17"]),
            Err(ConfigError::BadDiskSlots(_))
        ));
    }

    #[test]
    fn a_config_file_holds_the_whole_configuration() {
        let path = std::env::temp_dir().join(format!("vpod-config-{}.json", std::process::id()));
        let wire = vpod_proto::vmm::VmConfig {
            vcpus: 2,
            disks: vec![vpod_proto::vmm::DiskConfig::path("/a.img").serial("layer0")],
            api_socket: Some("/run/api.sock".into()),
            ..vpod_proto::vmm::VmConfig::new("/k")
        };
        std::fs::write(&path, wire.to_json()).expect("config file");
        let file = path.to_str().expect("UTF-8");
        let c = config(&["--config", file]);
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.initrd, InitrdConfig::None);
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.disks[0].source, DiskSource::Path("/a.img".into()));
        assert_eq!(c.disks[0].serial, b"layer0");
        assert_eq!(c.api_socket, Some(PathBuf::from("/run/api.sock")));
        assert!(matches!(
            parse(&["--vcpus", "2", "--config", file]),
            Err(ConfigError::ConfigWithFlags(flag)) if flag == "--vcpus"
        ));
        assert!(matches!(
            parse(&["--config", file, "--", "sh"]),
            Err(ConfigError::ConfigWithFlags(_))
        ));

        std::fs::write(&path, r#"{"kernel": "/k", "vcpus": 0}"#).expect("config file");
        assert_eq!(
            parse(&["--config", file]),
            Err(ConfigError::InvalidConfig(
                path.clone(),
                ConvertError::Vcpus(0)
            ))
        );
        std::fs::write(&path, r#"{"kernel": "/k", "vcpu": 2}"#).expect("config file");
        let error = parse(&["--config", file]).expect_err("a typo");
        assert!(
            error.to_string().contains("unknown field `vcpu`"),
            "{error}"
        );
        let _ = std::fs::remove_file(&path);
        assert!(matches!(
            parse(&["--config", file]),
            Err(ConfigError::ReadConfig(..))
        ));
        assert!(matches!(
            parse(&["--config", ""]),
            Err(ConfigError::MissingValue(_))
        ));
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(parse(&["--help"]), Ok(CliAction::Help));
        assert_eq!(parse(&["-V"]), Ok(CliAction::Version));
    }

    #[test]
    fn fs_flags_parse_with_and_without_a_queue_size() {
        let c = config(&[
            "--fs",
            "socket=/run/fs.sock,tag=vpod",
            "--fs=tag=other,socket=/b.sock,queue_size=1024",
        ]);
        assert_eq!(
            c.fs,
            vec![
                FsConfig {
                    socket: "/run/fs.sock".into(),
                    tag: "vpod".into(),
                    queue_size: FS_DEFAULT_QUEUE_SIZE,
                },
                FsConfig {
                    socket: "/b.sock".into(),
                    tag: "other".into(),
                    queue_size: 1024,
                },
            ]
        );
    }

    #[test]
    fn bad_fs_flags_are_refused_with_the_reason() {
        let long_tag = format!("socket=/s,tag={}", "t".repeat(37));
        for (spec, why) in [
            ("tag=t", "socket=PATH is missing"),
            ("socket=/s", "tag=TAG is missing"),
            ("socket=/s,tag=", "the tag is empty"),
            (long_tag.as_str(), "the tag is longer than 36 bytes"),
            ("socket=/s,tag=a\tb", "the tag contains a control character"),
            ("socket=,tag=t", "the socket path is empty"),
            (
                "socket=/s,tag=t,queue_size=100",
                "the queue size must be a power of two from 2 to 1024",
            ),
            (
                "socket=/s,tag=t,queue_size=2048",
                "the queue size must be a power of two from 2 to 1024",
            ),
            ("socket=/s,tag=t,dax", "unknown option \"dax\""),
        ] {
            assert_eq!(
                parse(&["--fs", spec]),
                Err(ConfigError::BadFs(spec.into(), why.into())),
                "{spec}"
            );
        }
        let exactly_36 = format!("socket=/s,tag={}", "t".repeat(36));
        assert_eq!(config(&["--fs", &exactly_36]).fs[0].tag.len(), 36);
        let five: Vec<&str> = ["--fs", "socket=/s,tag=t"].repeat(5);
        assert_eq!(parse(&five), Err(ConfigError::TooManyFs));
    }

    #[test]
    fn net_flags_parse_with_and_without_a_mac() {
        let c = config(&["--net", "tap=tap0,mac=02:AB:cd:00:00:01", "--net=tap=vpod1"]);
        assert_eq!(c.net.len(), 2);
        assert_eq!(c.net[0].tap, TapSource::Name("tap0".into()));
        assert_eq!(c.net[0].mac, [0x02, 0xab, 0xcd, 0, 0, 1]);
        assert_eq!(c.net[1].tap, TapSource::Name("vpod1".into()));
        let generated = c.net[1].mac;
        assert_eq!(generated[0] & 0b11, 0b10, "locally administered unicast");
    }

    #[test]
    fn generated_macs_differ() {
        assert_ne!(generated_mac(), generated_mac());
    }

    #[test]
    fn bad_net_flags_are_refused_with_the_reason() {
        for (spec, why) in [
            ("mac=02:00:00:00:00:01", "tap=NAME is missing"),
            ("tap=", "the tap name must be 1 to 15 bytes"),
            ("tap=0123456789abcdef", "the tap name must be 1 to 15 bytes"),
            (
                "tap=t,mac=02:00:00:00:00",
                "the mac must be six hex bytes xx:xx:xx:xx:xx:xx",
            ),
            (
                "tap=t,mac=02:00:00:00:00:0g",
                "the mac must be six hex bytes xx:xx:xx:xx:xx:xx",
            ),
            (
                "tap=t,mac=02:00:00:00:00:01:02",
                "the mac must be six hex bytes xx:xx:xx:xx:xx:xx",
            ),
            (
                "tap=t,mac=2:00:00:00:00:01",
                "the mac must be six hex bytes xx:xx:xx:xx:xx:xx",
            ),
            (
                "tap=t,mac=01:00:5e:00:00:01",
                "the mac is a multicast address",
            ),
            ("tap=t,queues=2", "unknown option \"queues=2\""),
        ] {
            assert_eq!(
                parse(&["--net", spec]),
                Err(ConfigError::BadNet(spec.into(), why.into())),
                "{spec}"
            );
        }
    }
}

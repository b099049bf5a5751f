//! What a container is, in the agent's own terms (the protocol's messages are converted in
//! [`super::convert`]), and the parsing of names and options that needs no system calls.

use super::block_device::BlockDeviceSpec;
use super::cgroup::CgroupLimits;
use super::pty::TerminalSize;
use super::rootfs::RootfsSource;

/// The capabilities a container keeps when the request names none (containerd's default).
pub const DEFAULT_CAPABILITIES: &[caps::Capability] = &[
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_MKNOD,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETFCAP,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_SYS_CHROOT,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_AUDIT_WRITE,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub id: String,
    pub process: ProcessSpec,
    pub hostname: Option<String>,
    pub mounts: Vec<MountSpec>,
    pub readonly_rootfs: bool,
    pub limits: CgroupLimits,
    pub rootfs: RootfsSource,
    pub stdin: bool,
    /// Close stdin when the first attacher with stdin closes it or leaves.
    pub stdin_once: bool,
    /// A terminal for the main process, with its initial size.
    pub terminal: Option<TerminalSize>,
    /// A user name to look up in the container's /etc/passwd (replaces uid and gid).
    pub user_name: Option<String>,
    /// A group name or decimal gid to look up in its /etc/group (replaces the gid).
    pub group_name: Option<String>,
    /// Written into the root before the process starts.
    pub files: Vec<FileSpec>,
    /// Absolute paths hidden and made read-only inside the container.
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// (key under /proc/sys with slashes, value), written from the new namespaces.
    pub sysctls: Vec<(String, String)>,
    /// Start in the pod's shared PID namespace rather than one of its own.
    pub share_pod_pid: bool,
    /// Disks bound as block device nodes into the container.
    pub devices: Vec<BlockDeviceSpec>,
}

/// A file the agent writes into the container's root, replacing the image's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Absolute inside the container, without "..".
    pub path: String,
    pub content: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// What runs, as whom. Exec processes reuse the container's identity with their own args.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub rlimits: Vec<RlimitSpec>,
    /// Bit n set: keep capability n.
    pub capabilities: u64,
    /// PR_SET_NO_NEW_PRIVS before exec.
    pub no_new_privs: bool,
    /// Seccomp programs installed in order right before exec, each whole `struct
    /// sock_filter` instructions (at most [`MAX_SECCOMP_INSTRUCTIONS`]).
    pub seccomp: Vec<Vec<u8>>,
}

/// The kernel's limit on one classic-BPF program (BPF_MAXINSNS).
pub const MAX_SECCOMP_INSTRUCTIONS: usize = 4096;
/// The most programs a container's processes get.
pub const MAX_SECCOMP_PROGRAMS: usize = 16;

impl ProcessSpec {
    /// An exec in the container: its identity with `args`, and `env` and `cwd` where given
    /// (empty: the container's).
    pub fn for_exec(&self, args: Vec<String>, env: Vec<String>, cwd: String) -> ProcessSpec {
        let mut process = self.clone();
        process.args = args;
        if !env.is_empty() {
            process.env = env;
        }
        if !cwd.is_empty() {
            process.cwd = cwd;
        }
        process
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlimitSpec {
    pub resource: libc::__rlimit_resource_t,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: String,
    pub destination: String,
    pub fstype: String,
    pub flags: libc::c_ulong,
    /// Filesystem-specific options, comma-joined.
    pub data: String,
}

impl MountSpec {
    pub fn is_bind(&self) -> bool {
        self.flags & libc::MS_BIND != 0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{0} is not a known capability")]
    UnknownCapability(String),
    #[error("{0} is not a known resource limit")]
    UnknownRlimit(String),
}

/// The capability mask for `keep` ("CAP_X" or "X", any case; the default set if empty),
/// changed as containerd applies a CRI security context: "ALL" in `add` starts from every
/// capability, "ALL" in `drop` from none; then the named ones in `add` are added and the
/// named ones in `drop` removed.
pub fn capability_mask(keep: &[String], add: &[String], drop: &[String]) -> Result<u64, SpecError> {
    let mut mask = if keep.is_empty() {
        DEFAULT_CAPABILITIES
            .iter()
            .fold(0, |mask, c| mask | c.bitmask())
    } else {
        names_mask(keep)?
    };
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    if add.iter().any(is_all) {
        mask = caps::all().iter().fold(0, |mask, c| mask | c.bitmask());
    }
    if drop.iter().any(is_all) {
        mask = 0;
    }
    let named = |names: &[String]| {
        names
            .iter()
            .filter(|n| !is_all(n))
            .cloned()
            .collect::<Vec<_>>()
    };
    mask |= names_mask(&named(add))?;
    mask &= !names_mask(&named(drop))?;
    Ok(mask)
}

/// The mask of capability names ("CAP_X" or "X", any case).
fn names_mask(names: &[String]) -> Result<u64, SpecError> {
    let mut mask = 0;
    for name in names {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        let cap: caps::Capability = full
            .parse()
            .map_err(|_| SpecError::UnknownCapability(name.clone()))?;
        mask |= cap.bitmask();
    }
    Ok(mask)
}

/// The resource for "RLIMIT_NOFILE" or "nofile".
pub fn rlimit_resource(name: &str) -> Result<libc::__rlimit_resource_t, SpecError> {
    let upper = name.to_ascii_uppercase();
    let short = upper.strip_prefix("RLIMIT_").unwrap_or(&upper);
    let resource = match short {
        "AS" => libc::RLIMIT_AS,
        "CORE" => libc::RLIMIT_CORE,
        "CPU" => libc::RLIMIT_CPU,
        "DATA" => libc::RLIMIT_DATA,
        "FSIZE" => libc::RLIMIT_FSIZE,
        "LOCKS" => libc::RLIMIT_LOCKS,
        "MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "NICE" => libc::RLIMIT_NICE,
        "NOFILE" => libc::RLIMIT_NOFILE,
        "NPROC" => libc::RLIMIT_NPROC,
        "RSS" => libc::RLIMIT_RSS,
        "RTPRIO" => libc::RLIMIT_RTPRIO,
        "RTTIME" => libc::RLIMIT_RTTIME,
        "SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "STACK" => libc::RLIMIT_STACK,
        _ => return Err(SpecError::UnknownRlimit(name.to_string())),
    };
    Ok(resource)
}

/// Splits mount(8)-style options into mount flags and filesystem data. The type "bind"
/// becomes a bind mount; propagation options are ignored (container mounts are private).
pub fn parse_mount_options(fstype: &str, options: &[String]) -> (libc::c_ulong, String) {
    let mut flags = if fstype == "bind" { libc::MS_BIND } else { 0 };
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags |= libc::MS_RDONLY,
            "rw" => flags &= !libc::MS_RDONLY,
            "nosuid" => flags |= libc::MS_NOSUID,
            "suid" => flags &= !libc::MS_NOSUID,
            "nodev" => flags |= libc::MS_NODEV,
            "dev" => flags &= !libc::MS_NODEV,
            "noexec" => flags |= libc::MS_NOEXEC,
            "exec" => flags &= !libc::MS_NOEXEC,
            "noatime" => flags |= libc::MS_NOATIME,
            "nodiratime" => flags |= libc::MS_NODIRATIME,
            "relatime" => flags |= libc::MS_RELATIME,
            "strictatime" => flags |= libc::MS_STRICTATIME,
            "sync" => flags |= libc::MS_SYNCHRONOUS,
            "bind" => flags |= libc::MS_BIND,
            "rbind" => flags |= libc::MS_BIND | libc::MS_REC,
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" | "defaults" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

/// A sysctl key as a path below /proc/sys: dots or slashes separate its parts, each of
/// letters, digits, `_` and `-` (kernel names; a dot inside a part, as in net.ipv4.conf's
/// interface names, is written with slashes).
pub fn sysctl_path(key: &str) -> Result<String, String> {
    let parts: Vec<&str> = key.split(['.', '/']).collect();
    let ok = !key.is_empty()
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if ok {
        Ok(parts.join("/"))
    } else {
        Err(format!("{key:?} is not a sysctl name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_parse_with_or_without_prefix() {
        let mask = capability_mask(&["CAP_CHOWN".into(), "net_admin".into()], &[], &[]).unwrap();
        assert_eq!(
            mask,
            caps::Capability::CAP_CHOWN.bitmask() | caps::Capability::CAP_NET_ADMIN.bitmask()
        );
        assert_eq!(
            capability_mask(&["CAP_FLY".into()], &[], &[]),
            Err(SpecError::UnknownCapability("CAP_FLY".into()))
        );
    }

    #[test]
    fn no_capabilities_means_the_default_set() {
        let mask = capability_mask(&[], &[], &[]).unwrap();
        assert_ne!(mask & caps::Capability::CAP_KILL.bitmask(), 0);
        assert_eq!(mask & caps::Capability::CAP_SYS_ADMIN.bitmask(), 0);
        assert_eq!(mask.count_ones() as usize, DEFAULT_CAPABILITIES.len());
    }

    #[test]
    fn add_and_drop_change_the_default_set_as_containerd_does() {
        let bit = |c: caps::Capability| c.bitmask();
        let default = capability_mask(&[], &[], &[]).unwrap();
        let s = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            capability_mask(&[], &s(&["NET_BIND_SERVICE"]), &s(&["ALL"])).unwrap(),
            bit(caps::Capability::CAP_NET_BIND_SERVICE)
        );
        assert_eq!(capability_mask(&[], &[], &s(&["all"])).unwrap(), 0);
        assert_eq!(
            capability_mask(&[], &s(&["sys_admin"]), &s(&["CAP_KILL"])).unwrap(),
            (default | bit(caps::Capability::CAP_SYS_ADMIN)) & !bit(caps::Capability::CAP_KILL)
        );
        let all = capability_mask(&[], &s(&["ALL"]), &s(&["NET_RAW"])).unwrap();
        assert_ne!(all & bit(caps::Capability::CAP_SYS_ADMIN), 0);
        assert_eq!(all & bit(caps::Capability::CAP_NET_RAW), 0);
        assert_eq!(
            capability_mask(&[], &s(&["CAP_FLY"]), &[]),
            Err(SpecError::UnknownCapability("CAP_FLY".into()))
        );
    }

    #[test]
    fn rlimit_names_parse_both_ways() {
        assert_eq!(rlimit_resource("RLIMIT_NOFILE"), Ok(libc::RLIMIT_NOFILE));
        assert_eq!(rlimit_resource("nproc"), Ok(libc::RLIMIT_NPROC));
        assert!(rlimit_resource("RLIMIT_JOY").is_err());
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let (flags, data) = parse_mount_options(
            "tmpfs",
            &[
                "nosuid".into(),
                "size=64m".into(),
                "mode=755".into(),
                "ro".into(),
            ],
        );
        assert_eq!(flags, libc::MS_NOSUID | libc::MS_RDONLY);
        assert_eq!(data, "size=64m,mode=755");
        let (flags, data) = parse_mount_options("bind", &["rbind".into(), "rprivate".into()]);
        assert_eq!(flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(data, "");
    }
}

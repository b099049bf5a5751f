//! A pod's shared directory: `<pod>/share/`, served to the guest by a virtiofsd of the
//! pod's own (sandboxed in its namespaces, `announce_submounts` so each volume is its own
//! mount in the guest) as the virtio-fs tag [`SHARE_TAG`], which the agent mounts at
//! [`vpod_proto::SHARE_GUEST_DIR`].
//!
//! The directory is bound onto itself and made a shared mount before virtiofsd starts, so
//! the volumes bound under it later (`c/<container id>/<n>`) propagate into virtiofsd's
//! mount namespace. Each volume is a detached clone of its host path (recursive for
//! `rbind`), made read-only (recursively) and given its propagation before it is attached:
//! a read-only volume is read-only on the host's side, whatever the guest asks virtiofsd.
//! Every volume is also `nosuid,nodev` on the host's side.
//!
//! virtiofsd runs with the least privilege QEMU's offers (its own `-o sandbox=namespace`:
//! new mount, PID and network namespaces, pivot_root into the share; its own seccomp
//! allow-list, always on), without the capabilities a guest could use to leave something
//! dangerous on the host (`-o modcaps=-mknod:-setfcap:-fsetid`: no device nodes, no file
//! capabilities, set-user-ID bits cleared by the kernel when it writes a file), and under a
//! seccomp filter of ours installed before it starts: no mode with the set-user-ID or
//! set-group-ID bit in chmod, open/creat, mkdir or mknod (EPERM), so a guest cannot make a
//! set-user-ID file on the host. Extended attributes stay off (its default `no_xattr`), so
//! a guest cannot set `security.capability` either.
//!
//! Nothing under the directory is removed while a mount is left there: a host path bound
//! in a pod must never be emptied by the pod's cleanup.

use crate::cgroup::CgroupProcs;
use crate::owned_process::OwnedProcess;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rustix::mount::{
    mount_bind, mount_change, move_mount, open_tree, unmount, MountPropagationFlags,
    MoveMountFlags, OpenTreeFlags, UnmountFlags,
};
use rustix::process::{Pid, Signal};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use syscalls::{syscall, Sysno};

/// The virtio-fs tag of every pod's share.
pub const SHARE_TAG: &str = "vpod-share";
/// Debian's virtiofsd (the qemu package's).
pub const DEFAULT_VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// How a pod gets its shared directory.
#[derive(Debug, Clone)]
pub struct ShareConfig {
    /// The virtiofsd binary (QEMU's, with `-o` options).
    pub virtiofsd: PathBuf,
}

impl Default for ShareConfig {
    fn default() -> ShareConfig {
        ShareConfig {
            virtiofsd: PathBuf::from(DEFAULT_VIRTIOFSD),
        }
    }
}

/// Why the share or a volume in it could not be set up or taken down.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("could not prepare the share directory {0}")]
    Dir(PathBuf, #[source] io::Error),
    #[error("could not make {0} a shared mount")]
    SelfBind(PathBuf, #[source] io::Error),
    #[error("could not start virtiofsd {0}")]
    Spawn(PathBuf, #[source] io::Error),
    #[error("virtiofsd exited ({status}) before making its socket\n{log}")]
    Exited {
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("virtiofsd made no socket within {0:?}\n{1}")]
    NoSocket(Duration, String),
    #[error("the volume source {0} cannot be used")]
    Source(PathBuf, #[source] io::Error),
    #[error("could not bind the volume source {0} at {1}")]
    Bind(PathBuf, PathBuf, #[source] io::Error),
    #[error("could not unmount {0}")]
    Unmount(PathBuf, #[source] io::Error),
    #[error("mounts are left under {0}: {1}")]
    MountsLeft(PathBuf, String),
    #[error("virtiofsd's seccomp filter does not compile: {0}")]
    Filter(String),
    #[error("virtiofsd cannot join the pod's cgroup")]
    Cgroup(#[source] crate::cgroup::CgroupError),
}

/// How a volume's host path reaches the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// Nothing mounted later on either side is seen by the other.
    #[default]
    Private,
    /// Mounts made later under the host path appear in the volume (host to container).
    Slave,
}

/// One volume to bind under the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBind {
    pub source: PathBuf,
    pub readonly: bool,
    /// The mounts under the source come along (`rbind`).
    pub recursive: bool,
    pub propagation: Propagation,
}

/// The running share of a pod.
#[derive(Debug)]
pub(crate) struct Share {
    dir: PathBuf,
    socket: PathBuf,
    virtiofsd: Virtiofsd,
}

/// Our virtiofsd: a child, or adopted by PID from the pod's state file.
#[derive(Debug)]
struct Virtiofsd {
    process: OwnedProcess,
    /// Its socket, which its command line names.
    socket: PathBuf,
}

/// A path is `<pod>/share`, its socket `<pod>/fs.sock`.
pub(crate) fn share_dir(pod: &Path) -> PathBuf {
    pod.join("share")
}

pub(crate) fn socket_path(pod: &Path) -> PathBuf {
    pod.join("fs.sock")
}

impl Share {
    /// Makes `<pod>/share` (0700), a shared mount of its own, and starts virtiofsd on it
    /// (in the pod's `cgroup`, when it has one). On failure nothing is left mounted or
    /// running.
    pub async fn start(
        pod: &Path,
        config: &ShareConfig,
        die_with_parent: bool,
        cgroup: Option<&Path>,
    ) -> Result<Share, ShareError> {
        let dir = share_dir(pod);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| ShareError::Dir(dir.clone(), e))?;
        let shared = mount_bind(&dir, &dir)
            .and_then(|()| mount_change(&dir, MountPropagationFlags::SHARED))
            .map_err(|e| ShareError::SelfBind(dir.clone(), e.into()));
        if let Err(e) = shared {
            let _ = unmount_under(&dir);
            return Err(e);
        }
        let socket = socket_path(pod);
        let log = pod.join("virtiofsd.log");
        let spawned = Virtiofsd::spawn(
            &config.virtiofsd,
            &dir,
            &socket,
            &log,
            die_with_parent,
            cgroup,
        );
        match spawned.await {
            Ok(virtiofsd) => Ok(Share {
                dir,
                socket,
                virtiofsd,
            }),
            Err(e) => {
                let _ = unmount_under(&dir);
                Err(e)
            }
        }
    }

    /// The share of a pod another process started, its virtiofsd known by PID.
    pub fn adopt(pod: &Path, virtiofsd_pid: u32) -> Share {
        Share {
            dir: share_dir(pod),
            socket: socket_path(pod),
            virtiofsd: Virtiofsd {
                process: OwnedProcess::adopted(virtiofsd_pid),
                socket: socket_path(pod),
            },
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn virtiofsd_pid(&self) -> u32 {
        self.virtiofsd.process.pid()
    }

    /// Binds `volume` at `c/<container>/<index>` under the share; that path, relative to
    /// the share.
    pub fn bind(
        &self,
        container: &str,
        index: usize,
        volume: &VolumeBind,
    ) -> Result<String, ShareError> {
        let relative = format!("c/{container}/{index}");
        let target = self.dir.join(&relative);
        let source_error = |e: io::Error| ShareError::Source(volume.source.clone(), e);
        let meta = std::fs::metadata(&volume.source).map_err(source_error)?;
        let parent = self.dir.join("c").join(container);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&parent)
            .map_err(|e| ShareError::Dir(parent.clone(), e))?;
        let made = if meta.is_dir() {
            std::fs::DirBuilder::new().mode(0o700).create(&target)
        } else {
            File::options()
                .write(true)
                .create_new(true)
                .open(&target)
                .map(drop)
        };
        made.map_err(|e| ShareError::Dir(target.clone(), e))?;
        attach_clone(volume, &target)
            .map_err(|e| ShareError::Bind(volume.source.clone(), target.clone(), e))?;
        Ok(relative)
    }

    /// Unmounts a container's volumes and removes its directory under the share.
    pub fn unbind_container(&self, container: &str) -> Result<(), ShareError> {
        let dir = self.dir.join("c").join(container);
        if !dir.exists() {
            return Ok(());
        }
        unmount_under(&dir)?;
        std::fs::remove_dir_all(&dir).map_err(|e| ShareError::Dir(dir, e))
    }

    /// Stops virtiofsd (by its PID) and unmounts everything under the share and the share
    /// itself; the directory stays for the pod's removal.
    pub fn stop(&self) -> Result<(), ShareError> {
        self.virtiofsd.kill_and_reap();
        // Its sandbox forks: the child in the new namespaces goes with it (a parent-death
        // signal), or here.
        kill_virtiofsd_of(&self.socket);
        unmount_under(&self.dir)
    }
}

/// Clones `volume.source` as a detached mount, sets its read-only flag and propagation
/// there (so it is never attached writable), then attaches it at `target`.
fn attach_clone(volume: &VolumeBind, target: &Path) -> io::Result<()> {
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if volume.recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = open_tree(rustix::fs::CWD, &volume.source, flags)?;
    let propagation = match volume.propagation {
        Propagation::Private => MountPropagationFlags::PRIVATE,
        Propagation::Slave => MountPropagationFlags::DOWNSTREAM,
    };
    set_attributes(
        tree.as_fd(),
        volume.readonly,
        volume.recursive,
        propagation.bits().into(),
    )?;
    move_mount(
        tree.as_fd(),
        c"",
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

/// struct mount_attr of linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_EMPTY_PATH: usize = 0x1000;
const AT_RECURSIVE: usize = 0x8000;

/// mount_setattr(2) on the detached mount `tree` (rustix has no wrapper): always
/// `nosuid,nodev`, read-only if asked.
fn set_attributes(
    tree: std::os::fd::BorrowedFd<'_>,
    readonly: bool,
    recursive: bool,
    propagation: u64,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NOSUID
            | MOUNT_ATTR_NODEV
            | if readonly { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    let flags = AT_EMPTY_PATH | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: the descriptor is open for the call, the path is an empty NUL-terminated
    // string and `attr` a live mount_attr of the size passed; the kernel only reads them.
    unsafe {
        syscall!(
            Sysno::mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>()
        )
    }
    .map(drop)
    .map_err(|e| io::Error::from_raw_os_error(e.into_raw()))
}

/// The set-user-ID and set-group-ID bits of a mode.
const SET_ID_BITS: [u64; 2] = [0o4000, 0o2000];

/// The seccomp program installed on virtiofsd before it starts (its own allow-list comes on
/// top): EPERM for every system call that sets a file's mode with a set-user-ID or
/// set-group-ID bit (the mode argument masked), ALLOW for the rest. virtiofsd passes the
/// guest's mode straight to these calls; an open without O_CREAT gets mode 0 from glibc.
fn set_id_filter() -> Result<BpfProgram, ShareError> {
    // (system call, index of its mode argument)
    let mut calls: Vec<(Sysno, u8)> = vec![
        (Sysno::fchmod, 1),
        (Sysno::fchmodat, 2),
        (Sysno::openat, 3),
        (Sysno::mkdirat, 2),
        (Sysno::mknodat, 2),
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        (Sysno::chmod, 1),
        (Sysno::open, 2),
        (Sysno::creat, 1),
        (Sysno::mkdir, 1),
        (Sysno::mknod, 1),
    ]);
    calls.push((Sysno::fchmodat2, 2));
    let error = |e: seccompiler::BackendError| ShareError::Filter(e.to_string().to_lowercase());
    let mut rules = std::collections::BTreeMap::new();
    for (call, index) in calls {
        let per_bit = SET_ID_BITS
            .iter()
            .map(|&bit| {
                let condition = SeccompCondition::new(
                    index,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(bit),
                    bit,
                )?;
                SeccompRule::new(vec![condition])
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(error)?;
        rules.insert(call.id().into(), per_bit);
    }
    let arch = seccompiler::TargetArch::try_from(std::env::consts::ARCH).map_err(error)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(rustix::io::Errno::PERM.raw_os_error() as u32),
        arch,
    )
    .map_err(error)?;
    BpfProgram::try_from(filter).map_err(error)
}

/// Mount points at or below `dir` in this namespace, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.to_string_lossy();
    let dir = dir.trim_end_matches('/');
    let inside = format!("{dir}/");
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|point| point == dir || point.starts_with(&inside))
        .map(PathBuf::from)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    points
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount at or below `dir` (deepest first) and checks none is left: only
/// then may the directory be removed.
pub fn unmount_under(dir: &Path) -> Result<(), ShareError> {
    for point in mounts_under(dir) {
        match unmount(&point, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
            // Gone already with a parent detached before it.
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(ShareError::Unmount(point, e.into())),
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        Ok(())
    } else {
        let names: Vec<String> = left.iter().map(|p| p.display().to_string()).collect();
        Err(ShareError::MountsLeft(dir.to_path_buf(), names.join(", ")))
    }
}

/// What a pod that lost its runtime left in its directory `pod`: kills the virtiofsd
/// serving its share (found by the socket its command line names) and unmounts everything
/// under the directory. Only when this succeeds may the directory be removed.
pub fn destroy_leftovers(pod: &Path) -> Result<(), ShareError> {
    kill_virtiofsd_of(&socket_path(pod));
    unmount_under(pod)
}

/// SIGKILLs every virtiofsd serving `socket` (found by their command lines) and waits up
/// to a second for them to be gone.
fn kill_virtiofsd_of(socket: &Path) {
    let ours = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| is_our_virtiofsd(pid, socket))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let pids = ours();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in pids.into_iter().filter_map(|p| Pid::from_raw(p as i32)) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `pid` is a live virtiofsd whose command line names `socket` (not a reused PID).
fn is_our_virtiofsd(pid: u32, socket: &Path) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    if !stat.contains("(virtiofsd) ") || stat.contains(") Z ") {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let wanted = format!("--socket-path={}", socket.display());
    cmdline
        .split(|&b| b == 0)
        .any(|arg| arg == wanted.as_bytes())
}

impl Virtiofsd {
    async fn spawn(
        program: &Path,
        dir: &Path,
        socket: &Path,
        log: &Path,
        die_with_parent: bool,
        cgroup: Option<&Path>,
    ) -> Result<Virtiofsd, ShareError> {
        let spawn_error = |e| ShareError::Spawn(program.to_path_buf(), e);
        let stderr = File::create(log).map_err(spawn_error)?;
        let source = CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|e| spawn_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let filter = set_id_filter()?;
        let cgroup = match cgroup {
            Some(dir) => Some(CgroupProcs::open(dir).map_err(ShareError::Cgroup)?),
            None => None,
        };
        let mut cmd = Command::new(program);
        cmd.arg(format!("--socket-path={}", socket.display()))
            .arg("-o")
            .arg(format!("source={}", source.to_string_lossy()))
            // auto: attributes and entries are cached for a second, so a change on the
            // host (a ConfigMap's atomic swap) is seen within about a second.
            .args(["-o", "cache=auto", "-o", "sandbox=namespace"])
            .args(["-o", "announce_submounts"])
            // The capabilities it keeps by default, less those a hostile guest could use to
            // leave a device node, a file capability or a set-user-ID file on the host.
            .args(["-o", "modcaps=-mknod:-setfcap:-fsetid"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe system calls run (write on
        // the cgroup's descriptor opened before the fork, prctl and seccomp, through
        // seccompiler's apply_filter, which allocates nothing); the program was compiled
        // before the fork and is only read.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(cgroup) = &cgroup {
                    cgroup.move_self()?;
                }
                if die_with_parent {
                    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                        .map_err(io::Error::from)?;
                }
                seccompiler::apply_filter(&filter).map_err(|_| io::Error::last_os_error())
            });
        }
        let child = cmd.spawn().map_err(spawn_error)?;
        let virtiofsd = Virtiofsd {
            process: OwnedProcess::spawned(child),
            socket: socket.to_path_buf(),
        };
        let limit = Duration::from_secs(10);
        let started = Instant::now();
        while !socket.exists() {
            if let Some(status) = virtiofsd.try_wait() {
                return Err(ShareError::Exited {
                    status,
                    log: crate::vmm::file_tail(log, 2048),
                });
            }
            if started.elapsed() > limit {
                virtiofsd.kill_and_reap();
                return Err(ShareError::NoSocket(
                    limit,
                    crate::vmm::file_tail(log, 2048),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(virtiofsd)
    }

    fn try_wait(&self) -> Option<std::process::ExitStatus> {
        self.process.try_wait_child()
    }

    /// SIGKILL by PID: our child while not reaped (then reaped), or an adopted PID while it
    /// still is this pod's virtiofsd.
    fn kill_and_reap(&self) {
        self.process
            .kill_and_reap(|pid| is_our_virtiofsd(pid, &self.socket));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\\"), r"/x\\");
    }

    /// Whether this process may mount and has Debian's virtiofsd; the share's own tests
    /// need both (they mount under a temporary directory and clean up after themselves).
    fn can_share() -> bool {
        let root = rustix::process::geteuid().is_root();
        let virtiofsd = Path::new(DEFAULT_VIRTIOFSD).exists();
        if !(root && virtiofsd) {
            eprintln!("skipped: needs root and {DEFAULT_VIRTIOFSD}");
        }
        root && virtiofsd
    }

    /// Unmounts whatever a failed test left under the directory before it is removed.
    struct Cleanup(PathBuf);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = destroy_leftovers(&self.0);
        }
    }

    fn virtiofsd_running(socket: &Path) -> bool {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .any(|pid| is_our_virtiofsd(pid, socket))
    }

    #[tokio::test]
    async fn volumes_are_bound_read_only_on_the_host_side_and_all_goes_at_stop() {
        if !can_share() {
            return;
        }
        let top = tempfile::tempdir().unwrap();
        let pod = top.path().join("pod");
        std::fs::create_dir(&pod).unwrap();
        let _cleanup = Cleanup(pod.clone());
        let source = top.path().join("volume");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("a"), "kept\n").unwrap();
        let file = top.path().join("termination-log");
        std::fs::write(&file, "").unwrap();

        let share = Share::start(&pod, &ShareConfig::default(), true, None)
            .await
            .unwrap();
        assert!(virtiofsd_running(share.socket()));
        let volume = |source: &Path, readonly| VolumeBind {
            source: source.to_path_buf(),
            readonly,
            recursive: true,
            propagation: Propagation::Private,
        };
        let ro = share.bind("c1", 0, &volume(&source, true)).unwrap();
        assert_eq!(ro, "c/c1/0");
        let bound = share_dir(&pod).join(&ro);
        assert_eq!(std::fs::read_to_string(bound.join("a")).unwrap(), "kept\n");
        let refused = std::fs::write(bound.join("new"), "x").unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc_erofs()));
        let log = share.bind("c1", 1, &volume(&file, false)).unwrap();
        std::fs::write(share_dir(&pod).join(&log), "bye\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "bye\n");
        assert_eq!(mounts_under(&share_dir(&pod).join("c")).len(), 2);
        // Another writable volume of the same file system: a hardlink between volumes
        // crosses mounts (EXDEV), as virtiofsd's would, and every bind is nosuid,nodev.
        let other = top.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let rw = share.bind("c1", 2, &volume(&other, false)).unwrap();
        let link = std::fs::hard_link(bound.join("a"), share_dir(&pod).join(&rw).join("a"));
        assert_eq!(
            link.unwrap_err().raw_os_error(),
            Some(rustix::io::Errno::XDEV.raw_os_error())
        );
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let binds: Vec<&str> = mountinfo.lines().filter(|l| l.contains("/c/c1/")).collect();
        assert_eq!(binds.len(), 3, "{binds:?}");
        for line in binds {
            let options = line.split(' ').nth(5).unwrap();
            assert!(
                options.contains("nosuid") && options.contains("nodev"),
                "{line}"
            );
        }

        share.unbind_container("c1").unwrap();
        assert!(mounts_under(&share_dir(&pod).join("c")).is_empty());
        assert!(!share_dir(&pod).join("c/c1").exists());

        share.bind("c2", 0, &volume(&source, false)).unwrap();
        share.stop().unwrap();
        assert!(!virtiofsd_running(share.socket()));
        assert!(mounts_under(&pod).is_empty());
        // The volumes' own files are untouched.
        assert_eq!(std::fs::read_to_string(source.join("a")).unwrap(), "kept\n");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "bye\n");
    }

    #[tokio::test]
    async fn virtiofsd_and_its_sandbox_child_run_in_the_pod_cgroup_given() {
        if !can_share() {
            return;
        }
        let mount = crate::cgroup::cgroup2_mount().unwrap();
        let mount = mount.expect("root, but no cgroup v2 hierarchy is mounted");
        let top = format!("vpod-test-share-{}", std::process::id());
        let cgroup = crate::cgroup::PodCgroup::under(&mount, &top, "p1")
            .unwrap()
            .unwrap();
        cgroup.create().unwrap();
        let leaf = cgroup.dir();
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("pod");
        std::fs::create_dir(&pod).unwrap();
        let _cleanup = Cleanup(pod.clone());
        let started = Share::start(&pod, &ShareConfig::default(), true, Some(&leaf)).await;
        let in_leaf = std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
        let ours: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| is_our_virtiofsd(pid, &socket_path(&pod)))
            .map(|pid| pid.to_string())
            .collect();
        if let Ok(share) = &started {
            share.stop().unwrap();
        }
        let removed = crate::cgroup::remove(&leaf);
        let _ = std::fs::remove_dir(mount.join(&top));
        started.unwrap();
        removed.unwrap();
        assert!(!ours.is_empty());
        for pid in &ours {
            assert!(in_leaf.lines().any(|p| p == pid), "{pid} not in {in_leaf}");
        }
    }

    #[tokio::test]
    async fn a_crashed_runtime_s_share_is_found_by_its_directory() {
        if !can_share() {
            return;
        }
        let top = tempfile::tempdir().unwrap();
        let pod = top.path().join("pod");
        std::fs::create_dir(&pod).unwrap();
        let _cleanup = Cleanup(pod.clone());
        let source = top.path().join("volume");
        std::fs::create_dir(&source).unwrap();
        let share = Share::start(&pod, &ShareConfig::default(), true, None)
            .await
            .unwrap();
        share
            .bind(
                "c1",
                0,
                &VolumeBind {
                    source: source.clone(),
                    readonly: false,
                    recursive: false,
                    propagation: Propagation::Slave,
                },
            )
            .unwrap();
        destroy_leftovers(&pod).unwrap();
        assert!(!virtiofsd_running(share.socket()));
        assert!(mounts_under(&pod).is_empty());
        // Reaps our child; nothing else is left to do.
        share.stop().unwrap();
    }

    fn libc_erofs() -> i32 {
        rustix::io::Errno::ROFS.raw_os_error()
    }

    /// The filter virtiofsd runs under refuses set-user-ID and set-group-ID modes (EPERM)
    /// and lets every other mode through.
    #[test]
    fn the_set_id_filter_refuses_set_id_modes_only() {
        let dir = tempfile::tempdir().unwrap();
        let filter = set_id_filter().unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(
                "touch f; for m in 4755 2755 6755 u+s g+s 1755 0755; do \
                 chmod $m f 2>/dev/null; echo -n $?; done; mkdir -m 0755 d; echo -n $?",
            )
            .current_dir(dir.path());
        // SAFETY: only the prctl and seccomp system calls run between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                seccompiler::apply_filter(&filter).map_err(|_| io::Error::last_os_error())
            });
        }
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "11111000");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("f"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn nothing_is_mounted_under_a_fresh_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(mounts_under(dir.path()).is_empty());
        assert!(unmount_under(dir.path()).is_ok());
    }
}

//! The pod's cgroup on the host (cgroup v2): where its VMM and its virtiofsd run, so that
//! the node charges their memory and CPU to the pod, as the kubelet expects of a runtime.
//!
//! The kubelet names the pod's cgroup in RunPodSandbox's `linux.cgroup_parent`, in one of
//! two forms, told apart by the `.slice` suffix as runc and the kubelet do:
//!
//! - cgroupfs: a path under the cgroup2 mount, `/kubepods/burstable/pod<uid>`; the pod's
//!   leaf is `vpod-<pod id>` under it;
//! - systemd: a slice, `kubepods-burstable-pod<uid>.slice`, which systemd places at
//!   `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`; the
//!   pod's leaf is `vpod-<pod id>.scope` in it (runc names a container's scope so).
//!
//! The front end makes the leaf ([`PodCgroup::create`], with any parent the kubelet has
//! not made yet), hands its directory to the sandbox (`SandboxConfig::cgroup`), whose
//! processes join it before they exec ([`CgroupProcs`]), and removes it once they are gone
//! ([`remove`]). Nothing here reaches outside the cgroup2 mount: every path component is a
//! plain name, and removal only touches a `vpod-` leaf on a cgroup2 file system.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// cgroup2's file system magic (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_MAGIC: i64 = 0x6367_7270;
/// How long [`remove`] waits for the leaf's last processes to be gone.
const REMOVE_PATIENCE: Duration = Duration::from_secs(3);

/// Why the pod's cgroup could not be named, made, joined or removed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("the cgroup parent {0:?} is not a cgroup path nor a systemd slice ({1})")]
    BadParent(String, &'static str),
    #[error("the pod id {0:?} cannot name a cgroup")]
    BadId(String),
    #[error("could not read the mount table")]
    Mountinfo(#[source] io::Error),
    #[error("{0} is not on a cgroup v2 file system")]
    NotCgroup2(PathBuf),
    #[error("{0} is not a cgroup this runtime makes")]
    NotOurs(PathBuf),
    #[error("could not make the cgroup {0}")]
    Create(PathBuf, #[source] io::Error),
    #[error("could not open {0}")]
    Open(PathBuf, #[source] io::Error),
    #[error("could not move process {pid} into the cgroup {dir}")]
    Join {
        dir: PathBuf,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("could not remove the cgroup {0}")]
    Remove(PathBuf, #[source] io::Error),
}

/// The pod's leaf cgroup: `<mount>/<relative>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    mount: PathBuf,
    relative: PathBuf,
}

impl PodCgroup {
    /// The leaf of pod `pod_id` under `parent` (the CRI's `cgroup_parent`) in the cgroup2
    /// hierarchy mounted at `mount`; `None` when there is no parent.
    pub fn under(
        mount: &Path,
        parent: &str,
        pod_id: &str,
    ) -> Result<Option<PodCgroup>, CgroupError> {
        Ok(leaf_path(parent, pod_id)?.map(|relative| PodCgroup {
            mount: mount.to_path_buf(),
            relative,
        }))
    }

    /// The leaf's directory.
    pub fn dir(&self) -> PathBuf {
        self.mount.join(&self.relative)
    }

    /// Makes the leaf, and the parents the kubelet has not made yet; each parent on the way
    /// delegates the controllers it has to its children (best effort, as runc does: a
    /// controller that cannot be delegated only leaves its figures to the parent). An
    /// existing leaf (a retry) is fine.
    pub fn create(&self) -> Result<(), CgroupError> {
        if !is_cgroup2(&self.mount) {
            return Err(CgroupError::NotCgroup2(self.mount.clone()));
        }
        let mut dir = self.mount.clone();
        for name in self.relative.iter() {
            delegate_controllers(&dir);
            dir.push(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CgroupError::Create(dir, e)),
            }
        }
        Ok(())
    }
}

/// The leaf's path relative to the cgroup2 mount, for the CRI's `cgroup_parent` and the
/// pod's id; `None` when `parent` is empty (the pod gets no cgroup of its own).
pub fn leaf_path(parent: &str, pod_id: &str) -> Result<Option<PathBuf>, CgroupError> {
    if !valid_name(pod_id) {
        return Err(CgroupError::BadId(pod_id.to_string()));
    }
    if parent.is_empty() {
        return Ok(None);
    }
    let path = if parent.ends_with(".slice") {
        expand_slice(parent)?.join(format!("vpod-{pod_id}.scope"))
    } else {
        cgroupfs_path(parent)?.join(format!("vpod-{pod_id}"))
    };
    Ok(Some(path))
}

/// Checks a CRI `cgroup_parent` without a pod (for a request's validation).
pub fn check_parent(parent: &str) -> Result<(), CgroupError> {
    leaf_path(parent, "x").map(drop)
}

/// A plain file name: no separators, not `.` or `..`, nothing a unit name may not hold.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
}

/// A cgroupfs parent, `/kubepods/burstable/pod<uid>`: plain names below the mount (empty
/// parts, `//`, are nothing).
fn cgroupfs_path(parent: &str) -> Result<PathBuf, CgroupError> {
    let bad = |why| CgroupError::BadParent(parent.to_string(), why);
    let mut path = PathBuf::new();
    for name in parent.split('/').filter(|name| !name.is_empty()) {
        match name {
            ".." => return Err(bad("it has a `..` component")),
            "." => return Err(bad("it has a `.` component")),
            name if !valid_name(name) => {
                return Err(bad("a name has characters a cgroup name may not"))
            }
            name => path.push(name),
        }
    }
    Ok(path)
}

/// Where systemd places `slice`: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`, `-.slice`
/// the root (systemd's `unit_name_build_from_type` rules, as runc's `ExpandSlice`).
fn expand_slice(slice: &str) -> Result<PathBuf, CgroupError> {
    let bad = |why| CgroupError::BadParent(slice.to_string(), why);
    let name = slice.strip_suffix(".slice").unwrap_or(slice);
    if slice.contains('/') {
        return Err(bad("a slice name has no `/`"));
    }
    if name == "-" {
        return Ok(PathBuf::new());
    }
    if name.is_empty() || name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err(bad("a slice name has no empty `-` part"));
    }
    if !valid_name(slice) {
        return Err(bad("a slice name has characters a unit name may not"));
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

/// The cgroup2 hierarchy's mount point in this mount namespace (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid host); `None` without one.
pub fn cgroup2_mount() -> Result<Option<PathBuf>, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
    Ok(cgroup2_mount_in(&text))
}

/// The first cgroup2 mount of a mountinfo text whose root is the hierarchy's root.
fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let (root, point) = (fields.get(3)?, fields.get(4)?);
        (fs.split(' ').next() == Some("cgroup2") && *root == "/")
            .then(|| PathBuf::from(crate::share::unescape_mountinfo(point)))
    })
}

// `f_type` is an i64 on x86_64, narrower elsewhere.
#[allow(clippy::unnecessary_cast)]
fn is_cgroup2(dir: &Path) -> bool {
    rustix::fs::statfs(dir).is_ok_and(|fs| fs.f_type as i64 == CGROUP2_MAGIC)
}

/// Enables in `dir`'s `cgroup.subtree_control` each controller it has that its children
/// do not get yet. Errors are left: a parent with processes of its own, or a controller
/// the host keeps (a real-time `cpu`), only means the figures stay a level up.
fn delegate_controllers(dir: &Path) {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let delegated = read("cgroup.subtree_control");
    let delegated: Vec<&str> = delegated.split_whitespace().collect();
    for controller in read("cgroup.controllers").split_whitespace() {
        if !delegated.contains(&controller) {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"));
        }
    }
}

/// Moves process `pid` (all its threads) into the cgroup `dir`.
pub fn join(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|source| CgroupError::Join {
        dir: dir.to_path_buf(),
        pid,
        source,
    })
}

/// A cgroup's `cgroup.procs`, opened (close-on-exec) before a fork so that the child can
/// move itself in between fork and exec ([`CgroupProcs::move_self`]).
#[derive(Debug)]
pub struct CgroupProcs {
    fd: OwnedFd,
}

impl CgroupProcs {
    pub fn open(dir: &Path) -> Result<CgroupProcs, CgroupError> {
        let path = dir.join("cgroup.procs");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| CgroupError::Open(path, e))?;
        Ok(CgroupProcs { fd: file.into() })
    }

    /// Moves the calling process into the cgroup: one write(2) of `0`, async-signal-safe,
    /// allocating nothing, so it may run in a `pre_exec` hook.
    pub fn move_self(&self) -> io::Result<()> {
        rustix::io::write(self.fd.as_fd(), b"0")
            .map(drop)
            .map_err(io::Error::from)
    }
}

/// Removes the leaf `dir` once its processes are gone; one that is gone already is fine.
/// What still runs in it after the caller stopped the pod's processes (a helper's own
/// child) is killed through `cgroup.kill`. Only a `vpod-` leaf on cgroup2 is touched.
pub fn remove(dir: &Path) -> Result<(), CgroupError> {
    let ours = dir
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("vpod-"));
    if !ours {
        return Err(CgroupError::NotOurs(dir.to_path_buf()));
    }
    if !dir.exists() {
        return Ok(());
    }
    if !is_cgroup2(dir) {
        return Err(CgroupError::NotCgroup2(dir.to_path_buf()));
    }
    let deadline = Instant::now() + REMOVE_PATIENCE;
    let mut killed = false;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                if Instant::now() >= deadline {
                    return Err(CgroupError::Remove(dir.to_path_buf(), e));
                }
                if !killed {
                    // Linux 5.14 and later; before it, the wait alone.
                    let _ = File::options()
                        .write(true)
                        .open(dir.join("cgroup.kill"))
                        .and_then(|mut f| f.write_all(b"1"));
                    killed = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(CgroupError::Remove(dir.to_path_buf(), e)),
        }
    }
}

/// [`remove`] on a blocking thread, for async callers: it may wait for the leaf's last
/// processes to leave.
pub async fn remove_off_thread(dir: PathBuf) -> Result<(), CgroupError> {
    let shown = dir.clone();
    tokio::task::spawn_blocking(move || remove(&dir))
        .await
        .unwrap_or_else(|e| Err(CgroupError::Remove(shown, io::Error::other(e))))
}

/// The cgroup's `memory.current` in bytes; `None` without the memory controller.
pub fn memory_current(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(dir.join("memory.current"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(parent: &str) -> Result<Option<PathBuf>, CgroupError> {
        leaf_path(parent, "0123abcd")
    }

    #[test]
    fn a_cgroupfs_parent_gets_the_leaf_below_it() {
        assert_eq!(
            leaf("/kubepods/burstable/pod1234-5678").unwrap(),
            Some(PathBuf::from(
                "kubepods/burstable/pod1234-5678/vpod-0123abcd"
            ))
        );
        assert_eq!(
            leaf("kubepods/podx").unwrap(),
            Some(PathBuf::from("kubepods/podx/vpod-0123abcd"))
        );
        assert_eq!(
            leaf("/").unwrap(),
            Some(PathBuf::from("vpod-0123abcd")),
            "the root itself"
        );
    }

    #[test]
    fn a_systemd_slice_is_expanded_as_systemd_places_it() {
        assert_eq!(
            leaf("kubepods-burstable-pod1234_5678.slice").unwrap(),
            Some(PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod1234_5678.slice/vpod-0123abcd.scope"
            ))
        );
        assert_eq!(
            leaf("kubepods.slice").unwrap(),
            Some(PathBuf::from("kubepods.slice/vpod-0123abcd.scope"))
        );
        assert_eq!(
            leaf("-.slice").unwrap(),
            Some(PathBuf::from("vpod-0123abcd.scope"))
        );
    }

    #[test]
    fn no_parent_means_no_cgroup() {
        assert_eq!(leaf("").unwrap(), None);
    }

    #[test]
    fn a_parent_that_could_escape_the_hierarchy_is_refused() {
        for parent in [
            "/kubepods/../../etc",
            "..",
            "/kubepods/./pod",
            "/kubepods/pod\nx",
            "/kubepods/pod x",
            "a/b.slice",
            "../x.slice",
            "-kubepods.slice",
            "kubepods-.slice",
            "kubepods--x.slice",
            ".slice",
        ] {
            let refused = leaf(parent);
            assert!(
                matches!(refused, Err(CgroupError::BadParent(..))),
                "{parent:?}: {refused:?}"
            );
            assert!(check_parent(parent).is_err(), "{parent:?}");
        }
    }

    #[test]
    fn a_pod_id_that_is_not_a_plain_name_is_refused() {
        for id in ["", ".", "..", "a/b", "a b"] {
            assert!(
                matches!(leaf_path("/kubepods", id), Err(CgroupError::BadId(_))),
                "{id:?}"
            );
        }
    }

    #[test]
    fn the_cgroup2_mount_is_found_on_unified_and_hybrid_hosts() {
        let unified = "24 30 0:22 / /sys rw,nosuid - sysfs sysfs rw\n\
                       28 24 0:25 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1_only = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_mount_in(v1_only), None);
        // A bind of a sub-cgroup (a container's view) is not the hierarchy's root.
        let nested = "50 31 0:38 /kubepods /mnt/cg rw - cgroup2 cgroup2 rw\n\
                      51 31 0:38 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount_in(nested), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn removing_refuses_a_directory_that_is_not_a_vpod_leaf() {
        assert!(matches!(
            remove(Path::new("/sys/fs/cgroup/kubepods")),
            Err(CgroupError::NotOurs(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("vpod-x");
        std::fs::create_dir(&fake).unwrap();
        assert!(matches!(remove(&fake), Err(CgroupError::NotCgroup2(_))));
        assert!(fake.exists());
        assert!(remove(&dir.path().join("vpod-gone")).is_ok());
    }

    #[test]
    fn creating_on_a_file_system_that_is_not_cgroup2_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cgroup = PodCgroup::under(dir.path(), "/kubepods/pod1", "abc")
            .unwrap()
            .unwrap();
        assert!(matches!(cgroup.create(), Err(CgroupError::NotCgroup2(_))));
        assert!(!dir.path().join("kubepods").exists());
    }

    /// The cgroup2 mount when this process may make cgroups there (root on a host with
    /// cgroup v2, unified or hybrid); says why not otherwise.
    fn writable_cgroup2() -> Option<PathBuf> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: making cgroups needs root");
            return None;
        }
        let mount = cgroup2_mount().unwrap();
        assert!(
            mount.is_some(),
            "root, but no cgroup v2 hierarchy is mounted"
        );
        mount
    }

    /// The cgroup v2 path `/proc/<pid>/cgroup` names.
    fn cgroup_of(pid: u32) -> String {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let line = text.lines().find(|l| l.starts_with("0::")).unwrap();
        line.trim_start_matches("0::").to_string()
    }

    /// Removes a test's cgroup tree, deepest first, whatever the test left.
    struct RemoveTree(PathBuf);

    impl Drop for RemoveTree {
        fn drop(&mut self) {
            fn rmdir_all(dir: &Path) {
                for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        rmdir_all(&entry.path());
                    }
                }
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
                for _ in 0..100 {
                    if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            rmdir_all(&self.0);
        }
    }

    #[test]
    fn a_pod_cgroup_is_made_joined_before_exec_and_by_pid_then_removed_with_what_is_left() {
        use std::os::unix::process::CommandExt;
        use std::process::Command;

        let Some(mount) = writable_cgroup2() else {
            return;
        };
        let top = format!("vpod-test-{}", std::process::id());
        let _cleanup = RemoveTree(mount.join(&top));
        let parent = format!("/{top}/kubepods/burstable/pod-u1");
        let cgroup = PodCgroup::under(&mount, &parent, "p1").unwrap().unwrap();
        cgroup.create().unwrap();
        cgroup.create().expect("making it again is fine");
        let dir = cgroup.dir();
        assert_eq!(
            dir,
            mount.join(&top).join("kubepods/burstable/pod-u1/vpod-p1")
        );

        // A child moves itself in between fork and exec.
        let procs = CgroupProcs::open(&dir).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        // SAFETY: only write(2) on a descriptor opened before the fork runs in the child.
        unsafe {
            cmd.pre_exec(move || procs.move_self());
        }
        let mut first = cmd.spawn().unwrap();
        let expected = format!("/{top}/kubepods/burstable/pod-u1/vpod-p1");
        assert_eq!(cgroup_of(first.id()), expected);
        // Another process is moved in by its PID.
        let mut second = Command::new("sleep").arg("30").spawn().unwrap();
        join(&dir, second.id()).unwrap();
        assert_eq!(cgroup_of(second.id()), expected);
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert_eq!(procs.lines().count(), 2, "{procs}");

        // The first is stopped as a pod's VMM is; the second, left behind, is killed by the
        // removal.
        first.kill().unwrap();
        first.wait().unwrap();
        remove(&dir).unwrap();
        assert!(!dir.exists());
        let status = second.wait().unwrap();
        assert!(!status.success(), "the left process was killed: {status}");
        remove(&dir).expect("removing it again is fine");
        // The parents, the kubelet's, stay.
        assert!(dir.parent().unwrap().exists());
    }
}

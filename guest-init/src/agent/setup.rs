//! The steps a container's init runs between clone and exec to build its view of the world:
//! its own mount table with the overlay as root, a minimal /dev, /proc and a read-only /sys,
//! the requested mounts, and the hostname. Built here, by the agent, before it clones,
//! because the child may not allocate (it is forked from a multi-threaded process); the
//! child only walks the list. Building them is pure, so tests can read the plan.

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};

use super::spec::{ContainerSpec, MountSpec};

/// Device nodes bind-mounted from the guest's /dev into the container's.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];
/// The /dev links every container gets: (target, link name).
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetupError {
    #[error("The path {0:?} contains a NUL byte.")]
    NulByte(String),
    #[error("The mount destination {0:?} is not an absolute path without '..'.")]
    BadDestination(String),
}

/// One system call's worth of setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop mount events from propagating to or from the agent's namespace.
    MakeRootPrivate,
    /// mkdir; an existing directory is fine.
    Mkdir(CString),
    /// Creates an empty file to mount over, if nothing is there.
    Touch(CString),
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// symlink(target, link); an existing link is fine.
    Symlink {
        target: CString,
        link: CString,
    },
    /// pivot_root into this directory and detach the old root.
    PivotRoot(CString),
    SetHostname(CString),
}

impl Step {
    /// For error messages.
    pub fn describe(&self) -> String {
        let show = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Step::MakeRootPrivate => "making the mount tree private".to_string(),
            Step::Mkdir(p) => format!("creating directory {}", show(p)),
            Step::Touch(p) => format!("creating file {}", show(p)),
            Step::Mount { target, fstype, .. } => format!(
                "mounting {} on {}",
                fstype.as_ref().map_or("a bind".to_string(), show),
                show(target)
            ),
            Step::Symlink { link, .. } => format!("creating link {}", show(link)),
            Step::PivotRoot(p) => format!("pivoting into {}", show(p)),
            Step::SetHostname(h) => format!("setting hostname {}", show(h)),
        }
    }
}

pub fn c_path(path: &Path) -> Result<CString, SetupError> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| SetupError::NulByte(path.display().to_string()))
}

pub fn c_str(text: &str) -> Result<CString, SetupError> {
    CString::new(text).map_err(|_| SetupError::NulByte(text.to_string()))
}

/// The destination inside the root, or an error for a relative path or one with "..".
pub fn inside(rootfs: &Path, destination: &str) -> Result<PathBuf, SetupError> {
    let path = Path::new(destination);
    if !path.is_absolute() {
        return Err(SetupError::BadDestination(destination.to_string()));
    }
    let mut joined = rootfs.to_path_buf();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => joined.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(SetupError::BadDestination(destination.to_string()))
            }
        }
    }
    Ok(joined)
}

/// mkdir -p below `rootfs` (which exists) as single steps.
fn make_dirs(steps: &mut Vec<Step>, rootfs: &Path, dir: &Path) -> Result<(), SetupError> {
    let Ok(relative) = dir.strip_prefix(rootfs) else {
        return Ok(());
    };
    let mut path = rootfs.to_path_buf();
    for part in relative.components() {
        path.push(part);
        steps.push(Step::Mkdir(c_path(&path)?));
    }
    Ok(())
}

fn mount_step(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> Result<Step, SetupError> {
    Ok(Step::Mount {
        source: source.map(c_str).transpose()?,
        target: c_path(target)?,
        fstype: fstype.map(c_str).transpose()?,
        flags,
        data: if data.is_empty() {
            None
        } else {
            Some(c_str(data)?)
        },
    })
}

/// Everything the container's init does before it becomes the container's process.
/// `dev` is the guest's /dev, the source of the device nodes; `source_is_file` says whether
/// a bind mount's source is a file (which needs a file to mount over).
pub fn container_steps(
    spec: &ContainerSpec,
    rootfs: &Path,
    dev: &Path,
    source_is_file: &dyn Fn(&str) -> bool,
) -> Result<Vec<Step>, SetupError> {
    use libc::{
        MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT, MS_STRICTATIME,
    };
    let mut steps = vec![
        Step::MakeRootPrivate,
        // pivot_root needs the new root to be a mount point of this namespace.
        mount_step(
            Some(&rootfs.to_string_lossy()),
            rootfs,
            None,
            MS_BIND | MS_REC,
            "",
        )?,
    ];
    let proc_dir = rootfs.join("proc");
    steps.push(Step::Mkdir(c_path(&proc_dir)?));
    steps.push(mount_step(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "",
    )?);

    let dev_dir = rootfs.join("dev");
    steps.push(Step::Mkdir(c_path(&dev_dir)?));
    steps.push(mount_step(
        Some("tmpfs"),
        &dev_dir,
        Some("tmpfs"),
        MS_NOSUID | MS_STRICTATIME,
        "mode=755,size=65536k",
    )?);
    for device in DEVICES {
        let node = dev_dir.join(device);
        steps.push(Step::Touch(c_path(&node)?));
        steps.push(mount_step(
            Some(&dev.join(device).to_string_lossy()),
            &node,
            None,
            MS_BIND,
            "",
        )?);
    }
    let pts = dev_dir.join("pts");
    steps.push(Step::Mkdir(c_path(&pts)?));
    steps.push(mount_step(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?);
    let shm = dev_dir.join("shm");
    steps.push(Step::Mkdir(c_path(&shm)?));
    steps.push(mount_step(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "mode=1777,size=65536k",
    )?);
    for (target, link) in DEV_LINKS {
        steps.push(Step::Symlink {
            target: c_str(target)?,
            link: c_path(&dev_dir.join(link))?,
        });
    }
    let sys = rootfs.join("sys");
    steps.push(Step::Mkdir(c_path(&sys)?));
    steps.push(mount_step(
        Some("sysfs"),
        &sys,
        Some("sysfs"),
        MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "",
    )?);

    for m in &spec.mounts {
        push_user_mount(&mut steps, rootfs, m, source_is_file)?;
    }

    steps.push(Step::PivotRoot(c_path(rootfs)?));
    if spec.readonly_rootfs {
        steps.push(mount_step(
            None,
            Path::new("/"),
            None,
            MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NODEV,
            "",
        )?);
    }
    if let Some(hostname) = &spec.hostname {
        steps.push(Step::SetHostname(c_str(hostname)?));
    }
    Ok(steps)
}

fn push_user_mount(
    steps: &mut Vec<Step>,
    rootfs: &Path,
    m: &MountSpec,
    source_is_file: &dyn Fn(&str) -> bool,
) -> Result<(), SetupError> {
    let target = inside(rootfs, &m.destination)?;
    if m.is_bind() && source_is_file(&m.source) {
        if let Some(parent) = target.parent() {
            make_dirs(steps, rootfs, parent)?;
        }
        steps.push(Step::Touch(c_path(&target)?));
    } else {
        make_dirs(steps, rootfs, &target)?;
    }
    if m.is_bind() {
        steps.push(mount_step(
            Some(&m.source),
            &target,
            None,
            m.flags & (libc::MS_BIND | libc::MS_REC),
            "",
        )?);
        // A bind mount takes its other flags only on a remount.
        let rest = m.flags & !(libc::MS_BIND | libc::MS_REC);
        if rest != 0 {
            steps.push(mount_step(
                None,
                &target,
                None,
                libc::MS_REMOUNT | libc::MS_BIND | rest,
                "",
            )?);
        }
    } else {
        steps.push(mount_step(
            Some(&m.source),
            &target,
            Some(&m.fstype),
            m.flags,
            &m.data,
        )?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::cgroup::CgroupLimits;
    use super::super::rootfs::RootfsSource;
    use super::super::spec::ProcessSpec;
    use super::*;

    fn spec(mounts: Vec<MountSpec>, readonly: bool) -> ContainerSpec {
        ContainerSpec {
            id: "c".into(),
            process: ProcessSpec {
                args: vec!["sh".into()],
                env: vec![],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                rlimits: vec![],
                capabilities: 0,
            },
            hostname: Some("web".into()),
            mounts,
            readonly_rootfs: readonly,
            limits: CgroupLimits::default(),
            rootfs: RootfsSource::Directory("/img".into()),
            stdin: false,
        }
    }

    fn described(steps: &[Step]) -> Vec<String> {
        steps.iter().map(Step::describe).collect()
    }

    #[test]
    fn the_container_gets_proc_dev_and_sys_before_pivoting() {
        let steps = container_steps(
            &spec(vec![], true),
            Path::new("/r"),
            Path::new("/dev"),
            &|_| false,
        )
        .unwrap();
        let text = described(&steps);
        let position = |s: &str| {
            text.iter()
                .position(|t| t == s)
                .unwrap_or_else(|| panic!("{s} in {text:?}"))
        };
        let pivot = position("pivoting into /r");
        assert!(position("mounting proc on /r/proc") < pivot);
        assert!(position("mounting tmpfs on /r/dev") < position("mounting a bind on /r/dev/null"));
        assert!(position("mounting devpts on /r/dev/pts") < pivot);
        assert!(position("mounting sysfs on /r/sys") < pivot);
        assert!(position("creating link /r/dev/ptmx") < pivot);
        assert_eq!(text[pivot + 1], "mounting a bind on /");
        assert_eq!(text.last().unwrap(), "setting hostname web");
        for device in DEVICES {
            position(&format!("mounting a bind on /r/dev/{device}"));
        }
    }

    #[test]
    fn a_read_only_bind_mount_is_remounted_and_a_file_source_gets_a_file() {
        let m = MountSpec {
            source: "/run/secrets/token".into(),
            destination: "/var/run/token".into(),
            fstype: "bind".into(),
            flags: libc::MS_BIND | libc::MS_RDONLY,
            data: String::new(),
        };
        let steps = container_steps(
            &spec(vec![m], false),
            Path::new("/r"),
            Path::new("/dev"),
            &|_| true,
        )
        .unwrap();
        let text = described(&steps);
        let start = text
            .iter()
            .position(|t| t == "creating directory /r/var")
            .unwrap();
        assert_eq!(
            &text[start..start + 5],
            [
                "creating directory /r/var",
                "creating directory /r/var/run",
                "creating file /r/var/run/token",
                "mounting a bind on /r/var/run/token",
                "mounting a bind on /r/var/run/token",
            ]
        );
        assert!(matches!(
            &steps[steps.iter().position(|s| s.describe() == "creating file /r/var/run/token").unwrap() + 2],
            Step::Mount { flags, .. } if *flags == libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY
        ));
    }

    #[test]
    fn destinations_with_dot_dot_or_relative_are_refused() {
        assert_eq!(
            inside(Path::new("/r"), "/a/b").unwrap(),
            Path::new("/r/a/b")
        );
        assert!(inside(Path::new("/r"), "/a/../../etc").is_err());
        assert!(inside(Path::new("/r"), "etc").is_err());
    }
}

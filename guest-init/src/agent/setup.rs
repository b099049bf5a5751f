//! The steps a container's init runs between clone and exec to build its view of the world:
//! its own mount table with the overlay as root, a minimal /dev, /proc and a read-only /sys,
//! the requested mounts, and the hostname. Built here, by the agent, before it clones,
//! because the child may not allocate (it is forked from a multi-threaded process); the
//! child only walks the list. Building them is pure, so tests can read the plan. Every path
//! inside the container's root is resolved inside it by the kernel, never by a plain path
//! walk that an image's symlinks could redirect onto the guest's own filesystem.

use std::ffi::CString;
use std::path::{Component, Path, PathBuf};

use super::in_root;
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
    #[error("the path {0:?} contains a NUL byte")]
    NulByte(String),
    #[error("the mount destination {0:?} is not an absolute path without '..'")]
    BadDestination(String),
}

/// Where a mount goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A path in the agent's view (the root itself, or "/" after pivoting).
    Path(CString),
    /// A path relative to the container's root, resolved inside it (see [`in_root`]).
    InRoot(CString),
}

/// One system call's worth of setup. Paths marked "in the root" are relative to the
/// container's root and resolved by openat2 with RESOLVE_IN_ROOT from the descriptor that
/// [`Step::OpenRoot`] opened, so symlinks in the image cannot lead them outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop mount events from propagating to or from the agent's namespace.
    MakeRootPrivate,
    /// Opens the root the in-root steps resolve in (after its bind onto itself, so mounts
    /// made through it land on the mount that becomes `/`).
    OpenRoot(CString),
    /// mkdir of the single component `name` in the in-root directory `parent` ("." for the
    /// root); an existing entry is fine.
    Mkdir {
        parent: CString,
        name: CString,
    },
    /// Creates an empty file in the root to mount over, if nothing is there.
    Touch(CString),
    Mount {
        source: Option<CString>,
        target: Target,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// symlinkat(target, parent, name) in the root; an existing entry is fine.
    Symlink {
        target: CString,
        parent: CString,
        name: CString,
    },
    /// pivot_root into this directory and detach the old root.
    PivotRoot(CString),
    SetHostname(CString),
    /// Writes a value to this file (a /proc/sys path, in the guest's view); runs first,
    /// inside the container's new namespaces.
    Sysctl {
        path: CString,
        value: CString,
    },
    /// Hides this path in the root: an empty read-only tmpfs over a directory, /dev/null
    /// over anything else; a missing path is fine.
    Mask(CString),
    /// Makes this path in the root read-only (bound onto itself, remounted read-only); a
    /// missing path is fine.
    ReadOnly(CString),
}

/// An in-root path as the container sees it.
fn container_path(relative: &CString) -> String {
    let text = relative.to_string_lossy();
    if text == "." {
        "/".to_string()
    } else {
        format!("/{text}")
    }
}

fn joined(parent: &CString, name: &CString) -> String {
    let parent = container_path(parent);
    let name = name.to_string_lossy();
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

impl Step {
    /// For error messages; in-root paths are shown as the container sees them.
    pub fn describe(&self) -> String {
        let show = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Step::MakeRootPrivate => "making the mount tree private".to_string(),
            Step::OpenRoot(p) => format!("opening the root {}", show(p)),
            Step::Mkdir { parent, name } => format!("creating directory {}", joined(parent, name)),
            Step::Touch(p) => format!("creating file {}", container_path(p)),
            Step::Mount { target, fstype, .. } => format!(
                "mounting {} on {}",
                fstype.as_ref().map_or("a bind".to_string(), show),
                match target {
                    Target::Path(p) => show(p),
                    Target::InRoot(p) => container_path(p),
                }
            ),
            Step::Symlink { parent, name, .. } => format!("creating link {}", joined(parent, name)),
            Step::PivotRoot(p) => format!("pivoting into {}", show(p)),
            Step::SetHostname(h) => format!("setting hostname {}", show(h)),
            Step::Sysctl { path, .. } => format!("writing {}", show(path)),
            Step::Mask(p) => format!("masking {}", container_path(p)),
            Step::ReadOnly(p) => format!("making {} read-only", container_path(p)),
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

/// The destination relative to the root ("." for the root), or an error for a relative
/// path or one with "..".
pub fn inside(destination: &str) -> Result<PathBuf, SetupError> {
    in_root::relative(destination).map_err(|_| SetupError::BadDestination(destination.to_string()))
}

/// mkdir -p of the in-root `dir` as single steps.
fn make_dirs(steps: &mut Vec<Step>, dir: &Path) -> Result<(), SetupError> {
    let mut parent = PathBuf::from(".");
    for part in dir.components() {
        let Component::Normal(name) = part else {
            continue;
        };
        steps.push(Step::Mkdir {
            parent: c_path(&parent)?,
            name: c_path(Path::new(name))?,
        });
        parent = if parent == Path::new(".") {
            PathBuf::from(name)
        } else {
            parent.join(name)
        };
    }
    Ok(())
}

fn mount_step(
    source: Option<&str>,
    target: Target,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> Result<Step, SetupError> {
    Ok(Step::Mount {
        source: source.map(c_str).transpose()?,
        target,
        fstype: fstype.map(c_str).transpose()?,
        flags,
        data: if data.is_empty() {
            None
        } else {
            Some(c_str(data)?)
        },
    })
}

fn in_root_target(relative: &Path) -> Result<Target, SetupError> {
    Ok(Target::InRoot(c_path(relative)?))
}

/// Everything the container's init does before it becomes the container's process.
/// `dev` is the guest's /dev, the source of the device nodes; `devpts` a devpts instance
/// the agent mounted for the container (one with a terminal), bound on its /dev/pts
/// instead of a new one; `source_is_file` says whether a bind mount's source is a file
/// (which needs a file to mount over).
pub fn container_steps(
    spec: &ContainerSpec,
    rootfs: &Path,
    dev: &Path,
    devpts: Option<&Path>,
    source_is_file: &dyn Fn(&str) -> bool,
) -> Result<Vec<Step>, SetupError> {
    use libc::{
        MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT, MS_STRICTATIME,
    };
    // The guest's /proc, seen from the new namespaces: IPC- and UTS-namespaced keys take
    // the container's values.
    let mut steps = spec
        .sysctls
        .iter()
        .map(|(key, value)| {
            Ok(Step::Sysctl {
                path: c_str(&format!("/proc/sys/{key}"))?,
                value: c_str(value)?,
            })
        })
        .collect::<Result<Vec<_>, SetupError>>()?;
    steps.extend([
        Step::MakeRootPrivate,
        // pivot_root needs the new root to be a mount point of this namespace.
        mount_step(
            Some(&rootfs.to_string_lossy()),
            Target::Path(c_path(rootfs)?),
            None,
            MS_BIND | MS_REC,
            "",
        )?,
        Step::OpenRoot(c_path(rootfs)?),
    ]);
    let proc_dir = Path::new("proc");
    make_dirs(&mut steps, proc_dir)?;
    steps.push(mount_step(
        Some("proc"),
        in_root_target(proc_dir)?,
        Some("proc"),
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "",
    )?);

    let dev_dir = Path::new("dev");
    make_dirs(&mut steps, dev_dir)?;
    steps.push(mount_step(
        Some("tmpfs"),
        in_root_target(dev_dir)?,
        Some("tmpfs"),
        MS_NOSUID | MS_STRICTATIME,
        "mode=755,size=65536k",
    )?);
    for device in DEVICES {
        let node = dev_dir.join(device);
        steps.push(Step::Touch(c_path(&node)?));
        steps.push(mount_step(
            Some(&dev.join(device).to_string_lossy()),
            in_root_target(&node)?,
            None,
            MS_BIND,
            "",
        )?);
    }
    let pts = dev_dir.join("pts");
    make_dirs(&mut steps, &pts)?;
    steps.push(match devpts {
        Some(instance) => mount_step(
            Some(&instance.to_string_lossy()),
            in_root_target(&pts)?,
            None,
            MS_BIND,
            "",
        )?,
        None => mount_step(
            Some("devpts"),
            in_root_target(&pts)?,
            Some("devpts"),
            MS_NOSUID | MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620",
        )?,
    });
    let shm = dev_dir.join("shm");
    make_dirs(&mut steps, &shm)?;
    steps.push(mount_step(
        Some("shm"),
        in_root_target(&shm)?,
        Some("tmpfs"),
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "mode=1777,size=65536k",
    )?);
    for (target, link) in DEV_LINKS {
        steps.push(Step::Symlink {
            target: c_str(target)?,
            parent: c_path(dev_dir)?,
            name: c_str(link)?,
        });
    }
    let sys = Path::new("sys");
    make_dirs(&mut steps, sys)?;
    steps.push(mount_step(
        Some("sysfs"),
        in_root_target(sys)?,
        Some("sysfs"),
        MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "",
    )?);

    for m in &spec.mounts {
        push_user_mount(&mut steps, m, source_is_file)?;
    }
    // Block volumes: the guest's node of each disk bound over a file at its path (a bind
    // mount of its own, so the nodev of the mount under it does not apply); or the disk's
    // filesystem mounted on a directory there. Read-write underneath whatever this
    // container asked (another container of the pod may write to it: the kernel keeps one
    // superblock per disk and refuses to mount it read-only and read-write at once); this
    // container's mount is then made read-only by a remount.
    for device in &spec.devices {
        let target = inside(&device.destination)?;
        if let Some(filesystem) = device.filesystem {
            make_dirs(&mut steps, &target)?;
            let flags = libc::MS_NOSUID | libc::MS_NODEV;
            steps.push(mount_step(
                Some(&device.node.to_string_lossy()),
                in_root_target(&target)?,
                Some(filesystem.fstype()),
                flags,
                "discard",
            )?);
            if device.read_only {
                steps.push(mount_step(
                    None,
                    in_root_target(&target)?,
                    None,
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags,
                    "",
                )?);
            }
            continue;
        }
        if let Some(parent) = target.parent() {
            make_dirs(&mut steps, parent)?;
        }
        steps.push(Step::Touch(c_path(&target)?));
        steps.push(mount_step(
            Some(&device.node.to_string_lossy()),
            in_root_target(&target)?,
            None,
            MS_BIND,
            "",
        )?);
    }
    // As runc does: a working directory the image lacks is created (owned by root).
    let cwd = if spec.process.cwd.is_empty() {
        "/"
    } else {
        &spec.process.cwd
    };
    make_dirs(&mut steps, &inside(cwd)?)?;
    // After /proc, /sys and the user's mounts, which they may name.
    for path in &spec.masked_paths {
        steps.push(Step::Mask(c_path(&inside(path)?)?));
    }
    for path in &spec.readonly_paths {
        steps.push(Step::ReadOnly(c_path(&inside(path)?)?));
    }

    steps.push(Step::PivotRoot(c_path(rootfs)?));
    if spec.readonly_rootfs {
        steps.push(mount_step(
            None,
            Target::Path(c_str("/")?),
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
    m: &MountSpec,
    source_is_file: &dyn Fn(&str) -> bool,
) -> Result<(), SetupError> {
    let target = inside(&m.destination)?;
    if m.is_bind() && source_is_file(&m.source) {
        if let Some(parent) = target.parent() {
            make_dirs(steps, parent)?;
        }
        steps.push(Step::Touch(c_path(&target)?));
    } else {
        make_dirs(steps, &target)?;
    }
    if m.is_bind() {
        steps.push(mount_step(
            Some(&m.source),
            in_root_target(&target)?,
            None,
            m.flags & (libc::MS_BIND | libc::MS_REC),
            "",
        )?);
        // A bind mount takes its other flags only on a remount.
        let rest = m.flags & !(libc::MS_BIND | libc::MS_REC);
        if rest != 0 {
            steps.push(mount_step(
                None,
                in_root_target(&target)?,
                None,
                libc::MS_REMOUNT | libc::MS_BIND | rest,
                "",
            )?);
        }
    } else {
        steps.push(mount_step(
            Some(&m.source),
            in_root_target(&target)?,
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
                no_new_privs: false,
                seccomp: vec![],
            },
            hostname: Some("web".into()),
            mounts,
            readonly_rootfs: readonly,
            limits: CgroupLimits::default(),
            rootfs: RootfsSource::Directory("/img".into()),
            stdin: false,
            stdin_once: false,
            terminal: None,
            user_name: None,
            group_name: None,
            files: vec![],
            masked_paths: vec![],
            readonly_paths: vec![],
            sysctls: vec![],
            share_pod_pid: false,
            devices: vec![],
        }
    }

    #[test]
    fn sysctls_come_first_and_masks_after_the_mounts_before_the_pivot() {
        let mut s = spec(vec![], false);
        s.sysctls = vec![("kernel/shm_rmid_forced".into(), "1".into())];
        s.masked_paths = vec!["/proc/kcore".into(), "/etc/secret".into()];
        s.readonly_paths = vec!["/proc/sys".into()];
        let steps =
            container_steps(&s, Path::new("/r"), Path::new("/dev"), None, &|_| false).unwrap();
        let text = described(&steps);
        assert_eq!(text[0], "writing /proc/sys/kernel/shm_rmid_forced");
        let position = |want: &str| {
            text.iter()
                .position(|t| t == want)
                .unwrap_or_else(|| panic!("no {want:?} in {text:#?}"))
        };
        let proc = position("mounting proc on /proc");
        let kcore = position("masking /proc/kcore");
        let secret = position("masking /etc/secret");
        let sys = position("making /proc/sys read-only");
        let pivot = position("pivoting into /r");
        assert!(
            proc < kcore && kcore < secret && secret < sys && sys < pivot,
            "{text:#?}"
        );
        assert_eq!(
            steps[kcore],
            Step::Mask(CString::new("proc/kcore").unwrap())
        );
    }

    #[test]
    fn a_block_device_node_is_bound_over_a_file_at_its_path_after_dev() {
        let mut s = spec(vec![], false);
        s.devices = vec![crate::agent::block_device::BlockDeviceSpec {
            serial: "d-1".into(),
            destination: "/dev/disks/xvdb".into(),
            read_only: true,
            filesystem: None,
            node: PathBuf::from("/dev/vdc"),
        }];
        let steps =
            container_steps(&s, Path::new("/r"), Path::new("/dev"), None, &|_| false).unwrap();
        let text = described(&steps);
        let position = |want: &str| {
            text.iter()
                .position(|t| t == want)
                .unwrap_or_else(|| panic!("no {want:?} in {text:#?}"))
        };
        let dev = position("mounting tmpfs on /dev");
        let dir = position("creating directory /dev/disks");
        let file = position("creating file /dev/disks/xvdb");
        let bind = position("mounting a bind on /dev/disks/xvdb");
        assert!(dev < dir && dir < file && file < bind, "{text:#?}");
        assert!(bind < position("pivoting into /r"));
        assert_eq!(
            steps[bind],
            Step::Mount {
                source: Some(CString::new("/dev/vdc").unwrap()),
                target: Target::InRoot(CString::new("dev/disks/xvdb").unwrap()),
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            }
        );
    }

    #[test]
    fn a_disk_filesystem_is_mounted_read_write_then_made_read_only_for_the_container() {
        let mut s = spec(vec![], false);
        s.devices = vec![crate::agent::block_device::BlockDeviceSpec {
            serial: "e-1".into(),
            destination: "/cache".into(),
            read_only: true,
            filesystem: Some(crate::agent::block_device::Filesystem::Ext4),
            node: PathBuf::from("/dev/vdd"),
        }];
        let steps =
            container_steps(&s, Path::new("/r"), Path::new("/dev"), None, &|_| false).unwrap();
        let target = Target::InRoot(CString::new("cache").unwrap());
        let mount = steps
            .iter()
            .position(|step| matches!(step, Step::Mount { fstype: Some(t), .. } if t.as_bytes() == b"ext4"))
            .expect("an ext4 mount");
        assert_eq!(
            steps[mount],
            Step::Mount {
                source: Some(CString::new("/dev/vdd").unwrap()),
                target: target.clone(),
                fstype: Some(CString::new("ext4").unwrap()),
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: Some(CString::new("discard").unwrap()),
            }
        );
        assert_eq!(
            steps[mount + 1],
            Step::Mount {
                source: None,
                target,
                fstype: None,
                flags: libc::MS_REMOUNT
                    | libc::MS_BIND
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                data: None,
            }
        );
        let text = described(&steps);
        assert!(
            text.contains(&"creating directory /cache".to_string()),
            "{text:#?}"
        );
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
            None,
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
        let open_root = position("opening the root /r");
        assert!(position("mounting a bind on /r") < open_root);
        assert!(open_root < position("mounting proc on /proc"));
        assert!(position("mounting proc on /proc") < pivot);
        assert!(position("mounting tmpfs on /dev") < position("mounting a bind on /dev/null"));
        assert!(position("mounting devpts on /dev/pts") < pivot);
        assert!(position("mounting sysfs on /sys") < pivot);
        assert!(position("creating link /dev/ptmx") < pivot);
        assert_eq!(text[pivot + 1], "mounting a bind on /");
        assert_eq!(text.last().unwrap(), "setting hostname web");
        for device in DEVICES {
            position(&format!("mounting a bind on /dev/{device}"));
        }
        // Everything between opening the root and pivoting resolves inside it.
        for step in &steps[open_root + 1..pivot] {
            assert!(
                !matches!(
                    step,
                    Step::Mount {
                        target: Target::Path(_),
                        ..
                    }
                ),
                "{step:?} mounts on a plain path"
            );
        }
    }

    #[test]
    fn a_terminal_container_gets_the_agent_s_devpts_instance_bound() {
        let steps = container_steps(
            &spec(vec![], false),
            Path::new("/r"),
            Path::new("/dev"),
            Some(Path::new("/run/vpod/containers/c1/pts")),
            &|_| false,
        )
        .unwrap();
        let text = described(&steps);
        assert!(
            text.contains(&"mounting a bind on /dev/pts".to_string()),
            "{text:?}"
        );
        assert!(
            !text.contains(&"mounting devpts on /dev/pts".to_string()),
            "{text:?}"
        );
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
            None,
            &|_| true,
        )
        .unwrap();
        let text = described(&steps);
        let start = text
            .iter()
            .position(|t| t == "creating directory /var")
            .unwrap();
        assert_eq!(
            &text[start..start + 5],
            [
                "creating directory /var",
                "creating directory /var/run",
                "creating file /var/run/token",
                "mounting a bind on /var/run/token",
                "mounting a bind on /var/run/token",
            ]
        );
        assert_eq!(
            steps[start + 1],
            Step::Mkdir {
                parent: c"var".to_owned(),
                name: c"run".to_owned()
            }
        );
        assert!(matches!(
            &steps[start + 3],
            Step::Mount { target: Target::InRoot(t), .. } if t.as_c_str() == c"var/run/token"
        ));
        assert!(matches!(
            &steps[start + 4],
            Step::Mount { flags, .. } if *flags == libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY
        ));
    }

    #[test]
    fn a_missing_working_directory_is_created_inside_the_root() {
        let mut with_cwd = spec(vec![], false);
        with_cwd.process.cwd = "/srv/app".into();
        let steps = container_steps(&with_cwd, Path::new("/r"), Path::new("/dev"), None, &|_| {
            false
        })
        .unwrap();
        let text = described(&steps);
        let pivot = text.iter().position(|t| t == "pivoting into /r").unwrap();
        assert_eq!(
            &text[pivot - 2..pivot],
            ["creating directory /srv", "creating directory /srv/app"]
        );
    }

    #[test]
    fn destinations_with_dot_dot_or_relative_are_refused() {
        assert_eq!(inside("/a/b").unwrap(), Path::new("a/b"));
        assert!(inside("/a/../../etc").is_err());
        assert!(inside("etc").is_err());
    }
}

//! What a jail holds, worked out from the VM's configuration before anything changes: the
//! files and directories bound into it, the device nodes made in it and the descriptors the
//! VMM keeps. The configuration's paths are rewritten to their canonical forms, which are
//! also their paths inside the jail (every bind lands at its own path).

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::JailError;
use crate::config::{ConsoleConfig, DiskSource, InitrdConfig, TapSource, VmConfig};

/// The KVM device every VMM opens.
pub const KVM_DEVICE: &str = "/dev/kvm";
/// The tun device, opened for a NIC whose tap is named rather than inherited.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// One path bound into the jail at its own path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Canonical: absolute, without symbolic links.
    pub source: PathBuf,
    pub read_only: bool,
}

/// Everything the jail is built from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JailPlan {
    /// Directories first (the VMM makes its sockets and console file in them), then files,
    /// each once.
    pub binds: Vec<Bind>,
    /// Device nodes made in the jail for the VMM's user.
    pub devices: Vec<&'static str>,
    /// Descriptors that stay open (stdio and those the configuration names), ascending.
    pub keep_fds: Vec<RawFd>,
}

impl JailPlan {
    /// The plan for `config`, whose paths become canonical: the jail has nothing else, so a
    /// relative path or one through a symbolic link would not be found in it.
    pub fn for_config(config: &mut VmConfig) -> Result<Self, JailError> {
        let mut plan = JailPlan {
            devices: vec![KVM_DEVICE],
            keep_fds: vec![0, 1, 2],
            ..JailPlan::default()
        };
        let mut dirs = Vec::new();
        let mut files = Vec::new();

        config.kernel = canonical(&config.kernel)?;
        files.push(Bind {
            source: config.kernel.clone(),
            read_only: true,
        });
        config.initrd = match std::mem::replace(&mut config.initrd, InitrdConfig::None) {
            InitrdConfig::Required(path) => InitrdConfig::Required(canonical(&path)?),
            InitrdConfig::IfPresent(path) if path.exists() => {
                InitrdConfig::Required(canonical(&path)?)
            }
            InitrdConfig::IfPresent(_) | InitrdConfig::None => InitrdConfig::None,
        };
        if let InitrdConfig::Required(path) = &config.initrd {
            files.push(Bind {
                source: path.clone(),
                read_only: true,
            });
        }
        for disk in &mut config.disks {
            match &mut disk.source {
                DiskSource::Path(path) => {
                    *path = canonical(path)?;
                    files.push(Bind {
                        source: path.clone(),
                        read_only: disk.read_only,
                    });
                }
                DiskSource::Inherited(fd) => plan.keep_fds.push(*fd),
            }
        }
        for nic in &config.net {
            match &nic.tap {
                TapSource::Name(_) => {
                    if !plan.devices.contains(&TUN_DEVICE) {
                        plan.devices.push(TUN_DEVICE);
                    }
                }
                TapSource::Inherited(fd) => plan.keep_fds.push(*fd),
            }
        }
        for share in &mut config.fs {
            // The backend made its socket already; the VMM connects to it.
            share.socket = canonical(&share.socket)?;
            files.push(Bind {
                source: share.socket.clone(),
                read_only: false,
            });
        }
        // The VMM makes these itself: their directories are bound, writable.
        if let ConsoleConfig::File(path) = &mut config.console {
            *path = in_canonical_dir(path, &mut dirs)?;
        }
        if let Some(vsock) = &mut config.vsock {
            vsock.uds_path = in_canonical_dir(&vsock.uds_path, &mut dirs)?;
        }
        if let Some(api) = &mut config.api_socket {
            *api = in_canonical_dir(api, &mut dirs)?;
        }

        for bind in dirs.into_iter().chain(files) {
            if !plan.binds.contains(&bind) {
                plan.binds.push(bind);
            }
        }
        plan.keep_fds.sort_unstable();
        plan.keep_fds.dedup();
        Ok(plan)
    }
}

fn canonical(path: &Path) -> Result<PathBuf, JailError> {
    std::fs::canonicalize(path).map_err(|e| JailError::Path(path.to_path_buf(), e))
}

/// `path` in its directory's canonical form; the directory is added to `dirs`.
fn in_canonical_dir(path: &Path, dirs: &mut Vec<Bind>) -> Result<PathBuf, JailError> {
    let name = path
        .file_name()
        .ok_or_else(|| JailError::NotAFile(path.to_path_buf()))?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let dir = canonical(parent)?;
    let bind = Bind {
        source: dir.clone(),
        read_only: false,
    };
    if !dirs.contains(&bind) {
        dirs.push(bind);
    }
    Ok(dir.join(name))
}

/// Where `source` lands under the jail's `root`.
pub fn target_in(root: &Path, source: &Path) -> PathBuf {
    root.join(source.strip_prefix("/").unwrap_or(source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, FsConfig, NetConfig, VsockConfig};

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("vpod-jail-plan-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pod")).expect("scratch");
        for file in [
            "vmlinux",
            "initrd.img",
            "layer.img",
            "pod/writable.img",
            "pod/fs.sock",
        ] {
            std::fs::write(dir.join(file), b"").expect("file");
        }
        Dir(dir.canonicalize().expect("canonical"))
    }

    #[test]
    fn a_pod_vm_binds_its_files_and_the_directory_of_its_sockets_once() {
        let dir = scratch("pod");
        let root = &dir.0;
        let pod = root.join("pod");
        let mut config = VmConfig {
            // Through a `..`: the plan canonicalises it.
            kernel: pod.join("../vmlinux"),
            initrd: InitrdConfig::Required(root.join("initrd.img")),
            disks: vec![
                DiskConfig {
                    source: DiskSource::Path(pod.join("writable.img")),
                    read_only: false,
                    serial: Vec::new(),
                },
                DiskConfig {
                    source: DiskSource::Path(root.join("layer.img")),
                    read_only: true,
                    serial: Vec::new(),
                },
                DiskConfig {
                    source: DiskSource::Inherited(7),
                    read_only: true,
                    serial: Vec::new(),
                },
            ],
            net: vec![NetConfig {
                tap: TapSource::Inherited(5),
                mac: [2, 0, 0, 0, 0, 1],
            }],
            fs: vec![FsConfig {
                socket: pod.join("fs.sock"),
                tag: "share".into(),
                queue_size: 256,
            }],
            console: ConsoleConfig::File(pod.join("console.log")),
            vsock: Some(VsockConfig {
                uds_path: pod.join("vsock.sock"),
                guest_cid: 3,
            }),
            api_socket: Some(pod.join("api.sock")),
            ..VmConfig::default()
        };
        let plan = JailPlan::for_config(&mut config).expect("plan");
        let bind = |path: PathBuf, read_only| Bind {
            source: path,
            read_only,
        };
        assert_eq!(
            plan.binds,
            vec![
                bind(pod.clone(), false),
                bind(root.join("vmlinux"), true),
                bind(root.join("initrd.img"), true),
                bind(pod.join("writable.img"), false),
                bind(root.join("layer.img"), true),
                bind(pod.join("fs.sock"), false),
            ]
        );
        assert_eq!(plan.devices, vec![KVM_DEVICE]);
        assert_eq!(plan.keep_fds, vec![0, 1, 2, 5, 7]);
        assert_eq!(config.kernel, root.join("vmlinux"));
        assert_eq!(config.api_socket, Some(pod.join("api.sock")));
    }

    #[test]
    fn a_named_tap_needs_the_tun_device_and_a_missing_kernel_is_named() {
        let dir = scratch("tun");
        let mut config = VmConfig {
            kernel: dir.0.join("vmlinux"),
            initrd: InitrdConfig::IfPresent(dir.0.join("absent.img")),
            net: vec![NetConfig {
                tap: TapSource::Name("tap0".into()),
                mac: [2, 0, 0, 0, 0, 1],
            }],
            ..VmConfig::default()
        };
        let plan = JailPlan::for_config(&mut config).expect("plan");
        assert_eq!(plan.devices, vec![KVM_DEVICE, TUN_DEVICE]);
        assert_eq!(config.initrd, InitrdConfig::None);

        let mut missing = VmConfig {
            kernel: dir.0.join("no-such-vmlinux"),
            ..VmConfig::default()
        };
        let error = JailPlan::for_config(&mut missing).expect_err("missing kernel");
        assert!(error.to_string().contains("no-such-vmlinux"), "{error}");
    }

    #[test]
    fn targets_land_at_their_own_paths_under_the_root() {
        assert_eq!(
            target_in(Path::new("/pods/p/jail"), Path::new("/var/lib/k")),
            PathBuf::from("/pods/p/jail/var/lib/k")
        );
    }
}

//! A container's root filesystem in the guest: its EROFS layer disks mounted read-only
//! (once each, shared between containers), its upper and work directories on the writable
//! ext4 disk, and an overlay of them at `<state>/containers/<id>/rootfs`.
//!
//! Disks are named by their virtio-blk serial, found under /sys/block; mounts go through
//! [`MountOps`] so this logic runs in unit tests without root.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// The longest serial virtio-blk carries (GET_ID answers 20 bytes).
pub const VIRTIO_BLK_SERIAL_LEN: usize = 20;
/// mount(2) takes its data in one page.
const MAX_MOUNT_DATA: usize = 4095;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("no block device has the serial {0:?}")]
    NoSuchDisk(String),
    #[error("could not list the block devices in {0}")]
    ListDisks(PathBuf, #[source] io::Error),
    #[error("could not create {0}")]
    CreateDir(PathBuf, #[source] io::Error),
    #[error("could not mount {source_name} on {target}")]
    Mount {
        source_name: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not unmount {0}")]
    Unmount(PathBuf, #[source] io::Error),
    #[error("the overlay options for {0} exceed a page; use fewer layers")]
    OptionsTooLong(PathBuf),
}

/// Privileged filesystem calls.
pub trait MountOps: Send {
    fn create_dir_all(&mut self, path: &Path) -> io::Result<()>;
    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> io::Result<()>;
    /// Detaches the mount at `target`.
    fn unmount(&mut self, target: &Path) -> io::Result<()>;
    fn remove_dir_all(&mut self, path: &Path) -> io::Result<()>;
}

/// The block device (`<dev>/<name>`) whose `<sys_block>/<name>/serial` is `serial`. A serial
/// longer than virtio's 20 bytes matches the device's truncated copy.
pub fn find_disk_by_serial(
    sys_block: &Path,
    dev: &Path,
    serial: &str,
) -> Result<PathBuf, RootfsError> {
    let wanted = &serial.as_bytes()[..serial.len().min(VIRTIO_BLK_SERIAL_LEN)];
    let entries = std::fs::read_dir(sys_block)
        .map_err(|e| RootfsError::ListDisks(sys_block.to_path_buf(), e))?;
    let mut names: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let Ok(found) = std::fs::read(sys_block.join(&name).join("serial")) else {
            continue;
        };
        let found: &[u8] = trim_serial(&found);
        if found == wanted {
            return Ok(dev.join(name));
        }
    }
    Err(RootfsError::NoSuchDisk(serial.to_string()))
}

/// Readahead of layer disks, in KiB. The kernel's 128 KiB default makes a sequential read
/// one virtio request, and so one VM exit, per 128 KiB; with 4 MiB a 256 MiB read from a
/// layer disk in the emulated KVM host took 3.9 s instead of 8.6 s. Readahead grows only as
/// far as a file is read sequentially, so small and random reads fetch no more than before.
pub const LAYER_READAHEAD_KB: u32 = 4096;

/// Sets a layer disk's readahead (`<sys_block>/<vdX>/queue/read_ahead_kb`). Best effort: a
/// disk that keeps the default is slower, not wrong.
fn set_layer_readahead(disk_sysfs: &Path) {
    let knob = disk_sysfs.join("queue/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, LAYER_READAHEAD_KB.to_string()) {
        eprintln!("vpod-init: could not set {}: {e}", knob.display());
    }
}

fn trim_serial(raw: &[u8]) -> &[u8] {
    let end = raw
        .iter()
        .rposition(|b| !matches!(b, b'\0' | b'\n' | b' '))
        .map_or(0, |i| i + 1);
    &raw[..end]
}

/// Escapes a path for overlayfs's option parser, which splits options at ',' and lower
/// directories at ':', and takes '\' as the escape.
pub fn escape_overlay_path(path: &Path) -> String {
    let mut escaped = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '\\' | ':' | ',') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The overlay mount data: `lowest_first` is reversed because overlayfs lists the top
/// layer first.
pub fn overlay_options(lowest_first: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = lowest_first
        .iter()
        .rev()
        .map(|p| escape_overlay_path(p))
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        escape_overlay_path(upper),
        escape_overlay_path(work)
    )
}

/// Where a container's lower layers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSource {
    /// EROFS disks by serial, lowest first, and the ext4 disk for the upper dir.
    Disks {
        layers: Vec<String>,
        writable: String,
    },
    /// A directory in the guest used as the only lower layer (tests, debugging).
    Directory(PathBuf),
}

/// Where the agent keeps its mounts and how it finds disks.
#[derive(Debug, Clone)]
pub struct RootfsPaths {
    /// `/run/vpod` in the guest.
    pub state: PathBuf,
    /// `/sys/block`.
    pub sys_block: PathBuf,
    /// `/dev`.
    pub dev: PathBuf,
}

/// A mounted root, with what must be released when the container goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedRootfs {
    pub rootfs: PathBuf,
    container_dir: PathBuf,
    disks: Vec<String>,
    /// The upper and work dirs when they live on a shared writable disk.
    scratch_dirs: Option<PathBuf>,
}

impl PreparedRootfs {
    /// Where a container with a terminal gets its devpts instance: the agent mounts it to
    /// open the main process's terminal before the process starts, and the container's
    /// /dev/pts is a bind of it, so the process finds its terminal there.
    pub fn devpts_dir(&self) -> PathBuf {
        self.container_dir.join("pts")
    }
}

/// Mounts a new devpts instance at [`PreparedRootfs::devpts_dir`].
pub fn mount_devpts(
    ops: &mut dyn MountOps,
    prepared: &PreparedRootfs,
) -> Result<PathBuf, RootfsError> {
    let target = prepared.devpts_dir();
    ops.create_dir_all(&target)
        .map_err(|e| RootfsError::CreateDir(target.clone(), e))?;
    ops.mount(
        "devpts",
        &target,
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )
    .map_err(|source| RootfsError::Mount {
        source_name: "devpts".to_string(),
        target: target.clone(),
        source,
    })?;
    Ok(target)
}

/// The disks mounted for containers, counted by user.
#[derive(Default)]
pub struct DiskMounts {
    users: HashMap<String, (PathBuf, usize)>,
}

impl DiskMounts {
    fn acquire(
        &mut self,
        ops: &mut dyn MountOps,
        paths: &RootfsPaths,
        serial: &str,
        kind: DiskKind,
    ) -> Result<PathBuf, RootfsError> {
        if let Some((target, count)) = self.users.get_mut(serial) {
            *count += 1;
            return Ok(target.clone());
        }
        let device = find_disk_by_serial(&paths.sys_block, &paths.dev, serial)?;
        let (dir, fstype, flags) = match kind {
            DiskKind::Layer => ("layers", "erofs", libc::MS_RDONLY | libc::MS_NODEV),
            DiskKind::Writable => ("disks", "ext4", libc::MS_NODEV),
        };
        let target = paths.state.join(dir).join(serial);
        ops.create_dir_all(&target)
            .map_err(|e| RootfsError::CreateDir(target.clone(), e))?;
        if let (DiskKind::Layer, Some(name)) = (kind, device.file_name()) {
            set_layer_readahead(&paths.sys_block.join(name));
        }
        let device_name = device.to_string_lossy().into_owned();
        ops.mount(&device_name, &target, fstype, flags, "")
            .map_err(|source| RootfsError::Mount {
                source_name: device_name,
                target: target.clone(),
                source,
            })?;
        self.users.insert(serial.to_string(), (target.clone(), 1));
        Ok(target)
    }

    fn release(&mut self, ops: &mut dyn MountOps, serial: &str) -> Result<(), RootfsError> {
        let Some((target, count)) = self.users.get_mut(serial) else {
            return Ok(());
        };
        *count -= 1;
        if *count > 0 {
            return Ok(());
        }
        let target = target.clone();
        self.users.remove(serial);
        ops.unmount(&target)
            .map_err(|e| RootfsError::Unmount(target.clone(), e))?;
        let _ = ops.remove_dir_all(&target);
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum DiskKind {
    Layer,
    Writable,
}

/// Mounts what container `id` needs and assembles its overlay root.
pub fn prepare(
    ops: &mut dyn MountOps,
    disks: &mut DiskMounts,
    paths: &RootfsPaths,
    id: &str,
    source: &RootfsSource,
) -> Result<PreparedRootfs, RootfsError> {
    let container_dir = paths.state.join("containers").join(id);
    let rootfs = container_dir.join("rootfs");
    let mut prepared = PreparedRootfs {
        rootfs: rootfs.clone(),
        container_dir: container_dir.clone(),
        disks: Vec::new(),
        scratch_dirs: None,
    };
    let result = (|| {
        let (lowers, scratch) = match source {
            RootfsSource::Directory(dir) => (vec![dir.clone()], container_dir.clone()),
            RootfsSource::Disks { layers, writable } => {
                let mut lowers = Vec::new();
                for serial in layers {
                    lowers.push(disks.acquire(ops, paths, serial, DiskKind::Layer)?);
                    prepared.disks.push(serial.clone());
                }
                let disk = disks.acquire(ops, paths, writable, DiskKind::Writable)?;
                prepared.disks.push(writable.clone());
                let scratch = disk.join("containers").join(id);
                prepared.scratch_dirs = Some(scratch.clone());
                (lowers, scratch)
            }
        };
        let upper = scratch.join("upper");
        let work = scratch.join("work");
        for dir in [&upper, &work, &rootfs] {
            ops.create_dir_all(dir)
                .map_err(|e| RootfsError::CreateDir(dir.clone(), e))?;
        }
        let data = overlay_options(&lowers, &upper, &work);
        if data.len() > MAX_MOUNT_DATA {
            return Err(RootfsError::OptionsTooLong(rootfs.clone()));
        }
        ops.mount("overlay", &rootfs, "overlay", libc::MS_NODEV, &data)
            .map_err(|source| RootfsError::Mount {
                source_name: "overlay".to_string(),
                target: rootfs.clone(),
                source,
            })
    })();
    match result {
        Ok(()) => Ok(prepared),
        Err(e) => {
            let _ = release_disks_and_dirs(ops, disks, &prepared);
            Err(e)
        }
    }
}

/// Unmounts a container's overlay and what only it used, and removes its directories.
pub fn release(
    ops: &mut dyn MountOps,
    disks: &mut DiskMounts,
    prepared: &PreparedRootfs,
) -> Result<(), RootfsError> {
    if let Err(e) = ops.unmount(&prepared.rootfs) {
        // EINVAL: not a mount point (anymore); anything else keeps the directories.
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(RootfsError::Unmount(prepared.rootfs.clone(), e));
        }
    }
    let devpts = prepared.devpts_dir();
    if devpts.exists() {
        if let Err(e) = ops.unmount(&devpts) {
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(RootfsError::Unmount(devpts, e));
            }
        }
    }
    release_disks_and_dirs(ops, disks, prepared)
}

fn release_disks_and_dirs(
    ops: &mut dyn MountOps,
    disks: &mut DiskMounts,
    prepared: &PreparedRootfs,
) -> Result<(), RootfsError> {
    if let Some(scratch) = &prepared.scratch_dirs {
        let _ = ops.remove_dir_all(scratch);
    }
    let _ = ops.remove_dir_all(&prepared.container_dir);
    let mut first_error = None;
    for serial in prepared.disks.iter().rev() {
        if let Err(e) = disks.release(ops, serial) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The real system calls.
pub struct SystemMounts;

impl MountOps for SystemMounts {
    fn create_dir_all(&mut self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mount(
        &mut self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: libc::c_ulong,
        data: &str,
    ) -> io::Result<()> {
        let source = crate::agent::c_string(source)?;
        let target = crate::agent::c_path(target)?;
        let fstype = crate::agent::c_string(fstype)?;
        let data = crate::agent::c_string(data)?;
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn unmount(&mut self, target: &Path) -> io::Result<()> {
        let target = crate::agent::c_path(target)?;
        // SAFETY: the path is NUL-terminated and outlives the call.
        if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn remove_dir_all(&mut self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
    }

    impl MountOps for Recorder {
        fn create_dir_all(&mut self, _path: &Path) -> io::Result<()> {
            Ok(())
        }
        fn mount(
            &mut self,
            source: &str,
            target: &Path,
            fstype: &str,
            _flags: libc::c_ulong,
            data: &str,
        ) -> io::Result<()> {
            self.log.push(format!(
                "mount {fstype} {source} {} {data}",
                target.display()
            ));
            Ok(())
        }
        fn unmount(&mut self, target: &Path) -> io::Result<()> {
            self.log.push(format!("umount {}", target.display()));
            Ok(())
        }
        fn remove_dir_all(&mut self, _path: &Path) -> io::Result<()> {
            Ok(())
        }
    }

    fn fake_sysfs(disks: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, serial) in disks {
            std::fs::create_dir_all(dir.path().join(name).join("queue")).unwrap();
            std::fs::write(dir.path().join(name).join("serial"), serial).unwrap();
            std::fs::write(dir.path().join(name).join("queue/read_ahead_kb"), "128").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("loop0")).unwrap();
        dir
    }

    #[test]
    fn a_disk_is_found_by_its_serial() {
        let sys = fake_sysfs(&[
            ("vda", b"layer-a\n"),
            ("vdb", b"layer-b\0\0\0"),
            ("vdc", b"rw"),
        ]);
        let dev = Path::new("/dev");
        assert_eq!(
            find_disk_by_serial(sys.path(), dev, "layer-b").unwrap(),
            dev.join("vdb")
        );
        assert_eq!(
            find_disk_by_serial(sys.path(), dev, "rw").unwrap(),
            dev.join("vdc")
        );
        assert!(matches!(
            find_disk_by_serial(sys.path(), dev, "nope"),
            Err(RootfsError::NoSuchDisk(s)) if s == "nope"
        ));
    }

    #[test]
    fn a_long_serial_matches_its_truncated_copy() {
        let sys = fake_sysfs(&[("vda", b"sha256-0123456789abc")]);
        assert_eq!(
            find_disk_by_serial(sys.path(), Path::new("/dev"), "sha256-0123456789abcdef0123")
                .unwrap(),
            Path::new("/dev/vda")
        );
    }

    #[test]
    fn overlay_paths_escape_colons_commas_and_backslashes() {
        assert_eq!(
            escape_overlay_path(Path::new("/a:b,c\\d")),
            "/a\\:b\\,c\\\\d"
        );
        let options = overlay_options(
            &[PathBuf::from("/l/base"), PathBuf::from("/l/a:b")],
            Path::new("/u,1"),
            Path::new("/w"),
        );
        assert_eq!(
            options,
            "lowerdir=/l/a\\:b:/l/base,upperdir=/u\\,1,workdir=/w"
        );
    }

    fn paths(sys: &Path) -> RootfsPaths {
        RootfsPaths {
            state: PathBuf::from("/run/vpod"),
            sys_block: sys.to_path_buf(),
            dev: PathBuf::from("/dev"),
        }
    }

    #[test]
    fn layers_are_mounted_once_and_unmounted_after_their_last_user() {
        let sys = fake_sysfs(&[("vda", b"base"), ("vdb", b"app"), ("vdc", b"rw")]);
        let paths = paths(sys.path());
        let source = RootfsSource::Disks {
            layers: vec!["base".into(), "app".into()],
            writable: "rw".into(),
        };
        let mut ops = Recorder::default();
        let mut disks = DiskMounts::default();
        let one = prepare(&mut ops, &mut disks, &paths, "one", &source).unwrap();
        let two = prepare(&mut ops, &mut disks, &paths, "two", &source).unwrap();
        assert_eq!(
            ops.log,
            [
                "mount erofs /dev/vda /run/vpod/layers/base ",
                "mount erofs /dev/vdb /run/vpod/layers/app ",
                "mount ext4 /dev/vdc /run/vpod/disks/rw ",
                "mount overlay overlay /run/vpod/containers/one/rootfs lowerdir=/run/vpod/layers/app:/run/vpod/layers/base,upperdir=/run/vpod/disks/rw/containers/one/upper,workdir=/run/vpod/disks/rw/containers/one/work",
                "mount overlay overlay /run/vpod/containers/two/rootfs lowerdir=/run/vpod/layers/app:/run/vpod/layers/base,upperdir=/run/vpod/disks/rw/containers/two/upper,workdir=/run/vpod/disks/rw/containers/two/work",
            ]
        );
        let readahead = |disk: &str| {
            std::fs::read_to_string(sys.path().join(disk).join("queue/read_ahead_kb")).unwrap()
        };
        assert_eq!(readahead("vda"), LAYER_READAHEAD_KB.to_string());
        assert_eq!(readahead("vdb"), LAYER_READAHEAD_KB.to_string());
        assert_eq!(
            readahead("vdc"),
            "128",
            "the writable disk keeps the default"
        );
        ops.log.clear();
        release(&mut ops, &mut disks, &one).unwrap();
        assert_eq!(ops.log, ["umount /run/vpod/containers/one/rootfs"]);
        ops.log.clear();
        release(&mut ops, &mut disks, &two).unwrap();
        assert_eq!(
            ops.log,
            [
                "umount /run/vpod/containers/two/rootfs",
                "umount /run/vpod/disks/rw",
                "umount /run/vpod/layers/app",
                "umount /run/vpod/layers/base",
            ]
        );
    }

    #[test]
    fn a_missing_disk_releases_the_layers_already_mounted() {
        let sys = fake_sysfs(&[("vda", b"base")]);
        let source = RootfsSource::Disks {
            layers: vec!["base".into()],
            writable: "absent".into(),
        };
        let mut ops = Recorder::default();
        let mut disks = DiskMounts::default();
        let e = prepare(&mut ops, &mut disks, &paths(sys.path()), "c", &source).unwrap_err();
        assert!(matches!(e, RootfsError::NoSuchDisk(_)));
        assert_eq!(ops.log.last().unwrap(), "umount /run/vpod/layers/base");
    }

    #[test]
    fn a_directory_root_is_the_single_lower_layer() {
        let sys = fake_sysfs(&[]);
        let mut ops = Recorder::default();
        let mut disks = DiskMounts::default();
        let source = RootfsSource::Directory(PathBuf::from("/img"));
        prepare(&mut ops, &mut disks, &paths(sys.path()), "c", &source).unwrap();
        assert_eq!(
            ops.log,
            ["mount overlay overlay /run/vpod/containers/c/rootfs lowerdir=/img,upperdir=/run/vpod/containers/c/upper,workdir=/run/vpod/containers/c/work"]
        );
    }
}

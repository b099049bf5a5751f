//! The launcher's half of the VMM's jail (the VMM's half is `vpod_vmm::jail`): the pod's
//! user, and the files that user needs before the VMM confines itself. The VMM gets its
//! writable disks as descriptors opened here, makes its sockets and console file in a
//! directory that user owns (`<pod>/vm/`), and mounts its root on `<pod>/jail/`, which the
//! host sees empty.

use std::io;
use std::path::{Path, PathBuf};

/// Where the jailed VMM runs as: a range of host uids, one per pod (its gid the same
/// number). The range is the host's to reserve: no account, file or other service may use
/// it. The default sits above systemd's ranges for containers (up to 1879048191) and below
/// 2^31.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailUsers {
    pub first_uid: u32,
    pub count: u32,
}

/// The first uid of the default range.
pub const DEFAULT_FIRST_UID: u32 = 2_000_000_000;
/// The default range's size: two pods of a node share a uid with odds of about n^2/2e8.
pub const DEFAULT_UID_COUNT: u32 = 100_000_000;

impl Default for JailUsers {
    fn default() -> Self {
        JailUsers {
            first_uid: DEFAULT_FIRST_UID,
            count: DEFAULT_UID_COUNT,
        }
    }
}

impl JailUsers {
    /// The uid of pod `id`: the same for the same id (a restarted runtime finds the same),
    /// spread over the range by FNV-1a. Two pods that happen to share one still see nothing
    /// of each other: each VMM has its own PID and mount namespaces.
    pub fn uid_of(&self, id: &str) -> u32 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in id.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let count = u64::from(self.count.max(1));
        self.first_uid.saturating_add((hash % count) as u32)
    }
}

/// One VMM's jail: its root's mount point and its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmmJail {
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

impl VmmJail {
    /// The jail of pod `id`, whose directory is `pod_dir`.
    pub fn for_pod(users: &JailUsers, id: &str, pod_dir: &Path) -> VmmJail {
        let uid = users.uid_of(id);
        VmmJail {
            root: pod_dir.join(JAIL_ROOT),
            uid,
            gid: uid,
        }
    }

    /// Makes the root's mount point, gives the jail's user `vm_dir` (only that user and
    /// root may enter it) and the backends' sockets it connects to.
    pub fn prepare(&self, vm_dir: &Path, fs_sockets: &[&Path]) -> io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        std::os::unix::fs::chown(vm_dir, Some(self.uid), Some(self.gid))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(vm_dir, std::fs::Permissions::from_mode(0o700))?;
        for socket in fs_sockets {
            std::os::unix::fs::chown(socket, Some(self.uid), Some(self.gid))?;
        }
        Ok(())
    }
}

/// The jail root's mount point in the pod's directory.
pub const JAIL_ROOT: &str = "jail";
/// The VMM's own directory in the pod's directory: its sockets and console file.
pub const VM_DIR: &str = "vm";

/// The VMM's directory of the pod whose directory is `pod_dir`.
pub fn vm_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join(VM_DIR)
}

/// The pod's vsock socket: host clients connect and send `CONNECT <port>`.
pub fn vsock_socket(pod_dir: &Path) -> PathBuf {
    vm_dir(pod_dir).join("vsock.sock")
}

/// The pod VMM's control socket.
pub fn api_socket(pod_dir: &Path) -> PathBuf {
    vm_dir(pod_dir).join("api.sock")
}

/// The guest's serial console, as the VMM writes it.
pub fn console_log(pod_dir: &Path) -> PathBuf {
    vm_dir(pod_dir).join("console.log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_s_uid_is_stable_and_inside_the_range() {
        let users = JailUsers::default();
        let uid = users.uid_of("pod-1");
        assert_eq!(uid, users.uid_of("pod-1"));
        assert_ne!(uid, users.uid_of("pod-2"));
        for id in ["a", "pod-1", "0123456789abcdef0123456789abcdef"] {
            let uid = users.uid_of(id);
            assert!((DEFAULT_FIRST_UID..DEFAULT_FIRST_UID + DEFAULT_UID_COUNT).contains(&uid));
        }
        let one = JailUsers {
            first_uid: 70_000,
            count: 1,
        };
        assert_eq!((one.uid_of("x"), one.uid_of("y")), (70_000, 70_000));
    }

    #[test]
    fn preparing_gives_the_vm_directory_and_sockets_to_the_pod_s_user() {
        let dir = tempfile::tempdir().expect("temp dir");
        let vm = vm_dir(dir.path());
        std::fs::create_dir(&vm).expect("vm dir");
        let socket = dir.path().join("fs.sock");
        std::fs::write(&socket, b"").expect("socket stand-in");
        let jail = VmmJail::for_pod(&JailUsers::default(), "p1", dir.path());
        jail.prepare(&vm, &[&socket]).expect("prepare");
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&vm).expect("vm");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (jail.uid, jail.gid, 0o700)
        );
        assert_eq!(std::fs::metadata(&socket).expect("socket").uid(), jail.uid);
        assert!(jail.root.is_dir() && jail.root.ends_with(JAIL_ROOT));
    }
}

//! The VMM's side of the jail, in order: namespaces, the new root, descriptors, limits,
//! then the user and capabilities. Runs in the first process of the new PID namespace,
//! before any thread starts.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use vpod_proto::vmm::{JailConfig, JAILED_VMM_NAME};

use super::plan::{target_in, JailPlan, TUN_DEVICE};
use super::{sys, JailError};

/// Size and inode limits of the jail's root: it holds only mount points and device nodes.
const ROOT_TMPFS_OPTIONS: &str = "mode=0755,size=1m,nr_inodes=1024";
/// The jail's host name (its own UTS namespace).
const HOSTNAME: &str = "vpod-vmm";

/// Confines this process as `jail` and `plan` say; `alive` is the keeper's pipe.
pub fn confine(jail: &JailConfig, plan: &JailPlan, alive: OwnedFd) -> Result<(), JailError> {
    let step = |what: &'static str| move |e| JailError::Step(what, e);
    // Queued, not lost, until the event loop's signalfd reads them: the first process of a
    // PID namespace ignores signals it neither handles nor blocks.
    sys::block_signals(&super::keeper::FORWARDED).map_err(step("blocking signals"))?;
    watch_keeper(&alive)?;
    sys::set_process_name(JAILED_VMM_NAME).map_err(step("naming the process"))?;
    // The network namespace named, or one of its own, empty, unless it opens a tap by name
    // (in the one it was started in): taps come as descriptors, and its sockets are unix
    // sockets on paths.
    let mut namespaces = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
    if let Some(path) = &jail.netns {
        let netns = std::fs::File::open(path).map_err(|e| JailError::Path(path.clone(), e))?;
        sys::setns(&netns, libc::CLONE_NEWNET).map_err(step("joining the network namespace"))?;
    } else if !plan.devices.contains(&TUN_DEVICE) {
        namespaces |= libc::CLONE_NEWNET;
    }
    sys::unshare(namespaces).map_err(step("making namespaces"))?;
    sys::make_mounts_private().map_err(step("making mounts private"))?;
    build_root(jail, plan)?;
    sys::set_hostname(HOSTNAME).map_err(step("setting the host name"))?;
    sys::pivot_root(&jail.root).map_err(step("pivoting into the jail"))?;
    sys::remount_root_read_only().map_err(step("making the jail's root read-only"))?;

    let mut keep: Vec<RawFd> = plan.keep_fds.clone();
    keep.push(alive.as_raw_fd());
    keep.sort_unstable();
    sys::close_other_fds(&keep).map_err(step("closing descriptors"))?;
    sys::set_rlimit(libc::RLIMIT_NOFILE, jail.max_open_files)
        .map_err(step("limiting open files"))?;
    sys::set_rlimit(libc::RLIMIT_CORE, 0).map_err(step("turning core files off"))?;
    sys::set_rlimit(libc::RLIMIT_MEMLOCK, jail.max_locked_bytes)
        .map_err(step("limiting locked memory"))?;

    sys::drop_capability_sets().map_err(step("dropping capabilities"))?;
    sys::become_user(jail.uid, jail.gid).map_err(step("changing user"))?;
    sys::set_no_new_privs().map_err(step("setting no_new_privs"))?;
    // After the user change, which resets both.
    sys::set_not_dumpable().map_err(step("making the process not dumpable"))?;
    watch_keeper(&alive)
}

/// Asks for SIGKILL when the keeper dies, then checks it has not died already (its end of
/// the pipe closed). Asked again after the user change, which clears the request.
fn watch_keeper(alive: &OwnedFd) -> Result<(), JailError> {
    sys::set_parent_death_signal(libc::SIGKILL)
        .map_err(|e| JailError::Step("asking for the keeper's death signal", e))?;
    let mut poll = libc::pollfd {
        fd: alive.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; a zero timeout does not block.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    if n > 0 && poll.revents & libc::POLLHUP != 0 {
        return Err(JailError::KeeperGone);
    }
    Ok(())
}

/// The tmpfs root with every bind at its own path and the device nodes.
fn build_root(jail: &JailConfig, plan: &JailPlan) -> Result<(), JailError> {
    let root = &jail.root;
    sys::mount_tmpfs(root, ROOT_TMPFS_OPTIONS)
        .map_err(|e| JailError::Mount(root.to_path_buf(), e))?;
    for bind in &plan.binds {
        let target = target_in(root, &bind.source);
        make_mount_point(&target, bind.source.is_dir())?;
        sys::bind(&bind.source, &target, bind.read_only)
            .map_err(|e| JailError::Mount(bind.source.clone(), e))?;
    }
    for device in &plan.devices {
        let host = Path::new(device);
        let target = target_in(root, host);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| JailError::Mount(target.clone(), e))?;
        }
        sys::make_char_device(&target, host, jail.uid, jail.gid)
            .map_err(|e| JailError::Device(host.to_path_buf(), e))?;
    }
    Ok(())
}

/// An empty directory or file at `target` for a bind mount, unless one is there already (a
/// bind inside an earlier bound directory lands on the real path).
fn make_mount_point(target: &Path, dir: bool) -> Result<(), JailError> {
    if target.symlink_metadata().is_ok() {
        return Ok(());
    }
    let made = if dir {
        std::fs::create_dir_all(target)
    } else {
        target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::File::create(target).map(drop))
    };
    made.map_err(|e| JailError::Mount(target.to_path_buf(), e))
}

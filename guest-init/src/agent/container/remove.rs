//! RemoveContainer: kill what still runs, unmount the root, remove the cgroup.

use std::time::Duration;

use super::{ContainerError, ContainerManager, Phase};
use crate::agent::block_device;
use crate::agent::rootfs;

/// How long the container's init may take to die after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a disk's filesystem may take to be written back and unmounted once the last
/// container that had it mounted is gone.
const UNMOUNT_WAIT: Duration = Duration::from_secs(10);

impl ContainerManager {
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        match container.phase() {
            Phase::Starting => {
                return Err(ContainerError::WrongState {
                    id: id.to_string(),
                    state: "starting",
                    wanted: "created, running or exited",
                })
            }
            Phase::Running { pid, .. } => {
                // Killing a PID namespace's init kills everything in it, exec'd processes too.
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = tokio::time::timeout(KILL_TIMEOUT, self.wait(id)).await;
            }
            Phase::Created | Phase::Exited { .. } => {}
        }
        // Its processes are gone: what they left dirty goes to the host before the host
        // detaches the disks.
        for device in &container.spec.devices {
            if device.filesystem.is_some() {
                // The host detaches the disk once no container names it: the filesystem
                // must be written back and unmounted by then (its last mount goes with the
                // last namespace that had it).
                let shared = self.table().values().any(|other| {
                    other.spec.id != container.spec.id
                        && other.spec.devices.iter().any(|d| d.serial == device.serial)
                });
                if !shared && !block_device::wait_unmounted(&device.node, UNMOUNT_WAIT).await {
                    eprintln!(
                        "vpod-init: {} is still mounted after {UNMOUNT_WAIT:?}",
                        device.node.display()
                    );
                }
            }
            block_device::flush(&device.node);
        }
        container.stdio.finish();
        container.stdin.lock().await.take();
        self.table().remove(id);
        {
            let mut state = self.mount_state();
            let state = &mut *state;
            rootfs::release(state.ops.as_mut(), &mut state.disks, &container.rootfs)
                .map_err(|e| ContainerError::Rootfs(id.to_string(), e))?;
        }
        if let Some(group) = &container.cgroup {
            // What its main process left running (its own PID namespace's init takes all
            // with it; the pod's shared namespace does not) goes now.
            self.cgroups.kill_all(group);
            // The last processes may take a moment to leave the group after they were reaped.
            let mut attempts = 0;
            loop {
                match self.cgroups.remove(group) {
                    Ok(()) => break,
                    Err(_) if attempts < 50 => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => return Err(ContainerError::Cgroup(id.to_string(), e)),
                }
            }
        }
        Ok(())
    }
}

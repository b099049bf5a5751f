//! CreateContainer: mount the root filesystem and create the cgroup; nothing runs yet.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Container, ContainerError, ContainerManager, Phase};
use crate::agent::rootfs;
use crate::agent::spec::ContainerSpec;
use crate::agent::stdio::{StdioBuffer, RING_CAPACITY};

impl ContainerManager {
    pub fn create(&self, spec: ContainerSpec) -> Result<(), ContainerError> {
        let id = spec.id.clone();
        // Reserve the id first so two creates of one id cannot both mount.
        {
            let table = self.table();
            let mut reserved = self.reserved();
            if table.contains_key(&id) || !reserved.insert(id.clone()) {
                return Err(ContainerError::AlreadyExists(id));
            }
        }
        let result = self.prepare(spec);
        let mut table = self.table();
        self.reserved().remove(&id);
        table.insert(id, Arc::new(result?));
        Ok(())
    }

    fn prepare(&self, spec: ContainerSpec) -> Result<Container, ContainerError> {
        let id = spec.id.clone();
        let prepared = {
            let mut state = self.mount_state();
            let state = &mut *state;
            rootfs::prepare(
                state.ops.as_mut(),
                &mut state.disks,
                &self.paths,
                &id,
                &spec.rootfs,
            )
            .map_err(|e| ContainerError::Rootfs(id.clone(), e))?
        };
        let cgroup = match self.cgroups.create(&id, &spec.limits) {
            Ok(cgroup) => cgroup,
            Err(e) => {
                let mut state = self.mount_state();
                let state = &mut *state;
                let _ = rootfs::release(state.ops.as_mut(), &mut state.disks, &prepared);
                return Err(ContainerError::Cgroup(id, e));
            }
        };
        Ok(Container {
            spec,
            rootfs: prepared,
            cgroup,
            phase: watch::channel(Phase::Created).0,
            stdio: StdioBuffer::new(RING_CAPACITY),
            stdin: tokio::sync::Mutex::new(None),
        })
    }
}

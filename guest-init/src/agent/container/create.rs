//! CreateContainer: mount the root filesystem and create the cgroup; nothing runs yet.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;

use super::{Container, ContainerError, ContainerManager, Phase};
use crate::agent::block_device;
use crate::agent::in_root::RootDir;
use crate::agent::rootfs;
use crate::agent::share;
use crate::agent::spec::ContainerSpec;
use crate::agent::stdio::{StdioBuffer, RING_CAPACITY};
use crate::agent::users::{self, UserRequest};

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

    fn prepare(&self, mut spec: ContainerSpec) -> Result<Container, ContainerError> {
        let id = spec.id.clone();
        for mount in spec.mounts.iter().filter(|m| m.is_bind()) {
            share::check_bind_source(&mount.source)
                .map_err(|e| ContainerError::Share(id.clone(), e))?;
        }
        for device in &mut spec.devices {
            device.node = block_device::prepare(&self.paths, device)
                .map_err(|e| ContainerError::BlockDevice(id.clone(), e))?;
        }
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
        if let Err(e) = fill_root(&prepared.rootfs, &mut spec) {
            let mut state = self.mount_state();
            let state = &mut *state;
            let _ = rootfs::release(state.ops.as_mut(), &mut state.disks, &prepared);
            return Err(e);
        }
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
            terminal: std::sync::OnceLock::new(),
        })
    }
}

/// Writes the request's files into the assembled root, then resolves the user against the
/// root's /etc/passwd and /etc/group (which those files may have provided).
fn fill_root(root: &Path, spec: &mut ContainerSpec) -> Result<(), ContainerError> {
    let id = spec.id.clone();
    let dir = RootDir::open(root).map_err(|e| ContainerError::Files(id.clone(), e))?;
    for file in &spec.files {
        dir.write_file(&file.path, &file.content, file.mode)
            .map_err(|e| ContainerError::Files(id.clone(), e))?;
    }
    let process = &mut spec.process;
    let request = UserRequest {
        uid: process.uid,
        gid: process.gid,
        additional_gids: process.additional_gids.clone(),
        name: spec.user_name.clone(),
        group: spec.group_name.clone(),
    };
    let identity = users::resolve(&dir, &request).map_err(|e| ContainerError::User(id, e))?;
    process.uid = identity.uid;
    process.gid = identity.gid;
    process.additional_gids = identity.additional_gids;
    // runc's rule: HOME from passwd (or "/") unless the environment sets it.
    if !process.env.iter().any(|e| e.starts_with("HOME=")) {
        let home = identity.home.unwrap_or_else(|| "/".to_string());
        process.env.push(format!("HOME={home}"));
    }
    Ok(())
}

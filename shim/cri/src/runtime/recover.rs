//! Starting over after a restart or a crash: re-attach to the pods that still run, report
//! the ones whose VM died, and undo what an interrupted RunPodSandbox or CreateContainer
//! left (a VMM process, a sandbox directory with its disk and sockets, a record).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::RwLock;
use vpod_sandbox::Sandbox;

use super::pod::remove_pod_cgroup;
use super::{container_name_key, lock, pod_name_key, Container, Pod, Runtime, RuntimeError};
use crate::ids::is_runtime_id;
use crate::logformat::now_ns;
use crate::state::{ContainerPhase, PodPhase};

impl Runtime {
    /// Kills every VMM and virtiofsd of the sandbox directory `id`, unmounts its volumes
    /// and removes the directory.
    fn destroy_sandbox_leftovers(&self, id: &str) {
        if let Err(e) = vpod_sandbox::destroy_leftovers(&self.root, id) {
            tracing::warn!(pod = %id, error = %vpod_proto::error_chain(&e), "cleaning up a leftover sandbox");
        }
    }

    pub(super) async fn recover(self: &Arc<Self>) -> Result<(), RuntimeError> {
        self.state.clean_tmp()?;
        let (pods, bad) = self.state.pods()?;
        for path in bad {
            tracing::warn!(path = %path.display(), "ignoring an unreadable pod record");
        }
        let mut known = HashSet::new();
        for mut record in pods {
            known.insert(record.id.clone());
            match record.phase {
                PodPhase::Creating => {
                    // RunPodSandbox was interrupted: nothing of it stays.
                    tracing::info!(pod = %record.id, "undoing an interrupted RunPodSandbox");
                    self.destroy_sandbox_leftovers(&record.id);
                    self.tear_down_network(&record.id).await?;
                    remove_pod_cgroup(&record.id, record.cgroup.as_deref()).await;
                    self.state.remove_pod(&record.id)?;
                    known.remove(&record.id);
                    continue;
                }
                PodPhase::Ready => {}
                PodPhase::NotReady => {
                    self.destroy_sandbox_leftovers(&record.id);
                    // A stop interrupted between the VM and the network.
                    self.tear_down_network_logged(&record.id).await;
                    record.network = None;
                    if remove_pod_cgroup(&record.id, record.cgroup.as_deref()).await {
                        record.cgroup = None;
                    }
                }
            }
            let sandbox = if record.phase == PodPhase::Ready {
                match Sandbox::open(&self.root, &record.id, self.rpc_timeout).await {
                    Ok(sandbox) => {
                        tracing::info!(pod = %record.id, vmm_pid = sandbox.vmm_pid(), "re-attached to a running pod");
                        Some(sandbox)
                    }
                    Err(e) => {
                        tracing::warn!(pod = %record.id, error = %super::error_chain(&e), "the pod's VM is gone");
                        self.destroy_sandbox_leftovers(&record.id);
                        self.tear_down_network_logged(&record.id).await;
                        record.network = None;
                        if remove_pod_cgroup(&record.id, record.cgroup.as_deref()).await {
                            record.cgroup = None;
                        }
                        record.phase = PodPhase::NotReady;
                        record.reason = "VmExited".into();
                        self.state.write_pod(&record)?;
                        None
                    }
                }
            } else {
                None
            };
            self.reserve_name(pod_name_key(&record.settings));
            lock(&self.pods).insert(
                record.id.clone(),
                Arc::new(Pod {
                    id: record.id.clone(),
                    record: Mutex::new(record),
                    sandbox: RwLock::new(sandbox),
                }),
            );
        }
        self.remove_orphan_sandboxes(&known);
        self.recover_containers().await
    }

    /// Sandbox directories named like ours with no pod record (a crash between making the
    /// directory and... nothing else: the record comes first; kept as a safety net).
    fn remove_orphan_sandboxes(&self, known: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(self.root.join("sandboxes")) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_runtime_id(&name) && !known.contains(&name) {
                tracing::info!(pod = %name, "removing an orphaned sandbox directory");
                self.destroy_sandbox_leftovers(&name);
            }
        }
    }

    async fn recover_containers(self: &Arc<Self>) -> Result<(), RuntimeError> {
        let (containers, bad) = self.state.containers()?;
        for path in bad {
            tracing::warn!(path = %path.display(), "ignoring an unreadable container record");
        }
        for mut record in containers {
            let pod = lock(&self.pods).get(&record.pod_id).cloned();
            let Some(pod) = pod else {
                tracing::info!(container = %record.id, "dropping a container of a removed pod");
                self.state.remove_container(&record.id)?;
                self.state.remove_log_offset(&record.id)?;
                continue;
            };
            if record.phase == ContainerPhase::Creating {
                tracing::info!(container = %record.id, "undoing an interrupted CreateContainer");
                let mut slot = pod.sandbox.write().await;
                if let Some(sandbox) = slot.as_mut() {
                    let undone = if sandbox.containers().contains(&record.id) {
                        sandbox.remove_container(&record.id).await
                    } else {
                        sandbox.discard_unrecorded_container(&record.id).await
                    };
                    if let Err(e) = undone {
                        tracing::warn!(container = %record.id, error = %super::error_chain(&e), "undoing CreateContainer");
                    }
                }
                self.state.remove_container(&record.id)?;
                self.state.remove_log_offset(&record.id)?;
                continue;
            }
            let pod_running = pod.sandbox.read().await.is_some();
            if !pod_running && record.phase != ContainerPhase::Exited {
                if record.phase == ContainerPhase::Running {
                    record.exit_code = 137;
                    record.finished_at_ns = now_ns();
                }
                record.phase = ContainerPhase::Exited;
                record.reason = "VmExited".into();
                self.state.write_container(&record)?;
            }
            self.reserve_name(container_name_key(&record.pod_id, &record.settings));
            let running = record.phase == ContainerPhase::Running;
            let log = if running {
                super::container::open_log(&record.log_path).unwrap_or(None)
            } else {
                None
            };
            let container = Arc::new(Container {
                id: record.id.clone(),
                record: Mutex::new(record),
                log: Mutex::new(log),
                follower: Mutex::new(None),
            });
            lock(&self.containers).insert(container.id.clone(), container.clone());
            if running {
                tracing::info!(container = %container.id, "resuming the container's log");
                self.spawn_follower(container, pod.id.clone());
            }
        }
        Ok(())
    }
}

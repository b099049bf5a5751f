//! The pod's shared PID namespace (CRI `namespace_options.pid = POD`, Kubernetes'
//! shareProcessNamespace): a holder process is its init and only waits, as a pause
//! container is under containerd, and each container that shares it is started inside it
//! by a helper, as an exec is, so that its processes see (and can signal) the others'.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use super::reaper::Reaper;
use super::spawn::{
    child_error, clone_process, open_cgroup_procs, pipe, read_record, run_step, ChildContext,
    ContainerLaunch, ProcessPlan, SpawnError, Spawned, CLONE_GRANDCHILD, SETNS, TAG_ERROR, TAG_PID,
};

/// The holder of the pod's PID namespace and a descriptor of that namespace.
pub struct PodPidNamespace {
    holder: libc::pid_t,
    namespace: OwnedFd,
    _exit: tokio::sync::oneshot::Receiver<super::reaper::ExitStatus>,
}

impl PodPidNamespace {
    /// Starts the holder: PID 1 of a new namespace, waiting for signals forever (as a
    /// namespace's init it ignores all but SIGKILL).
    pub fn create(reaper: &Reaper) -> Result<Self, SpawnError> {
        let mut waiters = reaper.lock();
        match clone_process(libc::CLONE_NEWPID as libc::c_ulong)? {
            None => {
                // It never execs, so close-on-exec never closes what the agent had open:
                // a container's stdin pipe held here would never reach end of file.
                close_inherited_descriptors();
                loop {
                    // SAFETY: pause has no arguments; this child touches no memory.
                    unsafe { libc::pause() };
                }
            }
            Some(holder) => {
                let exit = waiters.watch(holder);
                drop(waiters);
                let path = format!("/proc/{holder}/ns/pid");
                let namespace = File::open(&path)
                    .map(OwnedFd::from)
                    .map_err(|e| SpawnError::Open(path, e))?;
                Ok(Self {
                    holder,
                    namespace,
                    _exit: exit,
                })
            }
        }
    }

    /// Whether the holder still runs (a namespace whose init died takes no new process).
    pub fn alive(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.holder)).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    /// The holder's pid in the agent's namespace.
    pub fn holder(&self) -> libc::pid_t {
        self.holder
    }
}

/// Closes every descriptor but stdin, stdout and stderr, without allocating (this runs in
/// a child of a multi-threaded process).
fn close_inherited_descriptors() {
    // SAFETY: close_range takes integers and only closes this process's descriptors.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc != 0 {
        // Kernels before 5.9: one by one, up to the limit.
        // SAFETY: as above, for close and getdtablesize.
        let limit = unsafe { libc::getdtablesize() };
        for fd in 3..limit {
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
    }
}

/// Starts a container's init inside the pod's PID namespace (with its own mount, UTS and
/// IPC namespaces): a helper enters the namespace and clones the init with CLONE_PARENT, so
/// the agent is its parent and reaps it.
pub fn spawn_in_pod(
    reaper: &Reaper,
    launch: ContainerLaunch<'_>,
    pod: &PodPidNamespace,
) -> Result<Spawned, SpawnError> {
    let plan = ProcessPlan::new(launch.process)?;
    let cgroup = open_cgroup_procs(launch.cgroup)?;
    let (report_read, report_write) = pipe()?;
    let mut report_read = File::from(report_read);
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_PARENT;
    let mut waiters = reaper.lock();
    match clone_process(0)? {
        None => {
            let child = ChildContext {
                report: report_write.as_raw_fd(),
            };
            child.reset_signal_mask();
            // SAFETY: setns takes a descriptor this process owns and a namespace type.
            if unsafe { libc::setns(pod.namespace.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
                child.fail_stage(SETNS);
            }
            match clone_process(flags as libc::c_ulong) {
                Ok(None) => {
                    if let Some(cgroup) = &cgroup {
                        child.join_cgroup(cgroup.as_raw_fd());
                    }
                    let mut root = -1;
                    for (i, step) in launch.steps.iter().enumerate() {
                        if let Err(errno) = run_step(step, &mut root) {
                            child.fail(i as u32, errno);
                        }
                    }
                    child.become_process(&plan, &launch.stdio)
                }
                Ok(Some(pid)) => {
                    child.write_record(TAG_PID, 0, pid);
                    child.exit(0)
                }
                Err(_) => child.fail_stage(CLONE_GRANDCHILD),
            }
        }
        Some(helper) => {
            let _helper_exit = waiters.watch(helper);
            drop(report_write);
            drop(launch.stdio);
            // Still under the reaper's lock: the init may end before we register it.
            let spawned = match read_record(&mut report_read) {
                Some((TAG_PID, _, pid)) => Spawned {
                    pid,
                    exit: waiters.watch(pid),
                },
                Some((_, stage, errno)) => return Err(child_error(launch.steps, stage, errno)),
                None => return Err(SpawnError::LostHelper),
            };
            drop(waiters);
            match read_record(&mut report_read) {
                Some((TAG_ERROR, stage, errno)) => Err(child_error(launch.steps, stage, errno)),
                _ => Ok(spawned),
            }
        }
    }
}

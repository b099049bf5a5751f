//! One thread per vCPU, run as an explicit state machine driven by messages.
//!
//! ```text
//!            Run                 Exit (or the VMM gone)
//!  Paused ---------> Running ------------------------> Exited
//!    ^  <------------   |  guest reset / power-off / fault: report, then Paused
//!    |      Pause       |
//!    +------------------+
//! ```
//!
//! A vCPU blocked inside `KVM_RUN` (a guest halted with interrupts off never exits) is
//! reached by a signal: its handler sets `immediate_exit` in the vCPU's `kvm_run`, so the
//! ioctl returns `EINTR` now or, if the signal raced ahead of it, at the next entry. The
//! thread then reads its messages.
//!
//! A thread told to pause answers on the acknowledgement channel once it is out of the
//! guest ([`VcpuPauser`]), so the VMM can change guest memory under a stopped guest.
//!
//! With seccomp on, each thread installs the vCPU filter ([`crate::seccomp`]) before it waits
//! for its first message, so nothing the guest drives runs unfiltered.

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_run, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::Bus;
use crate::lifecycle::{GuestEvents, StopReason};
use crate::seccomp::{self, BpfProgram, ThreadKind};

/// Stack of each vCPU thread: exits are handled with shallow calls.
const VCPU_STACK_SIZE: usize = 256 * 1024;

/// Errors around vCPU threads.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot install the vCPU kick signal handler")]
    SignalHandler(#[source] vmm_sys_util::errno::Error),
    #[error("cannot start the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
}

/// What a vCPU thread can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuMessage {
    Run,
    Pause,
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VcpuState {
    Paused,
    Running,
    Exited,
}

/// The signal that kicks vCPUs out of `KVM_RUN`.
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

thread_local! {
    /// This thread's `kvm_run` mapping, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: c_int, _: *mut siginfo_t, _: *mut c_void) {
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is set by this very thread to its vCPU's kvm_run mapping and
            // cleared before that vCPU is dropped, so it is valid here; a volatile byte
            // store is all the handler does.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler; call once before starting vCPUs.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), handle_kick).map_err(VcpuError::SignalHandler)
}

/// A vCPU and what it dispatches exits to.
pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    pub pio_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub events: Arc<GuestEvents>,
    /// The vCPU seccomp filter the thread installs first, unless seccomp is off.
    pub seccomp: Option<Arc<BpfProgram>>,
    /// Where the thread says, with its id, that it has paused on a `Pause` message.
    pub paused: Sender<u8>,
}

/// The VMM's end of a vCPU thread.
pub struct VcpuHandle {
    id: u8,
    sender: Sender<VcpuMessage>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// Sends `message` and kicks the vCPU so that it reads it even from inside `KVM_RUN`.
    pub fn send(&self, message: VcpuMessage) {
        // A closed channel means the thread already ended: nothing to tell it.
        let _ = self.sender.send(message);
        if message != VcpuMessage::Run {
            if let Some(thread) = &self.thread {
                let _ = thread.kill(kick_signal());
            }
        }
    }

    /// Tells the thread to exit and waits for it.
    pub fn exit_and_join(&mut self) {
        self.send(VcpuMessage::Exit);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// What another part of the VMM needs to pause and resume this vCPU; `None` once its
    /// thread is gone.
    pub fn remote(&self) -> Option<VcpuRemote> {
        Some(VcpuRemote {
            sender: self.sender.clone(),
            thread: self.thread.as_ref()?.as_pthread_t(),
        })
    }
}

/// A vCPU's message channel and thread, for [`VcpuPauser`].
pub struct VcpuRemote {
    sender: Sender<VcpuMessage>,
    thread: libc::pthread_t,
}

/// Stops every vCPU out of the guest and starts them again: for work on guest memory that
/// must not race a running guest.
pub struct VcpuPauser {
    vcpus: Vec<VcpuRemote>,
    acks: Receiver<u8>,
}

impl VcpuPauser {
    pub fn new(vcpus: Vec<VcpuRemote>, acks: Receiver<u8>) -> Self {
        VcpuPauser { vcpus, acks }
    }

    /// Tells every vCPU to pause and waits up to `timeout` until each has; false if one
    /// did not (its thread has ended, say), after which the caller resumes them.
    pub fn pause_all(&self, timeout: Duration) -> bool {
        while self.acks.try_recv().is_ok() {}
        for vcpu in &self.vcpus {
            if vcpu.sender.send(VcpuMessage::Pause).is_err() {
                return false;
            }
            // SAFETY: the thread is a vCPU thread of this process that has not been joined
            // (vCPUs are joined only after the event loop, where this runs, has ended); the
            // signal is the kick, whose handler only sets immediate_exit.
            unsafe { libc::pthread_kill(vcpu.thread, kick_signal()) };
        }
        let deadline = Instant::now() + timeout;
        for _ in &self.vcpus {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acks.recv_timeout(left) {
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return false,
            }
        }
        true
    }

    /// Lets every vCPU run again.
    pub fn resume_all(&self) {
        for vcpu in &self.vcpus {
            let _ = vcpu.sender.send(VcpuMessage::Run);
        }
    }
}

impl Vcpu {
    /// Starts the vCPU's thread, paused.
    pub fn start(self) -> Result<VcpuHandle, VcpuError> {
        let id = self.id;
        let (sender, receiver) = channel();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .stack_size(VCPU_STACK_SIZE)
            .spawn(move || self.run_thread(receiver))
            .map_err(|e| VcpuError::Spawn(id, e))?;
        Ok(VcpuHandle {
            id,
            sender,
            thread: Some(thread),
        })
    }

    fn run_thread(mut self, messages: Receiver<VcpuMessage>) {
        if let Some(filter) = self.seccomp.take() {
            if let Err(e) = seccomp::apply(ThreadKind::Vcpu, &filter) {
                let why = format!("vCPU {}: {}", self.id, vpod_proto::error_chain(&e));
                self.events.request_stop(StopReason::VcpuFailed(why));
                return;
            }
        }
        let run: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|cell| cell.set(run));
        let mut state = VcpuState::Paused;
        while state != VcpuState::Exited {
            state = match state {
                VcpuState::Paused => match messages.recv() {
                    Ok(VcpuMessage::Run) => VcpuState::Running,
                    Ok(VcpuMessage::Pause) => {
                        let _ = self.paused.send(self.id);
                        VcpuState::Paused
                    }
                    Ok(VcpuMessage::Exit) | Err(_) => VcpuState::Exited,
                },
                VcpuState::Running => match messages.try_recv() {
                    Ok(VcpuMessage::Pause) => {
                        let _ = self.paused.send(self.id);
                        VcpuState::Paused
                    }
                    Ok(VcpuMessage::Exit) | Err(TryRecvError::Disconnected) => VcpuState::Exited,
                    Ok(VcpuMessage::Run) | Err(TryRecvError::Empty) => self.run_once(),
                },
                VcpuState::Exited => VcpuState::Exited,
            };
        }
        KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
    }

    /// Enters the guest once and handles the exit.
    fn run_once(&mut self) -> VcpuState {
        let Vcpu {
            id,
            fd,
            pio_bus,
            mmio_bus,
            events,
            seccomp: _,
            paused: _,
        } = self;
        let failure = |what: String| {
            events.request_stop(StopReason::VcpuFailed(format!("vCPU {id}: {what}")));
            VcpuState::Paused
        };
        match fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !pio_bus.read(u64::from(port), data) {
                    data.fill(0xff);
                }
                VcpuState::Running
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                #[cfg(feature = "seccomp-probe")]
                if port == seccomp::PROBE_PORT {
                    seccomp::probe_denied_syscall();
                }
                pio_bus.write(u64::from(port), data);
                VcpuState::Running
            }
            Ok(VcpuExit::MmioRead(address, data)) => {
                if !mmio_bus.read(address, data) {
                    data.fill(0xff);
                }
                VcpuState::Running
            }
            Ok(VcpuExit::MmioWrite(address, data)) => {
                mmio_bus.write(address, data);
                VcpuState::Running
            }
            // A triple fault: what a PC does next is reset.
            Ok(VcpuExit::Shutdown) => {
                events.request_stop(StopReason::Reset);
                VcpuState::Paused
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                let reason = match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => StopReason::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => StopReason::Reset,
                    _ => StopReason::Reset,
                };
                events.request_stop(reason);
                VcpuState::Paused
            }
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::IrqWindowOpen) | Ok(VcpuExit::Intr) => {
                VcpuState::Running
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => failure(format!(
                "KVM could not enter the guest (reason {reason:#x}, cpu {cpu})"
            )),
            Ok(VcpuExit::InternalError) => failure("KVM internal error".to_string()),
            Ok(other) => failure(format!("unexpected exit {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
                VcpuState::Running
            }
            Err(e) => failure(format!("KVM_RUN failed: {e}")),
        }
    }
}

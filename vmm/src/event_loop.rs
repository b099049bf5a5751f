//! The device event loop: one epoll on the main thread for queue notifications
//! (ioeventfds), lifecycle changes reported by vCPUs and devices, and termination signals.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::api::ApiServer;
use crate::devices::virtio::vsock::VsockHostSide;
use crate::devices::virtio::MmioTransport;
use crate::lifecycle::{GuestEvents, StopReason};

/// How long a panicking kernel may keep printing before the VM is stopped anyway (with
/// `panic=-1` it resets well before that).
const PANIC_GRACE: Duration = Duration::from_millis(500);

const TOKEN_LIFECYCLE: u64 = 0;
const TOKEN_SIGNAL: u64 = 1;
const TOKEN_VSOCK: u64 = 2;
const TOKEN_API: u64 = 3;
const TOKEN_FIRST_QUEUE: u64 = 4;

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot set up epoll")]
    Epoll(#[source] io::Error),
    #[error("cannot block the termination signals")]
    SignalMask(#[source] io::Error),
    #[error("cannot create the signal file descriptor")]
    SignalFd(#[source] io::Error),
    #[error("cannot duplicate a queue eventfd")]
    EventFd(#[source] io::Error),
}

/// SIGTERM and SIGINT, blocked in every thread and read from a signalfd instead.
pub struct TerminationSignals {
    fd: OwnedFd,
}

impl TerminationSignals {
    /// Blocks SIGTERM and SIGINT for this thread and every thread it starts afterwards; call
    /// before starting any thread.
    pub fn block() -> Result<Self, EventLoopError> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `mask` is a valid sigset_t owned by this frame.
        unsafe {
            libc::sigemptyset(&mut mask);
            libc::sigaddset(&mut mask, libc::SIGTERM);
            libc::sigaddset(&mut mask, libc::SIGINT);
        }
        // SAFETY: `mask` is initialised; a null old-mask pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(EventLoopError::SignalMask(io::Error::from_raw_os_error(rc)));
        }
        // SAFETY: `mask` is initialised; the return value is checked.
        let fd = unsafe { libc::signalfd(-1, &mask, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(EventLoopError::SignalFd(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TerminationSignals { fd })
    }

    /// The pending signal's number, if any.
    fn read(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: the buffer is a valid, writable signalfd_siginfo of `size` bytes.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                std::ptr::addr_of_mut!(info).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

struct QueueSource {
    event: EventFd,
    transport: Arc<Mutex<MmioTransport>>,
    queue: usize,
}

/// The loop and what it watches.
pub struct EventLoop {
    epoll: Epoll,
    events: Arc<GuestEvents>,
    signals: TerminationSignals,
    queues: Vec<QueueSource>,
    vsock: Option<VsockHostSide>,
    api: Option<ApiServer>,
}

impl EventLoop {
    pub fn new(
        events: Arc<GuestEvents>,
        signals: TerminationSignals,
    ) -> Result<Self, EventLoopError> {
        let epoll = Epoll::new().map_err(EventLoopError::Epoll)?;
        let event_loop = EventLoop {
            epoll,
            events,
            signals,
            queues: Vec::new(),
            vsock: None,
            api: None,
        };
        event_loop.watch(event_loop.events.wake_fd().as_raw_fd(), TOKEN_LIFECYCLE)?;
        event_loop.watch(event_loop.signals.fd.as_raw_fd(), TOKEN_SIGNAL)?;
        Ok(event_loop)
    }

    fn watch(&self, fd: RawFd, token: u64) -> Result<(), EventLoopError> {
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(EventLoopError::Epoll)
    }

    /// Watches every queue eventfd of `transport`.
    pub fn add_transport(
        &mut self,
        transport: Arc<Mutex<MmioTransport>>,
    ) -> Result<(), EventLoopError> {
        let events: Vec<EventFd> = transport
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue_events()
            .iter()
            .map(|e| e.try_clone().map_err(EventLoopError::EventFd))
            .collect::<Result<_, _>>()?;
        for (queue, event) in events.into_iter().enumerate() {
            let token = TOKEN_FIRST_QUEUE + self.queues.len() as u64;
            self.watch(event.as_raw_fd(), token)?;
            self.queues.push(QueueSource {
                event,
                transport: transport.clone(),
                queue,
            });
        }
        Ok(())
    }

    /// Watches the vsock device's host sockets.
    pub fn add_vsock(&mut self, vsock: VsockHostSide) -> Result<(), EventLoopError> {
        self.watch(vsock.fd(), TOKEN_VSOCK)?;
        self.vsock = Some(vsock);
        Ok(())
    }

    /// Serves the control socket.
    pub fn add_api(&mut self, api: ApiServer) -> Result<(), EventLoopError> {
        self.watch(api.fd(), TOKEN_API)?;
        self.api = Some(api);
        Ok(())
    }

    /// The earliest moment a timer of the vsock device or the control socket is due.
    fn next_deadline(&self) -> Option<Instant> {
        let vsock = self.vsock.as_ref().and_then(|v| v.next_deadline());
        let api = self.api.as_ref().and_then(|a| a.next_deadline());
        vsock.into_iter().chain(api).min()
    }

    fn expire(&mut self, now: Instant) {
        if let Some(vsock) = &self.vsock {
            vsock.expire(now);
        }
        if let Some(api) = self.api.as_mut() {
            api.expire(now);
        }
    }

    /// Runs until the VM must stop, and says why.
    pub fn run(&mut self) -> StopReason {
        let mut ready = vec![EpollEvent::default(); 8 + self.queues.len()];
        let mut panic_deadline: Option<Instant> = None;
        loop {
            if let Some(reason) = self.events.stop_reason() {
                return reason;
            }
            if self.events.panicked() && panic_deadline.is_none() {
                panic_deadline = Some(Instant::now() + PANIC_GRACE);
            }
            if let Some(deadline) = panic_deadline {
                if deadline <= Instant::now() {
                    return StopReason::Panic;
                }
            }
            let now = Instant::now();
            if self.next_deadline().is_some_and(|d| d <= now) {
                self.expire(now);
                continue;
            }
            let deadline = panic_deadline.into_iter().chain(self.next_deadline()).min();
            let timeout = match deadline {
                // Rounded up, so the loop does not wake just before the deadline.
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(now);
                    (left.as_micros().div_ceil(1000)).clamp(1, i32::MAX as u128) as i32
                }
                None => -1,
            };
            let count = match self.epoll.wait(timeout, &mut ready) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // epoll on valid descriptors does not fail otherwise; stop rather than spin.
                Err(e) => return StopReason::VcpuFailed(format!("epoll failed: {e}")),
            };
            for event in &ready[..count] {
                match event.data() {
                    TOKEN_LIFECYCLE => {
                        let _ = self.events.wake_fd().read();
                    }
                    TOKEN_SIGNAL => {
                        if let Some(signal) = self.signals.read() {
                            self.events.request_stop(StopReason::Signal(signal));
                        }
                    }
                    TOKEN_VSOCK => {
                        if let Some(vsock) = &self.vsock {
                            vsock.process_host_events();
                        }
                    }
                    TOKEN_API => {
                        if let Some(api) = self.api.as_mut() {
                            api.process_events();
                        }
                    }
                    token => {
                        let index = (token - TOKEN_FIRST_QUEUE) as usize;
                        if let Some(source) = self.queues.get(index) {
                            let _ = source.event.read();
                            source
                                .transport
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .process_queue(source.queue);
                        }
                    }
                }
            }
        }
    }
}

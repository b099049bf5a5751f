//! The event loop: one epoll on the main thread, run by rust-vmm's `event-manager`, that knows
//! none of its sources. Each source is a [`Subscriber`] that registers its own descriptors
//! (and a [`DeadlineTimer`] when it has timeouts) in `init`, is called back with `process`
//! when one is ready, and adds or removes descriptors as it goes: every virtio device through
//! its transport (queue notifications, then the device's own sockets and timers, see
//! `devices/virtio/event_handler.rs`), the control socket, and the loop's own
//! [`LifecycleWatch`] (lifecycle changes, termination signals, the panic grace). A new
//! device or API plugs in by implementing [`Subscriber`]; the loop does not change.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberId, SubscriberOps};
use vmm_sys_util::timerfd::TimerFd;

pub use event_manager::{EventOps, EventSet, Events};

use crate::lifecycle::{GuestEvents, StopReason};

/// How long a panicking kernel may keep printing before the VM is stopped anyway (with
/// `panic=-1` it resets well before that).
pub const PANIC_GRACE: Duration = Duration::from_millis(500);

/// Errors of the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot set up epoll")]
    Epoll(#[source] event_manager::Error),
    #[error("cannot watch the descriptors of an event source")]
    Register(#[source] event_manager::Error),
    #[error("cannot block the termination signals")]
    SignalMask(#[source] io::Error),
    #[error("cannot create the signal file descriptor")]
    SignalFd(#[source] io::Error),
    #[error("cannot create a timer")]
    Timer(#[source] io::Error),
}

/// A source of events for the loop: event-manager's `MutEventSubscriber`, with an `init`
/// that can fail. A source that cannot watch its descriptors would leave its device deaf, so
/// [`EventLoop::add`] refuses it and the VM does not start.
pub trait Subscriber: Send {
    /// Registers the source's descriptors.
    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error>;
    /// One of its descriptors is ready.
    fn process(&mut self, events: Events, ops: &mut EventOps);
}

/// A subscriber as event-manager holds it, with the outcome of its `init`.
struct Registered {
    subscriber: Box<dyn Subscriber>,
    init_error: Option<event_manager::Error>,
}

impl MutEventSubscriber for Registered {
    fn init(&mut self, ops: &mut EventOps) {
        self.init_error = self.subscriber.init(ops).err();
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        self.subscriber.process(events, ops);
    }
}

/// A timerfd armed for one deadline at a time: how a subscriber with timeouts (connect
/// timeouts, a graceful stop, the panic grace) gets woken without the loop knowing.
pub struct DeadlineTimer {
    timer: TimerFd,
    armed: Option<Instant>,
}

impl DeadlineTimer {
    pub fn new() -> io::Result<Self> {
        Ok(DeadlineTimer {
            timer: TimerFd::new()?,
            armed: None,
        })
    }

    /// Arms the timer for `deadline` (a past one fires at once), or disarms it for `None`;
    /// nothing to do when that is already so.
    pub fn set(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        if deadline == self.armed {
            return Ok(());
        }
        match deadline {
            // A zero duration would disarm the timer instead.
            Some(deadline) => self.timer.reset(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_nanos(1)),
                None,
            )?,
            None => self.timer.clear()?,
        }
        self.armed = deadline;
        Ok(())
    }

    /// The deadline the timer is armed for.
    pub fn deadline(&self) -> Option<Instant> {
        self.armed
    }

    /// Call when the descriptor was reported ready: disarming also clears the expiry, so the
    /// level-triggered epoll stops reporting it, and never blocks as a read could (the timer
    /// may have been re-armed since epoll saw it fire).
    pub fn fired(&mut self) {
        // Clearing a valid timerfd cannot fail; if it did, the timer would only fire again.
        let _ = self.timer.clear();
        self.armed = None;
    }
}

impl AsRawFd for DeadlineTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }
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

/// The loop's own source: lifecycle notifications (a stop was asked for, the kernel
/// panicked), SIGTERM and SIGINT, and the panic grace that stops a panicking guest which
/// does not reset by itself.
pub struct LifecycleWatch {
    events: Arc<GuestEvents>,
    signals: TerminationSignals,
    panic_grace: DeadlineTimer,
    /// The grace started (it is given once).
    panic_seen: bool,
}

impl LifecycleWatch {
    pub fn new(
        events: Arc<GuestEvents>,
        signals: TerminationSignals,
    ) -> Result<Self, EventLoopError> {
        Ok(LifecycleWatch {
            events,
            signals,
            panic_grace: DeadlineTimer::new().map_err(EventLoopError::Timer)?,
            panic_seen: false,
        })
    }
}

impl Subscriber for LifecycleWatch {
    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        ops.add(Events::new(self.events.wake_fd(), EventSet::IN))?;
        ops.add(Events::new(&self.signals.fd, EventSet::IN))?;
        ops.add(Events::new(&self.panic_grace, EventSet::IN))
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.events.wake_fd().as_raw_fd() {
            let _ = self.events.wake_fd().read();
            if self.events.panicked() && !self.panic_seen {
                self.panic_seen = true;
                let deadline = Instant::now() + PANIC_GRACE;
                if self.panic_grace.set(Some(deadline)).is_err() {
                    // Without a timer there is no grace to give.
                    self.events.request_stop(StopReason::Panic);
                }
            }
        } else if fd == self.signals.fd.as_raw_fd() {
            if let Some(signal) = self.signals.read() {
                self.events.request_stop(StopReason::Signal(signal));
            }
        } else if fd == self.panic_grace.as_raw_fd() {
            self.panic_grace.fired();
            self.events.request_stop(StopReason::Panic);
        }
    }
}

/// The loop and its sources.
pub struct EventLoop {
    manager: EventManager<Registered>,
    events: Arc<GuestEvents>,
}

impl EventLoop {
    /// A loop that watches the lifecycle and `signals`; sources are added with [`Self::add`].
    pub fn new(
        events: Arc<GuestEvents>,
        signals: TerminationSignals,
    ) -> Result<Self, EventLoopError> {
        let mut event_loop = EventLoop {
            manager: EventManager::new().map_err(EventLoopError::Epoll)?,
            events: events.clone(),
        };
        event_loop.add(Box::new(LifecycleWatch::new(events, signals)?))?;
        Ok(event_loop)
    }

    /// Adds a source, which registers its descriptors now.
    pub fn add(&mut self, subscriber: Box<dyn Subscriber>) -> Result<SubscriberId, EventLoopError> {
        let id = self.manager.add_subscriber(Registered {
            subscriber,
            init_error: None,
        });
        let init_error = self
            .manager
            .subscriber_mut(id)
            .ok()
            .and_then(|registered| registered.init_error.take());
        if let Some(error) = init_error {
            // Unwatches whatever it did register.
            let _ = self.manager.remove_subscriber(id);
            return Err(EventLoopError::Register(error));
        }
        Ok(id)
    }

    /// A loop that watches no signal, for tests that must not block the harness's.
    #[cfg(test)]
    pub(crate) fn without_signals(events: Arc<GuestEvents>) -> Self {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut mask: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `mask` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut mask) };
        // SAFETY: `mask` is initialised; the return value is checked.
        let fd = unsafe { libc::signalfd(-1, &mask, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        assert!(fd >= 0, "signalfd");
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        EventLoop::new(events, TerminationSignals { fd }).expect("event loop")
    }

    /// Runs until the VM must stop, and says why.
    pub fn run(&mut self) -> StopReason {
        loop {
            if let Some(reason) = self.events.stop_reason() {
                return reason;
            }
            // Interrupted waits come back as Ok(0).
            if let Err(e) = self.manager.run() {
                // epoll on valid descriptors does not fail otherwise; stop rather than spin.
                return StopReason::VcpuFailed(format!("epoll failed: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, living for the call.
        unsafe { libc::poll(&mut poll, 1, timeout_ms) == 1 }
    }

    #[test]
    fn a_deadline_timer_fires_once_and_is_quiet_after_fired() {
        let mut timer = DeadlineTimer::new().expect("timerfd");
        assert!(!readable(timer.as_raw_fd(), 0));
        // Far enough ahead that no pause of this thread passes it.
        timer
            .set(Some(Instant::now() + Duration::from_secs(30)))
            .expect("armed");
        assert!(!readable(timer.as_raw_fd(), 0));
        timer
            .set(Some(Instant::now() + Duration::from_millis(20)))
            .expect("armed again");
        assert!(readable(timer.as_raw_fd(), 10_000));
        timer.fired();
        assert_eq!(timer.deadline(), None);
        assert!(!readable(timer.as_raw_fd(), 50));
    }

    #[test]
    fn a_past_deadline_fires_at_once_and_none_disarms() {
        let mut timer = DeadlineTimer::new().expect("timerfd");
        timer
            .set(Some(Instant::now() - Duration::from_secs(1)))
            .expect("armed");
        assert!(readable(timer.as_raw_fd(), 1000));
        timer.fired();
        timer
            .set(Some(Instant::now() + Duration::from_millis(30)))
            .expect("armed");
        timer.set(None).expect("disarmed");
        assert!(!readable(timer.as_raw_fd(), 80));
    }

    /// A source with one eventfd that counts its events and stops the VM on the second.
    struct Counter {
        event: EventFd,
        seen: Arc<Mutex<u32>>,
        events: Arc<GuestEvents>,
    }

    impl Subscriber for Counter {
        fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
            ops.add(Events::new(&self.event, EventSet::IN))
        }

        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            // Two writes before the loop reads come out as one read of 2.
            let count = self.event.read().unwrap_or(0);
            let mut seen = self.seen.lock().expect("lock");
            *seen += u32::try_from(count).unwrap_or(u32::MAX);
            if *seen >= 2 {
                self.events.request_stop(StopReason::PowerOff);
            }
        }
    }

    /// A source whose descriptor is already watched by another.
    struct Duplicate(RawFd);

    impl Subscriber for Duplicate {
        fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
            ops.add(Events::new_raw(self.0, EventSet::IN))
        }

        fn process(&mut self, _events: Events, _ops: &mut EventOps) {}
    }

    fn new_loop() -> (EventLoop, Arc<GuestEvents>) {
        let events = Arc::new(GuestEvents::new().expect("eventfd"));
        (EventLoop::without_signals(events.clone()), events)
    }

    #[test]
    fn sources_are_called_back_until_one_stops_the_vm() {
        let (mut event_loop, events) = new_loop();
        let seen = Arc::new(Mutex::new(0));
        let event = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        let writer = event.try_clone().expect("clone");
        event_loop
            .add(Box::new(Counter {
                event,
                seen: seen.clone(),
                events: events.clone(),
            }))
            .expect("registered");
        let poker = std::thread::spawn(move || {
            for _ in 0..2 {
                writer.write(1).expect("write");
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        assert_eq!(event_loop.run(), StopReason::PowerOff);
        poker.join().expect("poker");
        assert_eq!(*seen.lock().expect("lock"), 2);
    }

    #[test]
    fn a_source_that_cannot_register_is_refused() {
        let (mut event_loop, events) = new_loop();
        let error = event_loop
            .add(Box::new(Duplicate(events.wake_fd().as_raw_fd())))
            .expect_err("the wake eventfd is the lifecycle's");
        assert!(matches!(error, EventLoopError::Register(_)), "{error}");
    }

    #[test]
    fn a_panic_stops_the_vm_after_the_grace() {
        let (mut event_loop, events) = new_loop();
        let started = Instant::now();
        events.record_panic();
        assert_eq!(event_loop.run(), StopReason::Panic);
        let waited = started.elapsed();
        assert!(
            // The upper bound only catches a grace that never ends.
            waited >= PANIC_GRACE && waited < PANIC_GRACE * 40,
            "{waited:?}"
        );
    }

    #[test]
    fn a_reset_during_the_panic_grace_wins() {
        let (mut event_loop, events) = new_loop();
        events.record_panic();
        let resetter = {
            let events = events.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                events.request_stop(StopReason::Reset);
            })
        };
        assert_eq!(event_loop.run(), StopReason::Reset);
        resetter.join().expect("resetter");
    }
}

//! What the guest told us about its life (init reached, the command's status, a panic) and
//! why the VM stops, shared by the vCPU threads, the devices and the event loop.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vpod_proto::vmm::port::MAX_STAYING_RUNS;

/// Exit code when the guest kernel panicked.
pub const EXIT_GUEST_PANIC: i32 = 120;
/// Exit code for every VMM-side error (bad flag, missing kernel, no KVM, ...).
pub const EXIT_VMM_ERROR: i32 = 125;

static PROCESS_START: OnceLock<(Instant, u64)> = OnceLock::new();

/// CLOCK_MONOTONIC in nanoseconds: the clock `Instant` reads, as a number another process
/// can compare with its own readings.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, which lives for the call; the
    // monotonic clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

/// Records the process start; call first thing in `main`. Later calls keep the first time.
pub fn mark_process_start() -> Instant {
    PROCESS_START
        .get_or_init(|| (Instant::now(), monotonic_ns()))
        .0
}

/// The process start on CLOCK_MONOTONIC (see [`monotonic_ns`]), in nanoseconds.
pub fn process_start_monotonic_ns() -> u64 {
    mark_process_start();
    PROCESS_START.get().map_or(0, |start| start.1)
}

/// Time since [`mark_process_start`] (or since the first call of this function).
pub fn since_process_start() -> Duration {
    mark_process_start().elapsed()
}

/// Why the VM stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// i8042 reset or a triple fault (KVM_EXIT_SHUTDOWN): how Linux reboots with `reboot=k`.
    Reset,
    /// The kernel printed "reboot: Power down" or "reboot: System halted".
    PowerOff,
    /// The kernel panicked and did not reboot within the grace period.
    Panic,
    /// A termination signal reached the VMM.
    Signal(i32),
    /// A vCPU failed in a way the VMM cannot recover from.
    VcpuFailed(String),
}

const NO_STATUS: u16 = u16::MAX;

/// Guest-lifecycle facts, written from any thread.
#[derive(Debug)]
pub struct GuestEvents {
    init_reached_ns: AtomicU64,
    status: AtomicU16,
    panicked: AtomicBool,
    stop: Mutex<Option<StopReason>>,
    /// Guest page runs (first frame, count) that init says stay in place, as it wrote them.
    staying_pages: Mutex<Vec<(u64, u64)>>,
    wake: EventFd,
}

impl GuestEvents {
    pub fn new() -> std::io::Result<Self> {
        Ok(GuestEvents {
            init_reached_ns: AtomicU64::new(0),
            status: AtomicU16::new(NO_STATUS),
            panicked: AtomicBool::new(false),
            stop: Mutex::new(None),
            staying_pages: Mutex::new(Vec::new()),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The eventfd that becomes readable whenever something here changes.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    fn wake_loop(&self) {
        // A full counter already wakes the loop; nothing else can go wrong here.
        let _ = self.wake.write(1);
    }

    /// The guest's init announced itself; only the first announcement counts.
    pub fn record_init_reached(&self) {
        let nanos = since_process_start().as_nanos().max(1) as u64;
        let _ = self
            .init_reached_ns
            .compare_exchange(0, nanos, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// When init was reached, if it was.
    pub fn init_reached(&self) -> Option<Duration> {
        match self.init_reached_ns.load(Ordering::SeqCst) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// The guest reported its command's exit status; the last report counts.
    pub fn record_status(&self, status: u8) {
        self.status.store(u16::from(status), Ordering::SeqCst);
    }

    pub fn status(&self) -> Option<u8> {
        match self.status.load(Ordering::SeqCst) {
            NO_STATUS => None,
            status => Some(status as u8),
        }
    }

    /// Init says the `count` guest pages from frame `first` stay in place; at most
    /// [`MAX_STAYING_RUNS`] runs are kept, the rest dropped.
    pub fn record_staying_pages(&self, first: u64, count: u64) {
        let mut runs = self
            .staying_pages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if runs.len() < MAX_STAYING_RUNS && count > 0 {
            runs.push((first, count));
        }
    }

    /// The runs of guest pages init said stay in place (guest-written: unchecked).
    pub fn staying_pages(&self) -> Vec<(u64, u64)> {
        self.staying_pages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The kernel printed a panic message.
    pub fn record_panic(&self) {
        self.panicked.store(true, Ordering::SeqCst);
        self.wake_loop();
    }

    pub fn panicked(&self) -> bool {
        self.panicked.load(Ordering::SeqCst)
    }

    /// Asks the VM to stop; the first reason wins.
    pub fn request_stop(&self, reason: StopReason) {
        let mut stop = self.stop.lock().unwrap_or_else(|e| e.into_inner());
        if stop.is_none() {
            *stop = Some(reason);
        }
        drop(stop);
        self.wake_loop();
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How a VM run ended, from the VMM's caller's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOutcome {
    pub reason: StopReason,
    pub status: Option<u8>,
    pub panicked: bool,
    pub init_reached: Option<Duration>,
}

impl VmOutcome {
    /// The process exit code (see the crate documentation): a reported status wins, then a
    /// panic (120), then a signal (128 + number); a plain reset or power-off is 0; a vCPU
    /// failure is a VMM error (125).
    pub fn exit_code(&self) -> i32 {
        if let StopReason::Signal(signal) = self.reason {
            return 128 + signal;
        }
        if let Some(status) = self.status {
            return i32::from(status);
        }
        if self.panicked || self.reason == StopReason::Panic {
            return EXIT_GUEST_PANIC;
        }
        match self.reason {
            StopReason::VcpuFailed(_) => EXIT_VMM_ERROR,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(reason: StopReason, status: Option<u8>, panicked: bool) -> VmOutcome {
        VmOutcome {
            reason,
            status,
            panicked,
            init_reached: None,
        }
    }

    #[test]
    fn exit_codes_follow_the_documented_order() {
        assert_eq!(outcome(StopReason::Reset, None, false).exit_code(), 0);
        assert_eq!(outcome(StopReason::PowerOff, None, false).exit_code(), 0);
        assert_eq!(outcome(StopReason::Reset, Some(7), false).exit_code(), 7);
        assert_eq!(outcome(StopReason::Reset, Some(7), true).exit_code(), 7);
        assert_eq!(outcome(StopReason::Reset, None, true).exit_code(), 120);
        assert_eq!(outcome(StopReason::Panic, None, false).exit_code(), 120);
        assert_eq!(
            outcome(StopReason::Signal(15), Some(3), false).exit_code(),
            143
        );
        assert_eq!(outcome(StopReason::Signal(2), None, false).exit_code(), 130);
        assert_eq!(
            outcome(StopReason::VcpuFailed("x".into()), None, false).exit_code(),
            125
        );
    }

    #[test]
    fn first_stop_reason_wins_and_wakes_the_loop() {
        let events = GuestEvents::new().expect("eventfd");
        events.request_stop(StopReason::Reset);
        events.request_stop(StopReason::PowerOff);
        assert_eq!(events.stop_reason(), Some(StopReason::Reset));
        assert!(events.wake_fd().read().expect("readable") >= 1);
    }

    #[test]
    fn status_and_init_are_remembered() {
        let events = GuestEvents::new().expect("eventfd");
        assert_eq!(events.status(), None);
        assert_eq!(events.init_reached(), None);
        events.record_status(0);
        events.record_status(42);
        events.record_init_reached();
        let first = events.init_reached();
        events.record_init_reached();
        assert_eq!(events.status(), Some(42));
        assert!(first.is_some());
        assert_eq!(events.init_reached(), first);
    }
}

//! Decides, from what the emulated host has shown so far, whether it is still alive.
//!
//! Pure logic over explicit instants so it can be tested without QEMU. The host prints a
//! heartbeat every two seconds once it is ready; any console line or command output counts
//! as progress. QEMU 7.2's SVM emulation now and then loses an interrupt and the whole host
//! freezes: the heartbeat stops, and that is what this catches.

use crate::config::Limits;
use std::time::{Duration, Instant};

/// What the host was doing when it was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Booting,
    Running,
}

/// The judgement on an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Alive,
    /// No "ready" line within the boot limit.
    BootStalled {
        waited: Duration,
    },
    /// Ready, but silent for longer than the stall limit.
    Stalled {
        silent: Duration,
    },
    /// The attempt ran past the total limit while still making progress.
    TimedOut {
        elapsed: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct Watch {
    limits: Limits,
    started: Instant,
    last_progress: Instant,
    phase: Phase,
}

impl Watch {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Watch {
            limits,
            started: now,
            last_progress: now,
            phase: Phase::Booting,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The host said it is ready to run the command.
    pub fn ready(&mut self, now: Instant) {
        self.phase = Phase::Running;
        self.last_progress = now;
    }

    /// The console or the command's output grew.
    pub fn progress(&mut self, now: Instant) {
        self.last_progress = now;
    }

    pub fn verdict(&self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.started);
        if elapsed > self.limits.total {
            return Verdict::TimedOut { elapsed };
        }
        match self.phase {
            Phase::Booting if elapsed > self.limits.boot => {
                Verdict::BootStalled { waited: elapsed }
            }
            Phase::Running => {
                let silent = now.saturating_duration_since(self.last_progress);
                if silent > self.limits.stall {
                    Verdict::Stalled { silent }
                } else {
                    Verdict::Alive
                }
            }
            Phase::Booting => Verdict::Alive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            boot: Duration::from_secs(60),
            stall: Duration::from_secs(20),
            total: Duration::from_secs(600),
        }
    }

    fn at(t0: Instant, secs: u64) -> Instant {
        t0 + Duration::from_secs(secs)
    }

    #[test]
    fn booting_host_is_alive_until_the_boot_limit() {
        let t0 = Instant::now();
        let w = Watch::new(limits(), t0);
        assert_eq!(w.verdict(at(t0, 59)), Verdict::Alive);
        assert_eq!(
            w.verdict(at(t0, 61)),
            Verdict::BootStalled {
                waited: Duration::from_secs(61)
            }
        );
    }

    #[test]
    fn console_noise_during_boot_does_not_excuse_a_missing_ready_line() {
        let t0 = Instant::now();
        let mut w = Watch::new(limits(), t0);
        w.progress(at(t0, 60));
        assert!(matches!(w.verdict(at(t0, 61)), Verdict::BootStalled { .. }));
    }

    #[test]
    fn heartbeats_keep_a_running_host_alive() {
        let t0 = Instant::now();
        let mut w = Watch::new(limits(), t0);
        w.ready(at(t0, 5));
        for s in (7..300).step_by(2) {
            w.progress(at(t0, s));
            assert_eq!(w.verdict(at(t0, s + 1)), Verdict::Alive);
        }
        assert_eq!(w.phase(), Phase::Running);
    }

    #[test]
    fn silence_after_ready_is_a_stall() {
        let t0 = Instant::now();
        let mut w = Watch::new(limits(), t0);
        w.ready(at(t0, 5));
        w.progress(at(t0, 10));
        assert_eq!(w.verdict(at(t0, 30)), Verdict::Alive);
        assert_eq!(
            w.verdict(at(t0, 31)),
            Verdict::Stalled {
                silent: Duration::from_secs(21)
            }
        );
    }

    #[test]
    fn total_limit_wins_over_progress() {
        let t0 = Instant::now();
        let mut w = Watch::new(limits(), t0);
        w.ready(at(t0, 5));
        w.progress(at(t0, 600));
        assert_eq!(
            w.verdict(at(t0, 601)),
            Verdict::TimedOut {
                elapsed: Duration::from_secs(601)
            }
        );
    }
}

//! Named checks that share one guest host.
//!
//! Each boot of the emulated KVM host costs about 9 s of a 2-core machine's time, so checks
//! that need the same setting (one VM, one pod, one emulated host) run as one test: each
//! check is a function with its own name, run in turn; a failing check does not stop the
//! ones after it, and the test fails at the end naming every check that failed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

/// The checks of one test, run in the order they are given.
#[derive(Debug, Default)]
pub struct Checks {
    passed: Vec<String>,
    failed: Vec<String>,
}

impl Checks {
    pub fn new() -> Checks {
        Checks::default()
    }

    /// Runs `check`, recording whether it panicked (its message goes to stderr, as a
    /// failing test's does).
    pub fn check(&mut self, name: &str, check: impl FnOnce()) -> &mut Checks {
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(check));
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                eprintln!("check {name}: ok ({seconds:.1} s)");
                self.passed.push(name.to_string());
            }
            Err(_) => {
                eprintln!("check {name}: FAILED ({seconds:.1} s)");
                self.failed.push(name.to_string());
            }
        }
        self
    }

    /// Fails the test if any check failed, naming them.
    pub fn finish(&mut self) {
        assert!(
            self.failed.is_empty(),
            "{} of {} checks failed: {}",
            self.failed.len(),
            self.failed.len() + self.passed.len(),
            self.failed.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_runs_and_the_failed_ones_are_named() {
        let mut checks = Checks::new();
        let mut ran = Vec::new();
        checks
            .check("first_passes", || ran.push(1))
            .check("second_fails", || panic!("on purpose"))
            .check("third_passes", || ran.push(3));
        assert_eq!(ran, [1, 3]);
        let failure = catch_unwind(AssertUnwindSafe(|| checks.finish()))
            .expect_err("a failed check fails the test");
        let message = failure
            .downcast_ref::<String>()
            .expect("a formatted message");
        assert_eq!(message, "1 of 3 checks failed: second_fails");
    }

    #[test]
    fn all_passing_checks_pass() {
        Checks::new().check("only", || {}).finish();
    }
}

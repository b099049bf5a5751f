//! Where tests that boot a Linux guest run.
//!
//! On a machine whose `/dev/kvm` comes from kvm_intel or kvm_amd, guests boot here. Where it
//! cannot boot an unmodified Linux (kvm_pvm, or no KVM), they boot inside the emulated KVM
//! host, `tests/kvm-host/run`. `tests/guest-mode` makes that decision for the whole checkout:
//! the Makefile's `IN_GUEST_HOST` asks it for shell commands, [`guest_mode`] for tests.
//!
//! A test puts its body in [`in_guest_host`] (or [`GuestHost::run`]). Natively the body runs
//! at once. Elsewhere the test binary runs again inside the emulated host, filtered to the
//! same test, and the body runs there; the outer test passes when that run passes and shows
//! its output. Everything the test does before the call therefore runs in both processes:
//! keep it to cheap, repeatable preparation, or hand its result to the inner run with
//! [`GuestHost::prepare_outside`].

use std::ffi::OsStr;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::run_with_limit;
use crate::repo_root;

/// Set in the run inside the emulated host, where the body does the work.
const INSIDE: &str = "VPOD_E2E_IN_GUEST_HOST";

/// Where guest-booting work runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    /// `/dev/kvm` from kvm_intel or kvm_amd.
    Native,
    /// Inside the emulated KVM host.
    Emulated,
}

/// Asks `tests/guest-mode` (honouring VPOD_GUEST_MODE), once per test process.
pub fn guest_mode() -> GuestMode {
    static MODE: OnceLock<GuestMode> = OnceLock::new();
    *MODE.get_or_init(|| {
        let out = Command::new(repo_root().join("tests/guest-mode"))
            .stderr(Stdio::inherit())
            .output()
            .expect("tests/guest-mode runs");
        match String::from_utf8_lossy(&out.stdout).trim() {
            "native" => GuestMode::Native,
            "emulated" => GuestMode::Emulated,
            other => panic!("tests/guest-mode answered {other:?}"),
        }
    })
}

/// Whether this process is the run of a test inside the emulated host.
pub fn inside_emulated_host() -> bool {
    std::env::var_os(INSIDE).is_some()
}

/// `program args...` inside the emulated KVM host, whatever this machine's KVM.
pub fn kvm_host_command<I, S>(program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(repo_root().join("tests/kvm-host/run"));
    // make builds the runner before the tests; a build here would fight cargo's lock.
    cmd.env("VPOD_KVM_HOST_NO_BUILD", "1")
        .arg("--")
        .arg(program)
        .args(args);
    cmd.current_dir(repo_root());
    cmd
}

/// How a test's body is run where guests boot.
#[derive(Debug, Clone)]
pub struct GuestHost {
    limit: Duration,
    memory_mib: Option<u32>,
    /// Values prepared outside the emulated host, for the run inside.
    prepared: Vec<(String, String)>,
    test_name: Option<String>,
}

impl GuestHost {
    /// A body that must finish within `limit` (the emulated host's boot not included).
    pub fn new(limit: Duration) -> GuestHost {
        GuestHost {
            limit,
            memory_mib: None,
            prepared: Vec::new(),
            test_name: None,
        }
    }

    /// Memory of the emulated host (the runner's default is 4 GiB; many pods need more).
    pub fn memory_mib(mut self, mib: u32) -> GuestHost {
        self.memory_mib = Some(mib);
        self
    }

    /// The test's name as `--exact` matches it, for a caller that states it; by default it
    /// is the name libtest gives the test's thread, and a stated name must agree with it.
    pub fn test_name(mut self, name: &str) -> GuestHost {
        self.test_name = Some(name.to_string());
        self
    }

    /// A value `prepare` computes outside the emulated host (where it is faster, or where
    /// only the machine itself has what it needs), handed to the run inside through the
    /// environment variable `name`; natively just `prepare()`.
    pub fn prepare_outside(&mut self, name: &str, prepare: impl FnOnce() -> String) -> String {
        if inside_emulated_host() {
            return std::env::var(name)
                .unwrap_or_else(|_| panic!("{name} was not handed to the emulated host"));
        }
        let value = prepare();
        self.prepared.push((name.to_string(), value.clone()));
        value
    }

    /// The running test's name, as libtest names the thread it runs a test on (and as
    /// `--exact` matches it), or the one stated with [`GuestHost::test_name`].
    fn current_test_name(&self) -> String {
        let thread = std::thread::current().name().map(str::to_string);
        match (&self.test_name, thread) {
            (Some(stated), Some(thread)) if thread != "main" => {
                assert_eq!(
                    stated, &thread,
                    "the stated test name is not the running test's"
                );
                thread
            }
            (Some(stated), _) => stated.clone(),
            (None, Some(thread)) if thread != "main" => thread,
            (None, other) => panic!(
                "in_guest_host must be called on a test's own thread (libtest names it after \
                 the test), not on {other:?}, or be given the test's name"
            ),
        }
    }

    /// Runs `body` where guests boot: here when this is the run inside the emulated host or
    /// KVM is native; else this test again inside the emulated host, failing with its
    /// output when it fails.
    pub fn run(&self, body: impl FnOnce()) {
        if inside_emulated_host() || guest_mode() == GuestMode::Native {
            body();
            return;
        }
        let test = self.current_test_name();
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = kvm_host_command(
            "env",
            [
                format!("{INSIDE}=1"),
                exe.display().to_string(),
                "--exact".into(),
                test.clone(),
                "--nocapture".into(),
                "--test-threads=1".into(),
            ],
        );
        cmd.env(
            "VPOD_KVM_HOST_TIMEOUT_SECS",
            (self.limit.as_secs() + 60).to_string(),
        );
        cmd.envs(self.prepared.iter().map(|(k, v)| (k, v)));
        if let Some(mib) = self.memory_mib {
            cmd.env("VPOD_KVM_HOST_MEMORY_MIB", mib.to_string());
        }
        let done = run_with_limit(&mut cmd, self.limit + Duration::from_secs(120));
        let output = format!(
            "--- inner stdout\n{}\n--- inner stderr\n{}",
            done.stdout_text(),
            done.stderr_text()
        );
        assert!(
            done.status.success(),
            "{test} failed inside the emulated KVM host ({:?})\n{output}",
            done.code()
        );
        // A name libtest did not match runs nothing and passes: that must not count.
        assert!(
            done.stdout_text().contains("running 1 test"),
            "the run inside the emulated KVM host did not run {test}\n{output}"
        );
        println!("{output}");
    }
}

/// Runs `body` where guests boot, within `limit`: [`GuestHost::run`] with the defaults.
pub fn in_guest_host(limit: Duration, body: impl FnOnce()) {
    GuestHost::new(limit).run(body)
}

//! What the VMM-core test files share: the checkout's paths, whether KVM is usable, and a
//! bounded wait for a file. Each test file uses only some of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the checkout exists")
}

/// `relative` in the checkout, canonical; fails the test when `make` has not built it.
pub fn built(relative: &str) -> PathBuf {
    let path = repo_root().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `make` first (tests/stub/build.sh builds the stubs; the rust \
         target builds the seccomp-probe VMM)",
        path.display()
    );
    path
}

pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Waits up to 20 s for `path` to exist, else fails the test.
pub fn wait_for(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

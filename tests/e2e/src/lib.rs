//! Support for end-to-end tests that boot real guests.
//!
//! - [`guest_host`]: where guests boot. A test puts its body in [`in_guest_host`], which runs
//!   it on this machine where `/dev/kvm` boots Linux and otherwise runs the test again inside
//!   the emulated KVM host (`tests/kvm-host/run`), so the assertions are Rust code either way.
//! - [`checks`]: several named checks sharing one guest host (one boot of the emulated host),
//!   each reported on its own.
//! - [`process`]: commands run to completion under a time limit, and background processes
//!   whose output is read line by line while they run.
//! - [`vpod`]: the `vpod` command with a layer store root of its own.
//! - [`net`]: pod-network tests' own namespace, HTTP GETs and the leftovers to look for.
//! - [`procfs`]: processes found through /proc (the shims of one containerd, descendants),
//!   and the sockets and cgroups a containerd leaves behind.

pub mod checks;
pub mod guest_host;
pub mod net;
pub mod process;
pub mod procfs;
pub mod vpod;

use std::path::{Path, PathBuf};

pub use checks::Checks;
pub use guest_host::{guest_mode, in_guest_host, kvm_host_command, GuestHost, GuestMode};
pub use process::{run_with_limit, Background, Finished};

/// The checkout's top directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the checkout exists")
}

/// A file the build makes; a missing one fails the test with the command that makes it.
pub fn built(relative: &str) -> PathBuf {
    let path = repo_root().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `make` (or `make test`) first",
        path.display()
    );
    path
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

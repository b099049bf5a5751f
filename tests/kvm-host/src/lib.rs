//! Runs a command inside an emulated KVM host.
//!
//! Our development machines get `/dev/kvm` from PVM, which cannot boot an unmodified Linux
//! guest. QEMU in software emulation (TCG) emulates AMD SVM with nested paging well enough
//! for a Debian kernel to load `kvm_amd`, so tests that boot real guests run inside such an
//! emulated host. This crate boots it with the machine's root filesystem shared read-only,
//! the checkout shared writable, runs one command there, streams its output back, and
//! returns its exit status. A host that stops making progress is killed and retried once,
//! and every retry is printed.

pub mod config;
pub mod job;
pub mod output;
pub mod qemu;
pub mod runner;
pub mod watch;

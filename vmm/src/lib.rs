//! vpod-vmm: the virtual machine monitor of vpod, a Kubernetes runtime that gives every pod
//! its own KVM micro-VM.
//!
//! # Design
//!
//! Built on the rust-vmm crates (kvm-ioctls, kvm-bindings, vm-memory, linux-loader,
//! vm-superio, virtio-queue, vmm-sys-util), with threads and epoll only (no async runtime):
//!
//! - [`builder`] is the VM recipe read top to bottom: create the VM (in-kernel IRQ chip and
//!   PIT), guest memory, vCPUs, devices, load the kernel, configure boot, start the vCPUs.
//! - [`arch`] holds everything x86_64: the memory layout (RAM below a 1 GiB MMIO hole at
//!   3 GiB, the rest above 4 GiB), per-vCPU CPUID (APIC ids, topology leaves 0xB/0x1F, leaf 4,
//!   hypervisor bit), boot MSRs, LAPIC LINT0/LINT1, an MP table so SMP guests find every vCPU
//!   without ACPI, and both boot protocols: PVH (ELF with the PVH note: 32-bit protected mode,
//!   `rbx` = `hvm_start_info`) and the Linux 64-bit protocol (bzImage or ELF without the note:
//!   identity-mapped long mode, `rsi` = zero page).
//! - [`vstate`]: guest memory (lazy `MAP_NORESERVE` anonymous mappings) and the vCPU threads,
//!   each an explicit state machine (paused, running, exited) driven by messages and kicked out
//!   of `KVM_RUN` by a signal.
//! - [`devices`]: port-I/O and MMIO buses; COM1 (its output always scanned for the kernel's
//!   panic and power-off messages), a minimal i8042 (reset), the boot-progress ports, and
//!   virtio over MMIO (virtio 1.x only) with virtio-blk (disks, and empty slots filled at
//!   runtime) and virtio-vsock (user space, mapped to unix sockets: see
//!   [`devices::virtio::vsock`]). Devices signal the guest through the
//!   [`devices::virtio::VirtioInterrupt`] trait and never see the transport.
//! - [`event_loop`]: one thread's epoll (rust-vmm's event-manager) over sources that register
//!   their own descriptors: each virtio device (queue ioeventfds, then its own host side, such
//!   as vsock's unix sockets and timer), the control socket, and lifecycle notifications with
//!   SIGTERM/SIGINT (through a signalfd) and the panic grace. The loop names none of them.
//! - [`api`]: the control socket, newline-delimited JSON; its requests and replies are the
//!   typed contract in [`vpod_proto::vmm`], which the host's launcher and client share.
//! - [`config`] and [`convert`]: the flags, or `--config FILE` with the launcher's typed
//!   configuration, turned into the VMM's own.
//!
//! # Seccomp
//!
//! Once the VM is built every thread runs under a seccomp filter of its kind ([`seccomp`],
//! rust-vmm's seccompiler): each vCPU thread installs the vCPU filter (`KVM_RUN` and what
//! its exits reach) before its run loop, and the main thread installs its own (the event
//! loop, the devices' host sides, the control socket) last, right before it runs the loop;
//! `no_new_privs` is set first. A system call outside a thread's list kills the VMM by
//! SIGSYS after one line on stderr, `vpod-vmm: killed by seccomp: syscall N in thread NAME`,
//! which [`seccomp::seccomp_kill_from_log`] reads back for a launcher. `--no-seccomp` (or
//! `"seccomp": false` in `--config`) leaves the filters off, for development only.
//!
//! # Command line
//!
//! ```text
//! vpod-vmm [--kernel PATH] [--initrd PATH] [--cmdline TEXT] [--vcpus N] [--memory MiB]
//!          [--disk PATH[,ro][,serial=ID]]... [--disk-slots N] [--vsock PATH[,cid=N]]
//!          [--balloon[=no-reporting]] [--api PATH] [--console stdio|off|file:PATH]
//!          [--timings] [-- COMMAND ARGS...]
//! vpod-vmm --config FILE
//! ```
//!
//! `--config FILE` reads the whole configuration as JSON ([`vpod_proto::vmm::VmConfig`], what
//! a launcher writes) instead of the flags; there a disk may also be `{"fd": N}`, a
//! descriptor the VMM inherited, and an absent initrd means none.
//!
//! `--disk-slots N` adds N empty virtio-blk devices (capacity 0) after the disks, filled and
//! emptied through the control socket. `--vsock PATH` adds virtio-vsock: host clients connect
//! to the unix socket PATH and send `CONNECT <port>\n`; guest connections to host port P go
//! to the unix socket `PATH_P`; the guest's CID is 3 unless `cid=N` says otherwise. `--api
//! PATH` serves the control socket. `--balloon` adds virtio-balloon
//! ([`devices::virtio::balloon`]): free page reporting, stats and a target the control
//! socket sets.
//!
//! Defaults: kernel `build/vmlinux`, initrd `build/initrd.img` if it exists (relative to the
//! working directory), 1 vCPU (at most 32), 128 MiB (16 MiB to 1 TiB), console on stdout.
//! `--cmdline` replaces the base kernel command line ([`config::DEFAULT_CMDLINE`]); the
//! `virtio_mmio.device=` entries are always appended, then ` -- ` and the guest command, whose
//! words containing whitespace are double-quoted for the kernel's parser (words containing a
//! double quote are refused). `--timings` prints
//! `vpod-vmm: timings init_ms=<ms or -> exit_ms=<ms> init_at_ns=<ns or ->` on stderr at exit:
//! the first two measured from `main`, the last the moment init was reached on
//! CLOCK_MONOTONIC, for a parent that timed the process from its own spawn.
//!
//! # Guest port protocol
//!
//! Defined once in [`vpod_proto::vmm::port`], where vpod-init takes the same numbers.
//!
//! - Port 0x3f0: writing the byte 123 means "init reached"; the VMM records the time.
//! - Port 0x3f1: a byte written is the guest command's exit status, kept until the VMM exits.
//! - Port 0x64: 0xfe resets the machine (the VMM ends). Port 0xf4 and unknown ports ignore
//!   writes; unknown ports read as 0xff.
//!
//! # Exit codes
//!
//! | code | meaning |
//! |---|---|
//! | 0-255 | the status the guest reported on port 0x3f1 |
//! | 0 | the guest reset, rebooted or powered off without reporting a status |
//! | 120 | the guest kernel panicked (and reported no status) |
//! | 125 | VMM error: bad flag, KVM unavailable, kernel/initrd/disk missing or invalid, memory size out of range, vCPU failure; one line on stderr names the cause |
//! | 130 / 143 | the VMM received SIGINT / SIGTERM and stopped the guest (128 + signal); a `stop` through the control socket ends like SIGTERM (143) |

#![cfg(target_arch = "x86_64")]

pub mod api;
pub mod arch;
pub mod builder;
pub mod cmdline;
pub mod config;
pub mod convert;
pub mod devices;
pub mod event_loop;
pub mod jail;
pub mod lifecycle;
pub mod seccomp;
pub mod vstate;

use std::sync::Arc;

pub use config::{CliAction, VmConfig};
pub use lifecycle::{VmOutcome, EXIT_GUEST_PANIC, EXIT_VMM_ERROR};

/// Errors running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Build(#[from] builder::BuildError),
    #[error(transparent)]
    Signals(#[from] event_loop::EventLoopError),
    #[error("cannot create the lifecycle eventfd")]
    Lifecycle(#[source] std::io::Error),
}

/// Builds the VM `config` describes, runs it to the end and reports how it ended.
///
/// Blocks SIGTERM and SIGINT in the calling thread (and the threads it starts): they stop the
/// guest instead of killing the process. Call it before starting other threads.
pub fn run_vm(config: &VmConfig) -> Result<VmOutcome, VmmError> {
    let signals = event_loop::TerminationSignals::block()?;
    let events = Arc::new(lifecycle::GuestEvents::new().map_err(VmmError::Lifecycle)?);
    let mut vm = builder::build_microvm(config, events, signals)?;
    // Last: from here on the main thread only runs the event loop.
    vm.confine_main_thread()?;
    Ok(vm.run())
}

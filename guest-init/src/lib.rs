//! `vpod-init`, PID 1 inside a vpod micro-VM.
//!
//! Boot sequence: mount the pseudo filesystems ([`mounts`]), set the hostname, tell the VMM
//! "init reached" with one port write ([`vmm_port`]), then run the command the kernel passed
//! after `--` ([`command`]) with its output on the console, reaping every orphan meanwhile,
//! report the command's exit status to the VMM, and reboot (the VMM ends on the guest's
//! reset). With no command, it serves the agent API to the host instead ([`agent`]).
//! Statically linked, no dependency on busybox or anything else in the initramfs.

pub mod agent;
pub mod cmdline;
pub mod command;
pub mod mounts;
pub mod root_switch;
pub mod vmm_port;

//! The control socket (`--api PATH`): newline-delimited JSON, one reply line per request
//! line, many clients at once, served from the event loop's thread. The requests, the replies
//! and their wire form are [`vpod_proto::vmm`]'s (its documentation has the table); this
//! module is the VMM's side of them.
//!
//! Errors (malformed JSON, an unknown op, a bad slot, a missing file) reply
//! `{"error":"<sentence>"}` and leave the connection open. A line longer than
//! [`MAX_LINE`] gets an error reply and the connection is closed.
//!
//! Slots are the `--disk-slots` devices, numbered from 0; the guest sees slot `i` as the
//! virtio-blk disk after the `--disk` ones. Attaching or detaching changes the capacity and
//! the serial and raises a configuration-change interrupt; Linux re-reads the capacity
//! (`/sys/block/vdX/size`), and `/sys/block/vdX/serial` asks the device again on every read.
//! A read-only attach is enforced by the device (writes fail) but the guest's `ro` flag was
//! fixed when its driver started, so the guest must mount the disk read-only itself.
//!
//! A disk can come as a descriptor instead of a path (`"fd": I`), passed with the request
//! over the socket (SCM_RIGHTS), so a VMM that cannot see the host's paths still gets it.
//! Each connection keeps the descriptors it passed until a request uses them (at most
//! [`control::PassedFds::MAX`]; more are closed) and closes the rest when it ends. A
//! descriptor open read-only can only be attached read-only.
//!
//! `stop` with `timeout_ms` 0 (or absent) stops the VM at once; otherwise the VM keeps
//! running until the guest ends by itself (the host asks its agent to shut down, e.g. over
//! vsock) or the timeout passes, whichever is first. The VMM then exits as on SIGTERM (143)
//! unless the guest reported a status first. There is no guest-side shutdown trigger in the
//! device model (no ACPI, and the i8042 has no keyboard interrupt to carry Ctrl+Alt+Del).

pub mod control;
pub mod server;

pub use control::{ApiError, BlockHandle, PassedFds, VmControl};
pub use server::{ApiServer, ApiServerError};

/// The longest request line.
pub const MAX_LINE: usize = 64 * 1024;

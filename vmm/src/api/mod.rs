//! The control socket (`--api PATH`): newline-delimited JSON, one reply line per request
//! line, many clients at once, served from the event loop's thread.
//!
//! # Protocol
//!
//! | request | reply |
//! |---|---|
//! | `{"op":"state"}` | `{"state":"running"\|"stopping","vcpus":N,"memory_mib":N,"uptime_ms":N}` |
//! | `{"op":"boot_time"}` | `{"init_ms":F}`, or `{"init_ms":null}` before the guest's init wrote port 0x3f0 |
//! | `{"op":"metrics"}` | `{"vsock":{host_connections, guest_connections, connections_active, connect_timeouts, connect_refused, bytes_to_guest, bytes_to_host, packets_from_guest, packets_to_guest, dropped_total, dropped:{reason:N}}\|null, "block":[{index, slot, attached, serial, read_only, capacity_bytes, requests, read_bytes, write_bytes, errors}]}` |
//! | `{"op":"attach_disk","slot":N,"path":P,"read_only":B,"serial":S}` | `{"ok":true,"slot":N,"capacity_bytes":N,"serial":S,"read_only":B}`; `slot` defaults to the first empty one, `read_only` to false, `serial` to empty |
//! | `{"op":"detach_disk","slot":N}` or `{"op":"detach_disk","serial":S}` | `{"ok":true,"slot":N}` |
//! | `{"op":"stop","timeout_ms":N}` | `{"ok":true,"state":"stopping"}`, then the VMM ends |
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
//! `stop` with `timeout_ms` 0 (or absent) stops the VM at once; otherwise the VM keeps
//! running until the guest ends by itself (the host asks its agent to shut down, e.g. over
//! vsock) or the timeout passes, whichever is first. The VMM then exits as on SIGTERM (143)
//! unless the guest reported a status first. There is no guest-side shutdown trigger in the
//! device model (no ACPI, and the i8042 has no keyboard interrupt to carry Ctrl+Alt+Del).

pub mod control;
pub mod protocol;
pub mod server;

pub use control::{ApiError, BlockHandle, VmControl};
pub use server::{ApiServer, ApiServerError};

/// The longest request line.
pub const MAX_LINE: usize = 64 * 1024;

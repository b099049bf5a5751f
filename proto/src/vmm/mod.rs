//! The contract between the vpod host and vpod-vmm, defined once: the VM configuration a
//! launcher passes (`vpod-vmm --config FILE`, [`config`]), the control socket's requests and
//! replies ([`api`]), the guest port ABI that vpod-init writes ([`port`]), and, with the
//! `vmm-client` feature, a small blocking client ([`client`]). Serde types only: no gRPC and
//! no async runtime, so the VMM depends on nothing more.
//!
//! # The control socket
//!
//! Newline-delimited JSON over a unix socket (`--api PATH`): one reply line per request line,
//! many clients at once.
//!
//! | request | reply |
//! |---|---|
//! | `{"op":"state"}` | [`StateReply`]: `{"state":"running"\|"stopping","vcpus":N,"memory_mib":N,"uptime_ms":N}` |
//! | `{"op":"boot_time"}` | [`BootTimeReply`]: `{"init_ms":F}`, or `{"init_ms":null}` before the guest's init wrote port 0x3f0 |
//! | `{"op":"metrics"}` | [`MetricsReply`]: `{"vsock":{host_connections, guest_connections, connections_active, connect_timeouts, connect_refused, bytes_to_guest, bytes_to_host, packets_from_guest, packets_to_guest, dropped_total, dropped:{reason:N}}\|null, "block":[{index, slot, attached, serial, read_only, capacity_bytes, requests, read_bytes, write_bytes, errors}]}` |
//! | `{"op":"attach_disk","slot":N,"path":P,"read_only":B,"serial":S}` | [`AttachDiskReply`]: `{"ok":true,"slot":N,"capacity_bytes":N,"serial":S,"read_only":B}`; `slot` defaults to the first empty one, `read_only` to false, `serial` to empty |
//! | `{"op":"attach_disk","fd":I,...}` | the same, for the `I`-th descriptor (usually 0) the client passed over the socket (SCM_RIGHTS, sent with the request's first bytes) and no request used yet |
//! | `{"op":"detach_disk","slot":N}` or `{"op":"detach_disk","serial":S}` | [`DetachDiskReply`]: `{"ok":true,"slot":N}` |
//! | `{"op":"balloon"}` | [`BalloonReply`]: `{"target_mib":N,"actual_mib":N,"active":B,"free_page_reporting":B,"reported_ranges":N,"reported_bytes":N,"inflated_pages":N,"deflated_pages":N,"stats":{name:N},"stats_age_ms":N\|null,"dropped_total":N,"dropped":{reason:N}}`; also asks the guest for fresh stats, which the next reply shows; an error without `--balloon` |
//! | `{"op":"set_balloon","target_mib":N}` | [`BalloonReply`] with the new target; the guest inflates (gives up memory) or deflates towards it |
//! | `{"op":"stop","timeout_ms":N}` | [`StopReply`]: `{"ok":true,"state":"stopping"}`, then the VMM ends |
//!
//! Errors (malformed JSON, an unknown op, a bad slot, a missing file) reply
//! `{"error":"<sentence>"}` ([`ErrorReply`]) and leave the connection open.
//!
//! The `vmm` feature's tests run with the workspace's tests (where features unify) or with
//! `cargo test -p vpod-proto --features vmm-client`.

pub mod api;
#[cfg(feature = "vmm-client")]
pub mod client;
pub mod config;
pub mod port;
pub mod seccomp_kill;

pub use api::{
    decode_reply, decode_request, encode_line, AttachDisk, AttachDiskReply, BalloonReply,
    BlockStats, BootTimeReply, DetachDiskReply, ErrorReply, MetricsReply, NetStats, Reply,
    ReplyError, Request, RequestError, StateReply, StopReply, VmState, VsockStats,
    MAX_FDS_PER_REQUEST,
};
#[cfg(feature = "vmm-client")]
pub use client::{ClientError, VmmClient};
pub use config::{
    is_kernel_param, BalloonConfig, Console, DiskConfig, DiskSource, DiskSourceError, FsConfig,
    JailConfig, NetConfig, TapSource, TapSourceError, VmConfig, VsockConfig,
    DEFAULT_JAIL_MAX_OPEN_FILES, JAILED_VMM_NAME,
};

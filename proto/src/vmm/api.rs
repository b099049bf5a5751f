//! The control socket's requests and replies, and their lines: decoding a request (the
//! VMM), encoding either side, decoding a reply (clients). Pure, so it is tested without
//! sockets.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::{DiskSource, DiskSourceError};

/// Most descriptors a request line carries (SCM_RIGHTS); the VMM closes any beyond.
pub const MAX_FDS_PER_REQUEST: usize = 4;

/// One request, the JSON object's `op` naming the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Replied with [`StateReply`].
    State,
    /// Replied with [`BootTimeReply`].
    BootTime,
    /// Replied with [`MetricsReply`].
    Metrics,
    /// Replied with [`AttachDiskReply`].
    AttachDisk(AttachDisk),
    /// Replied with [`DetachDiskReply`]; names a slot or the serial of an attached disk.
    DetachDisk {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        serial: Option<String>,
    },
    /// Replied with [`BalloonReply`]; also asks the guest for fresh stats (they show in
    /// the next reply).
    Balloon,
    /// Sets the balloon's target (the memory the guest should give up); replied with
    /// [`BalloonReply`].
    SetBalloon { target_mib: u64 },
    /// Replied with [`StopReply`]; 0 stops at once.
    Stop {
        #[serde(default)]
        timeout_ms: u64,
    },
}

impl Request {
    /// Every `op`, as the wire spells it.
    pub const OPS: [&'static str; 8] = [
        "state",
        "boot_time",
        "metrics",
        "attach_disk",
        "detach_disk",
        "balloon",
        "set_balloon",
        "stop",
    ];

    /// The `op` of this request.
    pub fn op(&self) -> &'static str {
        match self {
            Request::State => "state",
            Request::BootTime => "boot_time",
            Request::Metrics => "metrics",
            Request::AttachDisk(_) => "attach_disk",
            Request::DetachDisk { .. } => "detach_disk",
            Request::Balloon => "balloon",
            Request::SetBalloon { .. } => "set_balloon",
            Request::Stop { .. } => "stop",
        }
    }
}

/// A disk for an empty slot: `{"op": "attach_disk", "slot": N, "path": P | "fd": N,
/// "read_only": B, "serial": S}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AttachDiskFields", into = "AttachDiskFields")]
pub struct AttachDisk {
    /// A slot index; the first empty slot when absent.
    pub slot: Option<u32>,
    /// With [`DiskSource::Fd`], the descriptor travels over the control socket (SCM_RIGHTS).
    pub source: DiskSource,
    pub read_only: bool,
    /// At most 20 bytes; empty when absent.
    pub serial: String,
}

#[derive(Serialize, Deserialize)]
struct AttachDiskFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slot: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fd: Option<u32>,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    serial: String,
}

impl TryFrom<AttachDiskFields> for AttachDisk {
    type Error = DiskSourceError;

    fn try_from(fields: AttachDiskFields) -> Result<Self, Self::Error> {
        Ok(AttachDisk {
            slot: fields.slot,
            source: DiskSource::from_fields(fields.path, fields.fd)?,
            read_only: fields.read_only,
            serial: fields.serial,
        })
    }
}

impl From<AttachDisk> for AttachDiskFields {
    fn from(request: AttachDisk) -> Self {
        let (path, fd) = request.source.into_fields();
        AttachDiskFields {
            slot: request.slot,
            path,
            fd,
            read_only: request.read_only,
            serial: request.serial,
        }
    }
}

/// Whether the VM runs or is on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Stopping,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReply {
    pub state: VmState,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Since the VMM started.
    pub uptime_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BootTimeReply {
    /// From the VMM's start to the guest's write to the boot timer port; `null` before.
    pub init_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsReply {
    /// `null` without a vsock device.
    pub vsock: Option<VsockStats>,
    /// Every virtio-blk device, disks first, then slots.
    pub block: Vec<BlockStats>,
    /// Every virtio-net device, in the configuration's order.
    #[serde(default)]
    pub net: Vec<NetStats>,
}

/// One virtio-net device's counters since the VMM started.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetStats {
    /// Its place among the VM's NICs.
    pub index: u32,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Times the tap was left unread because the guest had posted no receive buffers.
    pub rx_no_buffers: u64,
    pub dropped_total: u64,
    /// Dropped frames and chains by reason.
    pub dropped: BTreeMap<String, u64>,
}

/// The vsock device's counters since the VMM started.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct VsockStats {
    pub host_connections: u64,
    pub guest_connections: u64,
    pub connections_active: u64,
    pub connect_timeouts: u64,
    pub connect_refused: u64,
    pub bytes_to_guest: u64,
    pub bytes_to_host: u64,
    pub packets_from_guest: u64,
    pub packets_to_guest: u64,
    pub dropped_total: u64,
    /// Dropped packets by reason.
    pub dropped: BTreeMap<String, u64>,
}

/// One virtio-blk device's identity and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockStats {
    /// Its place among the VM's block devices.
    pub index: u32,
    /// Its slot index, for a disk slot.
    pub slot: Option<u32>,
    pub attached: bool,
    pub serial: String,
    pub read_only: bool,
    pub capacity_bytes: u64,
    pub requests: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachDiskReply {
    pub ok: bool,
    pub slot: u32,
    pub capacity_bytes: u64,
    pub serial: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachDiskReply {
    pub ok: bool,
    pub slot: u32,
}

/// The balloon: its target and size, what free page reporting gave back, the guest's
/// memory statistics.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BalloonReply {
    /// What the runtime asked the guest to give up, and what the guest says it gave up.
    pub target_mib: u64,
    pub actual_mib: u64,
    /// Whether the guest's driver runs and agreed to free page reporting.
    pub active: bool,
    pub free_page_reporting: bool,
    /// Free page reporting since the VMM started: ranges and bytes released.
    pub reported_ranges: u64,
    pub reported_bytes: u64,
    /// Pages (4 KiB) put into the balloon and taken back.
    pub inflated_pages: u64,
    pub deflated_pages: u64,
    /// The guest's statistics (bytes, or counts), by name (`free_memory`,
    /// `available_memory`, `total_memory`, `disk_caches`, `major_faults`, ...), as its
    /// driver last sent them; empty before the first.
    pub stats: BTreeMap<String, u64>,
    /// How old `stats` are; `null` before the first.
    pub stats_age_ms: Option<u64>,
    /// Ranges, frames or buffers from the guest that were not acted on, by reason.
    pub dropped_total: u64,
    pub dropped: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopReply {
    pub ok: bool,
    pub state: VmState,
}

/// The reply to a request that failed; the connection stays open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

/// Any reply, as the VMM sends it (each is its own JSON object, with no tag).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    State(StateReply),
    BootTime(BootTimeReply),
    Metrics(MetricsReply),
    AttachDisk(AttachDiskReply),
    DetachDisk(DetachDiskReply),
    Balloon(BalloonReply),
    Stop(StopReply),
    Error(ErrorReply),
}

impl Reply {
    pub fn error(message: impl Into<String>) -> Self {
        Reply::Error(ErrorReply {
            error: message.into(),
        })
    }
}

/// Why a request line was refused; the message goes back to the client as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request is not UTF-8")]
    NotUtf8,
    #[error("the request is not JSON: {0}")]
    NotJson(String),
    #[error("the request has no \"op\"")]
    NoOp,
    #[error("\"op\" must be a string")]
    OpNotString,
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    #[error("bad {op} request: {reason}")]
    Bad { op: String, reason: String },
}

/// Decodes one request line (without its newline).
pub fn decode_request(line: &[u8]) -> Result<Request, RequestError> {
    let text = std::str::from_utf8(line).map_err(|_| RequestError::NotUtf8)?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| RequestError::NotJson(e.to_string()))?;
    let op = match value.get("op") {
        Some(Value::String(op)) => op.clone(),
        Some(_) => return Err(RequestError::OpNotString),
        None => return Err(RequestError::NoOp),
    };
    if !Request::OPS.contains(&op.as_str()) {
        return Err(RequestError::UnknownOp(op));
    }
    serde_json::from_value(value).map_err(|e| RequestError::Bad {
        op,
        reason: e.to_string(),
    })
}

/// A request or a reply as one line, newline included.
pub fn encode_line<T: Serialize>(message: &T) -> Vec<u8> {
    // Structs and enums with string keys only: serialising them cannot fail.
    let mut line = serde_json::to_vec(message)
        .unwrap_or_else(|_| br#"{"error":"the message cannot be encoded"}"#.to_vec());
    line.push(b'\n');
    line
}

/// Why a reply line is not the reply that was asked for.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("the VMM refused {op}: {message}")]
    Refused { op: &'static str, message: String },
    #[error("the VMM's answer to {op} is not its reply: {line:?}")]
    Unexpected {
        op: &'static str,
        line: String,
        #[source]
        error: serde_json::Error,
    },
}

/// Decodes the reply to a request of `op`: an `{"error": ...}` object is a refusal.
pub fn decode_reply<R: DeserializeOwned>(op: &'static str, line: &str) -> Result<R, ReplyError> {
    let unexpected = |error| ReplyError::Unexpected {
        op,
        line: line.trim_end().to_string(),
        error,
    };
    let value: Value = serde_json::from_str(line).map_err(unexpected)?;
    if let Some(Value::String(message)) = value.get("error") {
        return Err(ReplyError::Refused {
            op,
            message: message.clone(),
        });
    }
    serde_json::from_value(value).map_err(unexpected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn attach(source: DiskSource) -> AttachDisk {
        AttachDisk {
            slot: Some(1),
            source,
            read_only: true,
            serial: "l0".into(),
        }
    }

    #[test]
    fn every_op_decodes() {
        assert_eq!(decode_request(br#"{"op":"state"}"#), Ok(Request::State));
        assert_eq!(
            decode_request(br#"{"op":"boot_time"}"#),
            Ok(Request::BootTime)
        );
        assert_eq!(decode_request(br#"{"op":"metrics"}"#), Ok(Request::Metrics));
        assert_eq!(
            decode_request(
                br#"{"op":"attach_disk","slot":1,"path":"/x.img","read_only":true,"serial":"l0"}"#
            ),
            Ok(Request::AttachDisk(attach(DiskSource::Path(
                "/x.img".into()
            ))))
        );
        assert_eq!(
            decode_request(br#"{"op":"attach_disk","path":"/x.img"}"#),
            Ok(Request::AttachDisk(AttachDisk {
                slot: None,
                source: DiskSource::Path("/x.img".into()),
                read_only: false,
                serial: String::new()
            }))
        );
        assert_eq!(
            decode_request(
                br#"{"op":"attach_disk","slot":1,"fd":0,"read_only":true,"serial":"l0"}"#
            ),
            Ok(Request::AttachDisk(attach(DiskSource::Fd(0))))
        );
        assert_eq!(
            decode_request(br#"{"op":"detach_disk","serial":"l0"}"#),
            Ok(Request::DetachDisk {
                slot: None,
                serial: Some("l0".into())
            })
        );
        assert_eq!(
            decode_request(br#"{"op":"stop","timeout_ms":500}"#),
            Ok(Request::Stop { timeout_ms: 500 })
        );
        assert_eq!(
            decode_request(br#"{"op":"stop"}"#),
            Ok(Request::Stop { timeout_ms: 0 })
        );
        assert_eq!(
            decode_request(br#"{"op":"set_balloon","target_mib":96}"#),
            Ok(Request::SetBalloon { target_mib: 96 })
        );
        assert!(decode_request(br#"{"op":"set_balloon"}"#).is_err());
    }

    #[test]
    fn every_request_survives_its_line() {
        let requests = [
            Request::State,
            Request::BootTime,
            Request::Metrics,
            Request::AttachDisk(attach(DiskSource::Path("/x.img".into()))),
            Request::AttachDisk(attach(DiskSource::Fd(0))),
            Request::DetachDisk {
                slot: Some(2),
                serial: None,
            },
            Request::Balloon,
            Request::SetBalloon { target_mib: 64 },
            Request::Stop { timeout_ms: 0 },
        ];
        for request in requests {
            let line = encode_line(&request);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
            assert_eq!(decode_request(&line[..line.len() - 1]), Ok(request.clone()));
            assert!(Request::OPS.contains(&request.op()));
        }
    }

    #[test]
    fn bad_requests_get_sentences() {
        let err = |line: &[u8]| decode_request(line).expect_err("refused").to_string();
        assert!(err(b"{").starts_with("the request is not JSON"));
        assert_eq!(err(br#"{"op":"fly"}"#), "unknown op \"fly\"");
        assert_eq!(err(br#"{"slot":1}"#), "the request has no \"op\"");
        assert_eq!(err(br#"{"op":3}"#), "\"op\" must be a string");
        assert_eq!(
            err(br#"{"op":"attach_disk"}"#),
            "bad attach_disk request: a disk needs a \"path\" or an \"fd\""
        );
        assert!(err(br#"{"op":"attach_disk","path":"/x","fd":0}"#).ends_with("not both"));
        assert!(err(br#"{"op":"attach_disk","path":"/x","slot":-1}"#).starts_with("bad"));
        assert!(err(br#"{"op":"stop","timeout_ms":"soon"}"#).starts_with("bad stop request"));
        assert_eq!(err(b"\xff"), "the request is not UTF-8");
        assert_eq!(err(b"[1,2]"), "the request has no \"op\"");
    }

    #[test]
    fn every_reply_survives_its_line() {
        fn round_trip<R: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
            op: &'static str,
            reply: R,
        ) {
            let line = encode_line(&reply);
            let text = std::str::from_utf8(&line).expect("UTF-8");
            assert_eq!(decode_reply::<R>(op, text).expect("decodes"), reply);
        }
        round_trip(
            "state",
            StateReply {
                state: VmState::Stopping,
                vcpus: 2,
                memory_mib: 256,
                uptime_ms: 9,
            },
        );
        round_trip(
            "boot_time",
            BootTimeReply {
                init_ms: Some(12.5),
            },
        );
        round_trip("boot_time", BootTimeReply { init_ms: None });
        round_trip(
            "metrics",
            MetricsReply {
                vsock: Some(VsockStats {
                    bytes_to_guest: 7,
                    dropped: [("bad_header".to_string(), 2)].into(),
                    dropped_total: 2,
                    ..VsockStats::default()
                }),
                block: vec![BlockStats {
                    index: 0,
                    slot: Some(0),
                    attached: true,
                    serial: "l0".into(),
                    read_only: true,
                    capacity_bytes: 4096,
                    requests: 3,
                    read_bytes: 1024,
                    write_bytes: 0,
                    errors: 0,
                }],
                net: vec![NetStats {
                    index: 0,
                    tx_frames: 4,
                    dropped: [("tx_bad_length".to_string(), 1)].into(),
                    dropped_total: 1,
                    ..NetStats::default()
                }],
            },
        );
        round_trip(
            "attach_disk",
            AttachDiskReply {
                ok: true,
                slot: 1,
                capacity_bytes: 4096,
                serial: "l0".into(),
                read_only: true,
            },
        );
        round_trip("detach_disk", DetachDiskReply { ok: true, slot: 1 });
        round_trip(
            "stop",
            StopReply {
                ok: true,
                state: VmState::Stopping,
            },
        );
    }

    #[test]
    fn replies_keep_their_wire_shape() {
        let reply = Reply::DetachDisk(DetachDiskReply { ok: true, slot: 0 });
        assert_eq!(
            serde_json::to_value(&reply).expect("encodes"),
            json!({"ok": true, "slot": 0})
        );
        assert_eq!(
            encode_line(&Reply::error("no such slot")),
            b"{\"error\":\"no such slot\"}\n"
        );
        let state = Reply::State(StateReply {
            state: VmState::Running,
            vcpus: 1,
            memory_mib: 128,
            uptime_ms: 5,
        });
        assert_eq!(
            serde_json::to_value(&state).expect("encodes"),
            json!({"state": "running", "vcpus": 1, "memory_mib": 128, "uptime_ms": 5})
        );
    }

    #[test]
    fn error_and_foreign_replies_are_told_apart() {
        match decode_reply::<DetachDiskReply>("detach_disk", "{\"error\":\"the slot is empty\"}\n")
        {
            Err(ReplyError::Refused { op, message }) => {
                assert_eq!((op, message.as_str()), ("detach_disk", "the slot is empty"));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        for line in ["", "{", "[]", "{\"ok\":true}", "{\"error\":3}"] {
            let error = decode_reply::<DetachDiskReply>("detach_disk", line).expect_err(line);
            assert!(
                matches!(error, ReplyError::Unexpected { .. }),
                "{line:?}: {error}"
            );
        }
    }

    proptest! {
        #[test]
        fn random_lines_never_panic(line in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_request(&line);
            let _ = decode_reply::<MetricsReply>("metrics", &String::from_utf8_lossy(&line));
        }

        #[test]
        fn random_json_objects_never_panic(
            op in "[a-z_]{0,12}",
            slot in any::<i64>(),
            fd in any::<i64>(),
            path in ".{0,20}",
        ) {
            let line = json!({ "op": op, "slot": slot, "fd": fd, "path": path }).to_string();
            let _ = decode_request(line.as_bytes());
        }
    }
}

//! The control protocol's requests and replies as Rust values: decoding a request line and
//! encoding a reply line. Pure, so it is tested without sockets.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

/// One request, the JSON object's `op` naming the variant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ApiRequest {
    State,
    BootTime,
    Metrics,
    AttachDisk {
        /// A slot index; the first empty slot when absent.
        #[serde(default)]
        slot: Option<u32>,
        path: PathBuf,
        #[serde(default)]
        read_only: bool,
        #[serde(default)]
        serial: String,
    },
    DetachDisk {
        #[serde(default)]
        slot: Option<u32>,
        #[serde(default)]
        serial: Option<String>,
    },
    Stop {
        #[serde(default)]
        timeout_ms: u64,
    },
}

/// Decodes one request line; the error is a sentence for the client.
pub fn decode_request(line: &[u8]) -> Result<ApiRequest, String> {
    let text = std::str::from_utf8(line).map_err(|_| "the request is not UTF-8".to_string())?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("the request is not JSON: {e}"))?;
    let op = match value.get("op") {
        Some(Value::String(op)) => op.clone(),
        Some(_) => return Err("\"op\" must be a string".to_string()),
        None => return Err("the request has no \"op\"".to_string()),
    };
    serde_json::from_value(value).map_err(|e| {
        let known = [
            "state",
            "boot_time",
            "metrics",
            "attach_disk",
            "detach_disk",
            "stop",
        ];
        if known.contains(&op.as_str()) {
            format!("bad {op} request: {e}")
        } else {
            format!("unknown op {op:?}")
        }
    })
}

/// The reply line for an error.
pub fn error_reply(message: &str) -> Value {
    json!({ "error": message })
}

/// A reply as one line, newline included.
pub fn encode_reply(reply: &Value) -> Vec<u8> {
    let mut line = reply.to_string().into_bytes();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_op_decodes() {
        assert_eq!(decode_request(br#"{"op":"state"}"#), Ok(ApiRequest::State));
        assert_eq!(
            decode_request(br#"{"op":"boot_time"}"#),
            Ok(ApiRequest::BootTime)
        );
        assert_eq!(
            decode_request(br#"{"op":"metrics"}"#),
            Ok(ApiRequest::Metrics)
        );
        assert_eq!(
            decode_request(
                br#"{"op":"attach_disk","slot":1,"path":"/x.img","read_only":true,"serial":"l0"}"#
            ),
            Ok(ApiRequest::AttachDisk {
                slot: Some(1),
                path: PathBuf::from("/x.img"),
                read_only: true,
                serial: "l0".into()
            })
        );
        assert_eq!(
            decode_request(br#"{"op":"attach_disk","path":"/x.img"}"#),
            Ok(ApiRequest::AttachDisk {
                slot: None,
                path: PathBuf::from("/x.img"),
                read_only: false,
                serial: String::new()
            })
        );
        assert_eq!(
            decode_request(br#"{"op":"detach_disk","serial":"l0"}"#),
            Ok(ApiRequest::DetachDisk {
                slot: None,
                serial: Some("l0".into())
            })
        );
        assert_eq!(
            decode_request(br#"{"op":"stop","timeout_ms":500}"#),
            Ok(ApiRequest::Stop { timeout_ms: 500 })
        );
        assert_eq!(
            decode_request(br#"{"op":"stop"}"#),
            Ok(ApiRequest::Stop { timeout_ms: 0 })
        );
    }

    #[test]
    fn bad_requests_get_sentences() {
        let err = |line: &[u8]| decode_request(line).expect_err("refused");
        assert!(err(b"{").starts_with("the request is not JSON"));
        assert_eq!(err(br#"{"op":"fly"}"#), "unknown op \"fly\"");
        assert_eq!(err(br#"{"slot":1}"#), "the request has no \"op\"");
        assert_eq!(err(br#"{"op":3}"#), "\"op\" must be a string");
        assert!(err(br#"{"op":"attach_disk"}"#).starts_with("bad attach_disk request"));
        assert!(err(br#"{"op":"attach_disk","path":"/x","slot":-1}"#).starts_with("bad"));
        assert_eq!(err(b"\xff"), "the request is not UTF-8");
        assert_eq!(err(b"[1,2]"), "the request has no \"op\"");
    }

    #[test]
    fn replies_are_one_line() {
        let line = encode_reply(&error_reply("no such slot"));
        assert_eq!(line, b"{\"error\":\"no such slot\"}\n");
    }

    proptest! {
        #[test]
        fn random_lines_never_panic(line in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_request(&line);
        }

        #[test]
        fn random_json_objects_never_panic(
            op in "[a-z_]{0,12}",
            slot in any::<i64>(),
            path in ".{0,20}",
        ) {
            let line = json!({ "op": op, "slot": slot, "path": path }).to_string();
            let _ = decode_request(line.as_bytes());
        }
    }
}

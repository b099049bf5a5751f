//! The metav1.Status a kubelet writes on the error stream when a command ends, and the plain
//! text that protocols before v4 get instead.

use serde::Serialize;

use crate::backend::BackendError;

#[derive(Serialize)]
struct Cause {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    message: String,
}

#[derive(Serialize)]
struct Details {
    causes: Vec<Cause>,
}

#[derive(Serialize)]
struct Metadata {}

/// A metav1.Status with only the fields the kubelet fills.
#[derive(Serialize)]
pub struct Status {
    metadata: Metadata,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
}

impl Status {
    /// The command or attach ended normally (exit code 0).
    pub fn success() -> Self {
        Self {
            metadata: Metadata {},
            status: "Success",
            message: None,
            reason: None,
            details: None,
            code: None,
        }
    }

    /// The command exited with a non-zero code; clients read the code from the cause.
    pub fn exit_code(code: i32) -> Self {
        Self {
            metadata: Metadata {},
            status: "Failure",
            message: Some(format!(
                "command terminated with non-zero exit code: exit status {code}"
            )),
            reason: Some("NonZeroExitCode"),
            details: Some(Details {
                causes: vec![Cause {
                    reason: Some("ExitCode"),
                    message: code.to_string(),
                }],
            }),
            code: None,
        }
    }

    /// The backend failed; `what` says what the server was doing ("executing command").
    pub fn internal(what: &str, error: &BackendError) -> Self {
        let message = format!("error {what} in container: {error}");
        Self {
            metadata: Metadata {},
            status: "Failure",
            message: Some(format!("Internal error occurred: {message}")),
            reason: Some("InternalError"),
            details: Some(Details {
                causes: vec![Cause {
                    reason: None,
                    message,
                }],
            }),
            code: Some(500),
        }
    }

    /// The exec's outcome as a status.
    pub fn from_exec(result: &Result<i32, BackendError>) -> Self {
        match result {
            Ok(0) => Self::success(),
            Ok(code) => Self::exit_code(*code),
            Err(error) => Self::internal("executing command", error),
        }
    }

    /// The attach's outcome as a status.
    pub fn from_attach(result: &Result<(), BackendError>) -> Self {
        match result {
            Ok(()) => Self::success(),
            Err(error) => Self::internal("attaching to container", error),
        }
    }

    /// The JSON that v4 and v5 clients parse.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// What protocols before v4 write: nothing on success, the message otherwise.
    pub fn to_plain(&self) -> Option<Vec<u8>> {
        self.message.as_ref().map(|m| m.clone().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_the_kubelet_json() {
        assert_eq!(
            String::from_utf8(Status::success().to_json()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert_eq!(Status::success().to_plain(), None);
    }

    #[test]
    fn exit_code_travels_as_the_exit_code_cause() {
        assert_eq!(
            String::from_utf8(Status::exit_code(3).to_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
    }

    #[test]
    fn backend_failure_is_an_internal_error() {
        let status = Status::from_exec(&Err(BackendError::NotFound("c1".into())));
        let json = String::from_utf8(status.to_json()).unwrap();
        assert!(json.contains(r#""reason":"InternalError""#), "{json}");
        assert!(json.contains(r#""code":500"#), "{json}");
    }
}

//! The request cache: what a CRI Exec, Attach or PortForward asked for, kept under a
//! single-use random token until the client comes to the URL, as the kubelet's streaming
//! server does (8 random bytes, base64url, one minute to live, a bound on entries).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use tokio::time::Instant;

/// What a CRI Exec asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// What a CRI Attach asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// What a CRI PortForward asked for (WebSocket clients forward these ports; SPDY clients name
/// theirs per stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_sandbox_id: String,
    pub ports: Vec<u16>,
}

/// A cached request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRequest {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl StreamRequest {
    /// The URL path segment for this kind of request.
    pub fn path(&self) -> &'static str {
        match self {
            StreamRequest::Exec(_) => "exec",
            StreamRequest::Attach(_) => "attach",
            StreamRequest::PortForward(_) => "portforward",
        }
    }

    /// The kubelet's checks, which a CRI server maps to InvalidArgument.
    pub fn validate(&self) -> Result<(), TokenError> {
        let (id, tty, stdin, stdout, stderr) = match self {
            StreamRequest::Exec(r) => (&r.container_id, r.tty, r.stdin, r.stdout, r.stderr),
            StreamRequest::Attach(r) => (&r.container_id, r.tty, r.stdin, r.stdout, r.stderr),
            StreamRequest::PortForward(r) => {
                if r.pod_sandbox_id.is_empty() {
                    return Err(TokenError::Invalid("missing required pod_sandbox_id"));
                }
                return Ok(());
            }
        };
        if id.is_empty() {
            return Err(TokenError::Invalid("missing required container_id"));
        }
        if tty && stderr {
            return Err(TokenError::Invalid("tty and stderr cannot both be true"));
        }
        if !stdin && !stdout && !stderr {
            return Err(TokenError::Invalid(
                "one of stdin, stdout, or stderr must be set",
            ));
        }
        Ok(())
    }
}

/// Why a request could not be cached.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("too many streaming requests in flight")]
    TooManyInFlight,
    #[error("no randomness for a token")]
    Random(#[source] getrandom::Error),
    #[error("{0}")]
    Invalid(&'static str),
}

struct Entry {
    request: StreamRequest,
    expires: Instant,
}

/// Single-use tokens for pending streaming requests.
pub struct RequestCache {
    entries: Mutex<HashMap<String, Entry>>,
    ttl: Duration,
    max_in_flight: usize,
}

impl RequestCache {
    /// A cache whose tokens live `ttl` and that holds at most `max_in_flight` of them.
    pub fn new(ttl: Duration, max_in_flight: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max_in_flight,
        }
    }

    /// Checks and stores `request`, returning its token.
    pub fn insert(&self, request: StreamRequest) -> Result<String, TokenError> {
        request.validate()?;
        let mut entries = self.lock();
        let now = Instant::now();
        entries.retain(|_, e| e.expires > now);
        if entries.len() >= self.max_in_flight {
            return Err(TokenError::TooManyInFlight);
        }
        let token = loop {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(TokenError::Random)?;
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            if !entries.contains_key(&token) {
                break token;
            }
        };
        entries.insert(
            token.clone(),
            Entry {
                request,
                expires: now + self.ttl,
            },
        );
        Ok(token)
    }

    /// Takes the request behind `token`; `None` if it is unknown, used or expired.
    pub fn consume(&self, token: &str) -> Option<StreamRequest> {
        let entry = self.lock().remove(token)?;
        (entry.expires > Instant::now()).then_some(entry.request)
    }

    /// Requests waiting for their client.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no request is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> StreamRequest {
        StreamRequest::Exec(ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
    }

    #[test]
    fn token_is_single_use() {
        let cache = RequestCache::new(Duration::from_secs(60), 10);
        let token = cache.insert(exec()).unwrap();
        assert_eq!(token.len(), 11);
        assert_eq!(cache.consume(&token), Some(exec()));
        assert_eq!(cache.consume(&token), None);
        assert_eq!(cache.consume("unknown"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_token_is_refused_and_collected() {
        let cache = RequestCache::new(Duration::from_secs(60), 1);
        let token = cache.insert(exec()).unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(cache.consume(&token), None);
        cache.insert(exec()).unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        // The expired entry makes room for the next one.
        cache.insert(exec()).unwrap();
    }

    #[test]
    fn in_flight_bound_holds() {
        let cache = RequestCache::new(Duration::from_secs(60), 2);
        cache.insert(exec()).unwrap();
        cache.insert(exec()).unwrap();
        assert!(matches!(
            cache.insert(exec()),
            Err(TokenError::TooManyInFlight)
        ));
    }

    #[test]
    fn tty_with_stderr_is_invalid() {
        let cache = RequestCache::new(Duration::from_secs(60), 2);
        let request = StreamRequest::Attach(AttachRequest {
            container_id: "c1".into(),
            tty: true,
            stdin: true,
            stdout: true,
            stderr: true,
        });
        assert!(matches!(cache.insert(request), Err(TokenError::Invalid(_))));
    }
}

//! The HTTP side: bind, hand out URLs for cached requests, and on each request consume the
//! token, negotiate the protocol and upgrade the connection (hyper 1, HTTP/1.1). With TLS
//! configured each accepted connection first completes its handshake (see [`crate::tls`]) on
//! its own task, and hyper serves the TLS stream as it would the plain socket.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::backend::Backend;
use crate::portforward;
use crate::remotecommand::{self, Operation};
use crate::tls::{Handshake, TlsError};
use crate::tokens::{RequestCache, StreamRequest, TokenError};

/// The streaming server's settings (`[streaming]` in the CRI's configuration).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free one, as containerd does.
    pub addr: SocketAddr,
    /// TLS certificate and key (PEM): set, the server speaks HTTPS only and hands out
    /// `https://` URLs; the files are read when it binds.
    pub tls: Option<TlsConfig>,
    /// How long a client has to complete the TLS handshake after connecting.
    pub tls_handshake_timeout: Duration,
    /// How long a token waits for its client.
    pub token_ttl: Duration,
    /// Requests waiting for their client at most.
    pub max_in_flight: usize,
    /// A session with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// How long a SPDY client has to open its streams.
    pub stream_creation_timeout: Duration,
}

/// Paths of a PEM certificate chain and key.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The chain, the server's certificate first.
    pub cert: PathBuf,
    /// Its private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            tls_handshake_timeout: Duration::from_secs(10),
            token_ttl: Duration::from_secs(60),
            max_in_flight: 1000,
            idle_timeout: Duration::from_secs(4 * 60 * 60),
            stream_creation_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the server could not start or hand out a URL.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding the streaming server to {addr} failed")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up tls for the streaming server failed")]
    Tls(#[from] TlsError),
    #[error("streaming request refused")]
    Request(#[from] TokenError),
}

/// The timeouts a session runs under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub idle: Duration,
    pub stream_creation: Duration,
    /// After the work is done, how long the client gets to read the last bytes.
    pub linger: Duration,
}

/// What the CRI server keeps to turn requests into URLs.
#[derive(Clone)]
pub struct StreamingUrls {
    cache: Arc<RequestCache>,
    base: String,
}

impl StreamingUrls {
    /// Caches `request` and returns its URL (`http://ADDR/exec/TOKEN` and so on; `https`
    /// with TLS).
    pub fn url_for(&self, request: StreamRequest) -> Result<String, ServerError> {
        let path = request.path();
        let token = self.cache.insert(request)?;
        Ok(format!("{}/{path}/{token}", self.base))
    }
}

/// A bound streaming server.
pub struct StreamingServer<B> {
    listener: TcpListener,
    tls: Option<Handshake>,
    backend: Arc<B>,
    cache: Arc<RequestCache>,
    timeouts: Timeouts,
    base: String,
}

impl<B: Backend> StreamingServer<B> {
    /// Reads the TLS certificate and key, if configured, and binds the listener.
    pub async fn bind(config: Config, backend: B) -> Result<Self, ServerError> {
        let tls = match &config.tls {
            Some(files) => Some(Handshake::new(
                &files.cert,
                &files.key,
                config.tls_handshake_timeout,
            )?),
            None => None,
        };
        let listener =
            TcpListener::bind(config.addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.addr,
                    source,
                })?;
        let local = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.addr,
            source,
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        Ok(Self {
            listener,
            tls,
            backend: Arc::new(backend),
            cache: Arc::new(RequestCache::new(config.token_ttl, config.max_in_flight)),
            timeouts: Timeouts {
                idle: config.idle_timeout,
                stream_creation: config.stream_creation_timeout,
                linger: Duration::from_secs(5),
            },
            base: format!("{scheme}://{local}"),
        })
    }

    /// The URL maker for the CRI handlers.
    pub fn urls(&self) -> StreamingUrls {
        StreamingUrls {
            cache: self.cache.clone(),
            base: self.base.clone(),
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the future is dropped; dropping it ends every connection and session.
    pub async fn serve(self) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let Ok((socket, peer)) = accepted else { continue };
                    let _ = socket.set_nodelay(true);
                    let (backend, cache, timeouts) =
                        (self.backend.clone(), self.cache.clone(), self.timeouts);
                    match self.tls.clone() {
                        None => {
                            connections.spawn(serve_connection(socket, backend, cache, timeouts));
                        }
                        // The handshake runs on the connection's task, never the accept loop.
                        Some(tls) => {
                            connections.spawn(async move {
                                if let Some(stream) = tls.accept(socket, peer).await {
                                    serve_connection(stream, backend, cache, timeouts).await;
                                }
                            });
                        }
                    }
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    }
}

type Session = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One HTTP connection: the request, then, if it upgraded, the session on the same task.
async fn serve_connection<B, S>(
    socket: S,
    backend: Arc<B>,
    cache: Arc<RequestCache>,
    timeouts: Timeouts,
) where
    B: Backend,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (session_tx, mut session_rx) = mpsc::unbounded_channel::<Session>();
    let service = service_fn(move |request| {
        let response = route(request, &backend, &cache, timeouts, &session_tx);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(socket), service)
        .with_upgrades();
    let sessions = async {
        while let Some(session) = session_rx.recv().await {
            session.await;
        }
    };
    let _ = tokio::join!(connection, sessions);
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn route<B: Backend>(
    mut request: Request<Incoming>,
    backend: &Arc<B>,
    cache: &RequestCache,
    timeouts: Timeouts,
    sessions: &mpsc::UnboundedSender<Session>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let path = request.uri().path().to_owned();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (Some(kind), Some(token)) = (parts.next(), parts.next()) else {
        return plain(StatusCode::NOT_FOUND, "404 page not found");
    };
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() {
        return plain(StatusCode::NOT_FOUND, "404 page not found");
    }
    // As the kubelet: the token is spent by the first request that names it, whatever follows.
    let Some(cached) = cache.consume(token) else {
        return plain(StatusCode::NOT_FOUND, "404 page not found");
    };
    if cached.path() != kind {
        return plain(StatusCode::NOT_FOUND, "404 page not found");
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let headers = request.headers();
    let backend = backend.clone();
    if is_websocket(headers) {
        return websocket_upgrade(headers, cached, backend, timeouts, on_upgrade, sessions);
    }
    spdy_upgrade(headers, cached, backend, timeouts, on_upgrade, sessions)
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains(token))
    })
}

fn is_websocket(headers: &HeaderMap) -> bool {
    header_has(headers, header::CONNECTION, "upgrade")
        && headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The client's offers in order, from every instance of a comma-separated header.
fn offers(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn spdy_upgrade<B: Backend>(
    headers: &HeaderMap,
    cached: StreamRequest,
    backend: Arc<B>,
    timeouts: Timeouts,
    on_upgrade: hyper::upgrade::OnUpgrade,
    sessions: &mpsc::UnboundedSender<Session>,
) -> Response<Full<Bytes>> {
    let supported: Vec<&str> = match &cached {
        StreamRequest::PortForward(_) => vec![portforward::spdy::PROTOCOL],
        _ => remotecommand::spdy::PROTOCOLS.iter().map(|p| p.0).collect(),
    };
    let client = offers(headers, "x-stream-protocol-version");
    if client.is_empty() {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required",
        );
    }
    // The first of the client's offers that we support, as apimachinery's Handshake picks.
    let Some(chosen) = client
        .iter()
        .find(|c| supported.contains(&c.as_str()))
        .cloned()
    else {
        let mut response = plain(
            StatusCode::FORBIDDEN,
            &format!(
                "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {supported:?}"
            ),
        );
        for protocol in &supported {
            response.headers_mut().append(
                "x-accepted-stream-protocol-versions",
                HeaderValue::from_static(protocol),
            );
        }
        return response;
    };
    if !header_has(headers, header::CONNECTION, "upgrade")
        || !header_has(headers, header::UPGRADE, "spdy/3.1")
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        );
    }
    let session: Session = match cached {
        StreamRequest::PortForward(request) => Box::pin(async move {
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            portforward::spdy::serve(
                TokioIo::new(upgraded),
                backend,
                request.pod_sandbox_id,
                timeouts,
            )
            .await;
        }),
        other => {
            let version = remotecommand::spdy::PROTOCOLS
                .iter()
                .find(|p| p.0 == chosen)
                .map_or(remotecommand::Version::V1, |p| p.1);
            let operation = match other {
                StreamRequest::Exec(r) => Operation::Exec(r),
                StreamRequest::Attach(r) => Operation::Attach(r),
                StreamRequest::PortForward(_) => return plain(StatusCode::NOT_FOUND, ""),
            };
            Box::pin(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                remotecommand::spdy::serve(
                    TokioIo::new(upgraded),
                    backend,
                    version,
                    operation,
                    timeouts,
                )
                .await;
            })
        }
    };
    let _ = sessions.send(session);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(value) = HeaderValue::from_str(&chosen) {
        h.insert("x-stream-protocol-version", value);
    }
    response
}

fn websocket_upgrade<B: Backend>(
    headers: &HeaderMap,
    cached: StreamRequest,
    backend: Arc<B>,
    timeouts: Timeouts,
    on_upgrade: hyper::upgrade::OnUpgrade,
    sessions: &mpsc::UnboundedSender<Session>,
) -> Response<Full<Bytes>> {
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return plain(StatusCode::BAD_REQUEST, "missing sec-websocket-key");
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return plain(StatusCode::BAD_REQUEST, "unsupported websocket version");
    }
    let accept = derive_accept_key(key.as_bytes());
    let mut client = offers(headers, "sec-websocket-protocol");
    if client.is_empty() {
        client.push(String::new());
    }
    let chosen: String;
    let session: Session = match cached {
        StreamRequest::PortForward(request) => {
            let Some((name, mode)) = client.iter().find_map(|c| {
                portforward::websocket::PROTOCOLS
                    .iter()
                    .find(|p| p.0 == c)
                    .copied()
            }) else {
                return plain(
                    StatusCode::FORBIDDEN,
                    "requested protocols are not supported",
                );
            };
            chosen = name.to_owned();
            Box::pin(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let ws = accept_socket(upgraded).await;
                portforward::websocket::serve(
                    ws,
                    backend,
                    request.pod_sandbox_id,
                    request.ports,
                    mode,
                    timeouts,
                )
                .await;
            })
        }
        other => {
            let Some((name, version, encoding)) = client.iter().find_map(|c| {
                remotecommand::websocket::PROTOCOLS
                    .iter()
                    .find(|p| p.0 == c)
                    .copied()
            }) else {
                return plain(
                    StatusCode::FORBIDDEN,
                    "requested protocols are not supported",
                );
            };
            chosen = name.to_owned();
            let operation = match other {
                StreamRequest::Exec(r) => Operation::Exec(r),
                StreamRequest::Attach(r) => Operation::Attach(r),
                StreamRequest::PortForward(_) => return plain(StatusCode::NOT_FOUND, ""),
            };
            Box::pin(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let ws = accept_socket(upgraded).await;
                remotecommand::websocket::serve(
                    ws, backend, version, encoding, operation, timeouts,
                )
                .await;
            })
        }
    };
    let _ = sessions.send(session);
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    if !chosen.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&chosen) {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
        }
    }
    response
}

async fn accept_socket(
    upgraded: hyper::upgrade::Upgraded,
) -> WebSocketStream<TokioIo<hyper::upgrade::Upgraded>> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await
}

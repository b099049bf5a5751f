//! HTTPS for the streaming server: the certificate chain and private key, read once when the
//! server binds, and the handshake that each accepted connection goes through before hyper
//! sees it.
//!
//! Both files are PEM. The certificate file holds the chain, the server's own certificate
//! first; the key file holds one private key as PKCS#8 (`PRIVATE KEY`), PKCS#1
//! (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`); other sections in either file are skipped,
//! so one file may hold both. The crypto is rustls with its `ring` provider, TLS 1.2 and 1.3.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the tls {what} file {} does not exist", .path.display())]
    Missing { what: &'static str, path: PathBuf },
    #[error("could not read the tls {what} file {}", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the tls {what} file {} is not valid pem", .path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("no certificate in the tls certificate file {}", .0.display())]
    NoCertificate(PathBuf),
    #[error(
        "no private key (pkcs#8, pkcs#1 or sec1) in the tls key file {}",
        .0.display()
    )]
    NoKey(PathBuf),
    #[error(
        "the private key in {} does not match the certificate in {}",
        .key.display(),
        .cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "the tls certificate {} or key {} was refused",
        .cert.display(),
        .key.display()
    )]
    Refused {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// The server side of every connection's handshake.
#[derive(Clone)]
pub(crate) struct Handshake {
    acceptor: TlsAcceptor,
    timeout: Duration,
}

impl Handshake {
    /// Reads `cert` and `key`; each handshake may take up to `timeout`.
    pub(crate) fn new(cert: &Path, key: &Path, timeout: Duration) -> Result<Self, TlsError> {
        Ok(Self {
            acceptor: acceptor(cert, key)?,
            timeout,
        })
    }

    /// Completes the handshake on `socket`; `None` (logged) when it fails or takes too
    /// long, which ends that connection and nothing else.
    pub(crate) async fn accept(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
    ) -> Option<TlsStream<TcpStream>> {
        match tokio::time::timeout(self.timeout, self.acceptor.accept(socket)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "tls handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "tls handshake timed out");
                None
            }
        }
    }
}

/// Reads `cert` and `key` and builds the acceptor every connection's handshake runs through.
fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = read_certificates(cert)?;
    let private_key = read_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let refused = |source| TlsError::Refused {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(refused)?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                TlsError::KeyMismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                }
            }
            other => refused(other),
        })?;
    // Upgrades (SPDY, WebSocket) exist in HTTP/1.1 only; a client offering just h2 gets an
    // alert rather than a connection it cannot use. One offering nothing is served too.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            TlsError::Missing {
                what,
                path: path.to_owned(),
            }
        } else {
            TlsError::Read {
                what,
                path: path.to_owned(),
                source,
            }
        }
    })
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read("certificate", path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: "certificate",
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read("key", path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey(path.to_owned()),
        source => TlsError::Pem {
            what: "key",
            path: path.to_owned(),
            source,
        },
    })
}

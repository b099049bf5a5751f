//! A self-signed certificate (rcgen) in a scratch directory, and TLS clients that trust it:
//! include with `#[path = "common/tls.rs"] mod tls;` beside `mod common;`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use vpod_streaming::TlsConfig;

/// A scratch directory, removed on drop, holding a certificate for 127.0.0.1 and localhost
/// (`cert.pem`) and its ECDSA P-256 key as PKCS#8 (`key.pem`).
pub struct TlsFiles {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    der: CertificateDer<'static>,
    /// The key's PKCS#8 DER.
    pub key_pkcs8: Vec<u8>,
}

impl TlsFiles {
    pub fn new() -> TlsFiles {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vpod-streaming-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let generated =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                .unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        TlsFiles {
            dir,
            cert,
            key,
            der: generated.cert.der().clone(),
            key_pkcs8: generated.signing_key.serialize_der(),
        }
    }

    /// Writes `contents` to `name` in the directory.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// The server's settings for this certificate and key.
    pub fn config(&self) -> TlsConfig {
        TlsConfig {
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// A client trusting only this certificate, offering `alpn` (none: no ALPN extension).
    pub fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects to the server of `url` (`https://127.0.0.1:PORT/...`) and completes the
/// handshake, verifying the certificate against the address.
pub async fn connect(connector: &TlsConnector, url: &str) -> TlsStream<TcpStream> {
    let (addr, _) = crate::common::split_url(url);
    assert!(url.starts_with("https://"), "{url}");
    let socket = TcpStream::connect(&addr).await.unwrap();
    let host = addr.rsplit_once(':').unwrap().0.to_owned();
    let name = ServerName::try_from(host).unwrap();
    connector.connect(name, socket).await.unwrap()
}

/// PEM text of one `label` section holding `der`.
pub fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap());
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// The SEC1 `ECPrivateKey` inside a PKCS#8 `PrivateKeyInfo`: the contents of its
/// `privateKey` OCTET STRING, the third element of the outer SEQUENCE.
pub fn sec1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
    let (tag, outer, _) = der_element(pkcs8);
    assert_eq!(tag, 0x30, "not a sequence");
    let (_, _, rest) = der_element(outer); // version
    let (_, _, rest) = der_element(rest); // algorithm
    let (tag, key, _) = der_element(rest);
    assert_eq!(tag, 0x04, "not an octet string");
    key.to_vec()
}

/// One DER element: (tag, contents, what follows).
fn der_element(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, header) = match input[1] {
        short if short < 0x80 => (usize::from(short), 2),
        long => {
            let octets = usize::from(long & 0x7f);
            let len = input[2..2 + octets]
                .iter()
                .fold(0usize, |len, b| (len << 8) | usize::from(*b));
            (len, 2 + octets)
        }
    };
    (tag, &input[header..header + len], &input[header + len..])
}

//! Talking to an OCI distribution registry through oci-client: the client for one pull
//! (its credentials are that pull's alone), the manifest resolved to linux on this host's
//! architecture, and blobs fetched with their digests and sizes checked.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth as OciAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType, Os};
use serde::Deserialize;
use tokio::io::AsyncWrite;

use crate::digest::Digest;
use crate::oci::convert::{self, BlobRef};
use crate::oci::layout::{host_platform, ResolvedImage, ResolvedLayer, MAX_JSON_BLOB_BYTES};
use crate::oci::media_types::{self, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST};
use crate::registry::reference::ImageReference;
use crate::registry::{ImagesError, RegistryAuth, Shared};

/// Where `image` is pulled from: its registry's mirror if it has one, else its registry.
pub fn endpoint(shared: &Shared, image: &ImageReference) -> String {
    shared
        .options
        .mirrors
        .get(&image.registry)
        .cloned()
        .unwrap_or_else(|| image.registry.clone())
}

/// Whether `registry` (`host[:port]`) is this machine's loopback: `localhost`, 127.0.0.0/8 or
/// `[::1]`. As Docker and containerd do, a registry there that does not answer HTTPS is
/// reached over plain HTTP without being listed in `insecure_registries`; traffic to it
/// never leaves the machine.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        registry.rsplit_once(':').map_or(registry, |(host, _)| host)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Manifest media types asked for, most wanted first.
fn accepted_manifests() -> [MediaType; 4] {
    [
        MediaType::ImageManifest,
        MediaType::ImageIndex,
        MediaType::from(MEDIA_TYPE_DOCKER_MANIFEST),
        MediaType::from(MEDIA_TYPE_DOCKER_MANIFEST_LIST),
    ]
}

/// Image indexes pointing at image indexes deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 4;

/// An image's manifest and config, fetched and verified, not yet stored.
pub(super) struct RemoteImage {
    /// The digest of the document the reference named (an index, or the manifest).
    pub top_digest: Digest,
    pub image: ResolvedImage,
}

/// The registry side of one pull.
pub(super) struct Fetcher {
    client: Client,
    auth: OciAuth,
    reference: Reference,
    /// The normalized reference, for messages.
    name: String,
}

impl Fetcher {
    /// A fetcher for `image`; `plain_http` reaches its registry over plain HTTP whatever
    /// `insecure_registries` says (the loopback fallback, see [`is_loopback`]).
    pub fn new(
        shared: &Shared,
        image: &ImageReference,
        auth: Option<&RegistryAuth>,
        plain_http: bool,
    ) -> Result<Fetcher, ImagesError> {
        let name = image.to_string();
        let auth = oci_auth(&name, auth)?;
        let options = &shared.options;
        let endpoint = endpoint(shared, image);
        let mut plain = options.insecure_registries.clone();
        if plain_http {
            plain.push(endpoint.clone());
        }
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            extra_root_certificates: shared.certificates.clone(),
            // Indexes are resolved here, from the raw documents, so their digests are ours.
            platform_resolver: None,
            connect_timeout: Some(options.connect_timeout),
            read_timeout: Some(options.read_timeout),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(ImagesError::Client)?;
        let reference = match (&image.tag, &image.digest) {
            (_, Some(digest)) => Reference::with_digest(
                endpoint.clone(),
                image.repository.clone(),
                digest.to_string(),
            ),
            (tag, None) => Reference::with_tag(
                endpoint.clone(),
                image.repository.clone(),
                tag.clone()
                    .unwrap_or_else(|| super::reference::DEFAULT_TAG.to_owned()),
            ),
        };
        Ok(Fetcher {
            client,
            auth,
            reference,
            name,
        })
    }

    /// Fetches the manifest (following an index to linux on this architecture) and the
    /// config, checking every digest and media type.
    pub async fn resolve(&self) -> Result<RemoteImage, ImagesError> {
        self.client
            .auth(&self.reference, &self.auth, RegistryOperation::Pull)
            .await
            .map_err(|e| self.registry_error(e, "registry's answer"))?;
        let (mut manifest_digest, mut bytes) = self
            .fetch_manifest(&self.reference, self.reference.digest())
            .await?;
        let top_digest = manifest_digest;
        let mut depth = 0;
        let manifest: ImageManifest = loop {
            let media_type = manifest_media_type(&bytes).map_err(|e| self.invalid(e))?;
            if media_types::is_manifest(&media_type) {
                break serde_json::from_slice(&bytes).map_err(|e| self.invalid(e))?;
            }
            if !media_types::is_index(&media_type) {
                return Err(ImagesError::UnsupportedMediaType {
                    reference: self.name.clone(),
                    what: "manifest",
                    media_type: media_type.to_string(),
                });
            }
            depth += 1;
            if depth > MAX_INDEX_DEPTH {
                return Err(ImagesError::InvalidManifest {
                    reference: self.name.clone(),
                    reason: format!("image indexes nest deeper than {MAX_INDEX_DEPTH}"),
                });
            }
            let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| self.invalid(e))?;
            let child = choose_platform(&index).ok_or_else(|| ImagesError::NoMatchingPlatform {
                reference: self.name.clone(),
                platform: format!("linux/{}", host_platform()),
            })?;
            let child_digest = BlobRef::try_from(child)
                .map_err(|e| self.invalid(e))?
                .digest
                .to_string();
            let child_reference = self.reference.clone_with_digest(child_digest.clone());
            (manifest_digest, bytes) = self
                .fetch_manifest(&child_reference, Some(&child_digest))
                .await?;
        };
        let config_blob = BlobRef::try_from(manifest.config()).map_err(|e| self.invalid(e))?;
        let layer_blobs = manifest
            .layers()
            .iter()
            .map(BlobRef::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.invalid(e))?;

        if !media_types::is_config(&config_blob.media_type) {
            return Err(ImagesError::UnsupportedMediaType {
                reference: self.name.clone(),
                what: "config",
                media_type: config_blob.media_type.to_string(),
            });
        }
        if let Some(layer) = layer_blobs
            .iter()
            .find(|layer| !media_types::is_layer(&layer.media_type))
        {
            return Err(ImagesError::UnsupportedMediaType {
                reference: self.name.clone(),
                what: "layer",
                media_type: layer.media_type.to_string(),
            });
        }
        if config_blob.size > MAX_JSON_BLOB_BYTES {
            return Err(ImagesError::TooLarge {
                reference: self.name.clone(),
                what: "config",
                size: config_blob.size,
                limit: MAX_JSON_BLOB_BYTES,
            });
        }
        let mut config_bytes = Vec::new();
        self.fetch_blob(&config_blob, "config blob", &mut config_bytes)
            .await?;
        // oci-client checked it while streaming; checked here too, not to depend on that.
        let config_digest = Digest::of_bytes(&config_bytes);
        if config_digest != config_blob.digest {
            return Err(ImagesError::DigestMismatch {
                reference: self.name.clone(),
                what: "config blob",
                expected: config_blob.digest.to_string(),
                actual: config_digest.to_string(),
            });
        }
        let config = convert::parse_image_config(&config_bytes).map_err(|e| self.invalid(e))?;
        let diff_ids = convert::diff_ids(&config).map_err(|e| self.invalid(e))?;
        if config.rootfs().typ() != "layers" || diff_ids.len() != layer_blobs.len() {
            return Err(ImagesError::InvalidManifest {
                reference: self.name.clone(),
                reason: format!(
                    "the config's rootfs ({:?}, {} diffIDs) does not match the manifest's {} layers",
                    config.rootfs().typ(),
                    diff_ids.len(),
                    layer_blobs.len()
                ),
            });
        }
        Ok(RemoteImage {
            top_digest,
            image: ResolvedImage {
                manifest_digest,
                config_digest,
                config,
                layers: layer_blobs
                    .into_iter()
                    .zip(diff_ids)
                    .map(|(blob, diff_id)| ResolvedLayer { blob, diff_id })
                    .collect(),
            },
        })
    }

    /// Streams layer blob `descriptor` into `out`, refusing more bytes than its size,
    /// checking its digest at the end.
    pub async fn stream_blob<W: AsyncWrite + Unpin>(
        &self,
        descriptor: &BlobRef,
        out: &mut W,
    ) -> Result<(), ImagesError> {
        self.fetch_blob(descriptor, "layer blob", out).await
    }

    /// Fetches a blob into `out`; oci-client checks the digest as it streams, and the size
    /// is held to the descriptor's.
    async fn fetch_blob<W: AsyncWrite + Unpin>(
        &self,
        descriptor: &BlobRef,
        what: &'static str,
        out: &mut W,
    ) -> Result<(), ImagesError> {
        let digest = descriptor.digest.to_string();
        let mut limited = LimitedWriter {
            inner: out,
            remaining: descriptor.size,
            exceeded: false,
        };
        let pulled = self
            .client
            .pull_blob(&self.reference, digest.as_str(), &mut limited)
            .await;
        if limited.exceeded {
            return Err(ImagesError::SizeMismatch {
                reference: self.name.clone(),
                what,
                digest: descriptor.digest,
                expected: descriptor.size,
            });
        }
        pulled.map_err(|e| self.registry_error(e, what))?;
        if limited.remaining != 0 {
            return Err(ImagesError::SizeMismatch {
                reference: self.name.clone(),
                what,
                digest: descriptor.digest,
                expected: descriptor.size,
            });
        }
        Ok(())
    }

    /// One manifest document and its digest, computed here and checked against the digest
    /// it was asked by (oci-client also checks the registry's `Docker-Content-Digest`).
    async fn fetch_manifest(
        &self,
        reference: &Reference,
        expected: Option<&str>,
    ) -> Result<(Digest, Vec<u8>), ImagesError> {
        let accepted = accepted_manifests();
        let accepted: Vec<&str> = accepted.iter().map(AsRef::as_ref).collect();
        let (bytes, _) = self
            .client
            .pull_manifest_raw(reference, &self.auth, &accepted)
            .await
            .map_err(|e| self.registry_error(e, "manifest"))?;
        if bytes.len() as u64 > MAX_JSON_BLOB_BYTES {
            return Err(ImagesError::TooLarge {
                reference: self.name.clone(),
                what: "manifest",
                size: bytes.len() as u64,
                limit: MAX_JSON_BLOB_BYTES,
            });
        }
        let actual = Digest::of_bytes(&bytes);
        if let Some(expected) = expected {
            if expected != actual.to_string() {
                return Err(ImagesError::DigestMismatch {
                    reference: self.name.clone(),
                    what: "manifest",
                    expected: expected.to_owned(),
                    actual: actual.to_string(),
                });
            }
        }
        Ok((actual, bytes.to_vec()))
    }

    fn invalid(&self, error: impl std::fmt::Display) -> ImagesError {
        ImagesError::InvalidManifest {
            reference: self.name.clone(),
            reason: error.to_string(),
        }
    }

    /// Sorts oci-client's errors into the kinds a caller acts on; `what` was being fetched.
    fn registry_error(&self, error: OciDistributionError, what: &'static str) -> ImagesError {
        let reference = self.name.clone();
        match error {
            OciDistributionError::UnauthorizedError { url } => ImagesError::Unauthorized {
                reference,
                detail: format!("{url} answered 401"),
            },
            OciDistributionError::AuthenticationFailure(detail) => ImagesError::Unauthorized {
                reference,
                detail: format!("the token service said: {}", truncate(&detail)),
            },
            OciDistributionError::RegistryError { envelope, url } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                let detail = format!("{url}: {}", truncate(&envelope.to_string()));
                if codes
                    .iter()
                    .any(|code| matches!(code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    ImagesError::Unauthorized { reference, detail }
                } else if codes.iter().any(|code| {
                    matches!(
                        code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    ImagesError::NotFound { reference, detail }
                } else {
                    ImagesError::Registry {
                        reference,
                        source: OciDistributionError::RegistryError { envelope, url },
                    }
                }
            }
            OciDistributionError::ServerError { code: 404, url, .. } => ImagesError::NotFound {
                reference,
                detail: format!("{url} answered 404"),
            },
            OciDistributionError::ServerError {
                code: code @ (401 | 403),
                url,
                ..
            } => ImagesError::Unauthorized {
                reference,
                detail: format!("{url} answered {code}"),
            },
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => ImagesError::DigestMismatch {
                reference,
                what,
                expected,
                actual,
            },
            other => ImagesError::Registry {
                reference,
                source: other,
            },
        }
    }
}

/// The request's credentials as oci-client takes them. Precedence: a registry token (sent
/// as a bearer token), then username and password, then `auth` (base64 `user:password`),
/// then an identity token (sent as the password of basic auth to the token service, with
/// the username given or `<token>`); none means anonymous.
fn oci_auth(reference: &str, auth: Option<&RegistryAuth>) -> Result<OciAuth, ImagesError> {
    let Some(auth) = auth else {
        return Ok(OciAuth::Anonymous);
    };
    if !auth.registry_token.is_empty() {
        return Ok(OciAuth::Bearer(auth.registry_token.clone()));
    }
    if !auth.username.is_empty() {
        return Ok(OciAuth::Basic(auth.username.clone(), auth.password.clone()));
    }
    if !auth.auth.is_empty() {
        let invalid = |reason| ImagesError::InvalidCredentials {
            reference: reference.to_owned(),
            reason,
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.auth.trim())
            .map_err(|_| invalid("the auth field is not base64"))?;
        let text =
            String::from_utf8(decoded).map_err(|_| invalid("the auth field is not UTF-8"))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| invalid("the auth field does not decode to user:password"))?;
        return Ok(OciAuth::Basic(username.to_owned(), password.to_owned()));
    }
    if !auth.identity_token.is_empty() {
        return Ok(OciAuth::Basic(
            "<token>".to_owned(),
            auth.identity_token.clone(),
        ));
    }
    Ok(OciAuth::Anonymous)
}

/// The media type of a manifest document: its `mediaType` field, or, for documents that
/// leave it out (allowed by OCI), what its fields say it is.
pub fn manifest_media_type(bytes: &[u8]) -> Result<MediaType, serde_json::Error> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "schemaVersion")]
        schema_version: u32,
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
        layers: Option<serde::de::IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(bytes)?;
    Ok(match probe.media_type {
        Some(media_type) => MediaType::from(media_type.as_str()),
        None if probe.schema_version != 2 => MediaType::Other(format!(
            "application/vnd.docker.distribution.manifest.v{}+json",
            probe.schema_version
        )),
        None if probe.manifests.is_some() => MediaType::ImageIndex,
        None if probe.layers.is_some() => MediaType::ImageManifest,
        None => MediaType::Other(String::new()),
    })
}

/// The index entry for linux on this host's architecture (for arm64, variant v8 or none).
pub fn choose_platform(index: &ImageIndex) -> Option<&Descriptor> {
    let architecture = Arch::from(host_platform());
    index.manifests().iter().find(|entry| {
        entry.platform().as_ref().is_some_and(|platform| {
            *platform.os() == Os::Linux
                && *platform.architecture() == architecture
                && (architecture != Arch::ARM64
                    || matches!(platform.variant().as_deref(), None | Some("v8")))
        })
    })
}

fn truncate(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Passes at most `remaining` bytes on; a registry sending more than the descriptor's size
/// is stopped at once rather than filling the disk.
struct LimitedWriter<'a, W> {
    inner: &'a mut W,
    remaining: u64,
    exceeded: bool,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LimitedWriter<'_, W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if buf.len() as u64 > this.remaining {
            this.exceeded = true;
            return Poll::Ready(Err(std::io::Error::other(
                "the registry sent more bytes than the descriptor's size",
            )));
        }
        let written = std::task::ready!(Pin::new(&mut *this.inner).poll_write(cx, buf))?;
        this.remaining -= written as u64;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_known_by_name_and_address() {
        for registry in [
            "localhost",
            "localhost:5000",
            "LOCALHOST:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(registry), "{registry}");
        }
        for registry in [
            "docker.io",
            "registry.k8s.io",
            "10.0.0.1:5000",
            "192.168.1.1",
            "localhost.example.com:5000",
            "[::2]:5000",
            "128.0.0.1",
        ] {
            assert!(!is_loopback(registry), "{registry}");
        }
    }

    #[test]
    fn credentials_map_in_order_of_precedence() {
        let mut auth = RegistryAuth {
            auth: base64::engine::general_purpose::STANDARD.encode("alice:s3:cret"),
            ..RegistryAuth::default()
        };
        assert_eq!(
            oci_auth("r", Some(&auth)).unwrap(),
            OciAuth::Basic("alice".into(), "s3:cret".into())
        );
        auth.username = "bob".into();
        auth.password = "pw".into();
        assert_eq!(
            oci_auth("r", Some(&auth)).unwrap(),
            OciAuth::Basic("bob".into(), "pw".into())
        );
        auth.registry_token = "tok".into();
        assert_eq!(
            oci_auth("r", Some(&auth)).unwrap(),
            OciAuth::Bearer("tok".into())
        );
        assert_eq!(oci_auth("r", None).unwrap(), OciAuth::Anonymous);
        assert_eq!(
            oci_auth("r", Some(&RegistryAuth::default())).unwrap(),
            OciAuth::Anonymous
        );
    }

    #[test]
    fn malformed_auth_field_is_refused() {
        for bad in [
            "%%%",
            &base64::engine::general_purpose::STANDARD.encode("nocolon"),
        ] {
            let auth = RegistryAuth {
                auth: bad.to_string(),
                ..RegistryAuth::default()
            };
            assert!(matches!(
                oci_auth("r", Some(&auth)),
                Err(ImagesError::InvalidCredentials { .. })
            ));
        }
    }

    #[test]
    fn manifest_kind_is_read_from_fields_when_media_type_is_absent() {
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            MediaType::ImageIndex
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#).unwrap(),
            MediaType::ImageManifest
        );
        assert_eq!(
            manifest_media_type(br#"{"schemaVersion":1,"fsLayers":[]}"#)
                .unwrap()
                .as_ref(),
            "application/vnd.docker.distribution.manifest.v1+json"
        );
    }
}

//! The gRPC face of the runtime: CRI runtime v1 RuntimeService and ImageService on a unix
//! socket. The services hand each RPC to its verb's room, one file per verb as the runtime
//! has them: `pod`, `container` and `image` (containerd's `internal/cri/server` is laid
//! out so). A verb's file validates and converts the CRI request into the runtime's terms,
//! calls [`crate::runtime::Runtime`], converts the answer back and maps the error with
//! [`status`], the one error-to-status map; `common` holds what several verbs share.

mod bounds;
mod common;
mod container;
mod image;
mod image_service;
mod pod;
mod runtime_service;
mod runtime_status;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;
use tonic::{Code, Status};
use vpod_proto::authority::AuthorityStream;
use vpod_proto::cri::image_service_server::ImageServiceServer;
use vpod_proto::cri::runtime_service_server::RuntimeServiceServer;
use vpod_proto::error_chain;

use crate::ids::IdError;
use crate::images::ImageError;
use crate::runtime::{Runtime, RuntimeError};
use vpod_image::registry::ImagesError;
use vpod_streaming::TokenError;

pub use image_service::ImageServer;
pub use runtime_service::RuntimeServer;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("could not prepare the socket {0}")]
    Socket(std::path::PathBuf, #[source] std::io::Error),
    #[error("the gRPC server failed")]
    Serve(#[source] tonic::transport::Error),
}

/// The gRPC status of a runtime error.
pub fn status(error: RuntimeError) -> Status {
    let code = match &error {
        RuntimeError::InvalidArgument { .. } => Code::InvalidArgument,
        RuntimeError::Id(IdError::NotFound { .. }) => Code::NotFound,
        RuntimeError::Id(IdError::Ambiguous { .. } | IdError::Empty { .. }) => {
            Code::InvalidArgument
        }
        RuntimeError::Id(IdError::Random) => Code::Internal,
        RuntimeError::AlreadyExists(_) => Code::AlreadyExists,
        RuntimeError::FailedPrecondition(_) => Code::FailedPrecondition,
        RuntimeError::NotFound(_) => Code::NotFound,
        RuntimeError::Unimplemented(_) => Code::Unimplemented,
        RuntimeError::Network(vpod_network::NetworkError::Config(_)) => Code::FailedPrecondition,
        RuntimeError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        RuntimeError::Unavailable(_) => Code::Unavailable,
        RuntimeError::Streaming(vpod_streaming::ServerError::Request(e)) => match e {
            TokenError::TooManyInFlight => Code::ResourceExhausted,
            TokenError::Invalid(_) => Code::InvalidArgument,
            _ => Code::Internal,
        },
        RuntimeError::Image(ImageError::NotFound(_)) => Code::NotFound,
        RuntimeError::Image(ImageError::Registry(e)) => match e {
            ImagesError::NotFound { .. } => Code::NotFound,
            ImagesError::InUse { .. } => Code::FailedPrecondition,
            ImagesError::InvalidReference(_)
            | ImagesError::Ambiguous { .. }
            | ImagesError::InvalidCredentials { .. } => Code::InvalidArgument,
            ImagesError::Unauthorized { .. } => Code::PermissionDenied,
            ImagesError::Registry { .. } => Code::Unavailable,
            _ => Code::Internal,
        },
        _ => Code::Internal,
    };
    let message = error_chain(&error);
    // Whatever the operation, a resource that ran out is what the caller must hear.
    if let Some(resource) = crate::limits::exhausted(&error) {
        tracing::warn!(error = %message, "{resource}");
        return Status::new(Code::ResourceExhausted, format!("{resource}: {message}"));
    }
    if code == Code::Internal {
        tracing::warn!(error = %message, "request failed");
    }
    Status::new(code, message)
}

/// Serves both services on the unix socket `socket` (mode 0660, replacing a stale socket)
/// until `shutdown` completes. Every connection goes through [`AuthorityStream`], so
/// clients that send the socket's path as `:authority` (crictl and kubelets of some
/// versions) are answered as containerd answers them.
pub async fn serve(
    runtime: Arc<Runtime>,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let listener = bind(socket)?;
    tracing::info!(socket = %socket.display(), "serving CRI");
    serve_incoming(
        runtime,
        UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityStream::new)),
        shutdown,
    )
    .await
}

/// Serves both services on the connections `incoming` yields, as they come (the benchmark
/// of [`AuthorityStream`]'s cost serves the same runtime with and without it).
pub async fn serve_incoming<IO>(
    runtime: Arc<Runtime>,
    incoming: impl tokio_stream::Stream<Item = std::io::Result<IO>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError>
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    tonic::transport::Server::builder()
        .add_service(
            RuntimeServiceServer::new(RuntimeServer::new(runtime.clone()))
                .max_decoding_message_size(bounds::MAX_REQUEST_BYTES),
        )
        .add_service(
            ImageServiceServer::new(ImageServer::new(runtime))
                .max_decoding_message_size(bounds::MAX_REQUEST_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(ServerError::Serve)
}

fn bind(socket: &Path) -> Result<UnixListener, ServerError> {
    let err = |e| ServerError::Socket(socket.to_owned(), e);
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(socket).map_err(err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpod_sandbox::{DiskError, SandboxError};

    #[test]
    fn a_status_has_the_code_of_its_error_and_the_whole_chain_as_its_message() {
        let mkfs = std::io::Error::new(std::io::ErrorKind::NotFound, "no mkfs.ext4 here");
        let failed = status(RuntimeError::from(SandboxError::Disk(DiskError::Mkfs(
            mkfs,
        ))));
        assert_eq!(failed.code(), Code::Internal);
        assert_eq!(
            failed.message(),
            "the pod's VM failed: could not make the writable disk: \
             could not run mkfs.ext4 (install e2fsprogs): no mkfs.ext4 here"
        );
        let unknown = status(RuntimeError::Id(IdError::NotFound {
            kind: "container",
            prefix: "abc".into(),
        }));
        assert_eq!(unknown.code(), Code::NotFound);
        assert_eq!(
            unknown.message(),
            "no container has an id starting with \"abc\""
        );
        let refused = status(RuntimeError::invalid("config.tty", "is not supported"));
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert_eq!(refused.message(), "config.tty: is not supported");
    }
}

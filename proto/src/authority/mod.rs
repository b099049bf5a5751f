//! Accepting every gRPC client whatever `:authority` it sends.
//!
//! grpc-go clients before about 1.58 (crictl and critest up to 1.26, kubelets before about
//! 1.30), grpc-java and others send a unix socket's path as the HTTP/2 `:authority`. h2, the
//! HTTP/2 layer under tonic, accepts only `host[:port]` there and resets such a request with
//! PROTOCOL_ERROR; containerd and CRI-O, in Go, ignore the authority. [`AuthorityStream`]
//! sits between an accepted connection and the server and re-encodes each request's header
//! block with `:authority: localhost` ([`rewrite::Rewriter`]); every other frame passes
//! through untouched, and the server's replies are not looked at.

pub mod hpack;
pub mod rewrite;

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;
use tonic::transport::server::Connected;

pub use rewrite::Rewriter;

/// The authority every request reaches the server with.
pub const AUTHORITY: &str = "localhost";

/// Room made for each read from the client.
const READ_CHUNK: usize = 16 * 1024;

/// A server-side connection whose requests all carry `:authority: localhost`.
pub struct AuthorityStream<S> {
    inner: S,
    rewriter: Rewriter,
    /// Read from the client, not yet processed (an incomplete frame).
    input: BytesMut,
    /// Processed, not yet read by the server.
    output: BytesMut,
    eof: bool,
}

impl<S> AuthorityStream<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(AUTHORITY),
            input: BytesMut::new(),
            output: BytesMut::new(),
            eof: false,
        }
    }

    /// How many request header blocks were re-encoded on this connection.
    pub fn rewritten(&self) -> u64 {
        self.rewriter.rewritten()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output[..n]);
                this.output.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            this.input.reserve(READ_CHUNK);
            let read = ready!(poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.input
            ))?;
            if read == 0 {
                this.eof = true;
                this.rewriter.finish(&mut this.input, &mut this.output);
            } else {
                this.rewriter.process(&mut this.input, &mut this.output);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityStream<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests;

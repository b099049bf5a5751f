//! One layer fetched and converted at once: the registry's response body goes through a
//! bounded in-memory pipe into the converter on a blocking thread, which decompresses,
//! hashes and writes the EROFS image as the bytes arrive. A pull of a layer takes about
//! the longer of its download and its conversion, not their sum, and nothing of the blob
//! touches the disk.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::io::{AsyncWrite, DuplexStream};
use tokio_util::io::SyncIoBridge;

use crate::digest::DiffId;
use crate::oci::convert::BlobRef;
use crate::registry::fetch::Fetcher;
use crate::registry::progress::{PullEvent, PullObserver};
use crate::registry::{Images, ImagesError};

/// Bytes the pipe holds between the download and the converter: enough to ride out the
/// converter's pauses (a large file's write, an fsync) without stalling the connection.
const PIPE_BYTES: usize = 4 << 20;

impl Images {
    /// Fetches layer `index` (blob `descriptor`, diffID `diff_id`) and converts it as it
    /// streams; returns whether this call converted it (`false`: another pull had). The
    /// download's failure is reported over the conversion's, which it causes.
    pub(super) async fn fetch_and_convert(
        &self,
        fetcher: &Fetcher,
        index: usize,
        descriptor: &BlobRef,
        diff_id: DiffId,
        observer: &dyn PullObserver,
    ) -> Result<bool, ImagesError> {
        let (writer, reader) = tokio::io::duplex(PIPE_BYTES);
        let images = self.clone();
        let blob = descriptor.clone();
        let reader = SyncIoBridge::new(reader);
        let convert = tokio::task::spawn_blocking(move || {
            images
                .shared
                .store
                .convert_streamed_layer(&blob, diff_id, reader)
        });
        let mut pipe = ProgressPipe {
            inner: writer,
            fetched: 0,
            index,
            observer,
            reader_gone: false,
        };
        let downloaded = fetcher.stream_blob(descriptor, &mut pipe).await;
        let reader_gone = pipe.reader_gone;
        // End of input for the converter.
        drop(pipe);
        let converted = convert.await.map_err(ImagesError::Task)?;
        match (downloaded, converted) {
            (Ok(()), converted) => {
                let (_, did_convert) = converted?;
                self.shared.blobs_downloaded.fetch_add(1, Ordering::Relaxed);
                if did_convert {
                    self.shared.layers_converted.fetch_add(1, Ordering::Relaxed);
                }
                observer.event(&PullEvent::LayerReady {
                    index,
                    converted: did_convert,
                });
                Ok(did_convert)
            }
            // The converter stopped reading: its error is the cause.
            (Err(_), Err(converted)) if reader_gone => Err(converted.into()),
            (Err(downloaded), _) => Err(downloaded),
        }
    }
}

/// The write end of the pipe, counting what passes and telling the observer.
struct ProgressPipe<'a> {
    inner: DuplexStream,
    fetched: u64,
    index: usize,
    observer: &'a dyn PullObserver,
    /// A write failed because the converter dropped its end.
    reader_gone: bool,
}

impl AsyncWrite for ProgressPipe<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf)) {
            Ok(written) => {
                this.fetched += written as u64;
                this.observer.event(&PullEvent::Fetched {
                    index: this.index,
                    bytes: this.fetched,
                });
                Poll::Ready(Ok(written))
            }
            Err(error) => {
                this.reader_gone = error.kind() == io::ErrorKind::BrokenPipe;
                Poll::Ready(Err(error))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

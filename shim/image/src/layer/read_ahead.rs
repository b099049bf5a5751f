//! A reader run on a thread of its own, a few chunks ahead of its consumer: a compressed
//! layer is inflated (and its blob hashed) on one core while the tar is hashed, parsed and
//! written on another, so conversion takes about the longer of the two, not their sum.
//!
//! The thread is scoped: it borrows the reader, and the scope that spawned it waits for it.
//! It stops at the reader's end or first error (handed to the consumer in order), or as
//! soon as the consumer is dropped. It reads at most `CHUNKS` chunks of `CHUNK` bytes ahead
//! of what the consumer has taken, so a stream that expands without end (a decompression
//! bomb) costs the consumer's limit plus that much.

use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::{Scope, ScopedJoinHandle};

/// Bytes a chunk holds.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the two threads (each allocated once and reused).
const CHUNKS: usize = 4;

/// A filled chunk: its buffer and how many bytes of it are data (0 at the end).
type Filled = io::Result<(Vec<u8>, usize)>;

/// The consumer's end: reads what the thread has read.
pub struct ReadAhead {
    filled: Receiver<Filled>,
    free: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    start: usize,
    end: usize,
    done: bool,
}

impl ReadAhead {
    /// Starts reading `reader` on a thread of `scope`, named `name`.
    pub fn spawn<'scope, R: Read + Send + 'scope>(
        scope: &'scope Scope<'scope, '_>,
        name: &str,
        reader: R,
    ) -> io::Result<ReadAhead> {
        let (filled_tx, filled) = sync_channel(CHUNKS);
        let (free, free_rx) = sync_channel(CHUNKS);
        for _ in 0..CHUNKS {
            // Cannot fail: the receiver is held here and the channel has room for all.
            let _ = free.try_send(vec![0; CHUNK]);
        }
        let _: ScopedJoinHandle<'scope, ()> = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn_scoped(scope, move || produce(reader, &free_rx, &filled_tx))?;
        Ok(ReadAhead {
            filled,
            free,
            current: Vec::new(),
            start: 0,
            end: 0,
            done: false,
        })
    }
}

/// The thread's loop: fills free chunks until the end, an error, or the consumer is gone.
fn produce<R: Read>(mut reader: R, free: &Receiver<Vec<u8>>, filled: &SyncSender<Filled>) {
    while let Ok(mut buffer) = free.recv() {
        let mut n = 0;
        let read = loop {
            if n == buffer.len() {
                break Ok(());
            }
            match reader.read(&mut buffer[n..]) {
                Ok(0) => break Ok(()),
                Ok(count) => n += count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let last = n == 0 || read.is_err();
        // Data read before an error goes first, then the error.
        if n > 0 && filled.send(Ok((buffer, n))).is_err() {
            return;
        }
        match read {
            Err(e) => {
                let _ = filled.send(Err(e));
                return;
            }
            Ok(()) if last => {
                let _ = filled.send(Ok((Vec::new(), 0)));
                return;
            }
            Ok(()) => {}
        }
    }
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.start == self.end {
            if self.done {
                return Ok(0);
            }
            let used = std::mem::take(&mut self.current);
            if !used.is_empty() {
                // The thread may already have stopped; then nothing needs it.
                let _ = self.free.try_send(used);
            }
            match self.filled.recv() {
                Ok(Ok((_, 0))) => self.done = true,
                Ok(Ok((buffer, n))) => {
                    self.current = buffer;
                    self.start = 0;
                    self.end = n;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("the read-ahead thread stopped early"));
                }
            }
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.current[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives `data` in reads of at most `step` bytes, then `error` if set.
    struct Source {
        data: Vec<u8>,
        at: usize,
        step: usize,
        error: Option<io::ErrorKind>,
    }

    impl Read for Source {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.data.len() {
                return match self.error.take() {
                    Some(kind) => Err(kind.into()),
                    None => Ok(0),
                };
            }
            let n = buf.len().min(self.step).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn passes_every_byte_in_order_across_many_chunks() {
        let expected = data(CHUNK * 9 + 12_345);
        let source = Source {
            data: expected.clone(),
            at: 0,
            step: 70_001,
            error: None,
        };
        let got = std::thread::scope(|scope| {
            let mut reader = ReadAhead::spawn(scope, "test-read-ahead", source).unwrap();
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            // The end stays the end.
            assert_eq!(reader.read(&mut [0; 16]).unwrap(), 0);
            got
        });
        assert!(got == expected);
    }

    #[test]
    fn data_before_an_error_arrives_then_the_error() {
        let source = Source {
            data: data(CHUNK + 10),
            at: 0,
            step: CHUNK,
            error: Some(io::ErrorKind::InvalidData),
        };
        std::thread::scope(|scope| {
            let mut reader = ReadAhead::spawn(scope, "test-read-ahead", source).unwrap();
            let mut got = Vec::new();
            let error = reader.read_to_end(&mut got).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
            assert_eq!(got.len(), CHUNK + 10);
        });
    }

    /// A consumer that stops early (a conversion that failed) does not leave the thread
    /// reading without end: the scope returns, and the thread read only a few chunks
    /// ahead of an endless source.
    #[test]
    fn a_dropped_consumer_stops_the_thread_within_a_few_chunks() {
        let mut endless = io::repeat(1).take(u64::MAX);
        let mut counted = 0u64;
        let counting = CountingReader {
            inner: &mut endless,
            count: &mut counted,
        };
        std::thread::scope(|scope| {
            let mut reader = ReadAhead::spawn(scope, "test-read-ahead", counting).unwrap();
            let mut first = vec![0; 100];
            reader.read_exact(&mut first).unwrap();
            drop(reader);
        });
        assert!(
            counted <= ((CHUNKS + 2) * CHUNK) as u64,
            "read {counted} bytes"
        );
    }

    struct CountingReader<'a, R> {
        inner: R,
        count: &'a mut u64,
    }

    impl<R: Read> Read for CountingReader<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            *self.count += n as u64;
            Ok(n)
        }
    }
}

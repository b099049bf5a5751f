//! A container's output: what its main process writes to stdout and stderr is kept in a
//! bounded ring (the newest bytes win) that any number of readers follow.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// Bytes kept per container.
pub const RING_CAPACITY: usize = 1 << 20;
/// The largest single read from a pipe.
const READ_SIZE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One piece of output, numbered in the order it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub seq: u64,
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// The bounded ring itself, a pure type.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    chunks: VecDeque<Chunk>,
    bytes: usize,
    next_seq: u64,
    /// Bytes evicted or truncated before chunk `seq`, by seq, so readers can report loss.
    dropped_before: VecDeque<(u64, u64)>,
    open_streams: u8,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Ring {
            capacity,
            chunks: VecDeque::new(),
            bytes: 0,
            next_seq: 0,
            dropped_before: VecDeque::new(),
            open_streams: 2,
        }
    }

    pub fn push(&mut self, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let keep = data.len().min(self.capacity);
        let data = data[data.len() - keep..].to_vec();
        self.bytes += data.len();
        self.chunks.push_back(Chunk {
            seq: self.next_seq,
            stream,
            data,
        });
        self.next_seq += 1;
        while self.bytes > self.capacity {
            let Some(old) = self.chunks.pop_front() else {
                break;
            };
            self.bytes -= old.data.len();
            self.dropped_before
                .push_back((old.seq + 1, old.data.len() as u64));
        }
        // Only the loss at or after the oldest kept chunk matters to anyone.
        while self.dropped_before.len() > 64 {
            self.dropped_before.pop_front();
        }
    }

    /// Marks one stream as closed (its pipe reached end of file).
    pub fn close_stream(&mut self) {
        self.open_streams = self.open_streams.saturating_sub(1);
    }

    pub fn is_finished(&self) -> bool {
        self.open_streams == 0
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Chunks from `from` on, and how many bytes a reader that wanted `from` has lost.
    pub fn read_from(&self, from: u64) -> (Vec<Chunk>, u64) {
        let oldest = self.chunks.front().map_or(self.next_seq, |c| c.seq);
        let lost = if from < oldest {
            self.dropped_before
                .iter()
                .filter(|(seq, _)| *seq > from && *seq <= oldest)
                .map(|(_, n)| n)
                .sum()
        } else {
            0
        };
        let chunks = self
            .chunks
            .iter()
            .filter(|c| c.seq >= from)
            .cloned()
            .collect();
        (chunks, lost)
    }
}

/// The ring shared between the pipe readers and the RPC readers; `changed` ticks on every
/// push and close.
pub struct StdioBuffer {
    ring: Mutex<Ring>,
    changed: watch::Sender<u64>,
}

impl StdioBuffer {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(StdioBuffer {
            ring: Mutex::new(Ring::new(capacity)),
            changed: watch::channel(0).0,
        })
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tick(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn push(&self, stream: Stream, data: &[u8]) {
        self.ring().push(stream, data);
        self.tick();
    }

    pub fn close_stream(&self) {
        self.ring().close_stream();
        self.tick();
    }

    /// Copies a pipe into the ring until end of file.
    pub async fn pump(self: Arc<Self>, stream: Stream, mut pipe: tokio::net::unix::pipe::Receiver) {
        let mut buf = vec![0; READ_SIZE];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => self.push(stream, &buf[..n]),
            }
        }
        self.close_stream();
    }

    /// Waits for chunks from `from` on. Returns them with the bytes lost before them, or
    /// None when both streams are closed and everything was read.
    pub async fn next_after(&self, from: u64) -> Option<(Vec<Chunk>, u64)> {
        let mut changed = self.changed.subscribe();
        loop {
            {
                let ring = self.ring();
                let (chunks, lost) = ring.read_from(from);
                if !chunks.is_empty() {
                    return Some((chunks, lost));
                }
                if ring.is_finished() {
                    return None;
                }
            }
            if changed.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Marks both streams closed: for a container that never started.
    pub fn finish(&self) {
        let mut ring = self.ring();
        while !ring.is_finished() {
            ring.close_stream();
        }
        drop(ring);
        self.tick();
    }

    pub fn next_seq(&self) -> u64 {
        self.ring().next_seq()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_bytes_within_its_capacity() {
        let mut ring = Ring::new(10);
        ring.push(Stream::Stdout, b"aaaa");
        ring.push(Stream::Stderr, b"bbbb");
        ring.push(Stream::Stdout, b"cccc");
        let (chunks, lost) = ring.read_from(0);
        assert_eq!(lost, 4);
        let data: Vec<&[u8]> = chunks.iter().map(|c| &c.data[..]).collect();
        assert_eq!(data, [&b"bbbb"[..], &b"cccc"[..]]);
        assert_eq!(chunks[0].stream, Stream::Stderr);
    }

    #[test]
    fn a_chunk_larger_than_the_ring_keeps_its_tail() {
        let mut ring = Ring::new(4);
        ring.push(Stream::Stdout, b"0123456789");
        let (chunks, _) = ring.read_from(0);
        assert_eq!(chunks[0].data, b"6789");
    }

    #[test]
    fn a_reader_gets_only_what_is_new_and_no_loss() {
        let mut ring = Ring::new(100);
        ring.push(Stream::Stdout, b"one");
        ring.push(Stream::Stdout, b"two");
        let (chunks, lost) = ring.read_from(1);
        assert_eq!(lost, 0);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].data, b"two");
        assert!(ring.read_from(2).0.is_empty());
    }

    #[test]
    fn the_ring_finishes_when_both_streams_close() {
        let mut ring = Ring::new(8);
        ring.close_stream();
        assert!(!ring.is_finished());
        ring.close_stream();
        assert!(ring.is_finished());
    }

    #[tokio::test]
    async fn a_follower_sees_live_output_then_the_end() {
        let buffer = StdioBuffer::new(64);
        let writer = Arc::clone(&buffer);
        let follower = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut from = 0;
            while let Some((chunks, _)) = buffer.next_after(from).await {
                for c in chunks {
                    from = c.seq + 1;
                    seen.extend(c.data);
                }
            }
            seen
        });
        writer.push(Stream::Stdout, b"hello ");
        tokio::task::yield_now().await;
        writer.push(Stream::Stderr, b"world");
        writer.close_stream();
        writer.close_stream();
        assert_eq!(follower.await.unwrap(), b"hello world");
    }
}

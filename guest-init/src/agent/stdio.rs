//! A container's output: what its main process writes to stdout and stderr is kept in a
//! bounded ring (the newest bytes win) that any number of readers follow.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::process_io::OutputReader;

/// Bytes kept per container.
pub const RING_CAPACITY: usize = 1 << 20;
/// The largest single read from a pipe.
const READ_SIZE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One piece of output and where it starts in the container's combined output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The offset of its first byte, stdout and stderr counted together.
    pub offset: u64,
    pub stream: Stream,
    pub data: Vec<u8>,
}

impl Chunk {
    /// The offset just past its last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// The bounded ring itself, a pure type.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    chunks: VecDeque<Chunk>,
    bytes: usize,
    /// Bytes ever written: the offset the next byte gets.
    end: u64,
    open_streams: u8,
}

impl Ring {
    pub fn new(capacity: usize) -> Self {
        Ring {
            capacity,
            chunks: VecDeque::new(),
            bytes: 0,
            end: 0,
            open_streams: 2,
        }
    }

    pub fn push(&mut self, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let keep = data.len().min(self.capacity);
        let skipped = (data.len() - keep) as u64;
        self.chunks.push_back(Chunk {
            offset: self.end + skipped,
            stream,
            data: data[data.len() - keep..].to_vec(),
        });
        self.bytes += keep;
        self.end += data.len() as u64;
        while self.bytes > self.capacity {
            let Some(old) = self.chunks.pop_front() else {
                break;
            };
            self.bytes -= old.data.len();
        }
    }

    /// Marks one stream as closed (its pipe reached end of file).
    pub fn close_stream(&mut self) {
        self.open_streams = self.open_streams.saturating_sub(1);
    }

    pub fn is_finished(&self) -> bool {
        self.open_streams == 0
    }

    /// The offset the next byte written gets.
    pub fn end_offset(&self) -> u64 {
        self.end
    }

    /// The offset of the oldest byte still kept (the end when nothing is).
    pub fn oldest_offset(&self) -> u64 {
        self.chunks.front().map_or(self.end, |c| c.offset)
    }

    /// The output from byte `from` on (a chunk that holds `from` is cut there), and how
    /// many bytes from `from` on are gone because the ring dropped them.
    pub fn read_from(&self, from: u64) -> (Vec<Chunk>, u64) {
        let oldest = self.oldest_offset();
        let lost = oldest.saturating_sub(from);
        let chunks = self
            .chunks
            .iter()
            .filter(|c| c.end() > from)
            .map(|c| {
                if c.offset >= from {
                    c.clone()
                } else {
                    Chunk {
                        offset: from,
                        stream: c.stream,
                        data: c.data[(from - c.offset) as usize..].to_vec(),
                    }
                }
            })
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

    /// Copies a process's output into the ring until its end, then closes `closes` streams
    /// (2 for a terminal, which carries both).
    pub async fn pump(self: Arc<Self>, stream: Stream, mut reader: OutputReader, closes: u8) {
        let mut buf = vec![0; READ_SIZE];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => self.push(stream, &buf[..n]),
            }
        }
        for _ in 0..closes {
            self.close_stream();
        }
    }

    /// Waits for output from byte `from` on. Returns it with the bytes lost before it
    /// (dropped from the ring before this reader got them), or None when both streams are
    /// closed and everything from `from` on was read.
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

    /// The offset the next byte written gets.
    pub fn end_offset(&self) -> u64 {
        self.ring().end_offset()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(chunks: &[Chunk]) -> Vec<(u64, &[u8])> {
        chunks.iter().map(|c| (c.offset, &c.data[..])).collect()
    }

    #[test]
    fn the_ring_keeps_the_newest_bytes_within_its_capacity() {
        let mut ring = Ring::new(10);
        ring.push(Stream::Stdout, b"aaaa");
        ring.push(Stream::Stderr, b"bbbb");
        ring.push(Stream::Stdout, b"cccc");
        let (chunks, lost) = ring.read_from(0);
        assert_eq!(lost, 4);
        assert_eq!(text(&chunks), [(4, &b"bbbb"[..]), (8, &b"cccc"[..])]);
        assert_eq!(chunks[0].stream, Stream::Stderr);
        assert_eq!(ring.end_offset(), 12);
    }

    #[test]
    fn a_chunk_larger_than_the_ring_keeps_its_tail_at_its_true_offset() {
        let mut ring = Ring::new(4);
        ring.push(Stream::Stdout, b"0123456789");
        let (chunks, lost) = ring.read_from(0);
        assert_eq!(text(&chunks), [(6, &b"6789"[..])]);
        assert_eq!(lost, 6);
    }

    #[test]
    fn a_reader_resuming_mid_chunk_gets_exactly_the_bytes_from_there() {
        let mut ring = Ring::new(100);
        ring.push(Stream::Stdout, b"hello ");
        ring.push(Stream::Stderr, b"world");
        let (chunks, lost) = ring.read_from(3);
        assert_eq!(lost, 0);
        assert_eq!(text(&chunks), [(3, &b"lo "[..]), (6, &b"world"[..])]);
        assert_eq!(chunks[1].stream, Stream::Stderr);
        let (chunks, _) = ring.read_from(6);
        assert_eq!(text(&chunks), [(6, &b"world"[..])]);
        let (chunks, _) = ring.read_from(10);
        assert_eq!(text(&chunks), [(10, &b"d"[..])]);
        assert!(ring.read_from(11).0.is_empty());
        assert!(ring.read_from(50).0.is_empty());
    }

    #[test]
    fn a_resumed_offset_that_fell_out_of_the_ring_reports_the_loss() {
        let mut ring = Ring::new(8);
        for piece in [&b"0123"[..], b"4567", b"89ab", b"cdef"] {
            ring.push(Stream::Stdout, piece);
        }
        // Kept: 89ab cdef (offsets 8..16). A reader that had read up to 5 lost 5..8.
        let (chunks, lost) = ring.read_from(5);
        assert_eq!(lost, 3);
        assert_eq!(text(&chunks), [(8, &b"89ab"[..]), (12, &b"cdef"[..])]);
        let (chunks, lost) = ring.read_from(9);
        assert_eq!(lost, 0);
        assert_eq!(text(&chunks), [(9, &b"9ab"[..]), (12, &b"cdef"[..])]);
    }

    #[test]
    fn every_resume_point_reassembles_the_kept_output() {
        let mut ring = Ring::new(20);
        let mut written = Vec::new();
        for i in 0..30u8 {
            let piece = vec![b'a' + (i % 26); usize::from(i % 5) + 1];
            written.extend_from_slice(&piece);
            ring.push(
                if i % 2 == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                },
                &piece,
            );
        }
        let end = ring.end_offset();
        assert_eq!(end, written.len() as u64);
        let oldest = ring.oldest_offset();
        for from in 0..=end {
            let (chunks, lost) = ring.read_from(from);
            assert_eq!(lost, oldest.saturating_sub(from));
            let start = from.max(oldest);
            let mut expected_offset = start;
            let mut bytes = Vec::new();
            for c in &chunks {
                assert_eq!(c.offset, expected_offset);
                expected_offset = c.end();
                bytes.extend_from_slice(&c.data);
            }
            assert_eq!(bytes, &written[start as usize..]);
        }
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
            let mut from = 2;
            while let Some((chunks, _)) = buffer.next_after(from).await {
                for c in chunks {
                    from = c.end();
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
        assert_eq!(follower.await.unwrap(), b"llo world");
    }
}

//! `cri_log`: the CRI log writer's line splitter (`vpod_cri::logformat`), fed a container's
//! output in the chunks the agent delivers, on both streams, at any time.
//!
//! Input: a sequence of chunks, each a header byte (bit 7: stderr, bit 6: the chunk comes
//! 8 times, bits 0..5 with the next byte: its length) then that many bytes; a timestamp from the first 8 bytes.
//! Checked: every record is `<timestamp> <stream> <P|F> <text>\n` with text of at most
//! `MAX_LINE` bytes and no newline, `P` records are exactly `MAX_LINE` long, and the records'
//! texts of each stream put back together give the stream's bytes.

use vpod_cri::logformat::{rfc3339_nano, CriLogFormatter, LogStream, MAX_LINE};

use crate::Seed;

pub fn cri_log(data: &[u8]) {
    let mut time = [0u8; 8];
    let take = data.len().min(8);
    time[..take].copy_from_slice(&data[..take]);
    let time_ns = i64::from_le_bytes(time);
    let stamp = rfc3339_nano(time_ns);
    let mut rest = &data[take..];
    let mut formatter = CriLogFormatter::new();
    let mut out = Vec::new();
    let mut sent: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    while let Some((&header, tail)) = rest.split_first() {
        let stream = if header & 0x80 != 0 {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        };
        let Some((&low, tail)) = tail.split_first() else {
            break;
        };
        // Lengths up to 16 KiB; repeated, a chunk makes a line longer than MAX_LINE.
        let len = (usize::from(header & 0x3f) << 8 | usize::from(low)).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        // A repeated chunk stands for long output: the fuzzer's inputs stay small.
        let repeat = if header & 0x40 != 0 { 8 } else { 1 };
        for _ in 0..repeat {
            formatter.push(time_ns, stream, chunk, &mut out);
            sent[usize::from(stream == LogStream::Stderr)].extend_from_slice(chunk);
        }
        rest = tail;
    }
    formatter.finish(time_ns, &mut out);
    assert_eq!(formatter.pending_len(), 0);
    check_records(&out, &stamp, &sent);
}

/// Splits `out` into records and checks each; the texts must give back what was sent.
fn check_records(out: &[u8], stamp: &str, sent: &[Vec<u8>; 2]) {
    let mut got: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut rest = out;
    while !rest.is_empty() {
        let prefix = rest
            .strip_prefix(stamp.as_bytes())
            .and_then(|r| r.strip_prefix(b" "))
            .expect("a record starts with its timestamp");
        let (index, prefix) = if let Some(r) = prefix.strip_prefix(b"stdout ") {
            (0, r)
        } else {
            let r = prefix
                .strip_prefix(b"stderr ")
                .expect("a record names its stream");
            (1, r)
        };
        let (tag, body) = prefix.split_at(2);
        let end = body
            .iter()
            .position(|&b| b == b'\n')
            .expect("a record ends with a newline");
        let text = &body[..end];
        assert!(text.len() <= MAX_LINE, "a record of {} bytes", text.len());
        match tag {
            b"F " => {
                got[index].extend_from_slice(text);
                got[index].push(b'\n');
            }
            b"P " => {
                assert_eq!(text.len(), MAX_LINE, "a partial record not cut at MAX_LINE");
                got[index].extend_from_slice(text);
            }
            other => panic!("a record tagged {other:?}"),
        }
        rest = &body[end + 1..];
    }
    for index in 0..2 {
        // finish() ends an unterminated last line with a newline of its own.
        let mut expected = sent[index].clone();
        if !expected.is_empty() && expected.last() != Some(&b'\n') {
            expected.push(b'\n');
        }
        assert!(
            got[index] == expected,
            "stream {index}: the records give back {} bytes of {}",
            got[index].len(),
            expected.len()
        );
    }
}

fn chunk(stderr: bool, repeat: bool, bytes: &[u8]) -> Vec<u8> {
    let len = bytes.len();
    assert!(len < 1 << 14);
    let mut header = (len >> 8) as u8;
    if stderr {
        header |= 0x80;
    }
    if repeat {
        header |= 0x40;
    }
    let mut out = vec![header, len as u8];
    out.extend_from_slice(bytes);
    out
}

pub fn seeds() -> Vec<Seed> {
    let time = 1_704_067_200_000_000_042i64.to_le_bytes();
    let with = |chunks: &[Vec<u8>]| {
        let mut out = time.to_vec();
        for c in chunks {
            out.extend_from_slice(c);
        }
        out
    };
    vec![
        (
            "lines-both-streams",
            with(&[
                chunk(false, false, b"hello\nworld\n"),
                chunk(true, false, b"an error\n"),
            ]),
        ),
        (
            "split-across-chunks",
            with(&[
                chunk(false, false, b"par"),
                chunk(true, false, b"err "),
                chunk(false, false, b"tial line\nnext"),
                chunk(true, false, b"line\n"),
            ]),
        ),
        (
            "no-newline",
            with(&[chunk(false, false, b"no newline at the end")]),
        ),
        (
            "long-line",
            with(&[
                chunk(false, true, &[b'x'; 4000]),
                chunk(false, false, b"\n"),
            ]),
        ),
        (
            "empty-lines-and-cr",
            with(&[
                chunk(false, false, b"\n\n\r\n\0\n"),
                chunk(true, false, b""),
            ]),
        ),
    ]
}

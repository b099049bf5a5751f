//! Container logs in the CRI format, as the kubelet and `crictl logs` read them:
//! `<RFC3339Nano> <stdout|stderr> <P|F> <text>\n`, one record per line of output, lines
//! longer than [`MAX_LINE`] split into `P` (partial) records ending with an `F` one.
//!
//! [`CriLogFormatter`] is pure: output chunks in, record bytes out. Text without a newline
//! yet is held (per stream) until its newline, until it reaches [`MAX_LINE`], or until
//! [`CriLogFormatter::finish`].

use std::time::{SystemTime, UNIX_EPOCH};

/// The longest text of one record; longer lines are split.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    fn name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// Turns a container's output into CRI log records.
#[derive(Debug, Default)]
pub struct CriLogFormatter {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// Per stream (stdout, stderr): the last record was a `P`, so its line is still open.
    open_line: [bool; 2],
}

impl CriLogFormatter {
    pub fn new() -> CriLogFormatter {
        CriLogFormatter::default()
    }

    fn pending(&mut self, stream: LogStream) -> &mut Vec<u8> {
        match stream {
            LogStream::Stdout => &mut self.stdout,
            LogStream::Stderr => &mut self.stderr,
        }
    }

    fn open_line(&mut self, stream: LogStream) -> &mut bool {
        &mut self.open_line[usize::from(stream == LogStream::Stderr)]
    }

    /// Appends to `out` the records that `data` (arriving at `time_ns`) completes.
    pub fn push(&mut self, time_ns: i64, stream: LogStream, data: &[u8], out: &mut Vec<u8>) {
        let mut rest = data;
        while !rest.is_empty() {
            let pending_len = self.pending(stream).len();
            let room = MAX_LINE - pending_len;
            match rest.iter().position(|&b| b == b'\n') {
                Some(newline) if newline <= room => {
                    let pending = std::mem::take(self.pending(stream));
                    write_record(out, time_ns, stream, 'F', &pending, &rest[..newline]);
                    *self.open_line(stream) = false;
                    rest = &rest[newline + 1..];
                }
                _ if rest.len() >= room => {
                    // A full record's worth without a newline in it: a partial record.
                    let pending = std::mem::take(self.pending(stream));
                    write_record(out, time_ns, stream, 'P', &pending, &rest[..room]);
                    *self.open_line(stream) = true;
                    rest = &rest[room..];
                }
                _ => {
                    self.pending(stream).extend_from_slice(rest);
                    rest = &[];
                }
            }
        }
    }

    /// Bytes held back, waiting for the rest of their line.
    pub fn pending_len(&self) -> usize {
        self.stdout.len() + self.stderr.len()
    }

    /// Writes out what is held: the output ended without a final newline. A line left open
    /// by a `P` record with nothing held after it (its text ended exactly at a record's
    /// length) is closed by an empty `F` record, so every line ends in one.
    pub fn finish(&mut self, time_ns: i64, out: &mut Vec<u8>) {
        for stream in [LogStream::Stdout, LogStream::Stderr] {
            let pending = std::mem::take(self.pending(stream));
            if !pending.is_empty() || *self.open_line(stream) {
                write_record(out, time_ns, stream, 'F', &pending, &[]);
            }
            *self.open_line(stream) = false;
        }
    }
}

fn write_record(
    out: &mut Vec<u8>,
    time_ns: i64,
    stream: LogStream,
    tag: char,
    head: &[u8],
    tail: &[u8],
) {
    out.extend_from_slice(rfc3339_nano(time_ns).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.push(b' ');
    out.push(tag as u8);
    out.push(b' ');
    out.extend_from_slice(head);
    out.extend_from_slice(tail);
    out.push(b'\n');
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2024-01-02T03:04:05.123456789Z`: RFC 3339 in UTC with nine fraction digits (which
/// Go's RFC3339Nano parser, the kubelet's, accepts).
pub fn rfc3339_nano(time_ns: i64) -> String {
    let secs = time_ns.div_euclid(1_000_000_000);
    let nanos = time_ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let day_secs = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_704_067_200_000_000_042; // 2024-01-01T00:00:00.000000042Z

    fn records(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .map(|l| l.to_string())
            .collect()
    }

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds_in_utc() {
        assert_eq!(rfc3339_nano(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nano(T), "2024-01-01T00:00:00.000000042Z");
        // 2024-02-29 (a leap day) 23:59:59.5.
        assert_eq!(
            rfc3339_nano(1_709_251_199_500_000_000),
            "2024-02-29T23:59:59.500000000Z"
        );
        assert_eq!(rfc3339_nano(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn complete_lines_become_full_records_per_stream() {
        let mut f = CriLogFormatter::new();
        let mut out = Vec::new();
        f.push(T, LogStream::Stdout, b"hello\nworld\n", &mut out);
        f.push(T, LogStream::Stderr, b"oops\n", &mut out);
        assert_eq!(
            records(&out),
            [
                "2024-01-01T00:00:00.000000042Z stdout F hello",
                "2024-01-01T00:00:00.000000042Z stdout F world",
                "2024-01-01T00:00:00.000000042Z stderr F oops",
            ]
        );
    }

    #[test]
    fn a_line_split_across_chunks_is_joined_and_streams_do_not_mix() {
        let mut f = CriLogFormatter::new();
        let mut out = Vec::new();
        f.push(T, LogStream::Stdout, b"hel", &mut out);
        f.push(T, LogStream::Stderr, b"e1", &mut out);
        assert!(out.is_empty());
        f.push(T, LogStream::Stdout, b"lo\n", &mut out);
        f.push(T, LogStream::Stderr, b"\n\n", &mut out);
        let r = records(&out);
        assert!(r[0].ends_with("stdout F hello"), "{r:?}");
        assert!(r[1].ends_with("stderr F e1"), "{r:?}");
        assert!(r[2].ends_with("stderr F "), "{r:?}");
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn long_lines_are_split_into_partial_records_of_16_kib() {
        let mut f = CriLogFormatter::new();
        let mut out = Vec::new();
        let mut line = vec![b'x'; 2 * MAX_LINE + 5];
        line.push(b'\n');
        // In odd-sized chunks, to cross the boundaries.
        for chunk in line.chunks(1000) {
            f.push(T, LogStream::Stdout, chunk, &mut out);
        }
        let r = records(&out);
        assert_eq!(
            r.len(),
            3,
            "{:?}",
            r.iter().map(|l| l.len()).collect::<Vec<_>>()
        );
        let prefix = "2024-01-01T00:00:00.000000042Z stdout ";
        assert_eq!(r[0], format!("{prefix}P {}", "x".repeat(MAX_LINE)));
        assert_eq!(r[1], format!("{prefix}P {}", "x".repeat(MAX_LINE)));
        assert_eq!(r[2], format!("{prefix}F xxxxx"));
    }

    #[test]
    fn a_line_of_exactly_16_kib_is_one_full_record() {
        let mut f = CriLogFormatter::new();
        let mut out = Vec::new();
        let mut line = vec![b'y'; MAX_LINE];
        line.push(b'\n');
        f.push(T, LogStream::Stdout, &line, &mut out);
        let r = records(&out);
        assert_eq!(r.len(), 1);
        assert!(r[0].contains(" stdout F y"));
    }

    /// Found by `make fuzz` (the `cri_log` target): the last record was a `P`.
    #[test]
    fn finish_closes_a_line_that_ended_at_a_partial_record() {
        let mut f = CriLogFormatter::new();
        let mut out = Vec::new();
        f.push(T, LogStream::Stdout, &vec![b'z'; MAX_LINE], &mut out);
        f.finish(T, &mut out);
        f.finish(T, &mut out);
        let r = records(&out);
        let prefix = "2024-01-01T00:00:00.000000042Z stdout ";
        assert_eq!(
            r,
            [
                format!("{prefix}P {}", "z".repeat(MAX_LINE)),
                format!("{prefix}F ")
            ]
        );
    }

    #[test]
    fn finish_writes_text_without_a_final_newline() {
        let mut f = CriLogFormatter::new();
        let mut out = Vec::new();
        f.push(T, LogStream::Stdout, b"no newline", &mut out);
        f.finish(T, &mut out);
        f.finish(T, &mut out);
        assert_eq!(
            records(&out),
            ["2024-01-01T00:00:00.000000042Z stdout F no newline"]
        );
    }
}

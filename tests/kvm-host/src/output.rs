//! Following files the emulated host writes through its 9p share: the command's stdout and
//! stderr (copied through as they grow) and the console (kept as recent lines).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Reads whatever has been appended to a file since the last call.
#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    file: Option<File>,
}

impl Tail {
    pub fn new(path: PathBuf) -> Self {
        Tail { path, file: None }
    }

    /// Copies new bytes to `sink`; returns how many. A file not yet created reads as empty.
    pub fn pump(&mut self, sink: &mut dyn Write) -> io::Result<usize> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(0);
        };
        let mut buf = [0u8; 64 * 1024];
        let mut total = 0;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n])?;
            total += n;
        }
        if total > 0 {
            sink.flush()?;
        }
        Ok(total)
    }
}

/// What the console has said that matters to the runner.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConsoleNews {
    pub grew: bool,
    pub ready: bool,
    /// A line `vpod-kvm-host: error: ...` from our init: a fault no retry will mend.
    pub init_error: Option<String>,
}

/// Keeps the last lines of the console for reports.
#[derive(Debug)]
pub struct Console {
    tail: Tail,
    partial: Vec<u8>,
    recent: VecDeque<String>,
    keep: usize,
}

pub const READY_LINE: &str = "vpod-kvm-host: ready";
const INIT_ERROR: &str = "vpod-kvm-host: error: ";

impl Console {
    pub fn new(path: PathBuf, keep: usize) -> Self {
        Console {
            tail: Tail::new(path),
            partial: Vec::new(),
            recent: VecDeque::new(),
            keep,
        }
    }

    pub fn poll(&mut self) -> io::Result<ConsoleNews> {
        let mut bytes = Vec::new();
        let n = self.tail.pump(&mut bytes)?;
        Ok(self.feed(&bytes[..n]))
    }

    /// Splits `bytes` into lines and notes the ones the runner reacts to.
    pub fn feed(&mut self, bytes: &[u8]) -> ConsoleNews {
        let mut news = ConsoleNews {
            grew: !bytes.is_empty(),
            ..Default::default()
        };
        self.partial.extend_from_slice(bytes);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.partial.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            if line.trim_end() == READY_LINE {
                news.ready = true;
            }
            if let Some(msg) = line.strip_prefix(INIT_ERROR) {
                news.init_error = Some(msg.to_string());
            }
            if self.recent.len() == self.keep {
                self.recent.pop_front();
            }
            self.recent.push_back(line);
        }
        news
    }

    pub fn recent(&self) -> impl Iterator<Item = &str> {
        self.recent.iter().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_copies_only_new_bytes_and_waits_for_missing_files() {
        let dir = std::env::temp_dir().join(format!("vpod-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out");
        let mut tail = Tail::new(path.clone());
        let mut sink = Vec::new();
        assert_eq!(tail.pump(&mut sink).unwrap(), 0);
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(tail.pump(&mut sink).unwrap(), 3);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"def").unwrap();
        assert_eq!(tail.pump(&mut sink).unwrap(), 3);
        assert_eq!(tail.pump(&mut sink).unwrap(), 0);
        assert_eq!(sink, b"abcdef");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn console_finds_ready_and_errors_across_split_writes() {
        let mut c = Console::new(PathBuf::from("/nonexistent"), 3);
        let news = c.feed(b"[ 1.0] booting\nvpod-kvm-ho");
        assert!(news.grew && !news.ready);
        let news = c.feed(b"st: ready\r\n");
        assert!(news.ready);
        let news = c.feed(b"vpod-kvm-host: error: cannot mount the io share\n");
        assert_eq!(
            news.init_error.as_deref(),
            Some("cannot mount the io share")
        );
        c.feed(b"one\ntwo\n");
        let recent: Vec<&str> = c.recent().collect();
        assert_eq!(
            recent,
            vec![
                "vpod-kvm-host: error: cannot mount the io share",
                "one",
                "two"
            ]
        );
    }
}

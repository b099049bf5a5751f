//! SPDY/3 header blocks: the name/value list and its zlib compression.
//!
//! A header block is a big-endian u32 count of pairs, then per pair a u32-prefixed name and a
//! u32-prefixed value (several values of one name joined by NUL). Each direction of a session
//! runs one zlib stream across all its header blocks, primed with the SPDY/3 dictionary and
//! sync-flushed at the end of each block, so the compressor and decompressor live as long as
//! the session and blocks must be handled in frame order.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::header_dictionary;

/// The most bytes one decompressed header block may take: a zlib bomb stops here.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Why a header block could not be compressed or read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("header block is not a valid zlib stream: {0}")]
    Zlib(String),
    #[error("header block uses dictionary {0:#010x}, not spdy/3's")]
    WrongDictionary(u32),
    #[error("header block decompresses to more than {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
    #[error("header block is truncated")]
    Truncated,
    #[error("header block has trailing bytes")]
    TrailingBytes,
    #[error("header block has an empty name")]
    EmptyName,
    #[error("header name or value is not utf-8")]
    NotUtf8,
}

/// An ordered list of header names (lowercase) and values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// An empty block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value under `name`, which SPDY carries lowercase.
    pub fn insert(&mut self, name: &str, value: &str) {
        self.0.push((name.to_ascii_lowercase(), value.to_owned()));
    }

    /// The first value of `name`, compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    fn encode_plain(&self) -> Vec<u8> {
        // Values of one name travel together, NUL-separated: a name may appear only once.
        let mut names: Vec<(&str, Vec<&str>)> = Vec::new();
        for (name, value) in &self.0 {
            match names.iter_mut().find(|(n, _)| n == name) {
                Some((_, values)) => values.push(value),
                None => names.push((name, vec![value])),
            }
        }
        let mut out = Vec::new();
        out.extend_from_slice(&(names.len() as u32).to_be_bytes());
        for (name, values) in names {
            let value = values.join("\0");
            out.extend_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    fn decode_plain(mut block: &[u8]) -> Result<Self, HeaderError> {
        let count = take_u32(&mut block)? as usize;
        // Each pair needs at least its two length fields: a huge count fails here, not in alloc.
        if count > block.len() / 8 {
            return Err(HeaderError::Truncated);
        }
        let mut headers = Headers(Vec::with_capacity(count));
        for _ in 0..count {
            let name = take_string(&mut block)?;
            if name.is_empty() {
                return Err(HeaderError::EmptyName);
            }
            let value = take_string(&mut block)?;
            let name = name.to_ascii_lowercase();
            for part in value.split('\0') {
                headers.0.push((name.clone(), part.to_owned()));
            }
        }
        if !block.is_empty() {
            return Err(HeaderError::TrailingBytes);
        }
        Ok(headers)
    }
}

fn take_u32(block: &mut &[u8]) -> Result<u32, HeaderError> {
    let (head, rest) = block
        .split_first_chunk::<4>()
        .ok_or(HeaderError::Truncated)?;
    *block = rest;
    Ok(u32::from_be_bytes(*head))
}

fn take_string(block: &mut &[u8]) -> Result<String, HeaderError> {
    let len = take_u32(block)? as usize;
    if len > block.len() {
        return Err(HeaderError::Truncated);
    }
    let (bytes, rest) = block.split_at(len);
    *block = rest;
    String::from_utf8(bytes.to_vec()).map_err(|_| HeaderError::NotUtf8)
}

/// The sending half of a session's header compression.
pub struct HeaderCompressor {
    zlib: Compress,
}

impl HeaderCompressor {
    /// A compressor primed with the SPDY/3 dictionary.
    pub fn new() -> Result<Self, HeaderError> {
        let mut zlib = Compress::new(Compression::default(), true);
        zlib.set_dictionary(&header_dictionary())
            .map_err(|e| HeaderError::Zlib(e.to_string()))?;
        Ok(Self { zlib })
    }

    /// Compresses one block, flushed so the peer can read it without the next.
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, HeaderError> {
        let plain = headers.encode_plain();
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut consumed = 0;
        loop {
            let before = self.zlib.total_in();
            self.zlib
                .compress_vec(&plain[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| HeaderError::Zlib(e.to_string()))?;
            consumed += (self.zlib.total_in() - before) as usize;
            // A sync flush is complete once all input is in and the output did not fill up.
            if consumed == plain.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

/// The receiving half of a session's header compression.
pub struct HeaderDecompressor {
    zlib: Decompress,
}

impl HeaderDecompressor {
    /// A decompressor that accepts only the SPDY/3 dictionary.
    pub fn new() -> Self {
        Self {
            zlib: Decompress::new(true),
        }
    }

    /// Decompresses and parses one block.
    pub fn decompress(&mut self, input: &[u8]) -> Result<Headers, HeaderError> {
        let mut out = Vec::with_capacity(1024);
        let mut consumed = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let (before_in, before_out) = (self.zlib.total_in(), out.len());
            let result =
                self.zlib
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.zlib.total_in() - before_in) as usize;
            if out.len() > MAX_HEADER_BLOCK {
                return Err(HeaderError::TooLarge);
            }
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    let stalled = consumed == input.len() || out.len() == before_out;
                    if stalled && out.len() < out.capacity() {
                        break;
                    }
                }
                Err(error) => match error.needs_dictionary() {
                    Some(id) => {
                        let dictionary = header_dictionary();
                        let ours = self
                            .zlib
                            .set_dictionary(&dictionary)
                            .map_err(|e| HeaderError::Zlib(e.to_string()))?;
                        if id != ours {
                            return Err(HeaderError::WrongDictionary(id));
                        }
                    }
                    None => return Err(HeaderError::Zlib(error.to_string())),
                },
            }
        }
        if consumed != input.len() {
            return Err(HeaderError::TrailingBytes);
        }
        Headers::decode_plain(&out)
    }
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Headers {
        let mut headers = Headers::new();
        headers.insert("streamType", "stdout");
        headers.insert("port", "8080");
        headers.insert("port", "9090");
        headers
    }

    #[test]
    fn blocks_round_trip_through_one_context_per_direction() {
        let mut compressor = HeaderCompressor::new().unwrap();
        let mut decompressor = HeaderDecompressor::new();
        for _ in 0..3 {
            let wire = compressor.compress(&sample()).unwrap();
            let headers = decompressor.decompress(&wire).unwrap();
            assert_eq!(headers.get("streamtype"), Some("stdout"));
            let ports: Vec<_> = headers.iter().filter(|(n, _)| *n == "port").collect();
            assert_eq!(ports.len(), 2);
        }
    }

    #[test]
    fn first_block_names_the_spdy3_dictionary() {
        let wire = HeaderCompressor::new()
            .unwrap()
            .compress(&Headers::new())
            .unwrap();
        // zlib header (2 bytes, FDICT set), then the dictionary's Adler-32.
        assert_eq!(wire[1] & 0x20, 0x20);
        assert_eq!(&wire[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut decompressor = HeaderDecompressor::new();
        assert!(decompressor
            .decompress(&[0x78, 0x9c, 1, 2, 3, 4, 5])
            .is_err());
    }

    #[test]
    fn huge_pair_count_is_refused() {
        let plain = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1];
        assert!(matches!(
            Headers::decode_plain(&plain),
            Err(HeaderError::Truncated)
        ));
    }
}

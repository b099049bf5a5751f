//! An HPACK decoder (RFC 7541) for the client side of a connection: its dynamic table follows
//! the client's encoder, every string is checked, and decoded fields go to a callback
//! without being copied, so a block that refers to one large table entry many times costs
//! only the caller's accounting. Huffman strings are decoded with the canonical code of
//! RFC 7541 Appendix B, built once from its code lengths.

use std::collections::VecDeque;
use std::sync::OnceLock;

/// Why a header block does not decode; any of these is a COMPRESSION_ERROR for the
/// connection (RFC 9113 section 4.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("the header block ends inside a field")]
    Truncated,
    #[error("an integer is too large")]
    IntegerOverflow,
    #[error("index {0} is in neither table")]
    BadIndex(usize),
    #[error("a table size update to {0} is over the limit")]
    TableSizeOverLimit(usize),
    #[error("a table size update comes after a field")]
    LateSizeUpdate,
    #[error("a Huffman string is malformed")]
    BadHuffman,
}

/// The size every entry adds beyond its name and value (RFC 7541 section 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// A dynamic table (RFC 7541 section 2.3.2): newest entry first, evicting the oldest.
struct Table {
    entries: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
}

impl Table {
    fn new(max_size: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    /// The entry at `index` of the static and dynamic tables together.
    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::BadIndex(0)),
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((name, value))
            }
            _ => self
                .entries
                .get(index - 62)
                .map(|(n, v)| (n.as_slice(), v.as_slice()))
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict(0);
    }

    fn insert(&mut self, name: Vec<u8>, value: Vec<u8>) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // RFC 7541 section 4.4: an entry larger than the table empties it.
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.entries.push_front((name, value));
    }

    /// Evicts the oldest entries until `room` more octets fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((name, value)) = self.entries.pop_back() else {
                break;
            };
            self.size -= name.len() + value.len() + ENTRY_OVERHEAD;
        }
    }

    /// The index of an entry equal to (`name`, `value`), else of one with that name (0
    /// for none), and whether the first was found.
    fn find(&self, name: &[u8], value: &[u8]) -> (usize, bool) {
        let mut name_only = 0;
        let all = STATIC_TABLE.iter().copied().chain(
            self.entries
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice())),
        );
        for (i, (n, v)) in all.enumerate() {
            if n == name {
                if v == value {
                    return (i + 1, true);
                }
                if name_only == 0 {
                    name_only = i + 1;
                }
            }
        }
        (name_only, false)
    }
}

/// The decoding state of one direction of one connection.
pub struct Decoder {
    table: Table,
    limit: usize,
}

impl Decoder {
    /// A decoder whose table may grow to `limit` octets (the SETTINGS_HEADER_TABLE_SIZE the
    /// peer's encoder works under); it starts there.
    pub fn new(limit: usize) -> Self {
        Self {
            table: Table::new(limit),
            limit,
        }
    }

    /// Decodes one whole header block, calling `field` with each name and value in order,
    /// and whether the sender marked it never to be indexed (RFC 7541 section 6.2.3). After
    /// an error the decoder's state is undefined (the connection is over).
    pub fn decode(
        &mut self,
        mut block: &[u8],
        mut field: impl FnMut(&[u8], &[u8], bool),
    ) -> Result<(), HpackError> {
        let mut fields_seen = false;
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                let index = integer(&mut block, 7)?;
                let (name, value) = self.table.entry(index)?;
                field(name, value, false);
                fields_seen = true;
            } else if first & 0xe0 == 0x20 {
                if fields_seen {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = integer(&mut block, 5)?;
                if size > self.limit {
                    return Err(HpackError::TableSizeOverLimit(size));
                }
                self.table.set_max_size(size);
            } else {
                let (prefix, index_it) = if first & 0x40 != 0 {
                    (6, true)
                } else {
                    (4, false)
                };
                let never_indexed = first & 0xf0 == 0x10;
                let name_index = integer(&mut block, prefix)?;
                let name = if name_index == 0 {
                    string(&mut block)?
                } else {
                    self.table.entry(name_index)?.0.to_vec()
                };
                let value = string(&mut block)?;
                field(&name, &value, never_indexed);
                if index_it {
                    self.table.insert(name, value);
                }
                fields_seen = true;
            }
        }
        Ok(())
    }

    /// The dynamic table's size in octets (RFC 7541 section 4.1).
    pub fn table_size(&self) -> usize {
        self.table.size
    }
}

/// The encoding state toward one server: its table mirrors the server's decoder, so fields
/// seen before go as one-octet indexes.
pub struct Encoder {
    table: Table,
    /// Whether the table size has been announced (at the start of the first block).
    announced: bool,
}

impl Encoder {
    /// An encoder using a table of `size` octets, no more than the server's
    /// SETTINGS_HEADER_TABLE_SIZE; the first block announces it.
    pub fn new(size: usize) -> Self {
        Self {
            table: Table::new(size),
            announced: false,
        }
    }

    /// Appends one field to `out`. A field the client marked never-indexed stays so (RFC
    /// 7541 section 6.2.3 binds intermediaries to that); others are indexed, except those
    /// too large for the table.
    pub fn encode(&mut self, name: &[u8], value: &[u8], never_indexed: bool, out: &mut Vec<u8>) {
        if !self.announced {
            self.announced = true;
            encode_integer(self.table.max_size, 5, 0x20, out);
        }
        let (index, exact) = self.table.find(name, value);
        if exact && !never_indexed {
            encode_integer(index, 7, 0x80, out);
            return;
        }
        let fits = name.len() + value.len() + ENTRY_OVERHEAD <= self.table.max_size;
        let (prefix, flags) = match (never_indexed, fits) {
            (true, _) => (4, 0x10),
            (false, true) => (6, 0x40),
            (false, false) => (4, 0x00),
        };
        encode_integer(index, prefix, flags, out);
        if index == 0 {
            encode_string(name, out);
        }
        encode_string(value, out);
        if flags == 0x40 {
            self.table.insert(name.to_vec(), value.to_vec());
        }
    }
}

/// An integer with an `n`-bit prefix after the `flags` bits (RFC 7541 section 5.1).
pub fn encode_integer(mut value: usize, n: u8, flags: u8, out: &mut Vec<u8>) {
    let mask = (1usize << n) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A string literal, not Huffman-coded (RFC 7541 section 5.2).
fn encode_string(bytes: &[u8], out: &mut Vec<u8>) {
    encode_integer(bytes.len(), 7, 0, out);
    out.extend_from_slice(bytes);
}

/// An integer with an `n`-bit prefix (RFC 7541 section 5.1), advancing `block` past it.
fn integer(block: &mut &[u8], n: u8) -> Result<usize, HpackError> {
    let (&first, mut rest) = block.split_first().ok_or(HpackError::Truncated)?;
    let mask = (1usize << n) - 1;
    let mut value = usize::from(first) & mask;
    if value == mask {
        let mut shift = 0u32;
        loop {
            let (&byte, tail) = rest.split_first().ok_or(HpackError::Truncated)?;
            rest = tail;
            // Four continuation octets (2^28) are more than any table or string here.
            if shift > 21 {
                return Err(HpackError::IntegerOverflow);
            }
            value += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    *block = rest;
    Ok(value)
}

/// A string literal (RFC 7541 section 5.2), advancing `block` past it.
fn string(block: &mut &[u8]) -> Result<Vec<u8>, HpackError> {
    let huffman = block.first().ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, 7)?;
    if len > block.len() {
        return Err(HpackError::Truncated);
    }
    let (bytes, rest) = block.split_at(len);
    *block = rest;
    if huffman {
        huffman_decode(bytes)
    } else {
        Ok(bytes.to_vec())
    }
}

/// The symbol that may only pad, never appear (RFC 7541 section 5.2).
const EOS: u16 = 256;

/// The canonical Huffman code's decoding tables: for each code length, the first code, how
/// many codes have it, and where its symbols start in `symbols`.
struct Canonical {
    first_code: [u32; 31],
    count: [u32; 31],
    offset: [u32; 31],
    symbols: [u16; 257],
}

fn canonical() -> &'static Canonical {
    static TABLE: OnceLock<Canonical> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut count = [0u32; 31];
        for &len in CODE_LENGTHS.iter() {
            count[usize::from(len)] += 1;
        }
        let mut first_code = [0u32; 31];
        let mut offset = [0u32; 31];
        let mut code = 0u32;
        let mut index = 0u32;
        for len in 1..31 {
            code = (code + count[len - 1]) << 1;
            first_code[len] = code;
            offset[len] = index;
            index += count[len];
        }
        // Symbols in code order: by length, then by symbol value.
        let mut symbols = [0u16; 257];
        let mut next = offset;
        for (symbol, &len) in CODE_LENGTHS.iter().enumerate() {
            let len = usize::from(len);
            symbols[next[len] as usize] = symbol as u16;
            next[len] += 1;
        }
        Canonical {
            first_code,
            count,
            offset,
            symbols,
        }
    })
}

/// Decodes a Huffman-coded string: padding must be fewer than 8 bits, all ones, and EOS
/// must not appear.
pub fn huffman_decode(bytes: &[u8]) -> Result<Vec<u8>, HpackError> {
    let table = canonical();
    let mut out = Vec::with_capacity(bytes.len() * 8 / 5);
    let mut code = 0u32;
    let mut len = 0usize;
    // Whether the bits since the last symbol are all ones (a prefix of EOS, valid padding).
    let mut all_ones = true;
    for &byte in bytes {
        for bit in (0..8).rev() {
            let b = u32::from(byte >> bit) & 1;
            code = (code << 1) | b;
            len += 1;
            all_ones &= b == 1;
            if len > 30 {
                return Err(HpackError::BadHuffman);
            }
            let first = table.first_code[len];
            if code >= first && code - first < table.count[len] {
                let symbol = table.symbols[(table.offset[len] + code - first) as usize];
                if symbol == EOS {
                    return Err(HpackError::BadHuffman);
                }
                out.push(symbol as u8);
                code = 0;
                len = 0;
                all_ones = true;
            }
        }
    }
    if len >= 8 || !all_ones {
        return Err(HpackError::BadHuffman);
    }
    Ok(out)
}

/// The length in bits of each symbol's code, 0 to 255 and EOS (RFC 7541 Appendix B); the
/// code is canonical, so these define it.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

/// The static table (RFC 7541 Appendix A): index 1 is the first entry.
pub static STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn decode_all(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
        let mut fields = Vec::new();
        decoder.decode(block, |n, v, _| fields.push((n.to_vec(), v.to_vec())))?;
        Ok(fields)
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Fields {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// RFC 7541 Appendix C.4: three requests with Huffman coding, sharing one table.
    #[test]
    fn rfc_7541_c4_requests_with_huffman() {
        let mut d = Decoder::new(4096);
        let first = decode_all(&mut d, &hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")).unwrap();
        assert_eq!(
            first,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.table_size(), 57);
        let second = decode_all(&mut d, &hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap();
        assert_eq!(
            second,
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache"),
            ])
        );
        let third = decode_all(
            &mut d,
            &hex("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
        )
        .unwrap();
        assert_eq!(
            third,
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.table_size(), 164);
    }

    /// RFC 7541 Appendix C.5: responses with a 256-octet table, evicting.
    #[test]
    fn rfc_7541_c5_responses_evict() {
        let mut d = Decoder::new(256);
        let first = decode_all(
            &mut d,
            &hex("4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
        )
        .unwrap();
        assert_eq!(first[0], pairs(&[(":status", "302")])[0]);
        assert_eq!(d.table_size(), 222);
        let second = decode_all(&mut d, &hex("4803 3330 37c1 c0bf")).unwrap();
        assert_eq!(second[0], pairs(&[(":status", "307")])[0]);
        assert_eq!(second[3].1, b"https://www.example.com");
        assert_eq!(d.table_size(), 222);
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let cases: &[(&str, HpackError)] = &[
            ("80", HpackError::BadIndex(0)),
            ("be", HpackError::BadIndex(62)),
            ("ff 80 01", HpackError::BadIndex(255)),
            ("3f e2 1f", HpackError::TableSizeOverLimit(4097)),
            ("82 20", HpackError::LateSizeUpdate),
            ("00 05 61", HpackError::Truncated),
            ("00", HpackError::Truncated),
            ("7f", HpackError::Truncated),
            ("ff ff ff ff ff ff 01", HpackError::IntegerOverflow),
            // A Huffman string padded with a zero bit, with 8 bits of padding, with EOS.
            ("00 81 00 00", HpackError::BadHuffman),
            ("00 82 ff ff 00", HpackError::BadHuffman),
            ("00 84 ff ff ff ff 00", HpackError::BadHuffman),
        ];
        for (block, want) in cases {
            let mut d = Decoder::new(4096);
            let got = decode_all(&mut d, &hex(block)).unwrap_err();
            assert_eq!(&got, want, "{block}");
        }
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        // Encode with the canonical code built here, decode back.
        let table = canonical();
        let mut codes = [(0u32, 0u8); 257];
        for len in 1..31 {
            for k in 0..table.count[len] {
                let symbol = table.symbols[(table.offset[len] + k) as usize];
                codes[usize::from(symbol)] = (table.first_code[len] + k, len as u8);
            }
        }
        // Spot checks against RFC 7541 Appendix B.
        assert_eq!(codes[usize::from(b'0')], (0x0, 5));
        assert_eq!(codes[usize::from(b'a')], (0x3, 5));
        assert_eq!(codes[usize::from(b' ')], (0x14, 6));
        assert_eq!(codes[256], (0x3fffffff, 30));
        let input: Vec<u8> = (0..=255u8)
            .chain(b"www.example.com".iter().copied())
            .collect();
        let mut bits: Vec<bool> = Vec::new();
        for &b in &input {
            let (code, len) = codes[usize::from(b)];
            for i in (0..len).rev() {
                bits.push((code >> i) & 1 == 1);
            }
        }
        while !bits.len().is_multiple_of(8) {
            bits.push(true);
        }
        let bytes: Vec<u8> = bits
            .chunks(8)
            .map(|c| c.iter().fold(0u8, |acc, &b| (acc << 1) | u8::from(b)))
            .collect();
        assert_eq!(huffman_decode(&bytes).unwrap(), input);
    }
}

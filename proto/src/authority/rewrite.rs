//! The pure half of the `:authority` normalisation: HTTP/2 bytes from a client in, the same
//! bytes out, except that every request header block is decoded with the client's HPACK
//! state and re-encoded with `:authority` set to one fixed value.
//!
//! The server's HPACK decoder sees only what our own encoder wrote (its table mirrors the
//! server's, announced at 4096 octets, the initial SETTINGS_HEADER_TABLE_SIZE, which the
//! servers we front never lower), so the client's table and the server's never need to
//! agree. When the framing is wrong (a bad preface, a frame inside a header block, a
//! CONTINUATION out of place, bad padding, stream 0) the frames go to the server as the
//! client sent them, and so does the rest of the connection: the server rejects them with
//! a connection error before it decodes another block. When a header block does not decode
//! or is over the limits, the server instead gets a block that cannot decode (index 0), so
//! that it ends the connection with a COMPRESSION_ERROR and never decodes the client's
//! block against a table it does not share; the rest of the connection is dropped.

use bytes::{Buf, BufMut, BytesMut};

use super::hpack::{Decoder, Encoder};

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Every frame starts with a 9-octet header (RFC 9113 section 4.1).
pub const FRAME_HEADER_LEN: usize = 9;
/// The frame size every HTTP/2 endpoint must accept (the initial SETTINGS_MAX_FRAME_SIZE):
/// re-encoded blocks are cut into HEADERS and CONTINUATION frames no larger.
pub const MAX_OUT_FRAME: usize = 16_384;
/// The largest encoded header block (HEADERS plus CONTINUATIONs) this type buffers.
pub const MAX_BLOCK: usize = 1 << 20;
/// The largest decoded header list (RFC 9113's size: name + value + 32 per field).
pub const MAX_LIST: usize = 1 << 20;
/// SETTINGS_HEADER_TABLE_SIZE's initial value; the servers we front never announce another,
/// so it bounds the client's dynamic table.
pub const HEADER_TABLE_SIZE: usize = 4096;

pub const TYPE_HEADERS: u8 = 0x1;
pub const TYPE_CONTINUATION: u8 = 0x9;
pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// This many octets of the preface have been seen.
    Preface(usize),
    Frames,
    /// Everything from here on goes to the server untouched.
    PassThrough,
    /// The server has been sent an undecodable block; nothing more goes to it.
    Poisoned,
}

/// A header block being gathered from HEADERS and CONTINUATION frames.
struct Pending {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    /// The frames as the client sent them, for handing over untouched.
    raw: Vec<u8>,
}

/// The client-to-server direction of one HTTP/2 connection.
pub struct Rewriter {
    authority: Vec<u8>,
    phase: Phase,
    /// Octets of a frame's payload still to pass through.
    skip: usize,
    pending: Option<Pending>,
    decoder: Decoder,
    /// Toward the server: its own table, mirroring the server's decoder.
    encoder: Encoder,
    /// Header blocks re-encoded so far (for tests and tracing).
    rewritten: u64,
}

impl Rewriter {
    /// A rewriter that sets `:authority` to `authority` on every request.
    pub fn new(authority: &str) -> Self {
        let decoder = Decoder::new(HEADER_TABLE_SIZE);
        Self {
            encoder: Encoder::new(HEADER_TABLE_SIZE),
            authority: authority.as_bytes().to_vec(),
            phase: Phase::Preface(0),
            skip: 0,
            pending: None,
            decoder,
            rewritten: 0,
        }
    }

    /// How many header blocks were re-encoded.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// Whether the rewriter has stopped and passes everything through.
    pub fn passing_through(&self) -> bool {
        self.phase == Phase::PassThrough
    }

    /// Moves everything of `input` that can be dealt with now to `output`; what remains in
    /// `input` is an incomplete frame waiting for more octets.
    pub fn process(&mut self, input: &mut BytesMut, output: &mut BytesMut) {
        loop {
            match self.phase {
                Phase::Poisoned => {
                    input.clear();
                    return;
                }
                Phase::PassThrough => {
                    output.extend_from_slice(input);
                    input.clear();
                    return;
                }
                Phase::Preface(seen) => {
                    let n = input.len().min(PREFACE.len() - seen);
                    if n == 0 {
                        return;
                    }
                    if input[..n] != PREFACE[seen..seen + n] {
                        self.give_up(output);
                        continue;
                    }
                    output.extend_from_slice(&input[..n]);
                    input.advance(n);
                    self.phase = if seen + n == PREFACE.len() {
                        Phase::Frames
                    } else {
                        Phase::Preface(seen + n)
                    };
                }
                Phase::Frames => {
                    if self.skip > 0 {
                        let n = input.len().min(self.skip);
                        if n == 0 {
                            return;
                        }
                        output.extend_from_slice(&input[..n]);
                        input.advance(n);
                        self.skip -= n;
                        continue;
                    }
                    if input.len() < FRAME_HEADER_LEN {
                        return;
                    }
                    let len = usize::from(input[0]) << 16
                        | usize::from(input[1]) << 8
                        | usize::from(input[2]);
                    let kind = input[3];
                    let is_block = kind == TYPE_HEADERS || kind == TYPE_CONTINUATION;
                    if self.pending.is_some() && kind != TYPE_CONTINUATION {
                        // RFC 9113 section 6.10: nothing may come between the frames of one
                        // block; the server will say so.
                        self.give_up(output);
                        continue;
                    }
                    if !is_block {
                        output.extend_from_slice(&input[..FRAME_HEADER_LEN]);
                        input.advance(FRAME_HEADER_LEN);
                        self.skip = len;
                        continue;
                    }
                    let buffered = self.pending.as_ref().map_or(0, |p| p.raw.len());
                    if buffered + FRAME_HEADER_LEN + len > MAX_BLOCK {
                        let stream_id = self.pending.as_ref().map_or_else(
                            || u32::from_be_bytes([input[5], input[6], input[7], input[8]]),
                            |p| p.stream_id,
                        );
                        self.poison(stream_id, output);
                        continue;
                    }
                    if input.len() < FRAME_HEADER_LEN + len {
                        return;
                    }
                    self.block_frame(&input[..FRAME_HEADER_LEN + len], output);
                    input.advance(FRAME_HEADER_LEN + len);
                }
            }
        }
    }

    /// The client closed its side: whatever is buffered goes to the server as it came (an
    /// unfinished block is never decoded).
    pub fn finish(&mut self, input: &mut BytesMut, output: &mut BytesMut) {
        if self.phase == Phase::Poisoned {
            input.clear();
        } else if self.pending.is_some() || !input.is_empty() {
            self.give_up(output);
            self.process(input, output);
        }
    }

    /// Hands what is buffered to the server untouched and stops rewriting.
    fn give_up(&mut self, output: &mut BytesMut) {
        if let Some(pending) = self.pending.take() {
            output.extend_from_slice(&pending.raw);
        }
        self.phase = Phase::PassThrough;
    }

    /// Sends the server a header block it cannot decode, so that it ends the connection,
    /// and drops the rest.
    fn poison(&mut self, stream_id: u32, output: &mut BytesMut) {
        self.pending = None;
        write_block(output, stream_id.max(1), false, None, &[0x80]);
        self.phase = Phase::Poisoned;
    }

    /// Whether the server has been sent an undecodable block.
    pub fn poisoned(&self) -> bool {
        self.phase == Phase::Poisoned
    }

    /// One whole HEADERS or CONTINUATION frame.
    fn block_frame(&mut self, frame: &[u8], output: &mut BytesMut) {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        if kind == TYPE_HEADERS {
            let Some((priority, fragment)) = headers_fragment(flags, payload) else {
                output.extend_from_slice(frame);
                self.give_up(output);
                return;
            };
            if stream_id == 0 {
                output.extend_from_slice(frame);
                self.give_up(output);
                return;
            }
            self.pending = Some(Pending {
                stream_id,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
                block: fragment.to_vec(),
                raw: frame.to_vec(),
            });
        } else {
            match self.pending.as_mut() {
                Some(pending) if pending.stream_id == stream_id => {
                    pending.block.extend_from_slice(payload);
                    pending.raw.extend_from_slice(frame);
                }
                _ => {
                    self.give_up(output);
                    output.extend_from_slice(frame);
                    return;
                }
            }
        }
        if flags & FLAG_END_HEADERS != 0 {
            self.end_block(output);
        }
    }

    /// A whole header block: decode, set the authority, re-encode.
    fn end_block(&mut self, output: &mut BytesMut) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        let mut fields: Vec<Field> = Vec::new();
        let mut list_size = 0usize;
        let decoded = self
            .decoder
            .decode(&pending.block, |name, value, never_indexed| {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                if list_size <= MAX_LIST {
                    fields.push(Field {
                        name: name.to_vec(),
                        value: value.to_vec(),
                        never_indexed,
                    });
                }
            });
        if decoded.is_err() || list_size > MAX_LIST {
            self.poison(pending.stream_id, output);
            return;
        }
        let fields = set_authority(fields, &self.authority);
        let mut block = Vec::with_capacity(pending.block.len() + self.authority.len() + 16);
        for field in &fields {
            self.encoder
                .encode(&field.name, &field.value, field.never_indexed, &mut block);
        }
        write_block(
            output,
            pending.stream_id,
            pending.end_stream,
            pending.priority,
            &block,
        );
        self.rewritten += 1;
    }
}

/// The priority fields and block fragment of a HEADERS payload, or `None` when its padding
/// or priority fields do not fit.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0usize;
    if flags & FLAG_PADDED != 0 {
        let (&len, tail) = rest.split_first()?;
        pad = usize::from(len);
        rest = tail;
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let fields: [u8; 5] = rest.get(..5)?.try_into().ok()?;
        priority = Some(fields);
        rest = &rest[5..];
    }
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

/// One decoded header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
    pub never_indexed: bool,
}

/// The fields with every `:authority` set to `authority`, and one added after the other
/// pseudo-header fields of a request (one with `:method`) that had none. Trailers and
/// responses carry no pseudo-header fields and are left as they are.
pub fn set_authority(mut fields: Vec<Field>, authority: &[u8]) -> Vec<Field> {
    let mut found = false;
    for field in fields.iter_mut() {
        if field.name == b":authority" {
            field.value = authority.to_vec();
            found = true;
        }
    }
    if !found && fields.iter().any(|f| f.name == b":method") {
        let at = fields
            .iter()
            .position(|f| !f.name.starts_with(b":"))
            .unwrap_or(fields.len());
        fields.insert(
            at,
            Field {
                name: b":authority".to_vec(),
                value: authority.to_vec(),
                never_indexed: false,
            },
        );
    }
    fields
}

/// Writes `block` as one HEADERS frame and as many CONTINUATION frames as it needs.
pub fn write_block(
    output: &mut BytesMut,
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: &[u8],
) {
    let prefix = if priority.is_some() { 5 } else { 0 };
    let first = block.len().min(MAX_OUT_FRAME - prefix);
    let mut flags = 0;
    if end_stream {
        flags |= FLAG_END_STREAM;
    }
    if priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if first == block.len() {
        flags |= FLAG_END_HEADERS;
    }
    frame_header(output, prefix + first, TYPE_HEADERS, flags, stream_id);
    if let Some(fields) = priority {
        output.extend_from_slice(&fields);
    }
    output.extend_from_slice(&block[..first]);
    let mut rest = &block[first..];
    while !rest.is_empty() {
        let n = rest.len().min(MAX_OUT_FRAME);
        let flags = if n == rest.len() { FLAG_END_HEADERS } else { 0 };
        frame_header(output, n, TYPE_CONTINUATION, flags, stream_id);
        output.extend_from_slice(&rest[..n]);
        rest.advance(n);
    }
}

/// A frame header (RFC 9113 section 4.1).
pub fn frame_header(output: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: u32) {
    debug_assert!(len < 1 << 24);
    output.put_uint(len as u64, 3);
    output.put_u8(kind);
    output.put_u8(flags);
    output.put_u32(stream_id & 0x7fff_ffff);
}

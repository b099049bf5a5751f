//! SPDY/3.1 frames: their in-memory form and the byte codec.
//!
//! Every frame has an 8-byte header. A control frame starts with the control bit, the version
//! (3) and a 16-bit type; a data frame with a 31-bit stream id. Both then carry 8 bits of flags
//! and a 24-bit payload length. Header blocks inside SYN_STREAM, SYN_REPLY and HEADERS go
//! through the session's zlib contexts, which is why decoding is a method of [`FrameCodec`].

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::headers::{HeaderCompressor, HeaderDecompressor, HeaderError, Headers};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// FIN on data frames and on SYN_STREAM, SYN_REPLY and HEADERS.
pub const FLAG_FIN: u8 = 0x01;
/// UNIDIRECTIONAL on SYN_STREAM: the receiver never sends on it.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// The SETTINGS id of the initial per-stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// The largest payload we accept in one frame. The protocol allows 16 MiB; Go's clients
/// write what one `io.Copy` buffer holds (32 KiB), so 1 MiB keeps a hostile peer from
/// making us hold more while refusing no real one.
pub const MAX_PAYLOAD: usize = 1 << 20;

const HEADER_LEN: usize = 8;
const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// RST_STREAM status codes (SPDY/3.1 section 2.6.3).
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// Control frame types.
mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// Why bytes could not be read as a frame; every one ends the session.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("control frame has version {0}, not 3")]
    UnsupportedVersion(u16),
    #[error("frame payload of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("control frame type {kind} has a payload of {len} bytes")]
    BadLength { kind: u16, len: usize },
    #[error("frame names stream 0")]
    ZeroStreamId,
    #[error("bad header block")]
    Headers(#[from] HeaderError),
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame of a type SPDY/3.1 does not define; the spec says to ignore it.
    Unknown {
        kind: u16,
    },
}

/// Reads and writes frames for one session, owning both header compression contexts.
pub struct FrameCodec {
    compressor: HeaderCompressor,
    decompressor: HeaderDecompressor,
}

impl FrameCodec {
    /// A codec at the start of a session.
    pub fn new() -> Result<Self, FrameError> {
        Ok(Self {
            compressor: HeaderCompressor::new()?,
            decompressor: HeaderDecompressor::new(),
        })
    }

    /// Takes one frame off the front of `buf`, or `None` when it holds no whole frame yet.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let first = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        let control = first & 0x8000_0000 != 0;
        if control {
            let version = ((first >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(FrameError::UnsupportedVersion(version));
            }
        }
        if buf.len() < HEADER_LEN + len {
            buf.reserve(HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let mut payload = buf.split_to(len).freeze();
        if !control {
            let stream_id = first & STREAM_ID_MASK;
            if stream_id == 0 {
                return Err(FrameError::ZeroStreamId);
            }
            return Ok(Some(Frame::Data {
                stream_id,
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }));
        }
        let kind = (first & 0xffff) as u16;
        let bad_length = || FrameError::BadLength { kind, len };
        let frame = match kind {
            kind::SYN_STREAM => {
                if len < 10 {
                    return Err(bad_length());
                }
                let stream_id = payload.get_u32() & STREAM_ID_MASK;
                let associated_to = payload.get_u32() & STREAM_ID_MASK;
                let priority = payload.get_u8() >> 5;
                let _slot = payload.get_u8();
                let headers = self.decompressor.decompress(&payload)?;
                nonzero(stream_id)?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers,
                }
            }
            kind::SYN_REPLY | kind::HEADERS => {
                if len < 4 {
                    return Err(bad_length());
                }
                let stream_id = payload.get_u32() & STREAM_ID_MASK;
                let headers = self.decompressor.decompress(&payload)?;
                nonzero(stream_id)?;
                let fin = flags & FLAG_FIN != 0;
                if kind == kind::SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            kind::RST_STREAM => {
                if len != 8 {
                    return Err(bad_length());
                }
                Frame::RstStream {
                    stream_id: payload.get_u32() & STREAM_ID_MASK,
                    status: payload.get_u32(),
                }
            }
            kind::SETTINGS => {
                if len < 4 {
                    return Err(bad_length());
                }
                let count = payload.get_u32() as usize;
                if payload.remaining() != count.saturating_mul(8) {
                    return Err(bad_length());
                }
                let entries = (0..count)
                    .map(|_| {
                        let head = payload.get_u32();
                        Setting {
                            flags: (head >> 24) as u8,
                            id: head & 0x00ff_ffff,
                            value: payload.get_u32(),
                        }
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            kind::PING => {
                if len != 4 {
                    return Err(bad_length());
                }
                Frame::Ping {
                    id: payload.get_u32(),
                }
            }
            kind::GOAWAY => {
                if len != 8 {
                    return Err(bad_length());
                }
                Frame::GoAway {
                    last_good_stream_id: payload.get_u32() & STREAM_ID_MASK,
                    status: payload.get_u32(),
                }
            }
            kind::WINDOW_UPDATE => {
                if len != 8 {
                    return Err(bad_length());
                }
                Frame::WindowUpdate {
                    stream_id: payload.get_u32() & STREAM_ID_MASK,
                    delta: payload.get_u32() & STREAM_ID_MASK,
                }
            }
            other => Frame::Unknown { kind: other },
        };
        Ok(Some(frame))
    }

    /// Appends `frame`'s bytes to `dst`.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                dst.put_u32(stream_id & STREAM_ID_MASK);
                put_flags_len(dst, if *fin { FLAG_FIN } else { 0 }, data.len());
                dst.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                let block = self.compressor.compress(headers)?;
                put_control(dst, kind::SYN_STREAM, *flags, 10 + block.len());
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_u32(associated_to & STREAM_ID_MASK);
                dst.put_u8(priority << 5);
                dst.put_u8(0);
                dst.put_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let kind = match frame {
                    Frame::SynReply { .. } => kind::SYN_REPLY,
                    _ => kind::HEADERS,
                };
                let block = self.compressor.compress(headers)?;
                put_control(dst, kind, if *fin { FLAG_FIN } else { 0 }, 4 + block.len());
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                put_control(dst, kind::RST_STREAM, 0, 8);
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_u32(*status);
            }
            Frame::Settings { flags, entries } => {
                put_control(dst, kind::SETTINGS, *flags, 4 + 8 * entries.len());
                dst.put_u32(entries.len() as u32);
                for entry in entries {
                    dst.put_u32(u32::from(entry.flags) << 24 | (entry.id & 0x00ff_ffff));
                    dst.put_u32(entry.value);
                }
            }
            Frame::Ping { id } => {
                put_control(dst, kind::PING, 0, 4);
                dst.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                put_control(dst, kind::GOAWAY, 0, 8);
                dst.put_u32(last_good_stream_id & STREAM_ID_MASK);
                dst.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                put_control(dst, kind::WINDOW_UPDATE, 0, 8);
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_u32(delta & STREAM_ID_MASK);
            }
            Frame::Unknown { kind } => put_control(dst, *kind, 0, 0),
        }
        Ok(())
    }
}

fn nonzero(stream_id: u32) -> Result<(), FrameError> {
    if stream_id == 0 {
        Err(FrameError::ZeroStreamId)
    } else {
        Ok(())
    }
}

fn put_control(dst: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    dst.put_u16(0x8000 | VERSION);
    dst.put_u16(kind);
    put_flags_len(dst, flags, len);
}

fn put_flags_len(dst: &mut BytesMut, flags: u8, len: usize) {
    dst.put_u32(u32::from(flags) << 24 | (len as u32 & 0x00ff_ffff));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(frame: Frame) {
        let mut sender = FrameCodec::new().unwrap();
        let mut receiver = FrameCodec::new().unwrap();
        let mut buf = BytesMut::new();
        sender.encode(&frame, &mut buf).unwrap();
        let decoded = receiver.decode(&mut buf).unwrap().unwrap();
        assert_eq!(decoded, frame);
        assert!(buf.is_empty());
    }

    fn headers(stream_type: &str) -> Headers {
        let mut headers = Headers::new();
        headers.insert("streamtype", stream_type);
        headers
    }

    #[test]
    fn every_frame_type_round_trips() {
        round_trip(Frame::SynStream {
            stream_id: 1,
            associated_to: 0,
            priority: 3,
            flags: FLAG_FIN,
            headers: headers("error"),
        });
        round_trip(Frame::SynReply {
            stream_id: 1,
            fin: false,
            headers: Headers::new(),
        });
        round_trip(Frame::RstStream {
            stream_id: 5,
            status: rst::CANCEL,
        });
        round_trip(Frame::Settings {
            flags: 0,
            entries: vec![Setting {
                flags: 0,
                id: SETTINGS_INITIAL_WINDOW_SIZE,
                value: 65536,
            }],
        });
        round_trip(Frame::Ping { id: 7 });
        round_trip(Frame::GoAway {
            last_good_stream_id: 9,
            status: goaway::OK,
        });
        round_trip(Frame::Headers {
            stream_id: 3,
            fin: true,
            headers: headers("stdin"),
        });
        round_trip(Frame::WindowUpdate {
            stream_id: 3,
            delta: 4096,
        });
        round_trip(Frame::Data {
            stream_id: 3,
            fin: true,
            data: Bytes::from_static(b"hello"),
        });
    }

    #[test]
    fn partial_frame_waits_for_more_bytes() {
        let mut codec = FrameCodec::new().unwrap();
        let mut whole = BytesMut::new();
        codec
            .encode(
                &Frame::Data {
                    stream_id: 1,
                    fin: false,
                    data: Bytes::from_static(b"abcdef"),
                },
                &mut whole,
            )
            .unwrap();
        let mut buf = BytesMut::from(&whole[..10]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&whole[10..]);
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Frame::Data { .. })
        ));
    }

    #[test]
    fn oversized_frame_is_refused_before_it_is_buffered() {
        let mut codec = FrameCodec::new().unwrap();
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn spdy2_control_frame_is_refused() {
        let mut codec = FrameCodec::new().unwrap();
        let mut buf = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::UnsupportedVersion(2))
        ));
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut codec = FrameCodec::new().unwrap();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }

        #[test]
        fn decoder_never_panics_on_control_frames_with_random_payloads(
            kind in 0u16..12,
            flags in any::<u8>(),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut codec = FrameCodec::new().unwrap();
            let mut buf = BytesMut::new();
            put_control(&mut buf, kind, flags, payload.len());
            buf.extend_from_slice(&payload);
            let _ = codec.decode(&mut buf);
        }

        #[test]
        fn data_frames_round_trip(stream_id in 1u32..0x7fff_ffff, fin in any::<bool>(), data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            round_trip(Frame::Data { stream_id, fin, data: Bytes::from(data) });
        }
    }
}

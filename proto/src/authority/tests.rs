use bytes::BytesMut;
use loona_hpack::{Decoder, Encoder};
use proptest::prelude::*;

use super::rewrite::*;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn request(authority: Option<&str>, path: &str) -> Fields {
    let mut fields: Fields = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (b":path".to_vec(), path.as_bytes().to_vec()),
    ];
    if let Some(authority) = authority {
        fields.insert(1, (b":authority".to_vec(), authority.as_bytes().to_vec()));
    }
    fields.push((b"content-type".to_vec(), b"application/grpc".to_vec()));
    fields.push((b"te".to_vec(), b"trailers".to_vec()));
    fields
}

fn encode(encoder: &mut Encoder<'static>, fields: &Fields) -> Vec<u8> {
    encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
}

fn headers_frame(out: &mut Vec<u8>, stream: u32, flags: u8, payload: &[u8]) {
    let mut b = BytesMut::new();
    frame_header(&mut b, payload.len(), TYPE_HEADERS, flags, stream);
    out.extend_from_slice(&b);
    out.extend_from_slice(payload);
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let mut b = BytesMut::new();
    frame_header(&mut b, payload.len(), kind, flags, stream);
    out.extend_from_slice(&b);
    out.extend_from_slice(payload);
}

/// `block` as a HEADERS frame and CONTINUATION frames of at most `size` octets each.
fn split_block(out: &mut Vec<u8>, stream: u32, block: &[u8], size: usize) {
    let pieces: Vec<&[u8]> = block.chunks(size.max(1)).collect();
    for (k, piece) in pieces.iter().enumerate() {
        let kind = if k == 0 {
            TYPE_HEADERS
        } else {
            TYPE_CONTINUATION
        };
        let flags = if k + 1 == pieces.len() {
            FLAG_END_HEADERS
        } else {
            0
        };
        frame(out, kind, flags, stream, piece);
    }
}

/// Runs `input` through a rewriter `chunk` octets at a time.
fn run(input: &[u8], chunk: usize) -> (Vec<u8>, Rewriter) {
    let mut rewriter = Rewriter::new("localhost");
    let mut pending = BytesMut::new();
    let mut output = BytesMut::new();
    for piece in input.chunks(chunk.max(1)) {
        pending.extend_from_slice(piece);
        rewriter.process(&mut pending, &mut output);
    }
    rewriter.finish(&mut pending, &mut output);
    (output.to_vec(), rewriter)
}

#[derive(Debug, PartialEq)]
enum Seen {
    Block {
        stream: u32,
        end_stream: bool,
        fields: Fields,
    },
    Other {
        kind: u8,
        payload: Vec<u8>,
    },
}

/// Reads `output` as a server would, with an HPACK decoder that starts empty.
fn server_view(output: &[u8]) -> Vec<Seen> {
    assert_eq!(&output[..24], PREFACE);
    let mut rest = &output[24..];
    let mut decoder = Decoder::new();
    let mut seen = Vec::new();
    let mut block: Option<(u32, bool, Vec<u8>)> = None;
    while !rest.is_empty() {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        let (kind, flags) = (rest[3], rest[4]);
        let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
        assert!(len <= MAX_OUT_FRAME || !(kind == TYPE_HEADERS || kind == TYPE_CONTINUATION));
        let payload = &rest[9..9 + len];
        rest = &rest[9 + len..];
        match kind {
            TYPE_HEADERS => {
                assert!(block.is_none());
                assert_eq!(flags & FLAG_PADDED, 0, "re-encoded frames carry no padding");
                let start = if flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                block = Some((
                    stream,
                    flags & FLAG_END_STREAM != 0,
                    payload[start..].to_vec(),
                ));
            }
            TYPE_CONTINUATION => block
                .as_mut()
                .expect("continuation")
                .2
                .extend_from_slice(payload),
            _ => seen.push(Seen::Other {
                kind,
                payload: payload.to_vec(),
            }),
        }
        if (kind == TYPE_HEADERS || kind == TYPE_CONTINUATION) && flags & FLAG_END_HEADERS != 0 {
            let (stream, end_stream, bytes) = block.take().unwrap();
            seen.push(Seen::Block {
                stream,
                end_stream,
                fields: decoder
                    .decode(&bytes)
                    .expect("the server can decode every block"),
            });
        }
    }
    seen
}

fn authority_of(fields: &Fields) -> Option<&[u8]> {
    fields
        .iter()
        .find(|(n, _)| n == b":authority")
        .map(|(_, v)| &v[..])
}

#[test]
fn every_authority_becomes_localhost() {
    let mut encoder = Encoder::new();
    let mut input = PREFACE.to_vec();
    frame(&mut input, 0x4, 0, 0, &[]);
    let authorities = [
        Some("/run/vpod/cri.sock"),
        Some("%2Frun%2Fvpod%2Fcri.sock"),
        Some("localhost"),
        None,
    ];
    for (i, authority) in authorities.iter().enumerate() {
        let block = encode(
            &mut encoder,
            &request(*authority, "/runtime.v1.RuntimeService/Version"),
        );
        headers_frame(&mut input, 2 * i as u32 + 1, FLAG_END_HEADERS, &block);
        frame(
            &mut input,
            0x0,
            FLAG_END_STREAM,
            2 * i as u32 + 1,
            &[0, 0, 0, 0, 0],
        );
    }
    let (output, rewriter) = run(&input, input.len());
    assert_eq!(rewriter.rewritten(), 4);
    let seen = server_view(&output);
    let blocks: Vec<&Fields> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Block { fields, .. } => Some(fields),
            _ => None,
        })
        .collect();
    assert_eq!(blocks.len(), 4);
    for fields in blocks {
        assert_eq!(authority_of(fields), Some(&b"localhost"[..]));
        // Pseudo-header fields still come first, in their order.
        assert_eq!(fields[0].0, b":method");
        let pseudo = fields
            .iter()
            .take_while(|(n, _)| n.starts_with(b":"))
            .count();
        assert_eq!(pseudo, 4, "{fields:?}");
        assert!(fields
            .iter()
            .any(|(n, v)| n == b":path" && v == b"/runtime.v1.RuntimeService/Version"));
        assert!(fields.iter().any(|(n, v)| n == b"te" && v == b"trailers"));
    }
    // SETTINGS and DATA frames pass as they were.
    assert!(seen.contains(&Seen::Other {
        kind: 0x4,
        payload: vec![]
    }));
    assert_eq!(
        seen.iter()
            .filter(|s| matches!(s, Seen::Other { kind: 0, .. }))
            .count(),
        4
    );
}

#[test]
fn trailers_get_no_authority() {
    let mut encoder = Encoder::new();
    let mut input = PREFACE.to_vec();
    let trailers: Fields = vec![(b"grpc-status".to_vec(), b"0".to_vec())];
    headers_frame(
        &mut input,
        1,
        FLAG_END_HEADERS | FLAG_END_STREAM,
        &encode(&mut encoder, &trailers),
    );
    let (output, _) = run(&input, 7);
    assert_eq!(
        server_view(&output),
        vec![Seen::Block {
            stream: 1,
            end_stream: true,
            fields: trailers
        }]
    );
}

#[test]
fn dynamic_table_size_updates_padding_priority_and_continuations() {
    let mut encoder = Encoder::new();
    let mut input = PREFACE.to_vec();
    let mut expected = Vec::new();
    for i in 0..200u32 {
        let mut fields = request(
            Some("/run/vpod/cri.sock"),
            "/runtime.v1.RuntimeService/ListContainers",
        );
        fields.push((b"x-request".to_vec(), format!("{}", i % 7).into_bytes()));
        fields.push((
            format!("x-big-{}", i % 3).into_bytes(),
            vec![b'v'; 200 + (i as usize % 5)],
        ));
        let mut block = Vec::new();
        if i % 50 == 10 {
            // A table size update shrinking the table, then one restoring it.
            block.extend_from_slice(&[0x20 | 0x1f, 0xe1, 0x07]); // 1024
            encoder.set_max_table_size(1024);
        }
        block.extend(encode(&mut encoder, &fields));
        let stream = 2 * i + 1;
        match i % 4 {
            0 => headers_frame(&mut input, stream, FLAG_END_HEADERS, &block),
            1 => {
                // Padded, with priority.
                let mut payload = vec![3u8, 0, 0, 0, 0, 16];
                payload.extend_from_slice(&block);
                payload.extend_from_slice(&[0, 0, 0]);
                headers_frame(
                    &mut input,
                    stream,
                    FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
                    &payload,
                );
            }
            _ => {
                // Cut into a HEADERS and several CONTINUATION frames.
                split_block(&mut input, stream, &block, block.len() / 3 + 1);
            }
        }
        let mut want = fields.clone();
        for (n, v) in want.iter_mut() {
            if n == b":authority" {
                *v = b"localhost".to_vec();
            }
        }
        expected.push(Seen::Block {
            stream,
            end_stream: false,
            fields: want,
        });
    }
    for chunk in [1, 9, 100, 4096, input.len()] {
        let (output, rewriter) = run(&input, chunk);
        assert_eq!(rewriter.rewritten(), 200, "chunk {chunk}");
        assert!(!rewriter.passing_through());
        assert_eq!(server_view(&output), expected, "chunk {chunk}");
    }
}

#[test]
fn large_blocks_are_cut_into_continuations() {
    let mut encoder = Encoder::new();
    let mut input = PREFACE.to_vec();
    let mut fields = request(Some("/run/x.sock"), "/a");
    fields.push((b"x-large".to_vec(), vec![b'a'; 40_000]));
    let block = encode(&mut encoder, &fields);
    split_block(&mut input, 1, &block, 16_000);
    let (output, _) = run(&input, 1000);
    // server_view checks that no frame is over MAX_OUT_FRAME.
    let seen = server_view(&output);
    let Seen::Block { fields: got, .. } = &seen[0] else {
        panic!()
    };
    assert_eq!(authority_of(got), Some(&b"localhost"[..]));
    assert_eq!(got.last().unwrap().1.len(), 40_000);
}

#[test]
fn broken_input_is_handed_over_untouched() {
    let mut encoder = Encoder::new();
    let good = encode(&mut encoder, &request(Some("/x"), "/a"));
    let mut cases: Vec<Vec<u8>> = Vec::new();
    // Not a preface.
    cases.push(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
    // A CONTINUATION with no HEADERS before it.
    let mut c = PREFACE.to_vec();
    frame(&mut c, TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &good);
    cases.push(c);
    // A frame between HEADERS and its CONTINUATION.
    let mut c = PREFACE.to_vec();
    headers_frame(&mut c, 1, 0, &good[..3]);
    frame(&mut c, 0x6, 0, 0, &[0; 8]);
    frame(&mut c, TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &good[3..]);
    cases.push(c);
    // A CONTINUATION on another stream.
    let mut c = PREFACE.to_vec();
    headers_frame(&mut c, 1, 0, &good[..3]);
    frame(&mut c, TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &good[3..]);
    cases.push(c);
    // Padding longer than the frame.
    let mut c = PREFACE.to_vec();
    headers_frame(&mut c, 1, FLAG_END_HEADERS | FLAG_PADDED, &[200, 0x82]);
    cases.push(c);
    // HEADERS on stream 0.
    let mut c = PREFACE.to_vec();
    headers_frame(&mut c, 0, FLAG_END_HEADERS, &good);
    cases.push(c);
    for (i, input) in cases.iter().enumerate() {
        for chunk in [1, 5, input.len()] {
            let (output, rewriter) = run(input, chunk);
            assert_eq!(&output, input, "case {i} chunk {chunk}");
            assert!(rewriter.passing_through(), "case {i}");
        }
    }
}

/// What the server gets for a block that must not be decoded: the preface, `before`, then
/// one HEADERS frame on `stream` holding index 0, and nothing after it.
fn poisoned(before: &[u8], stream: u32) -> Vec<u8> {
    let mut want = PREFACE.to_vec();
    want.extend_from_slice(before);
    headers_frame(&mut want, stream, FLAG_END_HEADERS, &[0x80]);
    want
}

#[test]
fn undecodable_or_oversized_blocks_poison_the_connection() {
    // HPACK that does not decode: index 0, an index past both tables, a size update over
    // the limit, a truncated string, bad Huffman padding.
    for block in [
        &[0x80u8][..],
        &[0xff, 0x80, 0x01],
        &[0x3f, 0xe2, 0x1f],
        &[0x00, 0x05, b'a'],
        &[0x00, 0x81, 0x00, 0x00],
    ] {
        let mut c = PREFACE.to_vec();
        headers_frame(&mut c, 5, FLAG_END_HEADERS, block);
        // Whatever follows is dropped.
        frame(&mut c, 0x0, FLAG_END_STREAM, 5, &[0, 0, 0, 0, 0]);
        for chunk in [1, 4, c.len()] {
            let (output, rewriter) = run(&c, chunk);
            assert!(rewriter.poisoned());
            assert_eq!(output, poisoned(&[], 5), "{block:?} chunk {chunk}");
        }
    }
    // A header block that never ends, past the limit.
    let mut encoder = Encoder::new();
    let good = encode(&mut encoder, &request(Some("/x"), "/a"));
    let mut c = PREFACE.to_vec();
    headers_frame(&mut c, 3, 0, &good);
    while c.len() < MAX_BLOCK + 100_000 {
        frame(&mut c, TYPE_CONTINUATION, 0, 3, &[0x82; 16_000]);
    }
    let (output, rewriter) = run(&c, 10_000);
    assert!(rewriter.poisoned());
    assert_eq!(output, poisoned(&[], 3));
}

#[test]
fn an_hpack_bomb_is_not_expanded() {
    // One 4 KiB entry in the table, then a block that refers to it 100,000 times.
    let mut input = PREFACE.to_vec();
    let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xa1, 0x1e];
    block.extend(vec![b'y'; 4_000]);
    headers_frame(&mut input, 1, FLAG_END_HEADERS, &block);
    let mut bomb = Vec::new();
    while bomb.len() < 100_000 {
        bomb.push(0x80 | 62);
    }
    let mut c = input.clone();
    split_block(&mut c, 3, &bomb, 16_000);
    let (output, rewriter) = run(&c, c.len());
    assert!(rewriter.poisoned());
    // The first block was re-encoded; the bomb became a block the server cannot decode.
    assert!(output.ends_with(&poisoned(&[], 3)[PREFACE.len()..]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever arrives, in whatever pieces: no panic, and the output is the same whatever
    /// the pieces were.
    #[test]
    fn hostile_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600), chunk in 1usize..64, preface in any::<bool>()) {
        let mut input = if preface { PREFACE.to_vec() } else { Vec::new() };
        input.extend_from_slice(&body);
        let (a, _) = run(&input, chunk);
        let (b, _) = run(&input, input.len());
        prop_assert_eq!(a, b);
    }

    /// Frames with valid headers but hostile payloads: no panic.
    #[test]
    fn hostile_header_frames_never_panic(frames in proptest::collection::vec((prop_oneof![Just(TYPE_HEADERS), Just(TYPE_CONTINUATION), Just(0u8)], any::<u8>(), 0u32..4, proptest::collection::vec(any::<u8>(), 0..80)), 0..8)) {
        let mut input = PREFACE.to_vec();
        for (kind, flags, stream, payload) in &frames {
            frame(&mut input, *kind, *flags, *stream, payload);
        }
        let (a, _) = run(&input, 3);
        let (b, _) = run(&input, input.len());
        prop_assert_eq!(a, b);
    }
}

mod hpack_codec {
    use super::super::hpack::{Decoder as OurDecoder, Encoder as OurEncoder};
    use proptest::prelude::*;

    fn field() -> impl Strategy<Value = (Vec<u8>, Vec<u8>, bool)> {
        (
            prop_oneof![
                Just(b":authority".to_vec()),
                Just(b":path".to_vec()),
                Just(b"content-type".to_vec()),
                Just(b"x-a".to_vec()),
                Just(b"x-b".to_vec()),
                proptest::collection::vec(b'a'..=b'z', 1..12),
            ],
            prop_oneof![
                Just(b"".to_vec()),
                Just(b"application/grpc".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec(any::<u8>(), 3000..5000),
            ],
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Blocks our encoder writes decode to the same fields with an independent decoder
        /// (loona-hpack) and with ours, across many blocks sharing one table, and fields
        /// marked never-indexed stay marked.
        #[test]
        fn our_encoder_round_trips(blocks in proptest::collection::vec(proptest::collection::vec(field(), 0..10), 1..20)) {
            let mut encoder = OurEncoder::new(4096);
            let mut theirs = loona_hpack::Decoder::new();
            let mut ours = OurDecoder::new(4096);
            for fields in &blocks {
                let mut block = Vec::new();
                for (n, v, never) in fields {
                    encoder.encode(n, v, *never, &mut block);
                }
                let decoded = theirs.decode(&block).expect("loona decodes our block");
                let want: Vec<(Vec<u8>, Vec<u8>)> = fields.iter().map(|(n, v, _)| (n.clone(), v.clone())).collect();
                prop_assert_eq!(&decoded, &want);
                let mut again = Vec::new();
                ours.decode(&block, |n, v, never| again.push((n.to_vec(), v.to_vec(), never))).expect("ours decodes it");
                for (got, (n, v, never)) in again.iter().zip(fields) {
                    prop_assert_eq!(&got.0, n);
                    prop_assert_eq!(&got.1, v);
                    if *never {
                        prop_assert!(got.2, "a never-indexed field lost its mark");
                    }
                }
            }
        }

        /// Blocks another encoder (loona-hpack, with its dynamic table) writes decode the
        /// same with ours.
        #[test]
        fn our_decoder_reads_another_encoder(blocks in proptest::collection::vec(proptest::collection::vec(field(), 0..10), 1..20)) {
            let mut encoder = loona_hpack::Encoder::new();
            let mut ours = OurDecoder::new(4096);
            for fields in &blocks {
                let block = encoder.encode(fields.iter().map(|(n, v, _)| (&n[..], &v[..])));
                let mut got = Vec::new();
                ours.decode(&block, |n, v, _| got.push((n.to_vec(), v.to_vec()))).expect("decodes");
                let want: Vec<(Vec<u8>, Vec<u8>)> = fields.iter().map(|(n, v, _)| (n.clone(), v.clone())).collect();
                prop_assert_eq!(got, want);
            }
        }

        /// Any bytes: an error or fields, never a panic.
        #[test]
        fn our_decoder_never_panics(blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..6)) {
            let mut ours = OurDecoder::new(4096);
            for block in &blocks {
                let _ = ours.decode(block, |_, _, _| {});
            }
        }
    }
}

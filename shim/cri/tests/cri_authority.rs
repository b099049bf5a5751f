//! vpod-cri answers every gRPC client whatever `:authority` it sends: a client here writes
//! its own HTTP/2 frames on the unix socket (as grpc-go, grpc-java and Python clients of
//! some versions do, with the socket's path as authority), re-uses its HPACK dynamic table
//! across many requests, cuts blocks into CONTINUATION frames, and sends malformed frames,
//! which must end the connection with an error, never hang it or take the server down.
//! A real grpc-go client (Debian's grpc-go 1.33, dialling the socket path as crictl 1.26
//! does) gets its answers too. Version and ListContainers need no VM, so this runs on any
//! machine.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::Daemon;
use loona_hpack::{Decoder, Encoder};
use prost::Message;
use vpod_e2e::{built, repo_root, run_with_limit};
use vpod_proto::cri::{
    ListContainersRequest, ListContainersResponse, VersionRequest, VersionResponse,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 0x1;
const COMPRESSION_ERROR: u32 = 0x9;

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// What the server answered to one request.
#[derive(Debug, Default)]
struct Answer {
    status: String,
    grpc_status: String,
    message: Vec<u8>,
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
enum End {
    GoAway(u32),
    Closed,
}

/// An HTTP/2 client written frame by frame.
struct RawClient {
    sock: UnixStream,
    encoder: Encoder<'static>,
    decoder: Decoder<'static>,
    next_stream: u32,
}

impl RawClient {
    fn connect(daemon: &Daemon) -> RawClient {
        let sock = UnixStream::connect(&daemon.socket).expect("the CRI socket");
        // A hang is a failure, not a stuck test.
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut client = RawClient {
            sock,
            encoder: Encoder::new(),
            decoder: Decoder::new(),
            next_stream: 1,
        };
        client.sock.write_all(PREFACE).unwrap();
        client.send(SETTINGS, 0, 0, &[]);
        client
    }

    fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        // A server that has already ended the connection shows in what `read` gets.
        let _ = self.sock.write_all(&frame);
    }

    /// The next frame, or `None` at EOF (or a reset connection).
    fn read(&mut self) -> Option<Frame> {
        let mut head = [0u8; 9];
        match self.sock.read_exact(&mut head) {
            Ok(()) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("the server sent nothing for 20 s: a hang")
            }
            Err(_) => return None,
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        self.sock.read_exact(&mut payload).ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// The request's header block, encoded with the client's (stateful) HPACK encoder.
    fn request_block(
        &mut self,
        authority: Option<&str>,
        method: &str,
        extra: &[(&str, String)],
    ) -> Vec<u8> {
        let path = format!("/runtime.v1.RuntimeService/{method}");
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
        ];
        if let Some(a) = authority {
            fields.push((b":authority".to_vec(), a.as_bytes().to_vec()));
        }
        fields.push((b":path".to_vec(), path.into_bytes()));
        fields.push((b"content-type".to_vec(), b"application/grpc".to_vec()));
        fields.push((b"te".to_vec(), b"trailers".to_vec()));
        fields.push((b"user-agent".to_vec(), b"grpc-go/1.50.1".to_vec()));
        for (n, v) in extra {
            fields.push((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
        self.encoder
            .encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// Sends one unary call, its header block cut into `pieces` frames, and reads its answer.
    fn call(&mut self, block: &[u8], pieces: usize, message: &[u8]) -> Answer {
        let stream = self.next_stream;
        self.next_stream += 2;
        let size = block.len().div_ceil(pieces.max(1)).max(1);
        let chunks: Vec<&[u8]> = block.chunks(size).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = if i + 1 == chunks.len() {
                END_HEADERS
            } else {
                0
            };
            self.send(
                if i == 0 { HEADERS } else { CONTINUATION },
                last,
                stream,
                chunk,
            );
        }
        let mut grpc = vec![0u8];
        grpc.extend_from_slice(&(message.len() as u32).to_be_bytes());
        grpc.extend_from_slice(message);
        self.send(DATA, END_STREAM, stream, &grpc);
        self.answer(stream)
    }

    fn answer(&mut self, stream: u32) -> Answer {
        let mut answer = Answer::default();
        let mut block = Vec::new();
        loop {
            let frame = self.read().unwrap_or_else(|| {
                panic!("the connection closed before stream {stream} was answered")
            });
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => self.send(SETTINGS, ACK, 0, &[]),
                PING if frame.flags & ACK == 0 => self.send(PING, ACK, 0, &frame.payload),
                GOAWAY | RST_STREAM => panic!(
                    "stream {stream}: the server sent frame type {} with {:?}",
                    frame.kind, frame.payload
                ),
                HEADERS | CONTINUATION => {
                    block.extend_from_slice(&frame.payload);
                    if frame.flags & END_HEADERS != 0 {
                        for (n, v) in self.decoder.decode(&block).expect("the server's HPACK") {
                            match &n[..] {
                                b":status" => answer.status = String::from_utf8(v).unwrap(),
                                b"grpc-status" => {
                                    answer.grpc_status = String::from_utf8(v).unwrap()
                                }
                                _ => {}
                            }
                        }
                        block.clear();
                    }
                    if frame.stream == stream && frame.flags & END_STREAM != 0 {
                        return answer;
                    }
                }
                DATA if frame.stream == stream => {
                    answer.message.extend_from_slice(&frame.payload);
                    if frame.flags & END_STREAM != 0 {
                        return answer;
                    }
                }
                _ => {}
            }
        }
    }

    /// Reads until the server ends the connection; a GOAWAY's error code if it sent one.
    fn end(&mut self) -> End {
        while let Some(frame) = self.read() {
            if frame.kind == GOAWAY {
                let code = u32::from_be_bytes(frame.payload[4..8].try_into().unwrap());
                return End::GoAway(code);
            }
        }
        End::Closed
    }
}

/// h2 answers a broken header block with GOAWAY and PROTOCOL_ERROR (COMPRESSION_ERROR is
/// what RFC 7541 names for HPACK that does not decode; either is a connection error).
fn assert_connection_error(end: End) {
    assert!(
        matches!(end, End::GoAway(PROTOCOL_ERROR | COMPRESSION_ERROR)),
        "expected a GOAWAY with a connection error, got {end:?}"
    );
}

fn grpc_message(answer: &Answer) -> &[u8] {
    assert_eq!(answer.status, "200", "{answer:?}");
    assert_eq!(answer.grpc_status, "0", "{answer:?}");
    assert!(answer.message.len() >= 5, "{answer:?}");
    &answer.message[5..]
}

fn version(client: &mut RawClient, authority: Option<&str>) {
    let block = client.request_block(authority, "Version", &[]);
    let request = VersionRequest {
        version: "v1".into(),
    }
    .encode_to_vec();
    let answer = client.call(&block, 1, &request);
    let reply = VersionResponse::decode(grpc_message(&answer)).expect("a VersionResponse");
    assert_eq!(reply.runtime_name, "vpod", "authority {authority:?}");
    assert_eq!(reply.runtime_api_version, "v1");
}

const AUTHORITIES: [Option<&str>; 5] = [
    Some("/run/vpod/cri.sock"),
    Some("%2Frun%2Fvpod%2Fcri.sock"),
    Some("localhost"),
    None,
    Some("unix:///run/vpod/cri.sock"),
];

#[test]
fn any_authority_gets_an_answer_on_new_and_shared_connections() {
    built("target/release/vpod-cri");
    let daemon = Daemon::start("authority");
    // The socket's real path too, as grpc-go sends it.
    let own = daemon.socket.display().to_string();
    for authority in AUTHORITIES.iter().copied().chain([Some(own.as_str())]) {
        let mut client = RawClient::connect(&daemon);
        version(&mut client, authority);
    }
    let mut shared = RawClient::connect(&daemon);
    for authority in AUTHORITIES {
        version(&mut shared, authority);
    }
}

#[test]
fn hpack_state_survives_hundreds_of_requests_with_size_updates_and_continuations() {
    built("target/release/vpod-cri");
    let daemon = Daemon::start("hpack");
    let mut client = RawClient::connect(&daemon);
    for i in 0..300usize {
        let extra = [
            ("x-request-id", format!("{}", i % 11)),
            ("x-padding", "p".repeat(100 + i % 13)),
        ];
        let authority = AUTHORITIES[i % AUTHORITIES.len()];
        let method = if i % 2 == 0 {
            "Version"
        } else {
            "ListContainers"
        };
        let mut block = Vec::new();
        if i % 60 == 30 {
            // Shrink the table to 256 octets (evicting most of it), as an encoder may.
            block.extend_from_slice(&[0x3f, 0xe1, 0x01]);
            client.encoder.set_max_table_size(256);
        } else if i % 60 == 45 {
            block.extend_from_slice(&[0x3f, 0xe1, 0x1f]);
            client.encoder.set_max_table_size(4096);
        }
        block.extend(client.request_block(authority, method, &extra));
        let pieces = 1 + i % 4;
        if method == "Version" {
            let request = VersionRequest {
                version: "v1".into(),
            }
            .encode_to_vec();
            let answer = client.call(&block, pieces, &request);
            let reply = VersionResponse::decode(grpc_message(&answer)).unwrap();
            assert_eq!(reply.runtime_name, "vpod", "request {i}");
        } else {
            let request = ListContainersRequest::default().encode_to_vec();
            let answer = client.call(&block, pieces, &request);
            let reply = ListContainersResponse::decode(grpc_message(&answer)).unwrap();
            assert!(reply.containers.is_empty(), "request {i}");
        }
    }
}

#[test]
fn malformed_frames_end_the_connection_with_an_error_and_the_server_lives_on() {
    built("target/release/vpod-cri");
    let daemon = Daemon::start("malformed");

    // HPACK that does not decode (index 0, RFC 7541 section 6.1).
    let mut c = RawClient::connect(&daemon);
    c.send(HEADERS, END_HEADERS, 1, &[0x80]);
    assert_connection_error(c.end());

    // A dynamic-table index that was never defined.
    let mut c = RawClient::connect(&daemon);
    c.send(HEADERS, END_HEADERS, 1, &[0xff, 0x80, 0x01]);
    assert_connection_error(c.end());

    // A CONTINUATION with no HEADERS before it.
    let mut c = RawClient::connect(&daemon);
    let block = c.request_block(Some("/run/vpod/cri.sock"), "Version", &[]);
    c.send(CONTINUATION, END_HEADERS, 1, &block);
    assert_connection_error(c.end());

    // A PING between HEADERS and its CONTINUATION, after a good request.
    let mut c = RawClient::connect(&daemon);
    version(&mut c, Some("/run/vpod/cri.sock"));
    let block = c.request_block(Some("/run/vpod/cri.sock"), "Version", &[]);
    c.send(HEADERS, 0, 3, &block[..2]);
    c.send(PING, 0, 0, &[0; 8]);
    c.send(CONTINUATION, END_HEADERS, 3, &block[2..]);
    assert_connection_error(c.end());

    // Padding longer than the frame.
    let mut c = RawClient::connect(&daemon);
    c.send(HEADERS, END_HEADERS | 0x8, 1, &[200, 0x82]);
    assert_connection_error(c.end());

    // Not HTTP/2 at all, and a preface followed by noise: the connection ends.
    for noise in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0xffu8; 64][..]] {
        let mut sock = UnixStream::connect(&daemon.socket).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        if noise[0] == 0xff {
            sock.write_all(PREFACE).unwrap();
        }
        sock.write_all(noise).unwrap();
        let mut sink = Vec::new();
        match sock.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "the server hung on {noise:?}"
            ),
        }
    }

    // A client that hangs up in the middle of a header block.
    let mut c = RawClient::connect(&daemon);
    let block = c.request_block(Some("/x"), "Version", &[]);
    c.send(HEADERS, 0, 1, &block[..3]);
    drop(c);

    // And the server still answers.
    let mut c = RawClient::connect(&daemon);
    version(&mut c, Some("/run/vpod/cri.sock"));
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
}

/// Builds tests/grpc-go-client with Debian's Go and grpc-go (GOPATH mode, offline; `make
/// deps` installs golang-go and golang-google-grpc-dev).
fn grpc_go_client() -> std::path::PathBuf {
    let out = repo_root().join(format!("target/grpc-go-client-{}", std::process::id()));
    let mut go = std::process::Command::new("go");
    go.args(["build", "-o"])
        .arg(&out)
        .arg(repo_root().join("tests/grpc-go-client/main.go"))
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOFLAGS", "")
        .env("GOCACHE", repo_root().join("target/go-cache"));
    let done = run_with_limit(&mut go, Duration::from_secs(600));
    assert!(
        done.status.success(),
        "building the grpc-go client failed (needs Debian's golang-go and \
         golang-google-grpc-dev):\n{}\n{}",
        done.stdout_text(),
        done.stderr_text()
    );
    out
}

#[test]
fn a_grpc_go_client_that_sends_the_socket_path_gets_answers() {
    built("target/release/vpod-cri");
    let client = grpc_go_client();
    let daemon = Daemon::start("grpc-go");
    let mut run = std::process::Command::new(&client);
    run.arg(&daemon.socket).arg("200");
    let done = run_with_limit(&mut run, Duration::from_secs(120));
    let _ = std::fs::remove_file(&client);
    let stdout = done.stdout_text();
    assert!(done.status.success(), "{stdout}\n{}", done.stderr_text());
    // grpc-go dialled the path, so the path was its authority.
    assert!(
        stdout.contains(&format!("authority {}", daemon.socket.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok 200 Version and 200 ListContainers calls"),
        "{stdout}"
    );
}

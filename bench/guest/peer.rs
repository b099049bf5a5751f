//! `vpod-bench-peer`: the benchmarks' tiny helper, run in pod VMs (in a container) and on
//! the host beside them, so both sides of a comparison run the same code. A single file with
//! no crates: `vpod-bench prepare` compiles it with `rustc -C target-feature=+crt-static`
//! and puts it in a layer at `/usr/local/bin/vpod-bench-peer`.
//!
//! - `read FILE`: reads FILE sequentially in 1 MiB blocks; prints `read bytes=N ns=T`.
//! - `sink PORT`: serves vsock PORT; per connection reads an 8-byte little-endian length N,
//!   then N bytes, and answers with the 8-byte count it read.
//! - `source PORT BYTES ROUNDS`: ROUNDS times, connects to the host (CID 2) on vsock PORT,
//!   sends the 8-byte length BYTES, then BYTES bytes, and waits for the 8-byte answer.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::time::Instant;

const AF_VSOCK: i32 = 40;
const SOCK_STREAM: i32 = 1;
const SOCK_CLOEXEC: i32 = 0o2000000;
const VMADDR_CID_ANY: u32 = u32::MAX;
const VMADDR_CID_HOST: u32 = 2;
const BLOCK: usize = 1 << 20;

/// `struct sockaddr_vm` of <linux/vm_sockets.h>.
#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

extern "C" {
    fn socket(domain: i32, kind: i32, protocol: i32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
    fn listen(fd: i32, backlog: i32) -> i32;
    fn accept(fd: i32, addr: *mut SockaddrVm, len: *mut u32) -> i32;
    fn connect(fd: i32, addr: *const SockaddrVm, len: u32) -> i32;
}

fn fail(what: &str) -> ! {
    eprintln!(
        "vpod-bench-peer: {what}: {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(1);
}

fn address(cid: u32, port: u32) -> SockaddrVm {
    SockaddrVm {
        family: AF_VSOCK as u16,
        reserved1: 0,
        port,
        cid,
        flags: 0,
        zero: [0; 3],
    }
}

fn vsock_socket() -> i32 {
    // SAFETY: plain system call with constant arguments.
    let fd = unsafe { socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0) };
    if fd < 0 {
        fail("socket(AF_VSOCK)");
    }
    fd
}

fn read_file(path: &str) {
    let mut file = File::open(path).unwrap_or_else(|_| fail(path));
    let mut buffer = vec![0u8; BLOCK];
    let started = Instant::now();
    let mut total = 0u64;
    loop {
        match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => fail("read"),
        }
    }
    println!("read bytes={total} ns={}", started.elapsed().as_nanos());
}

/// Reads the 8-byte length, then that many bytes; returns the count.
fn drain(stream: &mut File, buffer: &mut [u8]) -> u64 {
    let mut length = [0u8; 8];
    if stream.read_exact(&mut length).is_err() {
        return 0;
    }
    let want = u64::from_le_bytes(length);
    let mut got = 0u64;
    while got < want {
        let chunk = buffer.len().min((want - got) as usize);
        match stream.read(&mut buffer[..chunk]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    got
}

fn sink(port: u32) {
    let fd = vsock_socket();
    let addr = address(VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<SockaddrVm>() as u32;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes for the call's duration.
    if unsafe { bind(fd, &addr, len) } < 0 {
        fail("bind");
    }
    // SAFETY: plain system call on our socket.
    if unsafe { listen(fd, 16) } < 0 {
        fail("listen");
    }
    let mut buffer = vec![0u8; BLOCK];
    loop {
        // SAFETY: null address pointers are allowed: the peer's address is not wanted.
        let client = unsafe { accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) };
        if client < 0 {
            fail("accept");
        }
        // SAFETY: `client` is a new descriptor that nothing else owns.
        let mut stream = unsafe { File::from_raw_fd(client) };
        let got = drain(&mut stream, &mut buffer);
        let _ = stream.write_all(&got.to_le_bytes());
    }
}

fn source(port: u32, bytes: u64, rounds: u32) {
    let data = vec![0x5au8; BLOCK];
    for _ in 0..rounds {
        let fd = vsock_socket();
        let addr = address(VMADDR_CID_HOST, port);
        let len = std::mem::size_of::<SockaddrVm>() as u32;
        // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes for the call's duration.
        if unsafe { connect(fd, &addr, len) } < 0 {
            fail("connect");
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let mut stream = unsafe { File::from_raw_fd(fd) };
        stream
            .write_all(&bytes.to_le_bytes())
            .unwrap_or_else(|_| fail("write"));
        let mut left = bytes;
        while left > 0 {
            let chunk = data.len().min(left as usize);
            stream
                .write_all(&data[..chunk])
                .unwrap_or_else(|_| fail("write"));
            left -= chunk as u64;
        }
        let mut answer = [0u8; 8];
        stream
            .read_exact(&mut answer)
            .unwrap_or_else(|_| fail("read the host's answer"));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let number = |s: &str| s.parse::<u64>().unwrap_or_else(|_| fail("bad number"));
    match words.as_slice() {
        ["read", path] => read_file(path),
        ["sink", port] => sink(number(port) as u32),
        ["source", port, bytes, rounds] => {
            source(number(port) as u32, number(bytes), number(rounds) as u32)
        }
        _ => {
            eprintln!("usage: vpod-bench-peer read FILE | sink PORT | source PORT BYTES ROUNDS");
            std::process::exit(2);
        }
    }
}

//! The host-side vsock device path, natively and without KVM: real unix sockets on the host
//! side, vpod-vmm's muxer and connection state machines, and a simulated guest driver
//! (`vsock_guest`) that feeds the muxer packets as the queue handler would. What it leaves
//! out is the virtqueue processing, tested on its own in
//! vmm/src/devices/virtio/vsock/handler_tests.rs.
//!
//! 16 MiB each way, every byte counted. The throughput of the same path is a benchmark:
//! `target/release/vpod-bench vsock-host-path --runs 5 --mib 256` (under `make bench`).

mod vsock_guest;

use std::path::PathBuf;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("vpod-vsock-path-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

#[test]
fn vsock_host_side_path_moves_every_byte_both_ways() {
    let bytes = 16 << 20;
    let dir = temp_dir("both");
    let socket = dir.0.join("v.sock");
    vsock_guest::host_to_guest(&socket, bytes);
    let socket = dir.0.join("w.sock");
    vsock_guest::guest_to_host(&socket, bytes);
    assert!(!socket.exists(), "the muxer removes its socket");
}

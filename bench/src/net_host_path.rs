//! `vpod-bench net-host-path` (native, no KVM, root for a network namespace): the throughput
//! of vpod-vmm's virtio-net device path through a real tap, both ways, with 64 KiB TSO
//! frames. The guest is simulated by the device's queue handler over guest memory (the
//! driver `vmm/tests/net_guest/mod.rs` that the correctness test `vmm/tests/net_tap.rs`
//! uses, included here); the host's end is a packet socket on the tap, in a network
//! namespace of its own.
//!
//! - guest to host: the guest queues TSO frames (a queue's worth at a time), the device
//!   sends them into the tap, a reader thread takes them off the packet socket; timed from
//!   the first send to the last frame read.
//! - host to guest: the packet socket sends TSO frames into the tap (16 at a time, what 256
//!   mergeable 4 KiB buffers hold, so the tap's queue never overflows), the device fills
//!   the guest's buffers, the guest gives them back; timed to the last frame received.
//!
//! Rows go to `bench/results/net-host-path.jsonl`; `mb_s` counts TCP payload and headers
//! (each frame less its virtio-net header).

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};
use vpod_bench::report::{table, write_jsonl, Row};

#[path = "../../vmm/tests/net_guest/mod.rs"]
mod net_guest;

use net_guest::{in_new_netns, tcp_frame, test_tap, GuestNic, PacketSocket, QUEUE_SIZE};

/// TCP payload of each frame: the largest a 64 KiB IPv4 packet carries, rounded down.
const PAYLOAD: usize = 65_000;
const DEVICE_HDR: usize = 12;
const PACKET_HDR: usize = 10;
/// Frames in flight host to guest: 16 frames of 64 KiB fill 256 buffers of 4 KiB.
const RX_BATCH: usize = 16;

/// One direction's outcome: frames and bytes that arrived, and when the last did.
struct Transfer {
    frames: u64,
    bytes: u64,
    elapsed: Duration,
}

fn guest_to_host(frames: u64) -> Result<Transfer> {
    let mut tap = test_tap("vpodbtx0");
    let host = PacketSocket::bind("vpodbtx0", false).context("packet socket")?;
    let mut guest = GuestNic::new(4096);
    let frame = tcp_frame(DEVICE_HDR, PAYLOAD, true);
    let frame_len = frame.len() - DEVICE_HDR;
    guest.fill_tx_slots(&frame);
    let start = Instant::now();
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut buf = vec![0u8; 70_000];
            let (mut got, mut bytes, mut last) = (0u64, 0u64, start);
            while got < frames {
                match host.recv(&mut buf) {
                    Ok(n) if n == frame_len => {
                        got += 1;
                        bytes += n as u64;
                        last = Instant::now();
                    }
                    Ok(_) => {}
                    // Two seconds without a frame: the rest were lost.
                    Err(_) => break,
                }
            }
            Transfer {
                frames: got,
                bytes,
                elapsed: last - start,
            }
        });
        let mut sent = 0u64;
        while sent < frames {
            let batch = (frames - sent).min(u64::from(QUEUE_SIZE)) as u16;
            guest.send_slots(&mut tap, batch, frame.len() as u32);
            sent += u64::from(batch);
        }
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("the reader panicked"))
    })
}

fn host_to_guest(frames: u64) -> Result<Transfer> {
    let mut tap = test_tap("vpodbrx0");
    let host = PacketSocket::bind("vpodbrx0", true).context("packet socket")?;
    let mut guest = GuestNic::new(4096);
    let frame = tcp_frame(PACKET_HDR, PAYLOAD, true);
    let frame_len = (frame.len() - PACKET_HDR + DEVICE_HDR) as u64;
    let (mut got, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    while got < frames {
        let batch = (frames - got).min(RX_BATCH as u64);
        for _ in 0..batch {
            host.send(&frame).context("send into the tap")?;
        }
        let mut waited = Instant::now();
        let target = got + batch;
        while got < target {
            let (n, b) = guest.receive_counting(&mut tap);
            if n > 0 {
                // Only the test frames count (the kernel sends nothing else here).
                got += n;
                bytes += b - n * DEVICE_HDR as u64;
                waited = Instant::now();
            } else if waited.elapsed() > Duration::from_secs(2) {
                bail!("host to guest: {} of {frames} frames arrived", got);
            }
        }
    }
    let elapsed = start.elapsed();
    if bytes != got * (frame_len - DEVICE_HDR as u64) {
        bail!("host to guest: frames arrived cut or merged");
    }
    Ok(Transfer {
        frames: got,
        bytes,
        elapsed,
    })
}

pub fn net_host_path(root: &Path, runs: usize, frames: u64) -> Result<Vec<Row>> {
    let (mut tx_ms, mut rx_ms) = (Vec::new(), Vec::new());
    let (mut tx_bytes, mut rx_bytes) = (0u64, 0u64);
    // Interleaved, so drift on a shared machine hits both directions alike.
    for _ in 0..runs.max(1) {
        let (tx, rx) =
            in_new_netns(|| -> Result<_> { Ok((guest_to_host(frames)?, host_to_guest(frames)?)) })
                .context("cannot make a network namespace (run as root)")??;
        if tx.frames != frames {
            bail!("guest to host: {} of {frames} frames arrived", tx.frames);
        }
        tx_ms.push(tx.elapsed.as_secs_f64() * 1e3);
        rx_ms.push(rx.elapsed.as_secs_f64() * 1e3);
        tx_bytes = tx.bytes;
        rx_bytes = rx.bytes;
    }
    let config = format!("{frames}x64k-tso-frames");
    let row = |bench: &str, ms: &[f64], bytes: u64| {
        let row = Row::timing(bench, "vpod-vmm", &config, "native", ms);
        Row {
            mb_s: row.timing.map(|t| bytes as f64 / (t.p50 / 1e3) / 1e6),
            ..row
        }
    };
    let rows = vec![
        row("net_device_guest_to_host", &tx_ms, tx_bytes),
        row("net_device_host_to_guest", &rx_ms, rx_bytes),
    ];
    print!("{}", table(&rows));
    for r in &rows {
        if let (Some(mb_s), Some(t)) = (r.mb_s, r.timing) {
            println!(
                "{}: {:.1} Gbit/s, {:.0} frames/s (p50 of {} runs)",
                r.bench,
                mb_s * 8.0 / 1e3,
                frames as f64 / (t.p50 / 1e3),
                runs.max(1)
            );
        }
    }
    write_jsonl(&root.join("bench/results"), "net-host-path", &rows)?;
    Ok(rows)
}

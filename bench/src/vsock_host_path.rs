//! `vpod-bench vsock-host-path` (native, no KVM): the throughput of vpod-vmm's host-side
//! vsock device path, both ways: real unix sockets on the host side, the muxer and its
//! connection state machines, and a simulated guest driver feeding the muxer as the queue
//! handler would. The driver is the one the correctness test `vmm/tests/vsock_host_path.rs`
//! uses (`vmm/tests/vsock_guest/mod.rs`, included here), so both drive the device alike.
//! Rows go to `bench/results/vsock-host-path.jsonl`.

use anyhow::Result;
use std::path::Path;
use vpod_bench::report::{table, write_jsonl, Row};

use crate::pod::Scratch;

#[path = "../../vmm/tests/vsock_guest/mod.rs"]
mod vsock_guest;

pub fn vsock_host_path(root: &Path, runs: usize, mib: u64) -> Result<Vec<Row>> {
    let bytes = mib << 20;
    let scratch = Scratch::new("vsock-host-path")?;
    let (mut h2g, mut g2h) = (Vec::new(), Vec::new());
    // Interleaved, so drift on a shared machine hits both directions alike.
    for i in 0..runs.max(1) {
        let socket = scratch.dir.join(format!("v{i}.sock"));
        h2g.push(vsock_guest::host_to_guest(&socket, bytes).as_secs_f64() * 1e3);
        let socket = scratch.dir.join(format!("w{i}.sock"));
        g2h.push(vsock_guest::guest_to_host(&socket, bytes).as_secs_f64() * 1e3);
    }
    let config = format!("{mib}mib-64k-packets");
    let row = |bench: &str, ms: &[f64]| {
        let row = Row::timing(bench, "vpod-vmm", &config, "native", ms);
        Row {
            mb_s: row.timing.map(|t| bytes as f64 / (t.p50 / 1e3) / 1e6),
            ..row
        }
    };
    let rows = vec![
        row("vsock_device_host_to_guest", &h2g),
        row("vsock_device_guest_to_host", &g2h),
    ];
    print!("{}", table(&rows));
    write_jsonl(&root.join("bench/results"), "vsock-host-path", &rows)?;
    Ok(rows)
}

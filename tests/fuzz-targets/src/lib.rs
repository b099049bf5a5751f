//! The fuzz targets of vpod: one plain function per target, bytes in, that drives one
//! device or parser the way a hostile guest, image or peer would and panics only when that
//! code has a bug (a panic in it, or a broken invariant the target checks).
//!
//! Two callers share these functions:
//! - `fuzz/` (outside the workspace): the libFuzzer binaries, one line each, run with a
//!   nightly toolchain by `make fuzz` (`cargo fuzz run <target> fuzz/corpus/<target>`);
//! - `tests/replay.rs` (stable, in `make test`): every seed, every committed corpus and
//!   regression input, and a bounded number of mutations of them.
//!
//! Each target's seeds are made here ([`Target::seeds`]) and written to `fuzz/corpus/` by
//! `cargo run -p vpod-fuzz-targets --example write-seeds`.

pub mod agent;
pub mod block;
pub mod cri_log;
pub mod guest;
pub mod layer;
pub mod net;
pub mod oci;
pub mod virtio_mmio;
pub mod vsock;

/// One seed input: a file name (without the target) and its bytes.
pub type Seed = (&'static str, Vec<u8>);

/// A fuzz target: its name (the libFuzzer binary's and the corpus folder's), its body and
/// its seeds.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: fn() -> Vec<Seed>,
}

/// Every target, in the order `make fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "virtio_mmio",
        run: virtio_mmio::virtio_mmio,
        seeds: virtio_mmio::seeds,
    },
    Target {
        name: "block_request",
        run: block::block_request,
        seeds: block::seeds,
    },
    Target {
        name: "vsock_packet",
        run: vsock::vsock_packet,
        seeds: vsock::packet_seeds,
    },
    Target {
        name: "vsock_muxer",
        run: vsock::vsock_muxer,
        seeds: vsock::muxer_seeds,
    },
    Target {
        name: "vsock_connection",
        run: vsock::vsock_connection,
        seeds: vsock::connection_seeds,
    },
    Target {
        name: "net_frames",
        run: net::net_frames,
        seeds: net::seeds,
    },
    Target {
        name: "agent_request",
        run: agent::agent_request,
        seeds: agent::seeds,
    },
    Target {
        name: "layer_tar",
        run: layer::layer_tar,
        seeds: layer::seeds,
    },
    Target {
        name: "oci_documents",
        run: oci::oci_documents,
        seeds: oci::seeds,
    },
    Target {
        name: "cri_log",
        run: cri_log::cri_log,
        seeds: cri_log::seeds,
    },
];

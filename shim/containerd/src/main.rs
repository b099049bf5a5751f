//! containerd-shim-vpod-v2 (runtime type `io.containerd.vpod.v2`).

fn main() {}

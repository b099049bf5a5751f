//! containerd-shim-vpod-v2: containerd's shim v2 (runtime type `io.containerd.vpod.v2`,
//! task API v2 over ttrpc) in which every pod is a micro-VM. One shim process serves one
//! pod: the CRI plugin's containers of a pod are grouped by their sandbox id.

mod bundle;
mod cgroup;
mod network;
mod pod;
mod rootfs;
mod settings;
mod shim;
mod task;

const RUNTIME_ID: &str = "io.containerd.vpod.v2";

#[tokio::main]
async fn main() {
    let config = containerd_shim::Config {
        // The sandbox core waits for its own children (the VMM, virtiofsd); a reaper that
        // waits for every child would take their exit statuses.
        no_reaper: true,
        // Nor should orphans of theirs be reparented to a shim that never waits for them.
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::asynchronous::run::<shim::VpodShim>(RUNTIME_ID, Some(config)).await;
}

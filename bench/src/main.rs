//! `vpod-bench`: `startup` (native, stub guests), `balloon` (host memory after a guest frees
//! 256 MiB, with and without free page reporting; emulated KVM host here), `linux-boot` (real kernel; run inside the
//! emulated KVM host where this machine's KVM cannot boot Linux), `prepare` (native: the
//! fixtures of the container benchmarks), `pod-start`, `run-true`, `layer-read` and `vsock`
//! (pod VMs; inside the emulated KVM host here), `fs-read` (virtio-fs beside virtio-blk in
//! one VM; there too), `volume-io` (a pod's volume through its share beside the pod's own
//! disk and runc; there too), `cri` and `cri-memory` (pods through
//! `vpod-cri`, beside runc; there too), `containerd` (pods through containerd's CRI plugin
//! with the vpod runtime class, beside vpod-cri and runc, and the shim's memory; there
//! too), `cri-rpc` (native: the per-RPC cost of the CRI
//! socket's `:authority` normalisation), `conversion`, `vsock-host-path`, `vsock-queue`,
//! `net-host-path` and `cni` (native: the layer store's conversion against `tar -xf`, the
//! vsock device's host-side path, its queue handler alone, the virtio-net device through a
//! tap, a pod network's setup and teardown through vpod-network), `net-pods` (pods on a CNI
//! bridge beside runc in veth netns; inside the emulated KVM host here) and `check`
//! (targets).

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vpod_bench::measure::{resident_after_marker, timed_run};
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_bench::stats::median_u64;

mod balloon;
mod check;
mod cni;
mod cold_pull;
mod containerd;
mod conversion;
mod cri;
mod cri_check;
mod cri_memory;
mod cri_rpc;
mod fixtures;
mod fs_read;
mod guest_io;
mod net_host_path;
mod net_pods;
mod pod;
mod streaming;
/// The VMM's test-only guest queue (same crates), for the device benchmarks.
#[allow(dead_code)]
#[path = "../../vmm/src/devices/virtio/test_queue.rs"]
mod test_queue;
mod volume_io;
mod vsock_host_path;
mod vsock_queue;

const STUB_MARKER: &str = "vpod-stub: ready";
const LIMIT: Duration = Duration::from_secs(120);

/// vpod-bench: measures vpod beside its peers in one run; run from the checkout's top
/// directory (results go to bench/results/).
#[derive(Parser)]
#[command(
    name = "vpod-bench",
    arg_required_else_help = true,
    args_override_self = true
)]
struct CommandLine {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// VMM start-up and idle memory on the stub guests, beside QEMU microvm (native)
    Startup {
        /// Measured runs of each implementation
        #[arg(long, value_name = "N", default_value_t = 20)]
        runs: usize,
    },
    /// Linux boot to init and to exit, beside QEMU microvm (emulated KVM host here)
    LinuxBoot {
        /// Measured runs of each implementation
        #[arg(long, value_name = "N", default_value_t = 10)]
        runs: usize,
        #[command(flatten)]
        host: Host,
    },
    /// The fixtures of the container benchmarks (native, before them)
    Prepare,
    /// A container's start in a running pod, beside runc and crun
    PodStart {
        /// Measured runs of each implementation
        #[arg(long, value_name = "N", default_value_t = 10)]
        runs: usize,
        #[command(flatten)]
        host: Host,
    },
    /// `vpod run -- true` end to end, beside runc and crun
    RunTrue {
        /// Measured runs of each implementation
        #[arg(long, value_name = "N", default_value_t = 5)]
        runs: usize,
        #[command(flatten)]
        host: Host,
    },
    /// A sequential read from a layer disk, beside the host's read
    LayerRead {
        /// Measured runs of each implementation
        #[arg(long, value_name = "N", default_value_t = 3)]
        runs: usize,
        #[command(flatten)]
        host: Host,
    },
    /// A 256 MiB sequential read over virtio-fs (virtiofsd) beside the guest's own
    /// virtio-blk disk, in the same VM (emulated KVM host here)
    FsRead {
        /// Measured runs (one VM each)
        #[arg(long, value_name = "N", default_value_t = 3)]
        runs: usize,
        #[command(flatten)]
        host: Host,
    },
    /// Sequential write and read and small-file create/stat/unlink on a pod's volume
    /// (its virtio-fs share) beside the pod's own writable disk and runc on a host directory
    VolumeIo {
        /// Measured runs of each place
        #[arg(long, value_name = "N", default_value_t = 3)]
        runs: usize,
        /// Size of the file written and read
        #[arg(long, value_name = "MiB", default_value_t = 256)]
        mib: u64,
        /// Small files created, stat'ed and unlinked
        #[arg(long, value_name = "N", default_value_t = 10000)]
        files: u64,
        #[command(flatten)]
        host: Host,
    },
    /// vsock throughput through a pod VM, both ways
    Vsock {
        /// Measured runs of each implementation
        #[arg(long, value_name = "N", default_value_t = 3)]
        runs: usize,
        /// Bytes sent each way
        #[arg(long, value_name = "MiB", default_value_t = 64)]
        mib: u64,
        #[command(flatten)]
        host: Host,
    },
    /// Pods through vpod-cri (RunPodSandbox, pod to running), beside runc
    Cri {
        /// Measured runs of each implementation
        #[arg(long, value_name = "N", default_value_t = 10)]
        runs: usize,
        #[command(flatten)]
        host: Host,
    },
    /// Pods through containerd's CRI plugin with the runtime handler `vpod`
    /// (containerd-shim-vpod-v2), beside vpod-cri and containerd with runc, and the shim's
    /// own memory per pod beside runc's shim
    Containerd {
        /// Measured pods of each way, one at a time
        #[arg(long, value_name = "N", default_value_t = 5)]
        runs: usize,
        /// Pods of each runtime running at once while the shims' memory is read
        #[arg(long, value_name = "K", default_value_t = 3)]
        pods: usize,
        #[command(flatten)]
        host: Host,
    },
    /// TCP throughput and latency between pods on a CNI bridge, and RunPodSandbox with and
    /// without a network, beside runc containers in veth netns on the same bridge (root; in
    /// a network namespace of its own)
    NetPods {
        /// Measured runs of each transfer
        #[arg(long, value_name = "N", default_value_t = 3)]
        runs: usize,
        /// Bytes sent by each transfer
        #[arg(long, value_name = "MiB", default_value_t = 32)]
        mib: u64,
        /// Pods started for each RunPodSandbox figure
        #[arg(long, value_name = "N", default_value_t = 3)]
        pods: usize,
        #[command(flatten)]
        host: Host,
    },
    /// Host RSS of a VM idle, after its guest touched 256 MiB and 10 s after it freed
    /// them, with the balloon's free page reporting and without a balloon
    Balloon {
        /// Measured runs (one VM each) of each implementation
        #[arg(long, value_name = "N", default_value_t = 3)]
        runs: usize,
        #[command(flatten)]
        host: Host,
    },
    /// The host memory of idle pods through vpod-cri
    CriMemory {
        #[command(flatten)]
        host: Host,
    },
    /// The per-RPC cost of the CRI socket's `:authority` normalisation (native)
    CriRpc {
        /// Measured runs of each implementation
        #[arg(long, value_name = "N", default_value_t = 10)]
        runs: usize,
    },
    /// A cold pull from a local registry: vpod pull vs containerd's ctr image pull vs skopeo
    /// copy + umoci unpack, multi-layer and single-layer (native)
    ColdPull {
        /// Measured runs of each puller (after one warm-up)
        #[arg(long, value_name = "N", default_value_t = 5)]
        runs: usize,
        /// MiB of tar in each image
        #[arg(long, value_name = "MiB", default_value_t = 200)]
        mib: u64,
    },
    /// Layer conversion (tar to EROFS) throughput, beside tar extraction (native)
    Conversion {
        /// Measured runs of each implementation
        #[arg(long, value_name = "N", default_value_t = 3)]
        runs: usize,
        /// The layer's size
        #[arg(long, value_name = "MiB", default_value_t = 128)]
        mib: u64,
        /// Files in the small-files layer
        #[arg(long, value_name = "N", default_value_t = 50_000)]
        files: usize,
    },
    /// The vsock device's host path with a simulated guest driver, both ways (native)
    VsockHostPath {
        /// Measured runs
        #[arg(long, value_name = "N", default_value_t = 5)]
        runs: usize,
        /// Bytes sent each way
        #[arg(long, value_name = "MiB", default_value_t = 256)]
        mib: u64,
    },
    /// The vsock queue handler's throughput on plain memory (native; prints only)
    VsockQueue {
        /// Bytes moved each way
        #[arg(long, value_name = "MiB", default_value_t = 1600)]
        mib: u64,
    },
    /// The virtio-net device's path through a tap with 64 KiB TSO frames, both ways (native,
    /// root: it makes a network namespace)
    NetHostPath {
        /// Measured runs
        #[arg(long, value_name = "N", default_value_t = 5)]
        runs: usize,
        /// Frames sent each way
        #[arg(long, value_name = "N", default_value_t = 20_000)]
        frames: u64,
    },
    /// A pod network's setup and teardown through vpod-network with Debian's CNI plugins
    /// (native, root; inside a throwaway network namespace)
    Cni {
        /// Measured runs
        #[arg(long, value_name = "N", default_value_t = 20)]
        runs: usize,
    },
    /// Every target against bench/results/*.jsonl; fails when one is missed
    Check,
}

/// Where the guests ran, as the results label it.
#[derive(Args)]
struct Host {
    /// kvm: real KVM; emulated: inside the emulated KVM host (only ratios mean anything)
    #[arg(long, value_name = "HOST", default_value = "kvm", value_parser = ["kvm", "emulated"])]
    host: String,
}

fn main() -> Result<()> {
    let bench = CommandLine::parse().bench;
    let root = std::env::current_dir()?;
    match bench {
        Bench::Startup { runs } => startup(&root, runs),
        Bench::LinuxBoot { runs, host } => linux_boot(&root, runs, &host.host),
        Bench::Prepare => fixtures::prepare(&root),
        Bench::PodStart { runs, host } => pod::pod_start(&root, runs, &host.host).map(drop),
        Bench::RunTrue { runs, host } => pod::run_true(&root, runs, &host.host).map(drop),
        Bench::LayerRead { runs, host } => guest_io::layer_read(&root, runs, &host.host).map(drop),
        Bench::FsRead { runs, host } => fs_read::fs_read(&root, runs, &host.host).map(drop),
        Bench::VolumeIo {
            runs,
            mib,
            files,
            host,
        } => volume_io::volume_io(
            &root,
            &volume_io::VolumeIoBench {
                runs,
                mib,
                files,
                pod_mib: cri::CriBench::from_env(runs, &host.host)?.pod_mib,
                host: host.host,
            },
        )
        .map(drop),
        Bench::Vsock { runs, mib, host } => guest_io::vsock(&root, runs, mib, &host.host).map(drop),
        Bench::Cri { runs, host } => {
            cri::cri(&root, &cri::CriBench::from_env(runs, &host.host)?).map(drop)
        }
        Bench::Containerd { runs, pods, host } => containerd::containerd(
            &root,
            &containerd::ContainerdBench {
                runs,
                pods,
                pod_mib: cri::CriBench::from_env(runs, &host.host)?.pod_mib,
                host: host.host,
            },
        )
        .map(drop),
        Bench::NetPods {
            runs,
            mib,
            pods,
            host,
        } => net_pods::net_pods(
            &root,
            &net_pods::NetPodsBench {
                runs,
                mib,
                runp_pods: pods,
                pod_mib: cri::CriBench::from_env(runs, &host.host)?.pod_mib,
                host: host.host,
            },
        )
        .map(drop),
        Bench::CriMemory { host } => {
            cri_memory::idle_memory(&root, &cri::CriBench::from_env(0, &host.host)?).map(drop)
        }
        Bench::Balloon { runs, host } => balloon::balloon(&root, runs, &host.host).map(drop),
        Bench::CriRpc { runs } => cri_rpc::cri_rpc(&root, runs).map(drop),
        Bench::Cni { runs } => cni::cni(&root, runs).map(drop),
        Bench::Check => check::check(&results_dir(&root)),
        Bench::ColdPull { runs, mib } => cold_pull::cold_pull(&root, runs, mib).map(drop),
        Bench::Conversion { runs, mib, files } => {
            conversion::conversion(&root, runs, mib, files).map(drop)
        }
        Bench::VsockHostPath { runs, mib } => {
            vsock_host_path::vsock_host_path(&root, runs, mib).map(drop)
        }
        Bench::VsockQueue { mib } => vsock_queue::vsock_queue(mib),
        Bench::NetHostPath { runs, frames } => {
            net_host_path::net_host_path(&root, runs, frames).map(drop)
        }
    }
}

fn results_dir(root: &Path) -> PathBuf {
    root.join("bench/results")
}

/// Builds a peer's command line for a kernel and a memory size in MiB.
type CommandFor = Box<dyn Fn(&Path, u32) -> Command>;

/// One peer VMM: how to start it on a kernel, and the exit status that means "guest reset".
struct Peer {
    name: &'static str,
    command: CommandFor,
    reset_exit: i32,
}

fn kvm_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

fn peers(root: &Path) -> Result<Vec<Peer>> {
    let vmm = root.join("target/release/vpod-vmm");
    if !vmm.exists() {
        bail!("{} is missing: run `make` first", vmm.display());
    }
    let jail = JailedVmm::prepare(&vmm)?;
    let mut peers = vec![Peer {
        name: "vpod-vmm",
        command: Box::new(move |kernel, mem| {
            let mut c = Command::new(&vmm);
            c.arg("--kernel").arg(kernel).args([
                "--memory",
                &mem.to_string(),
                "--console",
                "stdio",
                // Unconfined, the floor before the jail: the jailed peer below pays for both.
                "--no-seccomp",
            ]);
            // vpod-vmm loads build/initrd.img when it exists under the working directory;
            // the stub needs none, and the peers load none.
            c.current_dir(std::env::temp_dir());
            c
        }),
        reset_exit: 0,
    }];
    peers.push(Peer {
        name: "vpod-vmm-jailed",
        command: Box::new(move |kernel, mem| jail.command(kernel, mem)),
        reset_exit: 0,
    });
    // QEMU microvm has no i8042; the stub's write to port 0xf4 ends it through
    // isa-debug-exit with status (0 << 1) | 1.
    let cpu = if kvm_is_pvm() {
        "host,-arch-capabilities"
    } else {
        "host"
    };
    peers.push(Peer {
        name: "qemu-microvm",
        command: Box::new(move |kernel, mem| {
            let mut c = Command::new("qemu-system-x86_64");
            c.args([
                "-M",
                "microvm",
                "-enable-kvm",
                "-cpu",
                cpu,
                "-m",
                &mem.to_string(),
            ])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
                "-serial",
                "stdio",
            ])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-kernel"])
            .arg(kernel);
            c
        }),
        reset_exit: 1,
    });
    if let Some(fc) = std::env::var_os("FIRECRACKER") {
        let fc = PathBuf::from(fc);
        let dir = std::env::temp_dir().join(format!("vpod-bench-fc-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        peers.push(Peer {
            name: "firecracker",
            command: Box::new(move |kernel, mem| {
                let config = dir.join(format!("config-{mem}.json"));
                let json = format!(
                    "{{\"boot-source\":{{\"kernel_image_path\":\"{}\",\"boot_args\":\"console=ttyS0\"}},\"drives\":[],\"machine-config\":{{\"vcpu_count\":1,\"mem_size_mib\":{mem}}}}}",
                    kernel.display()
                );
                let _ = std::fs::write(&config, json);
                let mut c = Command::new(&fc);
                c.arg("--no-api").arg("--config-file").arg(&config).args(["--level", "Error"]);
                c
            }),
            reset_exit: 0,
        });
    }
    Ok(peers)
}

/// vpod-vmm as a launcher starts it: `--config` with a jail (its own namespaces, a root
/// on an empty directory, an unprivileged uid) and the seccomp filters, joining a network
/// namespace made once beforehand, as a pod's VMM joins the pod's (which CNI made).
struct JailedVmm {
    vmm: PathBuf,
    dir: PathBuf,
    netns: PathBuf,
}

impl Drop for JailedVmm {
    fn drop(&mut self) {
        let _ = vpod_network::netns::remove(&self.netns);
    }
}

/// The benchmark's jailed VMM's user (no host account has it).
const BENCH_JAIL_UID: u32 = 2_000_000_001;

impl JailedVmm {
    fn prepare(vmm: &Path) -> Result<JailedVmm> {
        let dir = std::env::temp_dir().join(format!("vpod-bench-jail-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("jail"))?;
        let netns = dir.join("netns");
        vpod_network::netns::create(&netns).with_context(|| {
            format!("making the pod-like network namespace {}", netns.display())
        })?;
        Ok(JailedVmm {
            vmm: vmm.to_path_buf(),
            dir,
            netns,
        })
    }

    fn command(&self, kernel: &Path, mem: u32) -> Command {
        self.command_for(vpod_proto::vmm::VmConfig {
            memory_mib: u64::from(mem),
            ..vpod_proto::vmm::VmConfig::new(kernel)
        })
    }

    /// `config`, jailed (and filtered, the default).
    fn command_for(&self, config: vpod_proto::vmm::VmConfig) -> Command {
        let config = vpod_proto::vmm::VmConfig {
            jail: Some(vpod_proto::vmm::JailConfig {
                netns: Some(self.netns.clone()),
                ..vpod_proto::vmm::JailConfig::new(
                    self.dir.join("jail"),
                    BENCH_JAIL_UID,
                    BENCH_JAIL_UID,
                )
            }),
            ..config
        };
        let file = self
            .dir
            .join(format!("vmm-{}-{}.json", config.vcpus, config.memory_mib));
        // A failed write shows as the VMM's one-line error in the run.
        let _ = std::fs::write(&file, config.to_json());
        let mut c = Command::new(&self.vmm);
        c.arg("--config").arg(file);
        c
    }
}

fn startup(root: &Path, runs: usize) -> Result<()> {
    let stub = root.join("build/stub.elf");
    let idle = root.join("build/stub-idle.elf");
    for f in [&stub, &idle] {
        if !f.exists() {
            bail!("{} is missing: run `make` first", f.display());
        }
    }
    let peers = peers(root)?;
    let memory = 128u32;
    let mut marker: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
    let mut exit: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); peers.len()];
    // Interleaved: run i of every peer before run i + 1 of any.
    for _ in 0..runs {
        for (i, peer) in peers.iter().enumerate() {
            let run = timed_run(
                &mut (peer.command)(&stub, memory),
                Some(STUB_MARKER),
                peer.reset_exit,
                LIMIT,
            )
            .with_context(|| format!("{} on the stub", peer.name))?;
            marker[i].push(run.to_marker_ms.unwrap_or(f64::NAN));
            exit[i].push(run.to_exit_ms);
            rss[i].push(run.max_rss_kib);
        }
    }
    let mut overhead: Vec<Vec<u64>> = vec![Vec::new(); peers.len()];
    let mut idle_rss: Vec<Vec<u64>> = vec![Vec::new(); peers.len()];
    for _ in 0..5 {
        for (i, peer) in peers.iter().enumerate() {
            let r = resident_after_marker(
                &mut (peer.command)(&idle, memory),
                STUB_MARKER,
                u64::from(memory) * 1024,
                LIMIT,
            )
            .with_context(|| format!("{} on the idle stub", peer.name))?;
            overhead[i].push(r.overhead_kib());
            idle_rss[i].push(r.total_kib);
        }
    }
    let config = format!("1vcpu-{memory}m");
    let mut rows = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let row = |bench: &str, samples: &[f64], rss_kib, overhead_kib| Row {
            rss_kib,
            overhead_kib,
            ..Row::timing(bench, peer.name, &config, "kvm", samples)
        };
        rows.push(row("stub_to_marker", &marker[i], median_u64(&rss[i]), None));
        rows.push(row("stub_to_exit", &exit[i], median_u64(&rss[i]), None));
        rows.push(row(
            "idle_overhead",
            &[],
            median_u64(&idle_rss[i]),
            median_u64(&overhead[i]),
        ));
    }
    print!("{}", table(&rows));
    write_jsonl(&results_dir(root), "startup", &rows)?;
    Ok(())
}

/// The CLOCK_MONOTONIC time (ns) at which vpod-vmm saw init, from its `--timings` line.
fn parse_init_at_ns(stderr: &str) -> Option<u64> {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("vpod-vmm: timings"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("init_at_ns=")?.parse().ok())
}

fn linux_boot(root: &Path, runs: usize, host: &str) -> Result<()> {
    let vmm = root.join("target/release/vpod-vmm");
    let kernel = root.join("build/vmlinux");
    let initrd = root.join("build/initrd.img");
    for f in [&vmm, &kernel, &initrd] {
        if !f.exists() {
            bail!("{} is missing: run `make` first", f.display());
        }
    }
    let configs = [(1u32, 128u32), (2, 512)];
    let jail = JailedVmm::prepare(&vmm)?;
    let mut rows = Vec::new();
    for (vcpus, mem) in configs {
        let (mut ours_init, mut ours_exit, mut ours_rss) = (Vec::new(), Vec::new(), Vec::new());
        let (mut jailed_init, mut jailed_exit, mut jailed_rss) =
            (Vec::new(), Vec::new(), Vec::new());
        let (mut qemu_init, mut qemu_exit, mut qemu_rss) = (Vec::new(), Vec::new(), Vec::new());
        // QEMU sees both guest events in one run: the boot-timer byte (123, "{") to port
        // 0x3f0 comes out of an ISA debug console on its stdout, where the bench stamps it
        // as it stamps the stub's marker; the exit-status write to 0x3f1 ends it through
        // isa-debug-exit with (0 << 1) | 1. The guest's UART is there but discarded, as
        // vpod-vmm's `--console off` does.
        let qemu = || {
            let mut c = Command::new("qemu-system-x86_64");
            c.args(["-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host"])
                .args(["-smp", &vcpus.to_string(), "-m", &mem.to_string()])
                .args([
                    "-nodefaults",
                    "-no-user-config",
                    "-display",
                    "none",
                    "-no-reboot",
                    "-serial",
                    "null",
                ])
                .args(["-chardev", "stdio,id=boot-timer"])
                .args(["-device", "isa-debugcon,iobase=0x3f0,chardev=boot-timer"])
                .args(["-device", "isa-debug-exit,iobase=0x3f1,iosize=1"])
                .arg("-kernel")
                .arg(&kernel)
                .arg("-initrd")
                .arg(&initrd)
                .args(["-append", "console=ttyS0 quiet reboot=t panic=-1 -- true"]);
            c
        };
        for _ in 0..runs {
            let mut ours = Command::new(&vmm);
            ours.arg("--kernel")
                .arg(&kernel)
                .arg("--initrd")
                .arg(&initrd)
                .args([
                    "--vcpus",
                    &vcpus.to_string(),
                    "--memory",
                    &mem.to_string(),
                    "--console",
                    "off",
                    "--timings",
                    // Unconfined: the jailed run below pays for the jail and the filters.
                    "--no-seccomp",
                    "--",
                    "true",
                ]);
            // Both timed from the bench's spawn: vpod-vmm reports when init was reached on
            // CLOCK_MONOTONIC, QEMU's stdout carries the byte.
            let run = timed_run(&mut ours, None, 0, LIMIT).context("vpod-vmm booting Linux")?;
            let init_at =
                parse_init_at_ns(&run.stderr).context("vpod-vmm printed no init_at_ns timing")?;
            ours_init.push(init_at.saturating_sub(run.started_monotonic_ns) as f64 / 1e6);
            ours_exit.push(run.to_exit_ms);
            ours_rss.push(run.max_rss_kib);
            let mut jailed = jail.command_for(vpod_proto::vmm::VmConfig {
                initrd: Some(initrd.clone()),
                vcpus: vcpus as u8,
                memory_mib: u64::from(mem),
                console: vpod_proto::vmm::Console::Off,
                timings: true,
                init_args: vec!["true".into()],
                ..vpod_proto::vmm::VmConfig::new(&kernel)
            });
            let run = timed_run(&mut jailed, None, 0, LIMIT)
                .context("vpod-vmm, jailed, booting Linux")?;
            let init_at = parse_init_at_ns(&run.stderr)
                .context("the jailed vpod-vmm printed no init_at_ns timing")?;
            jailed_init.push(init_at.saturating_sub(run.started_monotonic_ns) as f64 / 1e6);
            jailed_exit.push(run.to_exit_ms);
            jailed_rss.push(run.max_rss_kib);
            let run = timed_run(&mut qemu(), Some("{"), 1, LIMIT).context("QEMU booting Linux")?;
            qemu_init.push(run.to_marker_ms.context("QEMU: no boot-timer byte")?);
            qemu_exit.push(run.to_exit_ms);
            qemu_rss.push(run.max_rss_kib);
        }
        let config = format!("{vcpus}vcpu-{mem}m");
        for (name, init, exit, rss) in [
            ("vpod-vmm", &ours_init, &ours_exit, &ours_rss),
            ("vpod-vmm-jailed", &jailed_init, &jailed_exit, &jailed_rss),
            ("qemu-microvm", &qemu_init, &qemu_exit, &qemu_rss),
        ] {
            for (bench, samples) in [("linux_boot_to_init", init), ("linux_start_to_exit", exit)] {
                rows.push(Row {
                    rss_kib: median_u64(rss),
                    ..Row::timing(bench, name, &config, host, samples)
                });
            }
        }
    }
    print!("{}", table(&rows));
    write_jsonl(&results_dir(root), "linux-boot", &rows)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(line: &str) -> Result<Bench, clap::Error> {
        CommandLine::try_parse_from(line.split_whitespace()).map(|c| c.bench)
    }

    #[test]
    fn command_line_is_consistent() {
        CommandLine::command().debug_assert();
    }

    #[test]
    fn the_makefiles_command_lines_parse() {
        assert!(matches!(
            parse("vpod-bench vsock --runs 3 --mib 64 --host emulated"),
            Ok(Bench::Vsock { runs: 3, mib: 64, host }) if host.host == "emulated"
        ));
        assert!(matches!(
            parse("vpod-bench cri-memory"),
            Ok(Bench::CriMemory { host }) if host.host == "kvm"
        ));
        assert!(matches!(
            parse("vpod-bench run-true"),
            Ok(Bench::RunTrue { runs: 5, .. })
        ));
        for line in [
            "vpod-bench startup --runs 20",
            "vpod-bench linux-boot --runs 10 --host kvm",
            "vpod-bench prepare",
            "vpod-bench pod-start --runs 10 --host emulated",
            "vpod-bench layer-read --runs 3 --host kvm",
            "vpod-bench cri --runs 10 --host kvm",
            "vpod-bench cri-rpc --runs 10",
            "vpod-bench net-pods --runs 3 --mib 32 --pods 3 --host emulated",
            "vpod-bench net-host-path --runs 5 --frames 20000",
            "vpod-bench check",
        ] {
            assert!(parse(line).is_ok(), "{line}");
        }
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for line in [
            "vpod-bench",
            "vpod-bench frob",
            "vpod-bench startup --runs many",
            "vpod-bench cri --host qemu",
            "vpod-bench check --runs 3",
        ] {
            let err = parse(line).err().unwrap_or_else(|| panic!("{line} parsed"));
            assert_eq!(err.exit_code(), 2, "{line}: {err}");
        }
    }
}

//! The vpod-vmm binary: parses the command line, runs one VM, exits with its code.

use std::process::ExitCode;

use anyhow::anyhow;
use vpod_vmm::config::parse_args;
use vpod_vmm::lifecycle::{
    mark_process_start, process_start_monotonic_ns, since_process_start, StopReason,
};
use vpod_vmm::{jail, run_vm, CliAction, EXIT_VMM_ERROR};

const HELP: &str = "\
vpod-vmm: run one KVM micro-VM

usage: vpod-vmm [--kernel PATH] [--initrd PATH] [--cmdline TEXT] [--vcpus N] [--memory MiB]
                [--disk PATH[,ro][,serial=ID]]... [--disk-slots N] [--vsock PATH[,cid=N]]
                [--net tap=NAME[,mac=MAC]]... [--fs socket=PATH,tag=TAG[,queue_size=N]]...
                [--balloon[=no-reporting]] [--ksm] [--private-boot-files] [--api PATH]
                [--no-seccomp]
                [--console stdio|off|file:PATH] [--timings] [-- COMMAND ARGS...]
       vpod-vmm --config FILE

  --kernel PATH      ELF vmlinux (PVH note or not) or bzImage [build/vmlinux]
  --initrd PATH      initramfs [build/initrd.img, if it exists]
  --cmdline TEXT     base kernel command line (replaces the default; virtio devices and
                     the guest command are still appended)
  --vcpus N          vCPUs, 1 to 32 [1]
  --memory MiB       guest memory, 16 to 1048576 MiB [128]
  --disk SPEC        virtio-blk disk on a raw file; ro = read-only, serial = ID the guest
                     sees in /sys/block/vdX/serial (at most 20 bytes); repeatable
  --disk-slots N     N empty virtio-blk devices (0 to 16) after the disks, filled and
                     emptied at runtime through the control socket
  --vsock PATH       virtio-vsock; host clients connect to the unix socket PATH and send
                     `CONNECT <port>\\n`; guest connections to host port P reach PATH_P;
                     cid=N sets the guest's CID [3]
  --net SPEC         virtio-net NIC on the tap NAME (opened, or created with CAP_NET_ADMIN,
                     in the VMM's network namespace); mac = the guest's MAC,
                     xx:xx:xx:xx:xx:xx [a random locally administered one]; repeatable
  --fs SPEC          virtio-fs share served by a vhost-user backend (virtiofsd) listening on
                     the unix socket PATH; the guest mounts it with `mount -t virtiofs TAG
                     DIR`; TAG is 1 to 36 bytes; queue_size a power of two, 2 to 1024
                     [256]; up to 4; with any, guest memory is a shared memfd
  --balloon          virtio-balloon: free page reporting (the guest's free memory goes back
                     to the host), guest memory stats, inflate/deflate to a target set
                     through the control socket, deflate on OOM; =no-reporting leaves
                     free page reporting off
  --ksm              offer guest memory to KSM (madvise MADV_MERGEABLE): the host's ksmd,
                     once running (/sys/kernel/mm/ksm/run), merges identical pages across
                     such VMs; a timing side channel between them, so for mutually trusted
                     tenants only; not with --fs (shared guest memory)
  --private-boot-files
                     keep the guest's copies of its kernel code and initrd; by default, 5 s
                     after the start, the VMM pauses the guest and maps the kernel file
                     copy-on-write over each .text page the guest left unchanged, and
                     (without --fs) the initrd over guest pages holding its pages, so VMs
                     of the same files share them (a flush+reload timing channel on those
                     pages between the VMs, as between host processes sharing a library)
  --api PATH         control socket: newline-delimited JSON (state, boot_time, metrics,
                     attach_disk, detach_disk, balloon, set_balloon, stop)
  --no-seccomp       leave the seccomp filters off (development only: by default every
                     thread runs under an allow-list of the system calls it needs, and a
                     call outside it kills the VMM with SIGSYS)
  --console WHERE    serial console: stdio, off or file:PATH [stdio]
  --timings          print `vpod-vmm: timings init_ms=.. exit_ms=.. init_at_ns=..` on stderr at exit
  -- COMMAND ARGS    passed to the guest's init as its arguments
  --config FILE      the whole configuration as JSON (vpod_proto::vmm::VmConfig), instead of
                     the flags above; a disk may be {\"fd\": N}, a descriptor the VMM inherited,
                     and so may a nic ({\"fd\": N}, a tap opened with IFF_VNET_HDR)

guest ports: 0x3f0 <- 123 marks init reached; 0x3f1 <- the command's exit status.

exit codes:
  0-255    the status the guest reported on port 0x3f1
  0        guest reset / reboot / power-off without a reported status
  120      guest kernel panic
  125      VMM error (bad flag, no KVM, missing or invalid kernel/initrd/disk, bad memory
           size, ...), with one line on stderr naming the cause
  130/143  stopped by SIGINT / SIGTERM (143 also for a stop through the control socket)
";

fn format_ms(duration: std::time::Duration) -> String {
    format!("{:.3}", duration.as_secs_f64() * 1000.0)
}

fn run() -> anyhow::Result<i32> {
    let config = match parse_args(std::env::args_os().skip(1))? {
        CliAction::Help => {
            print!("{HELP}");
            return Ok(0);
        }
        CliAction::Version => {
            println!("vpod-vmm {}", env!("CARGO_PKG_VERSION"));
            return Ok(0);
        }
        CliAction::Run(config) => config,
    };
    let mut config = config;
    if let Some(cgroup) = &config.cgroup {
        jail::join_cgroup(cgroup)?;
    }
    if let Some(jail) = config.jail.clone() {
        if let jail::Role::Keeper(end) = jail::enter(&jail, &mut config)? {
            return Ok(end.finish());
        }
    }
    let outcome = run_vm(&config)?;
    if config.timings {
        let init = outcome
            .init_reached
            .map_or_else(|| "-".to_string(), format_ms);
        // The same moment on CLOCK_MONOTONIC, so that whoever started this process can time
        // it from its own clock reading, exec and dynamic loading included.
        let init_at = outcome.init_reached.map_or_else(
            || "-".to_string(),
            |at| (process_start_monotonic_ns() + at.as_nanos() as u64).to_string(),
        );
        eprintln!(
            "vpod-vmm: timings init_ms={init} exit_ms={} init_at_ns={init_at}",
            format_ms(since_process_start())
        );
    }
    if let StopReason::VcpuFailed(why) = &outcome.reason {
        return Err(anyhow!("{why}"));
    }
    Ok(outcome.exit_code())
}

/// One malloc arena for every thread. glibc gives other threads arenas of their own, and
/// the first time such an arena shrinks it reads `/proc/sys/vm/overcommit_memory` (an
/// `openat`), which a filtered vCPU thread may not make: a vCPU freeing a virtio-net
/// device's buffers at a guest reset was killed by its filter for it. The main arena
/// shrinks with `brk`, which every filter allows; with so few threads one arena costs no
/// contention, and it keeps the VMM's own memory small.
#[cfg(target_env = "gnu")]
fn single_malloc_arena() {
    // SAFETY: mallopt takes two integers and only tunes malloc; called first in main, before
    // any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

fn main() -> ExitCode {
    #[cfg(target_env = "gnu")]
    single_malloc_arena();
    mark_process_start();
    let code = match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("vpod-vmm: error: {error:#}");
            EXIT_VMM_ERROR
        }
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

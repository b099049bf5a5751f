//! Host memory per idle pod, through `vpod-cri`: pods (each with one sleeping container)
//! are started up to each count of `--memory-pods`, left idle, then measured.
//!
//! A pod's host memory is its `vpod-vmm` process: guest RAM is an anonymous mapping of that
//! process, committed only where the guest touched it, so the process's resident set holds
//! the guest memory actually used plus the VMM's own. Per pod, from `/proc/PID/smaps`:
//! resident (Rss) and proportional (Pss) totals, the guest-RAM mapping's resident part and
//! how much of it is transparent huge pages, and the rest (the VMM itself). Beside it, the
//! guest's own view (`/proc/meminfo` through ExecSync in a few pods: what the guest kernel
//! uses, its page cache, its shared memory), the drop of the host's MemAvailable per pod
//! (everything a pod costs the host, page cache and kernel included), and the daemon.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_bench::stats::median_u64;
use vpod_proto::cri::ExecSyncRequest;

use crate::cri::{
    connect, pull_default, remove_pod, start_pods_with, Clients, CriBench, Daemon, Scratch,
    StartedPod, VolumesMode,
};
use vpod_proto::cri::Mount;

/// How long pods sit idle before they are measured.
const SETTLE: Duration = Duration::from_secs(10);
/// Pods started at once while filling up to a count: few, since idle figures do not depend
/// on it and many boots at once slow each other down (badly so in the emulated host).
const BATCH: usize = 2;
/// Pods whose guest /proc/meminfo is read.
const GUEST_SAMPLES: usize = 3;

/// One VMM process's memory, KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct VmmMemory {
    pub rss: u64,
    pub pss: u64,
    /// Resident in the guest RAM's span: the mappings that together make it up (one, or
    /// three where the kernel's code is mapped from its file in the middle).
    pub guest_rss: u64,
    pub guest_huge: u64,
}

/// One mapping of `/proc/PID/smaps`: its range and sizes in KiB.
#[derive(Debug, Clone, Copy, Default)]
struct Vma {
    start: u64,
    end: u64,
    rss: u64,
    pss: u64,
    huge: u64,
}

fn parse_vmas(text: &str) -> Vec<Vma> {
    let mut vmas: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            {
                vmas.push(Vma {
                    start,
                    end,
                    ..Vma::default()
                });
                continue;
            }
        }
        let (Some(vma), Some(Ok(kib))) = (vmas.last_mut(), words.next().map(str::parse::<u64>))
        else {
            continue;
        };
        match first {
            "Rss:" => vma.rss = kib,
            "Pss:" => vma.pss = kib,
            "AnonHugePages:" => vma.huge = kib,
            _ => {}
        }
    }
    vmas
}

/// Parses `/proc/PID/smaps`; guest RAM is the run of back-to-back mappings that starts on
/// a 2 MiB boundary and spans exactly `guest_kib`.
pub fn parse_vmm_smaps(text: &str, guest_kib: u64) -> VmmMemory {
    let vmas = parse_vmas(text);
    let mut m = VmmMemory {
        rss: vmas.iter().map(|v| v.rss).sum(),
        pss: vmas.iter().map(|v| v.pss).sum(),
        ..VmmMemory::default()
    };
    let span = guest_kib * 1024;
    for (i, first) in vmas.iter().enumerate() {
        if first.start % (2 << 20) != 0 {
            continue;
        }
        let mut end = first.start;
        let mut run = Vec::new();
        for vma in &vmas[i..] {
            if vma.start != end || vma.end - first.start > span {
                break;
            }
            end = vma.end;
            run.push(vma);
        }
        if end - first.start == span {
            m.guest_rss = run.iter().map(|v| v.rss).sum();
            m.guest_huge = run.iter().map(|v| v.huge).sum();
            break;
        }
    }
    m
}

/// A `/proc/meminfo` field, KiB.
pub fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// The host kernel's own memory, KiB: slab, kernel stacks, page tables (the processes' and
/// KVM's for its guests) and per-CPU areas.
fn host_kernel_kib() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    Ok([
        "Slab",
        "KernelStack",
        "PageTables",
        "SecPageTables",
        "Percpu",
    ]
    .iter()
    .filter_map(|key| meminfo_field(&text, key))
    .sum())
}

fn host_available_kib() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    meminfo_field(&text, "MemAvailable").context("no MemAvailable in /proc/meminfo")
}

fn process_rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    meminfo_field(&text, "VmRSS").unwrap_or(0)
}

/// A process's proportional set size, KiB (0 once it is gone).
fn process_pss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    meminfo_field(&text, "Pss").unwrap_or(0)
}

/// The bytes the files under `dir` take up (allocated blocks, not lengths: the pods' disks
/// are sparse), KiB; links are not followed and what cannot be read counts nothing.
pub fn allocated_kib(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => allocated_kib(&entry.path()),
            Ok(meta) if meta.is_file() => meta.blocks() / 2,
            _ => 0,
        })
        .sum()
}

/// The host before the pods: before the daemon started, and once it runs with the image
/// pulled (what each further pod is measured from).
#[derive(Debug, Clone, Copy)]
struct Baseline {
    available_before: u64,
    available_ready: u64,
    files_ready: u64,
    kernel_ready: u64,
}

/// The guest's /proc/meminfo, read in the pod's container.
async fn guest_meminfo(clients: &mut Clients, pod: &StartedPod) -> Result<String> {
    let out = clients
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: pod.container.clone(),
            cmd: vec!["cat".into(), "/proc/meminfo".into()],
            timeout: 60,
        })
        .await
        .context("ExecSync cat /proc/meminfo")?
        .into_inner();
    if out.exit_code != 0 {
        bail!("cat /proc/meminfo in the guest exited {}", out.exit_code);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn mem_row(bench: &str, config: &str, host: &str, kib: Option<u64>) -> Row {
    Row {
        bench: bench.into(),
        implementation: "vpod".into(),
        config: config.into(),
        host: host.into(),
        timing: None,
        rss_kib: kib,
        overhead_kib: None,
        mb_s: None,
    }
}

/// Measures the running `pods`: the rows of this pod count.
async fn measure(
    clients: &mut Clients,
    daemon: &Daemon,
    pods: &[StartedPod],
    bench: &CriBench,
    volumes: VolumesMode,
    scratch: &Path,
    baseline: Baseline,
) -> Result<Vec<Row>> {
    let guest_kib = bench.pod_mib * 1024;
    let mut per_pod = Vec::new();
    for pod in pods {
        let pids = daemon.vmm_pids(&pod.pod);
        let [pid] = pids[..] else {
            bail!("pod {} has {} VMM processes, not one", pod.pod, pids.len());
        };
        // The jailed VMM holds the guest's memory; its keeper is counted in the table of
        // host processes.
        let pid = vpod_sandbox::vmm::jailed_vmm_of(pid).unwrap_or(pid);
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
            .with_context(|| format!("reading /proc/{pid}/smaps"))?;
        per_pod.push(parse_vmm_smaps(&smaps, guest_kib));
    }
    let mut guest: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for pod in pods.iter().take(GUEST_SAMPLES) {
        let text = guest_meminfo(clients, pod).await?;
        let field = |k| meminfo_field(&text, k).unwrap_or(0);
        guest.entry("total").or_default().push(field("MemTotal"));
        guest
            .entry("used")
            .or_default()
            .push(field("MemTotal").saturating_sub(field("MemFree")));
        guest.entry("cached").or_default().push(field("Cached"));
        guest.entry("shmem").or_default().push(field("Shmem"));
        guest.entry("anon").or_default().push(field("AnonPages"));
        guest.entry("slab").or_default().push(field("Slab"));
    }
    let n = pods.len();
    let available_now = host_available_kib()?;
    let available_drop = baseline.available_before.saturating_sub(available_now) / n as u64;
    let marginal = baseline.available_ready.saturating_sub(available_now) / n as u64;
    let files = allocated_kib(scratch).saturating_sub(baseline.files_ready) / n as u64;
    let kernel = host_kernel_kib()?.saturating_sub(baseline.kernel_ready) / n as u64;
    // The default's rows keep the name they had before the share.
    let config = match volumes {
        VolumesMode::On => format!("{n}pods-{}m", bench.pod_mib),
        other => format!("{n}pods-{}m-volumes-{}", bench.pod_mib, other.name()),
    };
    let virtiofsd_pids = daemon.virtiofsd_pids();
    let virtiofsd: Vec<u64> = virtiofsd_pids.iter().map(|&p| process_rss_kib(p)).collect();
    let virtiofsd_pss: u64 = virtiofsd_pids.iter().map(|&p| process_pss_kib(p)).sum();
    let host = bench.host.as_str();
    let med = |f: fn(&VmmMemory) -> u64| median_u64(&per_pod.iter().map(f).collect::<Vec<_>>());
    let g = |k: &str| guest.get(k).and_then(|v| median_u64(v));
    let mut rows = vec![
        Row {
            overhead_kib: med(|m| m.rss - m.guest_rss),
            ..mem_row("cri_idle_pod_memory", &config, host, med(|m| m.rss))
        },
        mem_row("cri_idle_pod_pss", &config, host, med(|m| m.pss)),
        mem_row(
            "cri_idle_pod_guest_ram_rss",
            &config,
            host,
            med(|m| m.guest_rss),
        ),
        mem_row(
            "cri_idle_pod_guest_ram_thp",
            &config,
            host,
            med(|m| m.guest_huge),
        ),
        mem_row(
            "cri_idle_pod_host_available_drop",
            &config,
            host,
            Some(available_drop),
        ),
        // What one more pod costs the host: the drop from the daemon running with the image
        // pulled, so without the daemon's and the image's fixed costs spread over the pods.
        mem_row("cri_idle_pod_host_marginal", &config, host, Some(marginal)),
        // Of that, the pod's files (its sparse writable disk, console and logs), which the
        // emulated host keeps in its tmpfs and a node on its disk.
        mem_row("cri_idle_pod_files", &config, host, Some(files)),
        // And the host kernel's own part: slab, stacks, page tables, per-CPU areas.
        mem_row("cri_idle_pod_host_kernel", &config, host, Some(kernel)),
        // Every virtiofsd process (its sandbox's parent and server), per pod.
        mem_row(
            "cri_idle_pod_virtiofsd_rss",
            &config,
            host,
            Some(virtiofsd.iter().sum::<u64>() / n as u64),
        ),
        mem_row(
            "cri_idle_pod_virtiofsd_pss",
            &config,
            host,
            Some(virtiofsd_pss / n as u64),
        ),
        mem_row(
            "cri_daemon_rss",
            &config,
            host,
            Some(process_rss_kib(daemon.pid())),
        ),
    ];
    for (key, bench_name) in [
        ("total", "cri_idle_guest_memtotal"),
        ("used", "cri_idle_guest_used"),
        ("cached", "cri_idle_guest_cached"),
        ("shmem", "cri_idle_guest_shmem"),
        ("anon", "cri_idle_guest_anon"),
        ("slab", "cri_idle_guest_slab"),
    ] {
        rows.push(mem_row(bench_name, &config, host, g(key)));
    }
    eprintln!(
        "cri: {n} idle pods, volumes {}: VMM rss min/median/max {:?}/{:?}/{:?} KiB",
        volumes.name(),
        per_pod.iter().map(|m| m.rss).min(),
        med(|m| m.rss),
        per_pod.iter().map(|m| m.rss).max()
    );
    Ok(rows)
}

/// Idle memory under each of the bench's share settings, one daemon after another.
pub fn idle_memory(repo: &Path, bench: &CriBench) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &volumes in &bench.memory_volumes {
        rows.extend(idle_memory_with(repo, bench, volumes)?);
    }
    print!("{}", table(&rows));
    // The default alone is `cri`'s memory part; a comparison of share settings has its own.
    let name = if bench.memory_volumes == [VolumesMode::On] {
        "cri-memory"
    } else if bench.memory_volumes.contains(&VolumesMode::Ksm) {
        "cri-memory-ksm"
    } else if bench.memory_volumes.contains(&VolumesMode::BusyboxInitrd) {
        "cri-memory-initrd"
    } else if bench
        .memory_volumes
        .contains(&VolumesMode::PrivateBootFilesOff)
    {
        "cri-memory-boot-files-off"
    } else if bench
        .memory_volumes
        .contains(&VolumesMode::PrivateBootFiles)
    {
        "cri-memory-boot-files"
    } else if bench
        .memory_volumes
        .contains(&VolumesMode::KernelReportingOrder)
    {
        "cri-memory-reporting-order"
    } else {
        "cri-memory-volumes"
    };
    write_jsonl(&repo.join("bench/results"), name, &rows)?;
    Ok(rows)
}

fn idle_memory_with(repo: &Path, bench: &CriBench, volumes: VolumesMode) -> Result<Vec<Row>> {
    let scratch = Scratch::new("cri-memory")?;
    let logs = scratch.dir.join("logs");
    let volume = scratch.dir.join("volume");
    std::fs::create_dir(&volume)?;
    std::fs::write(volume.join("data"), "an idle pod's volume\n")?;
    let mounts = match volumes {
        VolumesMode::Mounted => vec![Mount {
            container_path: "/volume".into(),
            host_path: volume.display().to_string(),
            ..Default::default()
        }],
        _ => Vec::new(),
    };
    let available_before = host_available_kib()?;
    let pod_keys = match volumes {
        VolumesMode::Ksm => "volumes = false\nksm = true\n".to_owned(),
        VolumesMode::PrivateBootFiles => "volumes = true\nshare_boot_files = false\n".to_owned(),
        VolumesMode::PrivateBootFilesOff => {
            "volumes = false\nshare_boot_files = false\n".to_owned()
        }
        VolumesMode::KernelReportingOrder => {
            "volumes = true\nkernel_params = [\"page_reporting.page_reporting_order=10\"]\n"
                .to_owned()
        }
        _ => format!("volumes = {}\n", volumes != VolumesMode::Off),
    };
    let ksmd = match volumes {
        VolumesMode::Ksm => Some(Ksmd::start()?),
        _ => None,
    };
    let top = match volumes {
        VolumesMode::BusyboxInitrd => {
            format!("initrd = \"{}\"\n", repo.join("build/initrd.img").display())
        }
        _ => String::new(),
    };
    let daemon = Daemon::start_full(repo, &scratch.dir, bench.pod_mib, 64, &top, &pod_keys)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let mut clients = connect(&daemon.socket).await?;
        let image = pull_default(&mut clients, repo).await?;
        let baseline = Baseline {
            available_before,
            available_ready: host_available_kib()?,
            files_ready: allocated_kib(&scratch.dir),
            kernel_ready: host_kernel_kib()?,
        };
        let mut pods: Vec<StartedPod> = Vec::new();
        let mut rows = Vec::new();
        for &target in &bench.memory_pods {
            while pods.len() < target {
                // Stop before the host runs out: the next batch must fit in what is left
                // at the per-pod cost seen so far, with a quarter to spare.
                if !pods.is_empty() {
                    let used = available_before.saturating_sub(host_available_kib()?);
                    let per_pod = used / pods.len() as u64;
                    let want = per_pod * (target - pods.len()) as u64 * 5 / 4;
                    if want > host_available_kib()? {
                        bail!(
                            "{target} pods do not fit: {} pods cost {} MiB each and {} MiB are left",
                            pods.len(),
                            per_pod / 1024,
                            host_available_kib()? / 1024
                        );
                    }
                }
                let count = BATCH.min(target - pods.len());
                let names = (pods.len()..pods.len() + count)
                    .map(|i| format!("idle-{i}"))
                    .collect();
                pods.extend(start_pods_with(&clients, names, &image, &logs, &mounts).await?);
                eprintln!("cri: {} pods running", pods.len());
            }
            tokio::time::sleep(SETTLE).await;
            if let Some(ksmd) = &ksmd {
                ksmd.wait_for_full_scans(2, KSM_SCAN_LIMIT).await?;
            }
            rows.extend(
                measure(
                    &mut clients,
                    &daemon,
                    &pods,
                    bench,
                    volumes,
                    &scratch.dir,
                    baseline,
                )
                .await?,
            );
        }
        for pod in &pods {
            remove_pod(&mut clients, &pod.pod).await?;
        }
        Ok::<_, anyhow::Error>(rows)
    });
    result.with_context(|| format!("vpod-cri's log ends:\n{}", daemon.log_tail()))
}

/// How long the ksm measure waits for ksmd to go over every mergeable page twice.
const KSM_SCAN_LIMIT: Duration = Duration::from_secs(300);

/// The host's ksmd, started for a measure (scanning fast), its settings put back on drop.
struct Ksmd {
    saved: Vec<(&'static str, String)>,
}

const KSM_DIR: &str = "/sys/kernel/mm/ksm";

impl Ksmd {
    fn start() -> Result<Ksmd> {
        let read = |name: &str| {
            std::fs::read_to_string(format!("{KSM_DIR}/{name}"))
                .map(|v| v.trim().to_owned())
                .with_context(|| format!("reading {KSM_DIR}/{name} (a kernel without KSM?)"))
        };
        let settings = [
            ("pages_to_scan", "20000"),
            ("sleep_millisecs", "20"),
            ("run", "1"),
        ];
        let mut saved = Vec::new();
        for (name, _) in settings {
            saved.push((name, read(name)?));
        }
        let ksmd = Ksmd { saved };
        for (name, value) in settings {
            std::fs::write(format!("{KSM_DIR}/{name}"), value)
                .with_context(|| format!("writing {value} to {KSM_DIR}/{name}"))?;
        }
        Ok(ksmd)
    }

    fn full_scans() -> Result<u64> {
        let text = std::fs::read_to_string(format!("{KSM_DIR}/full_scans"))?;
        Ok(text.trim().parse()?)
    }

    /// Waits until ksmd has gone over all mergeable memory `scans` more times.
    async fn wait_for_full_scans(&self, scans: u64, limit: Duration) -> Result<()> {
        let start = Ksmd::full_scans()?;
        let deadline = std::time::Instant::now() + limit;
        while Ksmd::full_scans()? < start + scans {
            if std::time::Instant::now() > deadline {
                bail!("ksmd did not finish {scans} full scans in {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let shared = std::fs::read_to_string(format!("{KSM_DIR}/pages_sharing"))?;
        eprintln!("cri: ksmd: {} pages sharing", shared.trim());
        Ok(())
    }
}

impl Drop for Ksmd {
    fn drop(&mut self) {
        // `run` back first (0 stops ksmd; merged pages stay merged until written).
        for (name, value) in self.saved.iter().rev() {
            let _ = std::fs::write(format!("{KSM_DIR}/{name}"), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocated_counts_blocks_not_lengths() {
        let dir = Scratch::new("allocated").unwrap();
        std::fs::create_dir(dir.dir.join("pod")).unwrap();
        let sparse = std::fs::File::create(dir.dir.join("pod/disk.img")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        std::fs::write(dir.dir.join("log"), vec![1u8; 64 << 10]).unwrap();
        let kib = allocated_kib(&dir.dir);
        assert!((64..64 + 64).contains(&kib), "{kib} KiB");
        assert_eq!(allocated_kib(&dir.dir.join("missing")), 0);
    }

    #[test]
    fn smaps_split_guest_ram_from_the_vmm() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1 /usr/bin/vpod-vmm
Size:               1024 kB
Rss:                 800 kB
Pss:                 400 kB
AnonHugePages:         0 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:               40960 kB
Pss:               40960 kB
AnonHugePages:     36864 kB
";
        let m = parse_vmm_smaps(smaps, 131072);
        assert_eq!(
            (m.rss, m.pss, m.guest_rss, m.guest_huge),
            (41760, 41360, 40960, 36864)
        );
        // Guest RAM in three pieces, the kernel's code mapped from its file in the middle.
        let split = "\
7f0000000000-7f0001000000 rw-s 00000000 00:01 7 /memfd:vpod-guest-ram (deleted)
Size:              16384 kB
Rss:                1000 kB
Pss:                1000 kB
AnonHugePages:         0 kB
7f0001000000-7f0001800000 rw-p 00200000 fe:00 9 /var/lib/vpod/vmlinux
Size:               8192 kB
Rss:                3000 kB
Pss:                 500 kB
AnonHugePages:         0 kB
7f0001800000-7f0008000000 rw-s 01800000 00:01 7 /memfd:vpod-guest-ram (deleted)
Size:             106496 kB
Rss:               20000 kB
Pss:               20000 kB
AnonHugePages:         0 kB
7f0008000000-7f0008021000 rw-p 00000000 00:00 0
Size:                132 kB
Rss:                  64 kB
Pss:                  64 kB
AnonHugePages:         0 kB
";
        let m = parse_vmm_smaps(split, 131072);
        assert_eq!(
            (m.rss, m.pss, m.guest_rss, m.guest_huge),
            (24064, 21564, 24000, 0)
        );
        assert_eq!(
            meminfo_field("MemTotal:  120000 kB\nMemFree: 5 kB\n", "MemFree"),
            Some(5)
        );
        assert_eq!(meminfo_field("MemTotal:  1 kB\n", "Mem"), None);
    }
}

//! `vpod-bench check`: reads `bench/results/*.jsonl` and reports every target as met or
//! missed (failing when one is missed), plus figures without a target as `info`.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// The files `make bench` writes; each must be there.
const FILES: [&str; 10] = [
    "startup",
    "linux-boot",
    "container-start",
    "run-true",
    "layer-read",
    "vsock",
    "vsock-host-path",
    "net-host-path",
    "conversion",
    "cold-pull",
];

/// A line of the JSONL files, read back with just enough parsing for the targets.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[start..];
    let end = rest.find([',', '}'])?;
    Some(rest[..end].trim_matches('"').to_string())
}

struct Results {
    lines: Vec<String>,
}

impl Results {
    fn get(&self, bench: &str, imp: &str, config: &str, key: &str) -> Option<f64> {
        self.lines
            .iter()
            .find(|l| {
                field(l, "bench").as_deref() == Some(bench)
                    && field(l, "impl").as_deref() == Some(imp)
                    && field(l, "config").as_deref() == Some(config)
            })
            .and_then(|l| field(l, key)?.parse().ok())
    }

    /// The host label of the first row of `bench`.
    fn host(&self, bench: &str) -> String {
        self.lines
            .iter()
            .find(|l| field(l, "bench").as_deref() == Some(bench))
            .and_then(|l| field(l, "host"))
            .unwrap_or_else(|| "?".into())
    }

    /// The config of the first row of `bench` by `imp`.
    fn config(&self, bench: &str, imp: &str) -> Option<String> {
        self.lines
            .iter()
            .find(|l| {
                field(l, "bench").as_deref() == Some(bench)
                    && field(l, "impl").as_deref() == Some(imp)
            })
            .and_then(|l| field(l, "config"))
    }

    /// Every config with a row of `bench` and `imp`, in file order, each once.
    fn configs(&self, bench: &str, imp: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for line in &self.lines {
            if field(line, "bench").as_deref() == Some(bench)
                && field(line, "impl").as_deref() == Some(imp)
            {
                if let Some(config) = field(line, "config") {
                    if !out.contains(&config) {
                        out.push(config);
                    }
                }
            }
        }
        out
    }
}

#[derive(Default)]
struct Verdicts {
    missed: usize,
}

impl Verdicts {
    /// Met when `value <= limit` (or `>=` when `at_least`).
    fn target(&mut self, what: &str, value: Option<f64>, limit: f64, at_least: bool, unit: &str) {
        let Some(v) = value else {
            println!("n/a    {what}: no measurement");
            return;
        };
        let ok = if at_least { v >= limit } else { v <= limit };
        self.missed += usize::from(!ok);
        println!(
            "{} {what}: {v:.3}{unit} (target {} {limit:.3}{unit})",
            if ok { "MET   " } else { "MISSED" },
            if at_least { ">=" } else { "<=" }
        );
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    a.zip(b).map(|(a, b)| a / b)
}

pub fn check(dir: &Path) -> Result<()> {
    let mut lines = Vec::new();
    for name in FILES {
        let path = dir.join(format!("{name}.jsonl"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{} is missing: run `make bench`", path.display()))?;
        lines.extend(text.lines().map(str::to_string));
    }
    let r = Results { lines };
    let mut v = Verdicts::default();
    vmm_targets(&r, &mut v);
    container_targets(&r, &mut v);
    io_targets(&r, &mut v);
    network_targets(dir, &mut v);
    pod_network_targets(dir, &mut v);
    volume_targets(dir, &mut v);
    v.missed += crate::cri_check::check(dir)?;
    if v.missed > 0 {
        bail!("{} target(s) missed", v.missed);
    }
    Ok(())
}

/// CNI setup on the RunPodSandbox path (`vpod-bench cni`, not part of `make bench`: it
/// needs the CNI plugins, so its file is optional).
fn network_targets(dir: &Path, v: &mut Verdicts) {
    let Ok(text) = std::fs::read_to_string(dir.join("cni.jsonl")) else {
        println!("n/a    cni setup: run `vpod-bench cni` to measure it");
        return;
    };
    let r = Results {
        lines: text.lines().map(str::to_string).collect(),
    };
    let config = "setup bridge+host-local+portmap";
    v.target(
        "cni setup (netns, ADD, tap, tc) p50",
        r.get("cni", "vpod-network", config, "p50_ms"),
        30.0,
        false,
        " ms",
    );
}

/// A pod's volumes (`vpod-bench volume-io` and `cri-memory` under several share settings;
/// the files are optional). Both ratios come from one run each, so they hold on the
/// emulated host too.
fn volume_targets(dir: &Path, v: &mut Verdicts) {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .map(|text| Results {
                lines: text.lines().map(str::to_string).collect(),
            })
    };
    match read("volume-io.jsonl") {
        Some(r) => {
            let config = r
                .config("volume_seq_read", "vpod-share")
                .unwrap_or_default();
            let share = r.get("volume_seq_read", "vpod-share", &config, "mb_s");
            let disk = r.get("volume_seq_read", "vpod-disk", &config, "mb_s");
            v.target(
                &format!(
                    "sequential read through a pod's share / its own disk ({config}, {})",
                    r.host("volume_seq_read")
                ),
                ratio(share, disk),
                0.5,
                true,
                "x",
            );
        }
        None => println!("n/a    volume I/O: run `vpod-bench volume-io` to measure it"),
    }
    let Some(r) = read("cri-memory-volumes.jsonl") else {
        println!("n/a    idle pod memory with and without the share: no measurement");
        return;
    };
    let bench = "cri_idle_pod_host_available_drop";
    let off = r
        .lines
        .iter()
        .filter(|l| field(l, "bench").as_deref() == Some(bench))
        .filter_map(|l| field(l, "config"))
        .find(|c| c.ends_with("-volumes-off"));
    if let Some(off) = off {
        let on = off.trim_end_matches("-volumes-off").to_string();
        // A pod with the default share costs no more than one without it.
        v.target(
            &format!(
                "host memory of an idle pod with the share / without ({on}, {})",
                r.host(bench)
            ),
            ratio(
                r.get(bench, "vpod", &on, "rss_kib"),
                r.get(bench, "vpod", &off, "rss_kib"),
            ),
            1.0,
            false,
            "x",
        );
    }
}

/// Pod to pod over a CNI bridge (`vpod-bench net-pods`, not part of `make bench`'s native
/// part: it needs the CNI plugins and guests, so its file is optional). Both figures come
/// from one run on one host, so their ratio holds even on the emulated host.
fn pod_network_targets(dir: &Path, v: &mut Verdicts) {
    let Ok(text) = std::fs::read_to_string(dir.join("net-pods.jsonl")) else {
        println!("n/a    pod->pod throughput: run `vpod-bench net-pods` to measure it");
        return;
    };
    let r = Results {
        lines: text.lines().map(str::to_string).collect(),
    };
    let Some(config) = r.config("pod_to_pod_tcp", "vpod") else {
        println!("n/a    pod->pod throughput: no pod_to_pod_tcp row");
        return;
    };
    let host = r.host("pod_to_pod_tcp");
    v.target(
        &format!("pod->pod throughput / runc's veth (same {host} host)"),
        ratio(
            r.get("pod_to_pod_tcp", "vpod", &config, "mb_s"),
            r.get("pod_to_pod_tcp", "runc", &config, "mb_s"),
        ),
        0.5,
        true,
        "x",
    );
    for bench in ["pod_to_host_tcp", "host_to_pod_tcp"] {
        let ours = r.get(bench, "vpod", &config, "mb_s");
        let runc = r.get(bench, "runc", &config, "mb_s");
        if let (Some(ours), Some(runc)) = (ours, runc) {
            println!(
                "info   {bench} ({config}, {host}): vpod {ours:.1} MB/s, runc {runc:.1} MB/s, {:.2}x",
                ours / runc
            );
        }
    }
    for bench in ["pod_to_pod_rtt", "pod_to_host_rtt"] {
        let ours = r.get(bench, "vpod", "ping-20x0.2s", "p50_ms");
        let runc = r.get(bench, "runc", "ping-20x0.2s", "p50_ms");
        if let (Some(ours), Some(runc)) = (ours, runc) {
            println!("info   {bench} ({host}): vpod {ours:.3} ms, runc {runc:.3} ms");
        }
    }
    let runp = |bench| {
        r.config(bench, "vpod")
            .and_then(|config| r.get(bench, "vpod", &config, "p50_ms"))
    };
    if let (Some(with), Some(without)) = (runp("runp_with_cni"), runp("runp_without_cni")) {
        println!(
            "info   RunPodSandbox p50 ({host}): {with:.0} ms with cni, {without:.0} ms without ({:+.0} ms)",
            with - without
        );
    }
}

fn vmm_targets(r: &Results, v: &mut Verdicts) {
    let config = "1vcpu-128m";
    let ours = r.get("stub_to_marker", "vpod-vmm", config, "p50_ms");
    let qemu = r.get("stub_to_marker", "qemu-microvm", config, "p50_ms");
    let fc = r.get("stub_to_marker", "firecracker", config, "p50_ms");
    v.target(
        "start-up to marker / QEMU",
        ratio(ours, qemu),
        0.25,
        false,
        "x",
    );
    let jailed = r.get("stub_to_marker", "vpod-vmm-jailed", config, "p50_ms");
    if let (Some(jailed), Some(ours)) = (jailed, ours) {
        println!(
            "info   start-up to marker jailed and filtered / unconfined: {:.2}x ({jailed:.2} ms / {ours:.2} ms)",
            jailed / ours
        );
    }
    if fc.is_some() {
        v.target(
            "start-up to marker / Firecracker",
            ratio(ours, fc),
            0.8,
            false,
            "x",
        );
        v.target(
            "start-up to marker, jailed and filtered / Firecracker unjailed",
            ratio(jailed, fc),
            0.8,
            false,
            "x",
        );
    } else {
        println!("n/a    start-up to marker / Firecracker: set FIRECRACKER to a firecracker binary to measure it");
    }
    let overhead = r.get("idle_overhead", "vpod-vmm", config, "overhead_kib");
    v.target(
        "VMM memory overhead",
        overhead.map(|k| k / 1024.0),
        3.0,
        false,
        " MiB",
    );
    for config in ["1vcpu-128m", "2vcpu-512m"] {
        let ours = r.get("linux_boot_to_init", "vpod-vmm", config, "p50_ms");
        let qemu = r.get("linux_boot_to_init", "qemu-microvm", config, "p50_ms");
        v.target(
            &format!(
                "Linux boot to init / QEMU ({config}, {})",
                r.host("linux_boot_to_init")
            ),
            ratio(ours, qemu),
            0.5,
            false,
            "x",
        );
        let jailed = r.get("linux_boot_to_init", "vpod-vmm-jailed", config, "p50_ms");
        if let (Some(jailed), Some(ours)) = (jailed, ours) {
            println!(
                "info   Linux boot to init jailed and filtered / unconfined ({config}, {}): {:.3}x ({jailed:.1} ms / {ours:.1} ms)",
                r.host("linux_boot_to_init"),
                jailed / ours
            );
        }
    }
}

fn container_targets(r: &Results, v: &mut Verdicts) {
    let host = r.host("container_start");
    for config in ["layers-attach", "layers-shared"] {
        let ours = r.get("container_start", "vpod", config, "p50_ms");
        let runc = r.get("container_start", "runc", config, "p50_ms");
        let crun = r.get("container_start", "crun", config, "p50_ms");
        v.target(
            &format!("container start in a running pod / runc run ({config}, {host})"),
            ratio(ours, runc),
            1.0,
            false,
            "x",
        );
        if let Some(x) = ratio(ours, crun) {
            println!(
                "info   container start in a running pod / crun run ({config}, {host}): {x:.3}x"
            );
        }
    }
    let host = r.host("run_true");
    let ours = r.get("run_true", "vpod", "warm-store", "p50_ms");
    for peer in ["runc", "crun"] {
        let theirs = r.get("run_true", peer, "warm-store", "p50_ms");
        if let (Some(a), Some(b)) = (ours, theirs) {
            println!(
                "info   vpod run true / {peer} run true ({host}): {a:.0} ms / {b:.0} ms = {:.1}x",
                a / b
            );
        }
    }
}

fn io_targets(r: &Results, v: &mut Verdicts) {
    let host = r.host("layer_seq_read");
    if let Some(config) = r.config("layer_seq_read", "guest") {
        let guest = r.get("layer_seq_read", "guest", &config, "mb_s");
        let native = r.get("layer_seq_read", "host", &config, "mb_s");
        v.target(
            &format!("in-guest sequential read / host read ({config}, {host})"),
            ratio(guest, native),
            0.8,
            true,
            "x",
        );
        let cached = r.get("layer_seq_read", "guest-cached", &config, "mb_s");
        if let Some(x) = ratio(cached, native) {
            println!("info   in-guest read from the guest's page cache / host read ({config}, {host}): {x:.3}x");
        }
    } else {
        println!("n/a    in-guest sequential read: no measurement");
    }
    let host = r.host("vsock_host_to_guest");
    for bench in ["vsock_host_to_guest", "vsock_guest_to_host"] {
        let config = r.config(bench, "vpod-vmm").unwrap_or_default();
        v.target(
            &format!("{bench} through a pod VM ({config}, {host})"),
            r.get(bench, "vpod-vmm", &config, "mb_s"),
            1000.0,
            true,
            " MB/s",
        );
    }
    for bench in ["vsock_device_host_to_guest", "vsock_device_guest_to_host"] {
        let config = r.config(bench, "vpod-vmm").unwrap_or_default();
        v.target(
            &format!(
                "{bench}, host-side device path ({config}, {})",
                r.host(bench)
            ),
            r.get(bench, "vpod-vmm", &config, "mb_s"),
            1000.0,
            true,
            " MB/s",
        );
    }
    // 10 Gbit/s = 1250 MB/s, with 64 KiB TSO frames through the tap.
    for bench in ["net_device_guest_to_host", "net_device_host_to_guest"] {
        let config = r.config(bench, "vpod-vmm").unwrap_or_default();
        v.target(
            &format!(
                "{bench}, host-side device path ({config}, {})",
                r.host(bench)
            ),
            r.get(bench, "vpod-vmm", &config, "mb_s"),
            1250.0,
            true,
            " MB/s",
        );
    }
    // Issue 17: the writer at least as fast as `tar -xf` (uncompressed) and twice the staged
    // path it replaced, for each tar.
    for config in r.configs("layer_conversion", "tar-xf") {
        let get = |imp: &str| r.get("layer_conversion", imp, &config, "mb_s");
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
        let host = r.host("layer_conversion");
        v.target(
            &format!("layer conversion, vpod import / tar -xf ({config}, {host})"),
            ratio(get("vpod-import-tar"), get("tar-xf")),
            1.0,
            true,
            "x",
        );
        if let Some(x) = ratio(get("vpod-import-tar"), get("tar-xf-sync")) {
            println!(
                "info   layer conversion, vpod import / tar -xf then sync ({config}, {host}): {x:.3}x"
            );
        }
        for (imp, staged) in [
            ("vpod-import-tar", "staged-import-tar"),
            ("vpod-import-gzip", "staged-import-gzip"),
        ] {
            v.target(
                &format!("layer conversion, {imp} / {staged} ({config}, {host})"),
                ratio(get(imp), get(staged)),
                2.0,
                true,
                "x",
            );
        }
    }
    // Issue 17: a cold pull in at most 0.6x the time of containerd's `ctr image pull`, for
    // a multi-layer and a single-layer image. `mb_s` is the image's blob megabytes over the
    // median time, so the time ratio is containerd's rate over vpod's.
    for config in r.configs("cold_pull", "vpod-pull") {
        let get = |imp: &str| r.get("cold_pull", imp, &config, "mb_s");
        v.target(
            &format!(
                "cold pull, vpod pull / ctr image pull, time ({config}, {})",
                r.host("cold_pull")
            ),
            ratio(get("ctr-image-pull"), get("vpod-pull")),
            0.6,
            false,
            "x",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_lookups_read_the_jsonl_rows() {
        let r = Results {
            lines: vec![
                "{\"bench\":\"layer_seq_read\",\"impl\":\"guest\",\"config\":\"256mib\",\"host\":\"emulated\",\"runs\":3,\"p50_ms\":10.000,\"mb_s\":80.000}".into(),
                "{\"bench\":\"layer_seq_read\",\"impl\":\"host\",\"config\":\"256mib\",\"host\":\"emulated\",\"runs\":3,\"p50_ms\":8.000,\"mb_s\":100.000}".into(),
            ],
        };
        assert_eq!(
            r.get("layer_seq_read", "guest", "256mib", "mb_s"),
            Some(80.0)
        );
        assert_eq!(
            r.config("layer_seq_read", "host").as_deref(),
            Some("256mib")
        );
        assert_eq!(r.host("layer_seq_read"), "emulated");
        let mut v = Verdicts::default();
        v.target("read", ratio(Some(80.0), Some(100.0)), 0.8, true, "x");
        assert_eq!(v.missed, 0);
        v.target("read", Some(0.7), 0.8, true, "x");
        v.target("start", Some(1.2), 1.0, false, "x");
        assert_eq!(v.missed, 2);
    }
}

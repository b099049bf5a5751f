//! `vpod-bench cni`: what a pod's network costs natively, as vpod-network does it for
//! RunPodSandbox (setup: the netns, CNI ADD of bridge with host-local IPAM and portmap,
//! the tap and its tc redirects) and for StopPodSandbox (teardown: CNI DEL in reverse, the
//! netns, the record). Debian's plugins from /usr/lib/cni; needs root.
//!
//! The process's main thread first moves into a throwaway network namespace, which the
//! plugins inherit as their "host": the bridge, the veths and the iptables rules never
//! touch the machine's network and vanish with the process. Every file (conf, IPAM data,
//! netns files, records) lives in a scratch dir.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_network::{Cni, CniSettings, PodNetworkRequest, PortMapping, Protocol};

const PLUGINS: &str = "/usr/lib/cni";

pub fn cni(root: &Path, runs: usize) -> Result<Vec<Row>> {
    if !Path::new(PLUGINS).join("bridge").exists() {
        bail!("the CNI plugins are not in {PLUGINS} (apt install containernetworking-plugins)");
    }
    // SAFETY: only CLONE_NEWNET, and only this (the main) thread moves: the bench's
    // plugins run from it and see a fresh, empty network namespace as their host.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .context("unsharing a throwaway network namespace (needs root)")?;
    let scratch = std::env::temp_dir().join(format!("vpod-bench-cni-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let mut rows = Vec::new();
    // The full network first (the target's), then the cheaper ones that break it down.
    for (index, network) in NETWORKS.iter().enumerate() {
        let measured = measure(&scratch.join(index.to_string()), network, runs);
        let (prepare, setup, teardown) = match measured {
            Ok(samples) => samples,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(e.context(format!("network {}", network.label)));
            }
        };
        let label = network.label;
        rows.push(Row::timing(
            "cni",
            "vpod-network",
            &format!("prepare {label}"),
            "native",
            &prepare,
        ));
        rows.push(Row::timing(
            "cni",
            "vpod-network",
            &format!("setup {label}"),
            "native",
            &setup,
        ));
        rows.push(Row::timing(
            "cni",
            "vpod-network",
            &format!("teardown {label}"),
            "native",
            &teardown,
        ));
    }
    // vpod-network's own share without any plugin: a netns made and removed, and the tap
    // joined to a stand-in eth0 (a veth with its peer in the same netns) by its tc redirects.
    let netns = measure_netns(&scratch.join("netns-only"), runs);
    let tap = measure_tap(&scratch.join("tap-only"), runs);
    let _ = std::fs::remove_dir_all(&scratch);
    let own = [("netns create+remove", netns?), ("tap+tc join", tap?)];
    for (config, samples) in own {
        rows.push(Row::timing(
            "cni",
            "vpod-network",
            config,
            "native",
            &samples,
        ));
    }
    println!("{}", table(&rows));
    write_jsonl(&root.join("bench/results"), "cni", &rows)?;
    Ok(rows)
}

/// One network configuration to measure.
struct Network {
    label: &'static str,
    ip_masq: bool,
    portmap: bool,
    /// The pod asks for a host port (most pods do not; portmap's ADD is then a no-op).
    host_port: bool,
}

const NETWORKS: [Network; 4] = [
    Network {
        label: "bridge+host-local+portmap",
        ip_masq: true,
        portmap: true,
        host_port: true,
    },
    Network {
        label: "bridge+host-local+portmap no-hostport",
        ip_masq: true,
        portmap: true,
        host_port: false,
    },
    Network {
        label: "bridge+host-local",
        ip_masq: true,
        portmap: false,
        host_port: false,
    },
    Network {
        label: "bridge+host-local no-masq",
        ip_masq: false,
        portmap: false,
        host_port: false,
    },
];

/// Per run, in ms: prepare (netns and tap), the whole setup, teardown.
type Samples = (Vec<f64>, Vec<f64>, Vec<f64>);

fn measure(scratch: &Path, network: &Network, runs: usize) -> Result<Samples> {
    let conf_dir = scratch.join("net.d");
    std::fs::create_dir_all(&conf_dir)?;
    let portmap = if network.portmap {
        r#", {"type": "portmap", "capabilities": {"portMappings": true}}"#
    } else {
        ""
    };
    std::fs::write(
        conf_dir.join("10-bench.conflist"),
        format!(
            r#"{{"cniVersion": "1.0.0", "name": "vpodbench", "plugins": [
                {{"type": "bridge", "bridge": "vpodbench0", "isGateway": true, "ipMasq": {},
                  "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.98.0.0/16"}}]],
                           "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{}"}}}}{portmap}]}}"#,
            network.ip_masq,
            scratch.join("ipam").display()
        ),
    )?;
    let mut settings = CniSettings::with_cache_dir(scratch.join("network"));
    settings.conf_dir = conf_dir;
    settings.bin_dirs = vec![PathBuf::from(PLUGINS)];
    settings.netns_dir = scratch.join("netns");
    settings.plugin_timeout = Duration::from_secs(30);
    let cni = Cni::new(settings);
    cni.status()
        .map_err(|e| anyhow::anyhow!("cni not ready: {e}"))?;

    let (mut prepare, mut setup, mut teardown) = (Vec::new(), Vec::new(), Vec::new());
    // The first run warms the page cache and the kernel's modules and is not counted.
    for run in 0..=runs {
        let id = format!("bench{run}");
        let request = PodNetworkRequest {
            sandbox_id: id.clone(),
            pod_name: "bench".into(),
            pod_namespace: "default".into(),
            pod_uid: format!("uid-{run}"),
            port_mappings: network
                .host_port
                .then_some(PortMapping {
                    host_port: 18080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: None,
                })
                .into_iter()
                .collect(),
            dns: None,
        };
        // As RunPodSandbox does it: the netns and tap (before the VMM starts), then the
        // plugins and the tap's redirects (while the VM boots).
        let start = Instant::now();
        let prepared = cni
            .prepare(&request)
            .with_context(|| format!("prepare of {id}"))?;
        let prepared_in = start.elapsed();
        let pod = cni
            .complete(prepared)
            .with_context(|| format!("setup of {id}"))?;
        let set_up = start.elapsed();
        drop(pod.tap); // as the VMM's exit would
        let start = Instant::now();
        cni.teardown(&id)
            .with_context(|| format!("teardown of {id}"))?;
        let torn_down = start.elapsed();
        if run > 0 {
            prepare.push(prepared_in.as_secs_f64() * 1000.0);
            setup.push(set_up.as_secs_f64() * 1000.0);
            teardown.push(torn_down.as_secs_f64() * 1000.0);
        }
    }
    Ok((prepare, setup, teardown))
}

fn measure_netns(scratch: &Path, runs: usize) -> Result<Vec<f64>> {
    let mut samples = Vec::new();
    for run in 0..=runs {
        let path = scratch.join(format!("vpod-bench{run}"));
        let start = Instant::now();
        vpod_network::netns::create(&path)?;
        vpod_network::netns::remove(&path)?;
        if run > 0 {
            samples.push(start.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(samples)
}

fn measure_tap(scratch: &Path, runs: usize) -> Result<Vec<f64>> {
    let mut samples = Vec::new();
    for run in 0..=runs {
        let path = scratch.join(format!("vpod-bench{run}"));
        vpod_network::netns::create(&path)?;
        let measured = vpod_network::netns::run_in(&path, || -> Result<f64> {
            // The child inherits this thread's netns: the veth is made inside it.
            let status = std::process::Command::new("ip")
                .args([
                    "link", "add", "eth0", "up", "type", "veth", "peer", "name", "peer0",
                ])
                .status()
                .context("running ip")?;
            if !status.success() {
                bail!("ip link add eth0 type veth: {status}");
            }
            Ok(0.0)
        })
        .and_then(|_| {
            let start = Instant::now();
            let tap = vpod_network::tap::create(&path, vpod_network::TAP_NAME)?;
            vpod_network::tap::join(&path, "eth0", vpod_network::TAP_NAME)?;
            let elapsed = start.elapsed().as_secs_f64() * 1000.0;
            drop(tap);
            Ok(elapsed)
        });
        vpod_network::netns::remove(&path)?;
        if run > 0 {
            samples.push(measured?);
        }
    }
    Ok(samples)
}

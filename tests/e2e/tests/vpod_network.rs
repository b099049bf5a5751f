//! `vpod run --network bridge` and `--publish`: the pod gets an address on vpod's own CNI
//! bridge (10.89.0.0/16), its published port reaches the container from the host, and the
//! network goes with the pod (`vpod rm`, or the end of a foreground run). The whole test runs
//! in a network namespace of its own, so the bridge and the iptables rules go with it. One
//! emulated host (where guests need one) runs every check here.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use vpod_e2e::net::{http_get, http_get_eventually, in_own_network, nat_rules_naming, veth_count};
use vpod_e2e::vpod::VpodRoot;
use vpod_e2e::{in_guest_host, Checks};

const LIMIT: Duration = Duration::from_secs(600);
/// The bridge's own address on vpod's default network: the host side of every pod's route.
const GATEWAY: &str = "10.89.0.1";

/// The addresses host-local holds for vpod's network under `root`.
fn allocated_ips(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("cni/ipam/vpod"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default()
}

fn netns_of(pod: &str) -> std::path::PathBuf {
    Path::new("/var/run/netns").join(format!("vpod-{pod}"))
}

#[test]
fn vpod_run_publishes_ports_on_its_bridge_and_releases_the_network() {
    in_guest_host(LIMIT, || {
        in_own_network(|| {
            let root = VpodRoot::new("net");
            let pod = root.run_detached(&[
                "--publish",
                "18082:8080",
                "--",
                "sh",
                "-c",
                "mkdir -p /www && echo hello-vpod-run > /www/index.html && exec httpd -f -p 8080 -h /www",
            ]);
            let mut checks = Checks::new();
            checks
                .check("the_published_port_reaches_the_container", || {
                    let addr: SocketAddr = format!("{GATEWAY}:18082").parse().unwrap();
                    let body = http_get_eventually(addr, Duration::from_secs(30));
                    assert_eq!(body.trim(), "hello-vpod-run");
                })
                .check("the_guest_has_an_address_on_the_bridge", || {
                    let done = root.vpod(
                        "exec",
                        &[&pod, "--", "ip", "-4", "-o", "addr", "show", "eth0"],
                    );
                    assert_eq!(done.code(), Some(0), "{}", done.explain());
                    assert!(
                        done.stdout_text().contains("inet 10.89."),
                        "{}",
                        done.explain()
                    );
                    let done = root.vpod("exec", &[&pod, "--", "ip", "route", "show", "default"]);
                    assert!(
                        done.stdout_text().contains(&format!("via {GATEWAY}")),
                        "{}",
                        done.explain()
                    );
                })
                .check("rm_releases_the_network", || {
                    assert!(netns_of(&pod).exists());
                    assert_eq!(allocated_ips(root.path()).len(), 1);
                    let done = root.vpod("rm", &[&pod]);
                    assert_eq!(done.code(), Some(0), "{}", done.explain());
                    assert!(!netns_of(&pod).exists(), "the pod's namespace is gone");
                    assert_eq!(allocated_ips(root.path()), Vec::<String>::new());
                    assert_eq!(veth_count(), 0);
                    assert_eq!(nat_rules_naming(&pod), Vec::<String>::new());
                    let addr: SocketAddr = format!("{GATEWAY}:18082").parse().unwrap();
                    assert!(http_get(addr).is_err(), "the published port is closed");
                })
                .check("a_foreground_run_has_the_network_and_leaves_none", || {
                    let done = root.run(&[
                        "--network",
                        "bridge",
                        "--",
                        "ip",
                        "-4",
                        "-o",
                        "addr",
                        "show",
                        "eth0",
                    ]);
                    assert_eq!(done.code(), Some(0), "{}", done.explain());
                    assert!(
                        done.stdout_text().contains("inet 10.89."),
                        "{}",
                        done.explain()
                    );
                    assert_eq!(allocated_ips(root.path()), Vec::<String>::new());
                    assert_eq!(veth_count(), 0);
                })
                .check("without_a_network_the_pod_has_loopback_only", || {
                    let done = root.run(&["--", "ip", "-o", "link"]);
                    assert_eq!(done.code(), Some(0), "{}", done.explain());
                    // lo (and the kernel's sit0), but no Ethernet device.
                    let text = done.stdout_text();
                    assert!(text.contains(": lo:"), "{}", done.explain());
                    assert!(!text.contains("link/ether"), "{}", done.explain());
                });
            checks.finish();
        })
    });
}

//! Pod networking through real CNI plugins (Debian's bridge, host-local and portmap) in the
//! emulated KVM host: pods on one bridge reach each other and the host reaches them by IP and
//! by host port, containers of one pod talk over localhost, and nothing (network namespace,
//! veth, iptables rule, IP allocation) outlives a pod, a failing plugin or a crash.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use vpod_e2e::net::{http_get, nat_rules_naming, veth_count};
use vpod_proto::cri::*;

const SUBNET_PREFIX: &str = "10.77.0.";
const GATEWAY: &str = "10.77.0.1";
const NETWORK: &str = "vpod-e2e";

/// A conflist as a node has one: a bridge with host-local IPAM and masquerade, then portmap.
fn conflist(ipam_dir: &Path, first_plugin: &str) -> String {
    format!(
        r#"{{"cniVersion": "1.0.0", "name": "{NETWORK}", "plugins": [
  {{"type": "{first_plugin}", "bridge": "vpode2e0", "isGateway": true, "ipMasq": true,
    "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.77.0.0/24"}}]],
             "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{}"}}}},
  {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
]}}"#,
        ipam_dir.display()
    )
}

/// The directories the daemon's network lives in: its CNI configuration, the pods'
/// namespaces and host-local's allocations; removed on drop.
struct NetDirs {
    base: PathBuf,
    conf: PathBuf,
    netns: PathBuf,
    ipam: PathBuf,
}

impl NetDirs {
    fn new(name: &str) -> NetDirs {
        let base = PathBuf::from(format!("/tmp/vpod-cri-net-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dirs = NetDirs {
            conf: base.join("net.d"),
            netns: base.join("netns"),
            ipam: base.join("ipam"),
            base,
        };
        std::fs::create_dir_all(&dirs.conf).unwrap();
        dirs
    }

    fn write_conf(&self, first_plugin: &str) {
        std::fs::write(
            self.conf.join("10-e2e.conflist"),
            conflist(&self.ipam, first_plugin),
        )
        .unwrap();
    }

    fn netns_entries(&self) -> Vec<String> {
        names_in(&self.netns)
    }

    /// The addresses host-local holds (its lock and last-reserved files aside).
    fn allocated_ips(&self) -> Vec<String> {
        names_in(&self.ipam.join(NETWORK))
            .into_iter()
            .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
            .collect()
    }
}

impl Drop for NetDirs {
    fn drop(&mut self) {
        // Namespaces a failed test left mounted: unmount them so the directory can go.
        for name in self.netns_entries() {
            let _ =
                rustix::mount::unmount(self.netns.join(name), rustix::mount::UnmountFlags::DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// The MAC address of `link` inside the netns file `netns`, as `ip` shows it.
fn mac_in_netns(netns: &Path, link: &str) -> String {
    let mut arg = std::ffi::OsString::from("--net=");
    arg.push(netns);
    let output = std::process::Command::new("nsenter")
        .arg(arg)
        .args(["ip", "-o", "link", "show", link])
        .output()
        .expect("nsenter runs");
    assert!(output.status.success(), "ip link show {link}: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut words = text.split_whitespace();
    words.find(|w| *w == "link/ether");
    words.next().expect("a link/ether address").to_owned()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn exec(c: &mut Clients, container: &str, cmd: &[&str]) -> ExecSyncResponse {
    c.runtime
        .exec_sync(ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        })
        .await
        .expect("ExecSync")
        .into_inner()
}

/// Status's NetworkReady condition.
async fn network_ready(c: &mut Clients) -> RuntimeCondition {
    let status = c
        .runtime
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner()
        .status
        .expect("a runtime status");
    status
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .expect("a NetworkReady condition")
}

async fn pod_ip(c: &mut Clients, pod_id: &str) -> String {
    let status = pod_status(c, pod_id).await.status.expect("a status");
    let network = status.network.expect("a pod with a network reports it");
    assert!(
        network.ip.starts_with(SUBNET_PREFIX),
        "the pod's IP {} is in the network's subnet",
        network.ip
    );
    network.ip
}

async fn remove_pod(c: &mut Clients, pod_id: &str) {
    c.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("StopPodSandbox");
    c.runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("RemovePodSandbox");
}

fn network_config(dirs: &NetDirs) -> String {
    format!(
        "[network]\nconf_dir = \"{}\"\nnetns_dir = \"{}\"\n",
        dirs.conf.display(),
        dirs.netns.display()
    )
}

#[test]
fn pods_on_a_cni_bridge_reach_each_other_the_host_and_their_host_ports() {
    in_guest_host_own_network(
        "pods_on_a_cni_bridge_reach_each_other_the_host_and_their_host_ports",
        Duration::from_secs(500),
        || async {
            let dirs = NetDirs::new("net");
            dirs.write_conf("bridge");
            let daemon = Daemon::start_with_config("net", &network_config(&dirs));
            let mut c = daemon.connect().await;
            let ready = network_ready(&mut c).await;
            assert!(ready.status, "NetworkReady with a CNI config: {ready:?}");
            let image = pull(&mut c, &default_image()).await;

            // Pod A serves HTTP on 8080, published on the host's port 18080.
            let mut a = pod_config("net-a", &daemon.log_dir);
            a.port_mappings = vec![PortMapping {
                protocol: Protocol::Tcp as i32,
                container_port: 8080,
                host_port: 18080,
                host_ip: String::new(),
            }];
            let a_id = run_pod(&mut c, a.clone()).await;
            let web = start_container(&mut c,
                &a_id,
                &a,
                container_config(
                    "web",
                    &image,
                    &[
                        "sh",
                        "-c",
                        "mkdir -p /www && echo hello-from-a > /www/index.html && exec httpd -f -p 8080 -h /www",
                    ],
                ),
            )
            .await;
            let side = start_container(
                &mut c,
                &a_id,
                &a,
                container_config("side", &image, &["sleep", "3600"]),
            )
            .await;
            let a_ip = pod_ip(&mut c, &a_id).await;

            // The IP the runtime reports is the one the guest has.
            let addr = exec(&mut c, &web, &["ip", "-4", "-o", "addr", "show", "eth0"]).await;
            assert!(
                String::from_utf8_lossy(&addr.stdout).contains(&format!("inet {a_ip}/24")),
                "the guest's eth0: {}",
                String::from_utf8_lossy(&addr.stdout)
            );

            // The guest NIC booted with a MAC address of its own and took the CNI
            // interface's, so it is on the wire in that interface's place.
            let guest_mac = exec(&mut c, &web, &["cat", "/sys/class/net/eth0/address"]).await;
            let netns = dirs.netns.join(format!("vpod-{a_id}"));
            let cni_mac = mac_in_netns(&netns, "eth0");
            assert_eq!(
                String::from_utf8_lossy(&guest_mac.stdout).trim(),
                cni_mac,
                "the guest NIC has the CNI interface's MAC address"
            );

            // The jailed VMM joined the pod's network namespace (where its tap is) rather
            // than make an empty one of its own.
            let pod_netns = {
                use std::os::unix::fs::MetadataExt;
                PathBuf::from(format!(
                    "net:[{}]",
                    std::fs::metadata(&netns).unwrap().ino()
                ))
            };
            let in_pod_netns = daemon
                .vmm_pids()
                .into_iter()
                .filter_map(vpod_sandbox::vmm::jailed_vmm_of)
                .filter(|pid| {
                    std::fs::read_link(format!("/proc/{pid}/ns/net"))
                        .ok()
                        .as_ref()
                        == Some(&pod_netns)
                })
                .count();
            assert_eq!(in_pod_netns, 1, "jailed VMMs in pod A's network namespace");

            // Two containers of one pod over localhost.
            let mut local = String::new();
            for _ in 0..50 {
                let r = exec(&mut c, &side, &["wget", "-qO-", "http://127.0.0.1:8080/"]).await;
                local = String::from_utf8_lossy(&r.stdout).into_owned();
                if local.contains("hello-from-a") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert_eq!(local.trim(), "hello-from-a", "localhost inside the pod");

            // The host reaches the pod by IP, and by the host port on its own address.
            let ip: IpAddr = a_ip.parse().unwrap();
            assert_eq!(
                http_get(SocketAddr::new(ip, 8080))
                    .expect("the host reaches the pod's IP")
                    .trim(),
                "hello-from-a"
            );
            let gateway: IpAddr = GATEWAY.parse().unwrap();
            assert_eq!(
                http_get(SocketAddr::new(gateway, 18080))
                    .expect("the host port reaches the pod")
                    .trim(),
                "hello-from-a"
            );
            assert!(
                !nat_rules_naming(&a_id).is_empty(),
                "portmap's and the masquerade's rules exist"
            );

            // Pod B reaches pod A over the bridge, and the pod's gateway.
            let b = pod_config("net-b", &daemon.log_dir);
            let b_id = run_pod(&mut c, b.clone()).await;
            let client = start_container(
                &mut c,
                &b_id,
                &b,
                container_config("client", &image, &["sleep", "3600"]),
            )
            .await;
            let b_ip = pod_ip(&mut c, &b_id).await;
            assert_ne!(a_ip, b_ip);
            let url = format!("http://{a_ip}:8080/");
            let r = exec(&mut c, &client, &["wget", "-qO-", &url]).await;
            assert_eq!(
                String::from_utf8_lossy(&r.stdout).trim(),
                "hello-from-a",
                "pod to pod: {}",
                String::from_utf8_lossy(&r.stderr)
            );
            let r = exec(&mut c, &client, &["ip", "route", "show", "default"]).await;
            assert!(
                String::from_utf8_lossy(&r.stdout).contains(&format!("via {GATEWAY}")),
                "the default route the CNI result gave: {}",
                String::from_utf8_lossy(&r.stdout)
            );
            assert_eq!(dirs.netns_entries().len(), 2);
            assert_eq!(dirs.allocated_ips().len(), 2);
            assert_eq!(veth_count(), 2);

            // Removing the pods leaves nothing of their networks.
            remove_pod(&mut c, &a_id).await;
            remove_pod(&mut c, &b_id).await;
            assert_eq!(dirs.netns_entries(), Vec::<String>::new());
            assert_eq!(dirs.allocated_ips(), Vec::<String>::new());
            assert_eq!(veth_count(), 0);
            assert_eq!(nat_rules_naming(&a_id), Vec::<String>::new());
            assert_eq!(nat_rules_naming(&b_id), Vec::<String>::new());
            assert!(
                http_get(SocketAddr::new(gateway, 18080)).is_err(),
                "the host port is closed"
            );
        },
    );
}

#[test]
fn a_failing_plugin_or_a_crash_during_runp_leaks_no_network() {
    in_guest_host_own_network(
        "a_failing_plugin_or_a_crash_during_runp_leaks_no_network",
        Duration::from_secs(400),
        || async {
            let dirs = NetDirs::new("netfail");
            // A plugin that does not exist: RunPodSandbox names it; nothing is left.
            dirs.write_conf("no-such-plugin");
            let mut daemon = Daemon::start_with_config("netfail", &network_config(&dirs));
            let mut c = daemon.connect().await;
            let ready = network_ready(&mut c).await;
            assert!(!ready.status, "a missing plugin is not ready");
            assert!(ready.message.contains("no-such-plugin"), "{ready:?}");
            let error = c
                .runtime
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(pod_config("broken", &daemon.log_dir)),
                    runtime_handler: String::new(),
                })
                .await
                .expect_err("RunPodSandbox with a missing plugin");
            assert!(error.message().contains("no-such-plugin"), "{error:?}");
            assert_eq!(dirs.netns_entries(), Vec::<String>::new());
            assert!(daemon.sandbox_dirs().is_empty());
            assert!(daemon.state_entries().is_empty());
            assert!(daemon.vmm_pids().is_empty());

            // kill -9 while RunPodSandbox holds a network and boots: the restarted daemon
            // tears the network down (DEL through the plugins, the namespace removed).
            dirs.write_conf("bridge");
            daemon.kill9();
            daemon.spawn_with_env(&[("VPOD_CRI_TEST_DELAY_RUNP_MS", "30000")]);
            let c = daemon.connect().await;
            let runp = spawn_run_pod(&c, pod_config("doomed", &daemon.log_dir));
            eventually("the pod's network made", Duration::from_secs(60), || {
                let log = daemon.log();
                async move { log.contains("test hook: pausing after the pod's network") }
            })
            .await;
            assert_eq!(dirs.netns_entries().len(), 1);
            assert_eq!(dirs.allocated_ips().len(), 1);
            assert_eq!(veth_count(), 1);
            daemon.kill9();
            let _ = runp.await;
            daemon.spawn();
            let mut c = daemon.connect().await;
            assert_eq!(dirs.netns_entries(), Vec::<String>::new());
            assert_eq!(dirs.allocated_ips(), Vec::<String>::new());
            assert_eq!(veth_count(), 0);
            assert!(daemon.state_entries().is_empty());
            // And the network works for the next pod.
            let pod = pod_config("after", &daemon.log_dir);
            let id = run_pod(&mut c, pod).await;
            pod_ip(&mut c, &id).await;
            remove_pod(&mut c, &id).await;
            assert_eq!(dirs.netns_entries(), Vec::<String>::new());
            assert_eq!(dirs.allocated_ips(), Vec::<String>::new());
        },
    );
}

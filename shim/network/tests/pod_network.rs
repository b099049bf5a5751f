//! Privileged tests of the whole pod network on this machine's kernel with Debian's CNI
//! plugins (/usr/lib/cni). Each test moves its own thread into a fresh network namespace
//! (the "host" the plugins see: they inherit it), so bridges, veths and iptables rules go
//! away with the thread, and keeps every file (conf, netns, cache, IPAM data) in a
//! tempdir. Skipped (with a note) when not root or without the plugins.

use std::io::Write;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vpod_network::cache::{self, PodRecord};
use vpod_network::exec::{CniCommand, Invocation};
use vpod_network::{
    args, netns, tap, Cni, CniSettings, NetworkError, PodNetworkRequest, PortMapping, Protocol,
};

const PLUGINS: &str = "/usr/lib/cni";

/// One test's world: its own host netns (this thread's), files and networks.
struct Fixture {
    cni: Cni,
    dir: tempfile::TempDir,
    subnet: u8,
}

impl Fixture {
    /// None (and a note) where the machine cannot run these tests.
    fn new(subnet: u8) -> Option<Self> {
        if !rustix::process::geteuid().is_root() || !Path::new(PLUGINS).join("bridge").exists() {
            eprintln!("skipped: needs root and the CNI plugins in {PLUGINS}");
            return None;
        }
        // SAFETY: only CLONE_NEWNET, on this test's own thread (libtest runs each test on
        // a thread of its own that ends with it): that thread and the plugins it spawns
        // see a fresh network namespace, freed when the thread exits.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
            .expect("unshare a test host netns");
        let dir = tempfile::tempdir().unwrap();
        let mut settings = CniSettings::with_cache_dir(dir.path().join("state/network"));
        settings.conf_dir = dir.path().join("net.d");
        settings.bin_dirs = vec![dir.path().join("bin"), PathBuf::from(PLUGINS)];
        settings.netns_dir = dir.path().join("netns");
        settings.plugin_timeout = Duration::from_secs(20);
        std::fs::create_dir_all(&settings.conf_dir).unwrap();
        std::fs::create_dir_all(&settings.bin_dirs[0]).unwrap();
        Some(Fixture {
            cni: Cni::new(settings),
            dir,
            subnet,
        })
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// bridge (masquerading, host-local IPAM in the tempdir) + `extra` plugins.
    fn write_conflist(&self, extra: &str) {
        self.write_conflist_of_version("1.0.0", extra);
    }

    fn write_conflist_of_version(&self, cni_version: &str, extra: &str) {
        let conf = format!(
            r#"{{"cniVersion": "{cni_version}", "name": "vpodtest", "plugins": [
                {{"type": "bridge", "bridge": "vpbr{subnet}", "isGateway": true, "ipMasq": true,
                  "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "10.99.{subnet}.0/24"}}]],
                           "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{ipam}"}}}}
                {extra}]}}"#,
            subnet = self.subnet,
            ipam = self.ipam_dir().display(),
        );
        std::fs::write(
            self.cni.settings().conf_dir.join("10-vpodtest.conflist"),
            conf,
        )
        .unwrap();
    }

    fn fake_plugin(&self, name: &str, body: &str) {
        let path = self.cni.settings().bin_dirs[0].join(name);
        std::fs::write(&path, format!("#!/bin/sh\ncat >/dev/null\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn gateway(&self) -> IpAddr {
        format!("10.99.{}.1", self.subnet).parse().unwrap()
    }

    /// Asserts that nothing of `id` is left on the test host or in the files.
    fn assert_nothing_left(&self, id: &str) {
        assert!(!self.cni.netns_path(id).exists(), "netns file left");
        assert!(
            !cache::path(&self.cni.settings().cache_dir, id).exists(),
            "cache left"
        );
        assert!(
            allocated_ips(&self.ipam_dir()).is_empty(),
            "host-local IP left"
        );
        assert_eq!(veths(), "", "veth left");
        let rules = iptables_nat();
        assert!(!rules.contains(id), "iptables rule left: {rules}");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Undo whatever a failed test left: teardown every record, then any netns mount.
        if let Ok(entries) = std::fs::read_dir(&self.cni.settings().cache_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_suffix(".json") {
                    let _ = self.cni.teardown(id);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&self.cni.settings().netns_dir) {
            for entry in entries.flatten() {
                let _ = netns::remove(&entry.path());
            }
        }
    }
}

fn request(id: &str) -> PodNetworkRequest {
    PodNetworkRequest {
        sandbox_id: id.into(),
        pod_name: "web".into(),
        pod_namespace: "default".into(),
        pod_uid: format!("uid-{id}"),
        port_mappings: vec![PortMapping {
            host_port: 18080,
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: None,
        }],
        dns: None,
    }
}

const PORTMAP: &str = r#", {"type": "portmap", "capabilities": {"portMappings": true}}"#;
const FIREWALL: &str = r#", {"type": "firewall"}"#;

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn iptables_nat() -> String {
    run("iptables", &["-t", "nat", "-S"])
}

fn veths() -> String {
    run("ip", &["-o", "link", "show", "type", "veth"])
}

/// The addresses host-local holds (its files named by IP) under `ipam_dir`.
fn allocated_ips(ipam_dir: &Path) -> Vec<String> {
    let mut ips = Vec::new();
    for network in std::fs::read_dir(ipam_dir).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(network.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.parse::<IpAddr>().is_ok() {
                ips.push(name);
            }
        }
    }
    ips
}

fn arp_request(mac: &[u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0u8; 10]; // virtio_net_hdr (IFF_VNET_HDR): no offloads
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(mac);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(mac);
    frame.extend_from_slice(&sender);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target);
    frame
}

fn parse_mac(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// Reads frames from the tap until an ARP reply from `from` arrives (or 3 s pass).
fn read_arp_reply(tap: &std::fs::File, from: [u8; 4]) -> bool {
    use std::io::Read;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut buffer = [0u8; 2048];
    let mut reader = tap;
    while std::time::Instant::now() < deadline {
        let mut poll = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut poll, 1, 200) } <= 0 {
            continue;
        }
        let Ok(n) = reader.read(&mut buffer) else {
            continue;
        };
        let frame = &buffer[10.min(n)..n];
        let is_arp_reply =
            frame.len() >= 42 && frame[12..14] == [0x08, 0x06] && frame[20..22] == [0, 2];
        if is_arp_reply && frame[28..32] == from {
            return true;
        }
    }
    false
}

#[test]
fn setup_gives_an_ip_and_a_tap_redirected_to_eth0_and_teardown_removes_everything() {
    let Some(fixture) = Fixture::new(1) else {
        return;
    };
    fixture.write_conflist(&format!("{PORTMAP}{FIREWALL}"));
    fixture.cni.status().unwrap();
    let id = "podok1";
    let pod = fixture.cni.setup(&request(id)).unwrap();

    // An address in the subnet, with the gateway, and the default route host-local added.
    let address = pod.addresses.first().expect("an address");
    let IpAddr::V4(v4) = address.address else {
        panic!("{address:?}")
    };
    assert_eq!(&v4.octets()[..3], &[10, 99, 1]);
    assert_eq!(address.prefix_len, 24);
    assert_eq!(address.gateway, Some(fixture.gateway()));
    assert!(
        pod.routes
            .iter()
            .any(|r| r.prefix_len == 0 && r.gateway == Some(fixture.gateway())),
        "{:?}",
        pod.routes
    );
    assert_eq!(pod.mtu, 1500);
    assert_eq!(pod.mac.len(), 17);
    assert_eq!(fixture.cni.pod_ips(id), Some(vec![address.address]));

    // The tap exists in the pod netns, both links carry the u32 redirect.
    assert_eq!(
        tap::ingress_filter_kinds(&pod.netns, "eth0").unwrap(),
        ["u32"]
    );
    assert_eq!(
        tap::ingress_filter_kinds(&pod.netns, &pod.tap_name).unwrap(),
        ["u32"]
    );

    // End to end: an ARP request written to the tap leaves through eth0, the bridge
    // answers, and the reply comes back through eth0 into the tap.
    let tap = std::fs::File::from(pod.tap);
    let request_frame = arp_request(&parse_mac(&pod.mac), v4.octets(), [10, 99, 1, 1]);
    (&tap).write_all(&request_frame).unwrap();
    assert!(
        read_arp_reply(&tap, [10, 99, 1, 1]),
        "no ARP reply through the tap"
    );

    // portmap's DNAT rule, in the (test) host netns.
    let rules = iptables_nat();
    assert!(rules.contains("18080") && rules.contains(id), "{rules}");

    // The tap is not persistent: it goes with its last fd, as it will with the VMM.
    drop(tap);
    let gone = tap::ingress_filter_kinds(&pod.netns, &pod.tap_name).unwrap_err();
    assert!(gone.to_string().contains(&pod.tap_name), "{gone}");
    fixture.cni.teardown(id).unwrap();
    fixture.assert_nothing_left(id);
    fixture.cni.teardown(id).unwrap();
    assert_eq!(fixture.cni.pod_ips(id), None);
}

#[test]
fn setup_twice_for_one_sandbox_is_refused_without_harm_with_0_3_1_plugins() {
    let Some(fixture) = Fixture::new(2) else {
        return;
    };
    fixture.write_conflist_of_version("0.3.1", PORTMAP);
    let pod = fixture.cni.setup(&request("podtwice")).unwrap();
    assert_eq!(pod.result.cni_version, "0.3.1");
    assert_eq!(pod.addresses.len(), 1);
    let err = fixture.cni.setup(&request("podtwice")).unwrap_err();
    assert!(matches!(err, NetworkError::AlreadySetUp(_)), "{err}");
    assert!(pod.netns.exists());
    drop(pod);
    fixture.cni.teardown("podtwice").unwrap();
    fixture.assert_nothing_left("podtwice");
}

#[test]
fn plugin_failing_midway_is_undone_and_named() {
    let Some(fixture) = Fixture::new(3) else {
        return;
    };
    fixture.fake_plugin(
        "failer",
        r#"[ "$CNI_COMMAND" = DEL ] && exit 0
echo '{"cniVersion":"1.0.0","code":7,"msg":"invalid environment","details":"by design"}'; exit 1"#,
    );
    fixture.write_conflist(&format!(r#"{PORTMAP}, {{"type": "failer"}}"#));
    let err = fixture
        .cni
        .setup(&request("podfail"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("failer") && err.contains("invalid environment"),
        "{err}"
    );
    fixture.assert_nothing_left("podfail");

    // A plugin that answers garbage is the same: an error naming it, nothing left.
    fixture.fake_plugin(
        "garbler",
        r#"[ "$CNI_COMMAND" = DEL ] && exit 0
echo 'this is { not json'"#,
    );
    fixture.write_conflist(r#", {"type": "garbler"}"#);
    let err = fixture
        .cni
        .setup(&request("podgarble"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("garbler"), "{err}");
    fixture.assert_nothing_left("podgarble");
}

#[test]
fn missing_plugin_binary_and_bad_conf_are_named_and_create_nothing() {
    let Some(fixture) = Fixture::new(4) else {
        return;
    };
    fixture.write_conflist(r#", {"type": "no-such-plugin"}"#);
    let err = fixture
        .cni
        .setup(&request("podmissing"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-plugin"), "{err}");
    assert!(fixture
        .cni
        .status()
        .unwrap_err()
        .reason
        .contains("no-such-plugin"));
    fixture.assert_nothing_left("podmissing");

    let conf_file = fixture.cni.settings().conf_dir.join("10-vpodtest.conflist");
    std::fs::write(&conf_file, "{\"name\": \"x\", \"plugins\": ").unwrap();
    let err = fixture
        .cni
        .setup(&request("podbadconf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("10-vpodtest.conflist"), "{err}");
    fixture.assert_nothing_left("podbadconf");
}

/// What setup has written and done when it is killed after `plugins_run` ADDs.
fn simulate_crash(fixture: &Fixture, id: &str, plugins_run: usize) {
    let conf = vpod_network::config::load_first(&fixture.cni.settings().conf_dir).unwrap();
    let request = request(id);
    let mut record = PodRecord {
        sandbox_id: id.into(),
        netns: fixture.cni.netns_path(id),
        ifname: "eth0".into(),
        network: conf.to_json(),
        cni_args: args::cni_args(&request),
        capability_args: args::capability_args(&request),
        started: plugins_run,
        result: None,
        complete: false,
    };
    assert!(cache::create(&fixture.cni.settings().cache_dir, &record).unwrap());
    if plugins_run == 0 {
        // Killed between creating the netns file and bind-mounting it.
        std::fs::create_dir_all(&fixture.cni.settings().netns_dir).unwrap();
        std::fs::write(&record.netns, b"").unwrap();
        return;
    }
    netns::create(&record.netns).unwrap();
    for plugin in conf.plugins.iter().take(plugins_run) {
        let kind = plugin["type"].as_str().unwrap();
        let path = Path::new(PLUGINS).join(kind);
        let input = args::plugin_input(
            plugin,
            &conf.name,
            &conf.cni_version,
            record.result.as_ref(),
            &record.capability_args,
        );
        let output = Invocation {
            command: CniCommand::Add,
            plugin: kind,
            path: &path,
            container_id: id,
            netns: &record.netns,
            ifname: "eth0",
            cni_args: &record.cni_args,
            bin_dirs: &[PathBuf::from(PLUGINS)],
            timeout: Duration::from_secs(20),
        }
        .run(&input)
        .unwrap();
        // Killed before the last result reached the cache: it stays at the one before.
        if record.result.is_none() {
            record.result = Some(serde_json::from_slice(&output).unwrap());
            cache::write(&fixture.cni.settings().cache_dir, &record).unwrap();
        }
    }
}

#[test]
fn teardown_after_a_crash_before_any_plugin_leaves_nothing() {
    let Some(fixture) = Fixture::new(5) else {
        return;
    };
    fixture.write_conflist(PORTMAP);
    simulate_crash(&fixture, "podcrash0", 0);
    assert!(fixture.cni.netns_path("podcrash0").exists());
    fixture.cni.teardown("podcrash0").unwrap();
    fixture.assert_nothing_left("podcrash0");
    fixture.cni.teardown("podcrash0").unwrap();
}

#[test]
fn teardown_after_a_crash_half_way_through_add_leaves_nothing_with_0_4_0_plugins() {
    let Some(fixture) = Fixture::new(6) else {
        return;
    };
    fixture.write_conflist_of_version("0.4.0", &format!("{PORTMAP}{FIREWALL}"));
    simulate_crash(&fixture, "podcrash2", 2);
    assert_eq!(allocated_ips(&fixture.ipam_dir()).len(), 1);
    assert!(iptables_nat().contains("podcrash2"));
    assert_ne!(veths(), "");
    fixture.cni.teardown("podcrash2").unwrap();
    fixture.assert_nothing_left("podcrash2");
    fixture.cni.teardown("podcrash2").unwrap();
}

#[test]
fn teardown_without_any_record_is_fine() {
    let Some(fixture) = Fixture::new(7) else {
        return;
    };
    fixture.cni.teardown("neverseen").unwrap();
    fixture.assert_nothing_left("neverseen");
}

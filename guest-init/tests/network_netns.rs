//! The agent's network configuration against a real kernel: a thread moves into a network
//! namespace of its own (gone when the thread ends), makes a veth pair with a known MAC,
//! runs `configure` twice over netlink (the second time finding the NIC by the MAC it
//! was given) and checks the result with `ip`. Needs root (or
//! CAP_SYS_ADMIN and CAP_NET_ADMIN) and iproute2; skipped otherwise.

use std::net::IpAddr;
use std::process::Command;

use vpod_init::agent::network::{
    configure, InterfaceConfig, MacAddress, NetworkConfig, RouteConfig, Rtnetlink,
};

const MAC: MacAddress = MacAddress([0x02, 0x56, 0x50, 0x4f, 0x44, 0x01]);
/// The address the NIC is to take (the CNI interface's, in a pod).
const NEW_MAC: MacAddress = MacAddress([0x3a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]);

/// `ip ARGS` in the calling thread's namespace (a child inherits the forking thread's).
fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(output.status.success(), "ip {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn route(destination: &str, gateway: Option<&str>) -> RouteConfig {
    RouteConfig {
        destination: destination.parse().unwrap(),
        gateway: gateway.map(|g| g.parse::<IpAddr>().unwrap()),
        interface: "eth0".into(),
    }
}

/// A veth pair, `ip` making it: the kernel's name for a NIC it just found on our side, and
/// the peer up (so ours can carry routes once up).
fn make_veth() {
    let mac = MAC.to_string();
    ip(&[
        "link", "add", "enp0s9", "address", &mac, "type", "veth", "peer", "name", "peer0",
    ]);
    ip(&["link", "set", "peer0", "up"]);
}

fn in_new_netns() {
    // SAFETY: unshare with a flag only; it changes this thread's namespace alone.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "skipped: cannot make a network namespace: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    make_veth();
    runtime.block_on(async {
        let config = NetworkConfig {
            interfaces: vec![InterfaceConfig {
                mac: MAC,
                new_mac: Some(NEW_MAC),
                name: "eth0".into(),
                mtu: Some(1400),
                addresses: vec![
                    "10.88.0.5/16".parse().unwrap(),
                    "fd00::5/64".parse().unwrap(),
                ],
            }],
            routes: vec![
                route("0.0.0.0/0", Some("10.88.0.1")),
                // A gateway outside the subnet: reached by a host route added first.
                route("192.168.7.0/24", Some("10.99.0.1")),
                route("10.2.0.0/16", None),
                route("::/0", Some("fd00::1")),
            ],
        };
        let ops = Rtnetlink::connect().unwrap();
        configure(&ops, &config).await.expect("configured");
        configure(&ops, &config)
            .await
            .expect("configured again, unchanged");
    });

    let lo = ip(&["-o", "link", "show", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    let link = ip(&["-o", "link", "show", "eth0"]);
    assert!(link.contains(",UP"), "{link}");
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(link.contains("link/ether 3a:1b:2c:3d:4e:5f"), "{link}");
    assert!(!ip(&["-o", "link"]).contains("enp0s9"));
    let addresses = ip(&["-o", "addr", "show", "dev", "eth0"]);
    assert!(addresses.contains("inet 10.88.0.5/16"), "{addresses}");
    // Serving at once, without duplicate address detection.
    let v6 = addresses.lines().find(|l| l.contains("inet6 fd00::5/64"));
    assert!(v6.is_some_and(|l| !l.contains("tentative")), "{addresses}");
    let v4 = ip(&["-4", "route", "show"]);
    for expected in [
        "default via 10.88.0.1 dev eth0",
        "10.2.0.0/16 dev eth0 proto static scope link",
        "10.88.0.0/16 dev eth0 proto kernel scope link src 10.88.0.5",
        "10.99.0.1 dev eth0 proto static scope link",
        "192.168.7.0/24 via 10.99.0.1 dev eth0",
    ] {
        assert!(v4.contains(expected), "{expected:?} not in\n{v4}");
    }
    let host_routes = v4.lines().filter(|l| l.starts_with("10.99.0.1 "));
    assert_eq!(host_routes.count(), 1, "{v4}");
    let v6 = ip(&["-6", "route", "show"]);
    assert!(v6.contains("default via fd00::1 dev eth0"), "{v6}");
}

#[test]
fn a_veth_in_a_throwaway_netns_is_configured_twice_to_the_same_state() {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipped: needs iproute2's ip");
        return;
    }
    // A thread of its own: the namespace goes with it, and no other test runs in it.
    std::thread::spawn(in_new_netns)
        .join()
        .expect("the netns thread");
}

//! The steps of [`configure`] against a fake kernel that records them.

use std::sync::Mutex;

use super::*;

/// A kernel with some links that applies what it is asked and remembers addresses and
/// routes, answering EEXIST for duplicates as the real one does.
#[derive(Default)]
struct FakeKernel {
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    links: Vec<Link>,
    addresses: Vec<(u32, IpPrefix)>,
    routes: Vec<RouteEntry>,
    /// Every change, in order, as text.
    log: Vec<String>,
}

impl FakeKernel {
    fn with_links(links: Vec<Link>) -> FakeKernel {
        let kernel = FakeKernel::default();
        kernel.state.lock().unwrap().links = links;
        kernel
    }

    fn log(&self) -> Vec<String> {
        std::mem::take(&mut self.state.lock().unwrap().log)
    }
}

impl LinkOps for FakeKernel {
    async fn links(&self) -> io::Result<Vec<Link>> {
        Ok(self.state.lock().unwrap().links.clone())
    }

    async fn set_link(&self, index: u32, change: LinkChange) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        state.log.push(format!("set {index} {change:?}"));
        let link = state
            .links
            .iter_mut()
            .find(|l| l.index == index)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?;
        if let Some(name) = change.name {
            if link.up {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            link.name = name;
        }
        if let Some(mac) = change.mac {
            if link.up {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            link.mac = Some(mac);
        }
        link.mtu = change.mtu.unwrap_or(link.mtu);
        link.up = change.up.unwrap_or(link.up);
        Ok(())
    }

    async fn add_address(&self, index: u32, address: IpPrefix) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        state.log.push(format!("address {index} {address}"));
        if state.addresses.contains(&(index, address)) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        state.addresses.push((index, address));
        Ok(())
    }

    async fn add_route(&self, route: RouteEntry) -> io::Result<()> {
        let mut state = self.state.lock().unwrap();
        let via = route
            .gateway
            .map(|g| format!(" via {g}"))
            .unwrap_or_default();
        state.log.push(format!(
            "route {}{via} dev {}",
            route.destination, route.index
        ));
        if state.routes.contains(&route) {
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        state.routes.push(route);
        Ok(())
    }
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

const MAC: MacAddress = MacAddress([2, 0, 0, 0, 0, 1]);

fn lo(up: bool) -> Link {
    Link {
        index: 1,
        name: "lo".into(),
        mac: None,
        mtu: 65536,
        up,
    }
}

fn nic(index: u32, name: &str, mac: MacAddress) -> Link {
    Link {
        index,
        name: name.into(),
        mac: Some(mac),
        mtu: 1500,
        up: false,
    }
}

fn prefix(text: &str) -> IpPrefix {
    text.parse().unwrap()
}

fn eth0(addresses: &[&str]) -> InterfaceConfig {
    InterfaceConfig {
        mac: MAC,
        new_mac: None,
        name: "eth0".into(),
        mtu: Some(1450),
        addresses: addresses.iter().map(|a| prefix(a)).collect(),
    }
}

fn route(destination: &str, gateway: Option<&str>) -> RouteConfig {
    RouteConfig {
        destination: prefix(destination),
        gateway: gateway.map(|g| g.parse().unwrap()),
        interface: "eth0".into(),
    }
}

#[test]
fn a_nic_is_renamed_sized_brought_up_addressed_then_routed() {
    let kernel = FakeKernel::with_links(vec![lo(false), nic(2, "enp0s1", MAC)]);
    let config = NetworkConfig {
        interfaces: vec![eth0(&["10.88.0.5/16", "fd00::5/64"])],
        routes: vec![
            route("0.0.0.0/0", Some("10.88.0.1")),
            route("::/0", Some("fd00::1")),
        ],
    };
    block_on(configure(&kernel, &config)).unwrap();
    assert_eq!(
        kernel.log(),
        [
            "set 1 LinkChange { name: None, mac: None, mtu: None, up: Some(true) }",
            "set 2 LinkChange { name: Some(\"eth0\"), mac: None, mtu: None, up: None }",
            "set 2 LinkChange { name: None, mac: None, mtu: Some(1450), up: None }",
            "set 2 LinkChange { name: None, mac: None, mtu: None, up: Some(true) }",
            "address 2 10.88.0.5/16",
            "address 2 fd00::5/64",
            "route 0.0.0.0/0 via 10.88.0.1 dev 2",
            "route ::/0 via fd00::1 dev 2",
        ]
    );
}

#[test]
fn configuring_twice_changes_nothing_the_second_time() {
    let kernel = FakeKernel::with_links(vec![lo(false), nic(2, "eth0", MAC)]);
    let config = NetworkConfig {
        interfaces: vec![eth0(&["10.1.0.5/32"])],
        routes: vec![route("0.0.0.0/0", Some("10.1.0.1"))],
    };
    block_on(configure(&kernel, &config)).unwrap();
    kernel.log();
    block_on(configure(&kernel, &config)).unwrap();
    // Only the additions are tried again, and their EEXIST is success.
    assert_eq!(
        kernel.log(),
        [
            "address 2 10.1.0.5/32",
            "route 10.1.0.1/32 dev 2",
            "route 0.0.0.0/0 via 10.1.0.1 dev 2",
        ]
    );
    assert_eq!(kernel.state.lock().unwrap().routes.len(), 2);
}

#[test]
fn a_gateway_outside_the_subnets_gets_one_on_link_route_first() {
    let kernel = FakeKernel::with_links(vec![lo(true), nic(3, "eth0", MAC)]);
    let config = NetworkConfig {
        interfaces: vec![eth0(&["10.1.0.5/32", "fd00::5/64"])],
        routes: vec![
            route("0.0.0.0/0", Some("169.254.1.1")),
            route("10.96.0.0/12", Some("169.254.1.1")),
            route("10.2.0.0/16", None),
            // Link-local and in-subnet IPv6 gateways need no host route.
            route("::/0", Some("fe80::1")),
            route("fd01::/64", Some("fd00::1")),
        ],
    };
    block_on(configure(&kernel, &config)).unwrap();
    let routes: Vec<String> = kernel
        .log()
        .into_iter()
        .filter(|line| line.starts_with("route"))
        .collect();
    assert_eq!(
        routes,
        [
            "route 169.254.1.1/32 dev 3",
            "route 0.0.0.0/0 via 169.254.1.1 dev 3",
            "route 10.96.0.0/12 via 169.254.1.1 dev 3",
            "route 10.2.0.0/16 dev 3",
            "route ::/0 via fe80::1 dev 3",
            "route fd01::/64 via fd00::1 dev 3",
        ]
    );
}

#[test]
fn a_nic_takes_its_new_mac_while_down_and_is_found_by_it_the_second_time() {
    let cni_mac = MacAddress([0x3a, 0x1b, 0, 0, 0, 7]);
    let mut booted = nic(2, "eth0", MAC);
    booted.up = true;
    let kernel = FakeKernel::with_links(vec![lo(true), booted]);
    let mut interface = eth0(&["10.88.0.5/16"]);
    interface.mtu = None;
    interface.new_mac = Some(cni_mac);
    let config = NetworkConfig {
        interfaces: vec![interface],
        routes: vec![],
    };
    block_on(configure(&kernel, &config)).unwrap();
    assert_eq!(
        kernel.log(),
        [
            "set 2 LinkChange { name: None, mac: None, mtu: None, up: Some(false) }",
            "set 2 LinkChange { name: None, mac: Some(MacAddress([58, 27, 0, 0, 0, 7])), mtu: None, up: None }",
            "set 2 LinkChange { name: None, mac: None, mtu: None, up: Some(true) }",
            "address 2 10.88.0.5/16",
        ]
    );
    assert_eq!(kernel.state.lock().unwrap().links[1].mac, Some(cni_mac));
    block_on(configure(&kernel, &config)).unwrap();
    assert_eq!(kernel.log(), ["address 2 10.88.0.5/16"]);
}

#[test]
fn an_up_nic_is_taken_down_to_be_renamed() {
    let mut up = nic(2, "eth1", MAC);
    up.up = true;
    let kernel = FakeKernel::with_links(vec![lo(true), up]);
    let mut interface = eth0(&[]);
    interface.mtu = None;
    let config = NetworkConfig {
        interfaces: vec![interface],
        routes: vec![],
    };
    block_on(configure(&kernel, &config)).unwrap();
    assert_eq!(
        kernel.log(),
        [
            "set 2 LinkChange { name: None, mac: None, mtu: None, up: Some(false) }",
            "set 2 LinkChange { name: Some(\"eth0\"), mac: None, mtu: None, up: None }",
            "set 2 LinkChange { name: None, mac: None, mtu: None, up: Some(true) }",
        ]
    );
}

#[test]
fn an_unknown_mac_changes_nothing_and_names_the_nics_there_are() {
    let other = MacAddress([2, 0, 0, 0, 0, 9]);
    let kernel = FakeKernel::with_links(vec![lo(true), nic(2, "eth0", MAC)]);
    let config = NetworkConfig {
        interfaces: vec![
            eth0(&["10.88.0.5/16"]),
            InterfaceConfig {
                mac: other,
                new_mac: None,
                name: "eth1".into(),
                mtu: None,
                addresses: vec![],
            },
        ],
        routes: vec![],
    };
    let e = block_on(configure(&kernel, &config)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no network interface has the MAC address 02:00:00:00:00:09 (the guest has: eth0 02:00:00:00:00:01)"
    );
    assert!(kernel.log().is_empty());
}

#[test]
fn two_nics_with_one_mac_or_a_name_in_use_are_refused() {
    let kernel = FakeKernel::with_links(vec![lo(true), nic(2, "eth0", MAC), nic(3, "eth1", MAC)]);
    let config = NetworkConfig {
        interfaces: vec![eth0(&[])],
        routes: vec![],
    };
    let e = block_on(configure(&kernel, &config)).unwrap_err();
    assert!(matches!(e, NetworkError::AmbiguousMac(MAC)), "{e}");

    let other = MacAddress([2, 0, 0, 0, 0, 9]);
    let kernel = FakeKernel::with_links(vec![lo(true), nic(2, "eth0", other), nic(3, "eth1", MAC)]);
    let e = block_on(configure(&kernel, &config)).unwrap_err();
    assert!(matches!(e, NetworkError::NameTaken { .. }), "{e}");
    assert!(kernel.log().is_empty());
}

#[test]
fn a_kernel_refusal_names_the_step() {
    // No loopback up needed; the route's EEXIST is fine but ENETUNREACH is not.
    struct Unreachable(FakeKernel);
    impl LinkOps for Unreachable {
        async fn links(&self) -> io::Result<Vec<Link>> {
            self.0.links().await
        }
        async fn set_link(&self, index: u32, change: LinkChange) -> io::Result<()> {
            self.0.set_link(index, change).await
        }
        async fn add_address(&self, index: u32, address: IpPrefix) -> io::Result<()> {
            self.0.add_address(index, address).await
        }
        async fn add_route(&self, _: RouteEntry) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ENETUNREACH))
        }
    }
    let kernel = Unreachable(FakeKernel::with_links(vec![lo(true), nic(2, "eth0", MAC)]));
    let config = NetworkConfig {
        interfaces: vec![eth0(&["10.88.0.5/16"])],
        routes: vec![route("10.96.0.0/12", Some("10.88.0.1"))],
    };
    let e = block_on(configure(&kernel, &config)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "could not add the route 10.96.0.0/12 via 10.88.0.1 dev eth0"
    );
}

#[test]
fn without_a_loopback_interface_nothing_is_configured() {
    let kernel = FakeKernel::with_links(vec![nic(2, "eth0", MAC)]);
    let e = block_on(bring_up_loopback(&kernel)).unwrap_err();
    assert!(matches!(e, NetworkError::NoLoopback));
    let kernel = FakeKernel::with_links(vec![lo(false)]);
    block_on(bring_up_loopback(&kernel)).unwrap();
    assert_eq!(
        kernel.log(),
        ["set 1 LinkChange { name: None, mac: None, mtu: None, up: Some(true) }"]
    );
}

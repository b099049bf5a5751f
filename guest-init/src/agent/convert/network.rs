//! ConfigureNetworkRequest to a checked [`NetworkConfig`], and [`NetworkError`] to a status.
//! The host is not trusted: every field is parsed and bounded here, so the kernel sees only
//! well-formed requests.

use std::collections::HashSet;
use std::net::IpAddr;

use tonic::Status;
use vpod_proto::{error_chain, v1};

use super::{invalid, FieldError};
use crate::agent::network::{
    valid_interface_name, InterfaceConfig, IpPrefix, MacAddress, NetworkConfig, NetworkError,
    RouteConfig,
};

/// More than a pod's VM gets (the VMM's slots are fewer).
pub const MAX_INTERFACES: usize = 8;
pub const MAX_ADDRESSES: usize = 16;
pub const MAX_ROUTES: usize = 64;
/// IPv4's minimum to the largest the kernel's u16 path MTU allows.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

pub fn network_request(request: v1::ConfigureNetworkRequest) -> Result<NetworkConfig, FieldError> {
    if request.interfaces.len() > MAX_INTERFACES {
        return Err(invalid(
            "interfaces",
            format!(
                "{} interfaces, at most {MAX_INTERFACES}",
                request.interfaces.len()
            ),
        ));
    }
    if request.routes.len() > MAX_ROUTES {
        return Err(invalid(
            "routes",
            format!("{} routes, at most {MAX_ROUTES}", request.routes.len()),
        ));
    }
    let mut names = HashSet::new();
    let mut macs = HashSet::new();
    let mut interfaces = Vec::with_capacity(request.interfaces.len());
    for interface in &request.interfaces {
        let interface = interface_config(interface)?;
        if !names.insert(interface.name.clone()) {
            return Err(invalid(
                "interfaces.name",
                format!("{:?} is given twice", interface.name),
            ));
        }
        if !macs.insert(interface.mac) {
            return Err(invalid(
                "interfaces.mac",
                format!("{} is given twice", interface.mac),
            ));
        }
        interfaces.push(interface);
    }
    let routes = request
        .routes
        .iter()
        .map(|route| route_config(route, &names))
        .collect::<Result<_, _>>()?;
    Ok(NetworkConfig { interfaces, routes })
}

fn interface_config(interface: &v1::Interface) -> Result<InterfaceConfig, FieldError> {
    let mac = unicast_mac(&interface.mac, "interfaces.mac")?;
    let new_mac = match interface.new_mac.as_str() {
        "" => None,
        text => Some(unicast_mac(text, "interfaces.new_mac")?),
    };
    if !valid_interface_name(&interface.name) {
        return Err(invalid(
            "interfaces.name",
            format!(
                "{:?} is not 1 to 15 bytes without '/', ':' or whitespace",
                interface.name
            ),
        ));
    }
    let mtu = match interface.mtu {
        0 => None,
        mtu if MTU_RANGE.contains(&mtu) => Some(mtu),
        mtu => {
            return Err(invalid(
                "interfaces.mtu",
                format!("{mtu} is not {}..{}", MTU_RANGE.start(), MTU_RANGE.end()),
            ))
        }
    };
    if interface.addresses.len() > MAX_ADDRESSES {
        return Err(invalid(
            "interfaces.addresses",
            format!(
                "{} has {} addresses, at most {MAX_ADDRESSES}",
                interface.name,
                interface.addresses.len()
            ),
        ));
    }
    let addresses = interface
        .addresses
        .iter()
        .map(|text| {
            let address = prefix(text, "interfaces.addresses")?;
            if !is_unicast(address.address) {
                return Err(invalid(
                    "interfaces.addresses",
                    format!("{text:?} is not a unicast address"),
                ));
            }
            Ok(address)
        })
        .collect::<Result<_, _>>()?;
    Ok(InterfaceConfig {
        mac,
        new_mac,
        name: interface.name.clone(),
        mtu,
        addresses,
    })
}

/// A NIC's own address: unicast (the group bit clear) and not all zeros.
fn unicast_mac(text: &str, field: &'static str) -> Result<MacAddress, FieldError> {
    let mac: MacAddress = text.parse().map_err(|e| invalid(field, format!("{e}")))?;
    if mac.0[0] & 1 != 0 || mac.0 == [0; 6] {
        return Err(invalid(field, format!("{mac} is not a unicast address")));
    }
    Ok(mac)
}

fn route_config(route: &v1::Route, names: &HashSet<String>) -> Result<RouteConfig, FieldError> {
    let destination = prefix(&route.destination, "routes.destination")?;
    if !destination.is_network() {
        return Err(invalid(
            "routes.destination",
            format!(
                "{:?} has bits set past its prefix length",
                route.destination
            ),
        ));
    }
    let gateway = if route.gateway.is_empty() {
        None
    } else {
        let gateway: IpAddr = route.gateway.parse().map_err(|_| {
            invalid(
                "routes.gateway",
                format!("{:?} is not an IP address", route.gateway),
            )
        })?;
        if !is_unicast(gateway) {
            return Err(invalid(
                "routes.gateway",
                format!("{gateway} is not a unicast address"),
            ));
        }
        if gateway.is_ipv4() != destination.address.is_ipv4() {
            return Err(invalid(
                "routes.gateway",
                format!("{gateway} is not of the family of {destination}"),
            ));
        }
        Some(gateway)
    };
    if !names.contains(&route.interface) {
        return Err(invalid(
            "routes.interface",
            format!(
                "{:?} is not one of the request's interfaces",
                route.interface
            ),
        ));
    }
    Ok(RouteConfig {
        destination,
        gateway,
        interface: route.interface.clone(),
    })
}

fn prefix(text: &str, field: &'static str) -> Result<IpPrefix, FieldError> {
    text.parse().map_err(|e| invalid(field, format!("{e}")))
}

fn is_unicast(address: IpAddr) -> bool {
    !address.is_unspecified() && !address.is_multicast() && address != IpAddr::from([255; 4])
}

impl From<NetworkError> for Status {
    fn from(e: NetworkError) -> Self {
        let message = error_chain(&e);
        match e {
            NetworkError::NoSuchNic { .. }
            | NetworkError::AmbiguousMac(_)
            | NetworkError::NameTaken { .. }
            | NetworkError::UnknownInterface(_) => Status::invalid_argument(message),
            // The kernel refused an address or route the request asked for.
            NetworkError::Address { ref source, .. } | NetworkError::Route { ref source, .. }
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EINVAL | libc::ENETUNREACH | libc::EADDRNOTAVAIL)
                ) =>
            {
                Status::invalid_argument(message)
            }
            _ => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn request() -> v1::ConfigureNetworkRequest {
        v1::ConfigureNetworkRequest {
            interfaces: vec![v1::Interface {
                mac: "02:00:00:00:00:01".into(),
                new_mac: String::new(),
                name: "eth0".into(),
                mtu: 1450,
                addresses: vec!["10.88.0.5/16".into(), "fd00::5/64".into()],
            }],
            routes: vec![
                v1::Route {
                    destination: "0.0.0.0/0".into(),
                    gateway: "10.88.0.1".into(),
                    interface: "eth0".into(),
                },
                v1::Route {
                    destination: "fd01::/64".into(),
                    gateway: String::new(),
                    interface: "eth0".into(),
                },
            ],
        }
    }

    #[test]
    fn a_request_converts_to_the_network_config() {
        let config = network_request(request()).unwrap();
        assert_eq!(config.interfaces.len(), 1);
        let eth0 = &config.interfaces[0];
        assert_eq!(eth0.mac, MacAddress([2, 0, 0, 0, 0, 1]));
        assert_eq!(eth0.new_mac, None);
        assert_eq!(eth0.mtu, Some(1450));
        assert_eq!(eth0.addresses[1].to_string(), "fd00::5/64");
        assert_eq!(config.routes[0].gateway, Some([10, 88, 0, 1].into()));
        assert_eq!(config.routes[0].destination.len, 0);
        assert_eq!(config.routes[1].gateway, None);
        let mut moved = request();
        moved.interfaces[0].new_mac = "3A:1b:00:00:00:07".into();
        assert_eq!(
            network_request(moved).unwrap().interfaces[0].new_mac,
            Some(MacAddress([0x3a, 0x1b, 0, 0, 0, 7]))
        );
        let mut no_mtu = request();
        no_mtu.interfaces[0].mtu = 0;
        assert_eq!(network_request(no_mtu).unwrap().interfaces[0].mtu, None);
        assert_eq!(
            network_request(v1::ConfigureNetworkRequest::default()).unwrap(),
            NetworkConfig::default()
        );
    }

    #[test]
    fn bad_fields_are_invalid_arguments_that_name_the_field() {
        type Change = Box<dyn Fn(&mut v1::ConfigureNetworkRequest)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "interfaces.mac",
                Box::new(|r| r.interfaces[0].mac = "02:00:00:00:00".into()),
            ),
            (
                "interfaces.mac",
                Box::new(|r| r.interfaces[0].mac = "01:00:5e:00:00:01".into()),
            ),
            (
                "interfaces.mac",
                Box::new(|r| r.interfaces[0].mac = "00:00:00:00:00:00".into()),
            ),
            (
                "interfaces.new_mac",
                Box::new(|r| r.interfaces[0].new_mac = "3a:00:00:00:07".into()),
            ),
            (
                "interfaces.new_mac",
                Box::new(|r| r.interfaces[0].new_mac = "ff:ff:ff:ff:ff:ff".into()),
            ),
            (
                "interfaces.name",
                Box::new(|r| r.interfaces[0].name = String::new()),
            ),
            (
                "interfaces.name",
                Box::new(|r| r.interfaces[0].name = "a/b".into()),
            ),
            (
                "interfaces.name",
                Box::new(|r| r.interfaces[0].name = "e".repeat(16)),
            ),
            ("interfaces.mtu", Box::new(|r| r.interfaces[0].mtu = 67)),
            ("interfaces.mtu", Box::new(|r| r.interfaces[0].mtu = 65536)),
            (
                "interfaces.addresses",
                Box::new(|r| r.interfaces[0].addresses = vec!["10.88.0.5".into()]),
            ),
            (
                "interfaces.addresses",
                Box::new(|r| r.interfaces[0].addresses = vec!["10.88.0.5/33".into()]),
            ),
            (
                "interfaces.addresses",
                Box::new(|r| r.interfaces[0].addresses = vec!["0.0.0.0/0".into()]),
            ),
            (
                "interfaces.addresses",
                Box::new(|r| r.interfaces[0].addresses = vec!["ff02::1/64".into()]),
            ),
            (
                "interfaces.addresses",
                Box::new(|r| {
                    r.interfaces[0].addresses = vec!["10.0.0.1/8".into(); MAX_ADDRESSES + 1]
                }),
            ),
            (
                "interfaces",
                Box::new(|r| r.interfaces = vec![r.interfaces[0].clone(); MAX_INTERFACES + 1]),
            ),
            (
                "interfaces.name",
                Box::new(|r| {
                    let mut second = r.interfaces[0].clone();
                    second.mac = "02:00:00:00:00:02".into();
                    r.interfaces.push(second);
                }),
            ),
            (
                "interfaces.mac",
                Box::new(|r| {
                    let mut second = r.interfaces[0].clone();
                    second.name = "eth1".into();
                    r.interfaces.push(second);
                }),
            ),
            (
                "routes",
                Box::new(|r| r.routes = vec![r.routes[0].clone(); MAX_ROUTES + 1]),
            ),
            (
                "routes.destination",
                Box::new(|r| r.routes[0].destination = "default".into()),
            ),
            (
                "routes.destination",
                Box::new(|r| r.routes[0].destination = "10.96.0.1/12".into()),
            ),
            (
                "routes.gateway",
                Box::new(|r| r.routes[0].gateway = "10.88.0".into()),
            ),
            (
                "routes.gateway",
                Box::new(|r| r.routes[0].gateway = "fd00::1".into()),
            ),
            (
                "routes.gateway",
                Box::new(|r| r.routes[0].gateway = "0.0.0.0".into()),
            ),
            (
                "routes.interface",
                Box::new(|r| r.routes[0].interface = "eth1".into()),
            ),
        ];
        for (field, change) in cases {
            let mut r = request();
            change(&mut r);
            let e = network_request(r).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            let status = Status::from(e);
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(
                status.message().starts_with("invalid "),
                "{}",
                status.message()
            );
        }
    }

    #[test]
    fn network_errors_map_to_status_codes() {
        let code = |e: NetworkError| Status::from(e).code();
        let mac = MacAddress([2, 0, 0, 0, 0, 1]);
        assert_eq!(
            code(NetworkError::NoSuchNic {
                mac,
                available: "no NIC".into()
            }),
            Code::InvalidArgument
        );
        let os = std::io::Error::from_raw_os_error;
        assert_eq!(
            code(NetworkError::Route {
                route: "0.0.0.0/0 via 10.0.0.1 dev eth0".into(),
                source: os(libc::ENETUNREACH)
            }),
            Code::InvalidArgument
        );
        assert_eq!(
            code(NetworkError::Link {
                action: "bring up eth0".into(),
                source: os(libc::EPERM)
            }),
            Code::Internal
        );
        let status = Status::from(NetworkError::Link {
            action: "bring up eth0".into(),
            source: os(libc::EPERM),
        });
        assert!(status.message().starts_with("could not bring up eth0: "));
    }
}

//! The pod's network inside the guest (ConfigureNetwork): `lo` up, then each NIC the host
//! names by its MAC address renamed, given its MTU, brought up and addressed, then the
//! routes.
//!
//! The kernel is reached through [`LinkOps`]: netlink in the guest ([`Rtnetlink`]), a
//! recording fake in the tests, so the order of the steps and what counts as already done
//! are tested without privileges. A second call with the same configuration finds the
//! names, MTUs and up flags as asked and every address and route already there (EEXIST),
//! and changes nothing.

mod config;
mod netlink;

use std::future::Future;
use std::io;
use std::net::IpAddr;

pub use config::{
    valid_interface_name, InterfaceConfig, IpPrefix, MacAddress, NetworkConfig, ParseError,
    RouteConfig,
};
pub use netlink::Rtnetlink;

/// The loopback interface every guest has.
pub const LOOPBACK: &str = "lo";

/// Why the network could not be configured as asked.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("could not open a netlink socket")]
    Connect(#[source] io::Error),
    #[error("could not list the network interfaces")]
    ListLinks(#[source] io::Error),
    #[error("the guest has no loopback interface")]
    NoLoopback,
    #[error("no network interface has the MAC address {mac} (the guest has: {available})")]
    NoSuchNic { mac: MacAddress, available: String },
    #[error("more than one network interface has the MAC address {0}")]
    AmbiguousMac(MacAddress),
    #[error("cannot name the interface with the MAC address {mac} {name:?}: another interface has that name")]
    NameTaken { name: String, mac: MacAddress },
    #[error("a route names the interface {0:?}, which is not configured")]
    UnknownInterface(String),
    #[error("could not {action}")]
    Link {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("could not add the address {address} to {interface}")]
    Address {
        address: IpPrefix,
        interface: String,
        #[source]
        source: io::Error,
    },
    #[error("could not add the route {route}")]
    Route {
        route: String,
        #[source]
        source: io::Error,
    },
}

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// None for interfaces without a hardware address.
    pub mac: Option<MacAddress>,
    pub mtu: u32,
    pub up: bool,
}

/// One change to a link; what is None stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub name: Option<String>,
    pub mac: Option<MacAddress>,
    pub mtu: Option<u32>,
    pub up: Option<bool>,
}

/// A route to add to the main table: through `gateway`, or on the link (scope link) when
/// there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry {
    pub destination: IpPrefix,
    pub gateway: Option<IpAddr>,
    /// The interface's index.
    pub index: u32,
}

/// The kernel's side: what configuring the network needs of rtnetlink.
pub trait LinkOps {
    fn links(&self) -> impl Future<Output = io::Result<Vec<Link>>> + Send;
    fn set_link(
        &self,
        index: u32,
        change: LinkChange,
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// Fails with EEXIST when the interface already has the address.
    fn add_address(
        &self,
        index: u32,
        address: IpPrefix,
    ) -> impl Future<Output = io::Result<()>> + Send;
    /// Fails with EEXIST when the table already has the route.
    fn add_route(&self, route: RouteEntry) -> impl Future<Output = io::Result<()>> + Send;
}

/// Brings `lo` up; every pod needs it, whether or not it gets a NIC.
pub async fn bring_up_loopback(ops: &impl LinkOps) -> Result<(), NetworkError> {
    let links = ops.links().await.map_err(NetworkError::ListLinks)?;
    loopback_up(ops, &links).await
}

/// Configures the guest's network as `config` asks. Every NIC is found before any is
/// changed, so an unknown MAC address changes nothing.
pub async fn configure(ops: &impl LinkOps, config: &NetworkConfig) -> Result<(), NetworkError> {
    let links = ops.links().await.map_err(NetworkError::ListLinks)?;
    loopback_up(ops, &links).await?;
    let nics = config
        .interfaces
        .iter()
        .map(|interface| find_nic(&links, interface))
        .collect::<Result<Vec<_>, _>>()?;
    for (interface, link) in config.interfaces.iter().zip(&nics) {
        set_up_interface(ops, interface, link).await?;
    }
    for route in routes_to_add(config, &nics)? {
        let described = describe(&route, config, &nics);
        ops.add_route(route)
            .await
            .or_else(already_there)
            .map_err(|source| NetworkError::Route {
                route: described,
                source,
            })?;
    }
    Ok(())
}

async fn loopback_up(ops: &impl LinkOps, links: &[Link]) -> Result<(), NetworkError> {
    let lo = links
        .iter()
        .find(|link| link.name == LOOPBACK)
        .ok_or(NetworkError::NoLoopback)?;
    if lo.up {
        return Ok(());
    }
    set_link(ops, lo.index, up(true), || format!("bring up {LOOPBACK}")).await
}

fn up(up: bool) -> LinkChange {
    LinkChange {
        up: Some(up),
        ..LinkChange::default()
    }
}

async fn set_link(
    ops: &impl LinkOps,
    index: u32,
    change: LinkChange,
    action: impl FnOnce() -> String,
) -> Result<(), NetworkError> {
    ops.set_link(index, change)
        .await
        .map_err(|source| NetworkError::Link {
            action: action(),
            source,
        })
}

/// The one link with the interface's MAC address (or the one it is to take), when no
/// other link has its name.
fn find_nic<'a>(links: &'a [Link], interface: &InterfaceConfig) -> Result<&'a Link, NetworkError> {
    let mac = interface.mac;
    let mut matching = links.iter().filter(|link| {
        link.mac == Some(mac) || (interface.new_mac.is_some() && link.mac == interface.new_mac)
    });
    let Some(link) = matching.next() else {
        let available: Vec<String> = links
            .iter()
            .filter(|link| link.name != LOOPBACK)
            .filter_map(|link| Some(format!("{} {}", link.name, link.mac?)))
            .collect();
        return Err(NetworkError::NoSuchNic {
            mac,
            available: if available.is_empty() {
                "no NIC".to_string()
            } else {
                available.join(", ")
            },
        });
    };
    if matching.next().is_some() {
        return Err(NetworkError::AmbiguousMac(mac));
    }
    if links
        .iter()
        .any(|other| other.name == interface.name && other.index != link.index)
    {
        return Err(NetworkError::NameTaken {
            name: interface.name.clone(),
            mac,
        });
    }
    Ok(link)
}

/// MAC address and name (the kernel changes either only on a link that is down), MTU,
/// up, then the addresses: IPv6 ones without duplicate address detection, so they serve
/// at once.
async fn set_up_interface(
    ops: &impl LinkOps,
    interface: &InterfaceConfig,
    link: &Link,
) -> Result<(), NetworkError> {
    let name = &interface.name;
    let mut is_up = link.up;
    let new_mac = interface.new_mac.filter(|&mac| link.mac != Some(mac));
    if (link.name != *name || new_mac.is_some()) && is_up {
        set_link(ops, link.index, up(false), || {
            format!("take down {}", link.name)
        })
        .await?;
        is_up = false;
    }
    if let Some(mac) = new_mac {
        let change = LinkChange {
            mac: Some(mac),
            ..LinkChange::default()
        };
        set_link(ops, link.index, change, || {
            format!("set the mac address of {} to {mac}", link.name)
        })
        .await?;
    }
    if link.name != *name {
        let rename = LinkChange {
            name: Some(name.clone()),
            ..LinkChange::default()
        };
        set_link(ops, link.index, rename, || {
            format!("rename {} to {name}", link.name)
        })
        .await?;
    }
    if let Some(mtu) = interface.mtu.filter(|&mtu| mtu != link.mtu) {
        let change = LinkChange {
            mtu: Some(mtu),
            ..LinkChange::default()
        };
        set_link(ops, link.index, change, || {
            format!("set the mtu of {name} to {mtu}")
        })
        .await?;
    }
    if !is_up {
        set_link(ops, link.index, up(true), || format!("bring up {name}")).await?;
    }
    for &address in &interface.addresses {
        ops.add_address(link.index, address)
            .await
            .or_else(already_there)
            .map_err(|source| NetworkError::Address {
                address,
                interface: name.clone(),
                source,
            })?;
    }
    Ok(())
}

/// The routes in the order they are added: each as asked, preceded (once) by a link-scope
/// host route to its gateway when the gateway is in none of the interface's subnets, as
/// CNI results with a /32 address and a gateway outside it need.
fn routes_to_add(config: &NetworkConfig, nics: &[&Link]) -> Result<Vec<RouteEntry>, NetworkError> {
    let mut entries = Vec::new();
    for route in &config.routes {
        let (interface, link) = config
            .interfaces
            .iter()
            .zip(nics)
            .find(|(interface, _)| interface.name == route.interface)
            .ok_or_else(|| NetworkError::UnknownInterface(route.interface.clone()))?;
        if let Some(gateway) = route.gateway {
            let connected = is_link_local(gateway)
                || interface.addresses.iter().any(|net| net.contains(gateway));
            let to_gateway = RouteEntry {
                destination: IpPrefix::host(gateway),
                gateway: None,
                index: link.index,
            };
            if !connected && !entries.contains(&to_gateway) {
                entries.push(to_gateway);
            }
        }
        entries.push(RouteEntry {
            destination: route.destination,
            gateway: route.gateway,
            index: link.index,
        });
    }
    Ok(entries)
}

/// IPv6 link-local gateways (fe80::/10) are on every link.
fn is_link_local(address: IpAddr) -> bool {
    matches!(address, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// "10.96.0.0/12 via 10.88.0.1 dev eth0", as `ip route` says it.
fn describe(route: &RouteEntry, config: &NetworkConfig, nics: &[&Link]) -> String {
    let name = config
        .interfaces
        .iter()
        .zip(nics)
        .find(|(_, link)| link.index == route.index)
        .map_or("?", |(interface, _)| interface.name.as_str());
    match route.gateway {
        Some(gateway) => format!("{} via {gateway} dev {name}", route.destination),
        None => format!("{} dev {name}", route.destination),
    }
}

fn already_there(e: io::Error) -> io::Result<()> {
    if e.raw_os_error() == Some(libc::EEXIST) {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests;

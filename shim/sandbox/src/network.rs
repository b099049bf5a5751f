//! A pod's network as the sandbox takes it from a front end: each NIC is a tap the host
//! already made (in the pod's network namespace, by CNI) and what the guest makes of its
//! end, plus the guest's routes. The sandbox hands each tap to the VMM as an inherited
//! descriptor and, once the agent answers, asks it to configure the guest to match.

use std::fmt;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

/// A NIC's hardware address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl fmt::Display for MacAddress {
    /// "02:00:00:00:00:01", as the VMM and the agent take it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An address with a prefix length: an interface's address in its subnet (10.88.0.5/16)
/// or a route's destination (10.96.0.0/12, 0.0.0.0/0 for the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    address: IpAddr,
    prefix_len: u8,
}

/// A prefix length longer than its address.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the prefix length {prefix_len} is too long for {address}")]
pub struct PrefixLengthError {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl IpPrefix {
    /// Fails when `prefix_len` is over 32 (IPv4) or 128 (IPv6).
    pub fn new(address: IpAddr, prefix_len: u8) -> Result<IpPrefix, PrefixLengthError> {
        let max = if address.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(PrefixLengthError {
                address,
                prefix_len,
            });
        }
        Ok(IpPrefix {
            address,
            prefix_len,
        })
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// One NIC as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInterface {
    /// The name the guest gives it, e.g. "eth0".
    pub name: String,
    /// The VMM gives the NIC this address; the guest finds it by it.
    pub mac: MacAddress,
    /// The address the guest NIC then takes, when not `mac`: the CNI interface's, for a
    /// NIC the VMM made before the plugins ran.
    pub new_mac: Option<MacAddress>,
    /// 0: the device's default (1500).
    pub mtu: u32,
    pub addresses: Vec<IpPrefix>,
}

/// A route in the guest's main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRoute {
    /// Without host bits set.
    pub destination: IpPrefix,
    /// None: the destination is on the interface's link. A gateway outside the
    /// interface's subnets is fine: the guest adds a link route to it first.
    pub gateway: Option<IpAddr>,
    /// The `name` of one of the pod's interfaces.
    pub interface: String,
}

/// A NIC of the pod: the host's tap and the guest's interface on it.
#[derive(Debug, Clone)]
pub struct Nic {
    /// A tap opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR. The VMM inherits a copy; the
    /// caller may close its own once [`crate::Sandbox::start`] returns.
    pub tap: Arc<OwnedFd>,
    pub interface: GuestInterface,
}

/// The pod's network: none by default (the guest still has `lo`).
#[derive(Debug, Clone, Default)]
pub struct GuestNetwork {
    /// At most 8, in the order the guest finds them.
    pub nics: Vec<Nic>,
    pub routes: Vec<GuestRoute>,
    /// The network namespace the taps are in (the pod's): a jailed VMM joins it rather than
    /// make an empty one of its own.
    pub netns: Option<PathBuf>,
}

impl GuestNetwork {
    /// Whether there is anything for the agent to configure.
    pub fn is_empty(&self) -> bool {
        self.nics.is_empty() && self.routes.is_empty()
    }
}

/// The guest's name for a pod's CNI interface: the same as inside the pod's namespace.
pub const POD_IFNAME: &str = vpod_network::POD_IFNAME;

/// Why a CNI result cannot become the guest's network.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuestNetworkError {
    #[error("the cni interface's mac {0:?} is not a mac address")]
    Mac(String),
    #[error("the cni result has a bad address or route")]
    Prefix(#[from] PrefixLengthError),
}

impl std::str::FromStr for MacAddress {
    type Err = GuestNetworkError;

    /// `aa:bb:cc:dd:ee:ff`, either case.
    fn from_str(text: &str) -> Result<MacAddress, GuestNetworkError> {
        let bad = || GuestNetworkError::Mac(text.to_owned());
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        match parts.next() {
            None => Ok(MacAddress(bytes)),
            Some(_) => Err(bad()),
        }
    }
}

impl TryFrom<vpod_network::PodNetwork> for GuestNetwork {
    type Error = GuestNetworkError;

    /// The pod's CNI network as the VM takes it: its tap for the VMM, and a guest `eth0`
    /// with the CNI interface's MAC, MTU, addresses and routes.
    fn try_from(network: vpod_network::PodNetwork) -> Result<GuestNetwork, GuestNetworkError> {
        let mac: MacAddress = network.mac.parse()?;
        let addresses = network
            .addresses
            .iter()
            .map(|a| IpPrefix::new(a.address, a.prefix_len))
            .collect::<Result<Vec<_>, _>>()?;
        let routes = network
            .routes
            .iter()
            .map(|r| {
                Ok(GuestRoute {
                    destination: IpPrefix::new(r.destination, r.prefix_len)?,
                    gateway: r.gateway,
                    interface: POD_IFNAME.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, GuestNetworkError>>()?;
        Ok(GuestNetwork {
            nics: vec![Nic {
                tap: Arc::new(network.tap),
                interface: GuestInterface {
                    name: POD_IFNAME.to_owned(),
                    mac,
                    new_mac: None,
                    mtu: network.mtu,
                    addresses,
                },
            }],
            routes,
            netns: Some(network.netns),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_exactly() {
        assert_eq!(
            "02:0a:ff:00:10:Ab".parse(),
            Ok(MacAddress([2, 10, 255, 0, 16, 0xab]))
        );
        for bad in [
            "",
            "02:0a:ff:00:10",
            "02:0a:ff:00:10:ab:01",
            "2:0a:ff:00:10:ab",
            "zz:0a:ff:00:10:ab",
        ] {
            assert_eq!(
                bad.parse::<MacAddress>(),
                Err(GuestNetworkError::Mac(bad.into()))
            );
        }
    }

    #[test]
    fn mac_addresses_print_as_the_vmm_and_the_agent_take_them() {
        let mac = MacAddress([0x02, 0xab, 0, 0, 0x0c, 1]);
        assert_eq!(mac.to_string(), "02:ab:00:00:0c:01");
    }

    #[test]
    fn a_prefix_longer_than_its_address_is_refused() {
        let v4: IpAddr = [10, 88, 0, 5].into();
        assert_eq!(IpPrefix::new(v4, 16).unwrap().to_string(), "10.88.0.5/16");
        assert_eq!(
            IpPrefix::new(v4, 33),
            Err(PrefixLengthError {
                address: v4,
                prefix_len: 33
            })
        );
        let v6: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(IpPrefix::new(v6, 128).unwrap().prefix_len(), 128);
        assert!(IpPrefix::new(v6, 129).is_err());
    }
}

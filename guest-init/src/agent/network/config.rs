//! What the host asks of the guest's network, as plain values: MAC addresses, address
//! prefixes, interfaces and routes, with the parsing of their text forms.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A NIC's hardware address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

/// Text that is not a MAC address or an address prefix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("{0:?} is not a MAC address like 02:00:00:00:00:01")]
    Mac(String),
    #[error("{0:?} is not an address with a prefix length like 10.88.0.5/16 or fd00::5/64")]
    Prefix(String),
    #[error("{0:?} has a prefix length over {1}")]
    PrefixLength(String, u8),
}

impl FromStr for MacAddress {
    type Err = ParseError;

    /// Six groups of two hex digits separated by ':', either case.
    fn from_str(text: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::Mac(text.to_string());
        let mut bytes = [0u8; 6];
        let mut groups = text.split(':');
        for byte in &mut bytes {
            let group = groups.next().ok_or_else(bad)?;
            // from_str_radix alone would take "+1".
            if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *byte = u8::from_str_radix(group, 16).map_err(|_| bad())?;
        }
        if groups.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddress(bytes))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// An address and a prefix length: an interface's address in its subnet ("10.88.0.5/16")
/// or a route's destination ("10.96.0.0/12").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    pub address: IpAddr,
    /// At most 32 for IPv4, 128 for IPv6 (parsing checks it).
    pub len: u8,
}

impl FromStr for IpPrefix {
    type Err = ParseError;

    /// "ADDRESS/LENGTH"; the length is required.
    fn from_str(text: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::Prefix(text.to_string());
        let (address, len) = text.split_once('/').ok_or_else(bad)?;
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let len: u8 = len.parse().map_err(|_| bad())?;
        let max = max_len(address);
        if len > max {
            return Err(ParseError::PrefixLength(text.to_string(), max));
        }
        Ok(IpPrefix { address, len })
    }
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

fn max_len(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

impl IpPrefix {
    /// The one-address prefix of `address` (/32 or /128).
    pub fn host(address: IpAddr) -> IpPrefix {
        IpPrefix {
            address,
            len: max_len(address),
        }
    }

    /// Whether `other` lies in this prefix (never across address families).
    pub fn contains(&self, other: IpAddr) -> bool {
        match (self.address, other) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// Whether the address has no bits set past the prefix length, as a route's
    /// destination must.
    pub fn is_network(&self) -> bool {
        match self.address {
            IpAddr::V4(ip) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(ip) & !mask == 0
            }
            IpAddr::V6(ip) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(ip) & !mask == 0
            }
        }
    }
}

/// One NIC: found by `mac`, given `new_mac`, renamed to `name`, given `mtu` and
/// `addresses`, brought up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceConfig {
    pub mac: MacAddress,
    /// None: keep `mac`. A NIC that already has it is found by it too (a repeated call).
    pub new_mac: Option<MacAddress>,
    pub name: String,
    /// None: keep the device's.
    pub mtu: Option<u32>,
    pub addresses: Vec<IpPrefix>,
}

/// A route in the main table through one of the configured interfaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub destination: IpPrefix,
    /// None: the destination is on the link.
    pub gateway: Option<IpAddr>,
    /// The `name` of one of the interfaces.
    pub interface: String,
}

/// The guest's network as the host asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkConfig {
    pub interfaces: Vec<InterfaceConfig>,
    pub routes: Vec<RouteConfig>,
}

/// Whether the kernel would take `name` as an interface name (`dev_valid_name`).
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b != b'/' && b != b':' && !b.is_ascii_whitespace() && b != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_in_either_case_and_print_lowercase() {
        let mac: MacAddress = "02:AB:00:00:0c:01".parse().unwrap();
        assert_eq!(mac, MacAddress([2, 0xab, 0, 0, 0x0c, 1]));
        assert_eq!(mac.to_string(), "02:ab:00:00:0c:01");
    }

    #[test]
    fn malformed_mac_addresses_are_refused() {
        for text in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02-00-00-00-00-01",
            "2:00:00:00:00:01",
            "02:00:00:00:00:0g",
            "02:00:00:00:00:+1",
            "020:0:00:00:00:01",
        ] {
            assert_eq!(
                text.parse::<MacAddress>(),
                Err(ParseError::Mac(text.to_string())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn prefixes_parse_for_both_families() {
        let v4: IpPrefix = "10.88.0.5/16".parse().unwrap();
        assert_eq!(v4.address, IpAddr::from([10, 88, 0, 5]));
        assert_eq!(v4.len, 16);
        let v6: IpPrefix = "fd00::5/64".parse().unwrap();
        assert_eq!(v6.to_string(), "fd00::5/64");
        assert_eq!("0.0.0.0/0".parse::<IpPrefix>().unwrap().len, 0);
        assert_eq!("::/0".parse::<IpPrefix>().unwrap().len, 0);
    }

    #[test]
    fn malformed_prefixes_are_refused() {
        for text in [
            "10.88.0.5",
            "10.88.0.5/",
            "10.88.0/16",
            "/16",
            "10.88.0.5/+1",
            "10.88.0.5/-1",
            "10.88.0.5/1000",
            "10.88.0.5/16/1",
            "fd00::5/ 64",
        ] {
            assert_eq!(
                text.parse::<IpPrefix>(),
                Err(ParseError::Prefix(text.to_string())),
                "{text:?}"
            );
        }
        assert_eq!(
            "10.0.0.1/33".parse::<IpPrefix>(),
            Err(ParseError::PrefixLength("10.0.0.1/33".into(), 32))
        );
        assert_eq!(
            "fd00::1/129".parse::<IpPrefix>(),
            Err(ParseError::PrefixLength("fd00::1/129".into(), 128))
        );
    }

    #[test]
    fn a_prefix_contains_its_subnet_and_nothing_of_the_other_family() {
        let net: IpPrefix = "10.88.0.5/16".parse().unwrap();
        assert!(net.contains([10, 88, 255, 1].into()));
        assert!(!net.contains([10, 89, 0, 1].into()));
        assert!(!net.contains("::ffff:10.88.0.1".parse().unwrap()));
        let all: IpPrefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains([192, 0, 2, 1].into()));
        let host: IpPrefix = "10.1.0.5/32".parse().unwrap();
        assert!(host.contains([10, 1, 0, 5].into()));
        assert!(!host.contains([10, 1, 0, 1].into()));
        let v6: IpPrefix = "fd00::5/64".parse().unwrap();
        assert!(v6.contains("fd00::1".parse().unwrap()));
        assert!(!v6.contains("fd00:0:0:1::1".parse().unwrap()));
    }

    #[test]
    fn only_a_prefix_without_host_bits_is_a_network() {
        assert!("10.96.0.0/12".parse::<IpPrefix>().unwrap().is_network());
        assert!(!"10.96.0.1/12".parse::<IpPrefix>().unwrap().is_network());
        assert!("0.0.0.0/0".parse::<IpPrefix>().unwrap().is_network());
        assert!("10.1.0.1/32".parse::<IpPrefix>().unwrap().is_network());
        assert!("::/0".parse::<IpPrefix>().unwrap().is_network());
        assert!(!"fd00::5/64".parse::<IpPrefix>().unwrap().is_network());
        assert_eq!(
            IpPrefix::host("fd00::1".parse().unwrap()).to_string(),
            "fd00::1/128"
        );
    }

    #[test]
    fn interface_names_follow_the_kernels_rules() {
        assert!(valid_interface_name("eth0"));
        assert!(valid_interface_name(&"e".repeat(15)));
        for name in ["", ".", "..", "a/b", "eth0:1", "a b", &"e".repeat(16)] {
            assert!(!valid_interface_name(name), "{name:?}");
        }
    }
}

//! The CNI result (what a plugin prints after ADD), parsed from the spec versions that
//! Debian's plugins speak (0.3.0, 0.3.1, 0.4.0) and from 1.0.0 into one typed form.
//!
//! The versions share one shape: 0.3.x and 0.4.0 add `version` ("4" or "6") to each IP,
//! which 1.0.0 dropped; both are accepted and the family is taken from the address itself.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The spec versions whose results this crate reads.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// Why a plugin's output is not a result this crate can use.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("the result is not valid json")]
    Json(#[source] serde_json::Error),
    #[error("the result's cniVersion {0:?} is not one of 0.3.0, 0.3.1, 0.4.0, 1.0.0")]
    UnsupportedVersion(String),
    #[error("the address {0:?} is not an IP address with a prefix length (CIDR)")]
    BadCidr(String),
}

/// A plugin's ADD result, in the shape every supported version shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// An interface a plugin created or configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The netns path for an interface inside the pod; absent for host-side ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One assigned address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"` before 1.0.0; kept so a cached result reads back as it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// CIDR notation: the address with its prefix length, e.g. `10.22.0.5/24`.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route a plugin installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// CIDR notation.
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// The DNS settings a plugin suggests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

impl CniResult {
    /// Parses a plugin's stdout, checking its version and every address.
    pub fn parse(bytes: &[u8]) -> Result<Self, ResultError> {
        let result: CniResult = serde_json::from_slice(bytes).map_err(ResultError::Json)?;
        if !SUPPORTED_VERSIONS.contains(&result.cni_version.as_str()) {
            return Err(ResultError::UnsupportedVersion(result.cni_version));
        }
        for ip in &result.ips {
            parse_cidr(&ip.address)?;
        }
        for route in &result.routes {
            parse_cidr(&route.dst)?;
        }
        Ok(result)
    }

    /// The interface inside the pod named `ifname`, with its index in `interfaces`.
    pub fn sandbox_interface(&self, ifname: &str) -> Option<(usize, &Interface)> {
        self.interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.name == ifname && i.sandbox.as_deref().is_some_and(|s| !s.is_empty()))
    }
}

/// Splits `a.b.c.d/n` (or an IPv6 CIDR) into the address and its prefix length.
pub fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), ResultError> {
    let bad = || ResultError::BadCidr(cidr.to_owned());
    let (address, prefix) = cidr.split_once('/').ok_or_else(bad)?;
    let address: IpAddr = address.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad());
    }
    Ok((address, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESULT_0_3_1: &str = r#"{
        "cniVersion": "0.3.1",
        "interfaces": [
            {"name": "cni0", "mac": "9a:1e:6b:0c:22:01"},
            {"name": "veth1234", "mac": "7e:11:22:33:44:55"},
            {"name": "eth0", "mac": "0a:58:0a:16:00:05", "sandbox": "/var/run/netns/p"}
        ],
        "ips": [{"version": "4", "address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 2}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    }"#;

    const RESULT_0_4_0: &str = r#"{
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:16:00:06", "sandbox": "/run/netns/q"}],
        "ips": [
            {"version": "4", "address": "10.22.0.6/24", "gateway": "10.22.0.1", "interface": 0},
            {"version": "6", "address": "fd00::6/64", "gateway": "fd00::1", "interface": 0}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.22.0.1"}, {"dst": "::/0"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"], "options": ["ndots:5"]}
    }"#;

    const RESULT_1_0_0: &str = r#"{
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:16:00:07", "sandbox": "/run/netns/r"}],
        "ips": [{"address": "10.22.0.7/24", "gateway": "10.22.0.1", "interface": 0}],
        "routes": [{"dst": "10.0.0.0/8", "gw": "10.22.0.1"}],
        "dns": {"domain": "cluster.local"}
    }"#;

    #[test]
    fn result_0_3_1_parses_with_sandbox_interface_and_version_field() {
        let result = CniResult::parse(RESULT_0_3_1.as_bytes()).unwrap();
        let (index, eth0) = result.sandbox_interface("eth0").unwrap();
        assert_eq!(index, 2);
        assert_eq!(eth0.mac.as_deref(), Some("0a:58:0a:16:00:05"));
        assert_eq!(result.ips[0].version.as_deref(), Some("4"));
        assert_eq!(result.ips[0].interface, Some(2));
        assert_eq!(
            parse_cidr(&result.ips[0].address).unwrap(),
            ("10.22.0.5".parse().unwrap(), 16)
        );
        assert_eq!(result.routes[0].gw, None);
        assert!(result.dns.is_empty());
    }

    #[test]
    fn result_0_4_0_parses_dual_stack_and_dns() {
        let result = CniResult::parse(RESULT_0_4_0.as_bytes()).unwrap();
        assert_eq!(result.ips.len(), 2);
        assert_eq!(result.ips[1].gateway, Some("fd00::1".parse().unwrap()));
        assert_eq!(result.routes[0].gw, Some("10.22.0.1".parse().unwrap()));
        assert_eq!(result.dns.nameservers, ["10.96.0.10"]);
        assert_eq!(result.dns.options, ["ndots:5"]);
    }

    #[test]
    fn result_1_0_0_parses_without_ip_version() {
        let result = CniResult::parse(RESULT_1_0_0.as_bytes()).unwrap();
        assert_eq!(result.ips[0].version, None);
        assert_eq!(result.dns.domain.as_deref(), Some("cluster.local"));
        let round_trip = CniResult::parse(&serde_json::to_vec(&result).unwrap()).unwrap();
        assert_eq!(round_trip, result);
    }

    #[test]
    fn result_of_an_unknown_version_is_refused() {
        let err = CniResult::parse(br#"{"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}}"#)
            .unwrap_err();
        assert!(matches!(err, ResultError::UnsupportedVersion(v) if v == "0.2.0"));
    }

    #[test]
    fn result_with_garbage_is_an_error_not_a_panic() {
        for garbage in [&b"\x00\xff{"[..], b"[]", b"{\"cniVersion\": 3}", b""] {
            assert!(CniResult::parse(garbage).is_err());
        }
        let bad_cidr = br#"{"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/24"}]}"#;
        assert!(matches!(
            CniResult::parse(bad_cidr),
            Err(ResultError::BadCidr(_))
        ));
        let bad_prefix = br#"{"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.3/33"}]}"#;
        assert!(matches!(
            CniResult::parse(bad_prefix),
            Err(ResultError::BadCidr(_))
        ));
    }
}

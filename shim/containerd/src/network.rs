//! The pod's NIC: containerd's CRI plugin made the pod's network namespace and ran CNI in
//! it before the sandbox task was created, so `eth0` there has its addresses and routes.
//! A tap made in that namespace is joined to `eth0` as vpod-cri joins its own
//! ([`vpod_network::tap`]: tc redirects each one's ingress to the other), and the guest
//! NIC takes `eth0`'s MAC address, addresses and routes. The tap lives as long as the VMM
//! holds it, so it goes with the VM; the namespace and CNI's DEL stay the CRI plugin's.

use std::path::Path;
use std::sync::Arc;

use vpod_network::rtnl::RtnlError;
use vpod_network::tap::{self, TapError};
use vpod_sandbox::network::{
    GuestInterface, GuestNetwork, GuestRoute, IpPrefix, MacAddress, Nic, POD_IFNAME,
};

/// The tap's name inside the pod's namespace (one per namespace).
const TAP_NAME: &str = "vpod-tap0";

/// Why the pod's NIC could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0} is not a network namespace")]
    NotNetns(String),
    #[error("the pod's tap could not be made or joined to {POD_IFNAME}")]
    Tap(#[source] TapError),
    #[error("{POD_IFNAME} in the pod's namespace has an unusable address or route: {0}")]
    Address(String),
}

/// The guest's side of the pod network in `netns`; no NIC when CNI made no `eth0` there.
pub fn join(netns: &Path, pod_id: &str) -> Result<GuestNetwork, NetworkError> {
    if !vpod_network::netns::is_netns(netns) {
        return Err(NetworkError::NotNetns(netns.display().to_string()));
    }
    let tap_fd = tap::create(netns, TAP_NAME).map_err(NetworkError::Tap)?;
    let joined = match tap::join(netns, POD_IFNAME, TAP_NAME) {
        Ok(joined) => joined,
        Err(TapError::Join {
            source: RtnlError::NoSuchLink(_),
            ..
        }) => {
            log::info!("pod {pod_id}: no {POD_IFNAME} in its namespace, no network");
            return Ok(GuestNetwork::default());
        }
        Err(e) => return Err(NetworkError::Tap(e)),
    };
    let mac: MacAddress = joined
        .mac
        .parse()
        .map_err(|_| NetworkError::Address(format!("mac {}", joined.mac)))?;
    let prefix = |address, len| {
        IpPrefix::new(address, len).map_err(|e| NetworkError::Address(e.to_string()))
    };
    let addresses = joined
        .addresses
        .iter()
        .map(|&(address, len)| prefix(address, len))
        .collect::<Result<Vec<_>, _>>()?;
    let routes = joined
        .routes
        .iter()
        .map(|r| {
            Ok(GuestRoute {
                destination: prefix(r.destination, r.prefix_len)?,
                gateway: r.gateway,
                interface: POD_IFNAME.to_owned(),
            })
        })
        .collect::<Result<Vec<_>, NetworkError>>()?;
    log::info!("pod {pod_id}: {POD_IFNAME} {mac} {addresses:?}");
    Ok(GuestNetwork {
        nics: vec![Nic {
            tap: Arc::new(tap_fd),
            interface: GuestInterface {
                name: POD_IFNAME.to_owned(),
                mac,
                new_mac: None,
                mtu: joined.mtu,
                addresses,
            },
        }],
        routes,
        netns: Some(netns.to_path_buf()),
    })
}

//! The VM side of the pod network: a tap inside the pod's netns joined to the CNI
//! interface the way Kata's `tcfilter` mode does it. Both links get an ingress qdisc, and
//! a u32 match-all filter on each redirects every frame to the other's egress, so the
//! guest NIC (which takes eth0's MAC) is on the wire in eth0's place and the netns' own
//! stack never sees pod traffic.
//!
//! The tap is not persistent: it lives as long as an fd is open on it, so it goes away
//! with the VMM (or with the [`OwnedFd`] here if the VMM never starts).

use crate::netns::{self, NetnsError};
use crate::rtnl::{LinkRoute, Rtnl, RtnlError};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// Why the tap could not be made or joined to the CNI interface.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] std::io::Error),
    #[error("cannot create the tap {0:?} (TUNSETIFF)")]
    CreateTap(String, #[source] std::io::Error),
    #[error("cannot duplicate the tap's fd")]
    Dup(#[source] std::io::Error),
    #[error("the tap name {0:?} is longer than 15 bytes")]
    NameTooLong(String),
    #[error("cannot join the tap {tap:?} to {ifname:?}")]
    Join {
        tap: String,
        ifname: String,
        #[source]
        source: RtnlError,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// What the guest NIC must copy from the CNI interface the tap was joined to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub mac: String,
    pub mtu: u32,
    /// The routes the plugins installed through the CNI interface.
    pub routes: Vec<LinkRoute>,
    /// The interface's global addresses and prefix lengths, as the plugins left them.
    pub addresses: Vec<(std::net::IpAddr, u8)>,
}

const IFNAMSIZ: usize = 16;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct TunRequest {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

/// Creates the tap `tap_name` inside the netns `netns_path`, down and joined to nothing;
/// the fd keeps it alive.
pub fn create(netns_path: &Path, tap_name: &str) -> Result<OwnedFd, TapError> {
    if tap_name.len() >= IFNAMSIZ {
        return Err(TapError::NameTooLong(tap_name.to_owned()));
    }
    // The tap belongs to the netns of the thread that opens /dev/net/tun: this one.
    netns::run_in(netns_path, || open_tap(tap_name))
}

/// Joins the tap `tap_name` to `ifname`, both inside the netns `netns_path`: the tap takes
/// the interface's MTU and comes up, and tc redirects each one's ingress to the other.
pub fn join(netns_path: &Path, ifname: &str, tap_name: &str) -> Result<Joined, TapError> {
    netns::run_in(netns_path, || {
        let join_error = |source| TapError::Join {
            tap: tap_name.to_owned(),
            ifname: ifname.to_owned(),
            source,
        };
        let mut rtnl = Rtnl::open().map_err(join_error)?;
        let (mac, mtu, routes) = join_links(&mut rtnl, ifname, tap_name).map_err(join_error)?;
        let index = rtnl.link_by_name(ifname).map_err(join_error)?.index;
        let addresses = rtnl.addresses(index).map_err(join_error)?;
        Ok(Joined {
            mac,
            mtu,
            routes,
            addresses,
        })
    })
}

fn join_links(
    rtnl: &mut Rtnl,
    ifname: &str,
    tap_name: &str,
) -> Result<(String, u32, Vec<LinkRoute>), RtnlError> {
    let eth = rtnl.link_by_name(ifname)?;
    let tap = rtnl.link_by_name(tap_name)?;
    rtnl.set_up_with_mtu(tap.index, eth.mtu)?;
    rtnl.add_ingress_qdisc(eth.index)?;
    rtnl.add_ingress_qdisc(tap.index)?;
    rtnl.add_redirect_filter(eth.index, tap.index)?;
    rtnl.add_redirect_filter(tap.index, eth.index)?;
    let routes = rtnl.routes_via(eth.index)?;
    let mac = eth
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    Ok((mac, eth.mtu, routes))
}

fn open_tap(name: &str) -> Result<OwnedFd, TapError> {
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    let mut request = TunRequest {
        name: [0; IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _union_rest: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and writes back the name into) a `struct ifreq`; `request`
    // is a live, writable, correctly laid out and NUL-terminated ifreq for the whole call,
    // and `tun` is an open /dev/net/tun fd.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF as _, &mut request) };
    if rc < 0 {
        return Err(TapError::CreateTap(
            name.to_owned(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(OwnedFd::from(tun))
}

/// The kinds of the ingress filters on `link` inside `netns_path` (for checks and tests).
pub fn ingress_filter_kinds(netns_path: &Path, link: &str) -> Result<Vec<String>, TapError> {
    netns::run_in(netns_path, || {
        let join_error = |source| TapError::Join {
            tap: link.to_owned(),
            ifname: link.to_owned(),
            source,
        };
        let mut rtnl = Rtnl::open().map_err(join_error)?;
        let index = rtnl.link_by_name(link).map_err(join_error)?.index;
        rtnl.ingress_filter_kinds(index).map_err(join_error)
    })
}

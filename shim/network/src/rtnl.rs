//! A blocking rtnetlink client for the few requests the tap needs (links, routes, the
//! ingress qdisc and the u32 redirect filter), built from netlink-packet-route's messages
//! over a synchronous netlink-sys socket: it runs on a thread pinned in the pod's netns,
//! where an async runtime (rtnetlink's) would be one more thread for nothing.

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::net::IpAddr;

/// Why a netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("netlink i/o failed")]
    Io(#[source] std::io::Error),
    #[error("cannot decode a netlink reply: {0}")]
    Decode(String),
    #[error("the kernel refused {request}")]
    Refused {
        request: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no link named {0:?}")]
    NoSuchLink(String),
}

/// What the tap needs to know of a link.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub index: u32,
    pub mtu: u32,
    pub mac: Vec<u8>,
}

/// A route of the main table through one link (a destination, maybe a gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRoute {
    pub destination: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
}

/// ETH_P_ALL in network order, as `tc ... protocol all` sends it.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();
/// The filter priority Kata's tcfilter mode uses.
const FILTER_PRIORITY: u16 = 49152;

pub struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl Rtnl {
    pub fn open() -> Result<Self, RtnlError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(RtnlError::Socket)?;
        socket.bind_auto().map_err(RtnlError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(RtnlError::Socket)?;
        Ok(Rtnl {
            socket,
            sequence: 0,
        })
    }

    /// Sends one request and collects its replies until the ack or the dump's end.
    fn request(
        &mut self,
        request: &'static str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        // With NLM_F_ACK every request ends with an ack (or NLMSG_DONE for a dump), even a
        // plain GET that would otherwise end with its one reply.
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buffer = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0).map_err(RtnlError::Io)?;

        let mut replies = Vec::new();
        let mut receive = vec![0u8; 64 * 1024];
        loop {
            let size = self
                .socket
                .recv(&mut &mut receive[..], 0)
                .map_err(RtnlError::Io)?;
            let mut offset = 0;
            while offset < size {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[offset..size])
                        .map_err(|e| RtnlError::Decode(e.to_string()))?;
                let length = reply.header.length as usize;
                if length == 0 {
                    return Err(RtnlError::Decode("a zero-length message".into()));
                }
                offset += length;
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(replies),
                            Some(_) => Err(RtnlError::Refused {
                                request,
                                source: error.to_io(),
                            }),
                        }
                    }
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    _ => {}
                }
            }
        }
    }

    pub fn link_by_name(&mut self, name: &str) -> Result<LinkInfo, RtnlError> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        let replies = self
            .request("the link lookup", RouteNetlinkMessage::GetLink(message), 0)
            .map_err(|e| match e {
                RtnlError::Refused { source, .. }
                    if source.raw_os_error() == Some(libc::ENODEV) =>
                {
                    RtnlError::NoSuchLink(name.to_owned())
                }
                e => e,
            })?;
        let Some(RouteNetlinkMessage::NewLink(link)) = replies.into_iter().next() else {
            return Err(RtnlError::NoSuchLink(name.to_owned()));
        };
        let mut info = LinkInfo {
            index: link.header.index,
            mtu: 0,
            mac: Vec::new(),
        };
        for attribute in link.attributes {
            match attribute {
                LinkAttribute::Mtu(mtu) => info.mtu = mtu,
                LinkAttribute::Address(mac) => info.mac = mac,
                _ => {}
            }
        }
        Ok(info)
    }

    /// Sets a link's MTU and brings it up.
    pub fn set_up_with_mtu(&mut self, index: u32, mtu: u32) -> Result<(), RtnlError> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        message.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(
            "setting the link up",
            RouteNetlinkMessage::SetLink(message),
            NLM_F_ACK,
        )
        .map(drop)
    }

    /// `tc qdisc add dev <index> ingress`
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<(), RtnlError> {
        let mut message = TcMessage::with_index(index as i32);
        message.header.parent = TcHandle::INGRESS;
        message.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        message
            .attributes
            .push(TcAttribute::Kind("ingress".to_owned()));
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        self.request(
            "the ingress qdisc",
            RouteNetlinkMessage::NewQueueDiscipline(message),
            flags,
        )
        .map(drop)
    }

    /// `tc filter add dev <from> parent ffff: protocol all u32 match u8 0 0
    /// action mirred egress redirect dev <to>`, Kata's tcfilter join.
    pub fn add_redirect_filter(&mut self, from: u32, to: u32) -> Result<(), RtnlError> {
        let mut message = TcMessage::with_index(from as i32);
        message.header.parent = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        message.header.info = (u32::from(FILTER_PRIORITY) << 16) | u32::from(ETH_P_ALL_BE);

        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        // One key of mask 0 at offset 0: it matches every packet.
        selector.keys = vec![TcU32Key::default()];

        let mut generic = TcActionGeneric::default();
        generic.action = TcActionType::Stolen;
        let mut mirror = TcMirror::default();
        mirror.generic = generic;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.tab = 1;
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_owned()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];

        message
            .attributes
            .push(TcAttribute::Kind(TcFilterU32::KIND.to_owned()));
        message.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
        self.request(
            "the redirect filter",
            RouteNetlinkMessage::NewTrafficFilter(message),
            flags,
        )
        .map(drop)
    }

    /// The kinds of the filters on a link's ingress, each once (u32 dumps its hash table
    /// and its node as entries of their own).
    pub fn ingress_filter_kinds(&mut self, index: u32) -> Result<Vec<String>, RtnlError> {
        let mut message = TcMessage::with_index(index as i32);
        message.header.parent = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        let replies = self.request(
            "the filter dump",
            RouteNetlinkMessage::GetTrafficFilter(message),
            NLM_F_DUMP,
        )?;
        let mut kinds: Vec<String> = replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewTrafficFilter(filter) => {
                    filter.attributes.into_iter().find_map(|a| match a {
                        TcAttribute::Kind(kind) => Some(kind),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        Ok(kinds)
    }

    /// The main table's routes out of link `index` that the plugins installed, leaving out
    /// the kernel's own prefix routes (the guest gets those from its addresses).
    pub fn routes_via(&mut self, index: u32) -> Result<Vec<LinkRoute>, RtnlError> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut message = RouteMessage::default();
            message.header.address_family = family;
            let replies = self.request(
                "the route dump",
                RouteNetlinkMessage::GetRoute(message),
                NLM_F_DUMP,
            )?;
            for reply in replies {
                let RouteNetlinkMessage::NewRoute(route) = reply else {
                    continue;
                };
                if route.header.table != RouteHeader::RT_TABLE_MAIN
                    || route.header.protocol == RouteProtocol::Kernel
                {
                    continue;
                }
                if let Some(route) = link_route(&route, index) {
                    routes.push(route);
                }
            }
        }
        Ok(routes)
    }
}

impl Rtnl {
    /// The global addresses of link `index` with their prefix lengths (IPv4, then IPv6;
    /// link-local and host-scope ones left out): what a CNI plugin gave the interface.
    pub fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>, RtnlError> {
        let mut addresses = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut message = AddressMessage::default();
            message.header.family = family;
            let replies = self.request(
                "the address dump",
                RouteNetlinkMessage::GetAddress(message),
                NLM_F_DUMP,
            )?;
            for reply in replies {
                let RouteNetlinkMessage::NewAddress(address) = reply else {
                    continue;
                };
                if address.header.index != index || address.header.scope != AddressScope::Universe {
                    continue;
                }
                let ip = address.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                if let Some(ip) = ip {
                    addresses.push((ip, address.header.prefix_len));
                }
            }
        }
        Ok(addresses)
    }
}

fn link_route(route: &RouteMessage, index: u32) -> Option<LinkRoute> {
    let mut oif = None;
    let mut destination = None;
    let mut gateway = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(address) => destination = route_ip(address),
            RouteAttribute::Gateway(address) => gateway = route_ip(address),
            _ => {}
        }
    }
    if oif != Some(index) {
        return None;
    }
    let destination = destination.unwrap_or(match route.header.address_family {
        AddressFamily::Inet6 => IpAddr::from([0u16; 8]),
        _ => IpAddr::from([0u8; 4]),
    });
    Some(LinkRoute {
        destination,
        prefix_len: route.header.destination_prefix_length,
        gateway,
    })
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

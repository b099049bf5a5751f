//! [`LinkOps`] over a blocking NETLINK_ROUTE socket: netlink-packet-route's messages sent
//! and read back in the calling thread, one request at a time. No async runtime of its own
//! (rtnetlink's would pull in futures and a connection task for a handful of requests once
//! per pod); the kernel answers rtnetlink requests within the send, so a call holds the
//! agent's runtime for microseconds only.

use std::io;
use std::net::IpAddr;
use std::sync::Mutex;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{IpPrefix, Link, LinkChange, LinkOps, MacAddress, NetworkError, RouteEntry};

/// The guest kernel's network configuration, through netlink.
pub struct Rtnetlink {
    socket: Mutex<Connection>,
}

struct Connection {
    socket: Socket,
    sequence: u32,
}

impl Rtnetlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn connect() -> Result<Rtnetlink, NetworkError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetworkError::Connect)?;
        socket.bind_auto().map_err(NetworkError::Connect)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetworkError::Connect)?;
        Ok(Rtnetlink {
            socket: Mutex::new(Connection {
                socket,
                sequence: 0,
            }),
        })
    }

    /// Sends one request and collects its replies until the ack, or the end of a dump.
    /// The kernel's refusal comes back as its errno.
    fn request(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut connection = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        connection.sequence = connection.sequence.wrapping_add(1);
        let sequence = connection.sequence;
        let mut header = NetlinkHeader::default();
        // With NLM_F_ACK every request ends with an ack (or NLMSG_DONE for a dump).
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buffer = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buffer);
        connection.socket.send(&buffer, 0)?;

        let mut replies = Vec::new();
        let mut receive = vec![0u8; 64 * 1024];
        loop {
            let size = connection.socket.recv(&mut &mut receive[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&receive[offset..size])
                        .map_err(|e| undecodable(e.to_string()))?;
                let length = reply.header.length as usize;
                if length == 0 {
                    return Err(undecodable("a zero-length message".to_owned()));
                }
                offset += length;
                if reply.header.sequence_number != sequence {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(replies),
                            Some(_) => Err(error.to_io()),
                        };
                    }
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    _ => {}
                }
            }
        }
    }
}

fn undecodable(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("cannot decode a netlink reply: {what}"),
    )
}

fn link_from(message: LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut mac = None;
    let mut mtu = 0;
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n),
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes).ok().map(MacAddress),
            LinkAttribute::Mtu(m) => mtu = m,
            _ => {}
        }
    }
    Some(Link {
        index: message.header.index,
        name: name?,
        // Loopback reports 00:00:00:00:00:00; no NIC has it.
        mac: mac.filter(|mac| mac.0 != [0; 6]),
        mtu,
        up: message.header.flags.contains(LinkFlags::Up),
    })
}

fn family(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// `ip address add ADDRESS/LEN dev INDEX`, as iproute2 (and rtnetlink) build it: the
/// address as both IFA_ADDRESS and IFA_LOCAL, and IPv4's broadcast address.
fn address_message(index: u32, prefix: IpPrefix) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = family(prefix.address);
    message.header.prefix_len = prefix.len;
    message.header.index = index;
    let attributes = &mut message.attributes;
    attributes.push(AddressAttribute::Address(prefix.address));
    attributes.push(AddressAttribute::Local(prefix.address));
    match prefix.address {
        IpAddr::V4(v4) if prefix.len < 31 => {
            let broadcast = u32::MAX >> prefix.len;
            attributes.push(AddressAttribute::Broadcast(
                (u32::from(v4) | broadcast).into(),
            ));
        }
        IpAddr::V4(_) => {}
        // No duplicate address detection on a link only the host is on: the address
        // serves at once instead of staying tentative for a second or more.
        IpAddr::V6(_) => attributes.push(AddressAttribute::Flags(AddressFlags::Nodad)),
    }
    message
}

/// `ip route add DESTINATION [via GATEWAY] dev INDEX` in the main table, `proto static`;
/// without a gateway the destination is on the link (`scope link`).
fn route_message(route: &RouteEntry) -> io::Result<RouteMessage> {
    let destination = route.destination;
    let mut message = RouteMessage::default();
    message.header.address_family = family(destination.address);
    message.header.destination_prefix_length = destination.len;
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::Static;
    message.header.kind = RouteType::Unicast;
    message.header.scope = RouteScope::Universe;
    message
        .attributes
        .push(RouteAttribute::Destination(destination.address.into()));
    match route.gateway {
        Some(gateway) if family(gateway) != message.header.address_family => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the gateway {gateway} is not of the destination's address family"),
            ));
        }
        Some(gateway) => message
            .attributes
            .push(RouteAttribute::Gateway(gateway.into())),
        None => message.header.scope = RouteScope::Link,
    }
    message.attributes.push(RouteAttribute::Oif(route.index));
    Ok(message)
}

const CREATE: u16 = NLM_F_CREATE | NLM_F_EXCL;

impl LinkOps for Rtnetlink {
    async fn links(&self) -> io::Result<Vec<Link>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) => link_from(link),
                _ => None,
            })
            .collect())
    }

    async fn set_link(&self, index: u32, change: LinkChange) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        if let Some(name) = change.name {
            message.attributes.push(LinkAttribute::IfName(name));
        }
        if let Some(mtu) = change.mtu {
            message.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = change.mac {
            message
                .attributes
                .push(LinkAttribute::Address(mac.0.to_vec()));
        }
        if let Some(up) = change.up {
            message.header.change_mask = LinkFlags::Up;
            if up {
                message.header.flags = LinkFlags::Up;
            }
        }
        self.request(RouteNetlinkMessage::SetLink(message), 0)
            .map(drop)
    }

    async fn add_address(&self, index: u32, address: IpPrefix) -> io::Result<()> {
        let message = address_message(index, address);
        self.request(RouteNetlinkMessage::NewAddress(message), CREATE)
            .map(drop)
    }

    async fn add_route(&self, route: RouteEntry) -> io::Result<()> {
        let message = route_message(&route)?;
        self.request(RouteNetlinkMessage::NewRoute(message), CREATE)
            .map(drop)
    }
}

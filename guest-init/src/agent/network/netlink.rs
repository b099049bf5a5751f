//! [`LinkOps`] over rtnetlink: one NETLINK_ROUTE socket per [`Rtnetlink`], its connection
//! a task on the agent's runtime that ends when the value is dropped.

use std::io;
use std::net::IpAddr;

use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{LinkUnspec, RouteMessageBuilder};
use tokio_stream::StreamExt;

use super::{IpPrefix, Link, LinkChange, LinkOps, MacAddress, NetworkError, RouteEntry};

/// The guest kernel's network configuration, through netlink.
pub struct Rtnetlink {
    handle: rtnetlink::Handle,
}

impl Rtnetlink {
    /// Opens a socket in the calling thread's network namespace. Needs a tokio runtime.
    pub fn connect() -> Result<Rtnetlink, NetworkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Connect)?;
        tokio::spawn(connection);
        Ok(Rtnetlink { handle })
    }
}

/// The route builder's complaint (its error type is not exported).
fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// The kernel's errno when it refused, else the library's complaint.
fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(message) if message.code.is_some() => message.to_io(),
        other => io::Error::other(other.to_string()),
    }
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

impl LinkOps for Rtnetlink {
    async fn links(&self) -> io::Result<Vec<Link>> {
        let mut dump = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(message) = dump.next().await {
            links.extend(link_from(message.map_err(to_io)?));
        }
        Ok(links)
    }

    async fn set_link(&self, index: u32, change: LinkChange) -> io::Result<()> {
        let mut message = LinkUnspec::new_with_index(index);
        if let Some(name) = change.name {
            message = message.name(name);
        }
        if let Some(mtu) = change.mtu {
            message = message.mtu(mtu);
        }
        message = match change.up {
            Some(true) => message.up(),
            Some(false) => message.down(),
            None => message,
        };
        self.handle
            .link()
            .set(message.build())
            .execute()
            .await
            .map_err(to_io)
    }

    async fn add_address(&self, index: u32, address: IpPrefix) -> io::Result<()> {
        let mut request = self
            .handle
            .address()
            .add(index, address.address, address.len);
        if address.address.is_ipv6() {
            // No duplicate address detection on a link only the host is on: the address
            // serves at once instead of staying tentative for a second or more.
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request.execute().await.map_err(to_io)
    }

    async fn add_route(&self, route: RouteEntry) -> io::Result<()> {
        let mut message = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(route.destination.address, route.destination.len)
            .map_err(invalid)?
            .output_interface(route.index);
        message = match route.gateway {
            Some(gateway) => message.gateway(gateway).map_err(invalid)?,
            None => message.scope(RouteScope::Link),
        };
        self.handle
            .route()
            .add(message.build())
            .execute()
            .await
            .map_err(to_io)
    }
}

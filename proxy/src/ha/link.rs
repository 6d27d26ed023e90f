//! Interfaces and addresses over rtnetlink: find an interface, read its state and
//! addresses, add and remove the virtual addresses. No `ip` commands.
//!
//! Invariant: adding an address that is already there and removing one that is not are
//! both successes, so a task that restarts after a crash (leaving its VIPs behind) or a
//! repeated transition converges instead of failing.

use std::net::IpAddr;

use futures_util::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::{
    Handle,
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
        link::{LinkAttribute, LinkFlags},
    },
};

/// What tracking and the announcements need to know about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    /// Administratively up and with carrier (IFF_UP and IFF_RUNNING).
    pub up: bool,
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open a netlink socket: {0}")]
    Open(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

const ENODEV: i32 = libc::ENODEV;
const EEXIST: i32 = libc::EEXIST;
const EADDRNOTAVAIL: i32 = libc::EADDRNOTAVAIL;
const ENOENT: i32 = libc::ENOENT;

/// The errno of a kernel refusal, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

impl Netlink {
    /// Opens a netlink connection in the current network namespace; its driver runs as a
    /// task on the current runtime until every handle is gone.
    pub fn open() -> Result<Netlink, LinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(LinkError::Open)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The interface called `name`; `None` when there is none.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, LinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        let msg = match links.try_next().await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => return Ok(None),
            Err(source) => {
                return Err(LinkError::Request {
                    what: format!("looking up interface {name}"),
                    source,
                });
            }
        };
        let flags = msg.header.flags;
        let mac = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        });
        Ok(Some(LinkInfo {
            index: msg.header.index,
            up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
            mac,
        }))
    }

    /// Every address on interface `index`, with its prefix length.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, LinkError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::Request {
                what: format!("listing addresses of interface {index}"),
                source,
            })?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let addr = address_of(m)?;
                IpNet::new(addr, m.header.prefix_len).ok()
            })
            .collect())
    }

    /// Adds `net` to interface `index`; true if it was not there. IPv6 addresses skip
    /// duplicate address detection: the VRRP election already decided who owns the
    /// address, and DAD would keep it unusable for a second or more after a failover.
    pub async fn add(&self, index: u32, net: IpNet) -> Result<bool, LinkError> {
        let mut req = self
            .handle
            .address()
            .add(index, net.addr(), net.prefix_len());
        if net.addr().is_ipv6() {
            let msg = req.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(false),
            Err(source) => Err(LinkError::Request {
                what: format!("adding {net} to interface {index}"),
                source,
            }),
        }
    }

    /// Removes `addr` from interface `index`, whatever its prefix length; true if it was
    /// there.
    pub async fn remove(&self, index: u32, addr: IpAddr) -> Result<bool, LinkError> {
        let found: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr)
            .execute()
            .try_collect()
            .await
            .map_err(|source| LinkError::Request {
                what: format!("looking for {addr} on interface {index}"),
                source,
            })?;
        let mut removed = false;
        for msg in found
            .into_iter()
            .filter(|m| m.header.index == index && address_of(m) == Some(addr))
        {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => removed = true,
                Err(e) if matches!(errno(&e), Some(EADDRNOTAVAIL | ENOENT)) => {}
                Err(source) => {
                    return Err(LinkError::Request {
                        what: format!("removing {addr} from interface {index}"),
                        source,
                    });
                }
            }
        }
        Ok(removed)
    }
}

/// The interface's own address of a message: IFA_LOCAL for IPv4 (IFA_ADDRESS is the peer
/// on point-to-point links), IFA_ADDRESS for IPv6.
fn address_of(m: &AddressMessage) -> Option<IpAddr> {
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// The router's primary address on the link (RFC 5798 section 5.1.1.1 / 5.1.2.1): for IPv4
/// the first address of the interface that is no virtual address, for IPv6 its link-local
/// address. It is the adverts' source and the tie-breaker of section 6.4.3.
pub fn primary_address(ipv6: bool, on_link: &[IpNet], vips: &[IpAddr]) -> Option<IpAddr> {
    on_link.iter().map(IpNet::addr).find(|a| match a {
        IpAddr::V4(_) => !ipv6 && !vips.contains(a),
        IpAddr::V6(v6) => ipv6 && v6.is_unicast_link_local(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn primary_skips_vips_and_picks_link_local() {
        let on = nets(&[
            "198.18.0.25/32",
            "198.18.0.1/24",
            "2001:db8:0:1::1/64",
            "fe80::1/64",
        ]);
        let vips = ["198.18.0.25".parse().unwrap()];
        assert_eq!(
            primary_address(false, &on, &vips),
            Some("198.18.0.1".parse().unwrap())
        );
        assert_eq!(
            primary_address(true, &on, &[]),
            Some("fe80::1".parse().unwrap())
        );
        assert_eq!(primary_address(true, &nets(&["2001:db8::1/64"]), &[]), None);
        assert_eq!(
            primary_address(false, &nets(&["198.18.0.25/32"]), &vips),
            None
        );
    }
}

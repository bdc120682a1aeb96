//! Where each instance is enforced: the interface the rules file names
//! (the instance's own, or the host side of its link), or the tap libvirt
//! gave a running domain's NIC, found anew each time it is asked.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use crate::{
    config::Link,
    dataplane::{Macs, Side, netns::NetnsGuard, pins::place_here},
    libvirt::{self, DomainNic},
    policy::compile::CompiledInstance,
};

/// An interface of a network namespace, and which end of the instance's
/// link it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Place {
    pub netns: Option<String>,
    pub ifname: String,
    pub side: Side,
}

impl Place {
    /// For the log and errors: `vnet3 in netns lab (host side)`.
    pub fn describe(&self) -> String {
        let mut out = self.ifname.clone();
        if let Some(ns) = &self.netns {
            out.push_str(" in netns ");
            out.push_str(ns);
        }
        if self.side == Side::Host {
            out.push_str(" (host side)");
        }
        out
    }

    /// A flow-log record's `interface-id`: the interface, qualified by its
    /// namespace (interface names repeat across namespaces).
    pub fn interface_id(&self) -> String {
        match &self.netns {
            Some(ns) => format!("{ns}/{}", self.ifname),
            None => self.ifname.clone(),
        }
    }

    /// The addresses the interface has now (IPv6 link-local ones left
    /// out: they are no instance's `addresses`).
    pub fn addresses(&self) -> Result<Vec<std::net::IpAddr>, String> {
        let _guard = NetnsGuard::enter_opt(self.netns.as_deref()).map_err(|e| e.to_string())?;
        let all = nix::ifaddrs::getifaddrs().map_err(|e| e.to_string())?;
        let mut out: Vec<std::net::IpAddr> = all
            .filter(|a| a.interface_name == self.ifname)
            .filter_map(|a| {
                let addr = a.address?;
                if let Some(v4) = addr.as_sockaddr_in() {
                    Some(std::net::IpAddr::V4(v4.ip()))
                } else {
                    addr.as_sockaddr_in6()
                        .map(nix::sys::socket::SockaddrIn6::ip)
                        .filter(|ip| ip.segments()[0] & 0xffc0 != 0xfe80)
                        .map(std::net::IpAddr::V6)
                }
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// `macs` as the programs here are to check them: with no services'
    /// MAC address from the file, on the host side the host's own (see
    /// [`Place::host_mac`]). Asked only when the addresses are written (an
    /// attach, a reload), never on the reconcile tick's check.
    pub fn with_services(&self, macs: Macs) -> Macs {
        let services = macs
            .services
            .or_else(|| (self.side == Side::Host).then(|| self.host_mac()).flatten());
        Macs { services, ..macs }
    }

    /// The MAC address the host itself has on this link: its bridge's when
    /// the interface is a bridge port (the host answers there, as dnsmasq
    /// on libvirt's virbr0 does), else the interface's own (a routed tap).
    /// What the host sends to the instance comes from it: on the host side
    /// it is where the AWS services are, as the Nitro host is on EC2.
    /// `None` when the interface is not there (yet).
    fn host_mac(&self) -> Option<[u8; 6]> {
        let _guard = NetnsGuard::enter_opt(self.netns.as_deref()).ok()?;
        let (controller, own) = link_info(LinkRef::Name(&self.ifname)).ok()?;
        match controller {
            Some(index) => link_info(LinkRef::Index(index)).ok()?.1,
            None => own,
        }
    }

    /// The host's own MAC addresses on this link: the interface's (the
    /// link's host end) and, for a bridge port, the bridge's. No guest may
    /// be taught one of them as its own.
    pub fn host_end_macs(&self) -> Vec<[u8; 6]> {
        let Ok(_guard) = NetnsGuard::enter_opt(self.netns.as_deref()) else {
            return Vec::new();
        };
        let Ok((controller, own)) = link_info(LinkRef::Name(&self.ifname)) else {
            return Vec::new();
        };
        let bridge = controller.and_then(|index| link_info(LinkRef::Index(index)).ok()?.1);
        own.into_iter().chain(bridge).collect()
    }

    /// Whether the namespace and interface exist, and if not, why.
    pub fn exists(&self) -> Result<(), String> {
        let _guard = NetnsGuard::enter_opt(self.netns.as_deref()).map_err(|e| e.to_string())?;
        place_here(&self.ifname)
            .map(|_| ())
            .map_err(|e| format!("interface {}: {e}", self.ifname))
    }
}

/// Where an instance is to be enforced, and the MAC addresses its
/// programs check (the instance's on the host side: the rules file's
/// `mac`, or libvirt's; the AWS services' as the file gives it); an error
/// says why it cannot be known now (a libvirt domain that is not running).
pub(super) type Wanted = Result<(Place, Macs), String>;

/// What libvirt told of domains: the NICs its hook gave as a domain
/// started, kept until libvirt's own live state of the domain exists (it
/// is written as the domain starts) or the domain stops.
#[derive(Debug, Default)]
pub(super) struct Domains {
    pub from_hook: BTreeMap<String, Vec<DomainNic>>,
}

impl Domains {
    /// Where `inst` is to be enforced now.
    pub fn wanted(&mut self, inst: &CompiledInstance) -> Wanted {
        let mac = inst.mac.map(|m| m.0);
        let (place, instance_mac) = match inst.link.as_ref() {
            Some(Link::Instance(ifname)) => (
                Place {
                    netns: inst.netns.clone(),
                    ifname: ifname.clone(),
                    side: Side::Instance,
                },
                None,
            ),
            Some(Link::Host(ifname)) => (
                Place {
                    netns: inst.netns.clone(),
                    ifname: ifname.clone(),
                    side: Side::Host,
                },
                mac,
            ),
            Some(Link::Libvirt { domain, mac }) => {
                let nic = self.nic(domain, *mac)?;
                (
                    Place {
                        netns: inst.netns.clone(),
                        ifname: nic.ifname,
                        side: Side::Host,
                    },
                    Some(nic.mac.0),
                )
            }
            None => return Err("not enforced on this host".to_owned()),
        };
        // The file's service_mac; the host side's own is looked up as the
        // addresses are written (`Place::with_services`).
        Ok((
            place,
            Macs {
                instance: instance_mac,
                services: inst.service_mac.map(|m| m.0),
            },
        ))
    }

    /// The NIC of a running domain: from libvirt's live state once it is
    /// there (what libvirt says while the domain runs), else from what its
    /// hook gave as the domain started.
    fn nic(
        &mut self,
        domain: &str,
        mac: Option<crate::config::MacAddr>,
    ) -> Result<DomainNic, String> {
        match libvirt::running_nics(Path::new(libvirt::QEMU_STATE_DIR), domain)
            .and_then(|nics| libvirt::pick(domain, &nics, mac))
        {
            Ok(nic) => {
                self.from_hook.remove(domain);
                Ok(nic)
            }
            Err(why) => match self.from_hook.get(domain) {
                Some(nics) => libvirt::pick(domain, nics, mac),
                None => Err(why),
            },
        }
    }
}

/// The network namespaces holding the places of `places` (with the inode
/// each name stands for now), whose link events wake the agent.
pub(super) fn namespaces<'a>(
    places: impl Iterator<Item = Option<&'a str>>,
) -> BTreeSet<crate::source::links::Namespace> {
    places
        .map(|netns| {
            let path = match netns {
                Some(ns) if ns.starts_with('/') => ns.to_owned(),
                Some(ns) => format!("/run/netns/{ns}"),
                None => "/proc/self/ns/net".to_owned(),
            };
            let inode = std::fs::metadata(path).map_or(0, |m| m.ino());
            (netns.map(str::to_owned), inode)
        })
        .collect()
}

/// A link asked for by name or by index.
#[derive(Clone, Copy)]
enum LinkRef<'a> {
    Name(&'a str),
    Index(u32),
}

/// One `RTM_GETLINK` answer, in the current network namespace: the link's
/// controller (the bridge it is a port of), if any, and its MAC address.
/// A plain netlink socket rather than rtnetlink's handle: this runs inside
/// the agent's runtime, which must not be blocked on, and the kernel queues
/// its answer before `send` returns, so it is read without waiting.
fn link_info(link: LinkRef<'_>) -> std::io::Result<(Option<u32>, Option<[u8; 6]>)> {
    use rtnetlink::{
        packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload},
        packet_route::{
            RouteNetlinkMessage,
            link::{LinkAttribute, LinkMessage},
        },
        sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE},
    };
    let mut msg = LinkMessage::default();
    match link {
        LinkRef::Name(name) => msg.attributes.push(LinkAttribute::IfName(name.to_owned())),
        LinkRef::Index(index) => msg.header.index = index,
    }
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(
        header,
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)),
    );
    request.finalize();
    let mut buf = vec![0; request.header.length as usize];
    request.serialize(&mut buf);
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&buf, 0)?;
    socket.set_non_blocking(true)?;
    let (answer, _) = socket.recv_from_full()?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer)
        .map_err(std::io::Error::other)?;
    match answer.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
            let mut controller = None;
            let mut mac = None;
            for a in link.attributes {
                match a {
                    LinkAttribute::Controller(index) if index != 0 => controller = Some(index),
                    LinkAttribute::Address(bytes) => {
                        mac = <[u8; 6]>::try_from(bytes.as_slice()).ok();
                    }
                    _ => {}
                }
            }
            Ok((controller, mac))
        }
        NetlinkPayload::Error(e) => Err(e.to_io()),
        _ => Err(std::io::Error::other("unexpected netlink answer")),
    }
}

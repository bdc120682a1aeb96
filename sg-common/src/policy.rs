//! The compiled policy as the kernel reads it, and the classification that
//! reads it.
//!
//! Classification costs the same whatever the size of the rule set:
//!
//! 1. the remote address, tagged with generation and direction, in an
//!    address trie ([`AddrKeyV4`], [`AddrKeyV6`]) gives an *address class*:
//!    the set of rules whose sources contain that address. The compiler
//!    copies the rules of every broader prefix into each narrower one, so the
//!    single most specific match already holds the union security groups
//!    require;
//! 2. the class, protocol and port (or ICMP type/code) say whether any rule
//!    of that class allows the packet: single ports are one exact-match hash
//!    lookup ([`PortKey`] in the port hash); port ranges, whole protocols and
//!    "all traffic" sit in the port trie as the prefixes that cover them, and
//!    the class's [`AddrValue::flags`] say whether the trie holds anything
//!    for this protocol at all. A longest-prefix lookup deepens with the
//!    number of entries (ten thousand single ports made the dropped path
//!    1.5x slower); a hash lookup does not, and most rules are single ports.
//!
//! Every address key carries the policy generation, so a reload fills the
//! inactive generation and flips [`Settings::generation`]: a packet reads
//! the generation once and is judged entirely by one policy. A class's port
//! entries never change while a generation refers to it (the agent gives
//! classes stable ids), so the port maps need no generation of their own.

use crate::flow::{Addr, FAMILY_V4, Flow};

pub const INGRESS: u8 = 0;
pub const EGRESS: u8 = 1;
/// The address tries' third "direction": the instance's own addresses
/// (host entries), for the source/destination check. An instance without
/// the check has the whole address space (/0) there instead.
pub const OWN: u8 = 2;
/// The address tries' fourth "direction": what security groups never
/// filter, by address (link-local 169.254.0.0/16, the IPv6 services, the
/// reserved addresses of each subnet, Amazon DNS): entries of any prefix,
/// their flags unused.
pub const SERVICES: u8 = 3;
/// [`aws_service`]: not traffic with an AWS service.
pub const EXEMPT_NONE: u8 = 0;
/// [`aws_service`]: traffic with a service's address (or a DHCP answer),
/// exempt if the frame comes from (goes to) the services' MAC address.
pub const EXEMPT_SERVICE: u8 = 1;
/// [`aws_service`]: a DHCP (`DHCPv6`) request from the instance, exempt
/// if the frame goes to the services' MAC address or is broadcast
/// (multicast): a client asks before it knows its server.
pub const EXEMPT_DHCP_REQUEST: u8 = 2;

/// Bits of an address key before the address: generation and direction.
pub const ADDR_TAG_BITS: u32 = 32;
/// Bits of a port key before the protocol: the class.
pub const PORT_CLASS_BITS: u32 = 32;
/// Bits of a port key before the port: class, protocol and a reserved byte.
pub const PORT_PROTO_BITS: u32 = 48;

/// [`Settings::ready`]: a policy is published (packets are judged; without
/// it every packet is dropped).
pub const READY: u32 = 1;
/// [`Settings::ready`]: no new connection is tracked (a new flow the rules
/// allow is dropped as over the allowance) while the agent waits for the
/// table to hold no more than a smaller allowance: established connections
/// are kept, as AWS keeps them when an allowance is reached, and none is
/// evicted to make the table smaller.
pub const REFUSING_NEW_FLOWS: u32 = 2;
/// [`Settings::ready`]: someone follows this instance's flows live
/// (`sg-agent flows --live`): dropped and untracked packets are reported
/// as events even when neither flow logs nor the drop log asked for them
/// (a load and a test on a dropped or untracked packet, nothing on the
/// tracked path).
pub const LIVE: u32 = 4;

/// Runtime settings, at index 0 of the settings array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The generation (0 or 1) every packet is judged by.
    pub generation: u32,
    /// [`READY`] once the agent has published a policy, with
    /// [`REFUSING_NEW_FLOWS`] while a smaller connection allowance waits
    /// for the table to drain.
    pub ready: u32,
    pub tcp_syn_ns: u64,
    pub tcp_established_ns: u64,
    pub tcp_closing_ns: u64,
    pub tcp_closed_ns: u64,
    pub udp_ns: u64,
    pub udp_stream_ns: u64,
    pub icmp_ns: u64,
    pub other_ns: u64,
    pub fragment_ns: u64,
    /// Nanoseconds per jiffy (the kernel's tick), set by the data plane when
    /// it publishes: the programs tell time as `bpf_jiffies64() *
    /// ns_per_tick`, a plain load where the coarse clock costs a helper that
    /// reads the timekeeper (6% of a tracked packet). Both have the tick's
    /// resolution. Zero: the programs use the coarse clock.
    pub ns_per_tick: u64,
    /// Per direction (inbound, outbound): the epoch of the generation's
    /// network ACL table (`crate::nacl::NaclTable::epoch`), or 0 where no
    /// network ACL filters the instance. Read with the generation, so a
    /// packet of an instance without one never reads the table, and a
    /// tracked flow's cached pass is compared without it.
    pub nacl: [u32; 2],
}
const _: () = assert!(size_of::<Settings>() == 96);

/// How many of the instance's own prefixes per family [`Shortcuts`] lists:
/// an instance with more (secondary addresses, delegated prefixes) has
/// them looked up in the address trie, as before.
pub const SHORTCUT_OWN_V4: usize = 8;
pub const SHORTCUT_OWN_V6: usize = 4;
/// [`Shortcuts::flags`]: the agent wrote this generation's shortcuts; without
/// it (a map created empty, an agent that predates them) everything is
/// looked up in the tries.
pub const SHORTCUTS_VALID: u32 = 1;
/// [`Shortcuts::flags`]: `own_v4` lists every IPv4 prefix of the instance
/// (`own_v6` every IPv6 one): the check needs no trie lookup.
pub const SHORTCUTS_OWN_V4_LISTED: u32 = 1 << 1;
pub const SHORTCUTS_OWN_V6_LISTED: u32 = 1 << 2;

/// One of the instance's own IPv4 prefixes: network and mask, both in
/// network byte order (so `addr & mask == net` compares as the packet
/// holds the address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnV4 {
    pub net: u32,
    pub mask: u32,
}

/// One of the instance's own IPv6 prefixes, as [`OwnV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnV6 {
    pub net: Addr,
    pub mask: Addr,
}

/// What one generation's address tries say of the instance's own
/// addresses (the source/destination check) and of the whole address
/// space (untracked flows), in one array slot per generation: a new flow
/// reads them with one array lookup instead of up to three trie lookups
/// (each a walk down an LPM trie). Derived by the agent from the very
/// entries it writes to the tries for that generation, and written before
/// the flip to it; the tries stay authoritative, and anything the slot
/// does not hold is looked up there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shortcuts {
    /// `SHORTCUTS_*` bits.
    pub flags: u32,
    /// Entries of `own_v4` (`own_v6`) in use.
    pub own_v4_len: u32,
    pub own_v6_len: u32,
    /// Bit [`whole_index`]: `whole` holds that direction's and family's
    /// whole-address-space entry (a /0); clear: the trie has none.
    pub whole_present: u32,
    pub whole: [AddrValue; 4],
    pub own_v4: [OwnV4; SHORTCUT_OWN_V4],
    pub own_v6: [OwnV6; SHORTCUT_OWN_V6],
}
const _: () = assert!(size_of::<Shortcuts>() == 240);

/// The slot of [`Shortcuts::whole`] for a direction (ingress or egress)
/// and family.
#[inline(always)]
pub fn whole_index(direction: u8, family: u8) -> usize {
    usize::from(direction & 1) * 2 + usize::from(family != FAMILY_V4)
}

impl Shortcuts {
    /// Whether `addr` (network byte order) is in one of the listed IPv4
    /// prefixes; `None` when they are not all listed.
    #[inline(always)]
    pub fn own_v4(&self, addr: u32) -> Option<bool> {
        if self.flags & SHORTCUTS_OWN_V4_LISTED == 0 {
            return None;
        }
        let listed = self.own_v4.iter().take(self.own_v4_len as usize);
        Some(listed.into_iter().any(|own| addr & own.mask == own.net))
    }

    /// As [`Shortcuts::own_v4`], IPv6.
    #[inline(always)]
    pub fn own_v6(&self, addr: &Addr) -> Option<bool> {
        if self.flags & SHORTCUTS_OWN_V6_LISTED == 0 {
            return None;
        }
        let listed = self.own_v6.iter().take(self.own_v6_len as usize);
        Some(listed.into_iter().any(|own| {
            addr[0] & own.mask[0] == own.net[0]
                && addr[1] & own.mask[1] == own.net[1]
                && addr[2] & own.mask[2] == own.net[2]
                && addr[3] & own.mask[3] == own.net[3]
        }))
    }

    /// The whole-address-space entry of a direction and family, as the
    /// trie holds it (`None`: it holds none).
    #[inline(always)]
    pub fn whole(&self, direction: u8, family: u8) -> Option<AddrValue> {
        let i = whole_index(direction, family);
        (self.whole_present & (1 << i) != 0).then(|| self.whole[i])
    }
}

/// Tag bytes of an address key.
#[inline(always)]
pub fn addr_tag(generation: u8, direction: u8) -> [u8; 4] {
    [generation, direction, 0, 0]
}

/// Address trie key, IPv4. Prefix length = [`ADDR_TAG_BITS`] + prefix bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKeyV4 {
    pub tag: [u8; 4],
    /// Network byte order, as in the packet.
    pub addr: u32,
}
const _: () = assert!(size_of::<AddrKeyV4>() == 8);

/// Address trie key, IPv6. Prefix length = [`ADDR_TAG_BITS`] + prefix bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKeyV6 {
    pub tag: [u8; 4],
    /// Network byte order, as in the packet.
    pub addr: Addr,
}
const _: () = assert!(size_of::<AddrKeyV6>() == 20);

/// What an address trie entry maps to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrValue {
    /// Address class: the key of this class's entries in the port maps.
    pub class: u32,
    /// `CLASS_*` bits: what the class allows beyond single ports.
    pub flags: u32,
}
const _: () = assert!(size_of::<AddrValue>() == 8);

/// The class allows every protocol ("all traffic"): no port lookup at all.
pub const CLASS_ALL_PROTOCOLS: u32 = 1;
/// The port trie holds ranges or "every port" entries of this class for TCP,
/// UDP, ICMP, `ICMPv6`, or another protocol (which has no ports).
pub const CLASS_TRIE_TCP: u32 = 1 << 1;
pub const CLASS_TRIE_UDP: u32 = 1 << 2;
pub const CLASS_TRIE_ICMP: u32 = 1 << 3;
pub const CLASS_TRIE_ICMPV6: u32 = 1 << 4;
pub const CLASS_TRIE_OTHER: u32 = 1 << 5;
/// On a whole-address-space entry (`0.0.0.0/0` or `::/0`) only: the other
/// direction allows every TCP (UDP) port to the whole address space of
/// this family, so the TCP (UDP) flows this entry's rules allow are not
/// tracked (AWS "untracked flows").
pub const CLASS_REVERSE_OPEN_TCP: u32 = 1 << 6;
pub const CLASS_REVERSE_OPEN_UDP: u32 = 1 << 7;
/// On every entry of a direction and family: a TCP (UDP) flow of this
/// direction may be untracked, because one of the two whole-space entries
/// (this direction's, or the other's, whose flows this one answers) has its
/// `CLASS_REVERSE_OPEN_*` bit. Without it [`untracked`] looks nothing up.
pub const CLASS_MAY_UNTRACK_TCP: u32 = 1 << 8;
pub const CLASS_MAY_UNTRACK_UDP: u32 = 1 << 9;
/// On every entry inside a service AWS tracks every connection through,
/// whatever the rules say (a Network Load Balancer, a NAT gateway...: EC2's
/// "automatically tracked connections"): a flow whose remote end is there
/// is never untracked.
pub const CLASS_AUTO_TRACKED: u32 = 1 << 10;
/// With [`CLASS_AUTO_TRACKED`]: each connection takes two entries of the
/// allowance (AWS: "two entries per connection" through a `DynamoDB`
/// gateway endpoint).
pub const CLASS_TWO_ENTRIES: u32 = 1 << 11;
/// With [`CLASS_AUTO_TRACKED`]: a Network Load Balancer's flows idle out
/// after its timeouts, not the instance's: TCP (established or half-closed)
/// after the seconds in the flags' upper 16 bits
/// ([`CLASS_SERVICE_TIMEOUT_SHIFT`]), UDP after [`NLB_UDP_TIMEOUT_S`].
pub const CLASS_NLB_TIMEOUTS: u32 = 1 << 12;
pub const CLASS_SERVICE_TIMEOUT_SHIFT: u32 = 16;
/// A Network Load Balancer's UDP idle timeout (AWS: 120 s, fixed).
pub const NLB_UDP_TIMEOUT_S: u32 = 120;

/// The idle timeout in seconds a new flow's entry carries
/// ([`crate::conntrack::CtEntry::idle_s`]) when its remote end's class
/// says a Network Load Balancer tracks it; 0 (the instance's timeouts)
/// otherwise.
#[inline(always)]
pub fn service_idle_s(remote: AddrValue, protocol: u8) -> u32 {
    if remote.flags & CLASS_NLB_TIMEOUTS == 0 {
        return 0;
    }
    match protocol {
        crate::flow::proto::TCP => remote.flags >> CLASS_SERVICE_TIMEOUT_SHIFT,
        crate::flow::proto::UDP => NLB_UDP_TIMEOUT_S,
        _ => 0,
    }
}

/// The `CLASS_TRIE_*` bit of `protocol`.
#[inline(always)]
pub fn class_trie_bit(protocol: u8) -> u32 {
    match protocol {
        crate::flow::proto::TCP => CLASS_TRIE_TCP,
        crate::flow::proto::UDP => CLASS_TRIE_UDP,
        crate::flow::proto::ICMP => CLASS_TRIE_ICMP,
        crate::flow::proto::ICMPV6 => CLASS_TRIE_ICMPV6,
        _ => CLASS_TRIE_OTHER,
    }
}

/// Port key: exact in the port hash (a single port), a prefix in the port
/// trie. Prefix length in the trie: [`PORT_CLASS_BITS`] for "every protocol",
/// [`PORT_PROTO_BITS`] for "every port of this protocol", plus port bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    /// Class id, big-endian so the trie compares it most significant first.
    pub class: [u8; 4],
    pub proto: u8,
    pub reserved: u8,
    /// Destination port, or ICMP `type << 8 | code`, big-endian.
    pub port: [u8; 2],
}
const _: () = assert!(size_of::<PortKey>() == 8);

impl PortKey {
    #[inline(always)]
    pub fn new(class: u32, proto: u8, port: u16) -> Self {
        Self {
            class: class.to_be_bytes(),
            proto,
            reserved: 0,
            port: port.to_be_bytes(),
        }
    }

    /// (class, protocol, port), as [`PortKey::new`] took them.
    pub fn parts(&self) -> (u32, u8, u16) {
        (
            u32::from_be_bytes(self.class),
            self.proto,
            u16::from_be_bytes(self.port),
        )
    }
}

/// The entry allows every port of its protocol (or every protocol).
pub const PORT_FLAG_ALL_PORTS: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortValue {
    pub flags: u32,
}

/// Longest-prefix lookups on the policy tries. The kernel implements it over
/// its LPM maps, the agent's tests over an in-memory trie: both run
/// [`classify`] unchanged.
pub trait PolicyMaps {
    /// Longest match for a full-length IPv4 key.
    fn addr_v4(&self, key: &AddrKeyV4) -> Option<AddrValue>;
    /// Longest match for a full-length IPv6 key.
    fn addr_v6(&self, key: &AddrKeyV6) -> Option<AddrValue>;
    /// The entry of the whole address space (a /0) under `tag`, if any:
    /// the rules whose source is all of `family`'s addresses.
    fn whole_space(&self, family: u8, tag: [u8; 4]) -> Option<AddrValue>;
    /// Exact match in the port hash.
    fn port_exact(&self, key: &PortKey) -> Option<PortValue>;
    /// Longest match for a full-length port key in the port trie.
    fn ports(&self, key: &PortKey) -> Option<PortValue>;
    /// The [`Shortcuts`] of `generation`, where the store keeps them
    /// (valid or not: [`shortcuts`] checks). Without them everything is
    /// looked up in the tries.
    fn shortcuts(&self, _generation: u8) -> Option<&Shortcuts> {
        None
    }
}

/// The valid [`Shortcuts`] of `generation`, if any.
#[inline(always)]
pub fn shortcuts<M: PolicyMaps>(maps: &M, generation: u8) -> Option<&Shortcuts> {
    maps.shortcuts(generation)
        .filter(|s| s.flags & SHORTCUTS_VALID != 0)
}

/// The whole-address-space entry of `direction` (ingress or egress) and
/// `family` in `generation`: from the shortcuts when valid, else the trie.
#[inline(always)]
pub fn whole_space<M: PolicyMaps>(
    maps: &M,
    generation: u8,
    direction: u8,
    family: u8,
) -> Option<AddrValue> {
    match shortcuts(maps, generation) {
        Some(s) => s.whole(direction, family),
        None => maps.whole_space(family, addr_tag(generation, direction)),
    }
}

/// Whether the rules of `direction` in `generation` allow `flow`.
///
/// The remote end is the source of an inbound packet and the destination of
/// an outbound one. A later fragment has no port: it is allowed only by a
/// rule that allows its protocol on every port.
#[inline(always)]
pub fn classify<M: PolicyMaps>(maps: &M, generation: u8, direction: u8, flow: &Flow) -> bool {
    allowing_class(maps, generation, direction, flow).is_some()
}

/// [`classify`], giving the remote end's address class when the rules
/// allow the packet: what [`untracked`] reads next, so the address trie is
/// not looked up twice.
#[inline(always)]
pub fn allowing_class<M: PolicyMaps>(
    maps: &M,
    generation: u8,
    direction: u8,
    flow: &Flow,
) -> Option<AddrValue> {
    let remote = if direction == INGRESS {
        &flow.src
    } else {
        &flow.dst
    };
    let tag = addr_tag(generation, direction);
    let class = if flow.family == FAMILY_V4 {
        let key = AddrKeyV4 {
            tag,
            addr: remote[0],
        };
        maps.addr_v4(&key)
    } else {
        let key = AddrKeyV6 { tag, addr: *remote };
        maps.addr_v6(&key)
    };
    let class = class?;
    let later_fragment = flow.frag == crate::flow::FRAG_LATER;
    let port = if later_fragment {
        0
    } else {
        flow.policy_port()
    };
    if class_allows(maps, class, flow.proto, port, later_fragment) {
        return Some(class);
    }
    // IPv6's Authentication Header is an extension header the parser walks
    // over to the protocol it carries, and a protocol of its own that a
    // rule may name (AWS: protocol 51, no ports): such a rule allows it.
    (flow.ipv6_ah != 0 && class_allows(maps, class, crate::flow::proto::AH, 0, false))
        .then_some(class)
}

/// Whether an address class allows `proto` on `port` (`later_fragment`:
/// a fragment without ports, allowed only by an "every port" entry).
#[inline(always)]
fn class_allows<M: PolicyMaps>(
    maps: &M,
    class: AddrValue,
    proto: u8,
    port: u16,
    later_fragment: bool,
) -> bool {
    if class.flags & CLASS_ALL_PROTOCOLS != 0 {
        return true;
    }
    let key = PortKey::new(class.class, proto, port);
    // A later fragment has no port: only an "every port" entry (in the trie)
    // can allow it.
    if !later_fragment && maps.port_exact(&key).is_some() {
        return true;
    }
    if class.flags & class_trie_bit(proto) == 0 {
        return false;
    }
    match maps.ports(&key) {
        Some(v) => !later_fragment || v.flags & PORT_FLAG_ALL_PORTS != 0,
        None => false,
    }
}

/// AWS's source/destination check for a packet that opens a flow (or a
/// later fragment): its local end (the destination inbound, the source
/// outbound) must be one of the instance's addresses. Packets of tracked
/// flows are not checked again: their entry was made by a packet that was,
/// and its key holds both addresses.
///
/// Exempt, as on EC2: an IPv6 link-local local end (neighbour and router
/// discovery, listener reports, `DHCPv6`), and the unspecified address as
/// the source of what the instance sends before it has one. Only the
/// instance's *own* end counts: a packet from another instance's address
/// is not the instance's because it goes to a link-local address. Where
/// the instance's MAC address is known (`guest_mac`: the host side, where
/// the guest could claim any link-local address), its link-local source
/// must be the one that MAC address gives (EUI-64) or one it lists.
#[inline(always)]
pub fn own_address<M: PolicyMaps>(
    maps: &M,
    generation: u8,
    direction: u8,
    flow: &Flow,
    guest_mac: Option<[u8; 6]>,
) -> bool {
    let local = if direction == INGRESS {
        &flow.dst
    } else {
        &flow.src
    };
    if flow.family == FAMILY_V4 {
        return own_v4(maps, generation, local[0]);
    }
    if direction == EGRESS && unspecified(local) {
        return true;
    }
    if link_local(local) {
        return match guest_mac {
            Some(mac) if direction == EGRESS => {
                crate::guard::own_or_link_local(maps, generation, local, mac)
            }
            _ => true,
        };
    }
    own_v6(maps, generation, local)
}

/// [`own_address`] for traffic [`aws_service`] found to be with an AWS
/// service, where the services are: the same check,
/// except for DHCP's exchange, which runs before the instance has its
/// address: a client's request from `0.0.0.0`, and the server's answer,
/// to the address it offers (or to everyone). `DHCPv6` runs between
/// link-local addresses, which [`own_address`] already takes.
#[inline(always)]
pub fn service_own_address<M: PolicyMaps>(
    maps: &M,
    generation: u8,
    direction: u8,
    flow: &Flow,
    guest_mac: Option<[u8; 6]>,
) -> bool {
    if flow.family == FAMILY_V4 && flow.proto == crate::flow::proto::UDP {
        let dhcp = if direction == INGRESS {
            (flow.sport, flow.dport) == (67, 68)
        } else {
            (flow.sport, flow.dport) == (68, 67) && flow.src[0] == 0
        };
        if dhcp {
            return true;
        }
    }
    own_address(maps, generation, direction, flow, guest_mac)
}

/// Whether `addr` (network byte order) is one of the instance's IPv4
/// addresses (every address, without the source/destination check).
#[inline(always)]
pub fn own_v4<M: PolicyMaps>(maps: &M, generation: u8, addr: u32) -> bool {
    if let Some(own) = shortcuts(maps, generation).and_then(|s| s.own_v4(addr)) {
        return own;
    }
    maps.addr_v4(&AddrKeyV4 {
        tag: addr_tag(generation, OWN),
        addr,
    })
    .is_some()
}

/// Whether `addr` is one of the instance's IPv6 addresses.
#[inline(always)]
pub fn own_v6<M: PolicyMaps>(maps: &M, generation: u8, addr: &Addr) -> bool {
    if let Some(own) = shortcuts(maps, generation).and_then(|s| s.own_v6(addr)) {
        return own;
    }
    maps.addr_v6(&AddrKeyV6 {
        tag: addr_tag(generation, OWN),
        addr: *addr,
    })
    .is_some()
}

/// Whether a packet is traffic with an AWS service that security groups
/// never filter, in either direction, as far as its addresses and ports
/// tell: DHCP (UDP 67/68) and `DHCPv6` (UDP 546/547) by their ports, any
/// packet whose remote end is under the [`SERVICES`] tag (link-local
/// addresses, the reserved addresses of each subnet...). An inbound TCP
/// packet must not open a connection (services answer, they do not call).
/// The caller then checks the frame's MAC addresses ([`EXEMPT_SERVICE`],
/// [`EXEMPT_DHCP_REQUEST`]): on EC2 these addresses are answered by the
/// Nitro host alone, so only what comes from (goes to) where the services
/// are is exempt; the rest is judged by the rules. Such a packet passes
/// without rules and without a connection-table entry, as on EC2, where
/// it never meets the security group (nor the connection allowance).
#[inline(always)]
pub fn aws_service<M: PolicyMaps>(maps: &M, generation: u8, direction: u8, flow: &Flow) -> u8 {
    use crate::flow::proto::{TCP, UDP};
    if flow.frag == crate::flow::FRAG_LATER {
        return EXEMPT_NONE;
    }
    let (remote_port, local_port) = if direction == INGRESS {
        (flow.sport, flow.dport)
    } else {
        (flow.dport, flow.sport)
    };
    if flow.proto == UDP {
        let (server, client) = if flow.family == FAMILY_V4 {
            (67, 68)
        } else {
            (547, 546)
        };
        if remote_port == server && local_port == client {
            // A request may go to everyone only as a request to everyone
            // does: to 255.255.255.255 (ff02::1:2, every DHCP server and
            // relay); to any other address, only where the services are.
            return if direction == EGRESS && to_every_dhcp_server(flow) {
                EXEMPT_DHCP_REQUEST
            } else {
                EXEMPT_SERVICE
            };
        }
    }
    // The services answer; they never open a TCP connection to the
    // instance (a SYN "from" one is a spoofer's).
    if flow.proto == TCP
        && direction == INGRESS
        && flow.tcp_flags & (crate::flow::tcp_flags::SYN | crate::flow::tcp_flags::ACK)
            == crate::flow::tcp_flags::SYN
    {
        return EXEMPT_NONE;
    }
    let remote = if direction == INGRESS {
        &flow.src
    } else {
        &flow.dst
    };
    let tag = addr_tag(generation, SERVICES);
    let found = if flow.family == FAMILY_V4 {
        maps.addr_v4(&AddrKeyV4 {
            tag,
            addr: remote[0],
        })
    } else {
        maps.addr_v6(&AddrKeyV6 { tag, addr: *remote })
    };
    if found.is_some() {
        EXEMPT_SERVICE
    } else {
        EXEMPT_NONE
    }
}

/// `fe80::/10`, IPv6 in network byte order.
#[inline(always)]
fn link_local(a: &crate::flow::Addr) -> bool {
    u32::from_be(a[0]) >> 22 == 0x3fa
}

/// `::`.
#[inline(always)]
fn unspecified(a: &crate::flow::Addr) -> bool {
    (a[0] | a[1] | a[2] | a[3]) == 0
}

/// A DHCP request's destination when the client does not know its
/// server: IPv4's limited broadcast, or `DHCPv6`'s
/// `All_DHCP_Relay_Agents_and_Servers` (`ff02::1:2`).
#[inline(always)]
fn to_every_dhcp_server(flow: &Flow) -> bool {
    if flow.family == FAMILY_V4 {
        flow.dst[0] == u32::MAX
    } else {
        flow.dst
            == [
                u32::from_ne_bytes([0xff, 0x02, 0, 0]),
                0,
                0,
                u32::from_ne_bytes([0, 1, 0, 2]),
            ]
    }
}

/// Whether a new TCP or UDP flow that the rules of `direction` allow goes
/// untracked (no connection-table entry), as AWS decides: a rule whose
/// source (destination) is the whole address space allows it, and the
/// other direction allows every port of its protocol to the whole address
/// space. Then each of its packets is judged by the rules of its direction,
/// so removing the rule cuts the flow at once.
///
/// A packet is also untracked when it answers such a flow of the other
/// direction (its reverse would be untracked there): it needs no entry,
/// since this direction's rules allow every port of its protocol anyway.
/// (An outbound connection from such a flow's own port, say from port 80
/// of a web server, is taken for an answer too: it passes by the rules
/// either way.) ICMP and other protocols are always tracked.
///
/// A flow whose remote end is a service AWS tracks every connection
/// through ([`CLASS_AUTO_TRACKED`]) is tracked whatever the rules say.
///
/// `remote` is the class [`allowing_class`] found for the packet: unless it
/// says a flow of this direction may be untracked, nothing is looked up.
#[inline(always)]
pub fn untracked<M: PolicyMaps>(
    maps: &M,
    generation: u8,
    direction: u8,
    flow: &Flow,
    remote: AddrValue,
) -> bool {
    let (may_bit, open_bit) = match flow.proto {
        crate::flow::proto::TCP => (CLASS_MAY_UNTRACK_TCP, CLASS_REVERSE_OPEN_TCP),
        crate::flow::proto::UDP => (CLASS_MAY_UNTRACK_UDP, CLASS_REVERSE_OPEN_UDP),
        _ => return false,
    };
    if remote.flags & (may_bit | CLASS_AUTO_TRACKED) != may_bit
        || flow.frag == crate::flow::FRAG_LATER
    {
        return false;
    }
    // A flow of this direction, allowed by a whole-space rule.
    if let Some(whole) = whole_space(maps, generation, direction, flow.family)
        && whole.flags & open_bit != 0
        && class_allows(maps, whole, flow.proto, flow.dport, false)
    {
        return true;
    }
    // The answer of such a flow of the other direction: reversed, its
    // destination port is this packet's source port.
    let other = direction ^ 1;
    if let Some(whole) = whole_space(maps, generation, other, flow.family)
        && whole.flags & open_bit != 0
        && class_allows(maps, whole, flow.proto, flow.sport, false)
    {
        return true;
    }
    false
}

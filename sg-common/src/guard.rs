//! The host side's layer-2 guard: on the host end of an instance's link (a
//! VM's tap, a container's host veth), what the instance sends is checked
//! before its security groups judge it, so that root inside the guest can
//! neither lift nor dodge them.
//!
//! On EC2 the hypervisor owns the instance's link: a frame leaves only with
//! the instance's MAC address, and no ARP or neighbour advertisement of the
//! instance can claim a neighbour's address. Here the same checks run where
//! libvirt's `clean-traffic` filter and Neutron's port security run them,
//! on the frames the instance sends:
//!
//! * the source MAC address must be the instance's (`no-mac-spoofing`): the
//!   one the rules file (or libvirt) gives, or else the first one seen that
//!   could be an instance's: unicast, and neither the host's (the link's
//!   host end, the services') nor another instance's;
//! * only IPv4, IPv6 and ARP, untagged (`no-other-l2-traffic`): a VLAN tag
//!   from a guest could hop into another VLAN of a VLAN-aware bridge (the
//!   kernel takes one tag out of the frame into the packet's metadata
//!   before TC runs: that one counts too);
//! * ARP must be Ethernet/IPv4 ARP whose sender MAC address is the
//!   instance's and whose sender address is one of its own; an address
//!   probe (sender 0.0.0.0) may ask only for one of its own addresses, as
//!   duplicate address detection in IPv6 may (`no-arp-spoofing`);
//! * neighbour discovery comes straight after the IPv6 header, is walked
//!   to the end of its message (what cannot be walked is dropped), and may
//!   name only the instance's MAC address as a
//!   link-layer address, may advertise (or probe for, during duplicate
//!   address detection) only the instance's own addresses and its
//!   link-local address derived from its MAC (EUI-64, as Neutron allows),
//!   must come from one of those or from `::`, and may not be a router's
//!   message (advertisement, redirect): on AWS only the VPC router is one.
//!
//! IP packets then go on to the security groups, whose source/destination
//! check covers the IP addresses. What the host sends to the instance is
//! not checked here: the instance cannot forge it.

use core::ptr::addr_of;

use crate::{
    counters::{
        DROP_ARP_SPOOFED, DROP_MAC_SPOOFED, DROP_MALFORMED, DROP_ND_SPOOFED, DROP_UNSUPPORTED_L2,
        PASS_NEIGHBOUR_DISCOVERY, PASS_NOT_IP,
    },
    flow::{Addr, Flow},
    parse::{EthHdr, Next, PacketView, Parsed, mac_at, ptr_at, ptr_within},
    policy::{PolicyMaps, own_v4, own_v6},
};

/// [`MacEntry::learned`]: given by the rules file or libvirt.
pub const MAC_CONFIGURED: u8 = 0;
/// [`MacEntry::learned`]: taken from the first frame the instance sent.
pub const MAC_LEARNED: u8 = 1;

/// The instance's MAC address, in the `SG_MAC` map (and the services',
/// in `SG_SERVICE_MAC`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MacEntry {
    pub mac: [u8; 6],
    /// [`MAC_CONFIGURED`] or [`MAC_LEARNED`].
    pub learned: u8,
    pub pad: u8,
}
const _: () = assert!(size_of::<MacEntry>() == 8);

/// A key of the `SG_MAC_RESERVED` hash: a MAC address no instance may be
/// taught by its first frame (the host's, and every other instance's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacKey {
    pub mac: [u8; 6],
    pub pad: [u8; 2],
}
const _: () = assert!(size_of::<MacKey>() == 8);

/// Where the programs keep the instance's MAC address.
pub trait MacStore {
    /// The instance's MAC address, if one is known.
    fn known(&self) -> Option<[u8; 6]>;

    /// Stores `mac` as the instance's, unless another CPU stored one first;
    /// whichever is known then is returned. `None`: none could be stored.
    fn learn(&self, mac: [u8; 6]) -> Option<[u8; 6]>;

    /// Whether `mac` belongs to someone else: the host (the link's host
    /// end, where the AWS services answer) or another instance, configured
    /// or learned.
    fn reserved(&self, mac: [u8; 6]) -> bool;
}

/// Whether `mac` could be an instance's own: a unicast address (the
/// group bit clear), not all zeros.
#[inline(always)]
pub fn unicast(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac != [0; 6]
}

/// The instance's MAC address: the known one, or else `seen` (the source
/// of the frame at hand) if it could be the instance's and is no one
/// else's. `None`: none is known, and this frame's teaches nothing (it is
/// dropped).
#[inline(always)]
pub fn instance_mac<S: MacStore>(store: &S, seen: [u8; 6]) -> Option<[u8; 6]> {
    if let Some(mac) = store.known() {
        return Some(mac);
    }
    if !unicast(seen) || store.reserved(seen) {
        return None;
    }
    store.learn(seen)
}

/// [`service_place`]: the frame's remote end is not where the services are.
pub const PLACE_NONE: u8 = 0;
/// [`service_place`]: it comes from (goes to) the services' MAC address.
pub const PLACE_SERVICES: u8 = 1;
/// [`service_place`]: an outbound frame to a broadcast or multicast
/// address, where a DHCP client's request goes before it knows its server.
pub const PLACE_EVERYONE: u8 = 2;

/// Where the frame's remote end is at layer 2, as far as the AWS services
/// go: its source (inbound) or destination (outbound) MAC address against
/// `services`, the MAC address they answer from (on EC2 only the Nitro
/// host answers at their addresses). Read before any address lookup: most
/// frames are not the services', and then nothing else is looked up.
#[inline(always)]
pub fn service_place(ctx: &impl PacketView, direction: u8, services: [u8; 6]) -> u8 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return PLACE_NONE;
    };
    let inbound = direction == crate::policy::INGRESS;
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    let remote = unsafe {
        if inbound {
            mac_at(ctx, addr_of!((*eth).src).cast())
        } else {
            mac_at(ctx, addr_of!((*eth).dst).cast())
        }
    };
    if remote == services {
        PLACE_SERVICES
    } else if !inbound && remote[0] & 1 != 0 {
        PLACE_EVERYONE
    } else {
        PLACE_NONE
    }
}

/// Whether traffic `policy::aws_service` found to be with an AWS service
/// (`exempt`) is where the services are (`place`): a DHCP request may go
/// to everyone, everything else must come from (go to) their MAC address.
#[inline(always)]
pub fn exempt_here(exempt: u8, place: u8) -> bool {
    match exempt {
        crate::policy::EXEMPT_SERVICE => place == PLACE_SERVICES,
        crate::policy::EXEMPT_DHCP_REQUEST => place != PLACE_NONE,
        _ => false,
    }
}

/// The frame-level checks of a frame the instance sent (`parsed`): its
/// source MAC address, its link-layer protocol, and ARP. `None`: an IP
/// packet from the instance's MAC address, to be judged (and neighbour
/// discovery checked with [`outbound_nd`]).
#[inline(always)]
pub fn outbound_frame<M: PolicyMaps, S: MacStore>(
    ctx: &impl PacketView,
    parsed: &Parsed,
    maps: &M,
    generation: u8,
    store: &S,
) -> Option<u32> {
    let Some(mac) = instance_mac(store, parsed.src_mac) else {
        return Some(DROP_MAC_SPOOFED);
    };
    if parsed.src_mac != mac {
        return Some(DROP_MAC_SPOOFED);
    }
    // VLAN tags, in the frame or in its metadata: nothing an EC2 instance
    // sends.
    if parsed.tagged {
        return Some(DROP_UNSUPPORTED_L2);
    }
    match parsed.next {
        // PPPoE, MPLS, LLDP... (DROP_UNSUPPORTED_L2), malformed IP.
        Next::Verdict(r) => Some(r),
        Next::Arp { off } => Some(arp(ctx, off, maps, generation, mac)),
        Next::Ip { .. } => None,
    }
}

/// An Ethernet/IPv4 ARP packet (RFC 826).
#[repr(C)]
struct ArpHdr {
    htype: [u8; 2],
    ptype: [u8; 2],
    hlen: u8,
    plen: u8,
    oper: [u8; 2],
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
}

const ETH_P_IP: u16 = 0x0800;
const ETH_HLEN: usize = 14;
const IPV6_HLEN: usize = 40;

/// An ARP packet from the instance (at `off`): Ethernet/IPv4 ARP speaking
/// for the instance's MAC address and one of its addresses, or a probe
/// (no sender address) for one of its own.
#[inline(always)]
fn arp<M: PolicyMaps>(
    ctx: &impl PacketView,
    off: usize,
    maps: &M,
    generation: u8,
    mac: [u8; 6],
) -> u32 {
    let Some(arp) = ptr_at::<ArpHdr>(ctx, off) else {
        return DROP_MALFORMED;
    };
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    let (htype, ptype, hlen, plen, sha, spa, tpa) = unsafe {
        (
            ctx.load_be16(addr_of!((*arp).htype).cast()),
            ctx.load_be16(addr_of!((*arp).ptype).cast()),
            (*arp).hlen,
            (*arp).plen,
            mac_at(ctx, addr_of!((*arp).sha).cast()),
            ctx.load_u32(addr_of!((*arp).spa).cast()),
            ctx.load_u32(addr_of!((*arp).tpa).cast()),
        )
    };
    if htype != 1 || ptype != ETH_P_IP || hlen != 6 || plen != 4 || sha != mac {
        return DROP_ARP_SPOOFED;
    }
    // A probe (RFC 5227) asks whether its target is in use: a neighbour
    // still probing for that address would give it up.
    let speaks_for = if spa == 0 { tpa } else { spa };
    if own_v4(maps, generation, speaks_for) {
        PASS_NOT_IP
    } else {
        DROP_ARP_SPOOFED
    }
}

/// The address an ARP packet from the instance speaks for (its sender's,
/// or a probe's target), written into `flow` as if from that address (the
/// family, both addresses, no protocol or ports): called once
/// [`outbound_frame`] dropped the packet as [`DROP_ARP_SPOOFED`], so the
/// event the agent gets names the address the guest uses (the agent warns
/// of one its instance's `addresses` do not list). A packet that is no
/// Ethernet/IPv4 ARP leaves `flow` as it is.
#[inline(always)]
pub fn arp_claim(ctx: &impl PacketView, off: usize, flow: &mut Flow) {
    let Some(arp) = ptr_at::<ArpHdr>(ctx, off) else {
        return;
    };
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    let (htype, ptype, hlen, plen, spa, tpa) = unsafe {
        (
            ctx.load_be16(addr_of!((*arp).htype).cast()),
            ctx.load_be16(addr_of!((*arp).ptype).cast()),
            (*arp).hlen,
            (*arp).plen,
            ctx.load_u32(addr_of!((*arp).spa).cast()),
            ctx.load_u32(addr_of!((*arp).tpa).cast()),
        )
    };
    if htype != 1 || ptype != ETH_P_IP || hlen != 6 || plen != 4 {
        return;
    }
    flow.family = crate::flow::FAMILY_V4;
    flow.src = [if spa == 0 { tpa } else { spa }, 0, 0, 0];
    flow.dst = [tpa, 0, 0, 0];
    flow.proto = 0;
    flow.sport = 0;
    flow.dport = 0;
    flow.icmp_type = 0;
    flow.icmp_code = 0;
    flow.frag = crate::flow::FRAG_NONE;
    flow.ipv6_ah = 0;
}

/// Options of a neighbour-discovery message walked; a message with more is
/// dropped (an option past the walk could carry a forged address).
pub const ND_OPTIONS_MAX: usize = 6;

const ND_ROUTER_SOLICIT: u8 = 133;
const ND_NEIGHBOUR_SOLICIT: u8 = 135;
const ND_NEIGHBOUR_ADVERT: u8 = 136;
const ND_OPT_SOURCE_LLADDR: u8 = 1;
const ND_OPT_TARGET_LLADDR: u8 = 2;

/// The `ICMPv6` header and the target address of a neighbour solicitation or
/// advertisement.
#[repr(C)]
struct NdHdr {
    ty: u8,
    code: u8,
    check: [u8; 2],
    flags: [u8; 4],
    target: [u8; 16],
}

/// An option's type and length (in units of 8 bytes), and the link-layer
/// address a source or target link-layer address option carries.
#[repr(C)]
struct NdOpt {
    ty: u8,
    len: u8,
    lladdr: [u8; 6],
}

/// A neighbour-discovery message from the instance (`flow` parsed, the
/// `ICMPv6` header at `l4_off`, the message ending at `l3_end`; its MAC
/// address known to `store` since [`outbound_frame`]):
/// [`PASS_NEIGHBOUR_DISCOVERY`] or a drop.
#[inline(always)]
pub fn outbound_nd<M: PolicyMaps, S: MacStore>(
    ctx: &impl PacketView,
    l4_off: usize,
    l3_end: usize,
    flow: &mut Flow,
    maps: &M,
    generation: u8,
    store: &S,
) -> u32 {
    // ND from the instance comes straight after the IPv6 header: no
    // extension headers (Linux sends none; RFC 6980 forbids fragments), and
    // the guard already refused VLAN tags. One fixed offset also keeps the
    // verifier from walking the options once per header chain the parser
    // can take.
    if l4_off != ETH_HLEN + IPV6_HLEN {
        return DROP_ND_SPOOFED;
    }
    let l4_off = ETH_HLEN + IPV6_HLEN;
    let Some(mac) = store.known() else {
        return DROP_MAC_SPOOFED;
    };
    let ty = flow.icmp_type;
    let unspecified = (flow.src[0] | flow.src[1] | flow.src[2] | flow.src[3]) == 0;
    let options = match ty {
        ND_ROUTER_SOLICIT => 8,
        ND_NEIGHBOUR_SOLICIT | ND_NEIGHBOUR_ADVERT => core::mem::size_of::<NdHdr>(),
        // Router advertisements (134) and redirects (137): a router's
        // messages.
        _ => return DROP_ND_SPOOFED,
    };
    // From one of its own addresses, or from `::` (duplicate address
    // detection, a router solicitation before it has an address).
    if unspecified {
        if ty == ND_NEIGHBOUR_ADVERT {
            return DROP_ND_SPOOFED;
        }
    } else if !own_or_link_local(maps, generation, &flow.src, mac) {
        return DROP_ND_SPOOFED;
    }
    if ty != ND_ROUTER_SOLICIT {
        let Some(nd) = ptr_within::<NdHdr>(ctx, l4_off, l3_end) else {
            return DROP_MALFORMED;
        };
        // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
        let target: Addr = unsafe {
            let p: *const u8 = addr_of!((*nd).target).cast();
            [
                ctx.load_u32(p),
                ctx.load_u32(p.add(4)),
                ctx.load_u32(p.add(8)),
                ctx.load_u32(p.add(12)),
            ]
        };
        // An advertisement claims its target; a probe for duplicates
        // (from `::`) does too, and would make a neighbour configuring
        // that address give it up.
        let claims = ty == ND_NEIGHBOUR_ADVERT || unspecified;
        if claims && !own_or_link_local(maps, generation, &target, mac) {
            // The event the agent gets names the address claimed (see
            // `arp_claim`): `flow` is read no further.
            flow.src = target;
            return DROP_ND_SPOOFED;
        }
    }
    // The options, to the end of the message: the receiver reads every one
    // of them, so one that cannot be read here (past the bytes in view, as
    // in an skb whose headers were not pulled that far) is dropped, as is
    // a message whose options do not fill it exactly (the receiver discards
    // it: RFC 4861 4.6).
    let mut off = l4_off + options;
    for _ in 0..ND_OPTIONS_MAX {
        if off >= l3_end {
            return PASS_NEIGHBOUR_DISCOVERY;
        }
        let Some(opt) = ptr_within::<NdOpt>(ctx, off, l3_end) else {
            return DROP_MALFORMED;
        };
        // SAFETY: the header pointer comes from `ptr_at`, which checked the whole option against data_end.
        let (oty, olen) = unsafe { ((*opt).ty, (*opt).len) };
        if olen == 0 {
            // RFC 4861: a node silently discards such a message.
            return DROP_MALFORMED;
        }
        if oty == ND_OPT_SOURCE_LLADDR || oty == ND_OPT_TARGET_LLADDR {
            // SAFETY: as above.
            let lladdr = unsafe { mac_at(ctx, addr_of!((*opt).lladdr).cast()) };
            // `::` has no link-layer address to give (RFC 4861 7.1.1).
            if lladdr != mac || unspecified {
                return DROP_ND_SPOOFED;
            }
        }
        off += usize::from(olen) * 8;
    }
    if off >= l3_end {
        return PASS_NEIGHBOUR_DISCOVERY;
    }
    // More options than walked.
    DROP_ND_SPOOFED
}

/// One of the instance's own IPv6 addresses, or the link-local address its
/// MAC address gives (EUI-64).
#[inline(always)]
pub fn own_or_link_local<M: PolicyMaps>(
    maps: &M,
    generation: u8,
    addr: &Addr,
    mac: [u8; 6],
) -> bool {
    *addr == eui64_link_local(mac) || own_v6(maps, generation, addr)
}

/// `fe80::/64` with the modified EUI-64 interface identifier of `mac`
/// (RFC 4291 appendix A), in network byte order.
#[inline(always)]
pub fn eui64_link_local(mac: [u8; 6]) -> Addr {
    [
        u32::from_ne_bytes([0xfe, 0x80, 0, 0]),
        0,
        u32::from_ne_bytes([mac[0] ^ 0x02, mac[1], mac[2], 0xff]),
        u32::from_ne_bytes([0xfe, mac[3], mac[4], mac[5]]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        parse::{SliceView, parse},
        policy::{AddrKeyV4, AddrKeyV6, AddrValue, PortKey, PortValue},
    };

    /// The instance owns 10.0.0.1 and nothing else.
    struct OneAddress;
    impl PolicyMaps for OneAddress {
        fn addr_v4(&self, key: &AddrKeyV4) -> Option<AddrValue> {
            (key.tag[1] == crate::policy::OWN && key.addr == u32::from_ne_bytes([10, 0, 0, 1]))
                .then_some(AddrValue::default())
        }
        fn addr_v6(&self, _: &AddrKeyV6) -> Option<AddrValue> {
            None
        }
        fn whole_space(&self, _: u8, _: [u8; 4]) -> Option<AddrValue> {
            None
        }
        fn port_exact(&self, _: &PortKey) -> Option<PortValue> {
            None
        }
        fn ports(&self, _: &PortKey) -> Option<PortValue> {
            None
        }
    }

    /// A store in memory: a known MAC address (or none, to be learned), and
    /// the addresses reserved for others.
    struct Store {
        known: core::cell::Cell<Option<[u8; 6]>>,
        reserved: std::vec::Vec<[u8; 6]>,
    }
    impl Store {
        fn knowing(mac: Option<[u8; 6]>) -> Self {
            Self {
                known: core::cell::Cell::new(mac),
                reserved: std::vec::Vec::new(),
            }
        }
    }
    impl MacStore for Store {
        fn known(&self) -> Option<[u8; 6]> {
            self.known.get()
        }
        fn learn(&self, mac: [u8; 6]) -> Option<[u8; 6]> {
            if self.known.get().is_none() {
                self.known.set(Some(mac));
            }
            self.known.get()
        }
        fn reserved(&self, mac: [u8; 6]) -> bool {
            self.reserved.contains(&mac)
        }
    }

    const GUEST: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn eth(src: [u8; 6], ethertype: u16, len: usize) -> std::vec::Vec<u8> {
        let mut frame = std::vec![0u8; len];
        frame[0..6].fill(0xff);
        frame[6..12].copy_from_slice(&src);
        frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
        frame
    }

    fn check(view: &SliceView<'_>, store: &Store) -> Option<u32> {
        let (mut flow, mut inner) = (Flow::default(), Flow::default());
        let parsed = parse::<true>(view, &mut flow, &mut inner);
        outbound_frame(view, &parsed, &OneAddress, 0, store)
    }

    /// A minimal IPv4 packet (no transport) from the guest.
    fn ipv4(src: [u8; 6]) -> std::vec::Vec<u8> {
        let mut f = eth(src, 0x0800, 34);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&20u16.to_be_bytes());
        f[23] = 250;
        f
    }

    #[test]
    fn the_source_mac_is_read_as_it_sits_in_the_frame() {
        let frame = ipv4(GUEST);
        let view = SliceView::new(&frame);
        assert_eq!(check(&view, &Store::knowing(Some(GUEST))), None);
        let other = [0x52, 0x54, 0, 0x12, 0x34, 0x57];
        assert_eq!(
            check(&view, &Store::knowing(Some(other))),
            Some(DROP_MAC_SPOOFED)
        );
    }

    #[test]
    fn only_a_unicast_mac_no_one_else_holds_is_learned() {
        let host = [0x02, 0, 0, 0, 0, 0x01];
        for (what, mac) in [
            ("broadcast", [0xff; 6]),
            ("multicast", [0x33, 0x33, 0, 0, 0, 1]),
            ("all zeros", [0; 6]),
            ("the host's", host),
        ] {
            let mut store = Store::knowing(None);
            store.reserved.push(host);
            let frame = ipv4(mac);
            assert_eq!(
                check(&SliceView::new(&frame), &store),
                Some(DROP_MAC_SPOOFED),
                "{what}"
            );
            assert_eq!(store.known(), None, "{what}: nothing learned");
        }
        let store = Store::knowing(None);
        let frame = ipv4(GUEST);
        assert_eq!(check(&SliceView::new(&frame), &store), None);
        assert_eq!(store.known(), Some(GUEST), "a unicast MAC is learned");
    }

    #[test]
    fn a_tag_the_kernel_took_into_the_metadata_is_a_tag() {
        let frame = ipv4(GUEST);
        let store = Store::knowing(Some(GUEST));
        assert_eq!(check(&SliceView::new(&frame), &store), None);
        assert_eq!(
            check(&SliceView::tag_stripped(&frame), &store),
            Some(DROP_UNSUPPORTED_L2)
        );
    }

    #[test]
    fn an_arp_probe_asks_only_for_the_guests_own_address() {
        let probe = |tpa: [u8; 4]| {
            let mut f = eth(GUEST, 0x0806, 42);
            f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            f[22..28].copy_from_slice(&GUEST);
            f[38..42].copy_from_slice(&tpa);
            f
        };
        let store = Store::knowing(Some(GUEST));
        let own = probe([10, 0, 0, 1]);
        assert_eq!(check(&SliceView::new(&own), &store), Some(PASS_NOT_IP));
        let neighbours = probe([10, 0, 0, 2]);
        assert_eq!(
            check(&SliceView::new(&neighbours), &store),
            Some(DROP_ARP_SPOOFED)
        );
    }

    #[test]
    fn a_dropped_arp_names_the_address_it_speaks_for() {
        let arp = |spa: [u8; 4], tpa: [u8; 4]| {
            let mut f = eth(GUEST, 0x0806, 42);
            f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            f[22..28].copy_from_slice(&GUEST);
            f[28..32].copy_from_slice(&spa);
            f[38..42].copy_from_slice(&tpa);
            f
        };
        let v4 = |a: [u8; 4]| [u32::from_ne_bytes(a), 0, 0, 0];
        for (spa, tpa, named) in [
            // A request from an address not its own, and a probe for one.
            ([10, 0, 0, 9], [10, 0, 0, 254], [10, 0, 0, 9]),
            ([0; 4], [10, 0, 0, 2], [10, 0, 0, 2]),
        ] {
            let frame = arp(spa, tpa);
            let mut flow = Flow::default();
            arp_claim(&SliceView::new(&frame), ETH_HLEN, &mut flow);
            assert_eq!(flow.family, crate::flow::FAMILY_V4);
            assert_eq!((flow.src, flow.dst), (v4(named), v4(tpa)));
        }
        // Not Ethernet/IPv4 ARP: nothing to name.
        let mut frame = arp([10, 0, 0, 9], [10, 0, 0, 254]);
        frame[19] = 16;
        let mut flow = Flow::default();
        arp_claim(&SliceView::new(&frame), ETH_HLEN, &mut flow);
        assert_eq!(flow, Flow::default());
    }

    #[test]
    fn the_link_local_address_of_a_mac_is_its_eui64() {
        let ll = eui64_link_local([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let want: std::net::Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
        assert_eq!(crate::flow::addr_octets(&ll), want.octets());
    }
}

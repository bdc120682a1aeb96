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
//!   one the rules file (or libvirt) gives, or else the first one seen;
//! * only IPv4, IPv6 and ARP, untagged (`no-other-l2-traffic`): a VLAN tag
//!   from a guest could hop into another VLAN of a VLAN-aware bridge;
//! * ARP must be Ethernet/IPv4 ARP whose sender MAC address is the
//!   instance's and whose sender address is one of its own (or 0.0.0.0, an
//!   address probe) (`no-arp-spoofing`);
//! * neighbour discovery comes straight after the IPv6 header, and may
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
    parse::{PacketView, ptr_at},
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

/// Where the programs keep the instance's MAC address.
pub trait MacStore {
    /// The instance's MAC address. When none is known yet, `seen` (the
    /// source of the frame at hand) is learned, unless another CPU learned
    /// one first; whichever is known then is returned. `None`: none could
    /// be stored, and the frame is dropped.
    fn mac_or_learn(&self, seen: [u8; 6]) -> Option<[u8; 6]>;

    /// The instance's MAC address, if one is known.
    fn known(&self) -> Option<[u8; 6]>;
}

/// What the frame-level checks decided.
pub enum Outbound {
    /// An IPv4 or IPv6 packet from the instance's MAC address: judge it (and
    /// check neighbour discovery with [`outbound_nd`]). Nothing is carried
    /// over: the verifier then walks the rest of the pipeline once, not
    /// once per state the checks left.
    Judge,
    /// A final verdict: a drop, or an ARP packet that passes.
    Verdict(u32),
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_HLEN: usize = 14;
const IPV6_HLEN: usize = 40;

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: [u8; 2],
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

/// Six bytes of the packet at `p` as a MAC address: one 32-bit and one
/// 16-bit load.
///
/// # Safety
/// `p .. p + 6` lies inside the packet, bounds-checked with its header.
#[inline(always)]
unsafe fn mac_at(ctx: &impl PacketView, p: *const u8) -> [u8; 6] {
    // SAFETY: the caller's contract.
    let (hi, lo) = unsafe { (ctx.load_u32(p), ctx.load_be16(p.add(4))) };
    let hi = hi.to_ne_bytes();
    let lo = lo.to_be_bytes();
    [hi[0], hi[1], hi[2], hi[3], lo[0], lo[1]]
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

/// The frame-level checks of a frame the instance sent: its source MAC
/// address, its link-layer protocol, and ARP.
#[inline(always)]
pub fn outbound_frame<M: PolicyMaps, S: MacStore>(
    ctx: &impl PacketView,
    maps: &M,
    generation: u8,
    store: &S,
) -> Outbound {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Outbound::Verdict(DROP_MALFORMED);
    };
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    let (src, ethertype) = unsafe {
        (
            mac_at(ctx, addr_of!((*eth).src).cast()),
            ctx.load_be16(addr_of!((*eth).proto).cast()),
        )
    };
    let Some(mac) = store.mac_or_learn(src) else {
        return Outbound::Verdict(DROP_MAC_SPOOFED);
    };
    if src != mac {
        return Outbound::Verdict(DROP_MAC_SPOOFED);
    }
    match ethertype {
        ETH_P_IP | ETH_P_IPV6 => Outbound::Judge,
        ETH_P_ARP => Outbound::Verdict(arp(ctx, maps, generation, mac)),
        // VLAN tags, PPPoE, MPLS, LLDP...: nothing an EC2 instance sends.
        _ => Outbound::Verdict(DROP_UNSUPPORTED_L2),
    }
}

/// An ARP packet from the instance: Ethernet/IPv4 ARP speaking for the
/// instance's MAC address and one of its addresses (or none: a probe).
#[inline(always)]
fn arp<M: PolicyMaps>(ctx: &impl PacketView, maps: &M, generation: u8, mac: [u8; 6]) -> u32 {
    let Some(arp) = ptr_at::<ArpHdr>(ctx, ETH_HLEN) else {
        return DROP_MALFORMED;
    };
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    let (htype, ptype, hlen, plen, sha, spa) = unsafe {
        (
            ctx.load_be16(addr_of!((*arp).htype).cast()),
            ctx.load_be16(addr_of!((*arp).ptype).cast()),
            (*arp).hlen,
            (*arp).plen,
            mac_at(ctx, addr_of!((*arp).sha).cast()),
            ctx.load_u32(addr_of!((*arp).spa).cast()),
        )
    };
    if htype != 1 || ptype != ETH_P_IP || hlen != 6 || plen != 4 || sha != mac {
        return DROP_ARP_SPOOFED;
    }
    if spa == 0 || own_v4(maps, generation, spa) {
        PASS_NOT_IP
    } else {
        DROP_ARP_SPOOFED
    }
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
/// `ICMPv6` header at `l4_off`; its MAC address known to `store` since
/// [`outbound_frame`]): [`PASS_NEIGHBOUR_DISCOVERY`] or [`DROP_ND_SPOOFED`].
#[inline(always)]
pub fn outbound_nd<M: PolicyMaps, S: MacStore>(
    ctx: &impl PacketView,
    l4_off: usize,
    flow: &Flow,
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
        let Some(nd) = ptr_at::<NdHdr>(ctx, l4_off) else {
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
            return DROP_ND_SPOOFED;
        }
    }
    let mut off = l4_off + options;
    for _ in 0..ND_OPTIONS_MAX {
        let Some(opt) = ptr_at::<NdOpt>(ctx, off) else {
            // Fewer than 8 bytes left: the end of the message (trailing
            // bytes too short for an option carry no address).
            return PASS_NEIGHBOUR_DISCOVERY;
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
    if ptr_at::<NdOpt>(ctx, off).is_some() {
        return DROP_ND_SPOOFED;
    }
    PASS_NEIGHBOUR_DISCOVERY
}

/// One of the instance's own IPv6 addresses, or the link-local address its
/// MAC address gives (EUI-64).
#[inline(always)]
fn own_or_link_local<M: PolicyMaps>(maps: &M, generation: u8, addr: &Addr, mac: [u8; 6]) -> bool {
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
        parse::SliceView,
        policy::{AddrKeyV4, AddrKeyV6, AddrValue, PortKey, PortValue},
    };

    struct NoAddresses;
    impl PolicyMaps for NoAddresses {
        fn addr_v4(&self, _: &AddrKeyV4) -> Option<AddrValue> {
            None
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

    struct Known([u8; 6]);
    impl MacStore for Known {
        fn mac_or_learn(&self, _: [u8; 6]) -> Option<[u8; 6]> {
            Some(self.0)
        }
        fn known(&self) -> Option<[u8; 6]> {
            Some(self.0)
        }
    }

    #[test]
    fn the_source_mac_is_read_as_it_sits_in_the_frame() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let mut frame = [0u8; 60];
        frame[6..12].copy_from_slice(&mac);
        frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let view = SliceView::new(&frame);
        assert!(matches!(
            outbound_frame(&view, &NoAddresses, 0, &Known(mac)),
            Outbound::Judge
        ));
        let other = [0x52, 0x54, 0, 0x12, 0x34, 0x57];
        assert!(matches!(
            outbound_frame(&view, &NoAddresses, 0, &Known(other)),
            Outbound::Verdict(DROP_MAC_SPOOFED)
        ));
    }

    #[test]
    fn the_link_local_address_of_a_mac_is_its_eui64() {
        let ll = eui64_link_local([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let want: std::net::Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
        assert_eq!(crate::flow::addr_octets(&ll), want.octets());
    }
}

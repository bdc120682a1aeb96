//! The packet parser the kernel runs, written once for the eBPF programs and
//! the host: a bounded cursor parser in the xdp-tools manner. Each step
//! checks its bounds against `data_end`, advances the cursor and says what
//! comes next; anything it cannot prove well-formed is reported as a drop
//! reason.
//!
//! It reads the packet through [`PacketView`]: the eBPF programs implement
//! it over their XDP and TC contexts (with single-instruction unaligned
//! loads), the host over a byte slice ([`SliceView`]), so the fuzzer and the
//! tests run exactly this code against [`crate::wire_reference`].

use crate::{
    counters::{DROP_EXT_CHAIN, DROP_MALFORMED, DROP_UNSUPPORTED_L2, PASS_NOT_IP},
    flow::{Addr, FAMILY_V4, FAMILY_V6, FRAG_FIRST, FRAG_LATER, FRAG_NONE, Flow, icmp, proto},
};

use core::ptr::addr_of;

/// A packet buffer: where it starts and ends, and how to read a field of it.
///
/// The loads default to unaligned reads, which is right on the host; the
/// eBPF programs override them with one load instruction each (see
/// `sg-ebpf`'s context), as Rust would read a misaligned field byte by byte.
pub trait PacketView {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;

    /// Four packet bytes as they sit (no byte-order change).
    ///
    /// # Safety
    /// `p .. p + 4` lies inside the packet, checked against `data_end` on
    /// this very pointer (see [`ptr_at`]).
    #[inline(always)]
    unsafe fn load_u32(&self, p: *const u8) -> u32 {
        // SAFETY: inside the packet by the caller's contract; any alignment.
        unsafe { core::ptr::read_unaligned(p.cast::<u32>()) }
    }

    /// A big-endian 16-bit packet field, in host order.
    ///
    /// # Safety
    /// As for [`PacketView::load_u32`], for `p .. p + 2`.
    #[inline(always)]
    unsafe fn load_be16(&self, p: *const u8) -> u16 {
        // SAFETY: inside the packet by the caller's contract; any alignment.
        u16::from_be(unsafe { core::ptr::read_unaligned(p.cast::<u16>()) })
    }
}

/// A pointer to a `T` at `offset`, or `None` when it would cross `data_end`.
/// Every header read goes through here.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl PacketView, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    // The verifier needs this comparison against data_end on the very
    // pointer that is then dereferenced.
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// A frame held in memory, for the host: the fuzzer and the tests parse
/// through it. Every load is checked against the slice, so a read the
/// parser's own bounds checks failed to cover panics instead of reading
/// past the frame.
#[cfg(not(target_arch = "bpf"))]
pub struct SliceView<'a> {
    frame: &'a [u8],
}

#[cfg(not(target_arch = "bpf"))]
impl<'a> SliceView<'a> {
    pub fn new(frame: &'a [u8]) -> Self {
        Self { frame }
    }

    fn check(&self, p: *const u8, len: usize) {
        let start = self.frame.as_ptr() as usize;
        let at = p as usize;
        assert!(
            at >= start && at + len <= start + self.frame.len(),
            "the parser read {len} bytes at offset {} of a {}-byte frame",
            at.wrapping_sub(start),
            self.frame.len()
        );
    }
}

#[cfg(not(target_arch = "bpf"))]
impl PacketView for SliceView<'_> {
    fn data(&self) -> usize {
        self.frame.as_ptr() as usize
    }
    fn data_end(&self) -> usize {
        self.frame.as_ptr() as usize + self.frame.len()
    }
    unsafe fn load_u32(&self, p: *const u8) -> u32 {
        self.check(p, 4);
        // SAFETY: checked just above to lie inside the frame.
        unsafe { core::ptr::read_unaligned(p.cast::<u32>()) }
    }
    unsafe fn load_be16(&self, p: *const u8) -> u16 {
        self.check(p, 2);
        // SAFETY: checked just above to lie inside the frame.
        u16::from_be(unsafe { core::ptr::read_unaligned(p.cast::<u16>()) })
    }
}

/// VLAN tags (802.1Q / 802.1ad) walked before the network header.
pub const VLAN_MAX_DEPTH: usize = 2;
/// IPv6 extension headers walked; a longer chain is dropped.
pub const IPV6_EXT_MAX_CHAIN: usize = 8;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

#[repr(C)]
struct EthHdr {
    dst: [u8; 6],
    src: [u8; 6],
    proto: [u8; 2],
}

#[repr(C)]
struct VlanHdr {
    tci: [u8; 2],
    proto: [u8; 2],
}

/// Fields are byte arrays (alignment 1), as the packet is not aligned;
/// multi-byte fields are read through the view's loads
/// ([`PacketView::load_u32`], [`PacketView::load_be16`]).
#[repr(C)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    proto: u8,
    check: [u8; 2],
    src: [u8; 4],
    dst: [u8; 4],
}

/// An IPv4 address from the packet, in network byte order.
///
/// # Safety
/// `b` points into the packet, bounds-checked with its header.
#[inline(always)]
unsafe fn addr4(ctx: &impl PacketView, b: *const [u8; 4]) -> u32 {
    // SAFETY: `b` lies inside the packet (this function's contract).
    unsafe { ctx.load_u32(b.cast()) }
}

/// An IPv6 address from the packet into an `Addr`: four word loads.
///
/// # Safety
/// As for [`addr4`].
#[inline(always)]
unsafe fn addr6(ctx: &impl PacketView, b: *const [u8; 16]) -> Addr {
    let p: *const u8 = b.cast();
    // SAFETY: `b .. b + 16` lies inside the packet (this function's contract).
    unsafe {
        [
            ctx.load_u32(p),
            ctx.load_u32(p.add(4)),
            ctx.load_u32(p.add(8)),
            ctx.load_u32(p.add(12)),
        ]
    }
}

/// A big-endian 16-bit field of the packet.
///
/// # Safety
/// As for [`addr4`].
#[inline(always)]
unsafe fn field16(ctx: &impl PacketView, b: *const [u8; 2]) -> u16 {
    // SAFETY: `b` lies inside the packet (this function's contract).
    unsafe { ctx.load_be16(b.cast()) }
}

#[repr(C)]
struct Ipv6Hdr {
    version_tc_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

/// Hop-by-hop, routing, destination options and AH share this start.
#[repr(C)]
struct Ipv6ExtHdr {
    next_header: u8,
    len: u8,
}

#[repr(C)]
struct Ipv6FragHdr {
    next_header: u8,
    reserved: u8,
    offset_flags: [u8; 2],
    id: [u8; 4],
}

/// The first 8 bytes of TCP or UDP: what an ICMP error quotes.
#[repr(C)]
struct L4Hdr {
    sport: [u8; 2],
    dport: [u8; 2],
    rest: [u8; 4],
}

/// The first 8 bytes of ICMP / `ICMPv6`.
#[repr(C)]
struct IcmpHdr {
    ty: u8,
    code: u8,
    check: [u8; 2],
    id: [u8; 2],
    seq: [u8; 2],
}

#[repr(C)]
struct TcpHdr {
    sport: [u8; 2],
    dport: [u8; 2],
    seq: [u8; 4],
    ack: [u8; 4],
    off: u8,
    flags: u8,
}

pub enum Parsed {
    /// Not IP: the reason decides (ARP passes).
    Verdict(u32),
    /// An IP packet; `inner` is the packet an ICMP error quotes, when
    /// `has_inner`; the transport header starts at `l4_off`.
    Ip { has_inner: bool, l4_off: usize },
}

/// Parses the frame into `flow` (and, for an ICMP error, the quoted packet
/// into `inner`).
#[inline(always)]
pub fn parse(ctx: &impl PacketView, flow: &mut Flow, inner: &mut Flow) -> Parsed {
    // Fields not every protocol sets; addresses, family, protocol and
    // fragment state are always written by the network-layer parser.
    flow.sport = 0;
    flow.dport = 0;
    flow.frag_id = 0;
    flow.tcp_flags = 0;
    flow.icmp_type = 0;
    flow.icmp_code = 0;
    flow.ipv6_ah = 0;
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Verdict(DROP_MALFORMED);
    };
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    let mut ethertype = unsafe { field16(ctx, addr_of!((*eth).proto)) };
    let mut off = core::mem::size_of::<EthHdr>();
    for _ in 0..VLAN_MAX_DEPTH {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, off) else {
            return Parsed::Verdict(DROP_MALFORMED);
        };
        // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
        ethertype = unsafe { field16(ctx, addr_of!((*vlan).proto)) };
        off += core::mem::size_of::<VlanHdr>();
    }
    let l4_off = match ethertype {
        ETH_P_IP => parse_ipv4(ctx, off, flow),
        ETH_P_IPV6 => parse_ipv6(ctx, off, flow),
        ETH_P_ARP => return Parsed::Verdict(PASS_NOT_IP),
        // Anything else (more VLAN tags, PPPoE, MPLS, ...) could carry IP
        // past the filter.
        _ => return Parsed::Verdict(DROP_UNSUPPORTED_L2),
    };
    let l4_off = match l4_off {
        Ok(o) => o,
        Err(reason) => return Parsed::Verdict(reason),
    };
    if flow.frag == FRAG_LATER {
        return Parsed::Ip {
            has_inner: false,
            l4_off,
        };
    }
    match parse_l4(ctx, l4_off, flow) {
        Ok(()) => {}
        Err(reason) => return Parsed::Verdict(reason),
    }
    if (flow.proto == proto::ICMP || flow.proto == proto::ICMPV6)
        && icmp::is_error(flow.family, flow.icmp_type)
    {
        // The quoted header follows the 8-byte ICMP header. When it cannot be
        // read the error is judged by the rules like any ICMP packet.
        // Cleared only here: most packets never need it.
        inner.sport = 0;
        inner.dport = 0;
        inner.frag = FRAG_NONE;
        inner.icmp_type = 0;
        let has_inner = parse_quoted(ctx, l4_off + 8, flow.family, inner);
        return Parsed::Ip { has_inner, l4_off };
    }
    Parsed::Ip {
        has_inner: false,
        l4_off,
    }
}

/// IPv4 header at `off`; returns the transport header's offset.
#[inline(always)]
fn parse_ipv4(ctx: &impl PacketView, off: usize, flow: &mut Flow) -> Result<usize, u32> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, off).ok_or(DROP_MALFORMED)?;
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    let (version_ihl, frag_off) =
        unsafe { ((*ip).version_ihl, field16(ctx, addr_of!((*ip).frag_off))) };
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < core::mem::size_of::<Ipv4Hdr>() {
        return Err(DROP_MALFORMED);
    }
    flow.family = FAMILY_V4;
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    unsafe {
        flow.proto = (*ip).proto;
        flow.src = [addr4(ctx, addr_of!((*ip).src)), 0, 0, 0];
        flow.dst = [addr4(ctx, addr_of!((*ip).dst)), 0, 0, 0];
        flow.frag_id = u32::from(field16(ctx, addr_of!((*ip).id)));
    }
    let more_fragments = frag_off & 0x2000 != 0;
    let offset = frag_off & 0x1fff;
    flow.frag = if offset != 0 {
        FRAG_LATER
    } else if more_fragments {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    // Options are skipped: the transport header starts at IHL, not at 20.
    Ok(off + ihl)
}

/// IPv6 header and extension chain at `off`; returns the transport
/// header's offset.
#[inline(always)]
fn parse_ipv6(ctx: &impl PacketView, off: usize, flow: &mut Flow) -> Result<usize, u32> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, off).ok_or(DROP_MALFORMED)?;
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    if unsafe { (*ip).version_tc_flow[0] } >> 4 != 6 {
        return Err(DROP_MALFORMED);
    }
    flow.family = FAMILY_V6;
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    unsafe {
        flow.src = addr6(ctx, addr_of!((*ip).src));
        flow.dst = addr6(ctx, addr_of!((*ip).dst));
    }
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    let mut next = unsafe { (*ip).next_header };
    let mut off = off + core::mem::size_of::<Ipv6Hdr>();
    flow.frag = FRAG_NONE;
    for _ in 0..IPV6_EXT_MAX_CHAIN {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let h = ptr_at::<Ipv6ExtHdr>(ctx, off).ok_or(DROP_MALFORMED)?;
                // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
                let (n, len) = unsafe { ((*h).next_header, (*h).len) };
                next = n;
                off += (usize::from(len) + 1) * 8;
            }
            IPV6_AH => {
                flow.ipv6_ah = 1;
                let h = ptr_at::<Ipv6ExtHdr>(ctx, off).ok_or(DROP_MALFORMED)?;
                // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
                let (n, len) = unsafe { ((*h).next_header, (*h).len) };
                next = n;
                off += (usize::from(len) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let h = ptr_at::<Ipv6FragHdr>(ctx, off).ok_or(DROP_MALFORMED)?;
                // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
                let (n, offset_flags, id) = unsafe {
                    (
                        (*h).next_header,
                        field16(ctx, addr_of!((*h).offset_flags)),
                        u32::from_be(ctx.load_u32(addr_of!((*h).id).cast())),
                    )
                };
                next = n;
                off += core::mem::size_of::<Ipv6FragHdr>();
                flow.frag_id = id;
                if offset_flags >> 3 != 0 {
                    flow.frag = FRAG_LATER;
                    flow.proto = next;
                    return Ok(off);
                }
                if offset_flags & 1 != 0 {
                    flow.frag = FRAG_FIRST;
                }
            }
            _ => {
                flow.proto = next;
                return Ok(off);
            }
        }
    }
    // Still an extension header after the bounded walk.
    match next {
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT => Err(DROP_EXT_CHAIN),
        _ => {
            flow.proto = next;
            Ok(off)
        }
    }
}

/// Ports, TCP flags, ICMP type/code/identifier.
#[inline(always)]
fn parse_l4(ctx: &impl PacketView, off: usize, flow: &mut Flow) -> Result<(), u32> {
    match flow.proto {
        proto::TCP => {
            let h = ptr_at::<TcpHdr>(ctx, off).ok_or(DROP_MALFORMED)?;
            // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
            unsafe {
                flow.sport = field16(ctx, addr_of!((*h).sport));
                flow.dport = field16(ctx, addr_of!((*h).dport));
                flow.tcp_flags = (*h).flags;
                flow.tcp_seq = u32::from_be(ctx.load_u32(addr_of!((*h).seq).cast()));
            }
        }
        proto::UDP => {
            let h = ptr_at::<L4Hdr>(ctx, off).ok_or(DROP_MALFORMED)?;
            // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
            unsafe {
                flow.sport = field16(ctx, addr_of!((*h).sport));
                flow.dport = field16(ctx, addr_of!((*h).dport));
            }
        }
        proto::ICMP | proto::ICMPV6 => {
            let h = ptr_at::<IcmpHdr>(ctx, off).ok_or(DROP_MALFORMED)?;
            // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
            let (ty, code) = unsafe { ((*h).ty, (*h).code) };
            flow.icmp_type = ty;
            flow.icmp_code = code;
            if icmp::is_query(flow.family, ty) {
                // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
                let id = unsafe { field16(ctx, addr_of!((*h).id)) };
                flow.sport = id;
                flow.dport = id;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The packet an ICMP error quotes: its IP header and first 8 transport
/// bytes. Returns false when they cannot be read.
#[inline(always)]
fn parse_quoted(ctx: &impl PacketView, off: usize, family: u8, inner: &mut Flow) -> bool {
    let l4_off = if family == FAMILY_V4 {
        let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, off) else {
            return false;
        };
        // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
        let version_ihl = unsafe { (*ip).version_ihl };
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        if ihl < core::mem::size_of::<Ipv4Hdr>() {
            return false;
        }
        inner.family = FAMILY_V4;
        // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
        unsafe {
            inner.proto = (*ip).proto;
            inner.src = [addr4(ctx, addr_of!((*ip).src)), 0, 0, 0];
            inner.dst = [addr4(ctx, addr_of!((*ip).dst)), 0, 0, 0];
        }
        off + ihl
    } else {
        let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, off) else {
            return false;
        };
        inner.family = FAMILY_V6;
        // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
        unsafe {
            inner.proto = (*ip).next_header;
            inner.src = addr6(ctx, addr_of!((*ip).src));
            inner.dst = addr6(ctx, addr_of!((*ip).dst));
        }
        off + core::mem::size_of::<Ipv6Hdr>()
    };
    // TCP, UDP and ICMP headers all have 8 bytes here.
    if ptr_at::<L4Hdr>(ctx, l4_off).is_none() {
        return false;
    }
    match inner.proto {
        proto::TCP | proto::UDP => {
            let Some(h) = ptr_at::<L4Hdr>(ctx, l4_off) else {
                return false;
            };
            // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
            unsafe {
                inner.sport = field16(ctx, addr_of!((*h).sport));
                inner.dport = field16(ctx, addr_of!((*h).dport));
            }
        }
        proto::ICMP | proto::ICMPV6 => {
            let Some(h) = ptr_at::<IcmpHdr>(ctx, l4_off) else {
                return false;
            };
            // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
            let ty = unsafe { (*h).ty };
            inner.icmp_type = ty;
            if icmp::is_query(inner.family, ty) {
                // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
                let id = unsafe { field16(ctx, addr_of!((*h).id)) };
                inner.sport = id;
                inner.dport = id;
            }
        }
        _ => {}
    }
    true
}

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
    counters::{DROP_EXT_CHAIN, DROP_MALFORMED, DROP_UNSUPPORTED_L2},
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

    /// The whole packet's length in bytes, from `data`: more than
    /// `data_end - data` when part of it lies outside the direct view (an
    /// skb's paged part, an XDP frame's further buffers). Asked only when a
    /// header's length field says the packet reaches past the view.
    #[inline(always)]
    fn packet_len(&self) -> usize {
        self.data_end() - self.data()
    }

    /// Whether the frame came with a VLAN tag the kernel took out of its
    /// bytes into the packet's metadata (an skb's `vlan_present`: the
    /// receive path strips one 802.1Q or 802.1ad tag before TC ingress
    /// runs). The tag is then not in the bytes the parser reads.
    #[inline(always)]
    fn vlan_tagged(&self) -> bool {
        false
    }

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
    /// The bytes past the view (the part of a packet an skb keeps paged).
    beyond: usize,
    tagged: bool,
}

#[cfg(not(target_arch = "bpf"))]
impl<'a> SliceView<'a> {
    pub fn new(frame: &'a [u8]) -> Self {
        Self {
            frame,
            beyond: 0,
            tagged: false,
        }
    }

    /// `frame` as TC sees it when the kernel took its (outer) VLAN tag into
    /// the skb's metadata.
    pub fn tag_stripped(frame: &'a [u8]) -> Self {
        Self {
            tagged: true,
            ..Self::new(frame)
        }
    }

    /// The first `view` bytes of `frame` in direct view, the rest beyond it
    /// (an skb whose headers were pulled only that far).
    pub fn partly(frame: &'a [u8], view: usize) -> Self {
        let view = view.min(frame.len());
        Self {
            frame: &frame[..view],
            beyond: frame.len() - view,
            tagged: false,
        }
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
    fn packet_len(&self) -> usize {
        self.frame.len() + self.beyond
    }
    fn vlan_tagged(&self) -> bool {
        self.tagged
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
pub(crate) struct EthHdr {
    pub(crate) dst: [u8; 6],
    pub(crate) src: [u8; 6],
    pub(crate) proto: [u8; 2],
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

/// What the parser found in a frame: its layer-2 facts, which the host
/// side's guard checks (`crate::guard`), and what comes next.
pub struct Parsed {
    /// The frame's source MAC address (zeros when the frame is shorter than
    /// an Ethernet header; `next` is then a drop).
    pub src_mac: [u8; 6],
    /// It carries a VLAN tag: in its bytes, or taken into the packet's
    /// metadata by the kernel ([`PacketView::vlan_tagged`]).
    pub tagged: bool,
    pub next: Next,
}

pub enum Next {
    /// Not judged by the rules: the reason decides.
    Verdict(u32),
    /// An ARP packet whose header starts at `off`.
    Arp { off: usize },
    /// An IP packet that ends at `l3_end` (what follows is not the
    /// packet's), its transport header at `l4_off`; `inner` holds the
    /// packet an ICMP error quotes, when `has_inner`.
    Ip {
        has_inner: bool,
        l4_off: usize,
        l3_end: usize,
    },
}

/// A pointer to a `T` at `offset` that also ends by `end` (the end of the
/// IP packet the header belongs to: bytes past it are Ethernet padding, or
/// bytes a sender appended to pass off a header the receiver never sees),
/// or `None`.
#[inline(always)]
pub fn ptr_within<T>(ctx: &impl PacketView, offset: usize, end: usize) -> Option<*const T> {
    if offset + core::mem::size_of::<T>() > end {
        return None;
    }
    ptr_at(ctx, offset)
}

/// Six bytes of the packet at `p` as a MAC address: one 32-bit and one
/// 16-bit load.
///
/// # Safety
/// `p .. p + 6` lies inside the packet, bounds-checked with its header.
#[inline(always)]
pub unsafe fn mac_at(ctx: &impl PacketView, p: *const u8) -> [u8; 6] {
    // SAFETY: the caller's contract.
    let (hi, lo) = unsafe { (ctx.load_u32(p), ctx.load_be16(p.add(4))) };
    let hi = hi.to_ne_bytes();
    let lo = lo.to_be_bytes();
    [hi[0], hi[1], hi[2], hi[3], lo[0], lo[1]]
}

/// Ethernet header and VLAN tags, then the network layer; ARP is found
/// and left to the caller. Parses an IP packet into `flow` (and, for an
/// ICMP error, the quoted packet into `inner`).
///
/// `L2`: also read what only the host side's guard checks (the source MAC
/// and a tag the kernel took into the metadata). Off, `src_mac` is zeros
/// and `tagged` says only whether the frame's bytes carry a tag: the
/// loads cost a packet that no guard looks at about 6 ns, measured.
#[inline(always)]
pub fn parse<const L2: bool>(ctx: &impl PacketView, flow: &mut Flow, inner: &mut Flow) -> Parsed {
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
        return Parsed {
            src_mac: [0; 6],
            tagged: false,
            next: Next::Verdict(DROP_MALFORMED),
        };
    };
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    let mut ethertype = unsafe { field16(ctx, addr_of!((*eth).proto)) };
    let (src_mac, mut tagged) = if L2 {
        // SAFETY: as above: the whole Ethernet header is in the packet.
        let mac = unsafe { mac_at(ctx, addr_of!((*eth).src).cast()) };
        (mac, ctx.vlan_tagged())
    } else {
        ([0; 6], false)
    };
    let mut off = core::mem::size_of::<EthHdr>();
    for _ in 0..VLAN_MAX_DEPTH {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        tagged = true;
        let Some(vlan) = ptr_at::<VlanHdr>(ctx, off) else {
            return Parsed {
                src_mac,
                tagged,
                next: Next::Verdict(DROP_MALFORMED),
            };
        };
        // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
        ethertype = unsafe { field16(ctx, addr_of!((*vlan).proto)) };
        off += core::mem::size_of::<VlanHdr>();
    }
    let next = match ethertype {
        ETH_P_IP | ETH_P_IPV6 => parse_ip(ctx, off, ethertype == ETH_P_IP, flow, inner),
        ETH_P_ARP => Next::Arp { off },
        // Anything else (more VLAN tags, PPPoE, MPLS, ...) could carry IP
        // past the filter.
        _ => Next::Verdict(DROP_UNSUPPORTED_L2),
    };
    Parsed {
        src_mac,
        tagged,
        next,
    }
}

/// The network layer at `off` and what it carries.
#[inline(always)]
fn parse_ip(
    ctx: &impl PacketView,
    off: usize,
    v4: bool,
    flow: &mut Flow,
    inner: &mut Flow,
) -> Next {
    let ends = if v4 {
        parse_ipv4(ctx, off, flow)
    } else {
        parse_ipv6(ctx, off, flow)
    };
    let (l4_off, l3_end) = match ends {
        Ok(ends) => ends,
        Err(reason) => return Next::Verdict(reason),
    };
    if flow.frag == FRAG_LATER {
        return Next::Ip {
            has_inner: false,
            l4_off,
            l3_end,
        };
    }
    if let Err(reason) = parse_l4(ctx, l4_off, l3_end, flow) {
        return Next::Verdict(reason);
    }
    let mut has_inner = false;
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
        has_inner = parse_quoted(ctx, l4_off + 8, l3_end, flow.family, inner);
    }
    Next::Ip {
        has_inner,
        l4_off,
        l3_end,
    }
}

/// Where an IP packet at `off` ends, by its length field `len` (`header`
/// at least), or an error when the packet is shorter than that field says
/// (the receiver would drop it; nothing past the view is judged unseen).
/// A length of zero is the kernel's for a packet over 64 KiB (BIG TCP): it
/// ends with the packet.
#[inline(always)]
fn ip_end(ctx: &impl PacketView, off: usize, len: usize, header: usize) -> Result<usize, u32> {
    if len == 0 {
        return Ok(ctx.packet_len());
    }
    if len < header {
        return Err(DROP_MALFORMED);
    }
    let end = off + len;
    // Within the direct view costs no look at the packet's whole length
    // (for XDP, a helper call).
    if ctx.data() + end > ctx.data_end() && end > ctx.packet_len() {
        return Err(DROP_MALFORMED);
    }
    Ok(end)
}

/// IPv4 header at `off`; returns the transport header's offset and where
/// the packet ends.
#[inline(always)]
fn parse_ipv4(ctx: &impl PacketView, off: usize, flow: &mut Flow) -> Result<(usize, usize), u32> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, off).ok_or(DROP_MALFORMED)?;
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    let (version_ihl, frag_off, tot_len) = unsafe {
        (
            (*ip).version_ihl,
            field16(ctx, addr_of!((*ip).frag_off)),
            field16(ctx, addr_of!((*ip).tot_len)),
        )
    };
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < core::mem::size_of::<Ipv4Hdr>() {
        return Err(DROP_MALFORMED);
    }
    let l3_end = ip_end(ctx, off, usize::from(tot_len), ihl)?;
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
    Ok((off + ihl, l3_end))
}

/// IPv6 header and extension chain at `off`; returns the transport
/// header's offset and where the packet ends.
#[inline(always)]
fn parse_ipv6(ctx: &impl PacketView, off: usize, flow: &mut Flow) -> Result<(usize, usize), u32> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, off).ok_or(DROP_MALFORMED)?;
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    let (version, payload_len) = unsafe {
        (
            (*ip).version_tc_flow[0] >> 4,
            usize::from(field16(ctx, addr_of!((*ip).payload_len))),
        )
    };
    if version != 6 {
        return Err(DROP_MALFORMED);
    }
    let header = core::mem::size_of::<Ipv6Hdr>();
    let len = if payload_len == 0 {
        0
    } else {
        header + payload_len
    };
    let end = ip_end(ctx, off, len, header)?;
    flow.family = FAMILY_V6;
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    unsafe {
        flow.src = addr6(ctx, addr_of!((*ip).src));
        flow.dst = addr6(ctx, addr_of!((*ip).dst));
    }
    // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
    let mut next = unsafe { (*ip).next_header };
    let mut off = off + header;
    flow.frag = FRAG_NONE;
    for _ in 0..IPV6_EXT_MAX_CHAIN {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let h = ptr_within::<Ipv6ExtHdr>(ctx, off, end).ok_or(DROP_MALFORMED)?;
                // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
                let (n, len) = unsafe { ((*h).next_header, (*h).len) };
                next = n;
                off += (usize::from(len) + 1) * 8;
            }
            IPV6_AH => {
                flow.ipv6_ah = 1;
                let h = ptr_within::<Ipv6ExtHdr>(ctx, off, end).ok_or(DROP_MALFORMED)?;
                // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
                let (n, len) = unsafe { ((*h).next_header, (*h).len) };
                next = n;
                off += (usize::from(len) + 2) * 4;
            }
            IPV6_FRAGMENT => {
                let h = ptr_within::<Ipv6FragHdr>(ctx, off, end).ok_or(DROP_MALFORMED)?;
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
                    return within(off, end);
                }
                if offset_flags & 1 != 0 {
                    flow.frag = FRAG_FIRST;
                }
            }
            _ => {
                flow.proto = next;
                return within(off, end);
            }
        }
    }
    // Still an extension header after the bounded walk.
    match next {
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT => Err(DROP_EXT_CHAIN),
        _ => {
            flow.proto = next;
            within(off, end)
        }
    }
}

/// (`off`, `end`) when the extension chain ended inside the packet.
#[inline(always)]
fn within(off: usize, end: usize) -> Result<(usize, usize), u32> {
    if off > end {
        return Err(DROP_MALFORMED);
    }
    Ok((off, end))
}

/// Ports, TCP flags, ICMP type/code/identifier: from inside the IP packet
/// (ending at `end`).
#[inline(always)]
fn parse_l4(ctx: &impl PacketView, off: usize, end: usize, flow: &mut Flow) -> Result<(), u32> {
    match flow.proto {
        proto::TCP => {
            let h = ptr_within::<TcpHdr>(ctx, off, end).ok_or(DROP_MALFORMED)?;
            // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
            unsafe {
                flow.sport = field16(ctx, addr_of!((*h).sport));
                flow.dport = field16(ctx, addr_of!((*h).dport));
                flow.tcp_flags = (*h).flags;
                flow.tcp_seq = u32::from_be(ctx.load_u32(addr_of!((*h).seq).cast()));
            }
        }
        proto::UDP => {
            let h = ptr_within::<L4Hdr>(ctx, off, end).ok_or(DROP_MALFORMED)?;
            // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
            unsafe {
                flow.sport = field16(ctx, addr_of!((*h).sport));
                flow.dport = field16(ctx, addr_of!((*h).dport));
            }
        }
        proto::ICMP | proto::ICMPV6 => {
            let h = ptr_within::<IcmpHdr>(ctx, off, end).ok_or(DROP_MALFORMED)?;
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

/// The packet an ICMP error quotes (inside the error, which ends at
/// `end`): its IP header and first 8 transport bytes. Returns false when
/// they cannot be read.
#[inline(always)]
fn parse_quoted(
    ctx: &impl PacketView,
    off: usize,
    end: usize,
    family: u8,
    inner: &mut Flow,
) -> bool {
    let l4_off = if family == FAMILY_V4 {
        let Some(ip) = ptr_within::<Ipv4Hdr>(ctx, off, end) else {
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
        let Some(ip) = ptr_within::<Ipv6Hdr>(ctx, off, end) else {
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
    let Some(h) = ptr_within::<L4Hdr>(ctx, l4_off, end) else {
        return false;
    };
    match inner.proto {
        proto::TCP | proto::UDP => {
            // SAFETY: the header pointer comes from `ptr_at`, which checked the whole header against data_end.
            unsafe {
                inner.sport = field16(ctx, addr_of!((*h).sport));
                inner.dport = field16(ctx, addr_of!((*h).dport));
            }
        }
        proto::ICMP | proto::ICMPV6 => {
            let h: *const IcmpHdr = h.cast();
            // SAFETY: an ICMP header is 8 bytes, as the transport bytes `ptr_within` checked.
            let ty = unsafe { (*h).ty };
            inner.icmp_type = ty;
            if icmp::is_query(inner.family, ty) {
                // SAFETY: as above.
                let id = unsafe { field16(ctx, addr_of!((*h).id)) };
                inner.sport = id;
                inner.dport = id;
            }
        }
        _ => {}
    }
    true
}

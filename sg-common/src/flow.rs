//! The parsed summary of one packet: what the parser hands to conntrack and
//! policy. The kernel builds it from a frame; the agent's tests build it from
//! a reference packet description.

/// IP protocol numbers the data plane treats specially.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    /// The Authentication Header of `IPsec`.
    pub const AH: u8 = 51;
}

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Not a fragment, or a whole datagram.
pub const FRAG_NONE: u8 = 0;
/// First fragment of a datagram: carries the transport header.
pub const FRAG_FIRST: u8 = 1;
/// A later fragment: no transport header, so no ports.
pub const FRAG_LATER: u8 = 2;

/// TCP flag bits as they sit in the header's 13th byte.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// `ICMPv4` and `ICMPv6` types the data plane recognises.
pub mod icmp {
    pub const V4_ECHO_REPLY: u8 = 0;
    pub const V4_DEST_UNREACH: u8 = 3;
    pub const V4_ECHO_REQUEST: u8 = 8;
    pub const V4_TIME_EXCEEDED: u8 = 11;
    pub const V4_PARAM_PROBLEM: u8 = 12;
    pub const V4_TIMESTAMP: u8 = 13;
    pub const V4_TIMESTAMP_REPLY: u8 = 14;
    pub const V4_INFO_REQUEST: u8 = 15;
    pub const V4_INFO_REPLY: u8 = 16;
    pub const V4_ADDRESS_MASK: u8 = 17;
    pub const V4_ADDRESS_MASK_REPLY: u8 = 18;
    pub const V6_DEST_UNREACH: u8 = 1;
    pub const V6_PACKET_TOO_BIG: u8 = 2;
    pub const V6_TIME_EXCEEDED: u8 = 3;
    pub const V6_PARAM_PROBLEM: u8 = 4;
    pub const V6_ECHO_REQUEST: u8 = 128;
    pub const V6_ECHO_REPLY: u8 = 129;
    pub const V6_ROUTER_SOLICIT: u8 = 133;
    pub const V6_REDIRECT: u8 = 137;
    /// Multicast listener query, version 1 report and done, version 2 report.
    pub const V6_LISTENER_QUERY: u8 = 130;
    pub const V6_LISTENER_DONE: u8 = 132;
    pub const V6_LISTENER_REPORT_V2: u8 = 143;

    /// An error that quotes the header of the packet that caused it: it
    /// passes when that quoted packet belongs to a tracked flow.
    #[inline(always)]
    pub fn is_error(family: u8, ty: u8) -> bool {
        if family == super::FAMILY_V4 {
            matches!(ty, V4_DEST_UNREACH | V4_TIME_EXCEEDED | V4_PARAM_PROBLEM)
        } else {
            matches!(
                ty,
                V6_DEST_UNREACH | V6_PACKET_TOO_BIG | V6_TIME_EXCEEDED | V6_PARAM_PROBLEM
            )
        }
    }

    /// Echo request or reply: tracked by identifier.
    #[inline(always)]
    pub fn is_echo(family: u8, ty: u8) -> bool {
        if family == super::FAMILY_V4 {
            matches!(ty, V4_ECHO_REQUEST | V4_ECHO_REPLY)
        } else {
            matches!(ty, V6_ECHO_REQUEST | V6_ECHO_REPLY)
        }
    }

    /// A query or its answer, which carry an identifier: echo, and in
    /// IPv4 also timestamp, information and address mask. Tracked per
    /// query: by identifier, and by the query's kind.
    #[inline(always)]
    pub fn is_query(family: u8, ty: u8) -> bool {
        if family == super::FAMILY_V4 {
            matches!(
                ty,
                V4_ECHO_REPLY
                    | V4_ECHO_REQUEST
                    | V4_TIMESTAMP
                    | V4_TIMESTAMP_REPLY
                    | V4_INFO_REQUEST
                    | V4_INFO_REPLY
                    | V4_ADDRESS_MASK
                    | V4_ADDRESS_MASK_REPLY
            )
        } else {
            matches!(ty, V6_ECHO_REQUEST | V6_ECHO_REPLY)
        }
    }

    /// Router and neighbour discovery (router solicitation/advertisement,
    /// neighbour solicitation/advertisement, redirect): link-local plumbing a
    /// security group never sees.
    #[inline(always)]
    pub fn is_neighbour_discovery(ty: u8) -> bool {
        (V6_ROUTER_SOLICIT..=V6_REDIRECT).contains(&ty)
    }

    /// Multicast listener discovery (RFC 3810: queries, reports, done).
    #[inline(always)]
    pub fn is_listener_discovery(ty: u8) -> bool {
        (V6_LISTENER_QUERY..=V6_LISTENER_DONE).contains(&ty) || ty == V6_LISTENER_REPORT_V2
    }
}

/// An IPv4 or IPv6 address as it sits in the packet (network byte order),
/// held in 32-bit words: the eBPF side copies, clears and compares it a word
/// at a time instead of a byte at a time. IPv4 uses the first word.
pub type Addr = [u32; 4];

/// The address bytes of `a`, as on the wire.
pub fn addr_octets(a: &Addr) -> [u8; 16] {
    let mut out = [0; 16];
    for (chunk, w) in out.chunks_exact_mut(4).zip(a) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    out
}

/// `Addr` from wire bytes (IPv4: 4 bytes, the rest zero).
pub fn addr_from_octets(bytes: &[u8]) -> Addr {
    let mut out = [0u32; 4];
    for (w, chunk) in out.iter_mut().zip(bytes.chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u32::from_ne_bytes(b);
    }
    out
}

/// One parsed packet. `#[repr(C)]` and word-aligned, so clearing and
/// copying it compile to word stores in eBPF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub src: Addr,
    pub dst: Addr,
    /// TCP/UDP source port; ICMP echo identifier; else 0.
    pub sport: u16,
    /// TCP/UDP destination port; ICMP echo identifier; else 0.
    pub dport: u16,
    /// IPv4 identification or IPv6 fragment identification.
    pub frag_id: u32,
    pub family: u8,
    pub proto: u8,
    pub frag: u8,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Non-zero when an IPv6 packet carries an Authentication Header (51)
    /// in its extension chain: a rule naming protocol 51 allows it, as on
    /// AWS, besides a rule for the protocol it carries.
    pub ipv6_ah: u8,
    pub pad: u8,
    /// TCP sequence number (host byte order).
    pub tcp_seq: u32,
}
const _: () = assert!(size_of::<Flow>() == 52);

impl Flow {
    /// The value a rule's port range or ICMP type/code is matched against:
    /// the destination port for TCP and UDP (in both directions, as AWS
    /// matches), `type << 8 | code` for ICMP, 0 for other protocols.
    #[inline(always)]
    pub fn policy_port(&self) -> u16 {
        match self.proto {
            proto::TCP | proto::UDP => self.dport,
            proto::ICMP | proto::ICMPV6 => {
                u16::from(self.icmp_type) << 8 | u16::from(self.icmp_code)
            }
            _ => 0,
        }
    }

    /// ICMP or `ICMPv6`.
    #[inline(always)]
    pub fn proto_is_icmp(&self) -> bool {
        self.proto == proto::ICMP || self.proto == proto::ICMPV6
    }

    /// Router or neighbour discovery (not a later fragment, which carries
    /// no type).
    #[inline(always)]
    pub fn is_neighbour_discovery(&self) -> bool {
        self.family == FAMILY_V6
            && self.proto == proto::ICMPV6
            && self.frag != FRAG_LATER
            && icmp::is_neighbour_discovery(self.icmp_type)
    }

    /// A multicast listener message as RFC 3810 has nodes send it: from a
    /// link-local address (or `::`, before it has one) to a link-scope
    /// group (`ff02::/16`). Link plumbing, like neighbour discovery: a
    /// security group never sees it (a host's tap sends its own reports
    /// as it comes up, which filled the drop log).
    #[inline(always)]
    pub fn is_link_listener_message(&self) -> bool {
        let w = |b: [u8; 4]| u32::from_ne_bytes(b);
        let src_ok = self.src[0] & w([0xff, 0xc0, 0, 0]) == w([0xfe, 0x80, 0, 0])
            || (self.src[0] | self.src[1] | self.src[2] | self.src[3]) == 0;
        self.family == FAMILY_V6
            && self.proto == proto::ICMPV6
            && self.frag != FRAG_LATER
            && icmp::is_listener_discovery(self.icmp_type)
            && src_ok
            && self.dst[0] & w([0xff, 0xff, 0, 0]) == w([0xff, 0x02, 0, 0])
    }
}

//! The packet parser's oracle: what [`crate::parse::parse`] must find in a
//! frame, written again as plain safe Rust over a byte slice (indexing with
//! `get`, no pointers, no shared helpers), from the same decisions:
//!
//! - Ethernet, then at most two 802.1Q / 802.1ad tags; ARP passes; any
//!   other link type, or a third tag, is refused (it could carry IP past
//!   the filter).
//! - IPv4: version 4 and an IHL of at least 20 bytes; options skipped;
//!   fragment state from the offset and more-fragments bit.
//! - The IP packet ends where its length field says (IPv4's total length,
//!   at least its header; IPv6's payload length after the 40-byte header;
//!   zero: with the frame): a frame shorter than that is refused, and
//!   nothing past that end is read (extension headers, transport, an ICMP
//!   error's quoted packet).
//! - IPv6: version 6; at most eight extension headers walked (hop-by-hop,
//!   routing, destination options, AH, fragment); a ninth is refused. A
//!   fragment header with a non-zero offset ends the walk: a later fragment
//!   has no transport header.
//! - Transport: TCP needs 14 bytes (ports, sequence number, flags), UDP and
//!   ICMP 8; an echo's identifier stands for both ports; other protocols
//!   carry nothing the policy reads.
//! - An ICMP error quotes a packet: its IPv4 header (IHL at least 20,
//!   version not checked) or fixed IPv6 header (no extension walk), and 8
//!   transport bytes, else it has no quoted packet.
//!
//! The fuzzer (`fuzz/fuzz_targets/packet_parser.rs`) and sg-common's tests
//! hold the parser to this on every input.

use crate::{
    counters::{DROP_EXT_CHAIN, DROP_MALFORMED, DROP_UNSUPPORTED_L2, PASS_NOT_IP},
    flow::{FAMILY_V4, FAMILY_V6, FRAG_FIRST, FRAG_LATER, FRAG_NONE, Flow, addr_from_octets},
};

/// What a frame holds, as far as the data plane reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Not judged by the rules: the counter reason says why.
    Verdict(u32),
    /// An IP packet; for an ICMP error whose quoted packet could be read,
    /// that packet too.
    Ip { flow: Flow, quoted: Option<Flow> },
}

/// Decodes `frame`. Fields the parser does not read for a packet are zero.
pub fn decode(frame: &[u8]) -> Decoded {
    match decode_ip(frame) {
        Ok(d) => d,
        Err(reason) => Decoded::Verdict(reason),
    }
}

/// The parser's output projected onto what it promises to write: every
/// field for an IP packet except the TCP sequence number, which is written
/// only for a TCP packet that carries its header; the quoted packet's
/// addresses, protocol, ports and ICMP type. Compare this with [`decode`].
pub fn observed(flow: &Flow, quoted: Option<&Flow>) -> Decoded {
    let mut f = *flow;
    f.pad = 0;
    if f.proto != crate::flow::proto::TCP || f.frag == FRAG_LATER {
        f.tcp_seq = 0;
    }
    let quoted = quoted.map(|q| Flow {
        src: q.src,
        dst: q.dst,
        family: q.family,
        proto: q.proto,
        sport: q.sport,
        dport: q.dport,
        icmp_type: q.icmp_type,
        frag: q.frag,
        ..Flow::default()
    });
    Decoded::Ip { flow: f, quoted }
}

const ETH_LEN: usize = 14;

fn bytes<const N: usize>(frame: &[u8], at: usize) -> Option<[u8; N]> {
    frame.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    bytes::<2>(frame, at).map(u16::from_be_bytes)
}

fn decode_ip(frame: &[u8]) -> Result<Decoded, u32> {
    let mut ethertype = be16(frame, 12).ok_or(DROP_MALFORMED)?;
    let mut at = ETH_LEN;
    let mut tags = 0;
    while (ethertype == 0x8100 || ethertype == 0x88a8) && tags < 2 {
        ethertype = be16(frame, at + 2).ok_or(DROP_MALFORMED)?;
        at += 4;
        tags += 1;
    }
    let mut flow = Flow::default();
    let (l4, end) = match ethertype {
        0x0800 => ipv4(frame, at, &mut flow)?,
        0x86dd => ipv6(frame, at, &mut flow)?,
        0x0806 => return Err(PASS_NOT_IP),
        _ => return Err(DROP_UNSUPPORTED_L2),
    };
    // The IP packet and nothing after it.
    let frame = &frame[..end];
    if flow.frag == FRAG_LATER {
        return Ok(Decoded::Ip { flow, quoted: None });
    }
    transport(frame, l4, &mut flow)?;
    let icmp = flow.proto == 1 || flow.proto == 58;
    let quoted = if icmp && is_error(flow.family, flow.icmp_type) {
        quoted(frame, l4 + 8, flow.family)
    } else {
        None
    };
    Ok(Decoded::Ip { flow, quoted })
}

/// Where an IP packet at `at` with length field `len` (at least `min`)
/// ends in `frame`.
fn packet_end(frame: &[u8], at: usize, len: usize, min: usize) -> Result<usize, u32> {
    if len == 0 {
        return Ok(frame.len());
    }
    if len < min || at + len > frame.len() {
        return Err(DROP_MALFORMED);
    }
    Ok(at + len)
}

fn ipv4(frame: &[u8], at: usize, flow: &mut Flow) -> Result<(usize, usize), u32> {
    let h: [u8; 20] = bytes(frame, at).ok_or(DROP_MALFORMED)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(DROP_MALFORMED);
    }
    let end = packet_end(
        frame,
        at,
        usize::from(u16::from_be_bytes([h[2], h[3]])),
        ihl,
    )?;
    flow.family = FAMILY_V4;
    flow.proto = h[9];
    flow.src = addr_from_octets(&h[12..16]);
    flow.dst = addr_from_octets(&h[16..20]);
    flow.frag_id = u32::from(u16::from_be_bytes([h[4], h[5]]));
    let frag = u16::from_be_bytes([h[6], h[7]]);
    flow.frag = match (frag & 0x1fff, frag & 0x2000 != 0) {
        (0, false) => FRAG_NONE,
        (0, true) => FRAG_FIRST,
        _ => FRAG_LATER,
    };
    Ok((at + ihl, end))
}

fn is_extension(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60)
}

fn ipv6(frame: &[u8], at: usize, flow: &mut Flow) -> Result<(usize, usize), u32> {
    let h: [u8; 40] = bytes(frame, at).ok_or(DROP_MALFORMED)?;
    if h[0] >> 4 != 6 {
        return Err(DROP_MALFORMED);
    }
    let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
    let len = if payload == 0 { 0 } else { 40 + payload };
    let end = packet_end(frame, at, len, 40)?;
    // Extension headers inside the packet only.
    let frame = &frame[..end];
    flow.family = FAMILY_V6;
    flow.src = addr_from_octets(&h[8..24]);
    flow.dst = addr_from_octets(&h[24..40]);
    flow.frag = FRAG_NONE;
    let mut next = h[6];
    let mut at = at + 40;
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let e: [u8; 2] = bytes(frame, at).ok_or(DROP_MALFORMED)?;
                next = e[0];
                at += (usize::from(e[1]) + 1) * 8;
            }
            51 => {
                flow.ipv6_ah = 1;
                let e: [u8; 2] = bytes(frame, at).ok_or(DROP_MALFORMED)?;
                next = e[0];
                at += (usize::from(e[1]) + 2) * 4;
            }
            44 => {
                let e: [u8; 8] = bytes(frame, at).ok_or(DROP_MALFORMED)?;
                next = e[0];
                at += 8;
                let offset_flags = u16::from_be_bytes([e[2], e[3]]);
                flow.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                if offset_flags >> 3 != 0 {
                    flow.frag = FRAG_LATER;
                    flow.proto = next;
                    return inside(at, end);
                }
                if offset_flags & 1 != 0 {
                    flow.frag = FRAG_FIRST;
                }
            }
            _ => break,
        }
    }
    if is_extension(next) {
        return Err(DROP_EXT_CHAIN);
    }
    flow.proto = next;
    inside(at, end)
}

/// The walk's end, if it is inside the packet.
fn inside(at: usize, end: usize) -> Result<(usize, usize), u32> {
    if at > end {
        return Err(DROP_MALFORMED);
    }
    Ok((at, end))
}

/// Echo, timestamp, information and address-mask queries and answers
/// (RFC 792, RFC 950): they carry an identifier.
fn is_query(family: u8, ty: u8) -> bool {
    if family == FAMILY_V4 {
        matches!(ty, 0 | 8 | 13..=18)
    } else {
        ty == 128 || ty == 129
    }
}

fn is_error(family: u8, ty: u8) -> bool {
    if family == FAMILY_V4 {
        matches!(ty, 3 | 11 | 12)
    } else {
        matches!(ty, 1..=4)
    }
}

fn transport(frame: &[u8], at: usize, flow: &mut Flow) -> Result<(), u32> {
    match flow.proto {
        6 => {
            let t: [u8; 14] = bytes(frame, at).ok_or(DROP_MALFORMED)?;
            flow.sport = u16::from_be_bytes([t[0], t[1]]);
            flow.dport = u16::from_be_bytes([t[2], t[3]]);
            flow.tcp_seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            flow.tcp_flags = t[13];
        }
        17 => {
            let u: [u8; 8] = bytes(frame, at).ok_or(DROP_MALFORMED)?;
            flow.sport = u16::from_be_bytes([u[0], u[1]]);
            flow.dport = u16::from_be_bytes([u[2], u[3]]);
        }
        1 | 58 => {
            let i: [u8; 8] = bytes(frame, at).ok_or(DROP_MALFORMED)?;
            flow.icmp_type = i[0];
            flow.icmp_code = i[1];
            if is_query(flow.family, i[0]) {
                flow.sport = u16::from_be_bytes([i[4], i[5]]);
                flow.dport = flow.sport;
            }
        }
        _ => {}
    }
    Ok(())
}

fn quoted(frame: &[u8], at: usize, family: u8) -> Option<Flow> {
    let mut q = Flow::default();
    let l4 = if family == FAMILY_V4 {
        let h: [u8; 20] = bytes(frame, at)?;
        let ihl = usize::from(h[0] & 0x0f) * 4;
        if ihl < 20 {
            return None;
        }
        q.family = FAMILY_V4;
        q.proto = h[9];
        q.src = addr_from_octets(&h[12..16]);
        q.dst = addr_from_octets(&h[16..20]);
        at + ihl
    } else {
        let h: [u8; 40] = bytes(frame, at)?;
        q.family = FAMILY_V6;
        q.proto = h[6];
        q.src = addr_from_octets(&h[8..24]);
        q.dst = addr_from_octets(&h[24..40]);
        at + 40
    };
    let t: [u8; 8] = bytes(frame, l4)?;
    match q.proto {
        6 | 17 => {
            q.sport = be16(&t, 0)?;
            q.dport = be16(&t, 2)?;
        }
        1 | 58 => {
            q.icmp_type = t[0];
            if is_query(q.family, t[0]) {
                q.sport = be16(&t, 4)?;
                q.dport = q.sport;
            }
        }
        _ => {}
    }
    Some(q)
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::{Decoded, decode, observed};
    use crate::{
        flow::Flow,
        parse::{Next, SliceView, parse},
    };

    /// The kernel's parser over `frame`, starting from flows full of junk so
    /// a field it forgets to write shows.
    fn parsed(frame: &[u8]) -> Decoded {
        let junk = Flow {
            src: [0xa5a5_a5a5; 4],
            dst: [0x5a5a_5a5a; 4],
            sport: 0xa5a5,
            dport: 0x5a5a,
            frag_id: 0xdead_beef,
            family: 0xa5,
            proto: 0xa5,
            frag: 0xa5,
            tcp_flags: 0xa5,
            icmp_type: 0xa5,
            icmp_code: 0xa5,
            ipv6_ah: 0xa5,
            pad: 0xa5,
            tcp_seq: 0xa5a5_a5a5,
        };
        let (mut flow, mut inner) = (junk, junk);
        match parse::<false>(&SliceView::new(frame), &mut flow, &mut inner).next {
            Next::Verdict(r) => Decoded::Verdict(r),
            Next::Arp { .. } => Decoded::Verdict(crate::counters::PASS_NOT_IP),
            Next::Ip { has_inner, .. } => observed(&flow, has_inner.then_some(&inner)),
        }
    }

    /// A frame that gets past the link layer more often than random bytes:
    /// an Ethernet header with an IP (or VLAN, or ARP) type, then bytes
    /// whose first one is usually a plausible version/IHL.
    fn frames() -> impl Strategy<Value = Vec<u8>> {
        let ethertype = prop_oneof![
            Just(0x0800u16),
            Just(0x86dd),
            Just(0x8100),
            Just(0x88a8),
            Just(0x0806),
            any::<u16>(),
        ];
        let first = prop_oneof![Just(0x45u8), Just(0x46), Just(0x60), any::<u8>()];
        let proto = prop_oneof![
            Just(6u8),
            Just(17),
            Just(1),
            Just(58),
            Just(0),
            Just(44),
            Just(51),
            Just(60),
            any::<u8>()
        ];
        (
            ethertype,
            first,
            proto,
            proptest::collection::vec(any::<u8>(), 0..160),
        )
            .prop_map(|(ty, first, proto, rest)| {
                let mut f = std::vec![0u8; 12];
                f.extend_from_slice(&ty.to_be_bytes());
                f.push(first);
                f.extend_from_slice(&rest);
                // Put the protocol where IPv4 and IPv6 keep it.
                if f.len() > 23 && first >> 4 == 4 {
                    f[23] = proto;
                }
                if f.len() > 20 && first >> 4 == 6 {
                    f[20] = proto;
                }
                f
            })
    }

    fn seed(name: &str) -> Vec<u8> {
        let path = std::format!(
            "{}/../fuzz/corpus/packet_parser/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The fuzzer's seed frames, every prefix of each, through both; and
    /// what the reference finds in a few, stated outright.
    #[test]
    fn the_seed_frames_parse_as_the_reference_and_the_wire_say() {
        use crate::{
            counters::{DROP_EXT_CHAIN, DROP_UNSUPPORTED_L2, PASS_NOT_IP},
            flow::{FRAG_FIRST, FRAG_LATER},
        };
        let dir = std::format!(
            "{}/../fuzz/corpus/packet_parser",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert!(names.len() >= 18, "{names:?}");
        for name in &names {
            let frame = seed(name);
            for cut in 0..=frame.len() {
                assert_eq!(
                    parsed(&frame[..cut]),
                    decode(&frame[..cut]),
                    "{name} cut at {cut}"
                );
            }
        }
        let ip = |name: &str| match decode(&seed(name)) {
            Decoded::Ip { flow, quoted } => (flow, quoted),
            Decoded::Verdict(r) => panic!("{name}: verdict {r}"),
        };
        assert_eq!(ip("qinq-v4-tcp").0.dport, 443);
        assert_eq!(ip("v4-options").0.dport, 80);
        assert_eq!(
            decode(&seed("three-tags")),
            Decoded::Verdict(DROP_UNSUPPORTED_L2)
        );
        assert_eq!(decode(&seed("arp")), Decoded::Verdict(PASS_NOT_IP));
        assert_eq!(
            decode(&seed("v6-nine-extensions")),
            Decoded::Verdict(DROP_EXT_CHAIN)
        );
        let (chain, _) = ip("v6-ext-chain");
        assert_eq!((chain.proto, chain.dport, chain.frag), (17, 53, FRAG_FIRST));
        let (later, _) = ip("v6-later-fragment");
        assert_eq!(
            (later.proto, later.dport, later.frag, later.frag_id),
            (6, 0, FRAG_LATER, 9)
        );
        assert_eq!(ip("v6-ah-tcp").0.ipv6_ah, 1);
        let (error, quoted) = ip("v4-icmp-unreach-quoting-tcp");
        let quoted = quoted.expect("the quoted packet");
        assert_eq!(
            (error.icmp_type, quoted.proto, quoted.sport, quoted.dport),
            (3, 6, 22, 40000)
        );
        let (_, quoted6) = ip("v6-too-big-quoting-udp");
        assert_eq!(quoted6.map(|q| (q.proto, q.sport)), Some((17, 53)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn the_parser_reads_what_the_reference_reads(frame in frames()) {
            prop_assert_eq!(parsed(&frame), decode(&frame));
        }

        #[test]
        fn every_prefix_of_a_frame_parses_safely(frame in frames()) {
            for cut in 0..frame.len() {
                prop_assert_eq!(parsed(&frame[..cut]), decode(&frame[..cut]));
            }
        }
    }
}

//! Crafted Ethernet frames for `BPF_PROG_TEST_RUN`: exactly the bytes a wire
//! would carry, including the awkward ones (IPv4 options, IPv6 extension
//! chains, VLAN tags, fragments, truncation).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// The transport part of a packet.
#[derive(Clone, Debug)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
    },
    /// TCP with a sequence number of the test's choosing.
    TcpSeq {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        ty: u8,
        code: u8,
        rest: [u8; 4],
    },
    /// Raw bytes under another protocol number.
    Raw {
        proto: u8,
        bytes: Vec<u8>,
    },
}

impl Transport {
    pub fn proto(&self, v6: bool) -> u8 {
        match self {
            Self::Tcp { .. } | Self::TcpSeq { .. } => TCP,
            Self::Udp { .. } => UDP,
            Self::Icmp { .. } => {
                if v6 {
                    ICMPV6
                } else {
                    ICMP
                }
            }
            Self::Raw { proto, .. } => *proto,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut b = vec![0u8; 20];
                b[0..2].copy_from_slice(&sport.to_be_bytes());
                b[2..4].copy_from_slice(&dport.to_be_bytes());
                b[12] = 5 << 4;
                b[13] = *flags;
                b
            }
            Self::TcpSeq {
                sport,
                dport,
                flags,
                seq,
            } => {
                let mut b = Self::Tcp {
                    sport: *sport,
                    dport: *dport,
                    flags: *flags,
                }
                .bytes();
                b[4..8].copy_from_slice(&seq.to_be_bytes());
                b
            }
            Self::Udp { sport, dport } => {
                let mut b = vec![0u8; 8];
                b[0..2].copy_from_slice(&sport.to_be_bytes());
                b[2..4].copy_from_slice(&dport.to_be_bytes());
                b[4..6].copy_from_slice(&8u16.to_be_bytes());
                b
            }
            Self::Icmp { ty, code, rest } => {
                let mut b = vec![*ty, *code, 0, 0];
                b.extend_from_slice(rest);
                b
            }
            Self::Raw { bytes, .. } => bytes.clone(),
        }
    }
}

/// How the IP layer is shaped.
#[derive(Clone, Debug, Default)]
pub struct Shape {
    /// 802.1Q tags before the network header.
    pub vlans: usize,
    /// IPv4 option bytes (a multiple of 4).
    pub ipv4_options: usize,
    /// IPv4: (offset in 8-byte units, more-fragments).
    pub fragment: Option<(u16, bool)>,
    /// IPv6 extension headers before the transport: protocol numbers among
    /// 0 (hop-by-hop), 43 (routing), 60 (destination options), 51
    /// (authentication), 44 (fragment).
    pub ipv6_ext: Vec<u8>,
    /// Cut the frame to this many bytes.
    pub truncate: Option<usize>,
    /// Override the IPv4 IHL nibble.
    pub ihl: Option<u8>,
    /// (destination, source) MAC addresses; default 02:00:00:00:00:02 and
    /// 02:00:00:00:00:01.
    pub macs: Option<([u8; 6], [u8; 6])>,
}

pub fn frame(src: IpAddr, dst: IpAddr, l4: &Transport, shape: &Shape) -> Vec<u8> {
    let (dst_mac, src_mac) = shape
        .macs
        .unwrap_or(([0x02, 0, 0, 0, 0, 2], [0x02, 0, 0, 0, 0, 1]));
    let mut f = [dst_mac, src_mac].concat();
    for _ in 0..shape.vlans {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&100u16.to_be_bytes());
    }
    let mut payload = match shape.fragment {
        Some((offset, _)) if offset > 0 => vec![0xabu8; 16],
        _ => l4.bytes(),
    };
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            f.extend_from_slice(&ipv4_header(s, d, l4.proto(false), payload.len(), shape));
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let (ext, first) = ipv6_ext(&shape.ipv6_ext, l4.proto(true), shape.fragment);
            if let Some((offset, _)) = shape.fragment
                && offset > 0
            {
                payload = vec![0xab; 16];
            }
            f.extend_from_slice(&ipv6_header(s, d, first, ext.len() + payload.len()));
            f.extend_from_slice(&ext);
        }
        _ => panic!("mixed address families"),
    }
    f.extend_from_slice(&payload);
    if let Some(n) = shape.truncate {
        f.truncate(n);
    }
    f
}

fn ipv4_header(s: Ipv4Addr, d: Ipv4Addr, proto: u8, payload: usize, shape: &Shape) -> Vec<u8> {
    let hlen = 20 + shape.ipv4_options;
    let mut h = vec![0u8; hlen];
    let ihl = shape.ihl.unwrap_or(u8::try_from(hlen / 4).unwrap());
    h[0] = 0x40 | ihl;
    h[2..4].copy_from_slice(&u16::try_from(hlen + payload).unwrap().to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    if let Some((offset, more)) = shape.fragment {
        let v = offset | if more { 0x2000 } else { 0 };
        h[6..8].copy_from_slice(&v.to_be_bytes());
    }
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&s.octets());
    h[16..20].copy_from_slice(&d.octets());
    for (i, b) in h[20..].iter_mut().enumerate() {
        // NOP options, ending with End of Options.
        *b = u8::from(i + 1 != shape.ipv4_options);
    }
    // A valid header checksum: the programs do not read it, but a bridge
    // with br_netfilter drops frames whose checksum is wrong.
    let sum = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    let folded = u16::try_from(folded).expect("folded twice: 16 bits");
    h[10..12].copy_from_slice(&(!folded).to_be_bytes());
    h
}

fn ipv6_header(s: Ipv6Addr, d: Ipv6Addr, next: u8, payload: usize) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&u16::try_from(payload).unwrap().to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&s.octets());
    h[24..40].copy_from_slice(&d.octets());
    h
}

/// The extension chain and the first next-header value.
fn ipv6_ext(chain: &[u8], proto: u8, fragment: Option<(u16, bool)>) -> (Vec<u8>, u8) {
    let mut out = Vec::new();
    for (i, &kind) in chain.iter().enumerate() {
        let next = chain.get(i + 1).copied().unwrap_or(proto);
        if kind == 44 {
            let (offset, more) = fragment.unwrap_or((0, false));
            let v = (offset << 3) | u16::from(more);
            out.extend_from_slice(&[next, 0]);
            out.extend_from_slice(&v.to_be_bytes());
            out.extend_from_slice(&0xdead_beefu32.to_be_bytes());
        } else if kind == 51 {
            // Authentication Header, 16 bytes: next header, payload length
            // in 4-byte units minus 2, reserved, SPI, sequence, a 4-byte ICV.
            out.extend_from_slice(&[
                next, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd,
            ]);
        } else {
            // 8 bytes: next header, length 0 (= 8 bytes), PadN.
            out.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
    }
    (out, chain.first().copied().unwrap_or(proto))
}

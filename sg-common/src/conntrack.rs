//! Connection tracking: the table layout and the state machine, as pure
//! functions of (entry, packet, time) so they are tested on the host.
//!
//! One entry serves both directions: the key orders the two endpoints, and
//! the entry remembers which endpoint opened the flow. A flow allowed in
//! either direction is tracked; every later packet of it, either way, passes
//! whatever the rules say, as in EC2.

use crate::{
    flow::{Addr, Flow, icmp, proto, tcp_flags},
    policy::Settings,
};

/// Both endpoints of an IPv6 flow, lower (address, port) first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub addr_a: Addr,
    pub addr_b: Addr,
    pub port_a: u16,
    pub port_b: u16,
    pub proto: u8,
    pub family: u8,
    /// ICMP: which query ([`icmp_kind`]), so that each kind of query and
    /// every other message type is a flow of its own; 0 for TCP, UDP, echo
    /// and other protocols. [`SECOND_ENTRY`] marks a connection's second
    /// entry.
    pub kind: u16,
}
const _: () = assert!(size_of::<CtKey>() == 40);

/// The bit of [`CtKey::kind`] that marks a connection's second entry, for
/// the services through which a connection takes two entries of the
/// allowance (`policy::CLASS_TWO_ENTRIES`): no packet's key has it, and
/// the agent keeps it exactly as long as the entry without it.
pub const SECOND_ENTRY: u16 = 0x8000;
/// [`CtKey::kind`] of an ICMP message that is no query: its type above
/// this bit. Each such type is a flow of its own between two addresses (a
/// redirect never rides on an earlier exchange of another type).
pub const ICMP_KIND_MESSAGE: u16 = 0x100;

/// The [`CtKey::kind`] of an ICMP `flow`: 0 for echo (request and reply
/// share it, as before kinds existed), the request's type for the other
/// queries (timestamp 13, information 15, address mask 17: request and
/// answer share it), [`ICMP_KIND_MESSAGE`] plus the type for everything
/// else. 0 for every other protocol.
#[inline(always)]
pub fn icmp_kind(flow: &Flow) -> u16 {
    if !flow.proto_is_icmp() {
        return 0;
    }
    let ty = flow.icmp_type;
    if icmp::is_echo(flow.family, ty) {
        0
    } else if icmp::is_query(flow.family, ty) {
        // Requests are odd (13, 15, 17), answers the next even type.
        u16::from(ty - (1 - ty % 2))
    } else {
        ICMP_KIND_MESSAGE | u16::from(ty)
    }
}

pub const STATE_SYN_SENT: u8 = 1;
pub const STATE_SYN_RECV: u8 = 2;
pub const STATE_ESTABLISHED: u8 = 3;
/// One side has sent FIN: half-closed, the other side may go on sending
/// (a long response after the client's `shutdown(SHUT_WR)`), so it idles
/// out as an established connection does.
pub const STATE_CLOSING: u8 = 4;
/// Both sides sent FIN.
pub const STATE_CLOSED: u8 = 5;
/// Any non-TCP flow.
pub const STATE_OPEN: u8 = 6;
/// A UDP flow whose origin asked again after a reply: the reply to this
/// second request completes more than one request-response transaction,
/// which makes it a stream (AWS's `UdpStreamTimeout`).
pub const STATE_ASKED_AGAIN: u8 = 8;
/// A RST was seen. No sequence numbers are tracked, so a RST is not trusted
/// to end a connection on its own word: the entry idles out as a closed
/// one, unless the endpoint that sent the RST sends again (not a SYN),
/// which shows the RST was forged or stale and brings the connection back.
pub const STATE_RESET: u8 = 7;

/// Endpoint `a` of the key opened the flow.
pub const FLAG_ORIGIN_A: u8 = 1;
/// The endpoint that did not open the flow has answered.
pub const FLAG_REPLIED: u8 = 2;
/// More than one request-response (UDP): the longer stream timeout applies.
pub const FLAG_STREAM: u8 = 4;
/// The last RST came from endpoint a (meaningful in [`STATE_RESET`]).
pub const FLAG_RST_A: u8 = 32;
/// `seq_a` / `seq_b` hold a sequence number seen (TCP).
pub const FLAG_SEQ_A: u8 = 64;
pub const FLAG_SEQ_B: u8 = 128;
/// FIN seen from endpoint a / b.
pub const FLAG_FIN_A: u8 = 8;
pub const FLAG_FIN_B: u8 = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    pub last_seen_ns: u64,
    pub state: u8,
    pub flags: u8,
    /// The flow's network-ACL passes, per direction, under the tables'
    /// epoch (`nacl::with_pass`): 0 until a network ACL judged it.
    pub nacl: u16,
    /// TCP: the sequence number endpoint a / b last sent (valid with
    /// [`FLAG_SEQ_A`] / [`FLAG_SEQ_B`]).
    pub seq_a: u32,
    pub seq_b: u32,
    /// Packets and bytes endpoint a / b sent, counted by the programs only
    /// while flow logs are on (they cost a write per packet): the agent
    /// reports their growth per aggregation interval, one record per
    /// direction as AWS's flow logs do. Wrapping.
    pub packets_a: u32,
    pub packets_b: u32,
    /// The idle timeout, in seconds, of an established (or half-closed)
    /// TCP connection or a UDP flow that a Network Load Balancer tracks
    /// (`policy::service_idle_s`): AWS idles those out after the load
    /// balancer's timeouts. 0: the instance's.
    pub idle_s: u32,
    pub bytes_a: u64,
    pub bytes_b: u64,
}
const _: () = assert!(size_of::<CtEntry>() == 48);

/// How far from the sequence number its sender last used a TCP segment may
/// be and still move the connection's state or sequence numbers: 4 MiB
/// either way. Every segment of a tracked flow passes the programs, so
/// consecutive segments of one sender are at most one (GSO or BIG TCP)
/// super-segment apart; an off-path sender guessing blindly hits the window
/// once in 512 tries.
pub const SEQ_WINDOW: u32 = 4 << 20;

/// A refreshed timestamp is written back at most this often: the tracked
/// fast path then writes nothing for most packets.
pub const REFRESH_NS: u64 = 1_000_000_000;

/// Key of a datagram whose later fragments may follow its first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: Addr,
    pub dst: Addr,
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub pad: u16,
}
const _: () = assert!(size_of::<FragKey>() == 40);

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragEntry {
    pub seen_ns: u64,
}

impl FragKey {
    /// Fills the key in place for the datagram `flow` belongs to.
    #[inline(always)]
    pub fn fill(&mut self, flow: &Flow) {
        self.src = flow.src;
        self.dst = flow.dst;
        self.id = flow.frag_id;
        self.proto = flow.proto;
        self.family = flow.family;
        self.pad = 0;
    }
}

/// The conntrack key of `flow` and whether the packet travels from endpoint
/// `a`. TCP and UDP are keyed by ports, ICMP queries by identifier (in
/// both port slots, so request and reply meet) and kind, other ICMP
/// messages by type, everything else by addresses and protocol alone.
#[inline(always)]
pub fn key_of(flow: &Flow) -> (CtKey, bool) {
    let mut key = CtKey::default();
    let from_a = fill_key(flow, &mut key);
    (key, from_a)
}

/// [`key_of`] writing into `key` in place: the eBPF stack is 512 bytes and
/// this keeps a copy off it.
#[inline(always)]
pub fn fill_key(flow: &Flow, key: &mut CtKey) -> bool {
    let (sport, dport) = key_ports(flow);
    let src_first = endpoint_le(&flow.src, sport, &flow.dst, dport);
    if src_first {
        key.addr_a = flow.src;
        key.addr_b = flow.dst;
        key.port_a = sport;
        key.port_b = dport;
    } else {
        key.addr_a = flow.dst;
        key.addr_b = flow.src;
        key.port_a = dport;
        key.port_b = sport;
    }
    key.proto = flow.proto;
    key.family = flow.family;
    key.kind = icmp_kind(flow);
    src_first
}

/// The key's ports: TCP and UDP ports, an ICMP query's identifier in both
/// slots (so request and reply meet), nothing for any other protocol.
#[inline(always)]
fn key_ports(flow: &Flow) -> (u16, u16) {
    match flow.proto {
        proto::TCP | proto::UDP => (flow.sport, flow.dport),
        proto::ICMP | proto::ICMPV6 if icmp::is_query(flow.family, flow.icmp_type) => {
            (flow.sport, flow.sport)
        }
        _ => (0, 0),
    }
}

/// A total order on (address, port) endpoints; any order serves, as long as
/// both directions of a flow compute the same one. Word by word, unrolled:
/// an array comparison would become a byte loop in eBPF.
#[inline(always)]
fn endpoint_le(a: &Addr, a_port: u16, b: &Addr, b_port: u16) -> bool {
    if a[0] != b[0] {
        return a[0] < b[0];
    }
    if a[1] != b[1] {
        return a[1] < b[1];
    }
    if a[2] != b[2] {
        return a[2] < b[2];
    }
    if a[3] != b[3] {
        return a[3] < b[3];
    }
    a_port <= b_port
}

/// Whether the packet an ICMP error quotes was sent by the error's
/// receiver, as a genuine error's was (it goes back to the source of what
/// caused it): a third party that knows a tracked flow's ports cannot
/// aim an error about it at anyone else.
#[inline(always)]
pub fn quotes_its_receiver(error: &Flow, quoted: &Flow) -> bool {
    error.family == quoted.family
        && error.dst[0] == quoted.src[0]
        && error.dst[1] == quoted.src[1]
        && error.dst[2] == quoted.src[2]
        && error.dst[3] == quoted.src[3]
}

/// How long an entry in this state may stay idle.
#[inline(always)]
pub fn idle_timeout_ns(entry: &CtEntry, protocol: u8, s: &Settings) -> u64 {
    let service_ns = u64::from(entry.idle_s) * 1_000_000_000;
    match protocol {
        proto::TCP => match entry.state {
            STATE_SYN_SENT | STATE_SYN_RECV => s.tcp_syn_ns,
            STATE_ESTABLISHED | STATE_CLOSING if service_ns != 0 => service_ns,
            STATE_ESTABLISHED => s.tcp_established_ns,
            STATE_CLOSING => s.tcp_closing_ns,
            _ => s.tcp_closed_ns,
        },
        proto::UDP => {
            if service_ns != 0 {
                service_ns
            } else if entry.flags & FLAG_STREAM != 0 {
                s.udp_stream_ns
            } else {
                s.udp_ns
            }
        }
        proto::ICMP | proto::ICMPV6 => s.icmp_ns,
        _ => s.other_ns,
    }
}

/// Whether `entry` still stands for a live flow at `now_ns`: idle for less
/// than its timeout (a timeout of zero expires everything at once).
#[inline(always)]
pub fn is_live(entry: &CtEntry, protocol: u8, now_ns: u64, s: &Settings) -> bool {
    now_ns.saturating_sub(entry.last_seen_ns) < idle_timeout_ns(entry, protocol, s)
}

/// Whether a packet that finds a live `entry` is part of it. A fresh SYN
/// on a closed or reset TCP connection opens a new one and must be judged
/// by the rules again.
#[inline(always)]
pub fn admits(entry: &CtEntry, flow: &Flow) -> bool {
    !(flow.proto == proto::TCP
        && (entry.state == STATE_CLOSED || entry.state == STATE_RESET)
        && flow.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN)
}

/// Whether a packet the rules allow, of a flow the table does not hold,
/// opens an entry. An inbound TCP packet does only if it opens a connection
/// (a SYN): a mid-stream segment or a RST from outside, with no connection
/// behind it, must not make an entry that would let the instance's answers
/// out past its outbound rules. (Outbound, the instance's own stack picks a
/// connection up mid-stream, e.g. after its entry idled out.)
#[inline(always)]
pub fn opens_entry(flow: &Flow, inbound: bool) -> bool {
    !(inbound
        && flow.proto == proto::TCP
        && flow.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) != tcp_flags::SYN)
}

/// The entry for a flow whose first packet the rules just allowed.
#[inline(always)]
pub fn open(flow: &Flow, from_a: bool, now_ns: u64) -> CtEntry {
    let state = if flow.proto == proto::TCP {
        let f = flow.tcp_flags;
        if f & tcp_flags::RST != 0 {
            STATE_RESET
        } else if f & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN {
            STATE_SYN_SENT
        } else {
            // Picked up mid-stream (e.g. after the agent restarted).
            STATE_ESTABLISHED
        }
    } else {
        STATE_OPEN
    };
    let tcp = flow.proto == proto::TCP;
    let seq_flag = match (tcp, from_a) {
        (false, _) => 0,
        (true, true) => FLAG_SEQ_A,
        (true, false) => FLAG_SEQ_B,
    };
    // LLVM merges the two adjacent zero u64 stores into a 16-byte memset,
    // which the BPF backend emits as a call to a byte loop on every new
    // flow; a zero it cannot see as a constant is stored as two words.
    let zero = core::hint::black_box(0u64);
    CtEntry {
        last_seen_ns: now_ns,
        state,
        flags: seq_flag
            | if from_a {
                FLAG_ORIGIN_A | if state == STATE_RESET { FLAG_RST_A } else { 0 }
            } else {
                0
            },
        nacl: 0,
        seq_a: if tcp && from_a { flow.tcp_seq } else { 0 },
        seq_b: if tcp && !from_a { flow.tcp_seq } else { 0 },
        packets_a: 0,
        packets_b: 0,
        idle_s: 0,
        bytes_a: zero,
        bytes_b: zero,
    }
}

/// Whether a TCP segment from endpoint a (`from_a`) is plausibly part of
/// the connection: its sequence number is within [`SEQ_WINDOW`] of the one
/// its sender last used, or none is known yet. What is checked is only
/// this distance (not the receiver's advertised window, nor
/// acknowledgements, which `nf_conntrack` also checks).
#[inline(always)]
pub fn in_window(entry: &CtEntry, flow: &Flow, from_a: bool) -> bool {
    let (known, last) = if from_a {
        (entry.flags & FLAG_SEQ_A != 0, entry.seq_a)
    } else {
        (entry.flags & FLAG_SEQ_B != 0, entry.seq_b)
    };
    !known || {
        let d = flow.tcp_seq.wrapping_sub(last);
        d <= SEQ_WINDOW || d >= SEQ_WINDOW.wrapping_neg()
    }
}

/// The entry after a tracked packet of it, travelling from endpoint `a`
/// when `from_a`.
#[inline(always)]
pub fn advance(entry: &CtEntry, flow: &Flow, from_a: bool, now_ns: u64) -> CtEntry {
    let from_origin = from_a == (entry.flags & FLAG_ORIGIN_A != 0);
    let mut flags = entry.flags;
    let mut state = entry.state;
    if flow.proto == proto::UDP {
        // A stream once more than one request-response transaction has
        // completed: request, response, request, response.
        if from_origin {
            if flags & FLAG_REPLIED != 0 && state == STATE_OPEN {
                state = STATE_ASKED_AGAIN;
            }
        } else {
            if state == STATE_ASKED_AGAIN {
                flags |= FLAG_STREAM;
            }
            flags |= FLAG_REPLIED;
        }
    } else if from_origin {
        if flags & FLAG_REPLIED != 0 {
            flags |= FLAG_STREAM;
        }
    } else {
        flags |= FLAG_REPLIED;
    }
    let mut seq_a = entry.seq_a;
    let mut seq_b = entry.seq_b;
    if flow.proto == proto::TCP {
        let f = flow.tcp_flags;
        // A segment far from its sender's sequence numbers (forged, or of
        // another connection on the same tuple) passes, as the endpoint
        // will discard it, but changes nothing here: not the state (a RST
        // or FIN), not the sequence numbers, not the idle time.
        if !in_window(entry, flow, from_a) {
            return *entry;
        }
        if from_a {
            seq_a = flow.tcp_seq;
            flags |= FLAG_SEQ_A;
        } else {
            seq_b = flow.tcp_seq;
            flags |= FLAG_SEQ_B;
        }
        if f & tcp_flags::RST != 0 {
            state = STATE_RESET;
            flags = if from_a {
                flags | FLAG_RST_A
            } else {
                flags & !FLAG_RST_A
            };
        } else {
            if f & tcp_flags::FIN != 0 {
                flags |= if from_a { FLAG_FIN_A } else { FLAG_FIN_B };
            }
            state = match state {
                STATE_SYN_SENT if !from_origin && f & tcp_flags::SYN != 0 => STATE_SYN_RECV,
                STATE_SYN_RECV if from_origin && f & tcp_flags::ACK != 0 => STATE_ESTABLISHED,
                STATE_CLOSED | STATE_RESET
                    if f & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN =>
                {
                    STATE_SYN_SENT
                }
                // The RST's sender goes on: the RST was not its own.
                STATE_RESET if from_a == (flags & FLAG_RST_A != 0) => STATE_ESTABLISHED,
                s => s,
            };
            if flags & (FLAG_FIN_A | FLAG_FIN_B) == FLAG_FIN_A | FLAG_FIN_B {
                state = STATE_CLOSED;
            } else if flags & (FLAG_FIN_A | FLAG_FIN_B) != 0
                && state != STATE_CLOSED
                && state != STATE_RESET
            {
                state = STATE_CLOSING;
            }
        }
    }
    CtEntry {
        last_seen_ns: now_ns,
        state,
        flags,
        nacl: entry.nacl,
        seq_a,
        seq_b,
        packets_a: entry.packets_a,
        packets_b: entry.packets_b,
        idle_s: entry.idle_s,
        bytes_a: entry.bytes_a,
        bytes_b: entry.bytes_b,
    }
}

/// Whether `next` must be written back over `old`: its state changed, or
/// the stored timestamp is more than [`REFRESH_NS`] old. (TCP sequence
/// numbers are written apart, on every segment that moves them: they must
/// not lag behind a fast sender.)
#[inline(always)]
pub fn needs_write(old: &CtEntry, next: &CtEntry) -> bool {
    old.state != next.state
        || old.flags != next.flags
        || next.last_seen_ns.saturating_sub(old.last_seen_ns) > REFRESH_NS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FAMILY_V4, Flow};

    const SEC: u64 = 1_000_000_000;

    fn settings() -> Settings {
        Settings {
            generation: 0,
            ready: 1,
            tcp_syn_ns: 60 * SEC,
            tcp_established_ns: 432_000 * SEC,
            tcp_closing_ns: 432_000 * SEC,
            tcp_closed_ns: 10 * SEC,
            udp_ns: 30 * SEC,
            udp_stream_ns: 180 * SEC,
            icmp_ns: 30 * SEC,
            other_ns: 600 * SEC,
            fragment_ns: 30 * SEC,
            ns_per_tick: 0,
            nacl: [0; 2],
        }
    }

    fn v4(a: u8) -> crate::flow::Addr {
        crate::flow::addr_from_octets(&[10, 0, 0, a])
    }

    fn tcp(src: u8, sport: u16, dst: u8, dport: u16, flags: u8) -> Flow {
        Flow {
            family: FAMILY_V4,
            proto: proto::TCP,
            tcp_flags: flags,
            src: v4(src),
            dst: v4(dst),
            sport,
            dport,
            ..Flow::default()
        }
    }

    fn udp(src: u8, sport: u16, dst: u8, dport: u16) -> Flow {
        Flow {
            proto: proto::UDP,
            ..tcp(src, sport, dst, dport, 0)
        }
    }

    #[test]
    fn both_directions_share_one_key() {
        let (k1, a1) = key_of(&tcp(1, 40000, 2, 80, tcp_flags::SYN));
        let (k2, a2) = key_of(&tcp(2, 80, 1, 40000, tcp_flags::SYN | tcp_flags::ACK));
        assert_eq!(k1, k2);
        assert_ne!(a1, a2);
    }

    #[test]
    fn icmp_echo_request_and_reply_share_a_key() {
        let req = Flow {
            family: FAMILY_V4,
            proto: proto::ICMP,
            src: v4(1),
            dst: v4(2),
            icmp_type: icmp::V4_ECHO_REQUEST,
            sport: 77,
            dport: 77,
            ..Flow::default()
        };
        let rep = Flow {
            src: v4(2),
            dst: v4(1),
            icmp_type: icmp::V4_ECHO_REPLY,
            ..req
        };
        assert_eq!(key_of(&req).0, key_of(&rep).0);
    }

    #[test]
    fn tcp_handshake_data_and_close() {
        let s = settings();
        let syn = tcp(1, 40000, 2, 80, tcp_flags::SYN);
        let (_, from_a) = key_of(&syn);
        let e = open(&syn, from_a, 0);
        assert_eq!(e.state, STATE_SYN_SENT);
        let synack = tcp(2, 80, 1, 40000, tcp_flags::SYN | tcp_flags::ACK);
        let e = advance(&e, &synack, !from_a, SEC);
        assert_eq!(e.state, STATE_SYN_RECV);
        let ack = tcp(1, 40000, 2, 80, tcp_flags::ACK);
        let e = advance(&e, &ack, from_a, 2 * SEC);
        assert_eq!(e.state, STATE_ESTABLISHED);
        assert!(is_live(&e, proto::TCP, 2 * SEC + 400_000 * SEC, &s));
        let fin = tcp(1, 40000, 2, 80, tcp_flags::FIN | tcp_flags::ACK);
        let e = advance(&e, &fin, from_a, 3 * SEC);
        assert_eq!(e.state, STATE_CLOSING);
        // Half-closed: the server may answer for long after the client's
        // FIN (shutdown(SHUT_WR)); it idles out as an established flow.
        assert!(is_live(&e, proto::TCP, 3 * SEC + 3_600 * SEC, &s));
        assert!(!is_live(&e, proto::TCP, 3 * SEC + 432_001 * SEC, &s));
        let fin2 = tcp(2, 80, 1, 40000, tcp_flags::FIN | tcp_flags::ACK);
        let e = advance(&e, &fin2, !from_a, 4 * SEC);
        assert_eq!(e.state, STATE_CLOSED);
        assert!(is_live(&e, proto::TCP, 13 * SEC, &s));
        assert!(!is_live(&e, proto::TCP, 15 * SEC, &s));
        // A new SYN on the closed tuple is judged by the rules again.
        assert!(!admits(&e, &syn));
        assert!(admits(&e, &ack));
    }

    #[test]
    fn a_rst_ends_the_flow_unless_its_sender_goes_on() {
        let s = settings();
        let syn = tcp(1, 40000, 2, 80, tcp_flags::SYN);
        let (_, from_a) = key_of(&syn);
        let e = open(&syn, from_a, 0);
        let rst = tcp(2, 80, 1, 40000, tcp_flags::RST | tcp_flags::ACK);
        let reset = advance(&e, &rst, !from_a, 1);
        assert_eq!(reset.state, STATE_RESET);
        assert!(!is_live(&reset, proto::TCP, 11 * SEC, &s), "idles out fast");
        // The other side's stray segments do not bring it back...
        let stray = tcp(1, 40000, 2, 80, tcp_flags::ACK);
        assert_eq!(advance(&reset, &stray, from_a, 2).state, STATE_RESET);
        // ...but the RST's own sender going on shows it was forged.
        let data = tcp(2, 80, 1, 40000, tcp_flags::ACK);
        assert_eq!(advance(&reset, &data, !from_a, 2).state, STATE_ESTABLISHED);
        // A fresh SYN on a reset tuple is a new connection, for the rules.
        assert!(!admits(&reset, &syn));
    }

    #[test]
    fn rst_and_fin_must_be_near_their_senders_sequence_numbers() {
        let seq = |f: Flow, n: u32| Flow { tcp_seq: n, ..f };
        let syn = seq(tcp(1, 40000, 2, 80, tcp_flags::SYN), 0xffff_fff0);
        let (_, from_a) = key_of(&syn);
        let e = open(&syn, from_a, 0);
        let synack = seq(tcp(2, 80, 1, 40000, tcp_flags::SYN | tcp_flags::ACK), 7);
        let e = advance(&e, &synack, !from_a, 1);
        // Across the wrap of the sequence space: still in the window.
        let data = seq(tcp(1, 40000, 2, 80, tcp_flags::ACK), 0x0000_1000);
        let e = advance(&e, &data, from_a, 2);
        assert_eq!(if from_a { e.seq_a } else { e.seq_b }, 0x1000);
        let forged = seq(tcp(2, 80, 1, 40000, tcp_flags::RST), 7 + SEQ_WINDOW + 1);
        assert_eq!(
            advance(&e, &forged, !from_a, 3),
            e,
            "changes nothing, not even the time"
        );
        let forged_fin = seq(tcp(1, 40000, 2, 80, tcp_flags::FIN), 0x8000_0000);
        assert_eq!(advance(&e, &forged_fin, from_a, 3), e);
        let real = seq(tcp(2, 80, 1, 40000, tcp_flags::RST), 7 + 1_000);
        assert_eq!(advance(&e, &real, !from_a, 3).state, STATE_RESET);
    }

    /// AWS: the stream timeout applies after more than one request-response
    /// transaction; a request, a response and an unanswered request are
    /// not a stream yet.
    #[test]
    fn udp_becomes_a_stream_after_a_second_transaction() {
        let s = settings();
        let req = udp(1, 5000, 2, 53);
        let resp = udp(2, 53, 1, 5000);
        let (_, from_a) = key_of(&req);
        let e = open(&req, from_a, 0);
        assert!(!is_live(&e, proto::UDP, 31 * SEC, &s));
        let e = advance(&e, &resp, !from_a, SEC);
        assert_eq!(e.flags & FLAG_STREAM, 0);
        let e = advance(&e, &req, from_a, 2 * SEC);
        assert_eq!(e.flags & FLAG_STREAM, 0, "an unanswered second request");
        assert!(!is_live(&e, proto::UDP, 2 * SEC + 31 * SEC, &s));
        let e = advance(&e, &req, from_a, 3 * SEC);
        assert_eq!(
            e.flags & FLAG_STREAM,
            0,
            "a third request, still unanswered"
        );
        let e = advance(&e, &resp, !from_a, 4 * SEC);
        assert_ne!(e.flags & FLAG_STREAM, 0, "the second transaction completed");
        assert!(is_live(&e, proto::UDP, 4 * SEC + 179 * SEC, &s));
        assert!(!is_live(&e, proto::UDP, 4 * SEC + 181 * SEC, &s));
    }

    /// ICMP queries are flows per kind and identifier, request and answer
    /// sharing a key; every other message type is a flow of its own.
    #[test]
    fn icmp_queries_are_keyed_by_kind_and_identifier() {
        let msg = |src: u8, dst: u8, ty: u8, id: u16| {
            // The parser reads an identifier of queries only.
            let id = if icmp::is_query(crate::flow::FAMILY_V4, ty) {
                id
            } else {
                0
            };
            Flow {
                src: v4(src),
                dst: v4(dst),
                proto: proto::ICMP,
                family: crate::flow::FAMILY_V4,
                icmp_type: ty,
                sport: id,
                dport: id,
                ..Flow::default()
            }
        };
        let key = |f: Flow| key_of(&f).0;
        assert_eq!(
            key(msg(1, 2, 13, 7)),
            key(msg(2, 1, 14, 7)),
            "timestamp and its answer"
        );
        assert_eq!(
            key(msg(1, 2, 17, 7)),
            key(msg(2, 1, 18, 7)),
            "address mask and its answer"
        );
        assert_eq!(
            key(msg(1, 2, 8, 7)),
            key(msg(2, 1, 0, 7)),
            "echo and its reply"
        );
        assert_eq!(
            key(msg(1, 2, 8, 7)).kind,
            0,
            "echo keys as before kinds existed"
        );
        assert_ne!(
            key(msg(1, 2, 13, 7)),
            key(msg(2, 1, 14, 8)),
            "another identifier"
        );
        assert_ne!(key(msg(1, 2, 13, 7)), key(msg(2, 1, 0, 7)), "another kind");
        assert_ne!(key(msg(1, 2, 13, 7)), key(msg(2, 1, 5, 0)), "a redirect");
        assert_ne!(
            key(msg(1, 2, 5, 0)),
            key(msg(2, 1, 9, 0)),
            "one message type, another"
        );
    }

    /// AWS: flows a Network Load Balancer tracks idle out after its
    /// timeouts (TCP 350 s by default, UDP 120 s), not the instance's; the
    /// entry carries them from its opening packet through every update.
    #[test]
    fn a_load_balancers_flows_idle_out_after_its_timeouts() {
        use crate::policy::{
            AddrValue, CLASS_AUTO_TRACKED, CLASS_NLB_TIMEOUTS, CLASS_SERVICE_TIMEOUT_SHIFT,
            service_idle_s,
        };
        let s = settings();
        let nlb = AddrValue {
            class: 1,
            flags: CLASS_AUTO_TRACKED | CLASS_NLB_TIMEOUTS | 350 << CLASS_SERVICE_TIMEOUT_SHIFT,
        };
        let syn = tcp(1, 40000, 2, 80, tcp_flags::SYN);
        let synack = tcp(2, 80, 1, 40000, tcp_flags::SYN | tcp_flags::ACK);
        let ack = tcp(1, 40000, 2, 80, tcp_flags::ACK);
        let (_, from_a) = key_of(&syn);
        let mut e = open(&syn, from_a, 0);
        e.idle_s = service_idle_s(nlb, proto::TCP);
        assert_eq!(e.idle_s, 350);
        assert!(
            !is_live(&e, proto::TCP, 61 * SEC, &s),
            "a handshake still idles out in 60 s"
        );
        let e = advance(&e, &synack, !from_a, SEC);
        let e = advance(&e, &ack, from_a, 2 * SEC);
        assert_eq!(e.state, STATE_ESTABLISHED);
        assert!(is_live(&e, proto::TCP, 2 * SEC + 349 * SEC, &s));
        assert!(
            !is_live(&e, proto::TCP, 2 * SEC + 351 * SEC, &s),
            "350 s, not 432,000"
        );

        let req = udp(1, 5000, 2, 53);
        let resp = udp(2, 53, 1, 5000);
        let (_, from_a) = key_of(&req);
        let mut e = open(&req, from_a, 0);
        e.idle_s = service_idle_s(nlb, proto::UDP);
        for (i, (p, a)) in [(&resp, !from_a), (&req, from_a), (&resp, !from_a)]
            .into_iter()
            .enumerate()
        {
            e = advance(&e, p, a, (i as u64 + 1) * SEC);
        }
        assert_ne!(e.flags & FLAG_STREAM, 0);
        assert!(
            is_live(&e, proto::UDP, 3 * SEC + 119 * SEC, &s),
            "longer than 30 s"
        );
        assert!(
            !is_live(&e, proto::UDP, 3 * SEC + 121 * SEC, &s),
            "120 s, not the stream's 180"
        );
        // Anyone else's flow: the instance's timeouts.
        assert_eq!(
            service_idle_s(
                AddrValue {
                    class: 1,
                    flags: CLASS_AUTO_TRACKED
                },
                proto::TCP
            ),
            0
        );
    }

    #[test]
    fn timestamps_are_written_back_at_most_once_a_second() {
        let ack = tcp(1, 40000, 2, 80, tcp_flags::ACK);
        let e = open(&ack, true, 0);
        assert!(!needs_write(&e, &advance(&e, &ack, true, SEC / 2)));
        assert!(needs_write(&e, &advance(&e, &ack, true, 2 * SEC)));
    }
}

//! Connection tracking: replies in both directions, ICMP errors about
//! tracked flows, echo by identifier, idle timeouts in real time.

use sg_agent::config::Direction;
use sg_tests::{
    frames::{ACK, SYN, Shape, Transport, frame},
    kernel::{dataplane_for, tc_passes, vpc, xdp_passes},
};

use crate::{CONFIG, ip, reference, tcp};

#[test]
fn replies_to_tracked_flows_pass_both_ways() {
    let dp = dataplane_for(&vpc(CONFIG), "web");
    let (me, peer) = ("10.0.0.1", "198.51.100.9");
    let out = frame(ip(me), ip(peer), &tcp(40000, 443, SYN), &Shape::default());
    let reply = frame(
        ip(peer),
        ip(me),
        &tcp(443, 40000, SYN | ACK),
        &Shape::default(),
    );
    assert!(
        !reference(
            Direction::Ingress,
            peer,
            me,
            &tcp(443, 40000, SYN | ACK),
            false,
            false
        ),
        "rules alone refuse the reply"
    );
    assert!(
        !xdp_passes(&dp, &reply),
        "a reply before any request is not a reply"
    );
    assert!(
        !tc_passes(
            &dp,
            &frame(ip(me), ip(peer), &tcp(40000, 80, SYN), &Shape::default())
        ),
        "egress tcp/80: no egress rule"
    );
    assert!(
        tc_passes(&dp, &out),
        "egress tcp/443 allowed by the egress rule"
    );
    assert!(xdp_passes(&dp, &reply), "its reply is tracked");
    let other = frame(
        ip(peer),
        ip(me),
        &tcp(443, 40001, SYN | ACK),
        &Shape::default(),
    );
    assert!(!xdp_passes(&dp, &other), "another port is another flow");

    // Inbound allowed flow: its replies leave although egress allows only 443.
    let inbound = frame(
        ip("203.0.113.5"),
        ip(me),
        &tcp(50000, 80, SYN),
        &Shape::default(),
    );
    let answer = frame(
        ip(me),
        ip("203.0.113.5"),
        &tcp(80, 50000, SYN | ACK),
        &Shape::default(),
    );
    assert!(
        !tc_passes(&dp, &answer),
        "egress rules alone refuse the answer"
    );
    assert!(xdp_passes(&dp, &inbound));
    assert!(
        tc_passes(&dp, &answer),
        "the answer of a tracked inbound flow leaves"
    );
}

/// IPv6 flows live in tables of their own (IPv4 has a shorter key): the
/// same stateful behaviour there.
#[test]
fn ipv6_replies_to_tracked_flows_pass() {
    let dp = dataplane_for(&vpc(CONFIG), "web");
    let (me, peer) = ("2001:db8::1", "2001:db8:7::5");
    let inbound = frame(ip(peer), ip(me), &tcp(50000, 80, SYN), &Shape::default());
    let answer = frame(
        ip(me),
        ip(peer),
        &tcp(80, 50000, SYN | ACK),
        &Shape::default(),
    );
    let elsewhere = frame(
        ip(me),
        ip(peer),
        &tcp(80, 50001, SYN | ACK),
        &Shape::default(),
    );
    assert!(
        !tc_passes(&dp, &answer),
        "no IPv6 egress rule: the answer alone is refused"
    );
    assert!(xdp_passes(&dp, &inbound), "tcp/80 from ::/0");
    assert!(
        tc_passes(&dp, &answer),
        "the answer of a tracked inbound IPv6 flow leaves"
    );
    assert!(!tc_passes(&dp, &elsewhere), "another port is another flow");
}

#[test]
fn icmp_errors_pass_only_for_tracked_flows() {
    let dp = dataplane_for(&vpc(CONFIG), "web");
    let (me, peer, router) = ("10.0.0.1", "198.51.100.9", "203.0.113.99");
    assert!(tc_passes(
        &dp,
        &frame(ip(me), ip(peer), &tcp(40100, 443, SYN), &Shape::default())
    ));
    // Fragmentation needed, quoting our own SYN.
    let quoted = |sport: u16| {
        let mut q =
            frame(ip(me), ip(peer), &tcp(sport, 443, SYN), &Shape::default())[14..].to_vec();
        q.truncate(28);
        q
    };
    let icmp = |sport: u16| {
        let mut bytes = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
        bytes.extend_from_slice(&quoted(sport));
        frame(
            ip(router),
            ip(me),
            &Transport::Raw { proto: 1, bytes },
            &Shape::default(),
        )
    };
    assert!(
        xdp_passes(&dp, &icmp(40100)),
        "frag-needed about a tracked flow passes (PMTU discovery)"
    );
    assert!(
        !xdp_passes(&dp, &icmp(40101)),
        "frag-needed about an unknown flow is dropped"
    );
}

#[test]
fn echo_replies_to_own_pings_pass() {
    let dp = dataplane_for(&vpc(CONFIG), "web");
    let (me, peer) = ("10.0.0.1", "198.51.100.9");
    let reply = frame(
        ip(peer),
        ip(me),
        &Transport::Icmp {
            ty: 0,
            code: 0,
            rest: [0, 42, 0, 1],
        },
        &Shape::default(),
    );
    assert!(
        !xdp_passes(&dp, &reply),
        "an unsolicited echo reply is dropped"
    );
    // Egress: only tcp/443 is allowed, so the ping itself is refused ...
    let ping = frame(
        ip(me),
        ip(peer),
        &Transport::Icmp {
            ty: 8,
            code: 0,
            rest: [0, 42, 0, 1],
        },
        &Shape::default(),
    );
    assert!(!tc_passes(&dp, &ping));
    // ... but a ping that was let out (here: an inbound ping, tracked by its
    // identifier) gets its reply.
    let inbound_ping = frame(
        ip("10.5.5.5"),
        ip(me),
        &Transport::Icmp {
            ty: 8,
            code: 0,
            rest: [0, 43, 0, 1],
        },
        &Shape::default(),
    );
    let inbound_reply = frame(
        ip(me),
        ip("10.5.5.5"),
        &Transport::Icmp {
            ty: 0,
            code: 0,
            rest: [0, 43, 0, 1],
        },
        &Shape::default(),
    );
    assert!(xdp_passes(&dp, &inbound_ping));
    assert!(
        tc_passes(&dp, &inbound_reply),
        "echo reply of a tracked echo leaves"
    );
}

/// Idle timeouts in real time: the programs tell time from jiffies scaled
/// by the tick the agent measured, so a flow idle for longer than its
/// timeout is forgotten and one idle for less is not. (A clock off by a
/// factor of a thousand either way fails one of the two.)
#[test]
fn idle_flows_expire_in_real_time() {
    let vpc = vpc(CONFIG);
    let compiled = sg_agent::policy::compile::compile(&vpc);
    let tables = &compiled.instances[0].tables;
    let (me, peer) = (ip("10.0.0.1"), ip("198.51.100.9"));
    for (timeout_ms, idle_ms, alive) in [(3_000, 100, true), (200, 600, false)] {
        let mut dp = sg_agent::dataplane::Dataplane::load().expect("load");
        let settings = sg_common::policy::Settings {
            tcp_syn_ns: timeout_ms * 1_000_000,
            ..compiled.instances[0].settings
        };
        dp.publish(tables, settings).expect("publish");
        assert!(tc_passes(
            &dp,
            &frame(me, peer, &tcp(40500, 443, SYN), &Shape::default())
        ));
        std::thread::sleep(std::time::Duration::from_millis(idle_ms));
        assert_eq!(
            xdp_passes(
                &dp,
                &frame(peer, me, &tcp(443, 40500, SYN | ACK), &Shape::default())
            ),
            alive,
            "a half-open flow idle for {idle_ms} ms with a {timeout_ms} ms timeout"
        );
    }
}

/// A RST is not checked against sequence numbers, so it does not end a
/// connection on its own word: after a RST "from" the peer, the entry idles
/// out as a closed one (here in 200 ms), unless the peer sends again, which
/// shows the RST was forged, and the connection is tracked as before.
#[test]
fn a_rst_ends_tracking_unless_its_sender_goes_on() {
    const RST: u8 = 0x04;
    let vpc = vpc(CONFIG);
    let compiled = sg_agent::policy::compile::compile(&vpc);
    let inst = &compiled.instances[0];
    let (me, peer) = (ip("10.0.0.1"), ip("198.51.100.9"));
    for (forged, port) in [(true, 40600), (false, 40601)] {
        let mut dp = sg_agent::dataplane::Dataplane::load().expect("load");
        let settings = sg_common::policy::Settings {
            tcp_closed_ns: 200_000_000,
            ..inst.settings
        };
        dp.publish(&inst.tables, settings).expect("publish");
        let out = |flags| frame(me, peer, &tcp(port, 443, flags), &Shape::default());
        let back = |flags| frame(peer, me, &tcp(443, port, flags), &Shape::default());
        assert!(tc_passes(&dp, &out(SYN)), "egress tcp/443 is allowed");
        assert!(xdp_passes(&dp, &back(SYN | ACK)));
        assert!(tc_passes(&dp, &out(ACK)));
        assert!(xdp_passes(&dp, &back(RST | ACK)), "the RST itself passes");
        if forged {
            assert!(xdp_passes(&dp, &back(ACK)), "the peer goes on");
        }
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert_eq!(
            xdp_passes(&dp, &back(ACK)),
            forged,
            "{}",
            if forged {
                "a connection whose peer went on after the RST is still tracked"
            } else {
                "a reset connection idles out fast: the peer's late segment is a new flow the rules refuse"
            }
        );
    }
}

/// An inbound TCP segment the rules allow opens an entry only if it opens
/// a connection: a mid-stream ACK from outside passes by the rules but
/// makes no entry, so the instance's answer is judged by its outbound
/// rules (here: none allow it), not let out as a tracked reply.
#[test]
fn a_mid_stream_ack_from_outside_opens_no_entry() {
    let dp = dataplane_for(&vpc(CONFIG), "web");
    let (me, peer) = (ip("10.0.0.1"), ip("198.51.100.9"));
    let ack_in = frame(peer, me, &tcp(40700, 80, ACK), &Shape::default());
    let answer = frame(me, peer, &tcp(80, 40700, ACK), &Shape::default());
    assert!(
        xdp_passes(&dp, &ack_in),
        "inbound tcp/80 is allowed by the rules"
    );
    assert!(
        !tc_passes(&dp, &answer),
        "but it opened no connection: the answer meets the outbound rules"
    );
    let syn_in = frame(peer, me, &tcp(40701, 22, SYN), &Shape::default());
    let syn_from_ssh_range = frame(ip("10.9.0.5"), me, &tcp(40701, 22, SYN), &Shape::default());
    assert!(!xdp_passes(&dp, &syn_in), "tcp/22 only from 10.9.0.0/16");
    assert!(
        xdp_passes(&dp, &syn_from_ssh_range),
        "a SYN the rules allow..."
    );
    assert!(
        tc_passes(
            &dp,
            &frame(
                me,
                ip("10.9.0.5"),
                &tcp(22, 40701, SYN | ACK),
                &Shape::default()
            )
        ),
        "...opens a connection, whose answer leaves"
    );
}

/// A RST or FIN moves a connection only when its sequence number is near
/// the one its sender last used (within 4 MiB): a blind off-path RST with
/// another sequence number passes (the endpoint discards it) but changes
/// nothing, so the connection outlives the closed timeout; one in the
/// window ends it.
#[test]
fn a_rst_far_from_its_senders_sequence_numbers_changes_nothing() {
    use sg_tests::frames::Transport;
    const RST: u8 = 0x04;
    let vpc = vpc(CONFIG);
    let compiled = sg_agent::policy::compile::compile(&vpc);
    let inst = &compiled.instances[0];
    let (me, peer) = (ip("10.0.0.1"), ip("198.51.100.9"));
    for (rst_seq, cut) in [(0x8000_0000u32, false), (5_000u32, true)] {
        let mut dp = sg_agent::dataplane::Dataplane::load().expect("load");
        let settings = sg_common::policy::Settings {
            tcp_closed_ns: 200_000_000,
            ..inst.settings
        };
        dp.publish(&inst.tables, settings).expect("publish");
        let seg = |src, dst, sport, dport, flags, seq| {
            frame(
                src,
                dst,
                &Transport::TcpSeq {
                    sport,
                    dport,
                    flags,
                    seq,
                },
                &Shape::default(),
            )
        };
        assert!(tc_passes(&dp, &seg(me, peer, 40800, 443, SYN, 100)));
        assert!(xdp_passes(
            &dp,
            &seg(peer, me, 443, 40800, SYN | ACK, 1_000)
        ));
        assert!(tc_passes(&dp, &seg(me, peer, 40800, 443, ACK, 101)));
        assert!(
            xdp_passes(&dp, &seg(peer, me, 443, 40800, RST, rst_seq)),
            "a RST of a tracked flow passes either way"
        );
        std::thread::sleep(std::time::Duration::from_millis(400));
        assert_eq!(
            !xdp_passes(&dp, &seg(peer, me, 443, 40800, ACK, 1_001)),
            cut,
            "{}",
            if cut {
                "a RST in the window ends the connection (it idles out as closed)"
            } else {
                "a RST 2 GiB away from the peer's sequence numbers changes nothing"
            }
        );
    }
}

/// AWS tracks ICMP queries per query: a timestamp request lets its own
/// answer back (same identifier, same kind), not an answer to another
/// query, an echo reply, nor any other message type (a redirect) between
/// the same two hosts.
#[test]
fn icmp_queries_are_tracked_per_query() {
    let config = r#"
[[security_group]]
name = "web"
egress = []
  [[security_group.ingress]]
  protocol = "icmp"
  from_port = 13
  to_port = -1
  cidr_blocks = ["10.0.0.0/8"]

[[instance]]
name = "web"
addresses = ["10.0.0.1"]
security_groups = ["web"]
"#;
    let dp = dataplane_for(&vpc(config), "web");
    let (me, peer) = ("10.0.0.1", "10.5.5.5");
    let icmp = |src: &str, dst: &str, ty: u8, code: u8, id: u8| {
        frame(
            ip(src),
            ip(dst),
            &Transport::Icmp {
                ty,
                code,
                rest: [0, id, 0, 1],
            },
            &Shape::default(),
        )
    };
    assert!(
        xdp_passes(&dp, &icmp(peer, me, 13, 0, 7)),
        "the timestamp request is allowed by its rule"
    );
    assert!(
        tc_passes(&dp, &icmp(me, peer, 14, 0, 7)),
        "its answer leaves, tracked, though nothing may go out"
    );
    assert!(
        !tc_passes(&dp, &icmp(me, peer, 14, 0, 8)),
        "an answer to another query does not"
    );
    assert!(
        !tc_passes(&dp, &icmp(me, peer, 0, 0, 7)),
        "nor an echo reply with the same identifier"
    );
    assert!(
        !xdp_passes(&dp, &icmp(peer, me, 5, 1, 7)),
        "nor does a redirect ride on the timestamp exchange"
    );
    assert!(
        !tc_passes(&dp, &icmp(me, peer, 18, 0, 7)),
        "nor an address-mask reply"
    );
}

/// An ICMP error passes as related only when the packet it quotes is one
/// its receiver sent (errors go back to the source of what caused them):
/// an error to the instance quoting the peer's half of a tracked flow is
/// forged.
#[test]
fn an_icmp_error_must_quote_a_packet_its_receiver_sent() {
    let dp = dataplane_for(&vpc(CONFIG), "web");
    let (me, peer, router) = ("10.0.0.1", "198.51.100.9", "203.0.113.99");
    assert!(tc_passes(
        &dp,
        &frame(ip(me), ip(peer), &tcp(40200, 443, SYN), &Shape::default())
    ));
    let error_quoting = |src: &str, dst: &str, sport: u16, dport: u16| {
        let mut q =
            frame(ip(src), ip(dst), &tcp(sport, dport, SYN), &Shape::default())[14..].to_vec();
        q.truncate(28);
        let mut bytes = vec![3, 1, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&q);
        frame(
            ip(router),
            ip(me),
            &Transport::Raw { proto: 1, bytes },
            &Shape::default(),
        )
    };
    assert!(
        xdp_passes(&dp, &error_quoting(me, peer, 40200, 443)),
        "host unreachable about our own SYN passes"
    );
    assert!(
        !xdp_passes(&dp, &error_quoting(peer, me, 443, 40200)),
        "the same flow quoted from the peer's side, sent to us, is forged"
    );
}

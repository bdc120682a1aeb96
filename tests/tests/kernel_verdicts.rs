//! The loaded programs, run by the kernel on crafted frames through
//! `BPF_PROG_TEST_RUN`, each verdict compared with the reference evaluator.

use std::net::IpAddr;

use sg_agent::{
    config::Direction,
    reference::{L4, Packet, evaluate},
};
use sg_tests::{
    frames::{ACK, SYN, Shape, Transport, frame},
    kernel::{dataplane_for, tc_ingress_passes, tc_passes, vpc, xdp_passes},
};

const CONFIG: &str = r#"
[[security_group]]
name = "web"
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_blocks = ["0.0.0.0/0"]
  ipv6_cidr_blocks = ["::/0"]
  [[security_group.ingress]]
  # A port a parser that ignores IPv4 options would read (0x0101).
  protocol = "tcp"
  from_port = 257
  to_port = 257
  cidr_blocks = ["0.0.0.0/0"]
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 22
  to_port = 22
  cidr_blocks = ["10.9.0.0/16"]
  [[security_group.ingress]]
  protocol = "udp"
  from_port = 5000
  to_port = 5010
  cidr_blocks = ["10.0.0.0/8"]
  [[security_group.ingress]]
  protocol = "icmp"
  from_port = 8
  to_port = -1
  cidr_blocks = ["10.0.0.0/8"]
  [[security_group.ingress]]
  protocol = "icmpv6"
  from_port = 128
  to_port = -1
  ipv6_cidr_blocks = ["::/0"]
  [[security_group.ingress]]
  protocol = "gre"
  cidr_blocks = ["10.1.0.0/16"]
  [[security_group.egress]]
  protocol = "tcp"
  from_port = 443
  to_port = 443
  cidr_blocks = ["0.0.0.0/0"]

[[instance]]
name = "web"
addresses = ["10.0.0.1", "2001:db8::1"]
security_groups = ["web"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Transport {
    Transport::Tcp {
        sport,
        dport,
        flags,
    }
}

/// The reference verdict for a well-formed packet.
fn reference(
    direction: Direction,
    src: &str,
    dst: &str,
    t: &Transport,
    later_fragment: bool,
    tracked: bool,
) -> bool {
    let vpc = vpc(CONFIG);
    let inst = vpc.instance("web").unwrap();
    let (src, dst) = (ip(src), ip(dst));
    let l4 = if later_fragment {
        L4::None
    } else {
        match t {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport } => L4::Ports {
                src: *sport,
                dst: *dport,
            },
            Transport::Icmp { ty, code, .. } => L4::Icmp {
                ty: *ty,
                code: *code,
            },
            Transport::Raw { .. } => L4::None,
        }
    };
    let packet = Packet {
        src,
        dst,
        proto: t.proto(src.is_ipv6()),
        l4,
        later_fragment,
    };
    evaluate(&vpc, inst, direction, &packet, tracked).passes()
}

struct Case {
    name: &'static str,
    src: &'static str,
    dst: &'static str,
    l4: Transport,
    shape: Shape,
    /// None: ask the reference evaluator. Some: malformed or link-layer
    /// input the evaluator has no notion of.
    fixed: Option<bool>,
}

fn case(name: &'static str, src: &'static str, dst: &'static str, l4: Transport) -> Case {
    Case {
        name,
        src,
        dst,
        l4,
        shape: Shape::default(),
        fixed: None,
    }
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "a table of cases reads best in one place"
)]
fn ingress_verdicts_match_the_reference() {
    let dp = dataplane_for(&vpc(CONFIG), "web");
    // The TC ingress program on a data plane of its own: each sees every
    // frame as a first packet.
    let mut dp_tc = dataplane_for(&vpc(CONFIG), "web");
    dp_tc
        .load_ingress_tc()
        .expect("TC ingress program verifies");
    let mut cases = vec![
        case(
            "v4 tcp/80 from anywhere",
            "198.51.100.7",
            "10.0.0.1",
            tcp(40000, 80, SYN),
        ),
        case(
            "v4 tcp/81: no rule",
            "198.51.100.7",
            "10.0.0.1",
            tcp(40001, 81, SYN),
        ),
        case(
            "v4 tcp/22 from 10.9/16",
            "10.9.1.1",
            "10.0.0.1",
            tcp(40002, 22, SYN),
        ),
        case(
            "v4 tcp/22 from outside 10.9/16",
            "10.8.1.1",
            "10.0.0.1",
            tcp(40003, 22, SYN),
        ),
        case(
            "v4 udp/5005 from 10/8",
            "10.3.3.3",
            "10.0.0.1",
            Transport::Udp {
                sport: 999,
                dport: 5005,
            },
        ),
        case(
            "v4 udp/5011: outside the range",
            "10.3.3.3",
            "10.0.0.1",
            Transport::Udp {
                sport: 998,
                dport: 5011,
            },
        ),
        case(
            "icmp echo request allowed by type",
            "10.2.3.4",
            "10.0.0.1",
            Transport::Icmp {
                ty: 8,
                code: 0,
                rest: [0, 7, 0, 1],
            },
        ),
        case(
            "icmp timestamp: no rule",
            "10.2.3.4",
            "10.0.0.1",
            Transport::Icmp {
                ty: 13,
                code: 0,
                rest: [0; 4],
            },
        ),
        case(
            "icmp echo from outside 10/8",
            "198.51.100.7",
            "10.0.0.1",
            Transport::Icmp {
                ty: 8,
                code: 0,
                rest: [0, 8, 0, 1],
            },
        ),
        case(
            "gre from 10.1/16 (protocol without ports)",
            "10.1.2.3",
            "10.0.0.1",
            Transport::Raw {
                proto: 47,
                bytes: vec![0; 8],
            },
        ),
        case(
            "gre from elsewhere",
            "10.2.2.3",
            "10.0.0.1",
            Transport::Raw {
                proto: 47,
                bytes: vec![0; 8],
            },
        ),
        case(
            "v6 tcp/80",
            "2001:db8:1::7",
            "2001:db8::1",
            tcp(40004, 80, SYN),
        ),
        case(
            "v6 tcp/22: no v6 rule",
            "2001:db8:1::7",
            "2001:db8::1",
            tcp(40005, 22, SYN),
        ),
        case(
            "v6 echo request",
            "2001:db8:1::7",
            "2001:db8::1",
            Transport::Icmp {
                ty: 128,
                code: 0,
                rest: [0, 9, 0, 1],
            },
        ),
        case(
            "v6 icmp type 200: no rule",
            "2001:db8:1::7",
            "2001:db8::1",
            Transport::Icmp {
                ty: 200,
                code: 0,
                rest: [0; 4],
            },
        ),
    ];
    let mut shaped = |name, src, dst, l4, shape: Shape, fixed: Option<bool>| {
        cases.push(Case {
            name,
            src,
            dst,
            l4,
            shape,
            fixed,
        });
    };
    shaped(
        "v4 options skipped: tcp/80",
        "198.51.100.7",
        "10.0.0.1",
        tcp(40010, 80, SYN),
        Shape {
            ipv4_options: 8,
            ..Shape::default()
        },
        None,
    );
    shaped(
        "v4 options skipped: tcp/23 is not read as 257",
        "198.51.100.7",
        "10.0.0.1",
        tcp(40011, 23, SYN),
        Shape {
            ipv4_options: 8,
            ..Shape::default()
        },
        None,
    );
    shaped(
        "v4 40 bytes of options",
        "198.51.100.7",
        "10.0.0.1",
        tcp(40012, 80, SYN),
        Shape {
            ipv4_options: 40,
            ..Shape::default()
        },
        None,
    );
    shaped(
        "v4 IHL below 5",
        "198.51.100.7",
        "10.0.0.1",
        tcp(40013, 80, SYN),
        Shape {
            ihl: Some(4),
            ..Shape::default()
        },
        Some(false),
    );
    shaped(
        "v4 IHL past the frame",
        "198.51.100.7",
        "10.0.0.1",
        tcp(40014, 80, SYN),
        Shape {
            ihl: Some(15),
            ..Shape::default()
        },
        Some(false),
    );
    shaped(
        "truncated tcp header",
        "198.51.100.7",
        "10.0.0.1",
        tcp(40015, 80, SYN),
        Shape {
            truncate: Some(14 + 20 + 10),
            ..Shape::default()
        },
        Some(false),
    );
    shaped(
        "truncated ipv4 header",
        "198.51.100.7",
        "10.0.0.1",
        tcp(40016, 80, SYN),
        Shape {
            truncate: Some(14 + 12),
            ..Shape::default()
        },
        Some(false),
    );
    shaped(
        "one VLAN tag: tcp/80",
        "198.51.100.7",
        "10.0.0.1",
        tcp(40017, 80, SYN),
        Shape {
            vlans: 1,
            ..Shape::default()
        },
        None,
    );
    shaped(
        "one VLAN tag: tcp/23",
        "198.51.100.7",
        "10.0.0.1",
        tcp(40018, 23, SYN),
        Shape {
            vlans: 1,
            ..Shape::default()
        },
        None,
    );
    shaped(
        "two VLAN tags: tcp/80",
        "198.51.100.7",
        "10.0.0.1",
        tcp(40019, 80, SYN),
        Shape {
            vlans: 2,
            ..Shape::default()
        },
        None,
    );
    shaped(
        "three VLAN tags: beyond the parser",
        "198.51.100.7",
        "10.0.0.1",
        tcp(40020, 80, SYN),
        Shape {
            vlans: 3,
            ..Shape::default()
        },
        Some(false),
    );
    shaped(
        "v6 hop-by-hop + dst opts: tcp/80",
        "2001:db8:1::7",
        "2001:db8::1",
        tcp(40021, 80, SYN),
        Shape {
            ipv6_ext: vec![0, 60],
            ..Shape::default()
        },
        None,
    );
    shaped(
        "v6 ext chain hides tcp/22",
        "2001:db8:1::7",
        "2001:db8::1",
        tcp(40022, 22, SYN),
        Shape {
            ipv6_ext: vec![0, 43, 60],
            ..Shape::default()
        },
        None,
    );
    shaped(
        "v6 ext chain of 9: beyond the parser",
        "2001:db8:1::7",
        "2001:db8::1",
        tcp(40023, 80, SYN),
        Shape {
            ipv6_ext: vec![60; 9],
            ..Shape::default()
        },
        Some(false),
    );
    shaped(
        "v6 ext chain truncated",
        "2001:db8:1::7",
        "2001:db8::1",
        tcp(40024, 80, SYN),
        Shape {
            ipv6_ext: vec![0, 60],
            truncate: Some(14 + 40 + 12),
            ..Shape::default()
        },
        Some(false),
    );
    shaped(
        "v4 later fragment, no first: tcp has no all-ports rule",
        "198.51.100.7",
        "10.0.0.1",
        tcp(1, 80, 0),
        Shape {
            fragment: Some((100, false)),
            ..Shape::default()
        },
        Some(false),
    );
    shaped(
        "v4 later fragment of gre: all-ports rule",
        "10.1.2.3",
        "10.0.0.1",
        Transport::Raw {
            proto: 47,
            bytes: vec![0; 8],
        },
        Shape {
            fragment: Some((100, false)),
            ..Shape::default()
        },
        None,
    );
    shaped(
        "v6 later fragment, no first",
        "2001:db8:1::7",
        "2001:db8::1",
        tcp(1, 80, 0),
        Shape {
            ipv6_ext: vec![44],
            fragment: Some((50, false)),
            ..Shape::default()
        },
        Some(false),
    );
    shaped(
        "v6 neighbour solicitation",
        "fe80::1",
        "ff02::1:ff00:1",
        Transport::Icmp {
            ty: 135,
            code: 0,
            rest: [0; 4],
        },
        Shape::default(),
        Some(true),
    );

    let mut failures = Vec::new();
    for c in &cases {
        let later = c.shape.fragment.is_some_and(|(off, _)| off > 0);
        let want = c
            .fixed
            .unwrap_or_else(|| reference(Direction::Ingress, c.src, c.dst, &c.l4, later, false));
        let f = frame(ip(c.src), ip(c.dst), &c.l4, &c.shape);
        let mut verdicts = vec![("XDP", xdp_passes(&dp, &f))];
        // BPF_PROG_TEST_RUN refuses (EINVAL) to build an skb around a
        // truncated IPv4 header, so that frame is XDP's alone.
        if c.name != "truncated ipv4 header" {
            verdicts.push(("TC ingress", tc_ingress_passes(&dp_tc, &f)));
        }
        for (hook, got) in verdicts {
            if got != want {
                failures.push(format!(
                    "{}: {hook} {} but expected {}",
                    c.name,
                    verdict(got),
                    verdict(want)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "DROP" }
}

#[test]
fn link_layer_frames() {
    let dp = dataplane_for(&vpc(CONFIG), "web");
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    assert!(
        xdp_passes(&dp, &arp),
        "ARP passes: security groups never see it"
    );
    let mut mpls = arp.clone();
    mpls[12..14].copy_from_slice(&0x8847u16.to_be_bytes());
    assert!(
        !xdp_passes(&dp, &mpls),
        "MPLS could carry IP past the filter: dropped"
    );
}

#[test]
fn first_fragment_lets_its_later_fragments_through() {
    let dp = dataplane_for(&vpc(CONFIG), "web");
    let (src, dst) = (ip("198.51.100.7"), ip("10.0.0.1"));
    let later = Shape {
        fragment: Some((100, false)),
        ..Shape::default()
    };
    assert!(
        !xdp_passes(&dp, &frame(src, dst, &tcp(1, 80, 0), &later)),
        "later fragment before its first"
    );
    let first = Shape {
        fragment: Some((0, true)),
        ..Shape::default()
    };
    assert!(
        xdp_passes(&dp, &frame(src, dst, &tcp(41000, 80, SYN), &first)),
        "first fragment to tcp/80"
    );
    assert!(
        xdp_passes(&dp, &frame(src, dst, &tcp(1, 80, 0), &later)),
        "later fragment after an allowed first"
    );
    // A first fragment to a port the rules refuse opens nothing.
    let (src6, dst6) = (ip("2001:db8:1::7"), ip("2001:db8::1"));
    let first6 = Shape {
        ipv6_ext: vec![44],
        fragment: Some((0, true)),
        ..Shape::default()
    };
    assert!(
        !xdp_passes(&dp, &frame(src6, dst6, &tcp(41001, 23, SYN), &first6)),
        "v6 first fragment to tcp/23"
    );
    let later6 = Shape {
        ipv6_ext: vec![44],
        fragment: Some((50, false)),
        ..Shape::default()
    };
    assert!(
        !xdp_passes(&dp, &frame(src6, dst6, &tcp(1, 1, 0), &later6)),
        "v6 later fragment of a refused datagram"
    );
    assert!(
        xdp_passes(&dp, &frame(src6, dst6, &tcp(41002, 80, SYN), &first6)),
        "v6 first fragment to tcp/80"
    );
    assert!(
        xdp_passes(&dp, &frame(src6, dst6, &tcp(1, 1, 0), &later6)),
        "v6 later fragment after an allowed first"
    );
}

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

/// Entries in one of the loaded object's tries.
fn trie_len<K: aya::Pod, V: aya::Pod>(dp: &sg_agent::dataplane::Dataplane, name: &str) -> usize {
    let map = dp.ebpf().map(name).expect("map exists");
    let trie: aya::maps::LpmTrie<&aya::maps::MapData, K, V> =
        aya::maps::LpmTrie::try_from(map).expect("LPM trie");
    trie.keys().count()
}

fn hash_len<K: aya::Pod, V: aya::Pod>(dp: &sg_agent::dataplane::Dataplane, name: &str) -> usize {
    let map = dp.ebpf().map(name).expect("map exists");
    let hash: aya::maps::HashMap<&aya::maps::MapData, K, V> =
        aya::maps::HashMap::try_from(map).expect("hash map");
    hash.keys().count()
}

#[test]
fn reloads_swap_whole_policies_and_leave_no_stale_entries() {
    use sg_common::{
        maps as m,
        policy::{AddrKeyV4, AddrValue, PortKey, PortValue},
    };
    let a = vpc(CONFIG);
    let b = vpc(&CONFIG.replace(
        "from_port = 80\n  to_port = 80",
        "from_port = 8080\n  to_port = 8080",
    ));
    let (ca, cb) = (
        sg_agent::compile::compile(&a),
        sg_agent::compile::compile(&b),
    );
    let (ta, tb) = (&ca.instances[0].tables, &cb.instances[0].tables);
    let mut dp = dataplane_for(&a, "web");
    let (src, dst) = (ip("198.51.100.7"), ip("10.0.0.1"));
    for (round, (tables, port80, port8080)) in [
        (tb, false, true),
        (ta, true, false),
        (tb, false, true),
        (ta, true, false),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(
            dp.publish(tables, ca.settings).expect("publish"),
            "round {round}: a changed policy is written"
        );
        // Fresh source ports: these SYNs must be judged by the rules, not the connection table.
        let sport = 42_000 + u16::try_from(round).unwrap() * 2;
        assert_eq!(
            xdp_passes(
                &dp,
                &frame(src, dst, &tcp(sport, 80, SYN), &Shape::default())
            ),
            port80,
            "round {round}: tcp/80"
        );
        assert_eq!(
            xdp_passes(
                &dp,
                &frame(src, dst, &tcp(sport + 1, 8080, SYN), &Shape::default())
            ),
            port8080,
            "round {round}: tcp/8080"
        );
        // Only the generation in force remains: its address entries and the
        // port entries of its distinct classes.
        let classes: std::collections::BTreeSet<_> =
            tables.class_contents().into_values().collect();
        assert_eq!(
            trie_len::<AddrKeyV4, AddrValue>(&dp, m::ADDR_V4),
            tables.v4.len(),
            "round {round}: IPv4 address entries"
        );
        let mut expected = sg_agent::compile::KernelEntries::default();
        for (id, content) in classes.iter().enumerate() {
            expected.add_class(u32::try_from(id).unwrap(), content);
        }
        assert!(
            !expected.port_exact.is_empty(),
            "the policies have single ports"
        );
        assert_eq!(
            trie_len::<PortKey, PortValue>(&dp, m::PORTS),
            expected.ports.len(),
            "round {round}: port trie entries"
        );
        assert_eq!(
            hash_len::<PortKey, PortValue>(&dp, m::PORT_EXACT),
            expected.port_exact.len(),
            "round {round}: port hash entries"
        );
    }
    assert!(
        !dp.publish(ta, ca.settings).expect("publish"),
        "the same policy again writes nothing"
    );
}

/// Idle timeouts in real time: the programs tell time from jiffies scaled
/// by the tick the agent measured, so a flow idle for longer than its
/// timeout is forgotten and one idle for less is not. (A clock off by a
/// factor of a thousand either way fails one of the two.)
#[test]
fn idle_flows_expire_in_real_time() {
    let vpc = vpc(CONFIG);
    let compiled = sg_agent::compile::compile(&vpc);
    let tables = &compiled.instances[0].tables;
    let (me, peer) = (ip("10.0.0.1"), ip("198.51.100.9"));
    for (timeout_ms, idle_ms, alive) in [(3_000, 100, true), (200, 600, false)] {
        let mut dp = sg_agent::dataplane::Dataplane::load().expect("load");
        let settings = sg_common::policy::Settings {
            tcp_syn_ns: timeout_ms * 1_000_000,
            ..compiled.settings
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

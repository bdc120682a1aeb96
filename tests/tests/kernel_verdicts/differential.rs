//! Differential testing at scale: random policies (network ACLs among
//! them) x random packets through the loaded programs
//! (`BPF_PROG_TEST_RUN`, XDP inbound and TC outbound), each verdict
//! compared with the reference evaluator's.
//!
//! Packets come in every shape the parser must see through (VLAN and `QinQ`
//! tags, IPv4 options, IPv6 extension chains, first and later fragments,
//! ICMP errors) and in shapes it must refuse (truncated, bad IHL: always
//! dropped). Every packet is judged as a new flow (all timeouts zero), so
//! the verdict is the rules' and the checks' alone. The number of packets
//! is `SG_DIFFERENTIAL_PACKETS` (20,000 by default; `cargo xtask test
//! --long` sets 1,000,000); the seed of a failing policy is printed.

use std::{
    collections::HashSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use sg_agent::{
    config::Direction,
    dataplane::Dataplane,
    policy::{
        compile::compile,
        reference::{L4, Packet, evaluate},
    },
};
use sg_tests::{
    frames::{Shape, Transport, frame},
    kernel::{tc_passes, vpc, xdp_passes},
};

/// xorshift64*: deterministic, so a seed reproduces a case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).expect("small")]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const ME4: &str = "10.0.0.1";
const ME6: &str = "2001:db8::1";

fn v4(r: &mut Rng) -> Ipv4Addr {
    let a = *r.pick(&[0u8, 0, 1, 2, 3]);
    Ipv4Addr::new(
        10,
        a,
        *r.pick(&[0u8, 0, 1]),
        1 + u8::try_from(r.below(8)).expect("small"),
    )
}

fn v6(r: &mut Rng) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        u16::try_from(r.below(4)).expect("small"),
        0,
        0,
        0,
        0,
        1 + u16::try_from(r.below(8)).expect("small"),
    )
}

fn cidr(r: &mut Rng) -> String {
    if r.chance(70) {
        let len = *r.pick(&[0u8, 8, 16, 23, 24, 30, 32]);
        let net = ipnet::Ipv4Net::new(v4(r), len).expect("length").trunc();
        format!("cidr_blocks = [\"{net}\"]")
    } else {
        let len = *r.pick(&[0u8, 32, 48, 64, 126, 128]);
        let net = ipnet::Ipv6Net::new(v6(r), len).expect("length").trunc();
        format!("ipv6_cidr_blocks = [\"{net}\"]")
    }
}

const PORTS: [u16; 8] = [22, 53, 80, 443, 1024, 3306, 5000, 65535];

/// One rule table: protocol, ports, one or two sources.
fn rule(r: &mut Rng, groups: usize, out: &mut String, direction: &str) {
    let _ = writeln!(out, "  [[security_group.{direction}]]");
    match r.below(6) {
        0 => out.push_str("  protocol = \"all\"\n"),
        1 | 2 => {
            let (a, b) = (*r.pick(&PORTS), *r.pick(&PORTS));
            let _ = writeln!(
                out,
                "  protocol = \"{}\"\n  from_port = {}\n  to_port = {}",
                r.pick(&["tcp", "udp"]),
                a.min(b),
                a.max(b)
            );
        }
        3 => {
            let ty = *r.pick(&[-1i32, 0, 3, 8, 11]);
            let _ = writeln!(
                out,
                "  protocol = \"icmp\"\n  from_port = {ty}\n  to_port = {}",
                if ty == -1 {
                    -1
                } else {
                    *r.pick(&[-1i32, 0, 4])
                }
            );
        }
        4 => {
            let ty = *r.pick(&[-1i32, 1, 128, 129]);
            let _ = writeln!(
                out,
                "  protocol = \"icmpv6\"\n  from_port = {ty}\n  to_port = -1"
            );
        }
        5 if r.chance(50) => out.push_str("  protocol = \"51\"\n"),
        _ => out.push_str("  protocol = \"gre\"\n"),
    }
    match r.below(5) {
        0 => {
            let _ = writeln!(out, "  security_groups = [\"g{}\"]", r.below(groups as u64));
        }
        1 => out.push_str("  self = true\n"),
        _ => {
            let c = cidr(r);
            let _ = writeln!(out, "  {c}");
        }
    }
}

/// One network ACL entry: a random protocol, ports and range, allow or
/// deny.
fn acl_entry(r: &mut Rng, out: &mut String, direction: &str, rule_no: u64) {
    let _ = writeln!(
        out,
        "  [[network_acl.{direction}]]\n  rule_no = {rule_no}\n  action = \"{}\"",
        r.pick(&["allow", "deny"])
    );
    match r.below(6) {
        0 => out.push_str("  protocol = \"all\"\n"),
        1 | 2 => {
            let (a, b) = (*r.pick(&PORTS), *r.pick(&PORTS));
            let _ = writeln!(
                out,
                "  protocol = \"{}\"\n  from_port = {}\n  to_port = {}",
                r.pick(&["tcp", "udp"]),
                a.min(b),
                a.max(b)
            );
        }
        3 => {
            let ty = *r.pick(&[-1i32, 0, 3, 8]);
            let _ = writeln!(out, "  protocol = \"icmp\"\n  icmp_type = {ty}");
        }
        4 => out.push_str("  protocol = \"icmpv6\"\n  icmp_type = 128\n  icmp_code = -1\n"),
        _ => out.push_str("  protocol = \"gre\"\n"),
    }
    let c = cidr(r)
        .replace("ipv6_cidr_blocks = [", "ipv6_cidr_block = ")
        .replace("cidr_blocks = [", "cidr_block = ")
        .replace(']', "");
    let _ = writeln!(out, "  {c}");
}

/// Half the time: "me"'s subnet (`10.0.0.0/24`, `2001:db8::/64`), and a
/// network ACL of a few random entries in random order (or none: the
/// `*` rule alone).
fn network_acl(r: &mut Rng, out: &mut String) {
    if r.chance(50) {
        return;
    }
    out.push_str(
        "[[subnet]]\nname = \"mine\"\ncidr_block = \"10.0.0.0/24\"\nipv6_cidr_block = \"2001:db8::/64\"\n\n[[network_acl]]\nname = \"acl\"\nsubnets = [\"mine\"]\n",
    );
    for direction in ["ingress", "egress"] {
        let mut numbers: Vec<u64> = (0..r.below(7)).map(|_| 1 + r.below(300)).collect();
        numbers.sort_unstable();
        numbers.dedup();
        // Written out of order: the rule number orders them.
        numbers.reverse();
        for n in numbers {
            acl_entry(r, out, direction, n);
        }
    }
}

/// A random rules file: a few groups, "me" enforced, two members, and
/// now and then a network ACL on "me"'s subnet.
fn policy(r: &mut Rng) -> String {
    let groups = 1 + usize::try_from(r.below(3)).expect("small");
    let mut out = String::new();
    network_acl(r, &mut out);
    for g in 0..groups {
        let _ = writeln!(out, "[[security_group]]\nname = \"g{g}\"");
        // Egress: AWS's default (no key), none at all, or rules.
        let egress = if r.chance(40) { None } else { Some(r.below(4)) };
        if egress == Some(0) {
            out.push_str("egress = []\n");
        }
        // A rule the group already has is refused, as AWS refuses it
        // (`InvalidPermission.Duplicate`): drawn again instead.
        let mut seen = HashSet::new();
        let mut add = |r: &mut Rng, out: &mut String, direction: &str| {
            let mut one = String::new();
            rule(r, groups, &mut one, direction);
            let own = format!("  security_groups = [\"g{g}\"]\n");
            let one = one.replace(&own, "  self = true\n");
            if seen.insert(one.clone()) {
                out.push_str(&one);
            }
        };
        for _ in 0..r.below(5) {
            add(r, &mut out, "ingress");
        }
        for _ in 0..egress.unwrap_or(0) {
            add(r, &mut out, "egress");
        }
    }
    let member_groups = |r: &mut Rng| {
        let mut gs: Vec<String> = (0..groups)
            .filter(|_| r.chance(50))
            .map(|g| format!("\"g{g}\""))
            .collect();
        if gs.is_empty() {
            gs.push("\"g0\"".to_owned());
        }
        gs.join(", ")
    };
    let mine = member_groups(r);
    let _ = writeln!(
        out,
        "[[instance]]\nname = \"me\"\naddresses = [\"{ME4}\", \"{ME6}\"]\nsecurity_groups = [{mine}]\ninterface = \"eth0\"\nsource_dest_check = {}",
        r.chance(80)
    );
    let mut taken: HashSet<IpAddr> = [ME4, ME6].iter().map(|a| a.parse().unwrap()).collect();
    for m in 0..2 {
        let gs = member_groups(r);
        let (a, b) = (v4(r), v6(r));
        if !taken.insert(IpAddr::V4(a)) || !taken.insert(IpAddr::V6(b)) {
            continue;
        }
        let _ = writeln!(
            out,
            "[[instance]]\nname = \"m{m}\"\naddresses = [\"{a}\", \"{b}\"]\nsecurity_groups = [{gs}]"
        );
    }
    out
}

struct Sample {
    direction: Direction,
    src: IpAddr,
    dst: IpAddr,
    transport: Transport,
    shape: Shape,
    /// The parser must refuse it (truncated, bad IHL).
    malformed: bool,
}

fn transport(r: &mut Rng, v6: bool) -> Transport {
    match r.below(5) {
        0 | 1 => Transport::Tcp {
            sport: *r.pick(&PORTS),
            dport: *r.pick(&PORTS),
            // Flags do not change a new flow's verdict (no AWS service
            // address is in the universe here).
            flags: *r.pick(&[0x02u8, 0x10, 0x12, 0x04, 0x11]),
        },
        2 => Transport::Udp {
            sport: *r.pick(&PORTS),
            dport: *r.pick(&PORTS),
        },
        3 => Transport::Icmp {
            ty: if v6 {
                *r.pick(&[1u8, 128, 129, 3])
            } else {
                *r.pick(&[0u8, 3, 8, 11])
            },
            code: *r.pick(&[0u8, 1, 4]),
            rest: [0, 7, 0, 1],
        },
        _ => Transport::Raw {
            proto: 47,
            bytes: vec![0; 8],
        },
    }
}

fn sample(r: &mut Rng, first_fragments: &HashSet<(IpAddr, IpAddr, u8)>) -> Sample {
    let v6 = r.chance(35);
    let direction = if r.chance(50) {
        Direction::Ingress
    } else {
        Direction::Egress
    };
    let me: IpAddr = if v6 {
        ME6.parse().unwrap()
    } else {
        ME4.parse().unwrap()
    };
    // Mostly the instance's own address at its end; now and then another's
    // (the source/destination check).
    let local = if r.chance(90) {
        me
    } else if v6 {
        IpAddr::V6(self::v6(r))
    } else {
        IpAddr::V4(v4(r))
    };
    let remote = if v6 {
        IpAddr::V6(self::v6(r))
    } else {
        IpAddr::V4(v4(r))
    };
    let (src, dst) = match direction {
        Direction::Ingress => (remote, local),
        Direction::Egress => (local, remote),
    };
    let transport = transport(r, v6);
    let mut shape = Shape {
        vlans: usize::try_from(*r.pick(&[0u64, 0, 0, 1, 2])).expect("small"),
        ..Shape::default()
    };
    if v6 {
        if r.chance(30) {
            for _ in 0..=r.below(3) {
                shape.ipv6_ext.push(*r.pick(&[0u8, 43, 60, 51]));
            }
        }
    } else if r.chance(20) {
        shape.ipv4_options = usize::try_from(*r.pick(&[4u64, 8, 40])).expect("small");
    }
    let proto = transport.proto(v6);
    if r.chance(10) {
        let later = r.chance(50);
        let key = (src, dst, proto);
        if !later || !first_fragments.contains(&key) {
            shape.fragment = Some(if later { (8, false) } else { (0, true) });
            if v6 {
                shape.ipv6_ext.push(44);
            }
        }
    }
    let mut malformed = false;
    // Malformed frames go inbound only (the same parser judges both ways):
    // BPF_PROG_TEST_RUN refuses to build an skb around a cut IP header.
    if direction == Direction::Ingress && r.chance(10) {
        malformed = true;
        if !v6 && r.chance(50) {
            shape.ihl = Some(*r.pick(&[0u8, 1, 4]));
        } else {
            // Cut inside the network or transport header.
            let full = frame(src, dst, &transport, &shape).len();
            let header_end = 14 + 4 * shape.vlans + if v6 { 40 } else { 20 };
            shape.truncate = Some(
                14 + 4 * shape.vlans
                    + usize::try_from(r.below((header_end - 14 - 4 * shape.vlans) as u64))
                        .expect("small")
                        .min(full),
            );
        }
    }
    Sample {
        direction,
        src,
        dst,
        transport,
        shape,
        malformed,
    }
}

fn expected(vpc: &sg_agent::config::Vpc, s: &Sample) -> bool {
    let later = matches!(s.shape.fragment, Some((o, _)) if o > 0);
    let l4 = crate::l4_of(&s.transport, later);
    let packet = Packet {
        src: s.src,
        dst: s.dst,
        proto: s.transport.proto(s.src.is_ipv6()),
        l4,
        later_fragment: later,
        via_ah: s.shape.ipv6_ext.contains(&51),
        // The frames come from and go to no services' MAC address (and
        // the data plane is given none).
        service_place: false,
    };
    let me = vpc.instance("me").expect("me");
    evaluate(vpc, me, s.direction, &packet, false).passes()
}

#[test]
fn random_policies_and_packets_agree_with_the_reference() {
    let packets: u64 = std::env::var("SG_DIFFERENTIAL_PACKETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let per_policy = 2_000;
    let (mut judged, mut passed, mut malformed) = (0u64, 0u64, 0u64);
    let mut failures = Vec::new();
    for p in 0..packets.div_ceil(per_policy) {
        let seed = 0x5eed_0000 + p;
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let text = policy(&mut r);
        let vpc = vpc(&text);
        let compiled = compile(&vpc);
        let inst = compiled
            .instances
            .iter()
            .find(|i| i.name == "me")
            .expect("me");
        let mut dp = Dataplane::load().expect("load");
        // Every packet a new flow: no entry is ever live.
        let settings = sg_common::policy::Settings {
            tcp_syn_ns: 0,
            tcp_established_ns: 0,
            tcp_closing_ns: 0,
            tcp_closed_ns: 0,
            udp_ns: 0,
            udp_stream_ns: 0,
            icmp_ns: 0,
            other_ns: 0,
            fragment_ns: 0,
            ..inst.settings
        };
        dp.publish(&inst.tables, settings).expect("publish");
        let mut first_fragments = HashSet::new();
        for _ in 0..per_policy.min(packets - judged) {
            let s = sample(&mut r, &first_fragments);
            let bytes = frame(s.src, s.dst, &s.transport, &s.shape);
            let got = match s.direction {
                Direction::Ingress => xdp_passes(&dp, &bytes),
                Direction::Egress => tc_passes(&dp, &bytes),
            };
            let want = !s.malformed && expected(&vpc, &s);
            if matches!(s.shape.fragment, Some((0, true))) && got {
                first_fragments.insert((s.src, s.dst, s.transport.proto(s.src.is_ipv6())));
            }
            judged += 1;
            passed += u64::from(got);
            malformed += u64::from(s.malformed);
            if got != want && failures.len() < 20 {
                failures.push(format!(
                    "seed {seed}: {:?} {} -> {} {:?} {:?}: kernel {got}, reference {want}\npolicy:\n{text}",
                    s.direction, s.src, s.dst, s.transport, s.shape
                ));
            }
        }
    }
    eprintln!(
        "differential: {judged} packets over {} policies, {passed} passed, {malformed} malformed, {} disagreements",
        packets.div_ceil(per_policy),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(
        passed > judged / 20 && passed < judged - judged / 20,
        "both verdicts are exercised"
    );
}

/// IPv6's Authentication Header: walked over to the protocol it carries,
/// and judged as protocol 51 too when a rule names it (AWS).
#[test]
fn ipv6_ah_is_its_own_protocol_when_a_rule_names_it() {
    let text = r#"
[[security_group]]
name = "ipsec"
  [[security_group.ingress]]
  protocol = "51"
  ipv6_cidr_blocks = ["2001:db8:9::/48"]
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 22
  to_port = 22
  ipv6_cidr_blocks = ["::/0"]

[[instance]]
name = "me"
addresses = ["2001:db8::1"]
security_groups = ["ipsec"]
"#;
    let vpc = vpc(text);
    let dp = sg_tests::kernel::dataplane_for(&vpc, "me");
    let tcp = |dport| Transport::Tcp {
        sport: 40000,
        dport,
        flags: 0x02,
    };
    let with_ah = Shape {
        ipv6_ext: vec![51],
        ..Shape::default()
    };
    let (peer, other, me) = (
        "2001:db8:9::5".parse().unwrap(),
        "2001:db8:7::5".parse().unwrap(),
        ME6.parse().unwrap(),
    );
    let cases = [
        (
            peer,
            tcp(443),
            &with_ah,
            true,
            "AH from the IPsec peer: the AH rule",
        ),
        (
            peer,
            tcp(443),
            &Shape::default(),
            false,
            "no AH: tcp/443 has no rule",
        ),
        (other, tcp(443), &with_ah, false, "AH from elsewhere"),
        (
            other,
            tcp(22),
            &with_ah,
            true,
            "walked over: tcp/22 from anywhere",
        ),
    ];
    for (i, (src, t, shape, want, what)) in cases.into_iter().enumerate() {
        // A flow of its own each (the first is tracked once allowed).
        let sport = 40000 + u16::try_from(i).expect("small");
        let t = match t {
            Transport::Tcp { dport, flags, .. } => Transport::Tcp {
                sport,
                dport,
                flags,
            },
            other => other,
        };
        let got = xdp_passes(&dp, &frame(src, me, &t, shape));
        let packet = Packet {
            src,
            dst: me,
            proto: 6,
            l4: L4::Ports {
                src: sport,
                dst: match t {
                    Transport::Tcp { dport, .. } => dport,
                    _ => unreachable!(),
                },
            },
            later_fragment: false,
            via_ah: shape.ipv6_ext.contains(&51),
            service_place: false,
        };
        let oracle = evaluate(
            &vpc,
            vpc.instance("me").unwrap(),
            Direction::Ingress,
            &packet,
            false,
        )
        .passes();
        assert_eq!((got, oracle), (want, want), "{what}");
    }
}

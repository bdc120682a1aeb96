//! The compiled policy, written by the production reload path
//! (`policy::encode::publish`) into in-memory maps and looked up by the same
//! `classify` the kernel runs, agrees with the reference evaluator on random
//! configs and packets (whether they pass, and whether their flow goes
//! untracked), after swaps between policies and after a restart
//! that adopts the maps as it finds them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use proptest::prelude::*;
use sg_agent::{
    config::{
        Direction, Instance, Ports, PrefixList, Protocol, Rule, SecurityGroup, Source, SourceRef,
        Vpc,
    },
    policy::{
        compile::{PolicyTables, compile},
        encode::{PolicyEncoder, publish},
        reference::{self, L4, Packet, evaluate},
        softmaps::SoftMaps,
    },
};
use sg_common::{
    flow::{FAMILY_V4, FAMILY_V6, FRAG_LATER, FRAG_NONE, Flow, addr_from_octets},
    policy::{
        AddrKeyV4, AddrKeyV6, AddrValue, PolicyMaps, PortKey, PortValue, allowing_class,
        aws_service, classify, own_address, service_own_address, untracked,
    },
};

/// The same maps without their shortcuts (the own addresses and whole-space
/// entries each generation's array slot repeats): every lookup goes to the
/// tries, as for a generation whose slot is not valid or lists too little.
/// Both must agree with the reference.
struct TriesOnly<'a>(&'a SoftMaps);

impl PolicyMaps for TriesOnly<'_> {
    fn addr_v4(&self, key: &AddrKeyV4) -> Option<AddrValue> {
        self.0.addr_v4(key)
    }
    fn addr_v6(&self, key: &AddrKeyV6) -> Option<AddrValue> {
        self.0.addr_v6(key)
    }
    fn whole_space(&self, family: u8, tag: [u8; 4]) -> Option<AddrValue> {
        self.0.whole_space(family, tag)
    }
    fn port_exact(&self, key: &PortKey) -> Option<PortValue> {
        self.0.port_exact(key)
    }
    fn ports(&self, key: &PortKey) -> Option<PortValue> {
        self.0.ports(key)
    }
}

/// A small address universe so that random prefixes and packets meet.
fn v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, i & 3, (i >> 2) & 1, i >> 3)
}
fn v6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        u16::from(i & 3),
        0,
        0,
        0,
        0,
        u16::from(i >> 2),
    )
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        3 => (0u8..32).prop_map(|i| IpAddr::V4(v4(i))),
        1 => (0u8..16).prop_map(|i| IpAddr::V6(v6(i))),
    ]
}

/// An instance's addresses: one or two, and now and then more than the
/// shortcuts list (8 IPv4, 4 IPv6), so those are checked in the tries.
fn instance_addresses() -> impl Strategy<Value = Vec<IpAddr>> {
    prop_oneof![
        3 => prop::collection::vec(addr(), 1..3),
        1 => prop::collection::vec(addr(), 5..12),
    ]
}

/// A packet's address: now and then an AWS service's (the VPC's DNS is
/// 10.0.0.2 or 10.1.0.2 when `[vpc]` names those ranges).
fn packet_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        12 => addr(),
        1 => prop::sample::select(vec![
            "169.254.169.253", "169.254.169.254", "169.254.169.123", "fd00:ec2::253",
            "fd00:ec2::254", "fd00:ec2::123", "10.0.0.2", "10.1.0.2", "10.2.0.2",
        ])
        .prop_map(|a| a.parse().unwrap()),
    ]
}

fn cidr() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (
            0u8..32,
            prop::sample::select(vec![0u8, 8, 15, 16, 23, 24, 30, 32])
        )
            .prop_map(|(i, len)| IpNet::new(IpAddr::V4(v4(i)), len).unwrap().trunc()),
        (
            0u8..16,
            prop::sample::select(vec![0u8, 32, 48, 64, 127, 128])
        )
            .prop_map(|(i, len)| IpNet::new(IpAddr::V6(v6(i)), len).unwrap().trunc()),
    ]
}

const PORTS: [u16; 14] = [
    0, 1, 22, 53, 67, 68, 80, 123, 443, 546, 547, 1024, 3306, 65535,
];

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![prop::sample::select(PORTS.to_vec()), any::<u16>()]
}

fn protocol_and_ports() -> impl Strategy<Value = (Protocol, Ports)> {
    prop_oneof![
        Just((Protocol::All, Ports::All)),
        (prop::sample::select(vec![6u8, 17]), port(), port()).prop_map(|(p, a, b)| (
            Protocol::Number(p),
            Ports::Range {
                from: a.min(b),
                to: a.max(b)
            }
        )),
        (
            prop::sample::select(vec![1u8, 58]),
            prop::option::of(0u8..12),
            prop::option::of(0u8..3)
        )
            .prop_map(|(p, ty, code)| (
                Protocol::Number(p),
                Ports::Icmp {
                    ty,
                    code: ty.and(code)
                }
            )),
        Just((Protocol::Number(47), Ports::All)),
    ]
}

fn source(groups: usize) -> impl Strategy<Value = Source> {
    prop_oneof![
        4 => cidr().prop_map(Source::Cidr),
        2 => (0..groups).prop_map(|g| Source::Group(format!("g{g}"))),
        1 => Just(Source::SelfGroup),
        1 => Just(Source::PrefixList("pl".to_owned())),
    ]
}

fn rule(groups: usize) -> impl Strategy<Value = Rule> {
    (
        protocol_and_ports(),
        prop::collection::vec(source(groups), 1..4),
    )
        .prop_map(|((protocol, ports), sources)| Rule {
            id: None,
            protocol,
            ports,
            sources: sources
                .into_iter()
                .map(|source| SourceRef { source, span: 0..0 })
                .collect(),
            description: None,
            tags: Vec::new(),
            implicit: false,
            span: 0..0,
        })
}

/// VPCs `a` and `b`, peered (`way` 0), joined by a transit gateway that
/// carries group references (1), or neither.
fn two_vpcs_joined(vpc: &mut Vpc, way: u8) {
    for name in ["a", "b"] {
        vpc.vpcs.push(sg_agent::config::VpcDecl {
            name: name.to_owned(),
            cidr_blocks: Vec::new(),
            region: None,
            account: None,
            span: 0..0,
        });
    }
    match way {
        0 => vpc.peerings.push(("a".to_owned(), "b".to_owned())),
        1 => vpc.transit_gateways.push(sg_agent::config::TransitGateway {
            name: "tgw".to_owned(),
            referencing: true,
            attachments: vec![("a".to_owned(), true), ("b".to_owned(), true)],
            span: 0..0,
        }),
        _ => {}
    }
}

/// The prefix list `pl` the generated rules may reference.
fn the_prefix_list(entries: Vec<ipnet::IpNet>) -> PrefixList {
    PrefixList {
        max_entries: None,
        id: None,
        description: None,
        tags: Vec::new(),
        version: None,
        ipv6: None,
        name: "pl".to_owned(),
        entries,
        entry_descriptions: std::collections::BTreeMap::new(),
        span: 0..0,
    }
}

/// AWS's default egress rule: all traffic to both whole address spaces.
fn default_egress() -> Vec<Rule> {
    vec![Rule {
        id: None,
        protocol: Protocol::All,
        ports: Ports::All,
        sources: ["0.0.0.0/0", "::/0"]
            .iter()
            .map(|s| SourceRef {
                source: Source::Cidr(s.parse().unwrap()),
                span: 0..0,
            })
            .collect(),
        description: None,
        tags: Vec::new(),
        implicit: true,
        span: 0..0,
    }]
}

fn vpc() -> impl Strategy<Value = Vpc> {
    (1usize..4).prop_flat_map(|n_groups| {
        let groups = prop::collection::vec(
            (
                prop::collection::vec(rule(n_groups), 0..4),
                prop::option::of(prop::collection::vec(rule(n_groups), 0..3)),
            ),
            n_groups,
        );
        let instances = prop::collection::vec(
            (
                instance_addresses(),
                prop::collection::btree_set(0..n_groups, 1..=n_groups),
            ),
            1..4,
        );
        let prefix_list = prop::collection::vec(cidr(), 0..4);
        let vpc_blocks = prop::sample::subsequence(vec!["10.0.0.0/16", "10.1.0.0/24"], 0..=2);
        // Now and then a service AWS tracks every connection through (an
        // NLB), at random prefixes: its flows are never untracked.
        let tracked =
            prop::collection::vec(cidr().prop_filter("not /0", |n| n.prefix_len() > 0), 0..3);
        // Now and then the last group is in a second VPC, peered, joined
        // by a transit gateway that carries group references (inbound
        // rules only), or neither: references to it from the others are
        // stale without a way, and in outbound rules across the gateway.
        let vpcs = (prop::bool::weighted(0.3), 0..3u8);
        (groups, instances, prefix_list, vpc_blocks, tracked, vpcs).prop_map(
            move |(groups, instances, pl, blocks, tracked, (two_vpcs, way))| {
                let mut vpc = Vpc {
                    cidr_blocks: blocks.iter().map(|b| b.parse().unwrap()).collect(),
                    ..Vpc::default()
                };
                if two_vpcs {
                    two_vpcs_joined(&mut vpc, way);
                }
                if !tracked.is_empty() {
                    vpc.tracked_services.push(sg_agent::config::TrackedService {
                        name: "nlb".to_owned(),
                        kind: sg_agent::config::ServiceKind::NetworkLoadBalancer,
                        addresses: tracked,
                        tcp_idle_timeout: 350,
                        span: 0..0,
                    });
                }
                vpc.prefix_lists.push(the_prefix_list(pl));
                for (i, (ingress, egress)) in groups.into_iter().enumerate() {
                    let egress = egress.unwrap_or_else(default_egress);
                    vpc.groups.push(SecurityGroup {
                        id: None,
                        name: format!("g{i}"),
                        description: None,
                        ingress,
                        egress,
                        vpc: (two_vpcs && i + 1 == n_groups).then(|| "b".to_owned()),
                        associated_vpcs: Vec::new(),
                        tags: Vec::new(),
                        span: 0..0,
                    });
                }
                for (i, (addresses, groups)) in instances.into_iter().enumerate() {
                    // The third instance also holds a delegated /28 around its
                    // first IPv4 address (AWS's prefix delegation).
                    let prefixes = addresses
                        .iter()
                        .find_map(|a| match a {
                            std::net::IpAddr::V4(v4) if i == 2 => Some(ipnet::IpNet::V4(
                                ipnet::Ipv4Net::new(*v4, 28).unwrap().trunc(),
                            )),
                            _ => None,
                        })
                        .into_iter()
                        .collect();
                    vpc.instances.push(Instance {
                        node: None,
                        id: None,
                        tags: Vec::new(),
                        name: format!("i{i}"),
                        addresses,
                        addresses_from_libvirt: false,
                        prefixes,
                        groups: groups
                            .into_iter()
                            .map(|g| (format!("g{g}"), 0..0))
                            .collect(),
                        link: None,
                        mac: None,
                        netns: None,
                        source_dest_check: i != 1,
                        conntrack: sg_agent::config::ConntrackOverrides::default(),
                        instance_type: None,
                        nitro_version: None,
                        vpc: None,
                        subnet: None,
                        span: 0..0,
                    });
                }
                vpc
            },
        )
    })
}

fn packet() -> impl Strategy<Value = Packet> {
    (
        packet_addr(),
        packet_addr(),
        prop::sample::select(vec![1u8, 6, 17, 58, 47, 132]),
        port(),
        port(),
        0u8..12,
        0u8..3,
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(src, dst, proto, sport, dport, ty, code, later_fragment)| {
                let l4 = if later_fragment {
                    L4::None
                } else {
                    match proto {
                        6 | 17 => L4::Ports {
                            src: sport,
                            dst: dport,
                        },
                        1 | 58 => L4::Icmp { ty, code },
                        _ => L4::None,
                    }
                };
                Packet {
                    src,
                    dst,
                    proto,
                    l4,
                    later_fragment,
                    via_ah: false,
                    service_place: true,
                }
            },
        )
}

fn to_flow(p: &Packet) -> Option<Flow> {
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(a) => addr_from_octets(&a.octets()),
        IpAddr::V6(a) => addr_from_octets(&a.octets()),
    };
    let family = match (p.src, p.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => FAMILY_V4,
        (IpAddr::V6(_), IpAddr::V6(_)) => FAMILY_V6,
        _ => return None,
    };
    let mut flow = Flow {
        family,
        proto: p.proto,
        frag: if p.later_fragment {
            FRAG_LATER
        } else {
            FRAG_NONE
        },
        src: bytes(p.src),
        dst: bytes(p.dst),
        ..Flow::default()
    };
    match p.l4 {
        L4::Ports { src, dst } => (flow.sport, flow.dport) = (src, dst),
        L4::Icmp { ty, code } => (flow.icmp_type, flow.icmp_code) = (ty, code),
        L4::None => {}
    }
    Some(flow)
}

/// Publishes `tables` through the production reload path; returns the
/// generation in force.
fn swap_to(encoder: &mut PolicyEncoder, maps: &mut SoftMaps, tables: &PolicyTables) -> u8 {
    let settings =
        sg_agent::policy::compile::settings(&sg_agent::config::ConntrackSettings::default());
    publish(encoder, maps, tables, settings).expect("fits the maps");
    u8::try_from(maps.settings().generation).expect("0 or 1")
}

/// A new flow's verdict as the data plane reaches it (the services' place
/// taken as given): traffic with an AWS service by its own check, the
/// rest by the rules and the source/destination check.
fn judged(
    maps: &SoftMaps,
    generation: u8,
    direction: u8,
    flow: &sg_common::flow::Flow,
    mac: Option<[u8; 6]>,
) -> bool {
    if aws_service(maps, generation, direction, flow) != sg_common::policy::EXEMPT_NONE {
        return service_own_address(maps, generation, direction, flow, mac);
    }
    own_address(maps, generation, direction, flow, mac)
        && classify(maps, generation, direction, flow)
}

/// The main property's cases: 10,000 in the release run, a quarter of that
/// in the debug one (unoptimised, it took 100 s of CI alone; both runs are
/// in `cargo xtask test`, so every commit still gets the 10,000).
const CASES: u32 = if cfg!(debug_assertions) {
    2_500
} else {
    10_000
};

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn compiled_lookup_agrees_with_reference(
        vpc in vpc(),
        packets in prop::collection::vec(packet(), 8),
        swaps in 0usize..3,
    ) {
        let compiled = compile(&vpc);
        for (i, (inst, ci)) in vpc.instances.iter().zip(&compiled.instances).enumerate() {
            // As a reload does: other policies first (another instance's,
            // sharing some classes), then this one; every swap must leave
            // nothing of the policy it replaced.
            let mut maps = SoftMaps::default();
            let mut encoder = PolicyEncoder::default();
            for s in 0..swaps {
                let other = &compiled.instances[(i + s + 1) % compiled.instances.len()];
                swap_to(&mut encoder, &mut maps, &other.tables);
            }
            let generation = swap_to(&mut encoder, &mut maps, &ci.tables);
            prop_assert_eq!(
                maps.address_entries_of(1 - generation), 0,
                "the old generation's address entries are deleted"
            );
            for p in &packets {
                let Some(flow) = to_flow(p) else { continue };
                for direction in [Direction::Ingress, Direction::Egress] {
                    let want = evaluate(&vpc, inst, direction, p, false).passes();
                    let mac = reference::guest_mac(inst);
                    let own = own_address(&maps, generation, direction.code(), &flow, mac);
                    prop_assert_eq!(own, reference::source_dest_ok(inst, direction, p), "source/destination check: instance {} {:?} packet {:?}", inst.name, direction, p);
                    prop_assert_eq!(own_address(&TriesOnly(&maps), generation, direction.code(), &flow, mac), own, "source/destination check from the tries: instance {} {:?} packet {:?}", inst.name, direction, p);
                    let service_own = service_own_address(&maps, generation, direction.code(), &flow, mac);
                    prop_assert_eq!(service_own, reference::service_source_dest_ok(inst, direction, p), "source/destination check of a service: instance {} {:?} packet {:?}", inst.name, direction, p);
                    let service = aws_service(&maps, generation, direction.code(), &flow) != sg_common::policy::EXEMPT_NONE;
                    prop_assert_eq!(service, reference::aws_service(&vpc, direction, p).is_some(), "AWS service? instance {} {:?} packet {:?}", inst.name, direction, p);
                    let got = judged(&maps, generation, direction.code(), &flow, mac);
                    prop_assert_eq!(got, want, "instance {} {:?} packet {:?}", inst.name, direction, p);
                    // The data plane asks only about packets the rules allow.
                    if let Some(remote) = allowing_class(&maps, generation, direction.code(), &flow) {
                        let want = reference::untracked(&vpc, inst, direction, p);
                        let got = untracked(&maps, generation, direction.code(), &flow, remote);
                        prop_assert_eq!(got, want, "untracked? instance {} {:?} packet {:?}", inst.name, direction, p);
                        let got = untracked(&TriesOnly(&maps), generation, direction.code(), &flow, remote);
                        prop_assert_eq!(got, want, "untracked from the tries? instance {} {:?} packet {:?}", inst.name, direction, p);
                    }
                }
            }
            // A restart: a new agent adopts the maps as they are (it knows
            // them only by their entries) and publishes the same policy.
            let mut encoder = PolicyEncoder::adopt(Some(maps.settings()), &maps.entries());
            let generation = swap_to(&mut encoder, &mut maps, &ci.tables);
            prop_assert_eq!(maps.address_entries_of(1 - generation), 0, "after adoption too");
            for p in &packets {
                let Some(flow) = to_flow(p) else { continue };
                for direction in [Direction::Ingress, Direction::Egress] {
                    let want = evaluate(&vpc, inst, direction, p, false).passes();
                    let got = judged(&maps, generation, direction.code(), &flow, reference::guest_mac(inst));
                    prop_assert_eq!(got, want, "adopted: instance {} {:?} packet {:?}", inst.name, direction, p);
                    // The data plane asks only about packets the rules allow.
                    if let Some(remote) = allowing_class(&maps, generation, direction.code(), &flow) {
                        let want = reference::untracked(&vpc, inst, direction, p);
                        let got = untracked(&maps, generation, direction.code(), &flow, remote);
                        prop_assert_eq!(got, want, "adopted, untracked? instance {} {:?} packet {:?}", inst.name, direction, p);
                    }
                }
            }
            // Swapping to an empty policy leaves no port entry behind.
            swap_to(&mut encoder, &mut maps, &PolicyTables::default());
            prop_assert_eq!(maps.port_entries(), 0, "classes nothing refers to are deleted");
        }
    }
}

#[test]
fn broader_prefix_rules_reach_narrower_entries() {
    // The pitfall from the brief: 10.0.0.0/8 tcp/22 plus 10.1.0.0/16 tcp/80
    // must still allow 10.1.2.3 on port 22.
    let text = r#"
[[security_group]]
name = "g"
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 22
  to_port = 22
  cidr_blocks = ["10.0.0.0/8"]
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_blocks = ["10.1.0.0/16"]
[[instance]]
name = "i"
addresses = ["10.9.9.9"]
security_groups = ["g"]
"#;
    let vpc = sg_agent::config::from_str("t.toml".as_ref(), text).unwrap();
    let compiled = compile(&vpc);
    let mut maps = SoftMaps::default();
    let mut encoder = PolicyEncoder::default();
    let generation = swap_to(&mut encoder, &mut maps, &compiled.instances[0].tables);
    assert_eq!(generation, 0);
    let mut flow = Flow {
        family: FAMILY_V4,
        proto: 6,
        dport: 22,
        ..Flow::default()
    };
    flow.src = addr_from_octets(&[10, 1, 2, 3]);
    assert!(
        classify(&maps, 0, 0, &flow),
        "10.1.2.3 -> tcp/22 must pass (10.0.0.0/8 rule)"
    );
    flow.dport = 80;
    assert!(
        classify(&maps, 0, 0, &flow),
        "10.1.2.3 -> tcp/80 must pass (10.1.0.0/16 rule)"
    );
    flow.src = addr_from_octets(&[10, 2, 2, 3]);
    assert!(
        !classify(&maps, 0, 0, &flow),
        "10.2.2.3 -> tcp/80 must not pass"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Per-rule hit counters name the rules that allow a flow
    /// (`reference::allowing_rules`): some rule exactly when the compiled
    /// lookup the kernel runs finds an allowing class, and first the very
    /// rule the evaluator names.
    #[test]
    fn rule_attribution_agrees_with_the_lookup_and_the_evaluator(
        vpc in vpc(),
        packets in prop::collection::vec(packet(), 8),
    ) {
        let compiled = compile(&vpc);
        for (inst, ci) in vpc.instances.iter().zip(&compiled.instances) {
            let mut maps = SoftMaps::default();
            let mut encoder = PolicyEncoder::default();
            let generation = swap_to(&mut encoder, &mut maps, &ci.tables);
            for p in packets.iter().filter(|p| !p.later_fragment) {
                let Some(flow) = to_flow(p) else { continue };
                for direction in [Direction::Ingress, Direction::Egress] {
                    let rules = reference::allowing_rules(&vpc, inst, direction, p);
                    let class = allowing_class(&maps, generation, direction.code(), &flow);
                    prop_assert_eq!(
                        !rules.is_empty(), class.is_some(),
                        "instance {} {:?} packet {:?}: rules {:?}", inst.name, direction, p, rules
                    );
                    if let reference::Decision::Allowed(first) =
                        evaluate(&vpc, inst, direction, p, false)
                    {
                        prop_assert_eq!(rules.first(), Some(&first));
                    }
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// `sg-agent explain` gives the evaluator's verdict for the flow it
    /// explains.
    #[test]
    fn explain_agrees_with_the_evaluator(vpc in vpc(), packets in prop::collection::vec(packet(), 4)) {
        use sg_agent::policy::explain::{Query, Remote, explain};
        for inst in &vpc.instances {
            for p in packets.iter().filter(|p| !p.later_fragment) {
                for direction in [Direction::Ingress, Direction::Egress] {
                    let remote = match direction {
                        Direction::Ingress => p.src,
                        Direction::Egress => p.dst,
                    };
                    let (port, icmp) = match p.l4 {
                        L4::Ports { dst, .. } => (dst, (0, 0)),
                        L4::Icmp { ty, code } => (0, (ty, code)),
                        L4::None => (0, (0, 0)),
                    };
                    let query = Query {
                        to: inst.name.clone(),
                        remote: Remote::Address(remote),
                        direction,
                        protocol: p.proto,
                        port,
                        icmp,
                    };
                    // An instance without an address of the family: nothing to explain.
                    let Ok(e) = explain(&vpc, &query) else { continue };
                    // The packet explain judges: an ephemeral source port.
                    let l4 = match p.proto {
                        6 | 17 => L4::Ports { src: 49_152, dst: port },
                        1 | 58 => L4::Icmp { ty: icmp.0, code: icmp.1 },
                        _ => L4::None,
                    };
                    let judged = Packet { src: e.src, dst: e.dst, proto: p.proto, l4, later_fragment: false, via_ah: false, service_place: false };
                    let want = evaluate(&vpc, inst, direction, &judged, false).passes();
                    prop_assert_eq!(e.allowed, want, "instance {} {:?} {:?}", inst.name, direction, judged);
                }
            }
        }
    }
}

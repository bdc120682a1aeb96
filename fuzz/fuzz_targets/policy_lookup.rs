//! The policy lookup the kernel runs (`sg_common::policy`: classify, the
//! source/destination check, AWS services, untracked flows), over maps
//! filled through the agent's own reload path, against the reference
//! evaluator, on policies and packets the fuzzer builds from its input.
#![no_main]

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sg_agent::{
    config::{self, Direction},
    policy::{
        compile::compile,
        encode::{PolicyEncoder, publish},
        reference::{self, L4, Packet, evaluate},
        softmaps::SoftMaps,
    },
};
use sg_common::{
    flow::{FAMILY_V4, FAMILY_V6, FRAG_LATER, FRAG_NONE, Flow, addr_from_octets},
    policy::{allowing_class, aws_service, classify, own_address, service_own_address, untracked},
};

fn v4(u: &mut Unstructured) -> Result<Ipv4Addr> {
    Ok(Ipv4Addr::new(
        10,
        u.int_in_range(0..=3)?,
        u.int_in_range(0..=1)?,
        u.int_in_range(1..=8)?,
    ))
}

fn v6(u: &mut Unstructured) -> Result<Ipv6Addr> {
    Ok(Ipv6Addr::new(
        0x2001,
        0xdb8,
        u.int_in_range(0..=3)?,
        0,
        0,
        0,
        0,
        u.int_in_range(1..=8)?,
    ))
}

const PORTS: [u16; 10] = [0, 22, 53, 67, 68, 80, 123, 443, 5000, 65535];

/// One rule of group `g`, unless the group's rules so far (`seen`, each as
/// its protocol, ports and source) already have it: AWS refuses a duplicate
/// (`InvalidPermission.Duplicate`), and so does `check`.
fn rule(
    u: &mut Unstructured,
    (g, groups): (u8, u8),
    seen: &mut HashSet<String>,
    file: &mut String,
    dir: &str,
) -> Result<()> {
    let mut body = String::new();
    let out = &mut body;
    match u.int_in_range(0..=4)? {
        0 => out.push_str("  protocol = \"all\"\n"),
        1 => {
            let (a, b) = (*u.choose(&PORTS)?, *u.choose(&PORTS)?);
            let p = *u.choose(&["tcp", "udp"])?;
            out.push_str(&format!(
                "  protocol = \"{p}\"\n  from_port = {}\n  to_port = {}\n",
                a.min(b),
                a.max(b)
            ));
        }
        2 => out.push_str(&format!(
            "  protocol = \"icmp\"\n  from_port = {}\n  to_port = -1\n",
            *u.choose(&[-1i32, 0, 3, 8])?
        )),
        3 => out.push_str(&format!(
            "  protocol = \"icmpv6\"\n  from_port = {}\n  to_port = -1\n",
            *u.choose(&[-1i32, 1, 128])?
        )),
        _ => out.push_str(if u.arbitrary()? {
            "  protocol = \"gre\"\n"
        } else {
            "  protocol = \"51\"\n"
        }),
    }
    match u.int_in_range(0..=3)? {
        0 => out.push_str(&format!(
            "  security_groups = [\"g{}\"]\n",
            u.int_in_range(0..=groups - 1)?
        )),
        1 => out.push_str("  self = true\n"),
        2 => {
            let len = *u.choose(&[0u8, 8, 16, 24, 32])?;
            let net = ipnet::Ipv4Net::new(v4(u)?, len).expect("length").trunc();
            out.push_str(&format!("  cidr_blocks = [\"{net}\"]\n"));
        }
        _ => {
            let len = *u.choose(&[0u8, 32, 64, 128])?;
            let net = ipnet::Ipv6Net::new(v6(u)?, len).expect("length").trunc();
            out.push_str(&format!("  ipv6_cidr_blocks = [\"{net}\"]\n"));
        }
    }
    // `self` and the group's own name are one source.
    let key = body.replace(
        "  self = true\n",
        &format!("  security_groups = [\"g{g}\"]\n"),
    );
    if seen.insert(format!("{dir}\n{key}")) {
        file.push_str(&format!("  [[security_group.{dir}]]\n{body}"));
    }
    Ok(())
}

fn rules_file(u: &mut Unstructured) -> Result<String> {
    let groups: u8 = u.int_in_range(1..=3)?;
    let mut out = String::new();
    if u.arbitrary()? {
        out.push_str("[vpc]\ncidr_blocks = [\"10.0.0.0/16\"]\n");
    }
    for g in 0..groups {
        out.push_str(&format!("[[security_group]]\nname = \"g{g}\"\n"));
        let egress: Option<u8> = if u.arbitrary()? {
            None
        } else {
            Some(u.int_in_range(0..=3)?)
        };
        if egress == Some(0) {
            out.push_str("egress = []\n");
        }
        let mut seen = HashSet::new();
        for _ in 0..u.int_in_range(0..=4)? {
            rule(u, (g, groups), &mut seen, &mut out, "ingress")?;
        }
        for _ in 0..egress.unwrap_or(0) {
            rule(u, (g, groups), &mut seen, &mut out, "egress")?;
        }
    }
    out.push_str(&format!(
        "[[instance]]\nname = \"me\"\naddresses = [\"10.0.0.1\", \"2001:db8::1\"]\nsecurity_groups = [\"g0\"]\ninterface = \"eth0\"\nsource_dest_check = {}\n",
        u.arbitrary::<bool>()?
    ));
    let (a, b) = (v4(u)?, v6(u)?);
    if a != Ipv4Addr::new(10, 0, 0, 1) && b != "2001:db8::1".parse::<Ipv6Addr>().expect("constant")
    {
        out.push_str(&format!(
            "[[instance]]\nname = \"m\"\naddresses = [\"{a}\", \"{b}\"]\nsecurity_groups = [\"g{}\"]\n",
            u.int_in_range(0..=groups - 1)?
        ));
    }
    Ok(out)
}

fn packet(u: &mut Unstructured) -> Result<Packet> {
    let ipv6 = u.arbitrary::<bool>()?;
    let addr = |u: &mut Unstructured| -> Result<IpAddr> {
        Ok(match (ipv6, u.int_in_range(0..=5)?) {
            (false, 0) => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            (false, 1) => IpAddr::V4(*u.choose(&[
                Ipv4Addr::new(10, 0, 0, 2),
                Ipv4Addr::new(169, 254, 169, 253),
                Ipv4Addr::new(169, 254, 169, 254),
                Ipv4Addr::new(169, 254, 169, 123),
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
            ])?),
            (false, _) => IpAddr::V4(v4(u)?),
            (true, 0) => IpAddr::V6("2001:db8::1".parse().expect("constant")),
            (true, 1) => IpAddr::V6(*u.choose(&[
                "fd00:ec2::253".parse().expect("constant"),
                "fe80::1".parse().expect("constant"),
                "ff02::1:2".parse().expect("constant"),
            ])?),
            (true, _) => IpAddr::V6(v6(u)?),
        })
    };
    let (src, dst) = (addr(u)?, addr(u)?);
    let proto = *u.choose(&[6u8, 17, 1, 58, 47])?;
    let later_fragment = u.ratio(1, 8)?;
    let via_ah = ipv6 && u.ratio(1, 8)?;
    let l4 = if later_fragment {
        L4::None
    } else {
        match proto {
            6 | 17 => L4::Ports {
                src: *u.choose(&PORTS)?,
                dst: *u.choose(&PORTS)?,
            },
            1 | 58 => L4::Icmp {
                ty: u.int_in_range(0..=12)?,
                code: u.int_in_range(0..=3)?,
            },
            _ => L4::None,
        }
    };
    Ok(Packet {
        src,
        dst,
        proto,
        l4,
        later_fragment,
        via_ah,
        // As if from (to) where the services are: the lookup below decides
        // by addresses and ports, the frame's MAC addresses aside.
        service_place: true,
    })
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
        ipv6_ah: u8::from(p.via_ah),
        ..Flow::default()
    };
    match p.l4 {
        L4::Ports { src, dst } => (flow.sport, flow.dport) = (src, dst),
        L4::Icmp { ty, code } => (flow.icmp_type, flow.icmp_code) = (ty, code),
        L4::None => {}
    }
    Some(flow)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(text) = rules_file(&mut u) else { return };
    let vpc = config::from_str("fuzz.toml".as_ref(), &text).expect("generated files are valid");
    let compiled = compile(&vpc);
    let inst = vpc.instance("me").expect("me");
    let ci = compiled
        .instances
        .iter()
        .find(|i| i.name == "me")
        .expect("me");
    let mut maps = SoftMaps::default();
    let mut encoder = PolicyEncoder::default();
    publish(&mut encoder, &mut maps, &ci.tables, ci.settings).expect("fits");
    let generation = u8::try_from(maps.settings().generation).expect("0 or 1");
    while let Ok(p) = packet(&mut u) {
        let Some(flow) = to_flow(&p) else { continue };
        for direction in [Direction::Ingress, Direction::Egress] {
            let d = direction.code();
            let want = evaluate(&vpc, inst, direction, &p, false).passes();
            let mac = reference::guest_mac(inst);
            let got = if aws_service(&maps, generation, d, &flow) != sg_common::policy::EXEMPT_NONE
            {
                service_own_address(&maps, generation, d, &flow, mac)
            } else {
                own_address(&maps, generation, d, &flow, mac)
                    && classify(&maps, generation, d, &flow)
            };
            assert_eq!(got, want, "{direction:?} {p:?}\n{text}");
            if let Some(remote) = allowing_class(&maps, generation, d, &flow) {
                assert_eq!(
                    untracked(&maps, generation, d, &flow, remote),
                    reference::untracked(&vpc, inst, direction, &p),
                    "untracked? {direction:?} {p:?}\n{text}"
                );
            }
        }
        if u.is_empty() {
            break;
        }
    }
});

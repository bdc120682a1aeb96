//! The reference evaluator: AWS's semantics in the plainest Rust there is.
//! It loops over every group, rule and source; it is slow on purpose and is
//! the oracle the compiled policy and the kernel are tested against.

use std::net::IpAddr;

use crate::config::{Direction, Instance, Ports, Protocol, Source, Vpc};

/// What the transport header says, as far as rules care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// A protocol without ports, or a later fragment.
    None,
    Ports {
        src: u16,
        dst: u16,
    },
    Icmp {
        ty: u8,
        code: u8,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub l4: L4,
    /// A fragment other than the first: it carries no transport header.
    pub later_fragment: bool,
}

/// Which rule allowed a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub group: String,
    pub direction: Direction,
    /// 1-based among the group's rules of that direction.
    pub rule_number: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Part of a tracked connection: passes whatever the rules say.
    Tracked,
    Allowed(RuleRef),
    Denied,
}

impl Decision {
    pub fn passes(&self) -> bool {
        !matches!(self, Self::Denied)
    }
}

/// Whether `instance` lets `packet` pass in `direction`, and why.
pub fn evaluate(
    vpc: &Vpc,
    instance: &Instance,
    direction: Direction,
    packet: &Packet,
    tracked: bool,
) -> Decision {
    if tracked {
        return Decision::Tracked;
    }
    let remote = match direction {
        Direction::Ingress => packet.src,
        Direction::Egress => packet.dst,
    };
    // For a later fragment: the port intervals of every rule that matches
    // address and protocol; the fragment passes if together they cover all.
    let mut fragment_cover: Vec<(u16, u16)> = Vec::new();
    for (group_name, _) in &instance.groups {
        let Some(group) = vpc.group(group_name) else {
            continue;
        };
        let rules = match direction {
            Direction::Ingress => &group.ingress,
            Direction::Egress => &group.egress,
        };
        for (i, rule) in rules.iter().enumerate() {
            if !rule.protocol.matches(packet.proto) {
                continue;
            }
            if !rule
                .sources
                .iter()
                .any(|s| source_contains(vpc, &group.name, &s.source, remote))
            {
                continue;
            }
            let found = RuleRef {
                group: group.name.clone(),
                direction,
                rule_number: i + 1,
            };
            if packet.later_fragment {
                if rule.protocol == Protocol::All || rule.ports == Ports::All {
                    return Decision::Allowed(found);
                }
                fragment_cover.push(rule.ports.port_interval());
                if covers_everything(&mut fragment_cover) {
                    return Decision::Allowed(found);
                }
            } else if ports_match(rule.protocol, rule.ports, packet) {
                return Decision::Allowed(found);
            }
        }
    }
    Decision::Denied
}

fn source_contains(vpc: &Vpc, own_group: &str, source: &Source, addr: IpAddr) -> bool {
    let member_of = |group: &str| {
        vpc.instances
            .iter()
            .any(|i| i.in_group(group) && i.addresses.contains(&addr))
    };
    match source {
        Source::Cidr(net) => net.contains(&addr),
        Source::PrefixList(name) => vpc
            .prefix_list(name)
            .is_some_and(|p| p.entries.iter().any(|net| net.contains(&addr))),
        Source::Group(name) => member_of(name),
        Source::SelfGroup => member_of(own_group),
    }
}

fn ports_match(protocol: Protocol, ports: Ports, packet: &Packet) -> bool {
    match (protocol, ports, packet.l4) {
        (Protocol::All, _, _) | (_, Ports::All, _) => true,
        (_, Ports::Range { from, to }, L4::Ports { dst, .. }) => (from..=to).contains(&dst),
        (_, Ports::Icmp { ty, code }, L4::Icmp { ty: t, code: c }) => {
            ty.is_none_or(|ty| ty == t) && code.is_none_or(|code| code == c)
        }
        _ => false,
    }
}

fn covers_everything(intervals: &mut [(u16, u16)]) -> bool {
    intervals.sort_unstable();
    let mut next: u32 = 0;
    for &(lo, hi) in intervals.iter() {
        if u32::from(lo) > next {
            return false;
        }
        next = next.max(u32::from(hi) + 1);
    }
    next > u32::from(u16::MAX)
}

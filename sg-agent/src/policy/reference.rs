//! The reference evaluator: AWS's semantics in the plainest Rust there is.
//! It loops over every group, rule and source; it is slow on purpose and is
//! the oracle the compiled policy and the kernel are tested against.

use std::net::IpAddr;

use crate::config::{Direction, Instance, Ports, Protocol, Rule, SecurityGroup, Source, Vpc};

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
    /// An IPv6 packet with an Authentication Header in its extension
    /// chain: a rule for protocol 51 (AH) allows it, whatever it carries.
    pub via_ah: bool,
    /// The frame comes from (goes to) the MAC address the AWS services
    /// answer from (or, for a DHCP request, is broadcast): only then is
    /// traffic with them exempt from the rules.
    pub service_place: bool,
}

/// Which rule allowed a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRef {
    pub group: String,
    pub direction: Direction,
    /// 1-based among the group's rules of that direction.
    pub rule_number: usize,
}

/// Which network ACL entry decided a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclRef {
    /// The network ACL's name.
    pub acl: String,
    pub direction: Direction,
    /// The entry's rule number; `None`: the `*` rule (no entry matched).
    pub rule_no: Option<u16>,
}

impl std::fmt::Display for AclRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let way = match self.direction {
            Direction::Ingress => "inbound",
            Direction::Egress => "outbound",
        };
        match self.rule_no {
            Some(n) => write!(f, "network ACL {}, {way} rule {n}", self.acl),
            None => write!(
                f,
                "network ACL {}, {way} rule * (no rule matched)",
                self.acl
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Part of a tracked connection: passes whatever the rules say.
    Tracked,
    Allowed(RuleRef),
    /// Traffic with an AWS service security groups never filter (named).
    Service(&'static str),
    Denied,
    /// The subnet's network ACL denied it (whatever the group says).
    DeniedByNetworkAcl(AclRef),
}

impl Decision {
    pub fn passes(&self) -> bool {
        !matches!(self, Self::Denied | Self::DeniedByNetworkAcl(_))
    }
}

/// What the network ACL of `instance`'s subnet says of `packet` in
/// `direction`: `None` when none judges it (no network ACL, AWS's default
/// allowing everything, or traffic that does not cross the subnet's
/// boundary: its remote end in the subnet, or link-local); else the entry
/// that decided and whether it allows. First match in rule-number order;
/// none: the `*` rule denies. Stateless: answers are judged like any packet.
pub fn network_acl(
    vpc: &Vpc,
    instance: &Instance,
    direction: Direction,
    packet: &Packet,
) -> Option<(AclRef, bool)> {
    let (subnet, acl) = vpc.network_acl_for(instance)?;
    let remote = remote_of(direction, packet);
    let link_local = match remote {
        IpAddr::V4(a) => a.is_link_local() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_unicast_link_local(),
    };
    if link_local || subnet.contains(remote) {
        return None;
    }
    let found = |rule_no| AclRef {
        acl: acl.name.clone(),
        direction,
        rule_no,
    };
    for e in acl.entries(direction) {
        let every_port = e.protocol == Protocol::All || e.ports.port_interval() == (0, u16::MAX);
        let port_ok =
            every_port || (!packet.later_fragment && ports_match(e.protocol, e.ports, packet));
        if e.cidr.contains(&remote) && e.protocol.matches(packet.proto) && port_ok {
            return Some((found(Some(e.rule_no)), e.allow));
        }
    }
    Some((found(None), false))
}

/// The network ACL's deny of `packet`, if it denies it.
fn acl_denies(
    vpc: &Vpc,
    instance: &Instance,
    direction: Direction,
    packet: &Packet,
) -> Option<Decision> {
    match network_acl(vpc, instance, direction, packet) {
        Some((at, false)) => Some(Decision::DeniedByNetworkAcl(at)),
        _ => None,
    }
}

/// Every rule of `instance`'s groups in `direction`, in the order the file
/// gives them: (group, 1-based number among the group's rules of that
/// direction, rule). The one walk the evaluator, rule attribution and
/// `explain` share.
pub fn rules_of<'a>(
    vpc: &'a Vpc,
    instance: &'a Instance,
    direction: Direction,
) -> impl Iterator<Item = (&'a SecurityGroup, usize, &'a Rule)> + 'a {
    instance
        .groups
        .iter()
        .filter_map(move |(name, _)| vpc.group(name))
        .flat_map(move |group| {
            let rules = match direction {
                Direction::Ingress => &group.ingress,
                Direction::Egress => &group.egress,
            };
            rules
                .iter()
                .enumerate()
                .map(move |(i, r)| (group, i + 1, r))
        })
}

/// The far end of `packet` for an instance judging it in `direction`.
pub fn remote_of(direction: Direction, packet: &Packet) -> IpAddr {
    match direction {
        Direction::Ingress => packet.src,
        Direction::Egress => packet.dst,
    }
}

/// Whether `rule` of `group` covers `packet`'s protocol (or, for an IPv6
/// packet with an Authentication Header, names AH) and its far end.
fn protocol_and_source(
    vpc: &Vpc,
    group: &SecurityGroup,
    (direction, rule): (Direction, &Rule),
    packet: &Packet,
    remote: IpAddr,
) -> bool {
    let by_ah = packet.via_ah && rule.protocol == Protocol::Number(51);
    (rule.protocol.matches(packet.proto) || by_ah)
        && rule
            .sources
            .iter()
            .any(|s| source_contains(vpc, (&group.name, direction), &s.source, remote))
}

/// Whether `instance` lets `packet` pass in `direction`, and why.
pub fn evaluate(
    vpc: &Vpc,
    instance: &Instance,
    direction: Direction,
    packet: &Packet,
    tracked: bool,
) -> Decision {
    if let Some(service) = aws_service(vpc, direction, packet).filter(|_| !tracked) {
        if service_source_dest_ok(instance, direction, packet) {
            return Decision::Service(service);
        }
        return Decision::Denied;
    }
    // Inbound the subnet's network ACL judges first; it tracks nothing, so
    // it judges a tracked connection's packets too.
    if (tracked || direction == Direction::Ingress)
        && let Some(deny) = acl_denies(vpc, instance, direction, packet)
    {
        return deny;
    }
    if tracked {
        return Decision::Tracked;
    }
    let by_group = by_group(vpc, instance, direction, packet);
    // Outbound it judges what the group let out.
    if direction == Direction::Egress
        && by_group.passes()
        && let Some(deny) = acl_denies(vpc, instance, direction, packet)
    {
        return deny;
    }
    by_group
}

/// The security groups' verdict alone (`evaluate` past the services and
/// the network ACL's inbound check).
fn by_group(vpc: &Vpc, instance: &Instance, direction: Direction, packet: &Packet) -> Decision {
    if !source_dest_ok(instance, direction, packet) {
        return Decision::Denied;
    }
    let remote = remote_of(direction, packet);
    // For a later fragment: the port intervals of every rule that matches
    // address and protocol; the fragment passes if together they cover all.
    let mut fragment_cover: Vec<(u16, u16)> = Vec::new();
    for (group, number, rule) in rules_of(vpc, instance, direction) {
        if !protocol_and_source(vpc, group, (direction, rule), packet, remote) {
            continue;
        }
        let found = RuleRef {
            group: group.name.clone(),
            direction,
            rule_number: number,
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
    Decision::Denied
}

/// Every rule of `instance`'s groups that allows `packet` (not a later
/// fragment) in `direction` on its own, in the order `evaluate` tries them:
/// its first is the rule `evaluate` names. Per-rule hit counters count a
/// flow under each, since removing any one of them alone keeps it allowed
/// only if another remains.
pub fn allowing_rules(
    vpc: &Vpc,
    instance: &Instance,
    direction: Direction,
    packet: &Packet,
) -> Vec<RuleRef> {
    let remote = remote_of(direction, packet);
    rules_of(vpc, instance, direction)
        .filter(|(group, _, rule)| {
            protocol_and_source(vpc, group, (direction, rule), packet, remote)
                && ports_match(rule.protocol, rule.ports, packet)
        })
        .map(|(group, number, _)| RuleRef {
            group: group.name.clone(),
            direction,
            rule_number: number,
        })
        .collect()
}

/// Which AWS service, if any, `packet` is traffic with, as AWS lists what
/// security groups never filter ("Amazon DNS, DHCP, EC2 instance metadata,
/// ECS task metadata endpoints, Windows license activation, Amazon Time
/// Sync Service, Reserved IP addresses used by the default VPC router",
/// and link-local addresses): DHCP (server port 67, client port 68) and
/// `DHCPv6` (547, 546), from the server's port to the client's or back;
/// any packet whose remote end is one of `Vpc::aws_services` (the data
/// plane also refuses an inbound SYN from one, since services answer;
/// packets here carry no TCP flags). Only from (to) the services' place
/// (`packet.service_place`): on EC2 only the Nitro host answers there, so
/// anyone else is judged by the rules.
pub fn aws_service(vpc: &Vpc, direction: Direction, packet: &Packet) -> Option<&'static str> {
    use sg_common::flow::proto::UDP;
    if packet.later_fragment || !packet.service_place {
        return None;
    }
    let remote = remote_of(direction, packet);
    if let (UDP, L4::Ports { src, dst }) = (packet.proto, packet.l4) {
        let (remote_port, local_port) = match direction {
            Direction::Ingress => (src, dst),
            Direction::Egress => (dst, src),
        };
        let dhcp = match remote {
            IpAddr::V4(_) => (remote_port, local_port) == (67, 68),
            IpAddr::V6(_) => (remote_port, local_port) == (547, 546),
        };
        if dhcp {
            return Some("DHCP");
        }
    }
    vpc.aws_service_at(remote)
}

/// AWS's source/destination check, on by default: an instance receives
/// only what is addressed to one of its addresses and sends only from one.
/// Exempt: an IPv6 link-local address at the instance's own end (neighbour
/// and router discovery, listener reports, `DHCPv6`), and `::` as the
/// source of what it sends. Never because of the *other* end. On the host
/// side with a MAC address given, a link-local source must be the one that
/// MAC address gives (EUI-64) or one the instance lists.
pub fn source_dest_ok(instance: &Instance, direction: Direction, packet: &Packet) -> bool {
    if !instance.source_dest_check {
        return true;
    }
    let local = match direction {
        Direction::Ingress => packet.dst,
        Direction::Egress => packet.src,
    };
    if let IpAddr::V6(l) = local {
        if direction == Direction::Egress && l.is_unspecified() {
            return true;
        }
        if l.is_unicast_link_local() {
            return match (direction, guest_mac(instance)) {
                (Direction::Egress, Some(mac)) => {
                    let eui64 =
                        sg_common::flow::addr_octets(&sg_common::guard::eui64_link_local(mac));
                    l.octets() == eui64 || instance.owns(local)
                }
                _ => true,
            };
        }
    }
    instance.owns(local)
}

/// The MAC address the host side holds `instance` to, where the rules file
/// gives it (a learned one is the data plane's to know).
pub fn guest_mac(instance: &Instance) -> Option<[u8; 6]> {
    instance
        .link
        .as_ref()
        .is_some_and(crate::config::Link::host_side)
        .then_some(instance.mac)
        .flatten()
        .map(|m| m.0)
}

/// [`source_dest_ok`] for traffic with an AWS service: DHCP's exchange
/// runs before the instance has its address, so a client's request from
/// `0.0.0.0` and the server's answer (to the address it offers) pass too.
pub fn service_source_dest_ok(instance: &Instance, direction: Direction, packet: &Packet) -> bool {
    if let (
        IpAddr::V4(src),
        sg_common::flow::proto::UDP,
        L4::Ports {
            src: sport,
            dst: dport,
        },
    ) = (packet.src, packet.proto, packet.l4)
    {
        let dhcp = match direction {
            Direction::Ingress => (sport, dport) == (67, 68),
            Direction::Egress => (sport, dport) == (68, 67) && src.is_unspecified(),
        };
        if dhcp {
            return true;
        }
    }
    source_dest_ok(instance, direction, packet)
}

/// Whether a new flow that `direction`'s rules allow goes untracked, in
/// AWS's words ("Security group connection tracking"): "If a security group
/// rule permits TCP or UDP flows for all traffic (`0.0.0.0/0` or `::/0`) and
/// there is a corresponding rule in the other direction that permits all
/// response traffic (`0.0.0.0/0` or `::/0`) for all ports (0-65535), then that
/// flow of traffic is not tracked." ICMP and other protocols always are.
///
/// A packet that answers such a flow of the other direction is untracked
/// too: reversed, it would be that flow.
///
/// A flow whose remote end is a service AWS tracks every connection
/// through (`[[aws_service]]`) is tracked whatever the rules say ("unless
/// it is part of an automatically tracked connection").
pub fn untracked(vpc: &Vpc, instance: &Instance, direction: Direction, packet: &Packet) -> bool {
    if vpc.tracked_service(remote_of(direction, packet)).is_some() {
        return false;
    }
    let reversed = Packet {
        src: packet.dst,
        dst: packet.src,
        l4: match packet.l4 {
            L4::Ports { src, dst } => L4::Ports { src: dst, dst: src },
            other => other,
        },
        ..*packet
    };
    untracked_flow(vpc, instance, direction, packet)
        || untracked_flow(vpc, instance, direction.other(), &reversed)
}

fn untracked_flow(vpc: &Vpc, instance: &Instance, direction: Direction, packet: &Packet) -> bool {
    use sg_common::flow::proto::{TCP, UDP};
    if !matches!(packet.proto, TCP | UDP) || packet.later_fragment {
        return false;
    }
    let v6 = packet.src.is_ipv6();
    let rules_of = |d: Direction| {
        instance
            .groups
            .iter()
            .filter_map(|(g, _)| vpc.group(g))
            .flat_map(move |g| match d {
                Direction::Ingress => g.ingress.iter(),
                Direction::Egress => g.egress.iter(),
            })
    };
    let whole_space = |rule: &crate::config::Rule| {
        rule.sources
            .iter()
            .any(|s| is_whole_space(vpc, &s.source, v6))
    };
    let allowed_by_whole_space = rules_of(direction).any(|rule| {
        rule.protocol.matches(packet.proto)
            && whole_space(rule)
            && ports_match(rule.protocol, rule.ports, packet)
    });
    let other_way_open = rules_of(direction.other()).any(|rule| {
        whole_space(rule)
            && (rule.protocol == Protocol::All
                || (rule.protocol.matches(packet.proto)
                    && rule.ports.port_interval() == (0, u16::MAX)))
    });
    allowed_by_whole_space && other_way_open
}

/// Which protocols each direction of one instance opens on every port to
/// the whole address space, per family: what makes the other direction's
/// whole-space rules untracked. Computed once per instance, so that `check`
/// stays linear in the number of rules.
pub struct OpenWays {
    /// [direction][IPv6][UDP]: ingress 0, egress 1; IPv4 0, IPv6 1; TCP 0, UDP 1.
    open: [[[bool; 2]; 2]; 2],
}

impl OpenWays {
    pub fn of(vpc: &Vpc, instance: &Instance) -> Self {
        use sg_common::flow::proto::{TCP, UDP};
        let mut open = [[[false; 2]; 2]; 2];
        for (d, direction) in [Direction::Ingress, Direction::Egress]
            .into_iter()
            .enumerate()
        {
            for group in instance.groups.iter().filter_map(|(g, _)| vpc.group(g)) {
                let rules = match direction {
                    Direction::Ingress => &group.ingress,
                    Direction::Egress => &group.egress,
                };
                for rule in rules {
                    for (f, v6) in [false, true].into_iter().enumerate() {
                        if !rule
                            .sources
                            .iter()
                            .any(|s| is_whole_space(vpc, &s.source, v6))
                        {
                            continue;
                        }
                        for (p, proto) in [TCP, UDP].into_iter().enumerate() {
                            open[d][f][p] |= rule.protocol == Protocol::All
                                || (rule.protocol.matches(proto)
                                    && rule.ports.port_interval() == (0, u16::MAX));
                        }
                    }
                }
            }
        }
        Self { open }
    }

    /// The flows of one rule of `direction` (for one of its sources) that
    /// go untracked, as "tcp/IPv4", "udp/IPv6"...: empty when all it
    /// allows is tracked. What `sg-agent check` shows per rule.
    pub fn untracked_kinds(
        &self,
        vpc: &Vpc,
        direction: Direction,
        rule: &crate::config::Rule,
        source: &Source,
    ) -> Vec<&'static str> {
        use sg_common::flow::proto::{TCP, UDP};
        let other = match direction {
            Direction::Ingress => 1,
            Direction::Egress => 0,
        };
        let names = [["tcp/IPv4", "udp/IPv4"], ["tcp/IPv6", "udp/IPv6"]];
        let mut out = Vec::new();
        for (f, v6) in [false, true].into_iter().enumerate() {
            if !is_whole_space(vpc, source, v6) {
                continue;
            }
            for (p, proto) in [TCP, UDP].into_iter().enumerate() {
                if rule.protocol.matches(proto) && self.open[other][f][p] {
                    out.push(names[f][p]);
                }
            }
        }
        out
    }
}

/// A source that is the whole address space of one family: `0.0.0.0/0` or
/// `::/0`, written as a CIDR block or as an entry of a prefix list.
fn is_whole_space(vpc: &Vpc, source: &Source, v6: bool) -> bool {
    let whole = |net: &ipnet::IpNet| net.prefix_len() == 0 && net.addr().is_ipv6() == v6;
    match source {
        Source::Cidr(net) => whole(net),
        Source::PrefixList(name) => vpc
            .prefix_list(name)
            .is_some_and(|p| p.entries.iter().any(whole)),
        Source::Group(_) | Source::SelfGroup => false,
    }
}

/// Whether `addr` is in `source`, a source of a `direction` rule of group
/// `own_group`.
pub(crate) fn source_contains(
    vpc: &Vpc,
    (own_group, direction): (&str, Direction),
    source: &Source,
    addr: IpAddr,
) -> bool {
    let member_of = |group: &str| {
        vpc.instances
            .iter()
            .any(|i| i.in_group(group) && i.owns(addr))
    };
    match source {
        Source::Cidr(net) => net.contains(&addr),
        Source::PrefixList(name) => vpc
            .prefix_list(name)
            .is_some_and(|p| p.entries.iter().any(|net| net.contains(&addr))),
        Source::Group(name) => {
            vpc.stale_reference(own_group, name, direction).is_none() && member_of(name)
        }
        Source::SelfGroup => member_of(own_group),
    }
}

pub(crate) fn ports_match(protocol: Protocol, ports: Ports, packet: &Packet) -> bool {
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

//! `sg-agent explain` and `sg-agent matrix`: the reference evaluator's
//! answer for one flow, with the rules behind it, offline.
//!
//! The verdict is the evaluator's own (`reference::evaluate` with the same
//! source/destination check, AWS services and rules), so it agrees with the
//! kernel wherever the kernel agrees with the evaluator, which the property
//! and kernel tests hold it to. What this module adds is the *why*: every
//! rule that allows the flow and whether it is tracked, or, for a refusal,
//! the rules that came closest and what they lack.

use std::{fmt::Write as _, net::IpAddr};

use serde::Serialize;

use crate::config::{Direction, Instance, Link, Protocol, Rule, SecurityGroup, Source, Vpc};

use super::reference::{self, L4, Packet};

/// The other end of the flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    Address(IpAddr),
    /// Another instance of the file: its first address of the family, and
    /// its own rules the other way are judged too.
    Instance(String),
}

/// One flow to explain, from the point of view of instance `to`.
#[derive(Clone, Debug)]
pub struct Query {
    pub to: String,
    pub remote: Remote,
    /// `Ingress`: the remote end opens the flow to `to`; `Egress`: `to`
    /// opens it to the remote end.
    pub direction: Direction,
    pub protocol: u8,
    /// TCP/UDP destination port, or ICMP (type, code).
    pub port: u16,
    pub icmp: (u8, u8),
}

/// How one instance's security groups judge the flow, in one direction.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub instance: String,
    pub direction: Direction,
    pub allowed: bool,
    /// `rules`, `aws service NAME`, `not its own address`, `no rule`.
    pub because: String,
    /// Rules that allow it (each on its own), as `check` numbers them.
    pub rules: Vec<String>,
    /// Whether the flow gets a connection-table entry on this side.
    pub tracked: Option<bool>,
    /// The automatically tracked service the flow goes through, as "TYPE
    /// NAME" (`[[aws_service]]`): tracked whatever the rules say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracked_through: Option<String>,
    /// For a refusal: what the closest rules lack.
    pub hints: Vec<String>,
    /// The subnet's network ACL entries that judged the flow and its
    /// answers (stateless: both ways), e.g. "network ACL public, inbound
    /// rule 100: allow"; empty where no network ACL judges it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_acl: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub allowed: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// The destination port (TCP, UDP).
    pub port: Option<u16>,
    pub sides: Vec<Side>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("no instance named {0} in the file{1}")]
    NoInstance(String, String),
    #[error("instance {0} has no {1} address")]
    NoAddress(String, &'static str),
}

fn instance<'a>(vpc: &'a Vpc, name: &str) -> Result<&'a Instance, ExplainError> {
    vpc.instance(name).ok_or_else(|| {
        let hint = crate::config::diagnostics::did_you_mean(
            name,
            vpc.instances.iter().map(|i| i.name.as_str()),
        )
        .map_or_else(
            || {
                let names: Vec<&str> = vpc.instances.iter().map(|i| i.name.as_str()).collect();
                format!(" (it has: {})", names.join(", "))
            },
            |s| format!("; did you mean {s}?"),
        );
        ExplainError::NoInstance(name.to_owned(), hint)
    })
}

fn address_like(inst: &Instance, v6: bool) -> Result<IpAddr, ExplainError> {
    inst.addresses
        .iter()
        .copied()
        .find(|a| a.is_ipv6() == v6)
        .ok_or_else(|| ExplainError::NoAddress(inst.name.clone(), if v6 { "IPv6" } else { "IPv4" }))
}

fn describe(group: &SecurityGroup, number: usize, rule: &Rule, direction: Direction) -> String {
    let sources: Vec<String> = rule.sources.iter().map(|s| s.source.to_string()).collect();
    let way = match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    format!(
        "{} #{number}: {} {} {way} {}",
        group.name,
        rule.protocol,
        rule.ports,
        sources.join(", ")
    )
}

/// How `inst` judges `packet` in `direction`: its security groups, then its
/// subnet's network ACL, which judges the packet and, being stateless, each
/// of its answers on their own.
fn side(vpc: &Vpc, inst: &Instance, direction: Direction, packet: &Packet) -> Side {
    let mut side = group_side(vpc, inst, direction, packet);
    if side.because.starts_with("AWS service") {
        return side;
    }
    let answer = answer_to(packet);
    for (d, p, what) in [
        (direction, packet, ""),
        (direction.other(), &answer, " (its answers)"),
    ] {
        let Some((at, allow)) = reference::network_acl(vpc, inst, d, p) else {
            continue;
        };
        let verdict = if allow { "allow" } else { "deny" };
        side.network_acl.push(format!("{at}: {verdict}{what}"));
        // Inbound the network ACL judges first: its deny is the reason
        // even where no rule allows the flow either.
        let first = what.is_empty() && d == Direction::Ingress;
        if !allow && (side.allowed || first) {
            if first && !side.allowed {
                side.hints.clear();
            }
            side.allowed = false;
            side.because = if what.is_empty() {
                format!("denied by {at}")
            } else {
                let port = match p.l4 {
                    L4::Ports { dst, .. } => format!(" to port {dst}"),
                    _ => String::new(),
                };
                format!(
                    "its answers{port} are denied by {at}: network ACLs are stateless, so the \
                     other way must allow them too (the ephemeral ports, 1024-65535)"
                )
            };
        }
    }
    side
}

/// The first answer to `packet`: the ends and ports swapped, an echo
/// request's reply.
fn answer_to(packet: &Packet) -> Packet {
    let l4 = match packet.l4 {
        L4::Ports { src, dst } => L4::Ports { src: dst, dst: src },
        L4::Icmp { ty: 8, code } => L4::Icmp { ty: 0, code },
        L4::Icmp { ty: 128, code } => L4::Icmp { ty: 129, code },
        other => other,
    };
    Packet {
        src: packet.dst,
        dst: packet.src,
        l4,
        ..*packet
    }
}

/// How `inst`'s security groups judge `packet` in `direction`.
fn group_side(vpc: &Vpc, inst: &Instance, direction: Direction, packet: &Packet) -> Side {
    let mut side = Side {
        instance: inst.name.clone(),
        direction,
        allowed: false,
        because: String::new(),
        rules: Vec::new(),
        tracked: None,
        tracked_through: None,
        hints: Vec::new(),
        network_acl: Vec::new(),
    };
    let not_own = "not its own address (source/destination check)";
    // Traffic with an AWS service's address is taken to come from (go to)
    // where the services are, when the file says where that is (or the
    // instance is enforced on the host side, whose own address it is).
    let at_services = Packet {
        service_place: vpc.service_mac.is_some() || inst.link.as_ref().is_some_and(Link::host_side),
        ..*packet
    };
    if let Some(service) = reference::aws_service(vpc, direction, &at_services) {
        if !reference::service_source_dest_ok(inst, direction, packet) {
            side.because = not_own.into();
            return side;
        }
        side.allowed = true;
        side.because = format!(
            "AWS service ({service}): never filtered, from and to where the services answer"
        );
        return side;
    }
    if !reference::source_dest_ok(inst, direction, packet) {
        side.because = not_own.into();
        return side;
    }
    let allowing = reference::allowing_rules(vpc, inst, direction, packet);
    if !allowing.is_empty() {
        side.allowed = true;
        side.because = "rules".into();
        side.tracked = Some(!reference::untracked(vpc, inst, direction, packet));
        side.tracked_through = vpc
            .tracked_service(reference::remote_of(direction, packet))
            .map(|s| format!("{} {}", s.kind, s.name));
        for (group, number, rule) in reference::rules_of(vpc, inst, direction) {
            if allowing
                .iter()
                .any(|r| r.group == group.name && r.rule_number == number)
            {
                side.rules.push(describe(group, number, rule, direction));
            }
        }
        return side;
    }
    side.because = "no rule allows it".into();
    side.hints = near_misses(vpc, inst, direction, packet);
    if !at_services.service_place
        && let Some(service) = vpc.aws_service_at(reference::remote_of(direction, packet))
    {
        side.hints.push(format!(
            "{service} is never filtered from and to where the AWS services answer, which the \
             file does not say for this instance: set [vpc] service_mac"
        ));
    }
    side
}

/// The rules that match the flow in all but one respect, and that respect.
fn near_misses(vpc: &Vpc, inst: &Instance, direction: Direction, packet: &Packet) -> Vec<String> {
    let remote = reference::remote_of(direction, packet);
    let mut hints = Vec::new();
    let mut any_rule = false;
    for (group, number, rule) in reference::rules_of(vpc, inst, direction) {
        any_rule = true;
        let proto_ok = rule.protocol.matches(packet.proto);
        let ports_ok = proto_ok && reference::ports_match(rule.protocol, rule.ports, packet);
        let source_ok = rule
            .sources
            .iter()
            .any(|s| reference::source_contains(vpc, (&group.name, direction), &s.source, remote));
        let what = describe(group, number, rule, direction);
        if ports_ok && !source_ok {
            let not_in: Vec<String> = rule
                .sources
                .iter()
                .map(|s| match &s.source {
                    Source::Group(g) => format!("{remote} is not a member of group {g}"),
                    Source::SelfGroup => {
                        format!("{remote} is not a member of group {}", group.name)
                    }
                    other => format!("{remote} is not in {other}"),
                })
                .collect();
            hints.push(format!("{what}: {}", not_in.join("; ")));
        } else if source_ok && !ports_ok {
            hints.push(format!(
                "{what}: covers {remote}, not this protocol and port"
            ));
        }
    }
    if !any_rule {
        let way = match direction {
            Direction::Ingress => "inbound",
            Direction::Egress => "outbound",
        };
        hints.push(format!("its groups have no {way} rule at all"));
    } else if hints.is_empty() {
        hints.push("no rule covers this protocol and port, nor this address".into());
    }
    hints
}

/// Explains `query` against `vpc`.
pub fn explain(vpc: &Vpc, query: &Query) -> Result<Explanation, ExplainError> {
    let to = instance(vpc, &query.to)?;
    let (remote_addr, remote_inst) = match &query.remote {
        Remote::Address(a) => (*a, None),
        Remote::Instance(name) => {
            let other = instance(vpc, name)?;
            let v6 = to.addresses.first().is_some_and(IpAddr::is_ipv6);
            (address_like(other, v6)?, Some(other))
        }
    };
    let local = address_like(to, remote_addr.is_ipv6())?;
    let (src, dst) = match query.direction {
        Direction::Ingress => (remote_addr, local),
        Direction::Egress => (local, remote_addr),
    };
    let l4 = match query.protocol {
        6 | 17 => L4::Ports {
            src: 49_152,
            dst: query.port,
        },
        1 | 58 => L4::Icmp {
            ty: query.icmp.0,
            code: query.icmp.1,
        },
        _ => L4::None,
    };
    let packet = Packet {
        src,
        dst,
        proto: query.protocol,
        l4,
        later_fragment: false,
        via_ah: false,
        service_place: false,
    };
    let mut sides = vec![side(vpc, to, query.direction, &packet)];
    if let Some(other) = remote_inst {
        let opposite = match query.direction {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        };
        sides.push(side(vpc, other, opposite, &packet));
    }
    Ok(Explanation {
        allowed: sides.iter().all(|s| s.allowed),
        src,
        dst,
        protocol: query.protocol,
        port: matches!(query.protocol, 6 | 17).then_some(query.port),
        sides,
    })
}

fn way(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "inbound",
        Direction::Egress => "outbound",
    }
}

/// The human form of an explanation.
pub fn render(e: &Explanation) -> String {
    let port = e.port.map(|p| format!(" port {p}")).unwrap_or_default();
    let mut out = format!(
        "{}: {} {} -> {}{port}\n",
        if e.allowed { "ALLOWED" } else { "DENIED" },
        Protocol::Number(e.protocol),
        e.src,
        e.dst
    );
    let acl_judged = e.sides.iter().any(|s| !s.network_acl.is_empty());
    for s in &e.sides {
        let tracked = match (s.tracked, &s.tracked_through) {
            (Some(true), Some(through)) => format!(", automatically tracked (through {through})"),
            (Some(true), None) => ", tracked".to_owned(),
            (Some(false), _) => ", untracked (no connection-table entry)".to_owned(),
            (None, _) => String::new(),
        };
        let _ = writeln!(
            out,
            "  {} {}: {}{tracked}",
            s.instance,
            way(s.direction),
            if s.allowed { "allowed" } else { "denied" },
        );
        let _ = writeln!(out, "    because: {}", s.because);
        for r in &s.rules {
            let _ = writeln!(out, "    allowed by {r}");
        }
        for a in &s.network_acl {
            let _ = writeln!(out, "    {a}");
        }
        for h in &s.hints {
            let _ = writeln!(out, "    {h}");
        }
    }
    if acl_judged {
        out.push_str(
            "  (security groups and network ACLs only: routes, gateways and Block Public Access \
             are outside what explain judges)\n",
        );
    }
    out
}

/// `sg-agent matrix`: for every ordered pair of instances with addresses
/// and every port, whether a TCP connection from one to the other is
/// allowed (the source's outbound rules and the target's inbound rules).
pub fn matrix(vpc: &Vpc, ports: &[u16]) -> Vec<(String, String, u16, bool)> {
    let mut cells = Vec::new();
    for from in &vpc.instances {
        for to in &vpc.instances {
            if from.name == to.name || from.addresses.is_empty() || to.addresses.is_empty() {
                continue;
            }
            for &port in ports {
                let query = Query {
                    to: to.name.clone(),
                    remote: Remote::Instance(from.name.clone()),
                    direction: Direction::Ingress,
                    protocol: 6,
                    port,
                    icmp: (0, 0),
                };
                let allowed = explain(vpc, &query).is_ok_and(|e| e.allowed);
                cells.push((from.name.clone(), to.name.clone(), port, allowed));
            }
        }
    }
    cells
}

/// The TCP ports the file's inbound rules name singly, for `matrix`'s
/// default.
pub fn named_ports(vpc: &Vpc) -> Vec<u16> {
    let mut ports: Vec<u16> = vpc
        .groups
        .iter()
        .flat_map(|g| &g.ingress)
        .filter(|r| r.protocol == Protocol::Number(6))
        .filter_map(|r| match r.ports {
            crate::config::Ports::Range { from, to } if from == to => Some(from),
            _ => None,
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        ports = vec![22, 80, 443];
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Vpc {
        crate::config::from_str(
            "seed-vpc.toml".as_ref(),
            include_str!("../../../examples/seed-vpc.toml"),
        )
        .expect("the seed is valid")
    }

    fn query(to: &str, remote: Remote, port: u16) -> Query {
        Query {
            to: to.into(),
            remote,
            direction: Direction::Ingress,
            protocol: 6,
            port,
            icmp: (0, 0),
        }
    }

    #[test]
    fn a_refusal_names_the_rule_that_came_closest_and_what_it_lacks() {
        let vpc = seed();
        let e = explain(
            &vpc,
            &query(
                "app-1",
                Remote::Address("198.51.100.7".parse().unwrap()),
                80,
            ),
        )
        .unwrap();
        assert!(!e.allowed);
        let text = render(&e);
        assert!(text.starts_with("DENIED"), "{text}");
        assert!(
            text.contains(
                "instagram-server-security-group #2: tcp 80 from group \
                 instagram-elb-security-group: 198.51.100.7 is not a member of group \
                 instagram-elb-security-group"
            ),
            "{text}"
        );
    }

    #[test]
    fn both_ends_are_judged_when_the_remote_end_is_an_instance() {
        let vpc = seed();
        let e = explain(&vpc, &query("app-1", Remote::Instance("alb".into()), 80)).unwrap();
        assert!(e.allowed, "{}", render(&e));
        assert_eq!(e.sides.len(), 2);
        assert_eq!(
            e.sides[0].rules,
            ["instagram-server-security-group #2: tcp 80 from group instagram-elb-security-group"]
        );
        assert_eq!(e.sides[0].tracked, Some(true));
        assert_eq!(e.sides[1].instance, "alb");
        assert_eq!(e.sides[1].direction, Direction::Egress);
        assert!(e.sides[1].allowed, "the ALB's default egress");
        // The internet's HTTP to the ALB: a whole-space rule with every
        // port open the other way, untracked.
        let e = explain(
            &vpc,
            &query("alb", Remote::Address("198.51.100.7".parse().unwrap()), 80),
        )
        .unwrap();
        assert_eq!(e.sides[0].tracked, Some(false), "{}", render(&e));
    }

    #[test]
    fn the_matrix_is_the_seed_documents() {
        let vpc = seed();
        let cells = matrix(&vpc, &[22, 80, 3306]);
        let allowed = |from: &str, to: &str, port| {
            cells
                .iter()
                .find(|c| c.0 == from && c.1 == to && c.2 == port)
                .unwrap()
                .3
        };
        assert!(allowed("alb", "app-1", 80));
        assert!(allowed("bastion", "app-1", 22));
        assert!(allowed("app-1", "rds", 3306));
        assert!(!allowed("alb", "rds", 3306));
        assert!(!allowed("bastion", "rds", 22));
        assert!(named_ports(&vpc).contains(&3306));
    }
}

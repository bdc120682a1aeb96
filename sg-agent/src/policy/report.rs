//! What `sg-agent check` shows: each instance's effective rules, as a table or JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    config::{Direction, Link, Protocol, Rule, Vpc},
    policy::{reference, resolve::effective_rules},
};

#[derive(Debug, Serialize)]
pub struct Report {
    /// The AWS services no security group filters, for every instance.
    pub aws_services: Vec<ServiceReport>,
    /// `[vpc] service_mac`: where they answer from (only traffic from and
    /// to there is exempt); absent: the host side's own address for
    /// host-side instances, nowhere for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_mac: Option<String>,
    /// `[[aws_service]]`: services AWS tracks every connection through.
    pub tracked_services: Vec<TrackedServiceReport>,
    /// `[[network_acl]]`: each with its subnets and entries in the order
    /// they are judged (the `*` rule last).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_acls: Vec<NetworkAclReport>,
    pub instances: Vec<InstanceReport>,
}

/// One network ACL as `check` shows it.
#[derive(Debug, Serialize)]
pub struct NetworkAclReport {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The VPC's default network ACL (subnets no other one names).
    pub default: bool,
    /// Its subnets, as "NAME (CIDR[, IPV6 CIDR])".
    pub subnets: Vec<String>,
    pub inbound: Vec<AclEntryReport>,
    pub outbound: Vec<AclEntryReport>,
}

/// One entry, in rule-number order; the last is the `*` rule.
#[derive(Debug, Serialize)]
pub struct AclEntryReport {
    /// The rule number, or `*`.
    pub rule: String,
    pub action: &'static str,
    pub protocol: String,
    pub ports: String,
    pub cidr: String,
}

/// A service every connection through which is tracked, whatever the
/// rules say (AWS's "automatically tracked connections").
#[derive(Debug, Serialize)]
pub struct TrackedServiceReport {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub addresses: Vec<String>,
    /// Its idle timeouts when they are not the instance's (a Network Load
    /// Balancer's: TCP, UDP in seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_idle_timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub udp_idle_timeout: Option<u64>,
    /// Entries of the connection allowance each connection takes.
    pub allowance_entries: u32,
}

/// One AWS service address security groups never filter (DHCP, never
/// filtered either, has no address of its own).
#[derive(Debug, Serialize)]
pub struct ServiceReport {
    pub service: &'static str,
    pub address: String,
    pub ports: &'static str,
}

#[derive(Debug, Serialize)]
pub struct InstanceReport {
    pub name: String,
    /// Its AWS id (the file's, or derived from its name: what the EC2 API
    /// answers).
    pub id: String,
    /// The interface it is enforced on (`interface` or `host_interface`;
    /// a libvirt domain's is found when it runs).
    pub interface: Option<String>,
    pub netns: Option<String>,
    /// Which end of its link: `instance` (its own interface) or `host`
    /// (the host side: a tap, a host veth, a libvirt domain's NIC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub libvirt_domain: Option<String>,
    /// The MAC address the host side checks (`mac`, or `libvirt_mac`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The host whose agent enforces it (`run --node`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub addresses: Vec<String>,
    /// `libvirt` when its addresses are libvirt's (a libvirt instance with
    /// no `addresses`: filled in by the running agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses_from: Option<&'static str>,
    /// Its VPC, when the file names several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    /// Its subnet (named in the file, or holding its address).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// The network ACL that filters its traffic across the subnet's
    /// boundary; absent: none (AWS's default allows everything).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_acl: Option<String>,
    pub security_groups: Vec<String>,
    /// AWS's source/destination check (`source_dest_check`, on unless the
    /// file turns it off): only its own addresses send and receive.
    pub source_dest_check: bool,
    /// Its connection tracking (`[conntrack]`, then `[instance.conntrack]`).
    pub conntrack: ConntrackReport,
    pub inbound: Vec<RuleReport>,
    pub outbound: Vec<RuleReport>,
}

/// AWS's `ConnectionTrackingSpecification` of one interface, and its
/// connection allowance.
#[derive(Debug, Serialize)]
pub struct ConntrackReport {
    pub max_tracked_connections: u32,
    pub tcp_established_timeout: u64,
    pub udp_timeout: u64,
    pub udp_stream_timeout: u64,
    /// Where each timeout comes from, in the order above:
    /// `[instance.conntrack]`, `[conntrack]`, an instance type's default
    /// (`Nitro v6 default`) or `AWS default`.
    pub sources: [&'static str; 3],
    /// `instance_type` and `nitro_version`, when the file gives them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nitro_version: Option<u8>,
}

#[derive(Debug, Serialize)]
pub struct RuleReport {
    pub protocol: String,
    pub ports: String,
    /// As written: a CIDR block, `prefix list NAME`, `group NAME` or `self`.
    pub source: String,
    /// What the source stands for.
    pub addresses: Vec<String>,
    pub group: String,
    /// The group's AWS id, when the rules file gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// 1-based among the group's rules of this direction.
    pub rule: usize,
    /// The rule's AWS id (`sgr-...`), when the rules file gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    /// AWS's default egress rule (the group has no `egress` key).
    pub implicit: bool,
    pub description: Option<String>,
    /// `tracked`, `untracked` or `partly untracked`: whether the flows this
    /// rule allows get a connection-table entry (AWS tracks no TCP or UDP
    /// flow allowed from the whole address space when every port is open
    /// to it the other way; such a flow is cut as soon as its rule goes).
    pub tracking: &'static str,
    /// Which of its flows are untracked: `tcp/IPv4`, `udp/IPv6`...
    pub untracked: Vec<&'static str>,
    /// Why the source is stale (a group of a VPC not peered with the
    /// rule's own): it matches nothing, as AWS's stale rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
}

pub fn report(vpc: &Vpc) -> Report {
    let instances = vpc
        .instances
        .iter()
        .map(|inst| {
            let mut inbound = Vec::new();
            let mut outbound = Vec::new();
            // A member-only instance (no interface here) is not enforced on
            // this host: its rules are not resolved (with thousands of
            // members, each would list them all).
            let rules = if inst.enforced_here() {
                effective_rules(vpc, inst)
            } else {
                Vec::new()
            };
            let open = reference::OpenWays::of(vpc, inst);
            for r in rules {
                let row = rule_row(vpc, &open, &r);
                match r.direction {
                    Direction::Ingress => inbound.push(row),
                    Direction::Egress => outbound.push(row),
                }
            }
            InstanceReport {
                name: inst.name.clone(),
                id: inst.aws_id(),
                interface: inst.link.as_ref().and_then(Link::ifname).map(str::to_owned),
                netns: inst.netns.clone(),
                side: inst
                    .link
                    .as_ref()
                    .map(|l| if l.host_side() { "host" } else { "instance" }),
                libvirt_domain: match &inst.link {
                    Some(Link::Libvirt { domain, .. }) => Some(domain.clone()),
                    _ => None,
                },
                mac: inst
                    .mac
                    .or(match &inst.link {
                        Some(Link::Libvirt { mac, .. }) => *mac,
                        _ => None,
                    })
                    .map(|m| m.to_string()),
                node: inst.node.clone(),
                addresses: inst.addresses.iter().map(ToString::to_string).collect(),
                addresses_from: inst.addresses_from_libvirt.then_some("libvirt"),
                vpc: (vpc.vpcs.len() > 1).then(|| vpc.vpc_of_instance(inst).to_owned()),
                subnet: vpc.subnet_of(inst).map(subnet_text),
                network_acl: vpc.network_acl_for(inst).map(|(_, a)| a.name.clone()),
                security_groups: inst.groups.iter().map(|(g, _)| g.clone()).collect(),
                source_dest_check: inst.source_dest_check,
                conntrack: {
                    let c = vpc.conntrack_of(inst);
                    ConntrackReport {
                        max_tracked_connections: c.max_tracked_connections,
                        tcp_established_timeout: c.tcp_established_timeout,
                        udp_timeout: c.udp_timeout,
                        udp_stream_timeout: c.udp_stream_timeout,
                        sources: vpc.conntrack_sources(inst),
                        instance_type: inst.instance_type.clone(),
                        nitro_version: inst.nitro_version,
                    }
                },
                inbound,
                outbound,
            }
        })
        .collect();
    let mut aws_services: Vec<ServiceReport> = vpc
        .aws_services()
        .into_iter()
        .map(|(net, name)| ServiceReport {
            service: name,
            address: if net.prefix_len() == net.max_prefix_len() {
                net.addr().to_string()
            } else {
                net.to_string()
            },
            ports: "all",
        })
        .collect();
    aws_services.push(ServiceReport {
        service: "DHCP, DHCPv6",
        address: "any".to_owned(),
        ports: "udp/67-68, udp/546-547",
    });
    let tracked_services = vpc.tracked_services.iter().map(tracked_service).collect();
    Report {
        aws_services,
        service_mac: vpc.service_mac.map(|m| m.to_string()),
        tracked_services,
        network_acls: vpc
            .network_acls
            .iter()
            .map(|a| network_acl(vpc, a))
            .collect(),
        instances,
    }
}

fn subnet_text(s: &crate::config::Subnet) -> String {
    let ranges = std::iter::once(s.cidr.to_string())
        .chain(s.ipv6.map(|n| n.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    match &s.name {
        Some(n) => format!("{n} ({ranges})"),
        None => ranges,
    }
}

fn network_acl(vpc: &Vpc, acl: &crate::config::NetworkAcl) -> NetworkAclReport {
    let rows = |entries: &[crate::config::AclEntry]| {
        let mut rows: Vec<AclEntryReport> = entries
            .iter()
            .map(|e| AclEntryReport {
                rule: e.rule_no.to_string(),
                action: e.action(),
                protocol: e.protocol.to_string(),
                ports: e.ports.to_string(),
                cidr: e.cidr.to_string(),
            })
            .collect();
        rows.push(AclEntryReport {
            rule: "*".to_owned(),
            action: "deny",
            protocol: "all".to_owned(),
            ports: "all".to_owned(),
            cidr: "everything else".to_owned(),
        });
        rows
    };
    NetworkAclReport {
        name: acl.name.clone(),
        id: acl.id.as_ref().map(|(id, _)| id.clone()),
        default: acl.default,
        subnets: vpc
            .subnets
            .iter()
            .filter(|s| vpc.network_acl_of(s).is_some_and(|a| a.name == acl.name))
            .map(subnet_text)
            .collect(),
        inbound: rows(&acl.ingress),
        outbound: rows(&acl.egress),
    }
}

/// The network ACLs, once, before the instances: each direction's
/// entries in the order they are judged.
fn render_network_acls(out: &mut String, acls: &[NetworkAclReport]) {
    for acl in acls {
        let id = acl
            .id
            .as_ref()
            .map_or_else(String::new, |id| format!(" ({id})"));
        let default = if acl.default {
            ", the VPC's default"
        } else {
            ""
        };
        let subnets = if acl.subnets.is_empty() {
            "no subnet".to_owned()
        } else {
            acl.subnets.join("; ")
        };
        let _ = writeln!(
            out,
            "network ACL {}{id}{default}: stateless, first match, across the boundary of {subnets}",
            acl.name
        );
        for (title, rows) in [("inbound", &acl.inbound), ("outbound", &acl.outbound)] {
            let _ = writeln!(out, "  {title}:");
            for r in rows {
                let _ = writeln!(
                    out,
                    "    {:<6} {:<6} {:<7} {:<22} {}",
                    r.rule, r.action, r.protocol, r.ports, r.cidr
                );
            }
        }
        let _ = writeln!(out);
    }
}

/// One row of an instance's table: one source of one rule.
fn rule_row(
    vpc: &Vpc,
    open: &reference::OpenWays,
    r: &crate::policy::resolve::EffectiveRule<'_>,
) -> RuleReport {
    let untracked = open.untracked_kinds(vpc, r.direction, r.rule, r.source);
    RuleReport {
        protocol: r.rule.protocol.to_string(),
        ports: r.rule.ports.to_string(),
        source: r.source.to_string(),
        addresses: r.prefixes.iter().map(ToString::to_string).collect(),
        group: r.group.name.clone(),
        group_id: r.group.id.as_ref().map(|(id, _)| id.clone()),
        rule: r.rule_number,
        rule_id: r.rule.id.as_ref().map(|(id, _)| id.clone()),
        implicit: r.rule.implicit,
        description: r.rule.description.clone(),
        tracking: tracking(vpc, r.rule, &r.prefixes, &untracked),
        untracked,
        stale: match r.source {
            crate::config::Source::Group(to) => vpc.stale_reference(&r.group.name, to, r.direction),
            _ => None,
        },
    }
}

fn tracked_service(s: &crate::config::TrackedService) -> TrackedServiceReport {
    TrackedServiceReport {
        name: s.name.clone(),
        kind: s.kind.as_str(),
        addresses: s.addresses.iter().map(ToString::to_string).collect(),
        tcp_idle_timeout: s.timeouts().map(|t| t.0),
        udp_idle_timeout: s.timeouts().map(|t| t.1),
        allowance_entries: s.allowance_entries(),
    }
}

/// `untracked` when every flow the rule allows is (a TCP or UDP rule whose
/// addresses are all whole address spaces), `partly untracked` when some
/// are (flows with an automatically tracked service of that family are
/// not), `tracked` otherwise.
fn tracking(vpc: &Vpc, rule: &Rule, prefixes: &[ipnet::IpNet], untracked: &[&str]) -> &'static str {
    if untracked.is_empty() {
        return "tracked";
    }
    let through_service = untracked.iter().any(|kind| {
        vpc.tracked_services
            .iter()
            .flat_map(|s| &s.addresses)
            .any(|n| n.addr().is_ipv6() == kind.ends_with("IPv6"))
    });
    if through_service {
        return "partly untracked";
    }
    let single_protocol = matches!(
        rule.protocol,
        Protocol::Number(sg_common::flow::proto::TCP | sg_common::flow::proto::UDP)
    );
    let all_whole = prefixes.iter().all(|p| p.prefix_len() == 0);
    if single_protocol && all_whole && untracked.len() == prefixes.len() {
        "untracked"
    } else {
        "partly untracked"
    }
}

/// What no security group filters, as AWS has it: listed once, first.
fn render_services(out: &mut String, report: &Report) {
    let place = match &report.service_mac {
        Some(mac) => format!("only from and to MAC address {mac} (the services' place)"),
        None => "only from and to the host side of host-side instances (no [vpc] service_mac: \
                 for instances on their own interface they are judged by the rules)"
            .to_owned(),
    };
    let _ = writeln!(
        out,
        "never filtered (AWS services, both ways, no connection tracking), {place}:"
    );
    for s in &report.aws_services {
        let _ = writeln!(out, "  {:<18} {:<24} {}", s.address, s.ports, s.service);
    }
    let _ = writeln!(out);
}

/// The services AWS tracks every connection through, once, after the
/// never-filtered ones.
fn render_tracked_services(out: &mut String, services: &[TrackedServiceReport]) {
    if services.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "automatically tracked (every connection with these is tracked, whatever the rules say):"
    );
    for s in services {
        let mut extra = Vec::new();
        if let (Some(tcp), Some(udp)) = (s.tcp_idle_timeout, s.udp_idle_timeout) {
            extra.push(format!("idle timeouts: tcp {tcp} s, udp {udp} s"));
        }
        if s.allowance_entries > 1 {
            extra.push(format!(
                "{} entries of the allowance per connection",
                s.allowance_entries
            ));
        }
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(" ({})", extra.join("; "))
        };
        let _ = writeln!(
            out,
            "  {} {}: {}{extra}",
            s.kind,
            s.name,
            s.addresses.join(", ")
        );
    }
    let _ = writeln!(out);
}

fn conntrack_line(c: &ConntrackReport) -> String {
    let kind = match (&c.instance_type, c.nitro_version) {
        (Some(t), Some(v)) => format!(" ({t}, Nitro v{v})"),
        (Some(t), None) => format!(" ({t})"),
        (None, Some(v)) => format!(" (Nitro v{v})"),
        (None, None) => String::new(),
    };
    format!(
        "connection tracking{kind}: at most {} tracked connections; idle timeouts: tcp {} s \
         ({}), udp {} s ({}), udp stream {} s ({})",
        c.max_tracked_connections,
        c.tcp_established_timeout,
        c.sources[0],
        c.udp_timeout,
        c.sources[1],
        c.udp_stream_timeout,
        c.sources[2]
    )
}

/// Where a row comes from: the group (and its id), the rule's number (and
/// its id), or AWS's default egress rule.
fn rule_origin(r: &RuleReport) -> String {
    let group = match &r.group_id {
        Some(id) => format!("{} ({id})", r.group),
        None => r.group.clone(),
    };
    match (&r.rule_id, r.implicit) {
        (_, true) => format!("{group} (default egress)"),
        (Some(id), false) => format!("{group} #{} {id}", r.rule),
        (None, false) => format!("{group} #{}", r.rule),
    }
}

/// Where an instance is enforced, in words.
fn place_text(inst: &InstanceReport) -> String {
    let on = match (inst.side, &inst.libvirt_domain, &inst.interface) {
        (_, Some(domain), _) => Some(format!("the host side of libvirt domain {domain}'s NIC")),
        (Some("host"), None, Some(i)) => Some(format!("the host side of {i}")),
        (_, None, Some(i)) => Some(i.clone()),
        _ => None,
    };
    match (&inst.netns, on) {
        (Some(ns), Some(l)) => format!("enforced on {l} in netns {ns}"),
        (None, Some(l)) => format!("enforced on {l}"),
        _ => "not on this host: group member only".to_owned(),
    }
}

/// An instance's first lines: where, addresses, groups, settings.
fn instance_header(out: &mut String, inst: &InstanceReport) {
    let place = place_text(inst);
    let node = inst
        .node
        .as_ref()
        .map_or_else(String::new, |n| format!(", node {n}"));
    let in_vpc = inst
        .vpc
        .as_ref()
        .map_or_else(String::new, |v| format!(", VPC {v}"));
    let _ = writeln!(out, "instance {} ({place}{node}{in_vpc})", inst.name);
    if inst.addresses_from.is_some() {
        let _ = writeln!(
            out,
            "  addresses: libvirt's (its <ip>, its network's DHCP reservation and leases){}",
            if inst.addresses.is_empty() {
                String::new()
            } else {
                format!(": {}", inst.addresses.join(", "))
            }
        );
    } else {
        let _ = writeln!(out, "  addresses: {}", inst.addresses.join(", "));
    }
    let _ = writeln!(out, "  id: {}", inst.id);
    if let Some(subnet) = &inst.subnet {
        let acl = inst.network_acl.as_ref().map_or_else(
            || "no network ACL (AWS's default: everything allowed)".to_owned(),
            |a| format!("network ACL {a}"),
        );
        let _ = writeln!(out, "  subnet: {subnet}, {acl}");
    }
    let _ = writeln!(
        out,
        "  security groups: {}",
        inst.security_groups.join(", ")
    );
    if !inst.source_dest_check {
        let _ = writeln!(
            out,
            "  source/destination check: off (sends and receives for any address)"
        );
    }
    let _ = writeln!(out, "  {}", conntrack_line(&inst.conntrack));
    if let Some(mac) = &inst.mac {
        let _ = writeln!(
            out,
            "  MAC address: {mac} (checked on every frame it sends)"
        );
    }
}

/// The human-readable form.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    render_services(&mut out, report);
    render_tracked_services(&mut out, &report.tracked_services);
    render_network_acls(&mut out, &report.network_acls);
    for inst in &report.instances {
        instance_header(&mut out, inst);
        if inst.side.is_none() {
            let _ = writeln!(out);
            continue;
        }
        for (title, rows) in [("inbound", &inst.inbound), ("outbound", &inst.outbound)] {
            if rows.is_empty() {
                let _ = writeln!(out, "  {title}: nothing allowed");
                continue;
            }
            let _ = writeln!(out, "  {title}:");
            let header = [
                "PROTOCOL",
                "PORTS",
                "SOURCE",
                "ADDRESSES",
                "TRACKING",
                "FROM",
            ];
            let cells: Vec<[String; 6]> = rows
                .iter()
                .map(|r| {
                    let addrs = if r.stale.is_some() {
                        "(stale: matches nothing)".to_owned()
                    } else if r.addresses.is_empty() {
                        "(no addresses)".to_owned()
                    } else {
                        r.addresses.join(", ")
                    };
                    [
                        r.protocol.clone(),
                        r.ports.clone(),
                        r.source.clone(),
                        addrs,
                        if r.tracking == "partly untracked" {
                            format!("untracked: {}", r.untracked.join(", "))
                        } else {
                            r.tracking.to_owned()
                        },
                        rule_origin(r),
                    ]
                })
                .collect();
            let mut widths = header.map(str::len);
            for row in &cells {
                for (w, c) in widths.iter_mut().zip(row) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let line = |cols: [&str; 6]| {
                let mut s = String::from("    ");
                for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
                    if i == 5 {
                        s.push_str(c);
                    } else {
                        // Padded by hand: a format width above 65,535 (a
                        // group of thousands of members) would panic.
                        let pad = w.saturating_sub(c.chars().count());
                        s.push_str(c);
                        s.push_str(&" ".repeat(pad + 2));
                    }
                }
                s
            };
            let _ = writeln!(out, "{}", line(header));
            for row in &cells {
                let _ = writeln!(
                    out,
                    "{}",
                    line(
                        [&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]].map(String::as_str)
                    )
                );
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's worked example: TCP 22 from a /32 tracked; TCP 80 from
    /// `0.0.0.0/0` and `::/0` untracked with all traffic out; ICMP tracked.
    /// Without the IPv4 outbound rule, the IPv4 half of port 80 is tracked.
    #[test]
    fn tracking_column_follows_aws_worked_example() {
        let text = |egress_v4: bool| {
            format!(
                "[[security_group]]\nname = \"web\"\n\
                 [[security_group.ingress]]\nprotocol = \"tcp\"\nfrom_port = 22\nto_port = 22\ncidr_blocks = [\"203.0.113.1/32\"]\n\
                 [[security_group.ingress]]\nprotocol = \"tcp\"\nfrom_port = 80\nto_port = 80\ncidr_blocks = [\"0.0.0.0/0\"]\nipv6_cidr_blocks = [\"::/0\"]\n\
                 [[security_group.ingress]]\nprotocol = \"icmp\"\nfrom_port = -1\nto_port = -1\ncidr_blocks = [\"0.0.0.0/0\"]\n\
                 {}[[security_group.egress]]\nprotocol = \"-1\"\nipv6_cidr_blocks = [\"::/0\"]\n\
                 [[instance]]\nname = \"web\"\naddresses = [\"10.0.0.1\"]\nsecurity_groups = [\"web\"]\ninterface = \"eth0\"\n",
                if egress_v4 {
                    "[[security_group.egress]]\nprotocol = \"-1\"\ncidr_blocks = [\"0.0.0.0/0\"]\n"
                } else {
                    ""
                }
            )
        };
        let rows = |egress_v4: bool| -> Vec<(String, &'static str)> {
            let vpc = crate::config::from_str("t.toml".as_ref(), &text(egress_v4)).expect("valid");
            report(&vpc).instances[0]
                .inbound
                .iter()
                .map(|r| {
                    (
                        format!("{} {} {}", r.protocol, r.ports, r.source),
                        r.tracking,
                    )
                })
                .collect()
        };
        assert_eq!(
            rows(true),
            [
                ("tcp 22 203.0.113.1/32".to_owned(), "tracked"),
                ("tcp 80 0.0.0.0/0".to_owned(), "untracked"),
                ("tcp 80 ::/0".to_owned(), "untracked"),
                ("icmp type any code any 0.0.0.0/0".to_owned(), "tracked"),
            ]
        );
        assert_eq!(rows(false)[1], ("tcp 80 0.0.0.0/0".to_owned(), "tracked"));
        assert_eq!(rows(false)[2], ("tcp 80 ::/0".to_owned(), "untracked"));
    }
}

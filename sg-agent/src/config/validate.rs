//! Checks that need the whole file: unique names, references that resolve,
//! AWS's quotas.

use std::collections::{HashMap, HashSet};

use super::{
    diagnostics::{Diagnostic, did_you_mean},
    model::{Link, PrefixList, Rule, Source, Span, Vpc},
};

pub fn validate(vpc: &Vpc) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    unique(
        &mut out,
        "prefix list",
        vpc.prefix_lists
            .iter()
            .map(|p| (p.name.as_str(), p.span.clone())),
    );
    unique(
        &mut out,
        "security group",
        vpc.groups.iter().map(|g| (g.name.as_str(), g.span.clone())),
    );
    // AWS compares group names without case.
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for g in &vpc.groups {
        if let Some(other) = seen.insert(g.name.to_lowercase(), &g.name)
            && other != g.name
        {
            out.push(
                Diagnostic::new(
                    g.span.clone(),
                    format!(
                        "security group \"{}\" differs from \"{other}\" only in case",
                        g.name
                    ),
                )
                .hint("AWS compares group names without case: give one of them another name"),
            );
        }
    }
    unique(
        &mut out,
        "instance",
        vpc.instances
            .iter()
            .map(|i| (i.name.as_str(), i.span.clone())),
    );

    // AWS's ids name one group or one rule each: a repeated id is a
    // copy-and-paste slip, and would make status and flow logs ambiguous.
    unique(
        &mut out,
        "security group id",
        vpc.groups
            .iter()
            .filter_map(|g| g.id.as_ref().map(|(id, span)| (id.as_str(), span.clone()))),
    );
    unique(
        &mut out,
        "security group rule id",
        vpc.groups
            .iter()
            .flat_map(|g| g.ingress.iter().chain(&g.egress))
            .filter_map(|r| r.id.as_ref().map(|(id, span)| (id.as_str(), span.clone()))),
    );

    for list in &vpc.prefix_lists {
        prefix_list(&mut out, list);
    }
    let group_names: Vec<&str> = vpc.groups.iter().map(|g| g.name.as_str()).collect();
    let list_names: Vec<&str> = vpc.prefix_lists.iter().map(|p| p.name.as_str()).collect();

    for group in &vpc.groups {
        for (rules, direction) in [(&group.ingress, "inbound"), (&group.egress, "outbound")] {
            for rule in rules {
                references(&mut out, rule, &group_names, &list_names);
            }
            duplicates(&mut out, group, rules, direction);
            // AWS enforces the quota "separately for IPv4 rules and IPv6
            // rules": 60 of each per direction by default.
            let (v4, v6) = rules
                .iter()
                .map(|r| rule_count_by_family(vpc, r))
                .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
            let limit = vpc.limits.rules_per_group as usize;
            for (count, family) in [(v4, "IPv4"), (v6, "IPv6")] {
                if count > limit {
                    out.push(
                        Diagnostic::new(
                            group.span.clone(),
                            format!(
                                "security group \"{}\" has {count} {direction} {family} rules, more than the limit of {limit}",
                                group.name
                            ),
                        )
                        .hint(
                            "IPv4 and IPv6 rules are counted apart, as AWS counts them; each source counts as \
                             one rule (a group reference as one of each family) and a prefix list as its \
                             max_entries (or number of entries); raise [limits] rules_per_group or merge \
                             CIDR blocks",
                        ),
                    );
                }
            }
        }
    }

    instances(vpc, &group_names, &mut out);
    vpcs(vpc, &mut out);
    network_acls(vpc, &mut out);
    out.sort_by_key(|d| d.span.start);
    out
}

/// Several VPCs: names that resolve, each instance's groups in its VPC,
/// peerings between VPCs whose ranges do not overlap (AWS refuses those).
fn vpcs(vpc: &Vpc, out: &mut Vec<Diagnostic>) {
    let names: Vec<&str> = vpc.vpcs.iter().map(|v| v.name.as_str()).collect();
    let known = |out: &mut Vec<Diagnostic>, name: &str, span: &Span| {
        if names.contains(&name) {
            return true;
        }
        let d = if names.is_empty() {
            Diagnostic::new(span.clone(), format!("no VPC named \"{name}\"")).hint(
                "name your VPCs with [[vpc]] tables (name, cidr_blocks), the first the default one",
            )
        } else {
            unknown(span.clone(), "VPC", name, &names)
        };
        out.push(d);
        false
    };
    for g in &vpc.groups {
        if let Some(name) = &g.vpc {
            known(out, name, &g.span);
        }
    }
    for inst in &vpc.instances {
        if let Some(name) = &inst.vpc
            && !known(out, name, &inst.span)
        {
            continue;
        }
        let here = vpc.vpc_of_instance(inst);
        for (g, span) in &inst.groups {
            if let Some(group) = vpc.group(g)
                && !vpc.vpcs_of_group(group).any(|v| v == here)
            {
                out.push(
                    Diagnostic::new(
                        span.clone(),
                        format!(
                            "security group \"{g}\" is in VPC {}, instance \"{}\" in VPC {here}",
                            vpc.vpc_of_group(group),
                            inst.name
                        ),
                    )
                    .hint(format!(
                        "an instance's groups are of its own VPC, or associated with it (AWS, \
                         2024): add associated_vpcs = [\"{here}\"] to group \"{g}\" (same Region \
                         and account; not a default group, not one of the default VPC)"
                    )),
                );
            }
        }
    }
    associations(vpc, out, &known);
    transit_gateways(vpc, out, &known);
    for (a, b) in &vpc.peerings {
        let span = vpc.vpcs.first().map(|v| v.span.clone()).unwrap_or(0..0);
        if !(known(out, a, &span) && known(out, b, &span)) {
            continue;
        }
        let ranges = |n: &str| {
            vpc.vpcs
                .iter()
                .find(|v| v.name == n)
                .map(|v| v.cidr_blocks.clone())
                .unwrap_or_default()
        };
        let (ra, rb) = (ranges(a), ranges(b));
        if let Some((x, y)) = ra
            .iter()
            .flat_map(|x| rb.iter().map(move |y| (x, y)))
            .find(|(x, y)| x.contains(&y.network()) || y.contains(&x.network()))
        {
            out.push(
                Diagnostic::new(
                    span,
                    format!("VPCs {a} and {b} cannot be peered: {x} and {y} overlap"),
                )
                .hint("AWS peers only VPCs whose ranges do not overlap"),
            );
        }
    }
}

/// `associated_vpcs`, as AWS's `AssociateSecurityGroupVpc` allows them:
/// another VPC of the same Region and account; not for the default group,
/// nor for a group of the default VPC.
fn associations(
    vpc: &Vpc,
    out: &mut Vec<Diagnostic>,
    known: &dyn Fn(&mut Vec<Diagnostic>, &str, &Span) -> bool,
) {
    for g in &vpc.groups {
        let own = vpc.vpc_of_group(g);
        for (other, span) in &g.associated_vpcs {
            if !known(out, other, span) {
                continue;
            }
            let why = if other == own {
                Some(format!("group \"{}\" is in VPC {own} already", g.name))
            } else if g.name == crate::config::DEFAULT_GROUP {
                Some("a VPC's default group cannot be associated with another VPC (AWS)".to_owned())
            } else if own == vpc.default_vpc() {
                Some(format!(
                    "group \"{}\" is of the default VPC ({own}), whose groups cannot be associated \
                     with other VPCs (AWS)",
                    g.name
                ))
            } else if vpc.region_of(own) != vpc.region_of(other) {
                Some(format!(
                    "VPC {other} is in another Region than {own} (AWS associates within one Region)"
                ))
            } else if vpc.account_of(own) != vpc.account_of(other) {
                Some(format!(
                    "VPC {other} is of another account than {own} (AWS associates within one account)"
                ))
            } else {
                None
            };
            if let Some(why) = why {
                out.push(Diagnostic::new(
                    span.clone(),
                    format!("associated_vpcs: {why}"),
                ));
            }
        }
    }
}

/// `[[transit_gateway]]`: VPCs that exist, all of the gateway's Region (a
/// transit gateway attaches the VPCs of its own Region).
fn transit_gateways(
    vpc: &Vpc,
    out: &mut Vec<Diagnostic>,
    known: &dyn Fn(&mut Vec<Diagnostic>, &str, &Span) -> bool,
) {
    for t in &vpc.transit_gateways {
        let mut regions = std::collections::BTreeSet::new();
        for (name, _) in &t.attachments {
            if known(out, name, &t.span) {
                regions.insert(vpc.region_of(name));
            }
        }
        if regions.len() > 1 {
            out.push(
                Diagnostic::new(
                    t.span.clone(),
                    format!(
                        "transit gateway {} attaches VPCs of several Regions ({})",
                        t.name,
                        regions.into_iter().map(|r| if r.is_empty() { "the file's" } else { r }).collect::<Vec<_>>().join(", ")
                    ),
                )
                .hint("a transit gateway attaches the VPCs of its own Region (across Regions AWS peers transit gateways, which carry no group references)"),
            );
        }
    }
}

/// Rules that reference a group of a VPC not peered with their own
/// group's: AWS keeps them as stale rules that match nothing (as when a
/// peering is deleted); a warning each.
pub fn stale_references(vpc: &Vpc) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    if vpc.vpcs.len() < 2 {
        return out;
    }
    for g in &vpc.groups {
        for (direction, rules) in [
            (crate::config::Direction::Ingress, &g.ingress),
            (crate::config::Direction::Egress, &g.egress),
        ] {
            for rule in rules {
                for s in &rule.sources {
                    if let Source::Group(to) = &s.source
                        && let Some(why) = vpc.stale_reference(&g.name, to, direction)
                    {
                        out.push(
                            Diagnostic::warning(s.span.clone(), format!("a rule of group \"{}\": {why}", g.name))
                                .hint("peer the VPCs (one Region) with [[vpc_peering]] vpcs = [...], join them with a [[transit_gateway]] with security_group_referencing = true (inbound rules), or list the members' addresses as cidr_blocks"),
                        );
                    }
                }
            }
        }
    }
    out
}

/// A prefix list holds one address family and at most its `max_entries`,
/// as in AWS.
fn prefix_list(out: &mut Vec<Diagnostic>, list: &PrefixList) {
    let v6 = list.entries.iter().filter(|e| e.addr().is_ipv6()).count();
    if v6 > 0 && v6 < list.entries.len() {
        out.push(
            Diagnostic::new(
                list.span.clone(),
                format!(
                    "prefix list \"{}\" mixes IPv4 and IPv6 entries ({} and {v6})",
                    list.name,
                    list.entries.len() - v6
                ),
            )
            .hint(format!(
                "a prefix list has one address family, as in AWS: move the IPv6 entries to a \
                 list of their own (e.g. \"{}-v6\") and reference both",
                list.name
            )),
        );
    }
    if let Some(ipv6) = list.ipv6
        && list.entries.iter().any(|e| e.addr().is_ipv6() != ipv6)
    {
        out.push(
            Diagnostic::new(
                list.span.clone(),
                format!(
                    "prefix list \"{}\" is an {} list with entries of the other family",
                    list.name,
                    if ipv6 { "IPv6" } else { "IPv4" }
                ),
            )
            .hint("a prefix list holds its address_family's ranges only, as in AWS"),
        );
    }
    if let Some((max, span)) = &list.max_entries
        && list.entries.len() > *max as usize
    {
        out.push(
            Diagnostic::new(
                span.clone(),
                format!(
                    "prefix list \"{}\" holds {} entries, more than its max_entries of {max}",
                    list.name,
                    list.entries.len()
                ),
            )
            .hint("raise max_entries (rules referencing the list count as that many) or remove entries"),
        );
    }
}

/// Per instance: its groups (known, not repeated, within the limit), its
/// addresses (present, not another's) and its interface (not another's).
fn instances(vpc: &Vpc, group_names: &[&str], out: &mut Vec<Diagnostic>) {
    let mut address_owner: HashMap<std::net::IpAddr, &str> = HashMap::new();
    for inst in &vpc.instances {
        let limit = vpc.limits.groups_per_instance as usize;
        if inst.groups.is_empty() {
            out.push(
                Diagnostic::new(
                    inst.span.clone(),
                    format!("instance \"{}\" has no security group", inst.name),
                )
                .hint("every instance needs at least one security group"),
            );
        }
        if inst.groups.len() > limit {
            let span = inst.groups[limit].1.clone();
            out.push(
                Diagnostic::new(
                    span,
                    format!(
                        "instance \"{}\" has {} security groups, more than the limit of {limit}",
                        inst.name,
                        inst.groups.len()
                    ),
                )
                .hint("raise [limits] groups_per_instance (AWS allows up to 16) or merge groups"),
            );
        }
        let mut seen = HashSet::new();
        for (g, span) in &inst.groups {
            if !seen.insert(g.as_str()) {
                out.push(
                    Diagnostic::new(
                        span.clone(),
                        format!("security group \"{g}\" is attached twice"),
                    )
                    .hint("remove the repeat"),
                );
            } else if !group_names.contains(&g.as_str()) {
                out.push(unknown(span.clone(), "security group", g, group_names));
            }
        }
        if inst.addresses.is_empty() && !inst.addresses_from_libvirt {
            out.push(
                Diagnostic::new(
                    inst.span.clone(),
                    format!("instance \"{}\" has no addresses", inst.name),
                )
                .hint("add addresses = [\"10.0.1.10\"]: group references resolve to them"),
            );
        }
        for a in &inst.addresses {
            if let Some(other) = address_owner.insert(*a, &inst.name)
                && other != inst.name
            {
                out.push(
                    Diagnostic::new(
                        inst.span.clone(),
                        format!(
                            "address {a} of instance \"{}\" is also instance \"{other}\"'s",
                            inst.name
                        ),
                    )
                    .hint("each address belongs to one instance"),
                );
            }
        }
    }
    links(vpc, out);
}

/// One instance per interface of a namespace (whichever end of the link),
/// per libvirt domain NIC, per MAC address.
fn links(vpc: &Vpc, out: &mut Vec<Diagnostic>) {
    let mut links = HashMap::new();
    let mut macs = HashMap::new();
    for inst in &vpc.instances {
        let Some(link) = &inst.link else {
            continue;
        };
        // One instance per interface of a namespace (whichever end of the
        // link it is), one per libvirt domain NIC.
        let key = match link {
            Link::Instance(i) | Link::Host(i) => (inst.netns.clone(), Link::Instance(i.clone())),
            Link::Libvirt { .. } => (inst.netns.clone(), link.clone()),
        };
        if let Some(other) = links.insert((inst.node.clone(), key), &inst.name) {
            out.push(
                Diagnostic::new(
                    inst.span.clone(),
                    format!("{} {link} is already instance \"{other}\"'s", link.key()),
                )
                .hint(match link {
                    Link::Libvirt { .. } => {
                        "a domain with several NICs: give each instance its NIC's libvirt_mac"
                    }
                    _ => {
                        "each interface enforces one instance; give this one its own interface or netns"
                    }
                }),
            );
        }
        if let Link::Libvirt { domain, mac: None } = link
            && let Some(other) = vpc.instances.iter().find(|o| {
                o.name != inst.name
                    && o.node == inst.node
                    && matches!(&o.link, Some(Link::Libvirt { domain: d, .. }) if d == domain)
            })
        {
            out.push(
                Diagnostic::new(
                    inst.span.clone(),
                    format!(
                        "libvirt domain {domain} is instance \"{}\"'s too: which NIC is whose?",
                        other.name
                    ),
                )
                .hint("give each instance of a domain its NIC's libvirt_mac"),
            );
        }
        let mac = inst.mac.or(match link {
            Link::Libvirt { mac, .. } => *mac,
            _ => None,
        });
        if let Some(mac) = mac
            && let Some(other) = macs.insert((inst.node.clone(), mac), &inst.name)
        {
            out.push(
                Diagnostic::new(
                    inst.span.clone(),
                    format!("MAC address {mac} is already instance \"{other}\"'s"),
                )
                .hint("each NIC has its own MAC address"),
            );
        }
    }
}

/// How AWS counts a rule against the quota: one per source, a prefix list
/// as its number of entries.
pub fn rule_count(vpc: &Vpc, rule: &Rule) -> usize {
    if rule.implicit {
        return 0;
    }
    rule.sources
        .iter()
        .map(|s| match &s.source {
            Source::PrefixList(name) => vpc.prefix_list(name).map_or(0, PrefixList::weight),
            _ => 1,
        })
        .sum()
}

/// How a rule counts against the quota of each address family: (IPv4,
/// IPv6). A CIDR block counts in its family, a prefix list's entries each
/// in theirs, and a group reference (which may match either) once in each.
pub fn rule_count_by_family(vpc: &Vpc, rule: &Rule) -> (usize, usize) {
    if rule.implicit {
        return (0, 0);
    }
    let family = |net: &ipnet::IpNet| match net {
        ipnet::IpNet::V4(_) => (1, 0),
        ipnet::IpNet::V6(_) => (0, 1),
    };
    rule.sources
        .iter()
        .map(|s| match &s.source {
            Source::Cidr(net) => family(net),
            // One family per list (validated); counted as its maximum.
            Source::PrefixList(name) => {
                vpc.prefix_list(name)
                    .map_or((0, 0), |p| match p.entries.first() {
                        Some(ipnet::IpNet::V6(_)) => (0, p.weight()),
                        _ => (p.weight(), 0),
                    })
            }
            Source::Group(_) | Source::SelfGroup => (1, 1),
        })
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

fn references(out: &mut Vec<Diagnostic>, rule: &Rule, groups: &[&str], lists: &[&str]) {
    for s in &rule.sources {
        match &s.source {
            Source::Group(name) if !groups.contains(&name.as_str()) => {
                out.push(unknown(s.span.clone(), "security group", name, groups));
            }
            Source::PrefixList(name) if !lists.contains(&name.as_str()) => {
                out.push(unknown(s.span.clone(), "prefix list", name, lists));
            }
            _ => {}
        }
    }
}

/// AWS refuses a rule a group already has (`InvalidPermission.Duplicate`):
/// one source of one rule that another rule of the same group and direction
/// already names with the same protocol and ports (`self` and the group's
/// own name are one source).
fn duplicates(
    out: &mut Vec<Diagnostic>,
    group: &super::SecurityGroup,
    rules: &[Rule],
    direction: &str,
) {
    let mut seen: HashMap<(String, String, Source), usize> = HashMap::new();
    for (i, rule) in rules.iter().enumerate() {
        for s in &rule.sources {
            let source = match &s.source {
                Source::SelfGroup => Source::Group(group.name.clone()),
                Source::Cidr(net) => Source::Cidr(net.trunc()),
                other => other.clone(),
            };
            let key = (rule.protocol.to_string(), rule.ports.to_string(), source);
            let Some(first) = seen.get(&key) else {
                seen.insert(key, i);
                continue;
            };
            out.push(
                Diagnostic::new(
                    s.span.clone(),
                    format!(
                        "security group \"{}\" already allows {direction} {} {} {} {} (rule {})",
                        group.name,
                        rule.protocol,
                        rule.ports,
                        if direction == "inbound" { "from" } else { "to" },
                        key.2,
                        first + 1
                    ),
                )
                .hint(
                    "AWS refuses a rule a group already has (InvalidPermission.Duplicate): remove one",
                ),
            );
        }
    }
}

/// Subnets and network ACLs: names that resolve, a subnet in one network
/// ACL at most, one default network ACL per VPC, AWS's quota of rules per
/// direction, and each instance in the subnet it names.
fn network_acls(vpc: &Vpc, out: &mut Vec<Diagnostic>) {
    let subnet_names: Vec<&str> = vpc
        .subnets
        .iter()
        .filter_map(|s| s.name.as_deref())
        .collect();
    unique(
        out,
        "subnet",
        vpc.subnets
            .iter()
            .filter_map(|s| s.name.as_deref().map(|n| (n, s.span.clone()))),
    );
    unique(
        out,
        "network ACL",
        vpc.network_acls
            .iter()
            .map(|a| (a.name.as_str(), a.span.clone())),
    );
    let mut in_acl: HashMap<&str, &str> = HashMap::new();
    let mut defaults: HashMap<&str, &str> = HashMap::new();
    for acl in &vpc.network_acls {
        let acl_vpc = acl.vpc.as_deref().unwrap_or_else(|| vpc.default_vpc());
        if acl.default
            && let Some(other) = defaults.insert(acl_vpc, &acl.name)
        {
            out.push(
                Diagnostic::new(
                    acl.span.clone(),
                    format!(
                        "network ACLs \"{other}\" and \"{}\" are both default = true",
                        acl.name
                    ),
                )
                .hint("a VPC has one default network ACL"),
            );
        }
        for (name, span) in &acl.subnets {
            let Some(subnet) = vpc.subnets.iter().find(|s| s.name.as_deref() == Some(name)) else {
                out.push(unknown(span.clone(), "subnet", name, &subnet_names));
                continue;
            };
            if subnet.vpc.as_deref().unwrap_or_else(|| vpc.default_vpc()) != acl_vpc {
                out.push(
                    Diagnostic::new(
                        span.clone(),
                        format!(
                            "subnet \"{name}\" is not in network ACL \"{}\"'s VPC",
                            acl.name
                        ),
                    )
                    .hint("a network ACL filters subnets of its own VPC"),
                );
            }
            if let Some(other) = in_acl.insert(name, &acl.name) {
                out.push(
                    Diagnostic::new(
                        span.clone(),
                        format!(
                            "subnet \"{name}\" is in network ACLs \"{other}\" and \"{}\"",
                            acl.name
                        ),
                    )
                    .hint("a subnet is associated with one network ACL at a time"),
                );
            }
        }
        let limit = vpc.limits.rules_per_network_acl as usize;
        for (entries, direction) in [(&acl.ingress, "inbound"), (&acl.egress, "outbound")] {
            if entries.len() > limit {
                out.push(
                    Diagnostic::new(
                        acl.span.clone(),
                        format!(
                            "network ACL \"{}\" has {} {direction} rules, more than the limit of {limit}",
                            acl.name,
                            entries.len()
                        ),
                    )
                    .hint("AWS allows 20 per direction; [limits] rules_per_network_acl raises it to 40"),
                );
            }
        }
    }
    instance_subnets(vpc, &subnet_names, out);
}

/// Each instance that names its subnet: a subnet of the file, holding its
/// IPv4 addresses.
fn instance_subnets(vpc: &Vpc, subnet_names: &[&str], out: &mut Vec<Diagnostic>) {
    for inst in &vpc.instances {
        let Some((name, span)) = &inst.subnet else {
            continue;
        };
        let Some(subnet) = vpc.subnets.iter().find(|s| s.name.as_deref() == Some(name)) else {
            out.push(unknown(span.clone(), "subnet", name, subnet_names));
            continue;
        };
        if let Some(a) = inst
            .addresses
            .iter()
            .find(|a| !subnet.contains(**a) && !a.is_ipv6())
        {
            out.push(
                Diagnostic::new(
                    span.clone(),
                    format!(
                        "instance {}'s address {a} is not in subnet \"{name}\" ({})",
                        inst.name, subnet.cidr
                    ),
                )
                .hint("an instance's private IPv4 addresses are in its subnet's range"),
            );
        }
    }
}

fn unknown(span: Span, what: &str, name: &str, known: &[&str]) -> Diagnostic {
    let d = Diagnostic::new(span, format!("unknown {what} \"{name}\""));
    match did_you_mean(name, known.iter().copied()) {
        Some(s) => d.hint(format!("did you mean \"{s}\"?")),
        None if known.is_empty() => d.hint(format!("this file defines no {what}")),
        None => d.hint(format!("known: {}", known.join(", "))),
    }
}

fn unique<'a>(out: &mut Vec<Diagnostic>, what: &str, items: impl Iterator<Item = (&'a str, Span)>) {
    let mut first: HashMap<&str, Span> = HashMap::new();
    for (name, span) in items {
        if first.contains_key(name) {
            out.push(
                Diagnostic::new(span, format!("{what} \"{name}\" is defined twice")).hint(
                    if what.ends_with(" id") {
                        format!("a {what} names one thing only; correct one (or leave it out)")
                    } else {
                        format!("{what} names are unique; rename one")
                    },
                ),
            );
        } else {
            first.insert(name, span);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group whose one inbound rule has `v4` IPv4 and `v6` IPv6 blocks.
    fn group_with(v4: usize, v6: usize) -> String {
        let v4: Vec<String> = (0..v4).map(|i| format!("\"10.{i}.0.0/16\"")).collect();
        let v6: Vec<String> = (0..v6)
            .map(|i| format!("\"2001:db8:{i:x}::/48\""))
            .collect();
        format!(
            "[[security_group]]\nname = \"g\"\n  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 22\n  to_port = 22\n  cidr_blocks = [{}]\n  ipv6_cidr_blocks = [{}]\n",
            v4.join(", "),
            v6.join(", ")
        )
    }

    /// One rule with 40 IPv4 and 40 IPv6 blocks is 40 of each, within
    /// AWS's default 60, not 80; 61 of one family is over.
    #[test]
    fn ipv4_and_ipv6_rules_count_apart() {
        let vpc = crate::config::from_str("t.toml".as_ref(), &group_with(40, 40))
            .unwrap_or_else(|d| panic!("40 + 40 rules are within the quota:\n{d}"));
        assert_eq!(
            rule_count_by_family(&vpc, &vpc.groups[0].ingress[0]),
            (40, 40)
        );
        let err = crate::config::from_str("t.toml".as_ref(), &group_with(61, 40))
            .expect_err("61 IPv4 rules");
        assert!(
            err.to_string()
                .contains("has 61 inbound IPv4 rules, more than the limit of 60"),
            "{err}"
        );
    }

    /// A group with an AWS-managed prefix list and `others` CIDR rules.
    fn with_managed_list(name: &str, entries: usize, others: usize) -> String {
        let entries: Vec<String> = (0..entries).map(|i| format!("\"10.{i}.0.0/16\"")).collect();
        let others: Vec<String> = (0..others)
            .map(|i| format!("\"192.168.{i}.0/24\""))
            .collect();
        format!(
            "[[prefix_list]]\nname = \"{name}\"\nentries = [{}]\n\n[[security_group]]\nname = \"g\"\n  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 443\n  to_port = 443\n  prefix_list_ids = [\"{name}\"]\n  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 22\n  to_port = 22\n  cidr_blocks = [{}]\n",
            entries.join(", "),
            others.join(", ")
        )
    }

    /// AWS-managed prefix lists count by their weight, not their entries:
    /// S3's 54 ranges weigh 1 (54 + 10 rules fit the 60), the origin-facing list's 10
    /// weigh 55 (55 + 10 do not).
    #[test]
    fn aws_managed_prefix_lists_count_by_their_weight() {
        let s3 = with_managed_list("com.amazonaws.eu-west-1.s3", 54, 10);
        let vpc = crate::config::from_str("t.toml".as_ref(), &s3)
            .unwrap_or_else(|d| panic!("S3 weighs 1:\n{d}"));
        assert_eq!(rule_count(&vpc, &vpc.groups[0].ingress[0]), 1);
        let cf = with_managed_list("com.amazonaws.global.cloudfront.origin-facing", 10, 10);
        let err =
            crate::config::from_str("t.toml".as_ref(), &cf).expect_err("CloudFront weighs 55");
        assert!(
            err.to_string()
                .contains("has 65 inbound IPv4 rules, more than the limit of 60"),
            "{err}"
        );
        // A customer-managed list of the same size counts its entries.
        let own = with_managed_list("my-services", 54, 10);
        assert!(crate::config::from_str("t.toml".as_ref(), &own).is_err());
        for (name, weight) in [
            ("com.amazonaws.us-east-1.dynamodb", Some(1)),
            (
                "com.amazonaws.us-east-1.ipv6.route53-healthchecks",
                Some(25),
            ),
            ("com.amazonaws.us-east-1.ec2-instance-connect", Some(2)),
            ("com.amazonaws.us-east-1.s3express", Some(6)),
            ("com.amazonaws.us-east-1.ipv6.vpc-lattice", Some(10)),
            (
                "com.amazonaws.global.ipv6.cloudfront.origin-facing",
                Some(55),
            ),
            ("com.amazonaws.us-east-1.ipv6.s3", None),
            ("com.amazonaws.global.s3", None),
        ] {
            assert_eq!(
                crate::config::model::aws_managed_weight(name),
                weight,
                "{name}"
            );
        }
    }
}

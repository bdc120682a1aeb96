//! Checks that need the whole file: unique names, references that resolve,
//! AWS's quotas.

use std::collections::{HashMap, HashSet};

use super::{
    diagnostics::{Diagnostic, did_you_mean},
    model::{Rule, Source, Span, Vpc},
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
    unique(
        &mut out,
        "instance",
        vpc.instances
            .iter()
            .map(|i| (i.name.as_str(), i.span.clone())),
    );

    let group_names: Vec<&str> = vpc.groups.iter().map(|g| g.name.as_str()).collect();
    let list_names: Vec<&str> = vpc.prefix_lists.iter().map(|p| p.name.as_str()).collect();

    for group in &vpc.groups {
        for (rules, direction) in [(&group.ingress, "inbound"), (&group.egress, "outbound")] {
            for rule in rules {
                references(&mut out, rule, &group_names, &list_names);
            }
            let count: usize = rules.iter().map(|r| rule_count(vpc, r)).sum();
            let limit = vpc.limits.rules_per_group as usize;
            if count > limit {
                out.push(
                    Diagnostic::new(
                        group.span.clone(),
                        format!(
                            "security group \"{}\" has {count} {direction} rules, more than the limit of {limit}",
                            group.name
                        ),
                    )
                    .hint(
                        "each source counts as one rule and a prefix list as its number of entries; \
                         raise [limits] rules_per_group or merge CIDR blocks",
                    ),
                );
            }
        }
    }

    instances(vpc, &group_names, &mut out);
    out.sort_by_key(|d| d.span.start);
    out
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
        if inst.addresses.is_empty() {
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
    let mut interfaces = HashMap::new();
    for inst in &vpc.instances {
        if let Some(ifname) = &inst.interface
            && let Some(other) = interfaces.insert((inst.netns.clone(), ifname.clone()), &inst.name)
        {
            out.push(
                    Diagnostic::new(inst.span.clone(), format!("interface {ifname} is already instance \"{other}\"'s"))
                        .hint("each interface enforces one instance; give this one its own interface or netns"),
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
            Source::PrefixList(name) => vpc.prefix_list(name).map_or(0, |p| p.entries.len()),
            _ => 1,
        })
        .sum()
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
                Diagnostic::new(span, format!("{what} \"{name}\" is defined twice"))
                    .hint(format!("{what} names are unique; rename one")),
            );
        } else {
            first.insert(name, span);
        }
    }
}

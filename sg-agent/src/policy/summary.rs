//! One-line summaries of what a reload changed, for the operator's log.

use std::collections::BTreeSet;

use crate::config::{Vpc, rule_count};

/// E.g. `groups +1 -0 ~2, rules 12 -> 14, members +1 -0, interfaces +0 -0`.
pub fn changes(old: &Vpc, new: &Vpc) -> String {
    let names = |v: &Vpc| {
        v.groups
            .iter()
            .map(|g| g.name.clone())
            .collect::<BTreeSet<_>>()
    };
    let (og, ng) = (names(old), names(new));
    let changed = og
        .intersection(&ng)
        .filter(|n| {
            let (a, b) = (
                old.group(n).expect("present"),
                new.group(n).expect("present"),
            );
            format!("{:?}{:?}", strip(&a.ingress), strip(&a.egress))
                != format!("{:?}{:?}", strip(&b.ingress), strip(&b.egress))
        })
        .count();
    let members = |v: &Vpc| {
        v.instances
            .iter()
            .flat_map(|i| {
                i.groups
                    .iter()
                    .map(move |(g, _)| (i.name.clone(), g.clone(), i.addresses.clone()))
            })
            .collect::<BTreeSet<_>>()
    };
    let (om, nm) = (members(old), members(new));
    let ifaces = |v: &Vpc| {
        v.instances
            .iter()
            .filter_map(|i| i.link.as_ref().map(|l| (i.netns.clone(), l.to_string())))
            .collect::<BTreeSet<_>>()
    };
    let (oi, ni) = (ifaces(old), ifaces(new));
    let rules = |v: &Vpc| -> usize {
        v.groups
            .iter()
            .flat_map(|g| g.ingress.iter().chain(&g.egress))
            .map(|r| rule_count(v, r))
            .sum()
    };
    format!(
        "groups +{} -{} ~{changed}, rules {} -> {}, memberships +{} -{}, interfaces +{} -{}",
        ng.difference(&og).count(),
        og.difference(&ng).count(),
        rules(old),
        rules(new),
        nm.difference(&om).count(),
        om.difference(&nm).count(),
        ni.difference(&oi).count(),
        oi.difference(&ni).count(),
    )
}

/// Rules without their spans, which move when unrelated lines change.
fn strip(rules: &[crate::config::Rule]) -> Vec<String> {
    rules
        .iter()
        .map(|r| {
            let sources: Vec<String> = r.sources.iter().map(|s| s.source.to_string()).collect();
            format!("{} {} {:?}", r.protocol, r.ports, sources)
        })
        .collect()
}

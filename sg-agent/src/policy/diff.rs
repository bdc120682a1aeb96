//! `sg-agent diff OLD NEW`: per instance, the effective rules a change adds
//! and removes, as `terraform plan` shows a change before it is applied.
//!
//! Effective rules are what `check` prints: each rule of each of the
//! instance's groups, per source, with what the source stands for (a
//! referenced group's members' addresses, a prefix list's entries). So a
//! membership change shows as the rules whose addresses it changes, which
//! is what changes for the instance.

use std::{collections::BTreeSet, fmt::Write as _};

use serde::Serialize;

use crate::config::Vpc;

use super::report::{self, RuleReport};

/// One effective rule, as a line both sides can be compared by.
fn line(direction: &str, r: &RuleReport) -> String {
    let way = if direction == "ingress" { "from" } else { "to" };
    let mut text = format!("{direction} {} {} {way} {}", r.protocol, r.ports, r.source);
    if !r.addresses.is_empty() && r.addresses != [r.source.clone()] {
        let _ = write!(text, " ({})", r.addresses.join(", "));
    }
    text
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct InstanceDiff {
    pub instance: String,
    /// `added`, `removed` or `changed`.
    pub status: &'static str,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Its connection allowance, old and new, when the change lowers it:
    /// connections tracked beyond the new one are kept, and new flows are
    /// refused until the table drains to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowance_lowered: Option<(u32, u32)>,
}

#[derive(Debug, Default, Serialize)]
pub struct Diff {
    pub changed: bool,
    pub instances: Vec<InstanceDiff>,
}

/// Each instance's effective rules, and the entries of the network ACL
/// that filters its subnet (each entry a line, the `*` rule included: a
/// network ACL given to a subnet that had none shows as its entries added).
fn rules_of(vpc: &Vpc) -> Vec<(String, BTreeSet<String>)> {
    let report = report::report(vpc);
    let acls = &report.network_acls;
    report
        .instances
        .into_iter()
        .map(|i| {
            let acl_lines = i
                .network_acl
                .as_ref()
                .and_then(|name| acls.iter().find(|a| &a.name == name))
                .into_iter()
                .flat_map(|a| {
                    let entry = |way: &'static str| {
                        move |e: &report::AclEntryReport| {
                            let ports = if e.ports == "all" {
                                String::new()
                            } else {
                                format!(" {}", e.ports)
                            };
                            format!(
                                "network ACL {} {way} rule {}: {} {}{ports} {}",
                                a.name, e.rule, e.action, e.protocol, e.cidr
                            )
                        }
                    };
                    a.inbound
                        .iter()
                        .map(entry("inbound"))
                        .chain(a.outbound.iter().map(entry("outbound")))
                });
            // Where it is enforced: a move (a libvirt domain's NIC to a
            // host interface, another namespace) is a change too.
            let place = vpc
                .instances
                .iter()
                .find(|inst| inst.name == i.name)
                .and_then(|inst| {
                    let link = inst.link.as_ref()?;
                    Some(match &inst.netns {
                        Some(ns) => format!("enforced on {link} in netns {ns}"),
                        None => format!("enforced on {link}"),
                    })
                });
            let lines = i
                .inbound
                .iter()
                .map(|r| line("ingress", r))
                .chain(i.outbound.iter().map(|r| line("egress", r)))
                .chain(acl_lines)
                .chain(place)
                .collect();
            (i.name, lines)
        })
        .collect()
}

/// What changes from `old` to `new`, instance by instance.
pub fn diff(old: &Vpc, new: &Vpc) -> Diff {
    let allowance = |vpc: &Vpc, name: &str| {
        vpc.instances
            .iter()
            .find(|i| i.name == name)
            .map(|i| vpc.conntrack_of(i).max_tracked_connections)
    };
    let lowered = |name: &str| match (allowance(old, name), allowance(new, name)) {
        (Some(a), Some(b)) if b < a => Some((a, b)),
        _ => None,
    };
    let (old, new) = (rules_of(old), rules_of(new));
    let find = |v: &[(String, BTreeSet<String>)], name: &str| {
        v.iter().find(|(n, _)| n == name).map(|(_, r)| r.clone())
    };
    let names: BTreeSet<&String> = old.iter().chain(&new).map(|(n, _)| n).collect();
    let mut instances = Vec::new();
    for name in names {
        let (a, b) = (find(&old, name), find(&new, name));
        let status = match (&a, &b) {
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            _ => "changed",
        };
        let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
        let added: Vec<String> = b.difference(&a).cloned().collect();
        let removed: Vec<String> = a.difference(&b).cloned().collect();
        let allowance_lowered = lowered(name);
        if status != "changed"
            || !added.is_empty()
            || !removed.is_empty()
            || allowance_lowered.is_some()
        {
            instances.push(InstanceDiff {
                instance: name.clone(),
                status,
                added,
                removed,
                allowance_lowered,
            });
        }
    }
    Diff {
        changed: !instances.is_empty(),
        instances,
    }
}

/// The human form: `+` added, `-` removed, per instance.
pub fn render(d: &Diff) -> String {
    let mut out = String::new();
    for i in &d.instances {
        let _ = writeln!(out, "instance {} ({}):", i.instance, i.status);
        for r in &i.removed {
            let _ = writeln!(out, "  - {r}");
        }
        for r in &i.added {
            let _ = writeln!(out, "  + {r}");
        }
        if let Some((from, to)) = i.allowance_lowered {
            let _ = writeln!(
                out,
                "  ! connection allowance {from} -> {to}: if more than {to} connections are \
                 tracked when this is applied, they are kept and new flows are refused until no \
                 more than {to} remain"
            );
        }
    }
    if !d.changed {
        out.push_str("no change to any instance's effective rules\n");
    }
    out
}

/// At most `max_rules` of the diff's rule lines (a journal record has a
/// size bound too), and how many were left out.
pub fn bounded(d: &Diff, max_rules: usize) -> (Vec<InstanceDiff>, usize) {
    let mut left = max_rules;
    let mut omitted = 0;
    let mut out = Vec::new();
    for i in &d.instances {
        let mut take = |rules: &[String]| {
            let n = rules.len().min(left);
            left -= n;
            omitted += rules.len() - n;
            rules[..n].to_vec()
        };
        let (removed, added) = (take(&i.removed), take(&i.added));
        out.push(InstanceDiff {
            instance: i.instance.clone(),
            status: i.status,
            added,
            removed,
            allowance_lowered: i.allowance_lowered,
        });
    }
    (out, omitted)
}

/// The diff as lines to append to a reload's log message: nothing when no
/// instance's effective rules changed, else a newline and [`render`]'s
/// text, cut after `max_lines` with how many more there are (the whole
/// diff is in the JSON record, and `sg-agent diff OLD NEW` prints it).
pub fn excerpt(d: &Diff, max_lines: usize) -> String {
    if !d.changed {
        return String::new();
    }
    let text = render(d);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for l in lines.iter().take(max_lines) {
        out.push('\n');
        out.push_str(l);
    }
    if lines.len() > max_lines {
        let _ = write!(
            out,
            "\n  ... {} more lines (sg-agent diff OLD NEW prints them all)",
            lines.len() - max_lines
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = include_str!("../../../examples/seed-vpc.toml");

    fn vpc(text: &str) -> Vpc {
        crate::config::from_str("vpc.toml".as_ref(), text).expect("valid")
    }

    #[test]
    fn a_lowered_allowance_is_warned_of_and_a_raised_one_is_not() {
        let with = |n: u32| {
            vpc(&format!(
                "[conntrack]\nmax_tracked_connections = {n}\n{SEED}"
            ))
        };
        let d = diff(&with(1000), &with(100));
        assert!(d.changed);
        assert!(
            d.instances
                .iter()
                .all(|i| i.allowance_lowered == Some((1000, 100)))
        );
        assert!(
            render(&d).contains(
                "! connection allowance 1000 -> 100: if more than 100 connections are tracked"
            ),
            "{}",
            render(&d)
        );
        assert!(!diff(&with(100), &with(1000)).changed);
    }

    #[test]
    fn same_rules_no_change_and_a_removed_rule_shows_where_it_applied() {
        let seed = vpc(SEED);
        assert!(!diff(&seed, &seed).changed);
        // The seed's experiment: the ALB's inbound HTTP rule removed.
        let start = SEED
            .find("  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 80")
            .unwrap();
        let end = SEED[start..]
            .find("description = \"HTTP from the internet\"\n")
            .unwrap()
            + start
            + "description = \"HTTP from the internet\"\n".len();
        let without = vpc(&format!("{}{}", &SEED[..start], &SEED[end..]));
        let d = diff(&seed, &without);
        assert!(d.changed);
        assert_eq!(d.instances.len(), 1, "{}", render(&d));
        assert_eq!(d.instances[0].instance, "alb");
        assert_eq!(
            excerpt(&d, 10),
            "\ninstance alb (changed):\n  - ingress tcp 80 from 0.0.0.0/0\n  - ingress tcp 80 from ::/0"
        );
        assert_eq!(
            excerpt(&d, 2),
            "\ninstance alb (changed):\n  - ingress tcp 80 from 0.0.0.0/0\n  ... 1 more lines (sg-agent diff OLD NEW prints them all)"
        );
        let (kept, omitted) = bounded(&d, 1);
        assert_eq!((kept[0].removed.len(), omitted), (1, 1));
        assert_eq!(excerpt(&diff(&seed, &seed), 10), "");
        assert_eq!(
            d.instances[0].removed,
            ["ingress tcp 80 from 0.0.0.0/0", "ingress tcp 80 from ::/0"]
        );
        assert!(d.instances[0].added.is_empty());
        assert!(render(&d).contains("  - ingress tcp 80 from 0.0.0.0/0"));
        // And back: added.
        let back = diff(&without, &seed);
        assert_eq!(back.instances[0].added.len(), 2);
    }
}

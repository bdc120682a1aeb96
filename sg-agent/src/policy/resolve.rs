//! Each instance's effective rules: the union of its groups' rules, one per
//! source, with group references and prefix lists resolved to addresses.

use ipnet::IpNet;

use crate::config::{Direction, Instance, Rule, SecurityGroup, Source, Vpc};

/// One rule of one group, for one of its sources.
#[derive(Clone, Debug)]
pub struct EffectiveRule<'a> {
    pub direction: Direction,
    pub group: &'a SecurityGroup,
    /// 1-based position of the rule among the group's rules of this direction.
    pub rule_number: usize,
    pub rule: &'a Rule,
    pub source: &'a Source,
    /// What the source stands for: CIDR blocks, or host prefixes of the
    /// members of a referenced group.
    pub prefixes: Vec<IpNet>,
}

/// Host prefixes (/32, /128) of every address of every member of `group`,
/// and the prefixes delegated to them.
pub fn members(vpc: &Vpc, group: &str) -> Vec<IpNet> {
    vpc.instances
        .iter()
        .filter(|i| i.in_group(group))
        .flat_map(Instance::nets)
        .collect()
}

/// What one source of a rule of `group` stands for.
pub fn resolve_source(vpc: &Vpc, group: &str, source: &Source) -> Vec<IpNet> {
    match source {
        Source::Cidr(net) => vec![*net],
        Source::PrefixList(name) => vpc
            .prefix_list(name)
            .map(|p| p.entries.clone())
            .unwrap_or_default(),
        // A group of a VPC not peered with this group's: a stale
        // reference, which stands for nothing.
        Source::Group(name) if vpc.stale_reference(group, name).is_some() => Vec::new(),
        Source::Group(name) => members(vpc, name),
        Source::SelfGroup => members(vpc, group),
    }
}

/// The effective rules of `instance` in both directions, in file order of
/// its groups, their rules and the rules' sources.
pub fn effective_rules<'a>(vpc: &'a Vpc, instance: &Instance) -> Vec<EffectiveRule<'a>> {
    let mut out = Vec::new();
    for (name, _) in &instance.groups {
        let Some(group) = vpc.group(name) else {
            continue;
        };
        for (direction, rules) in [
            (Direction::Ingress, &group.ingress),
            (Direction::Egress, &group.egress),
        ] {
            for (i, rule) in rules.iter().enumerate() {
                for s in &rule.sources {
                    out.push(EffectiveRule {
                        direction,
                        group,
                        rule_number: i + 1,
                        rule,
                        source: &s.source,
                        prefixes: resolve_source(vpc, &group.name, &s.source),
                    });
                }
            }
        }
    }
    out
}

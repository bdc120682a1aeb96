//! Each instance's effective rules: the union of its groups' rules, one per
//! source, with group references and prefix lists resolved to addresses.

use std::collections::HashMap;

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

/// Every group's members' prefixes (see [`members`]), gathered in one pass
/// over the instances: compiling thousands of instances asks for the same
/// groups' members thousands of times.
#[derive(Debug, Default)]
pub struct Members(HashMap<String, Vec<IpNet>>);

impl Members {
    pub fn of(vpc: &Vpc) -> Self {
        let mut out: HashMap<String, Vec<IpNet>> = HashMap::new();
        for inst in &vpc.instances {
            // An instance that names a group twice is one member.
            let mut named: Vec<&str> = Vec::new();
            for (group, _) in &inst.groups {
                if named.contains(&group.as_str()) {
                    continue;
                }
                named.push(group);
                out.entry(group.clone()).or_default().extend(inst.nets());
            }
        }
        Self(out)
    }

    pub fn get(&self, group: &str) -> Vec<IpNet> {
        self.0.get(group).cloned().unwrap_or_default()
    }
}

/// What one source of a rule of `group` stands for.
pub fn resolve_source(vpc: &Vpc, group: (&str, Direction), source: &Source) -> Vec<IpNet> {
    resolve_source_with(vpc, group, source, None)
}

/// [`resolve_source`], with the members gathered already.
fn resolve_source_with(
    vpc: &Vpc,
    (group, direction): (&str, Direction),
    source: &Source,
    members_of: Option<&Members>,
) -> Vec<IpNet> {
    let members = |name: &str| match members_of {
        Some(m) => m.get(name),
        None => members(vpc, name),
    };
    match source {
        Source::Cidr(net) => vec![*net],
        Source::PrefixList(name) => vpc
            .prefix_list(name)
            .map(|p| p.entries.clone())
            .unwrap_or_default(),
        // A group of a VPC not peered with this group's: a stale
        // reference, which stands for nothing.
        Source::Group(name) if vpc.stale_reference(group, name, direction).is_some() => Vec::new(),
        Source::Group(name) => members(name),
        Source::SelfGroup => members(group),
    }
}

/// The effective rules of `instance` in both directions, in file order of
/// its groups, their rules and the rules' sources.
pub fn effective_rules<'a>(vpc: &'a Vpc, instance: &Instance) -> Vec<EffectiveRule<'a>> {
    effective_rules_with(vpc, instance, None)
}

/// [`effective_rules`], with the members gathered already.
pub fn effective_rules_with<'a>(
    vpc: &'a Vpc,
    instance: &Instance,
    members_of: Option<&Members>,
) -> Vec<EffectiveRule<'a>> {
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
                        prefixes: resolve_source_with(
                            vpc,
                            (&group.name, direction),
                            &s.source,
                            members_of,
                        ),
                    });
                }
            }
        }
    }
    out
}

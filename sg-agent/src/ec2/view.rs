//! The rules file as EC2's API shows it: every group, rule, instance,
//! VPC, subnet and prefix list with its AWS id, and each rule split into
//! AWS's rules (one per source, IPv4 and IPv6 apart).

use ipnet::IpNet;

use super::ids;
use crate::config::{
    Direction, Instance, Ports, PrefixList, Protocol, Rule, SecurityGroup, Source, Vpc,
};

/// Who owns everything here (EC2's `OwnerId`), and where it is.
#[derive(Clone, Debug)]
pub struct Account {
    pub id: String,
    pub region: String,
}

/// The file, read and admitted, as the API sees it.
pub struct View<'a> {
    pub vpc: &'a Vpc,
    pub account: &'a Account,
}

/// One AWS rule: one source of one rule block of the file.
#[derive(Clone, Debug)]
pub struct ApiRule {
    pub id: String,
    /// Index of its group in `Vpc::groups`.
    pub group: usize,
    pub direction: Direction,
    /// Index of its block in the group's `ingress`/`egress`.
    pub block: usize,
    /// Index of the source in the block's `sources`.
    pub source: usize,
    /// The block has no `id` for this source: the id is derived.
    pub derived_id: bool,
    /// The group's default egress, from no `egress` key.
    pub implicit: bool,
    pub protocol: Protocol,
    pub ports: Ports,
    pub target: Target,
    pub description: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// A rule's source (ingress) or destination (egress), as the API names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    V4(String),
    V6(String),
    PrefixList(String),
    Group {
        id: String,
        name: String,
        vpc_id: String,
    },
}

impl Target {
    /// The same source, for the duplicate check (a group by id).
    pub fn key(&self) -> String {
        match self {
            Self::V4(c) | Self::V6(c) => c.clone(),
            Self::PrefixList(p) => p.clone(),
            Self::Group { id, .. } => id.clone(),
        }
    }
}

impl<'a> View<'a> {
    pub fn new(vpc: &'a Vpc, account: &'a Account) -> Self {
        Self { vpc, account }
    }

    pub fn vpc_id(&self, name: &str) -> String {
        ids::derived("vpc", &[if name.is_empty() { "default" } else { name }])
    }

    pub fn group_id(&self, g: &SecurityGroup) -> String {
        match &g.id {
            Some((id, _)) => id.clone(),
            None => ids::derived("sg", &[self.vpc.vpc_of_group(g), &g.name]),
        }
    }

    pub fn group_vpc_id(&self, g: &SecurityGroup) -> String {
        self.vpc_id(self.vpc.vpc_of_group(g))
    }

    pub fn group_arn(&self, id: &str) -> String {
        format!(
            "arn:aws:ec2:{}:{}:security-group/{id}",
            self.account.region, self.account.id
        )
    }

    pub fn rule_arn(&self, id: &str) -> String {
        format!(
            "arn:aws:ec2:{}:{}:security-group-rule/{id}",
            self.account.region, self.account.id
        )
    }

    /// The group with this id (or, where the caller allows, name).
    pub fn group_by_id(&self, id: &str) -> Option<usize> {
        self.vpc.groups.iter().position(|g| self.group_id(g) == id)
    }

    /// Groups named `name` (case-insensitively, as AWS compares names),
    /// in the VPC `vpc_name` when given.
    pub fn group_by_name(&self, name: &str, vpc_name: Option<&str>) -> Option<usize> {
        self.vpc.groups.iter().position(|g| {
            g.name.eq_ignore_ascii_case(name)
                && vpc_name.is_none_or(|v| self.vpc.vpc_of_group(g) == v)
        })
    }

    pub fn prefix_list_id(&self, p: &PrefixList) -> String {
        match &p.id {
            Some((id, _)) => id.clone(),
            None => ids::derived("pl", &[&p.name]),
        }
    }

    /// A prefix list by the name the file uses or by its id.
    pub fn prefix_list(&self, name_or_id: &str) -> Option<usize> {
        self.vpc
            .prefix_lists
            .iter()
            .position(|p| p.name == name_or_id || self.prefix_list_id(p) == name_or_id)
    }

    pub fn instance_id(&self, i: &Instance) -> String {
        i.aws_id()
    }

    /// An instance's one network interface (AWS's primary one).
    pub fn eni_id(&self, i: &Instance) -> String {
        ids::derived("eni", &[&self.instance_id(i)])
    }

    pub fn instance_by_id(&self, id: &str) -> Option<usize> {
        self.vpc
            .instances
            .iter()
            .position(|i| self.instance_id(i) == id)
    }

    pub fn instance_by_eni(&self, id: &str) -> Option<usize> {
        self.vpc.instances.iter().position(|i| self.eni_id(i) == id)
    }

    /// The VPC's subnets: `[[subnet]]`, or each IPv4 range of the VPC.
    pub fn subnets(&self) -> Vec<IpNet> {
        if self.vpc.subnets.is_empty() {
            self.vpc
                .cidr_blocks
                .iter()
                .chain(self.vpc.vpcs.iter().flat_map(|v| v.cidr_blocks.iter()))
                .filter(|n| matches!(n, IpNet::V4(_)))
                .copied()
                .collect()
        } else {
            self.vpc.subnets.iter().map(|s| s.cidr).collect()
        }
    }

    pub fn subnet_id(&self, net: &IpNet) -> String {
        ids::derived("subnet", &[&net.to_string()])
    }

    /// The subnet holding an instance's first IPv4 address.
    pub fn subnet_of(&self, i: &Instance) -> Option<IpNet> {
        let subnets = self.subnets();
        i.addresses
            .iter()
            .find_map(|a| subnets.iter().find(|s| s.contains(a)).copied())
    }

    /// The group's rules in one direction, as AWS's rules.
    pub fn rules(&self, gi: usize, direction: Direction) -> Vec<ApiRule> {
        let g = &self.vpc.groups[gi];
        let gid = self.group_id(g);
        let blocks = match direction {
            Direction::Ingress => &g.ingress,
            Direction::Egress => &g.egress,
        };
        let mut out = Vec::new();
        for (bi, rule) in blocks.iter().enumerate() {
            for (si, src) in rule.sources.iter().enumerate() {
                let target = self.target(g, &gid, &src.source);
                let explicit = rule
                    .id
                    .as_ref()
                    .filter(|_| si == 0)
                    .map(|(id, _)| id.clone());
                let id = explicit.clone().unwrap_or_else(|| {
                    ids::derived(
                        "sgr",
                        &[
                            &gid,
                            direction.as_str(),
                            &rule.protocol.to_string(),
                            &rule.ports.to_string(),
                            &target.key(),
                        ],
                    )
                });
                out.push(ApiRule {
                    id,
                    group: gi,
                    direction,
                    block: bi,
                    source: si,
                    derived_id: explicit.is_none(),
                    implicit: rule.implicit,
                    protocol: rule.protocol,
                    ports: rule.ports,
                    target,
                    description: rule.description.clone().filter(|_| !rule.implicit),
                    tags: rule.tags.clone(),
                });
            }
        }
        out
    }

    /// Every rule of every group.
    pub fn all_rules(&self) -> Vec<ApiRule> {
        (0..self.vpc.groups.len())
            .flat_map(|gi| {
                let mut r = self.rules(gi, Direction::Ingress);
                r.extend(self.rules(gi, Direction::Egress));
                r
            })
            .collect()
    }

    fn target(&self, g: &SecurityGroup, gid: &str, source: &Source) -> Target {
        match source {
            Source::Cidr(IpNet::V4(n)) => Target::V4(n.to_string()),
            Source::Cidr(IpNet::V6(n)) => Target::V6(n.to_string()),
            Source::PrefixList(name) => Target::PrefixList(self.prefix_list(name).map_or_else(
                || name.clone(),
                |i| self.prefix_list_id(&self.vpc.prefix_lists[i]),
            )),
            Source::SelfGroup => Target::Group {
                id: gid.to_owned(),
                name: g.name.clone(),
                vpc_id: self.group_vpc_id(g),
            },
            Source::Group(name) => match self.vpc.groups.iter().find(|o| &o.name == name) {
                Some(o) => Target::Group {
                    id: self.group_id(o),
                    name: o.name.clone(),
                    vpc_id: self.group_vpc_id(o),
                },
                None => Target::Group {
                    id: name.clone(),
                    name: name.clone(),
                    vpc_id: String::new(),
                },
            },
        }
    }

    /// Which instances use the group, and which other groups' rules
    /// reference it (what `DeleteSecurityGroup` refuses for).
    pub fn users(&self, gi: usize) -> (Vec<&Instance>, Vec<String>) {
        let g = &self.vpc.groups[gi];
        let instances = self
            .vpc
            .instances
            .iter()
            .filter(|i| {
                i.in_group(&g.name) && self.vpc.vpc_of_instance(i) == self.vpc.vpc_of_group(g)
            })
            .collect();
        let gid = self.group_id(g);
        let referencing = self
            .all_rules()
            .into_iter()
            .filter(|r| {
                r.group != gi && matches!(&r.target, Target::Group { id, .. } if *id == gid)
            })
            .map(|r| self.group_id(&self.vpc.groups[r.group]))
            .collect();
        (instances, referencing)
    }
}

/// The API's protocol name for a rule: `-1`, `tcp`, `udp`, `icmp`,
/// `icmpv6`, or the number.
pub fn api_protocol(p: Protocol) -> String {
    match p {
        Protocol::All => "-1".to_owned(),
        Protocol::Number(6) => "tcp".to_owned(),
        Protocol::Number(17) => "udp".to_owned(),
        Protocol::Number(1) => "icmp".to_owned(),
        Protocol::Number(58) => "icmpv6".to_owned(),
        Protocol::Number(n) => n.to_string(),
    }
}

/// The API's `FromPort`/`ToPort`: `None` where AWS leaves them out of an
/// `IpPermission` (protocol -1); -1 for "any" ICMP type or code.
pub fn api_ports(protocol: Protocol, ports: Ports) -> Option<(i32, i32)> {
    match (protocol, ports) {
        (Protocol::All, _) => None,
        (_, Ports::Range { from, to }) => Some((i32::from(from), i32::from(to))),
        (_, Ports::Icmp { ty, code }) => {
            Some((ty.map_or(-1, i32::from), code.map_or(-1, i32::from)))
        }
        (Protocol::Number(6 | 17), Ports::All) => Some((0, 65535)),
        (_, Ports::All) => Some((-1, -1)),
    }
}

/// Whether a block holds exactly this one rule.
pub fn single_source(rule: &Rule) -> bool {
    rule.sources.len() == 1
}

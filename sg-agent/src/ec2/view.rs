//! The rules file as EC2's API shows it: every group, rule, instance,
//! VPC, subnet and prefix list with its AWS id, and each rule split into
//! AWS's rules (one per source, IPv4 and IPv6 apart).

use ipnet::IpNet;

use super::ids;
use crate::config::{
    AclEntry, Direction, Instance, Ports, PrefixList, Protocol, Rule, SecurityGroup, Source, Vpc,
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

    /// A subnet's id: the one the file keeps (an importer's), else one
    /// derived from its range.
    pub fn subnet_id(&self, net: &IpNet) -> String {
        self.vpc
            .subnets
            .iter()
            .find(|s| s.cidr == *net)
            .and_then(|s| s.id.as_ref().map(|(id, _)| id.clone()))
            .unwrap_or_else(|| ids::derived("subnet", &[&net.to_string()]))
    }

    /// The VPC a subnet (by its range) is in: its `vpc`, else the VPC
    /// whose ranges hold it, else the default one.
    pub fn vpc_of_subnet(&self, net: &IpNet) -> String {
        if let Some(s) = self.vpc.subnets.iter().find(|s| s.cidr == *net) {
            return s
                .vpc
                .clone()
                .unwrap_or_else(|| self.vpc.default_vpc().to_owned());
        }
        self.vpc
            .vpcs
            .iter()
            .find(|v| v.cidr_blocks.iter().any(|b| b.contains(net)))
            .map_or_else(|| self.vpc.default_vpc().to_owned(), |v| v.name.clone())
    }

    /// The VPCs by name ("" for the file's single unnamed one).
    pub fn vpc_names(&self) -> Vec<String> {
        if self.vpc.vpcs.is_empty() {
            vec![String::new()]
        } else {
            self.vpc.vpcs.iter().map(|v| v.name.clone()).collect()
        }
    }

    /// Whether VPC `name` has an IPv6 range (its default network ACL then
    /// allows `::/0` too).
    pub fn vpc_has_ipv6(&self, name: &str) -> bool {
        let ranges: &[IpNet] = if self.vpc.vpcs.is_empty() {
            &self.vpc.cidr_blocks
        } else {
            self.vpc
                .vpcs
                .iter()
                .find(|v| v.name == name)
                .map_or(&[], |v| v.cidr_blocks.as_slice())
        };
        ranges.iter().any(|r| r.addr().is_ipv6())
    }

    /// Every network ACL as the API shows it: the file's, and for each VPC
    /// whose default the file does not declare, AWS's default one (every
    /// packet allowed), holding the subnets no other network ACL names.
    pub fn network_acls(&self) -> Vec<ApiAcl> {
        let mut out = Vec::new();
        let vpc_of = |a: &crate::config::NetworkAcl| {
            a.vpc
                .clone()
                .unwrap_or_else(|| self.vpc.default_vpc().to_owned())
        };
        let subnets = self.subnets();
        let named = |n: &str| {
            self.vpc
                .subnets
                .iter()
                .find(|s| s.name.as_deref() == Some(n))
                .map(|s| s.cidr)
        };
        // Subnets some non-default network ACL names.
        let taken: Vec<IpNet> = self
            .vpc
            .network_acls
            .iter()
            .filter(|a| !a.default)
            .flat_map(|a| a.subnets.iter().filter_map(|(n, _)| named(n)))
            .collect();
        let rest_of = |vpc: &str| -> Vec<IpNet> {
            subnets
                .iter()
                .filter(|s| !taken.contains(s) && self.vpc_of_subnet(s) == vpc)
                .copied()
                .collect()
        };
        for a in &self.vpc.network_acls {
            let vpc = vpc_of(a);
            let subnets = if a.default {
                rest_of(&vpc)
            } else {
                a.subnets.iter().filter_map(|(n, _)| named(n)).collect()
            };
            let entries = a
                .ingress
                .iter()
                .map(|e| (false, e.clone()))
                .chain(a.egress.iter().map(|e| (true, e.clone())))
                .collect();
            out.push(ApiAcl {
                id: a.id.as_ref().map_or_else(
                    || ids::derived("acl", &[&vpc, &a.name]),
                    |(id, _)| id.clone(),
                ),
                name: Some(a.name.clone()),
                has_ipv6: self.vpc_has_ipv6(&vpc),
                vpc,
                default: a.default,
                entries,
                subnets,
                tags: a.tags.clone(),
            });
        }
        for vpc in self.vpc_names() {
            if out.iter().any(|a| a.default && a.vpc == vpc) {
                continue;
            }
            let has_ipv6 = self.vpc_has_ipv6(&vpc);
            out.push(ApiAcl {
                id: default_acl_id(&vpc),
                name: None,
                default: true,
                entries: default_entries(has_ipv6),
                subnets: rest_of(&vpc),
                tags: Vec::new(),
                has_ipv6,
                vpc,
            });
        }
        out
    }

    pub fn network_acl(&self, id: &str) -> Option<ApiAcl> {
        self.network_acls().into_iter().find(|a| a.id == id)
    }

    /// A subnet's association id with its network ACL (one per subnet:
    /// AWS gives a new one as the subnet changes network ACL).
    pub fn acl_association_id(&self, acl: &ApiAcl, subnet: &IpNet) -> String {
        ids::derived("aclassoc", &[&acl.id, &self.subnet_id(subnet)])
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
                i.in_group(&g.name)
                    && self
                        .vpc
                        .vpcs_of_group(g)
                        .any(|v| v == self.vpc.vpc_of_instance(i))
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

/// A network ACL as the API shows it.
#[derive(Clone, Debug)]
pub struct ApiAcl {
    pub id: String,
    /// Its `[[network_acl]]` table's name; `None`: AWS's default one, which
    /// the file does not declare.
    pub name: Option<String>,
    /// Its VPC's name.
    pub vpc: String,
    pub default: bool,
    /// `(egress, entry)`, in the file's order.
    pub entries: Vec<(bool, AclEntry)>,
    pub subnets: Vec<IpNet>,
    pub tags: Vec<(String, String)>,
    /// Its VPC has an IPv6 range: the `*` rules cover `::/0` too.
    pub has_ipv6: bool,
}

/// The id of the default network ACL of VPC `vpc` the file does not declare.
pub fn default_acl_id(vpc: &str) -> String {
    ids::derived(
        "acl",
        &[if vpc.is_empty() { "default" } else { vpc }, "default"],
    )
}

/// AWS's default network ACL's entries: rule 100 allows everything, in
/// each direction (rule 101 for IPv6 where the VPC has it).
pub fn default_entries(has_ipv6: bool) -> Vec<(bool, AclEntry)> {
    let mut out = Vec::new();
    for egress in [false, true] {
        let all = |rule_no, cidr: &str| AclEntry {
            rule_no,
            allow: true,
            protocol: Protocol::All,
            ports: Ports::All,
            cidr: cidr.parse().expect("a constant range"),
            span: 0..0,
        };
        out.push((egress, all(100, "0.0.0.0/0")));
        if has_ipv6 {
            out.push((egress, all(101, "::/0")));
        }
    }
    out
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

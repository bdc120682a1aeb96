//! Subnets and their network ACLs, as the rules file declares them
//! (Terraform's `aws_subnet` and `aws_network_acl` vocabulary).
//!
//! A network ACL is a subnet's stateless filter: its entries in rule-number
//! order, the first that matches decides (allow or deny), the `*` rule
//! denies what none matched; it judges only traffic that crosses the
//! subnet's boundary. A subnet no network ACL names has its VPC's default
//! one, which allows everything unless the file gives it rules
//! (`default = true`).

use std::net::IpAddr;

use ipnet::IpNet;

use super::model::{Instance, Ports, Protocol, Span, Vpc};

/// `[[subnet]]`.
#[derive(Clone, Debug)]
pub struct Subnet {
    /// `name`: how network ACLs and instances (`subnet = "NAME"`) name it.
    pub name: Option<String>,
    /// AWS's subnet id (`subnet-`), kept by the importers; optional.
    pub id: Option<(String, Span)>,
    /// `cidr_block`: its IPv4 range (AWS: /16 to /28).
    pub cidr: IpNet,
    /// `ipv6_cidr_block`: its IPv6 range (AWS: a /64 in this generation of
    /// the API; /44 to /64 accepted), if it has one.
    pub ipv6: Option<IpNet>,
    /// `vpc`: the VPC it is in; `None`: the default one.
    pub vpc: Option<String>,
    pub span: Span,
}

impl Subnet {
    /// Whether `addr` is in one of its ranges.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.cidr.contains(&addr) || self.ipv6.is_some_and(|n| n.contains(&addr))
    }
}

/// `[[network_acl]]`.
#[derive(Clone, Debug)]
pub struct NetworkAcl {
    pub name: String,
    /// AWS's network ACL id (`acl-`), kept by the importers; optional.
    pub id: Option<(String, Span)>,
    /// `default = true`: the VPC's default network ACL, which every subnet
    /// no other network ACL names is in.
    pub default: bool,
    /// `vpc`: the VPC it belongs to; `None`: the default one.
    pub vpc: Option<String>,
    /// `subnets`: the subnets it is associated with, by name.
    pub subnets: Vec<(String, Span)>,
    /// `[[network_acl.ingress]]`, `[[network_acl.egress]]`: sorted by
    /// rule number.
    pub ingress: Vec<AclEntry>,
    pub egress: Vec<AclEntry>,
    pub tags: Vec<(String, String)>,
    pub span: Span,
}

impl NetworkAcl {
    /// Its entries of `direction` (ingress: inbound).
    pub fn entries(&self, direction: super::Direction) -> &[AclEntry] {
        match direction {
            super::Direction::Ingress => &self.ingress,
            super::Direction::Egress => &self.egress,
        }
    }
}

/// One numbered rule of a network ACL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclEntry {
    /// `rule_no`: 1 to 32766; the lowest that matches decides.
    pub rule_no: u16,
    /// `action`: allow (`true`) or deny.
    pub allow: bool,
    pub protocol: Protocol,
    /// TCP and UDP: the destination port range (of every packet, answers
    /// included); ICMP: `icmp_type`/`icmp_code`; else every port.
    pub ports: Ports,
    /// `cidr_block` or `ipv6_cidr_block`: the remote range.
    pub cidr: IpNet,
    pub span: Span,
}

impl AclEntry {
    /// "allow" or "deny".
    pub fn action(&self) -> &'static str {
        if self.allow { "allow" } else { "deny" }
    }
}

impl std::fmt::Display for AclEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.rule_no, self.action(), self.protocol)?;
        if self.ports != Ports::All {
            write!(f, " {}", self.ports)?;
        }
        write!(f, " {}", self.cidr)
    }
}

/// AWS's quota of rules per network ACL and direction (adjustable to 40).
pub const DEFAULT_RULES_PER_NETWORK_ACL: usize = 20;
/// The most a quota increase gives.
pub const MAX_RULES_PER_NETWORK_ACL: usize = sg_common::nacl::NACL_ENTRIES;
/// The highest rule number AWS accepts (32767 is the `*` rule).
pub const MAX_RULE_NO: u16 = 32766;

impl Vpc {
    /// The subnet `instance` is in: the one it names (`subnet`), else the
    /// first whose range holds one of its addresses.
    pub fn subnet_of(&self, instance: &Instance) -> Option<&Subnet> {
        if let Some((name, _)) = &instance.subnet {
            return self
                .subnets
                .iter()
                .find(|s| s.name.as_deref() == Some(name.as_str()));
        }
        let vpc = instance
            .vpc
            .as_deref()
            .unwrap_or_else(|| self.default_vpc());
        let in_vpc = |s: &&Subnet| s.vpc.as_deref().unwrap_or_else(|| self.default_vpc()) == vpc;
        instance
            .addresses
            .iter()
            .find_map(|&a| self.subnets.iter().filter(in_vpc).find(|s| s.contains(a)))
    }

    /// The network ACL that filters `subnet`: the one naming it, else its
    /// VPC's default one if the file declares it. `None`: AWS's default,
    /// which allows everything.
    pub fn network_acl_of(&self, subnet: &Subnet) -> Option<&NetworkAcl> {
        let name = subnet.name.as_deref();
        if let Some(acl) = self
            .network_acls
            .iter()
            .find(|a| name.is_some_and(|n| a.subnets.iter().any(|(s, _)| s == n)))
        {
            return Some(acl);
        }
        let vpc = subnet.vpc.as_deref().unwrap_or_else(|| self.default_vpc());
        self.network_acls
            .iter()
            .find(|a| a.default && a.vpc.as_deref().unwrap_or_else(|| self.default_vpc()) == vpc)
    }

    /// The subnet and network ACL that filter `instance`'s traffic across
    /// its subnet's boundary, if a network ACL does.
    pub fn network_acl_for(&self, instance: &Instance) -> Option<(&Subnet, &NetworkAcl)> {
        let subnet = self.subnet_of(instance)?;
        Some((subnet, self.network_acl_of(subnet)?))
    }
}

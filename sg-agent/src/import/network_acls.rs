//! Subnets and network ACLs in the AWS CLI's shapes (`aws ec2
//! describe-subnets`, `aws ec2 describe-network-acls`), to the rules file
//! and back. `import terraform` converts its resources to these shapes
//! and renders them here too.
//!
//! Decisions:
//! * Each subnet is named by its `Name` tag where that is unique and a
//!   usable name, else by its id; its id is kept as `id`.
//! * Each network ACL keeps its entries in rule-number order; AWS's `*`
//!   rules (number 32767) are implicit in the file and left out.
//! * A subnet a network ACL is associated with that the subnets' input does
//!   not describe has no range here: the association cannot be carried over
//!   (the subnet's instances would go unfiltered by it) and is named as such.
//! * More than 20 entries in a direction (a raised quota): `[limits]
//!   rules_per_network_acl` is written to match.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

use super::aws::Tag;
use crate::config::{AclEntry, Ports, Protocol, Vpc};

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkAcls {
    pub network_acls: Vec<NetworkAcl>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkAcl {
    pub network_acl_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default)]
    pub is_default: bool,
    #[serde(default)]
    pub entries: Vec<Entry>,
    #[serde(default)]
    pub associations: Vec<Association>,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Entry {
    pub rule_number: i64,
    pub protocol: String,
    pub rule_action: String,
    pub egress: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_block: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_cidr_block: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type_code: Option<IcmpTypeCode>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortRange {
    pub from: i64,
    pub to: i64,
}

#[derive(Debug, Default, Clone, Copy, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IcmpTypeCode {
    #[serde(rename = "Type")]
    pub ty: i64,
    pub code: i64,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Association {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_acl_association_id: Option<String>,
    pub network_acl_id: String,
    pub subnet_id: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Subnets {
    pub subnets: Vec<Subnet>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Subnet {
    pub subnet_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    pub cidr_block: String,
    #[serde(default)]
    pub ipv6_cidr_block_association_set: Vec<Ipv6Association>,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipv6Association {
    pub ipv6_cidr_block: String,
}

/// AWS's number for the `*` rule.
const STAR: i64 = 32767;

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn name_tag(tags: &[Tag]) -> Option<&str> {
    tags.iter()
        .find(|t| t.key == "Name")
        .map(|t| t.value.as_str())
        .filter(|n| !n.is_empty() && !n.chars().any(char::is_control))
}

/// The name each subnet and network ACL gets in the file: its `Name` tag
/// where unique among its kind, else its id.
fn names<'a>(items: impl Iterator<Item = (&'a str, Option<&'a str>)>) -> BTreeMap<String, String> {
    let items: Vec<(&str, Option<&str>)> = items.collect();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, n) in &items {
        if let Some(n) = n {
            *count.entry(n).or_default() += 1;
        }
    }
    items
        .iter()
        .map(|(id, n)| {
            let name = n.filter(|n| count[n] == 1).unwrap_or(id);
            ((*id).to_owned(), name.to_owned())
        })
        .collect()
}

/// Protocol as the file writes it (AWS gives numbers, `-1` for all;
/// Terraform names too).
fn protocol(p: &str) -> String {
    match p.to_ascii_lowercase().as_str() {
        "-1" | "all" => "all".to_owned(),
        "6" | "tcp" => "tcp".to_owned(),
        "17" | "udp" => "udp".to_owned(),
        "1" | "icmp" => "icmp".to_owned(),
        "58" | "icmpv6" => "icmpv6".to_owned(),
        other => other.to_owned(),
    }
}

/// `[[subnet]]` and `[[network_acl]]` tables for `acls` and `subnets`;
/// what cannot be carried over goes to `lost` (named, with why). `vpcs`:
/// the VPC ids the file declares as `[[vpc]]` (empty: one VPC, unnamed).
pub fn render(
    acls: &NetworkAcls,
    subnets: &Subnets,
    vpcs: &[&str],
    lost: &mut Vec<String>,
) -> String {
    let mut out = String::new();
    let subnet_names = names(
        subnets
            .subnets
            .iter()
            .map(|s| (s.subnet_id.as_str(), name_tag(&s.tags))),
    );
    let acl_names = names(
        acls.network_acls
            .iter()
            .map(|a| (a.network_acl_id.as_str(), name_tag(&a.tags))),
    );
    let vpc_line = |out: &mut String, vpc: Option<&String>| {
        if let Some(v) = vpc.filter(|v| vpcs.contains(&v.as_str())) {
            let _ = writeln!(out, "vpc = {}", quote(v));
        }
    };
    let most = acls
        .network_acls
        .iter()
        .flat_map(|a| {
            [true, false].map(|egress| {
                a.entries
                    .iter()
                    .filter(|e| e.egress == egress && e.rule_number != STAR)
                    .count()
            })
        })
        .max()
        .unwrap_or(0);
    if most > crate::config::network_acl::DEFAULT_RULES_PER_NETWORK_ACL {
        let _ = writeln!(
            out,
            "\n# A network ACL has {most} rules in a direction (AWS's quota raised).\n[limits]\nrules_per_network_acl = {}",
            most.min(crate::config::network_acl::MAX_RULES_PER_NETWORK_ACL)
        );
    }
    for s in &subnets.subnets {
        let _ = writeln!(
            out,
            "\n[[subnet]]\nname = {}",
            quote(&subnet_names[&s.subnet_id])
        );
        if crate::config::is_aws_id("subnet", &s.subnet_id) {
            let _ = writeln!(out, "id = {}", quote(&s.subnet_id));
        }
        vpc_line(&mut out, s.vpc_id.as_ref());
        let _ = writeln!(out, "cidr_block = {}", quote(&s.cidr_block));
        if let Some(v6) = s.ipv6_cidr_block_association_set.first() {
            let _ = writeln!(out, "ipv6_cidr_block = {}", quote(&v6.ipv6_cidr_block));
        }
    }
    for a in &acls.network_acls {
        let name = &acl_names[&a.network_acl_id];
        let _ = writeln!(out, "\n[[network_acl]]\nname = {}", quote(name));
        if crate::config::is_aws_id("acl", &a.network_acl_id) {
            let _ = writeln!(out, "id = {}", quote(&a.network_acl_id));
        }
        if a.is_default {
            out.push_str("default = true\n");
        }
        vpc_line(&mut out, a.vpc_id.as_ref());
        let mut members = Vec::new();
        for assoc in &a.associations {
            match subnet_names.get(&assoc.subnet_id) {
                Some(n) => members.push(quote(n)),
                None => lost.push(format!(
                    "network ACL {name}: its association with subnet {} (the subnet is not \
                     described: pass `aws ec2 describe-subnets` output with --subnets; its \
                     instances would go unfiltered by the network ACL)",
                    assoc.subnet_id
                )),
            }
        }
        if !members.is_empty() {
            let _ = writeln!(out, "subnets = [{}]", members.join(", "));
        }
        let mut entries: Vec<&Entry> = a.entries.iter().filter(|e| e.rule_number != STAR).collect();
        entries.sort_by_key(|e| (e.egress, e.rule_number));
        for e in entries {
            entry(&mut out, e, name, lost);
        }
    }
    out
}

fn entry(out: &mut String, e: &Entry, acl: &str, lost: &mut Vec<String>) {
    let direction = if e.egress { "egress" } else { "ingress" };
    let cidr = match (&e.cidr_block, &e.ipv6_cidr_block) {
        (Some(c), _) => format!("cidr_block = {}", quote(c)),
        (None, Some(c)) => format!("ipv6_cidr_block = {}", quote(c)),
        (None, None) => {
            lost.push(format!(
                "network ACL {acl}: {direction} rule {} has no CIDR block",
                e.rule_number
            ));
            return;
        }
    };
    let action = e.rule_action.to_ascii_lowercase();
    let protocol = protocol(&e.protocol);
    let _ = writeln!(
        out,
        "  [[network_acl.{direction}]]\n  rule_no = {}\n  action = {}\n  protocol = {}",
        e.rule_number,
        quote(&action),
        quote(&protocol)
    );
    match protocol.as_str() {
        "tcp" | "udp" => {
            let (from, to) = e.port_range.map_or((0, 65535), |r| (r.from, r.to));
            let _ = writeln!(out, "  from_port = {from}\n  to_port = {to}");
        }
        "icmp" | "icmpv6" => {
            if let Some(ic) = e.icmp_type_code.filter(|ic| ic.ty >= 0) {
                let _ = writeln!(out, "  icmp_type = {}", ic.ty);
                if ic.code >= 0 {
                    let _ = writeln!(out, "  icmp_code = {}", ic.code);
                }
            }
        }
        _ => {}
    }
    let _ = writeln!(out, "  {cidr}");
}

/// `export aws --network-acls`: the file's network ACLs as
/// `describe-network-acls` prints them, AWS's `*` rules included. Ids are
/// the file's, or made up from the names (stable).
pub fn export(vpc: &Vpc) -> NetworkAcls {
    let subnet_id = |name: &str| {
        vpc.subnets
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .and_then(|s| s.id.as_ref().map(|(id, _)| id.clone()))
            .unwrap_or_else(|| super::aws::made_up_id("subnet", name))
    };
    let network_acls = vpc
        .network_acls
        .iter()
        .map(|a| {
            let id = a.id.as_ref().map_or_else(
                || super::aws::made_up_id("acl", &a.name),
                |(id, _)| id.clone(),
            );
            let mut entries = Vec::new();
            for (egress, list) in [(false, &a.ingress), (true, &a.egress)] {
                entries.extend(list.iter().map(|e| export_entry(e, egress)));
                for star in ["0.0.0.0/0", "::/0"] {
                    entries.push(Entry {
                        rule_number: STAR,
                        protocol: "-1".to_owned(),
                        rule_action: "deny".to_owned(),
                        egress,
                        cidr_block: (!star.contains(':')).then(|| star.to_owned()),
                        ipv6_cidr_block: star.contains(':').then(|| star.to_owned()),
                        ..Entry::default()
                    });
                }
            }
            NetworkAcl {
                associations: a
                    .subnets
                    .iter()
                    .map(|(s, _)| Association {
                        network_acl_association_id: None,
                        network_acl_id: id.clone(),
                        subnet_id: subnet_id(s),
                    })
                    .collect(),
                network_acl_id: id,
                vpc_id: a.vpc.clone(),
                is_default: a.default,
                entries,
                tags: vec![Tag {
                    key: "Name".to_owned(),
                    value: a.name.clone(),
                }],
            }
        })
        .collect();
    NetworkAcls { network_acls }
}

fn export_entry(e: &AclEntry, egress: bool) -> Entry {
    let (cidr_block, ipv6_cidr_block) = if e.cidr.addr().is_ipv6() {
        (None, Some(e.cidr.to_string()))
    } else {
        (Some(e.cidr.to_string()), None)
    };
    let (port_range, icmp_type_code) = match e.ports {
        Ports::Range { from, to } => (
            Some(PortRange {
                from: i64::from(from),
                to: i64::from(to),
            }),
            None,
        ),
        Ports::Icmp { ty, code } => (
            None,
            Some(IcmpTypeCode {
                ty: ty.map_or(-1, i64::from),
                code: code.map_or(-1, i64::from),
            }),
        ),
        Ports::All => (None, None),
    };
    Entry {
        rule_number: i64::from(e.rule_no),
        protocol: match e.protocol {
            Protocol::All => "-1".to_owned(),
            Protocol::Number(n) => n.to_string(),
        },
        rule_action: e.action().to_owned(),
        egress,
        cidr_block,
        ipv6_cidr_block,
        port_range,
        icmp_type_code,
    }
}

/// `export aws --subnets`: the file's subnets as `describe-subnets`
/// prints them (their ranges, ids and names).
pub fn export_subnets(vpc: &Vpc) -> Subnets {
    Subnets {
        subnets: vpc
            .subnets
            .iter()
            .map(|s| {
                let name = s.name.clone().unwrap_or_else(|| s.cidr.to_string());
                Subnet {
                    subnet_id: s.id.as_ref().map_or_else(
                        || super::aws::made_up_id("subnet", &name),
                        |(id, _)| id.clone(),
                    ),
                    vpc_id: s.vpc.clone(),
                    cidr_block: s.cidr.to_string(),
                    ipv6_cidr_block_association_set: s
                        .ipv6
                        .iter()
                        .map(|n| Ipv6Association {
                            ipv6_cidr_block: n.to_string(),
                        })
                        .collect(),
                    tags: s
                        .name
                        .iter()
                        .map(|n| Tag {
                            key: "Name".to_owned(),
                            value: n.clone(),
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

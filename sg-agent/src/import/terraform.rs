//! `sg-agent import terraform STATE.json`: the same rules file from
//! `terraform show -json` (the state, or a plan's planned values), read into
//! the AWS CLI's shapes and written by the same renderer as `import aws`.
//!
//! Resources read, in the root module and every child module:
//! * `aws_security_group`, with its inline `ingress` and `egress` blocks.
//!   Terraform removes AWS's default egress rule when a group has no
//!   `egress` block, and its state then holds `egress = []`: such a group
//!   gets `egress = []` here too (no outbound traffic), exactly as AWS
//!   enforces it.
//! * `aws_vpc_security_group_ingress_rule` / `_egress_rule` (one source
//!   each) and the older `aws_security_group_rule` (`type` ingress or
//!   egress), added to their group's rules.
//! * `aws_ec2_managed_prefix_list` with its `entry` blocks.
//! * `aws_instance` (`private_ip`, `secondary_private_ips`,
//!   `ipv6_addresses`, `vpc_security_group_ids`, named by its `Name` tag or
//!   its address) and `aws_network_interface` (`private_ips`,
//!   `ipv6_addresses`, `security_groups`).
//! * `aws_subnet`, `aws_network_acl` (inline `ingress`/`egress`,
//!   `subnet_ids`), `aws_default_network_acl`, `aws_network_acl_rule` and
//!   `aws_network_acl_association`, read into the AWS CLI's shapes and
//!   rendered as `import aws --network-acls` renders them.
//! * `aws_ec2_transit_gateway` and `aws_ec2_transit_gateway_vpc_attachment`
//!   (`security_group_referencing_support`), as `[[transit_gateway]]`;
//!   `aws_vpc_security_group_vpc_association` as the group's
//!   `associated_vpcs`; `aws_vpc_peering_connection` (accepted) as
//!   `[[vpc_peering]]` (see [`super::vpc_links`]).
//!
//! Every other managed resource is named as not carried over (`import`
//! then exits 1 unless `--allow-partial`): a design must never import
//! more open than it is.

use std::path::Path;

use serde_json::Value;

use super::{
    aws::{
        self, ImportError, IpPermission, IpRange, Ipv6Range, ListData, Member, PrefixListId,
        SecurityGroup, SecurityGroups, Tag, UserIdGroupPair,
    },
    network_acls::{
        Association, Entry, IcmpTypeCode, Ipv6Association, NetworkAcl, NetworkAcls, PortRange,
        Subnet, Subnets,
    },
    vpc_links::{self, TransitGateway, VpcLinks},
};

/// The resource types this importer carries over.
const CARRIED: &[&str] = &[
    "aws_security_group",
    "aws_vpc_security_group_ingress_rule",
    "aws_vpc_security_group_egress_rule",
    "aws_security_group_rule",
    "aws_ec2_managed_prefix_list",
    "aws_instance",
    "aws_network_interface",
    "aws_subnet",
    "aws_network_acl",
    "aws_default_network_acl",
    "aws_network_acl_rule",
    "aws_network_acl_association",
    "aws_ec2_transit_gateway",
    "aws_ec2_transit_gateway_vpc_attachment",
    "aws_vpc_security_group_vpc_association",
    "aws_vpc_peering_connection",
];

/// Every resource of the state: the root module's and its children's.
fn resources(module: &Value, out: &mut Vec<Value>) {
    if let Some(rs) = module["resources"].as_array() {
        out.extend(rs.iter().cloned());
    }
    if let Some(children) = module["child_modules"].as_array() {
        for c in children {
            resources(c, out);
        }
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(text).collect())
        .unwrap_or_default()
}

fn port(v: &Value) -> Option<i64> {
    v.as_i64()
}

/// An inline block of `aws_security_group` or an `aws_security_group_rule`:
/// several sources in one permission.
fn legacy_permission(rule: &Value, own: &str, source_key: &str) -> IpPermission {
    let description = text(&rule["description"]);
    let mut p = IpPermission {
        ip_protocol: text(&rule["protocol"]).unwrap_or_else(|| "-1".into()),
        from_port: port(&rule["from_port"]),
        to_port: port(&rule["to_port"]),
        ..IpPermission::default()
    };
    p.ip_ranges = strings(&rule["cidr_blocks"])
        .into_iter()
        .map(|cidr_ip| IpRange {
            cidr_ip,
            description: description.clone(),
        })
        .collect();
    p.ipv6_ranges = strings(&rule["ipv6_cidr_blocks"])
        .into_iter()
        .map(|cidr_ipv6| Ipv6Range {
            cidr_ipv6,
            description: description.clone(),
        })
        .collect();
    p.prefix_list_ids = strings(&rule["prefix_list_ids"])
        .into_iter()
        .map(|prefix_list_id| PrefixListId {
            prefix_list_id,
            description: description.clone(),
        })
        .collect();
    let mut groups = strings(&rule[source_key]);
    if let Some(one) = text(&rule[source_key]) {
        groups.push(one);
    }
    if rule["self"].as_bool() == Some(true) {
        groups.push(own.to_owned());
    }
    p.user_id_group_pairs = groups
        .into_iter()
        .map(|group_id| UserIdGroupPair {
            group_id,
            description: description.clone(),
            ..UserIdGroupPair::default()
        })
        .collect();
    p
}

/// An `aws_vpc_security_group_*_rule`: one source.
fn vpc_rule_permission(v: &Value) -> IpPermission {
    let description = text(&v["description"]);
    let mut p = IpPermission {
        ip_protocol: text(&v["ip_protocol"]).unwrap_or_else(|| "-1".into()),
        from_port: port(&v["from_port"]),
        to_port: port(&v["to_port"]),
        // AWS's own rule id: `security_group_rule_id`, also the resource id.
        rule_id: text(&v["security_group_rule_id"]).or_else(|| text(&v["id"])),
        ..IpPermission::default()
    };
    if let Some(cidr_ip) = text(&v["cidr_ipv4"]) {
        p.ip_ranges.push(IpRange {
            cidr_ip,
            description,
        });
    } else if let Some(cidr_ipv6) = text(&v["cidr_ipv6"]) {
        p.ipv6_ranges.push(Ipv6Range {
            cidr_ipv6,
            description,
        });
    } else if let Some(prefix_list_id) = text(&v["prefix_list_id"]) {
        p.prefix_list_ids.push(PrefixListId {
            prefix_list_id,
            description,
        });
    } else if let Some(group_id) = text(&v["referenced_security_group_id"]) {
        p.user_id_group_pairs.push(UserIdGroupPair {
            group_id,
            description,
            ..UserIdGroupPair::default()
        });
    }
    p
}

/// A permission's sources as comparable strings.
fn sources(p: &IpPermission) -> Vec<String> {
    p.ip_ranges
        .iter()
        .map(|r| r.cidr_ip.clone())
        .chain(p.ipv6_ranges.iter().map(|r| r.cidr_ipv6.clone()))
        .chain(p.prefix_list_ids.iter().map(|l| l.prefix_list_id.clone()))
        .chain(p.user_id_group_pairs.iter().map(|g| g.group_id.clone()))
        .collect()
}

/// Which of `existing` already allows everything `p` does: after a refresh,
/// Terraform's state lists the rules of standalone rule resources in the
/// group's own `ingress`/`egress` too.
fn covered(existing: &[IpPermission], p: &IpPermission) -> Option<usize> {
    let protocol = |s: &str| aws::protocol_name(s);
    let ports = |q: &IpPermission| {
        if protocol(&q.ip_protocol) == "all" {
            (None, None)
        } else {
            (q.from_port, q.to_port)
        }
    };
    existing.iter().position(|e| {
        protocol(&e.ip_protocol) == protocol(&p.ip_protocol)
            && ports(e) == ports(p)
            && sources(p).iter().all(|s| sources(e).contains(s))
    })
}

fn addresses(v: &Value, keys: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for k in keys {
        if let Some(one) = text(&v[*k]) {
            out.push(one);
        }
        out.extend(strings(&v[*k]));
    }
    out
}

/// The managed resources of type `ty`: their values.
fn of<'a>(all: &'a [Value], ty: &'static str) -> impl Iterator<Item = &'a Value> {
    all.iter()
        .filter(move |r| r["type"] == ty && r["mode"] != "data")
        .map(|r| &r["values"])
}

/// The groups, their inline rules and their standalone rule resources.
fn groups_of(all: &[Value], warnings: &mut Vec<String>) -> SecurityGroups {
    let mut groups = SecurityGroups::default();
    for v in of(all, "aws_security_group") {
        let id = text(&v["id"]).unwrap_or_default();
        let name = text(&v["name"]).unwrap_or_else(|| id.clone());
        let inline = |key: &str| -> Vec<IpPermission> {
            v[key]
                .as_array()
                .map(|rules| {
                    rules
                        .iter()
                        .map(|r| legacy_permission(r, &id, "security_groups"))
                        .collect()
                })
                .unwrap_or_default()
        };
        groups.security_groups.push(SecurityGroup {
            group_id: id.clone(),
            group_name: name,
            description: text(&v["description"]),
            vpc_id: text(&v["vpc_id"]),
            ip_permissions: inline("ingress"),
            ip_permissions_egress: inline("egress"),
            tags: tags(v),
            ..SecurityGroup::default()
        });
    }
    let mut add = |group: Option<String>, egress: bool, p: IpPermission, what: &str| {
        let Some(g) = group
            .as_deref()
            .and_then(|id| groups.security_groups.iter_mut().find(|g| g.group_id == id))
        else {
            warnings.push(format!(
                "{what} for group {} not in the state: left out",
                group.as_deref().unwrap_or("?")
            ));
            return;
        };
        let rules = if egress {
            &mut g.ip_permissions_egress
        } else {
            &mut g.ip_permissions
        };
        match covered(rules, &p) {
            // The same rule listed inline: it is the standalone resource's,
            // so it takes that resource's AWS id.
            Some(i) => {
                let same = &mut rules[i];
                if same.rule_id.is_none() && sources(same) == sources(&p) {
                    same.rule_id = p.rule_id;
                }
            }
            None => rules.push(p),
        }
    };
    for (ty, egress) in [
        ("aws_vpc_security_group_ingress_rule", false),
        ("aws_vpc_security_group_egress_rule", true),
    ] {
        for v in of(all, ty) {
            add(
                text(&v["security_group_id"]),
                egress,
                vpc_rule_permission(v),
                ty,
            );
        }
    }
    for v in of(all, "aws_security_group_rule") {
        let group = text(&v["security_group_id"]).unwrap_or_default();
        let p = legacy_permission(v, &group, "source_security_group_id");
        add(
            Some(group),
            v["type"] == "egress",
            p,
            "aws_security_group_rule",
        );
    }
    groups
}

fn lists_of(all: &[Value]) -> Vec<ListData> {
    of(all, "aws_ec2_managed_prefix_list")
        .map(|v| ListData {
            id: text(&v["id"]).unwrap_or_default(),
            name: text(&v["name"]).unwrap_or_default(),
            max_entries: v["max_entries"]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok()),
            entries: v["entry"]
                .as_array()
                .map(|es| {
                    es.iter()
                        .filter_map(|e| {
                            Some((
                                text(&e["cidr"])?,
                                text(&e["description"]).filter(|d| !d.is_empty()),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

fn members_of(all: &[Value]) -> Vec<Member> {
    let mut members: Vec<Member> = Vec::new();
    let name_of = |v: &Value, fallback: String| text(&v["tags"]["Name"]).unwrap_or(fallback);
    // An instance's VPC is its subnet's.
    let vpc_of = |v: &Value| {
        let subnet = text(&v["subnet_id"])?;
        of(all, "aws_subnet")
            .find(|s| text(&s["id"]).as_deref() == Some(subnet.as_str()))
            .and_then(|s| text(&s["vpc_id"]))
    };
    for v in of(all, "aws_instance") {
        let id = text(&v["id"]).unwrap_or_default();
        members.push(Member {
            name: name_of(v, id.clone()),
            ids: vec![id],
            addresses: addresses(
                v,
                &["private_ip", "secondary_private_ips", "ipv6_addresses"],
            ),
            groups: strings(&v["vpc_security_group_ids"]),
            vpc: vpc_of(v),
        });
    }
    for v in of(all, "aws_network_interface") {
        let id = text(&v["id"]).unwrap_or_default();
        members.push(Member {
            name: name_of(v, id.clone()),
            ids: vec![id],
            addresses: addresses(v, &["private_ips", "ipv6_addresses"]),
            groups: strings(&v["security_groups"]),
            vpc: vpc_of(v),
        });
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    members
}

/// Reads `terraform show -json` output at `path` into the rules file.
pub fn import(path: &Path, warnings: &mut Vec<String>) -> Result<String, ImportError> {
    let raw = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let state: Value = serde_json::from_str(&raw).map_err(|source| ImportError::Json {
        path: path.display().to_string(),
        command: "show -json",
        source,
    })?;
    let root = if state["values"].is_object() {
        &state["values"]["root_module"]
    } else {
        &state["planned_values"]["root_module"]
    };
    let mut all = Vec::new();
    resources(root, &mut all);
    for r in all
        .iter()
        .filter(|r| r["mode"] != "data" && !CARRIED.contains(&r["type"].as_str().unwrap_or("")))
    {
        warnings.push(format!(
            "{} ({}): not something sg-agent models",
            r["address"].as_str().unwrap_or("?"),
            r["type"].as_str().unwrap_or("?")
        ));
    }
    let groups = groups_of(&all, warnings);
    let lists = lists_of(&all);
    let members = members_of(&all);
    let links = links_of(&all);
    let mut text = aws::render(
        "`sg-agent import terraform` from `terraform show -json`",
        &groups,
        &lists,
        &members,
        &links,
        warnings,
    )?;
    let (acls, subnets) = network_acls_of(&all, warnings);
    let vpcs = aws::declared_vpcs(&groups, &members, &links);
    let vpcs: Vec<&str> = vpcs.iter().map(String::as_str).collect();
    text.push_str(&super::network_acls::render(
        &acls, &subnets, &vpcs, warnings,
    ));
    Ok(text)
}

/// Transit gateways with their VPC attachments, security group VPC
/// associations and peerings (an accepted `aws_vpc_peering_connection`),
/// with AWS's defaults where the state leaves an option out.
fn links_of(all: &[Value]) -> VpcLinks {
    let transit_gateways = of(all, "aws_ec2_transit_gateway")
        .map(|g| {
            let id = text(&g["id"]).unwrap_or_default();
            TransitGateway {
                name: text(&g["tags"]["Name"]),
                referencing: vpc_links::enabled(
                    text(&g["security_group_referencing_support"]).as_deref(),
                    false,
                ),
                vpcs: of(all, "aws_ec2_transit_gateway_vpc_attachment")
                    .filter(|a| text(&a["transit_gateway_id"]).as_deref() == Some(id.as_str()))
                    .filter_map(|a| {
                        Some((
                            text(&a["vpc_id"])?,
                            vpc_links::enabled(
                                text(&a["security_group_referencing_support"]).as_deref(),
                                true,
                            ),
                        ))
                    })
                    .collect(),
                id,
            }
        })
        .collect();
    let associations = of(all, "aws_vpc_security_group_vpc_association")
        .filter(|a| vpc_links::association_live(text(&a["state"]).as_deref()))
        .filter_map(|a| Some((text(&a["security_group_id"])?, text(&a["vpc_id"])?)))
        .collect();
    let peerings = of(all, "aws_vpc_peering_connection")
        .filter(|p| text(&p["accept_status"]).is_none_or(|s| s == "active"))
        .filter_map(|p| Some((text(&p["vpc_id"])?, text(&p["peer_vpc_id"])?)))
        .collect();
    VpcLinks {
        transit_gateways,
        associations,
        peerings,
    }
}

fn tags(v: &Value) -> Vec<Tag> {
    v["tags"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| {
                    Some(Tag {
                        key: k.clone(),
                        value: v.as_str()?.to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// An integer Terraform may keep as a number or a string.
fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

/// One network ACL rule, inline (`rule_no`, `action`) or standalone
/// (`rule_number`, `rule_action`, `egress`).
fn acl_entry(v: &Value, egress: bool) -> Entry {
    let protocol = text(&v["protocol"]).unwrap_or_else(|| "-1".into());
    let (port_range, icmp_type_code) = match protocol.to_ascii_lowercase().as_str() {
        "6" | "17" | "tcp" | "udp" => (
            Some(PortRange {
                from: int(&v["from_port"]).unwrap_or(0),
                to: int(&v["to_port"]).unwrap_or(65535),
            }),
            None,
        ),
        "1" | "58" | "icmp" | "icmpv6" => (
            None,
            Some(IcmpTypeCode {
                ty: int(&v["icmp_type"]).unwrap_or(-1),
                code: int(&v["icmp_code"]).unwrap_or(-1),
            }),
        ),
        _ => (None, None),
    };
    Entry {
        rule_number: int(&v["rule_no"])
            .or_else(|| int(&v["rule_number"]))
            .unwrap_or(0),
        protocol,
        rule_action: text(&v["action"])
            .or_else(|| text(&v["rule_action"]))
            .unwrap_or_default(),
        egress,
        cidr_block: text(&v["cidr_block"]),
        ipv6_cidr_block: text(&v["ipv6_cidr_block"]),
        port_range,
        icmp_type_code,
    }
}

/// Subnets and network ACLs (with their inline and standalone rules and
/// associations), as the AWS CLI would describe them.
fn network_acls_of(all: &[Value], warnings: &mut Vec<String>) -> (NetworkAcls, Subnets) {
    let subnets = Subnets {
        subnets: of(all, "aws_subnet")
            .map(|v| Subnet {
                subnet_id: text(&v["id"]).unwrap_or_default(),
                vpc_id: text(&v["vpc_id"]),
                cidr_block: text(&v["cidr_block"]).unwrap_or_default(),
                ipv6_cidr_block_association_set: text(&v["ipv6_cidr_block"])
                    .map(|c| Ipv6Association { ipv6_cidr_block: c })
                    .into_iter()
                    .collect(),
                tags: tags(v),
            })
            .collect(),
    };
    let mut acls = NetworkAcls::default();
    for (ty, is_default) in [
        ("aws_network_acl", false),
        ("aws_default_network_acl", true),
    ] {
        for v in of(all, ty) {
            let id = text(&v["id"])
                .or_else(|| text(&v["default_network_acl_id"]))
                .unwrap_or_default();
            let mut entries = Vec::new();
            for (key, egress) in [("ingress", false), ("egress", true)] {
                for e in v[key].as_array().into_iter().flatten() {
                    entries.push(acl_entry(e, egress));
                }
            }
            acls.network_acls.push(NetworkAcl {
                associations: strings(&v["subnet_ids"])
                    .into_iter()
                    .map(|subnet_id| Association {
                        network_acl_association_id: None,
                        network_acl_id: id.clone(),
                        subnet_id,
                    })
                    .collect(),
                network_acl_id: id,
                vpc_id: text(&v["vpc_id"]),
                is_default,
                entries,
                tags: tags(v),
            });
        }
    }
    let mut find = |id: Option<String>, what: &str| -> Option<usize> {
        let found = id.as_deref().and_then(|id| {
            acls.network_acls
                .iter()
                .position(|a| a.network_acl_id == id)
        });
        if found.is_none() {
            warnings.push(format!(
                "{what} for network ACL {} not in the state",
                id.as_deref().unwrap_or("?")
            ));
        }
        found
    };
    let mut rules = Vec::new();
    for v in of(all, "aws_network_acl_rule") {
        if let Some(i) = find(text(&v["network_acl_id"]), "aws_network_acl_rule") {
            rules.push((i, acl_entry(v, v["egress"].as_bool() == Some(true))));
        }
    }
    let mut moves = Vec::new();
    for v in of(all, "aws_network_acl_association") {
        if let (Some(i), Some(subnet)) = (
            find(text(&v["network_acl_id"]), "aws_network_acl_association"),
            text(&v["subnet_id"]),
        ) {
            moves.push((i, subnet));
        }
    }
    for (i, e) in rules {
        acls.network_acls[i].entries.push(e);
    }
    // An association moves the subnet from whichever network ACL had it.
    for (i, subnet) in moves {
        for a in &mut acls.network_acls {
            a.associations.retain(|s| s.subnet_id != subnet);
        }
        let id = acls.network_acls[i].network_acl_id.clone();
        acls.network_acls[i].associations.push(Association {
            network_acl_association_id: None,
            network_acl_id: id,
            subnet_id: subnet,
        });
    }
    (acls, subnets)
}

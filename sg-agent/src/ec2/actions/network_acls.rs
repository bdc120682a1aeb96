//! Network ACLs: the file's `[[network_acl]]` tables (and each VPC's
//! default one, which AWS always has), described, created with their
//! numbered entries, associated with subnets and deleted, as Terraform's
//! `aws_network_acl`, `aws_network_acl_rule`, `aws_default_network_acl`
//! and `aws_network_acl_association` call them.

use ipnet::IpNet;
use toml_edit::{Item, Table, value};

use super::{Answer, done, filtered, tag_filter};
use crate::{
    config::{AclEntry, Ports, Protocol, network_acl::MAX_RULE_NO},
    ec2::{
        edit::{Doc, file_protocol},
        error::ApiError,
        ids,
        query::Params,
        store::Store,
        view::{ApiAcl, View},
        xml::Xml,
    },
};

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        "InvalidNetworkAclID.NotFound",
        format!("The network acl ID '{id}' does not exist"),
    )
}

fn acl(view: &View<'_>, id: &str) -> Result<ApiAcl, ApiError> {
    view.network_acl(id).ok_or_else(|| not_found(id))
}

/// AWS's `*` rules: the last of each direction, denying what no entry
/// matched, numbered 32767 (and 32768 for `::/0` where the VPC has IPv6:
/// Terraform's provider skips both numbers as AWS's own).
fn star_entries(has_ipv6: bool) -> Vec<(bool, u16, &'static str)> {
    let mut out = Vec::new();
    for egress in [false, true] {
        out.push((egress, 32767, "0.0.0.0/0"));
        if has_ipv6 {
            out.push((egress, 32768, "::/0"));
        }
    }
    out
}

fn write_entry(x: &mut Xml, egress: bool, e: &AclEntry) {
    x.num("ruleNumber", e.rule_no)
        .text("protocol", &acl_protocol(e.protocol))
        .text("ruleAction", e.action())
        .bool("egress", egress);
    match e.cidr {
        IpNet::V4(n) => x.text("cidrBlock", &n.to_string()),
        IpNet::V6(n) => x.text("ipv6CidrBlock", &n.to_string()),
    };
    match (e.protocol, e.ports) {
        (Protocol::Number(6 | 17), Ports::Range { from, to }) => {
            x.elem("portRange", |x| {
                x.num("from", from).num("to", to);
            });
        }
        (Protocol::Number(1 | 58), Ports::Icmp { ty, code }) => {
            x.elem("icmpTypeCode", |x| {
                x.num("code", code.map_or(-1, i32::from))
                    .num("type", ty.map_or(-1, i32::from));
            });
        }
        _ => {}
    }
}

/// A network ACL entry's protocol as the API gives it: the number, `-1`
/// for all (not `tcp`: network ACLs answer with numbers).
fn acl_protocol(p: Protocol) -> String {
    match p {
        Protocol::All => "-1".to_owned(),
        Protocol::Number(n) => n.to_string(),
    }
}

fn write(x: &mut Xml, view: &View<'_>, a: &ApiAcl) {
    x.text("networkAclId", &a.id)
        .text("vpcId", &view.vpc_id(&a.vpc))
        .bool("default", a.default)
        .list(
            "entrySet",
            a.entries
                .iter()
                .map(|(egress, e)| (*egress, e.clone()))
                .chain(
                    star_entries(a.has_ipv6)
                        .into_iter()
                        .map(|(egress, rule_no, cidr)| {
                            (
                                egress,
                                AclEntry {
                                    rule_no,
                                    allow: false,
                                    protocol: Protocol::All,
                                    ports: Ports::All,
                                    cidr: cidr.parse().expect("a constant range"),
                                    span: 0..0,
                                },
                            )
                        }),
                ),
            |x, (egress, e)| write_entry(x, egress, &e),
        )
        .list("associationSet", &a.subnets, |x, s| {
            x.text("networkAclAssociationId", &view.acl_association_id(a, s))
                .text("networkAclId", &a.id)
                .text("subnetId", &view.subnet_id(s));
        })
        .tags("tagSet", &a.tags)
        .text("ownerId", &view.account.id);
}

pub async fn describe(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let snap = store.read().await?;
    let view = snap.view(&store.account);
    let mut acls = view.network_acls();
    let ids = p.list("NetworkAclId");
    if let Some(id) = ids.iter().find(|id| !acls.iter().any(|a| &&a.id == id)) {
        return Err(not_found(id));
    }
    if !ids.is_empty() {
        acls.retain(|a| ids.contains(&a.id));
    }
    let acls = filtered(acls, &p.filters(), |a, f| {
        Some(match f {
            "network-acl-id" => vec![a.id.clone()],
            "vpc-id" => vec![view.vpc_id(&a.vpc)],
            "default" => vec![a.default.to_string()],
            "owner-id" => vec![view.account.id.clone()],
            "association.subnet-id" => a.subnets.iter().map(|s| view.subnet_id(s)).collect(),
            "association.association-id" => a
                .subnets
                .iter()
                .map(|s| view.acl_association_id(a, s))
                .collect(),
            "association.network-acl-id" => {
                if a.subnets.is_empty() {
                    Vec::new()
                } else {
                    vec![a.id.clone()]
                }
            }
            "entry.rule-number" => a
                .entries
                .iter()
                .map(|(_, e)| e.rule_no.to_string())
                .collect(),
            "entry.rule-action" => a
                .entries
                .iter()
                .map(|(_, e)| e.action().to_owned())
                .collect(),
            "entry.egress" => a.entries.iter().map(|(eg, _)| eg.to_string()).collect(),
            "entry.protocol" => a
                .entries
                .iter()
                .map(|(_, e)| acl_protocol(e.protocol))
                .collect(),
            "entry.cidr" => a
                .entries
                .iter()
                .filter(|(_, e)| e.cidr.addr().is_ipv4())
                .map(|(_, e)| e.cidr.to_string())
                .collect(),
            "entry.ipv6-cidr" => a
                .entries
                .iter()
                .filter(|(_, e)| e.cidr.addr().is_ipv6())
                .map(|(_, e)| e.cidr.to_string())
                .collect(),
            other => return tag_filter(&a.tags, other),
        })
    })?;
    let mut x = Xml::new();
    x.list("networkAclSet", acls, |x, a| write(x, &view, &a));
    Ok(Answer::Ec2(x))
}

/// The `vpc` key a table of VPC `vpc` needs (none for the default one).
fn vpc_key(view: &View<'_>, t: &mut Table, vpc: &str) {
    if !vpc.is_empty() && vpc != view.vpc.default_vpc() {
        t.insert("vpc", value(vpc));
    }
}

pub async fn create(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let vpc_id = p.required("VpcId")?.to_owned();
    let tags = p.tag_specifications("network-acl")?;
    let token = p.get("ClientToken").map(str::to_owned);
    let id = ids::fresh("acl");
    let account = store.account.clone();
    let created = store
        .change(move |view, doc| {
            let vpc = super::groups::vpc_by_id(view, Some(&vpc_id))?;
            let mut t = Table::new();
            t.insert("name", value(&id));
            t.insert("id", value(&id));
            vpc_key(view, &mut t, &vpc);
            if !tags.is_empty() {
                let mut it = toml_edit::InlineTable::new();
                for (k, v) in &tags {
                    it.insert(k, v.as_str().into());
                }
                t.insert("tags", value(it));
            }
            doc.push("network_acl", t);
            Ok(ApiAcl {
                id: id.clone(),
                name: Some(id),
                has_ipv6: view.vpc_has_ipv6(&vpc),
                vpc,
                default: false,
                entries: Vec::new(),
                subnets: Vec::new(),
                tags,
            })
        })
        .await?;
    let snap = store.read().await?;
    let view = snap.view(&account);
    let mut x = Xml::new();
    x.elem("networkAcl", |x| write(x, &view, &created));
    if let Some(token) = &token {
        x.text("clientToken", token);
    }
    Ok(Answer::Ec2(x))
}

pub async fn delete(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let id = p.required("NetworkAclId")?.to_owned();
    store
        .change(move |view, doc| {
            let a = acl(view, &id)?;
            if a.default {
                return Err(ApiError::invalid_value(format!(
                    "cannot delete default network ACL {id}"
                )));
            }
            if !a.subnets.is_empty() {
                return Err(ApiError::new(
                    "DependencyViolation",
                    format!("The network ACL '{id}' has dependencies and cannot be deleted."),
                ));
            }
            let name = a
                .name
                .expect("a network ACL that is not a default is the file's");
            doc.remove("network_acl", &name)
        })
        .await?;
    Ok(done())
}

/// An entry as `CreateNetworkAclEntry` and `ReplaceNetworkAclEntry` give it.
struct EntrySpec {
    egress: bool,
    rule_no: u16,
    allow: bool,
    protocol: Protocol,
    ports: Ports,
    cidr: IpNet,
}

fn entry_spec(p: &Params) -> Result<EntrySpec, ApiError> {
    let rule_no = p
        .int("RuleNumber")?
        .ok_or_else(|| ApiError::missing("RuleNumber"))?;
    let rule_no = u16::try_from(rule_no)
        .ok()
        .filter(|n| (1..=MAX_RULE_NO).contains(n))
        .ok_or_else(|| {
            ApiError::invalid_value(format!(
                "Invalid rule number {rule_no}: a network ACL's rule numbers are 1 to {MAX_RULE_NO}"
            ))
        })?;
    let protocol = super::permissions::protocol(p.required("Protocol")?)?;
    let allow = match p.required("RuleAction")? {
        a if a.eq_ignore_ascii_case("allow") => true,
        a if a.eq_ignore_ascii_case("deny") => false,
        other => {
            return Err(ApiError::invalid_value(format!(
                "Invalid value '{other}' for ruleAction: allow or deny"
            )));
        }
    };
    let cidr = match (p.get("CidrBlock"), p.get("Ipv6CidrBlock")) {
        (Some(c), None) | (None, Some(c)) => {
            let net: IpNet = c
                .parse()
                .map_err(|_| ApiError::invalid_value(format!("Value ({c}) for parameter cidrBlock is invalid. This is not a valid CIDR block.")))?;
            if p.get("CidrBlock").is_some() != net.addr().is_ipv4() {
                return Err(ApiError::invalid_value(format!(
                    "{c} is not of the family its parameter names"
                )));
            }
            net.trunc()
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_value(
                "Specify either an IPv4 CIDR block or an IPv6 CIDR block, not both",
            ));
        }
        (None, None) => return Err(ApiError::missing("CidrBlock")),
    };
    let port = |k: &str| -> Result<Option<i64>, ApiError> { p.int(k) };
    let ports = match protocol {
        Protocol::Number(6 | 17) => {
            let (Some(from), Some(to)) = (port("PortRange.From")?, port("PortRange.To")?) else {
                return Err(ApiError::missing("PortRange"));
            };
            let (Ok(from), Ok(to)) = (u16::try_from(from), u16::try_from(to)) else {
                return Err(ApiError::invalid_value("Invalid port range: 0 to 65535"));
            };
            if from > to {
                return Err(ApiError::invalid_value(format!(
                    "Invalid port range {from}-{to}: from is greater than to"
                )));
            }
            Ports::Range { from, to }
        }
        Protocol::Number(1 | 58) => {
            let field = |k: &str| -> Result<Option<u8>, ApiError> {
                match port(k)? {
                    None | Some(-1) => Ok(None),
                    Some(n) => u8::try_from(n)
                        .map(Some)
                        .map_err(|_| ApiError::invalid_value(format!("Invalid {k} {n}"))),
                }
            };
            let (ty, code) = (field("Icmp.Type")?, field("Icmp.Code")?);
            if p.get("Icmp.Type").is_none() && protocol == Protocol::Number(1) {
                return Err(ApiError::missing("Icmp"));
            }
            Ports::Icmp { ty, code }
        }
        _ => Ports::All,
    };
    Ok(EntrySpec {
        egress: p.bool("Egress").unwrap_or(false),
        rule_no,
        allow,
        protocol,
        ports,
        cidr,
    })
}

impl EntrySpec {
    fn table(&self) -> Table {
        let mut t = Table::new();
        t.insert("rule_no", value(i64::from(self.rule_no)));
        t.insert("action", value(if self.allow { "allow" } else { "deny" }));
        t.insert("protocol", value(file_protocol(self.protocol)));
        match self.ports {
            Ports::Range { from, to } => {
                t.insert("from_port", value(i64::from(from)));
                t.insert("to_port", value(i64::from(to)));
            }
            Ports::Icmp { ty, code } => {
                t.insert("icmp_type", value(ty.map_or(-1, i64::from)));
                t.insert("icmp_code", value(code.map_or(-1, i64::from)));
            }
            Ports::All => {}
        }
        let key = if self.cidr.addr().is_ipv4() {
            "cidr_block"
        } else {
            "ipv6_cidr_block"
        };
        t.insert(key, value(self.cidr.to_string()));
        t
    }

    fn direction(&self) -> &'static str {
        if self.egress { "egress" } else { "ingress" }
    }
}

/// The `[[network_acl]]` table of `a`, made first for a VPC's default one
/// the file does not declare (with AWS's default entries, so the VPC's
/// other subnets keep allowing everything until an entry says otherwise).
fn table_of<'d>(view: &View<'_>, doc: &'d mut Doc, a: &ApiAcl) -> Result<&'d mut Table, ApiError> {
    if a.name.is_none() {
        // Its subnets become the file's, so the file's default holds what
        // the API's does.
        for s in &a.subnets {
            subnet_name(view, doc, s)?;
        }
        let mut t = Table::new();
        t.insert("name", value(&a.id));
        t.insert("id", value(&a.id));
        t.insert("default", value(true));
        vpc_key(view, &mut t, &a.vpc);
        doc.push("network_acl", t);
        for (egress, e) in &a.entries {
            push_entry(
                doc,
                &a.id,
                &EntrySpec {
                    egress: *egress,
                    rule_no: e.rule_no,
                    allow: e.allow,
                    protocol: e.protocol,
                    ports: e.ports,
                    cidr: e.cidr,
                },
            )?;
        }
    }
    let name = a.name.as_deref().unwrap_or(&a.id);
    doc.named("network_acl", name)
        .ok_or_else(|| ApiError::internal("the network ACL is not in the rules file"))
}

fn push_entry(doc: &mut Doc, acl: &str, spec: &EntrySpec) -> Result<(), ApiError> {
    let t = doc
        .named("network_acl", acl)
        .ok_or_else(|| ApiError::internal("the network ACL is not in the rules file"))?;
    let dir = spec.direction();
    if t.get(dir).is_none() {
        t.insert(dir, Item::ArrayOfTables(toml_edit::ArrayOfTables::new()));
    }
    let entries = t
        .get_mut(dir)
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| ApiError::internal("the network ACL's entries are not tables"))?;
    entries.push(spec.table());
    Ok(())
}

/// The index of entry `rule_no` in `t`'s `dir` entries.
fn entry_index(t: &Table, dir: &str, rule_no: u16) -> Option<usize> {
    t.get(dir)?
        .as_array_of_tables()?
        .iter()
        .position(|e| e.get("rule_no").and_then(Item::as_integer) == Some(i64::from(rule_no)))
}

fn entry_not_found(rule_no: u16) -> ApiError {
    ApiError::new(
        "InvalidNetworkAclEntry.NotFound",
        format!("The network acl entry identified by {rule_no} does not exist"),
    )
}

pub async fn create_entry(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let id = p.required("NetworkAclId")?.to_owned();
    let spec = entry_spec(p)?;
    store
        .change(move |view, doc| {
            let a = acl(view, &id)?;
            if a.entries
                .iter()
                .any(|(egress, e)| *egress == spec.egress && e.rule_no == spec.rule_no)
            {
                return Err(ApiError::new(
                    "NetworkAclEntryAlreadyExists",
                    format!(
                        "The network acl entry identified by {} already exists.",
                        spec.rule_no
                    ),
                ));
            }
            let name = table_of(view, doc, &a)?
                .get("name")
                .and_then(Item::as_str)
                .map(str::to_owned)
                .unwrap_or_default();
            push_entry(doc, &name, &spec)
        })
        .await?;
    Ok(done())
}

pub async fn replace_entry(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let id = p.required("NetworkAclId")?.to_owned();
    let spec = entry_spec(p)?;
    store
        .change(move |view, doc| {
            let (entries, i) = entry_of(view, doc, &id, spec.egress, spec.rule_no)?;
            let old = entries
                .get_mut(i)
                .ok_or_else(|| entry_not_found(spec.rule_no))?;
            let (position, decor) = (old.position(), old.decor().clone());
            *old = spec.table();
            old.set_position(position);
            *old.decor_mut() = decor;
            Ok(())
        })
        .await?;
    Ok(done())
}

pub async fn delete_entry(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let id = p.required("NetworkAclId")?.to_owned();
    let rule_no = p
        .int("RuleNumber")?
        .ok_or_else(|| ApiError::missing("RuleNumber"))?;
    let rule_no = u16::try_from(rule_no).map_err(|_| entry_not_found(0))?;
    let egress = p.bool("Egress").unwrap_or(false);
    store
        .change(move |view, doc| {
            let (entries, i) = entry_of(view, doc, &id, egress, rule_no)?;
            entries.remove(i);
            if entries.is_empty() {
                let dir = if egress { "egress" } else { "ingress" };
                let a = acl(view, &id)?;
                table_of(view, doc, &a)?.remove(dir);
            }
            Ok(())
        })
        .await?;
    Ok(done())
}

/// The entry `rule_no` of direction `egress` of network ACL `id`, as its
/// direction's tables in the file and its index there (the table of a
/// default network ACL the file does not declare made first); an entry
/// that is not there is `InvalidNetworkAclEntry.NotFound`.
fn entry_of<'d>(
    view: &View<'_>,
    doc: &'d mut Doc,
    id: &str,
    egress: bool,
    rule_no: u16,
) -> Result<(&'d mut toml_edit::ArrayOfTables, usize), ApiError> {
    let a = acl(view, id)?;
    if !a
        .entries
        .iter()
        .any(|(eg, e)| *eg == egress && e.rule_no == rule_no)
    {
        return Err(entry_not_found(rule_no));
    }
    let t = table_of(view, doc, &a)?;
    let dir = if egress { "egress" } else { "ingress" };
    let i = entry_index(t, dir, rule_no).ok_or_else(|| entry_not_found(rule_no))?;
    let entries = t
        .get_mut(dir)
        .and_then(Item::as_array_of_tables_mut)
        .ok_or_else(|| entry_not_found(rule_no))?;
    Ok((entries, i))
}

/// `ReplaceNetworkAclAssociation`: the subnet of association `AssociationId`
/// moves to network ACL `NetworkAclId` (the file: out of the `subnets` of
/// the one it was in, into the new one's; a subnet the file does not name
/// gets a `[[subnet]]` named by its id).
pub async fn replace_association(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let association = p.required("AssociationId")?.to_owned();
    let id = p.required("NetworkAclId")?.to_owned();
    let new_id = store
        .change(move |view, doc| {
            let to = acl(view, &id)?;
            let (from, subnet) = view
                .network_acls()
                .into_iter()
                .find_map(|a| {
                    let s = a
                        .subnets
                        .iter()
                        .find(|s| view.acl_association_id(&a, s) == association)
                        .copied()?;
                    Some((a, s))
                })
                .ok_or_else(|| {
                    ApiError::new(
                        "InvalidAssociationID.NotFound",
                        format!("The association ID '{association}' does not exist"),
                    )
                })?;
            if view.vpc_of_subnet(&subnet) != to.vpc {
                return Err(ApiError::invalid_value(format!(
                    "Network ACL {} and subnet {} belong to different networks",
                    to.id,
                    view.subnet_id(&subnet)
                )));
            }
            let name = subnet_name(view, doc, &subnet)?;
            if let Some(from_name) = from.name.as_deref() {
                let t = doc.named("network_acl", from_name).ok_or_else(|| {
                    ApiError::internal("the network ACL is not in the rules file")
                })?;
                remove_string(t, "subnets", &name);
            }
            // The default network ACL holds every subnet no other names.
            if !to.default {
                let t = table_of(view, doc, &to)?;
                add_string(t, "subnets", &name);
            }
            Ok(view.acl_association_id(&to, &subnet))
        })
        .await?;
    let mut x = Xml::new();
    x.text("newAssociationId", &new_id);
    Ok(Answer::Ec2(x))
}

/// How network ACLs name `subnet`: its `[[subnet]]`'s name, given one (its
/// id) if it has none, or a `[[subnet]]` made for a VPC range the file has
/// no table for.
fn subnet_name(view: &View<'_>, doc: &mut Doc, subnet: &IpNet) -> Result<String, ApiError> {
    if let Some(s) = view.vpc.subnets.iter().find(|s| s.cidr == *subnet) {
        if let Some(name) = &s.name {
            return Ok(name.clone());
        }
        let id = view.subnet_id(subnet);
        let a = doc
            .0
            .get_mut("subnet")
            .and_then(Item::as_array_of_tables_mut)
            .ok_or_else(|| ApiError::internal("no [[subnet]] in the rules file"))?;
        let t = a
            .iter_mut()
            .find(|t| t.get("cidr_block").and_then(Item::as_str) == Some(&subnet.to_string()))
            .ok_or_else(|| ApiError::internal("the subnet is not in the rules file"))?;
        t.insert("name", value(&id));
        return Ok(id);
    }
    let id = view.subnet_id(subnet);
    let mut t = Table::new();
    t.insert("name", value(&id));
    t.insert("cidr_block", value(subnet.to_string()));
    let vpc = view.vpc_of_subnet(subnet);
    vpc_key(view, &mut t, &vpc);
    doc.push("subnet", t);
    Ok(id)
}

fn strings_of(t: &Table, key: &str) -> Vec<String> {
    t.get(key)
        .and_then(Item::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn set_strings(t: &mut Table, key: &str, items: &[String]) {
    if items.is_empty() {
        t.remove(key);
    } else {
        t.insert(
            key,
            value(
                items
                    .iter()
                    .map(String::as_str)
                    .collect::<toml_edit::Array>(),
            ),
        );
    }
}

fn add_string(t: &mut Table, key: &str, item: &str) {
    let mut items = strings_of(t, key);
    if !items.iter().any(|i| i == item) {
        items.push(item.to_owned());
    }
    set_strings(t, key, &items);
}

fn remove_string(t: &mut Table, key: &str, item: &str) {
    let items: Vec<String> = strings_of(t, key)
        .into_iter()
        .filter(|i| i != item)
        .collect();
    set_strings(t, key, &items);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::view::api_protocol;

    #[test]
    fn network_acls_answer_protocols_as_numbers() {
        assert_eq!(acl_protocol(Protocol::All), "-1");
        assert_eq!(acl_protocol(Protocol::Number(6)), "6");
        assert_eq!(api_protocol(Protocol::Number(6)), "tcp");
    }
}

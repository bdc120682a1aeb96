//! `sg-agent import aws` and `sg-agent export aws`: the JSON the AWS CLI
//! prints for `describe-security-groups`, `describe-network-interfaces` or
//! `describe-instances`, `describe-managed-prefix-lists` and
//! `get-managed-prefix-list-entries`, to a rules file and back.
//!
//! Decisions:
//! * One rule per `IpPermission`, as AWS groups them (its ranges, prefix
//!   lists and group pairs become the rule's sources), split by
//!   description where its sources carry different ones (AWS keeps one per
//!   source, a rule of the file one for all its sources). A group's tags
//!   (its `Name` among them) become its `tags`.
//! * A group with no outbound permission gets `egress = []`: AWS allows no
//!   outbound traffic then, where a rules file without `egress` means AWS's
//!   default all-traffic rule.
//! * Groups of several VPCs: each VPC becomes a `[[vpc]]` named by its id,
//!   each group and instance names its own, and a rule that references a
//!   group of another VPC in the input keeps it, with a `[[vpc_peering]]`
//!   between the two (AWS allows such a reference only through one) unless
//!   a transit gateway attaches both (`--transit-gateways`: see
//!   [`super::vpc_links`], which also carries VPC associations).
//! * A group pair naming a group that is not in the input (another
//!   account's or VPC's, by peering) cannot be resolved here: that source
//!   is left out and a comment in the file says so, with the hint to list
//!   its members' addresses as `cidr_blocks` (a warning on stderr too).
//! * Instances and interfaces keep their addresses and groups; `interface`
//!   and `netns` are left for the user, with a comment saying so, so the
//!   file passes `sg-agent check --allow-empty` until they are filled in.
//! * Group ids (`sg-`) and rule ids (`sgr-`, which Terraform's standalone
//!   rules carry) become `id` keys, shown by `check`, `status` and flow
//!   logs; other identifiers (`pl-`, `i-`, `eni-`) are kept as comments.
//! * A reference whose `PeeringStatus` is not `active` (the peering was
//!   deleted, failed...) is stale on AWS and matches nothing: no
//!   `[[vpc_peering]]` is written for it, so it stays stale here.
//! * Output is stable: groups, lists and instances sorted by name.
//! * What cannot be carried over is named (`warnings`): `sg-agent import`
//!   then exits 1 unless `--allow-partial`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::config::{Ports, Protocol, Source, Vpc};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not the JSON `aws ec2 {command}` prints: {source}")]
    Json {
        path: String,
        command: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "prefix list {id} ({name}) is used by a rule but its entries are not given: run `aws ec2 \
         get-managed-prefix-list-entries --prefix-list-id {id} > DIR/{id}.json` and pass \
         --entries-dir DIR"
    )]
    NoEntries { id: String, name: String },
    #[error(
        "prefix list {0} is used by a rule but not described: pass the output of `aws ec2 \
         describe-managed-prefix-lists` with --prefix-lists"
    )]
    UnknownPrefixList(String),
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecurityGroups {
    pub security_groups: Vec<SecurityGroup>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecurityGroup {
    pub group_id: String,
    pub group_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default)]
    pub ip_permissions: Vec<IpPermission>,
    #[serde(default)]
    pub ip_permissions_egress: Vec<IpPermission>,
    /// The group's tags (its `Name` among them), kept as `tags`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpPermission {
    pub ip_protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_port: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<i64>,
    #[serde(default)]
    pub ip_ranges: Vec<IpRange>,
    #[serde(default)]
    pub ipv6_ranges: Vec<Ipv6Range>,
    #[serde(default)]
    pub prefix_list_ids: Vec<PrefixListId>,
    #[serde(default)]
    pub user_id_group_pairs: Vec<UserIdGroupPair>,
    /// The rule's own id (`sgr-`), where the source has one (Terraform's
    /// standalone rules); `describe-security-groups` does not print it.
    #[serde(skip)]
    pub rule_id: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpRange {
    pub cidr_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipv6Range {
    pub cidr_ipv6: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrefixListId {
    pub prefix_list_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UserIdGroupPair {
    pub group_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    /// `active`, or `deleted`, `failed`... for a reference through a
    /// peering that is gone: AWS keeps such a rule, stale, matching nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peering_status: Option<String>,
    /// The peering the reference goes through, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_peering_connection_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrefixLists {
    pub prefix_lists: Vec<PrefixList>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrefixList {
    pub prefix_list_id: String,
    #[serde(default)]
    pub prefix_list_name: Option<String>,
    #[serde(default)]
    pub max_entries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrefixListEntries {
    pub entries: Vec<PrefixListEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrefixListEntry {
    pub cidr: String,
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInterfaces {
    pub network_interfaces: Vec<NetworkInterface>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInterface {
    pub network_interface_id: String,
    #[serde(default)]
    pub vpc_id: Option<String>,
    #[serde(default)]
    pub private_ip_addresses: Vec<PrivateIp>,
    #[serde(default)]
    pub ipv6_addresses: Vec<Ipv6Address>,
    #[serde(default)]
    pub groups: Vec<GroupRef>,
    #[serde(default, alias = "Tags")]
    pub tag_set: Vec<Tag>,
    #[serde(default)]
    pub attachment: Option<Attachment>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Attachment {
    #[serde(default)]
    pub instance_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PrivateIp {
    pub private_ip_address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ipv6Address {
    pub ipv6_address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GroupRef {
    pub group_id: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Instances {
    pub reservations: Vec<Reservation>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Reservation {
    pub instances: Vec<Ec2Instance>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Ec2Instance {
    pub instance_id: String,
    #[serde(default)]
    pub vpc_id: Option<String>,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

/// [`read`] where the input may be absent (then: nothing).
fn optional<T: serde::de::DeserializeOwned + Default>(
    path: Option<&Path>,
    command: &'static str,
) -> Result<T, ImportError> {
    path.map_or_else(|| Ok(T::default()), |p| read(p, command))
}

pub(super) fn read<T: serde::de::DeserializeOwned>(
    path: &Path,
    command: &'static str,
) -> Result<T, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.display().to_string(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ImportError::Json {
        path: path.display().to_string(),
        command,
        source,
    })
}

/// What `import aws` reads, by flag.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub security_groups: &'a Path,
    pub network_interfaces: Option<&'a Path>,
    pub instances: Option<&'a Path>,
    pub prefix_lists: Option<&'a Path>,
    pub entries_dir: Option<&'a Path>,
    /// `describe-network-acls` output (needs `subnets`).
    pub network_acls: Option<&'a Path>,
    /// `describe-subnets` output.
    pub subnets: Option<&'a Path>,
    /// `describe-transit-gateways` output (with `transit_gateway_attachments`).
    pub transit_gateways: Option<&'a Path>,
    /// `describe-transit-gateway-vpc-attachments` output.
    pub transit_gateway_attachments: Option<&'a Path>,
    /// `describe-security-group-vpc-associations` output.
    pub vpc_associations: Option<&'a Path>,
}

/// An instance to write: name, ids, addresses, group ids.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub ids: Vec<String>,
    pub addresses: Vec<String>,
    pub groups: Vec<String>,
    /// Its VPC, where the input says (else its groups').
    pub vpc: Option<String>,
}

fn tag_name(tags: &[Tag]) -> Option<&str> {
    tags.iter()
        .find(|t| t.key == "Name")
        .map(|t| t.value.as_str())
}

fn interface_member(eni: &NetworkInterface, name: String, ids: Vec<String>) -> Member {
    Member {
        name,
        ids,
        addresses: eni
            .private_ip_addresses
            .iter()
            .map(|a| a.private_ip_address.clone())
            .chain(eni.ipv6_addresses.iter().map(|a| a.ipv6_address.clone()))
            .collect(),
        groups: eni.groups.iter().map(|g| g.group_id.clone()).collect(),
        vpc: eni.vpc_id.clone(),
    }
}

fn members(inputs: &Inputs) -> Result<Vec<Member>, ImportError> {
    let mut out = Vec::new();
    if let Some(path) = inputs.instances {
        let all: Instances = read(path, "describe-instances")?;
        for i in all.reservations.iter().flat_map(|r| &r.instances) {
            let base = tag_name(&i.tags).unwrap_or(&i.instance_id).to_owned();
            let several = i.network_interfaces.len() > 1;
            for (n, eni) in i.network_interfaces.iter().enumerate() {
                let name = if several {
                    format!("{base}-{n}")
                } else {
                    base.clone()
                };
                let ids = vec![i.instance_id.clone(), eni.network_interface_id.clone()];
                let mut member = interface_member(eni, name, ids);
                member.vpc = member.vpc.or_else(|| i.vpc_id.clone());
                out.push(member);
            }
        }
    }
    if let Some(path) = inputs.network_interfaces {
        let all: NetworkInterfaces = read(path, "describe-network-interfaces")?;
        for eni in &all.network_interfaces {
            let name = tag_name(&eni.tag_set)
                .unwrap_or(&eni.network_interface_id)
                .to_owned();
            let mut ids: Vec<String> = eni
                .attachment
                .as_ref()
                .and_then(|a| a.instance_id.clone())
                .into_iter()
                .collect();
            ids.push(eni.network_interface_id.clone());
            out.push(interface_member(eni, name, ids));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// AWS's `IpProtocol` (a name, a number, `-1`) as the rules file names it.
pub fn protocol_name(p: &str) -> String {
    match p {
        "-1" | "all" => "all".into(),
        "6" | "tcp" => "tcp".into(),
        "17" | "udp" => "udp".into(),
        "1" | "icmp" => "icmp".into(),
        "58" | "icmpv6" => "icmpv6".into(),
        other => other.to_owned(),
    }
}

/// Writes the rules file for `inputs`; warnings (sources left out) go to
/// `warnings`.
pub fn import(inputs: &Inputs, warnings: &mut Vec<String>) -> Result<String, ImportError> {
    let groups: SecurityGroups = read(inputs.security_groups, "describe-security-groups")?;
    let described: PrefixLists = match inputs.prefix_lists {
        Some(p) => read(p, "describe-managed-prefix-lists")?,
        None => PrefixLists::default(),
    };
    let used = used_lists(&groups);
    let mut lists = Vec::new();
    for l in described
        .prefix_lists
        .iter()
        .filter(|l| used.contains(&l.prefix_list_id))
    {
        let name = l
            .prefix_list_name
            .clone()
            .unwrap_or_else(|| l.prefix_list_id.clone());
        let entries_path = inputs
            .entries_dir
            .map(|d| d.join(format!("{}.json", l.prefix_list_id)));
        let Some(path) = entries_path.filter(|p| p.exists()) else {
            return Err(ImportError::NoEntries {
                id: l.prefix_list_id.clone(),
                name,
            });
        };
        let entries: PrefixListEntries = read(&path, "get-managed-prefix-list-entries")?;
        lists.push(ListData {
            id: l.prefix_list_id.clone(),
            name,
            max_entries: l.max_entries,
            entries: entries
                .entries
                .into_iter()
                .map(|e| (e.cidr, e.description.filter(|d| !d.is_empty())))
                .collect(),
        });
    }
    let links = super::vpc_links::VpcLinks::described(
        &optional(inputs.transit_gateways, "describe-transit-gateways")?,
        &optional(
            inputs.transit_gateway_attachments,
            "describe-transit-gateway-vpc-attachments",
        )?,
        &optional(
            inputs.vpc_associations,
            "describe-security-group-vpc-associations",
        )?,
    );
    let members = members(inputs)?;
    let mut text = render(
        "`sg-agent import aws` from the AWS CLI's JSON",
        &groups,
        &lists,
        &members,
        &links,
        warnings,
    )?;
    let acls: super::network_acls::NetworkAcls = match inputs.network_acls {
        Some(p) => read(p, "describe-network-acls")?,
        None => super::network_acls::NetworkAcls::default(),
    };
    let subnets: super::network_acls::Subnets = match inputs.subnets {
        Some(p) => read(p, "describe-subnets")?,
        None => super::network_acls::Subnets::default(),
    };
    let vpcs = declared_vpcs(&groups, &members, &links);
    let vpcs: Vec<&str> = vpcs.iter().map(String::as_str).collect();
    text.push_str(&super::network_acls::render(
        &acls, &subnets, &vpcs, warnings,
    ));
    Ok(text)
}

/// The VPC ids the renderer declares as `[[vpc]]`: those of the groups,
/// the instances and the links, when there are several (one VPC stays
/// unnamed). The first is the file's default VPC, so a VPC whose groups
/// are associated with others (which AWS allows only outside the default
/// VPC) is not put first.
pub fn declared_vpcs(
    groups: &SecurityGroups,
    members: &[Member],
    links: &super::vpc_links::VpcLinks,
) -> Vec<String> {
    let ids: BTreeSet<&str> = groups
        .security_groups
        .iter()
        .filter_map(|g| g.vpc_id.as_deref())
        .chain(members.iter().filter_map(|m| m.vpc.as_deref()))
        .chain(links.vpcs())
        .collect();
    if ids.len() < 2 {
        return Vec::new();
    }
    let associated: BTreeSet<&str> = groups
        .security_groups
        .iter()
        .filter(|g| !links.associated_vpcs(&g.group_id).is_empty())
        .filter_map(|g| g.vpc_id.as_deref())
        .collect();
    let (last, first): (Vec<&str>, Vec<&str>) =
        ids.into_iter().partition(|id| associated.contains(id));
    first.into_iter().chain(last).map(str::to_owned).collect()
}

/// The prefix lists the groups' rules use, by id.
fn used_lists(groups: &SecurityGroups) -> BTreeSet<String> {
    groups
        .security_groups
        .iter()
        .flat_map(|g| g.ip_permissions.iter().chain(&g.ip_permissions_egress))
        .flat_map(|p| &p.prefix_list_ids)
        .map(|p| p.prefix_list_id.clone())
        .collect()
}

/// A prefix list with its entries, however it was read.
#[derive(Debug, Clone)]
pub struct ListData {
    pub id: String,
    pub name: String,
    pub max_entries: Option<u32>,
    /// Each entry's range and description.
    pub entries: Vec<(String, Option<String>)>,
}

/// The rules file for `groups`, the prefix lists they use and `members`;
/// `by` says what imported it from where. Every importer ends here.
#[expect(
    clippy::too_many_lines,
    reason = "the file, section by section, in the order it is written"
)]
pub fn render(
    by: &str,
    groups: &SecurityGroups,
    lists: &[ListData],
    members: &[Member],
    links: &super::vpc_links::VpcLinks,
    warnings: &mut Vec<String>,
) -> Result<String, ImportError> {
    let group_names: BTreeMap<&str, &str> = groups
        .security_groups
        .iter()
        .map(|g| (g.group_id.as_str(), g.group_name.as_str()))
        .collect();
    for id in used_lists(groups) {
        if !lists.iter().any(|l| l.id == id) {
            return Err(ImportError::UnknownPrefixList(id));
        }
    }
    let mut list_names: BTreeMap<String, String> = BTreeMap::new();
    let mut out = format!(
        "# Imported by {by}.\n\
         # Fill in each instance's `interface` (and `netns`) to enforce it on this host.\n",
    );
    let mut sorted_lists: Vec<&ListData> = lists.iter().collect();
    sorted_lists.sort_by(|a, b| a.name.cmp(&b.name));
    for l in sorted_lists {
        let mut entries = l.entries.clone();
        entries.sort();
        let entries: Vec<String> = entries
            .iter()
            .map(|(cidr, d)| match d {
                None => quote(cidr),
                Some(d) => format!("{{ cidr = {}, description = {} }}", quote(cidr), quote(d)),
            })
            .collect();
        let _ = writeln!(out, "\n# {}\n[[prefix_list]]", l.id);
        let _ = writeln!(out, "name = {}", quote(&l.name));
        let _ = writeln!(out, "entries = [{}]", entries.join(", "));
        if let Some(max) = l.max_entries {
            let _ = writeln!(out, "max_entries = {max}");
        }
        list_names.insert(l.id.clone(), l.name.clone());
    }
    // Groups of several VPCs: each VPC a [[vpc]] (named by its id), each
    // group in its own, and a peering for each pair of VPCs a rule reaches
    // across (AWS allows such a reference only through one) unless a
    // transit gateway attaches both (see `vpc_links`).
    let vpc_of: BTreeMap<&str, &str> = groups
        .security_groups
        .iter()
        .filter_map(|g| g.vpc_id.as_deref().map(|v| (g.group_id.as_str(), v)))
        .collect();
    let declared = declared_vpcs(groups, members, links);
    let several_vpcs = !declared.is_empty();
    if several_vpcs {
        for id in &declared {
            let _ = writeln!(out, "\n[[vpc]]\nname = {}", quote(id));
        }
        let mut peerings: BTreeSet<(&str, &str)> = links
            .peerings
            .iter()
            .map(|(a, b)| (a.as_str().min(b.as_str()), a.as_str().max(b.as_str())))
            .collect();
        for g in &groups.security_groups {
            let Some(here) = vpc_of.get(g.group_id.as_str()) else {
                continue;
            };
            for p in g.ip_permissions.iter().chain(&g.ip_permissions_egress) {
                // A reference through a peering that is gone stays stale
                // (AWS keeps the rule, matching nothing): no peering for it.
                let live = |pair: &&UserIdGroupPair| {
                    pair.peering_status
                        .as_deref()
                        .is_none_or(|s| s.eq_ignore_ascii_case("active"))
                };
                for pair in p.user_id_group_pairs.iter().filter(live) {
                    if let Some(there) = vpc_of.get(pair.group_id.as_str())
                        && there != here
                        && (pair.vpc_peering_connection_id.is_some()
                            || !links.attached_together(here, there))
                    {
                        peerings.insert((*here.min(there), *here.max(there)));
                    }
                }
            }
        }
        for (a, b) in peerings {
            let _ = writeln!(
                out,
                "\n# A rule references a group across these VPCs: they are peered.\n\
                 [[vpc_peering]]\nvpcs = {}",
                list(&[a.to_owned(), b.to_owned()])
            );
        }
        let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
        links.render_transit_gateways(&declared, &mut out);
    }
    let mut sorted: Vec<&SecurityGroup> = groups.security_groups.iter().collect();
    sorted.sort_by(|a, b| a.group_name.cmp(&b.group_name));
    for g in sorted {
        out.push_str("\n[[security_group]]\n");
        let _ = writeln!(out, "name = {}", quote(&g.group_name));
        if let (true, Some(v)) = (several_vpcs, &g.vpc_id) {
            let _ = writeln!(out, "vpc = {}", quote(v));
            let associated = links.associated_vpcs(&g.group_id);
            if !associated.is_empty() {
                let _ = writeln!(out, "associated_vpcs = {}", list(&associated));
            }
        }
        if crate::config::is_aws_id("sg", &g.group_id) {
            let _ = writeln!(out, "id = {}", quote(&g.group_id));
        } else {
            let _ = writeln!(out, "# {} (not an id of AWS's form)", g.group_id);
        }
        if let Some(d) = &g.description {
            let _ = writeln!(out, "description = {}", quote(d));
        }
        if !g.tags.is_empty() {
            let tags: Vec<String> = g
                .tags
                .iter()
                .map(|t| format!("{} = {}", quote(&t.key), quote(&t.value)))
                .collect();
            let _ = writeln!(out, "tags = {{ {} }}", tags.join(", "));
        }
        if g.ip_permissions_egress.is_empty() {
            out.push_str(
                "# No outbound permission: AWS allows no outbound traffic.\negress = []\n",
            );
        }
        for (direction, perms) in [
            ("ingress", &g.ip_permissions),
            ("egress", &g.ip_permissions_egress),
        ] {
            for p in perms.iter().flat_map(by_description) {
                let p = &p;
                let mut rule = format!("\n  [[security_group.{direction}]]\n");
                if let Some(id) = p
                    .rule_id
                    .as_ref()
                    .filter(|id| crate::config::is_aws_id("sgr", id))
                {
                    let _ = writeln!(rule, "  id = {}", quote(id));
                }
                let protocol = protocol_name(&p.ip_protocol);
                let _ = writeln!(rule, "  protocol = {}", quote(&protocol));
                // All traffic and other protocols take no ports.
                match protocol.as_str() {
                    "icmp" | "icmpv6" => {
                        if let Some(ty) = p.from_port.filter(|t| *t >= 0) {
                            let _ = writeln!(rule, "  from_port = {ty}");
                            if let Some(code) = p.to_port.filter(|c| *c >= 0) {
                                let _ = writeln!(rule, "  to_port = {code}");
                            }
                        }
                    }
                    "tcp" | "udp" => {
                        let from = p.from_port.filter(|v| *v >= 0).unwrap_or(0);
                        let to = p.to_port.filter(|v| *v >= 0).unwrap_or(65535);
                        let _ = writeln!(rule, "  from_port = {from}\n  to_port = {to}");
                    }
                    _ => {}
                }
                let v4: Vec<String> = p.ip_ranges.iter().map(|r| r.cidr_ip.clone()).collect();
                let v6: Vec<String> = p.ipv6_ranges.iter().map(|r| r.cidr_ipv6.clone()).collect();
                let pls: Vec<String> = p
                    .prefix_list_ids
                    .iter()
                    .filter_map(|l| list_names.get(&l.prefix_list_id).cloned())
                    .collect();
                let mut sgs = Vec::new();
                let mut own = false;
                for pair in &p.user_id_group_pairs {
                    if pair.group_id == g.group_id {
                        own = true;
                    } else if let Some(name) = group_names.get(pair.group_id.as_str()) {
                        sgs.push((*name).to_owned());
                    } else {
                        let whose = pair
                            .user_id
                            .as_deref()
                            .map(|u| format!(" of account {u}"))
                            .unwrap_or_default();
                        let note = format!(
                            "group {}{whose} is not in the input (another account's or VPC's): \
                             left out; list its members' addresses as cidr_blocks",
                            pair.group_id
                        );
                        let _ = writeln!(rule, "  # not imported: {note}");
                        warnings.push(format!("{} {direction}: {note}", g.group_name));
                    }
                }
                let sources = [
                    ("cidr_blocks", v4),
                    ("ipv6_cidr_blocks", v6),
                    ("prefix_list_ids", pls),
                    ("security_groups", sgs),
                ];
                if !own && sources.iter().all(|(_, s)| s.is_empty()) {
                    // Nothing this file can express is left of the rule:
                    // it is written commented out, with the reason.
                    out.push('\n');
                    for line in rule.lines().filter(|l| !l.is_empty()) {
                        let body = line.trim_start();
                        if body.starts_with('#') {
                            let _ = writeln!(out, "  {body}");
                        } else {
                            let _ = writeln!(out, "  # {body}");
                        }
                    }
                    continue;
                }
                for (key, values) in sources {
                    if !values.is_empty() {
                        let _ = writeln!(rule, "  {key} = {}", list(&values));
                    }
                }
                if own {
                    rule.push_str("  self = true\n");
                }
                let description = p
                    .ip_ranges
                    .iter()
                    .filter_map(|r| r.description.as_ref())
                    .chain(p.ipv6_ranges.iter().filter_map(|r| r.description.as_ref()))
                    .chain(
                        p.prefix_list_ids
                            .iter()
                            .filter_map(|r| r.description.as_ref()),
                    )
                    .chain(
                        p.user_id_group_pairs
                            .iter()
                            .filter_map(|r| r.description.as_ref()),
                    )
                    .next();
                if let Some(d) = description {
                    let _ = writeln!(rule, "  description = {}", quote(d));
                }
                out.push_str(&rule);
            }
        }
    }
    for m in members {
        let _ = writeln!(out, "\n# {}\n[[instance]]", m.ids.join(" "));
        let _ = writeln!(out, "name = {}", quote(&m.name));
        if let (true, Some(v)) = (
            several_vpcs,
            m.vpc.as_deref().or_else(|| {
                m.groups
                    .iter()
                    .find_map(|g| vpc_of.get(g.as_str()).copied())
            }),
        ) {
            let _ = writeln!(out, "vpc = {}", quote(v));
        }
        let _ = writeln!(out, "addresses = {}", list(&m.addresses));
        let names: Vec<String> = m
            .groups
            .iter()
            .filter_map(|id| group_names.get(id.as_str()).map(|n| (*n).to_owned()))
            .collect();
        let _ = writeln!(out, "security_groups = {}", list(&names));
        out.push_str(
            "# interface = \"eth0\"   # fill in: this instance's interface on this host\n\
             # netns = \"NAME\"       # and its network namespace, if it has one\n",
        );
    }
    Ok(out)
}

/// One permission per description its sources carry: AWS keeps a
/// description per source (per CIDR, prefix list, group pair), a rule of
/// the file one for all its sources. A permission whose sources share one
/// (most) stays whole.
fn by_description(p: &IpPermission) -> Vec<IpPermission> {
    let descriptions: Vec<Option<&String>> = p
        .ip_ranges
        .iter()
        .map(|r| r.description.as_ref())
        .chain(p.ipv6_ranges.iter().map(|r| r.description.as_ref()))
        .chain(p.prefix_list_ids.iter().map(|r| r.description.as_ref()))
        .chain(p.user_id_group_pairs.iter().map(|r| r.description.as_ref()))
        .collect();
    let mut distinct: Vec<Option<&String>> = Vec::new();
    for d in &descriptions {
        if !distinct.contains(d) {
            distinct.push(*d);
        }
    }
    if distinct.len() <= 1 {
        return vec![p.clone()];
    }
    distinct
        .into_iter()
        .map(|d| IpPermission {
            ip_protocol: p.ip_protocol.clone(),
            from_port: p.from_port,
            to_port: p.to_port,
            ip_ranges: p
                .ip_ranges
                .iter()
                .filter(|r| r.description.as_ref() == d)
                .cloned()
                .collect(),
            ipv6_ranges: p
                .ipv6_ranges
                .iter()
                .filter(|r| r.description.as_ref() == d)
                .cloned()
                .collect(),
            prefix_list_ids: p
                .prefix_list_ids
                .iter()
                .filter(|r| r.description.as_ref() == d)
                .cloned()
                .collect(),
            user_id_group_pairs: p
                .user_id_group_pairs
                .iter()
                .filter(|r| r.description.as_ref() == d)
                .cloned()
                .collect(),
            rule_id: None,
        })
        .collect()
}

/// A stable id for a name of the file (`export` has no AWS ids to give).
pub fn made_up_id(prefix: &str, name: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().take(9).fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    });
    format!("{prefix}-{}", &hex[..17])
}

/// `export aws`: the groups of `vpc` as `describe-security-groups` prints
/// them. Group ids are the file's `id` keys, or made up from the names
/// (stable) where it has none; the implicit default egress rule is written
/// out as AWS shows it.
pub fn export(vpc: &Vpc) -> SecurityGroups {
    let id_of = |name: &str| {
        vpc.group(name)
            .and_then(|g| g.id.as_ref())
            .map_or_else(|| made_up_id("sg", name), |(id, _)| id.clone())
    };
    let permission = |rule: &crate::config::Rule, group: &str| {
        let (ip_protocol, from_port, to_port) = match (rule.protocol, rule.ports) {
            (Protocol::All, _) => ("-1".to_owned(), None, None),
            (Protocol::Number(n), Ports::Range { from, to }) => (
                protocol_name(&n.to_string()),
                Some(i64::from(from)),
                Some(i64::from(to)),
            ),
            (Protocol::Number(n), Ports::Icmp { ty, code }) => (
                protocol_name(&n.to_string()),
                Some(ty.map_or(-1, i64::from)),
                Some(code.map_or(-1, i64::from)),
            ),
            (Protocol::Number(n), Ports::All) => (protocol_name(&n.to_string()), None, None),
        };
        let mut p = IpPermission {
            ip_protocol,
            from_port,
            to_port,
            ..IpPermission::default()
        };
        for s in &rule.sources {
            match &s.source {
                Source::Cidr(net) => match net.addr() {
                    IpAddr::V4(_) => p.ip_ranges.push(IpRange {
                        cidr_ip: net.to_string(),
                        description: rule.description.clone(),
                    }),
                    IpAddr::V6(_) => p.ipv6_ranges.push(Ipv6Range {
                        cidr_ipv6: net.to_string(),
                        description: rule.description.clone(),
                    }),
                },
                Source::PrefixList(name) => p.prefix_list_ids.push(PrefixListId {
                    prefix_list_id: made_up_id("pl", name),
                    description: rule.description.clone(),
                }),
                Source::Group(name) => p.user_id_group_pairs.push(UserIdGroupPair {
                    group_id: id_of(name),
                    description: rule.description.clone(),
                    ..UserIdGroupPair::default()
                }),
                Source::SelfGroup => p.user_id_group_pairs.push(UserIdGroupPair {
                    group_id: id_of(group),
                    description: rule.description.clone(),
                    ..UserIdGroupPair::default()
                }),
            }
        }
        p
    };
    SecurityGroups {
        security_groups: vpc
            .groups
            .iter()
            .map(|g| SecurityGroup {
                group_id: id_of(&g.name),
                group_name: g.name.clone(),
                description: g.description.clone(),
                owner_id: None,
                // The VPC, when the file names several (their names, as
                // `import` writes VPC ids).
                vpc_id: (vpc.vpcs.len() > 1).then(|| vpc.vpc_of_group(g).to_owned()),
                ip_permissions: g.ingress.iter().map(|r| permission(r, &g.name)).collect(),
                ip_permissions_egress: g.egress.iter().map(|r| permission(r, &g.name)).collect(),
                tags: g
                    .tags
                    .iter()
                    .map(|(key, value)| Tag {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

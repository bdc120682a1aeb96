//! Security group rules: authorize, revoke, describe, modify, describe
//! anew; each rule one source with its `sgr-` id.

use super::{Answer, done, filtered, groups, permissions, tag_filter};
use crate::{
    config::Direction,
    ec2::{
        edit::{Doc, RuleSpec},
        error::ApiError,
        ids,
        query::Params,
        store::Store,
        view::{ApiRule, Target, View},
        xml::Xml,
    },
};

/// The file's name for a prefix list the API names by id.
pub fn list_name<'a>(view: &'a View<'_>) -> impl Fn(&str) -> String + 'a {
    move |id: &str| {
        view.prefix_list(id)
            .map_or_else(|| id.to_owned(), |i| view.vpc.prefix_lists[i].name.clone())
    }
}

/// Makes the group's rules in `dir` editable one by one in the file: a
/// group the file does not hold (the VPC's default, implied) is written
/// out; an implied default egress is written as its rules.
pub fn prepare(view: &View<'_>, doc: &mut Doc, gi: usize, dir: Direction) -> Result<(), ApiError> {
    let g = &view.vpc.groups[gi];
    let pl = list_name(view);
    if doc.named("security_group", &g.name).is_none() {
        doc.add_group(
            &g.name,
            &view.group_id(g),
            g.description.as_deref().unwrap_or_default(),
            g.vpc.as_deref(),
            &g.tags,
        );
        for d in [Direction::Ingress, Direction::Egress] {
            let specs: Vec<RuleSpec> = view.rules(gi, d).iter().map(RuleSpec::of).collect();
            doc.push_rules(&g.name, d, &specs, &pl)?;
        }
        return Ok(());
    }
    if dir == Direction::Egress && g.egress.iter().any(|r| r.implicit) {
        let implicit = view.rules(gi, Direction::Egress);
        doc.materialize_egress(&g.name, &implicit, &pl)?;
    }
    Ok(())
}

/// Splits the blocks holding these rules so that each is its own block.
pub fn isolate(
    view: &View<'_>,
    doc: &mut Doc,
    gi: usize,
    dir: Direction,
    ids: &[String],
) -> Result<(), ApiError> {
    prepare(view, doc, gi, dir)?;
    let all = view.rules(gi, dir);
    let mut blocks: Vec<usize> = all
        .iter()
        .filter(|r| ids.contains(&r.id) && !r.implicit)
        .map(|r| r.block)
        .collect();
    blocks.sort_unstable();
    blocks.dedup();
    let g = &view.vpc.groups[gi];
    let pl = list_name(view);
    // From the last block: splitting one moves the later ones.
    for b in blocks.into_iter().rev() {
        let of_block: Vec<ApiRule> = all.iter().filter(|r| r.block == b).cloned().collect();
        doc.split(&g.name, dir, b, &of_block, &pl)?;
    }
    Ok(())
}

/// How many rules of each family a rule counts as (AWS's quota counts
/// IPv4 and IPv6 apart; a group reference in both; a prefix list as its
/// maximum entries).
fn weight(view: &View<'_>, t: &Target) -> (usize, usize) {
    match t {
        Target::V4(_) => (1, 0),
        Target::V6(_) => (0, 1),
        Target::Group { .. } => (1, 1),
        Target::PrefixList(id) => view.prefix_list(id).map_or((1, 0), |i| {
            let p = &view.vpc.prefix_lists[i];
            match p.entries.first() {
                Some(ipnet::IpNet::V6(_)) => (0, p.weight()),
                _ => (p.weight(), 0),
            }
        }),
    }
}

fn describe_rule(w: &permissions::Wanted) -> String {
    let peer = match &w.target {
        Target::V4(c) | Target::V6(c) | Target::PrefixList(c) | Target::Group { id: c, .. } => {
            c.clone()
        }
    };
    let proto = crate::ec2::view::api_protocol(w.protocol).to_uppercase();
    match crate::ec2::view::api_ports(w.protocol, w.ports) {
        Some((f, t)) => format!("peer: {peer}, {proto}, from port: {f}, to port: {t}, ALLOW"),
        None => format!("peer: {peer}, ALL, ALLOW"),
    }
}

pub async fn authorize(p: &Params, store: &Store, dir: Direction) -> Result<Answer, ApiError> {
    let owned = p.clone();
    let tags = p.tag_specifications("security-group-rule")?;
    let text = store
        .change(move |view, doc| {
            let p = &owned;
            let gi = groups::named_group(p, view)?;
            let g = &view.vpc.groups[gi];
            let vpc = view.vpc.vpc_of_group(g).to_owned();
            let wanted = permissions::wanted(p, view, &vpc)?;
            let existing: Vec<ApiRule> = view.rules(gi, dir).into_iter().filter(|r| !r.implicit || dir == Direction::Egress).collect();
            for (i, w) in wanted.iter().enumerate() {
                let twice = wanted[..i].iter().any(|o| {
                    o.protocol == w.protocol && o.target.key() == w.target.key() && o.ports == w.ports
                });
                if twice || existing.iter().any(|r| w.is(r)) {
                    return Err(ApiError::new(
                        "InvalidPermission.Duplicate",
                        format!("the specified rule \"{}\" already exists", describe_rule(w)),
                    ));
                }
            }
            let limit = view.vpc.limits.rules_per_group as usize;
            let (mut v4, mut v6) = existing
                .iter()
                .filter(|r| !r.implicit)
                .map(|r| weight(view, &r.target))
                .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
            for w in &wanted {
                let (a, b) = weight(view, &w.target);
                v4 += a;
                v6 += b;
            }
            if v4 > limit || v6 > limit {
                return Err(ApiError::new(
                    "RulesPerSecurityGroupLimitExceeded",
                    format!("The maximum number of rules per security group has been reached ({limit} per direction and address family: [limits] rules_per_group)."),
                ));
            }
            prepare(view, doc, gi, dir)?;
            let specs: Vec<RuleSpec> = wanted
                .iter()
                .map(|w| RuleSpec {
                    id: ids::fresh("sgr"),
                    protocol: w.protocol,
                    ports: w.ports,
                    target: w.target.clone(),
                    description: w.description.clone(),
                    tags: tags.clone(),
                })
                .collect();
            doc.push_rules(&g.name, dir, &specs, &list_name(view))?;
            let rules: Vec<ApiRule> = specs
                .iter()
                .map(|s| ApiRule {
                    id: s.id.clone(),
                    group: gi,
                    direction: dir,
                    block: 0,
                    source: 0,
                    derived_id: false,
                    implicit: false,
                    protocol: s.protocol,
                    ports: s.ports,
                    target: s.target.clone(),
                    description: s.description.clone(),
                    tags: s.tags.clone(),
                })
                .collect();
            let mut x = Xml::new();
            x.bool("return", true);
            x.list("securityGroupRuleSet", &rules, |x, r| permissions::write_rule(x, r, view));
            Ok(x)
        })
        .await?;
    Ok(Answer::Ec2(text))
}

pub async fn revoke(p: &Params, store: &Store, dir: Direction) -> Result<Answer, ApiError> {
    let owned = p.clone();
    let revoked = store
        .change(move |view, doc| {
            let p = &owned;
            let gi = groups::named_group(p, view)?;
            let g = &view.vpc.groups[gi];
            let existing = view.rules(gi, dir);
            let by_id = p.list("SecurityGroupRuleId");
            let ids: Vec<String> = if by_id.is_empty() {
                let vpc = view.vpc.vpc_of_group(g).to_owned();
                let wanted = permissions::wanted(p, view, &vpc)?;
                let mut ids = Vec::new();
                for w in &wanted {
                    let r = existing.iter().find(|r| w.is(r)).ok_or_else(|| {
                        ApiError::new(
                            "InvalidPermission.NotFound",
                            format!("The specified rule does not exist in this security group ({}).", describe_rule(w)),
                        )
                    })?;
                    ids.push(r.id.clone());
                }
                ids
            } else {
                for id in &by_id {
                    if !existing.iter().any(|r| &r.id == id) {
                        return Err(ApiError::new(
                            "InvalidSecurityGroupRuleId.NotFound",
                            format!("The security group rule ID '{id}' does not exist in this security group"),
                        ));
                    }
                }
                by_id
            };
            isolate(view, doc, gi, dir, &ids)?;
            doc.remove_rules(&g.name, dir, &ids)?;
            Ok(ids)
        })
        .await?;
    let mut x = Xml::new();
    x.bool("return", true);
    x.list("revokedSecurityGroupRuleSet", revoked, |x, id| {
        x.text("securityGroupRuleId", &id);
    });
    Ok(Answer::Ec2(x))
}

pub async fn describe(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let snap = store.read().await?;
    let view = snap.view(&store.account);
    let mut rules = view.all_rules();
    let ids = p.list("SecurityGroupRuleId");
    if !ids.is_empty() {
        for id in &ids {
            if !rules.iter().any(|r| &r.id == id) {
                return Err(ApiError::new(
                    "InvalidSecurityGroupRuleId.NotFound",
                    format!("The security group rule ID '{id}' does not exist"),
                ));
            }
        }
        rules.retain(|r| ids.contains(&r.id));
    }
    let rules = filtered(rules, &p.filters(), |r, name| {
        Some(match name {
            "group-id" => vec![view.group_id(&view.vpc.groups[r.group])],
            "security-group-rule-id" => vec![r.id.clone()],
            other => return tag_filter(&r.tags, other),
        })
    })?;
    let mut x = Xml::new();
    x.list("securityGroupRuleSet", &rules, |x, r| {
        permissions::write_rule(x, r, &view);
    });
    Ok(Answer::Ec2(x))
}

pub async fn modify(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let owned = p.clone();
    store
        .change(move |view, doc| {
            let p = &owned;
            let gi = groups::named_group(p, view)?;
            let g = &view.vpc.groups[gi];
            let vpc = view.vpc.vpc_of_group(g).to_owned();
            let all: Vec<ApiRule> = [Direction::Ingress, Direction::Egress]
                .into_iter()
                .flat_map(|d| view.rules(gi, d))
                .collect();
            let items = p.indices("SecurityGroupRule");
            if items.is_empty() {
                return Err(ApiError::missing("SecurityGroupRule"));
            }
            for item in items {
                let key = |s: &str| format!("SecurityGroupRule.{item}.{s}");
                let id = p.required(&key("SecurityGroupRuleId"))?.to_owned();
                let old = all.iter().find(|r| r.id == id).ok_or_else(|| {
                    ApiError::new(
                        "InvalidSecurityGroupRuleId.NotFound",
                        format!("The security group rule ID '{id}' does not exist in this security group"),
                    )
                })?;
                let field = |s: &str| format!("SecurityGroupRule.{item}.SecurityGroupRule.{s}");
                let protocol = permissions::protocol(p.required(&field("IpProtocol"))?)?;
                let ports = permissions::ports(protocol, p.int(&field("FromPort"))?, p.int(&field("ToPort"))?)?;
                let mut query = Params::default();
                for (name, list, to) in [
                    ("CidrIpv4", "IpRanges", "CidrIp"),
                    ("CidrIpv6", "Ipv6Ranges", "CidrIpv6"),
                ] {
                    if let Some(v) = p.get(&field(name)) {
                        query.insert(format!("IpPermissions.1.{list}.1.{to}"), v);
                    }
                }
                if let Some(v) = p.get(&field("PrefixListId")) {
                    query.insert("IpPermissions.1.PrefixListIds.1.PrefixListId".to_owned(), v);
                }
                if let Some(v) = p.get(&field("ReferencedGroupId")) {
                    query.insert("IpPermissions.1.Groups.1.GroupId".to_owned(), v);
                }
                query.insert("IpPermissions.1.IpProtocol".to_owned(), "-1");
                let target = permissions::wanted(&query, view, &vpc)?.remove(0).target;
                let spec = RuleSpec {
                    id: id.clone(),
                    protocol,
                    ports,
                    target,
                    description: p.get(&field("Description")).map(str::to_owned),
                    tags: old.tags.clone(),
                };
                isolate(view, doc, gi, old.direction, std::slice::from_ref(&id))?;
                doc.replace_rule(&g.name, old.direction, &spec, &list_name(view))?;
            }
            Ok(())
        })
        .await?;
    Ok(done())
}

pub async fn update_descriptions(
    p: &Params,
    store: &Store,
    dir: Direction,
) -> Result<Answer, ApiError> {
    let owned = p.clone();
    store
        .change(move |view, doc| {
            let p = &owned;
            let gi = groups::named_group(p, view)?;
            let g = &view.vpc.groups[gi];
            let existing = view.rules(gi, dir);
            let mut changes: Vec<(String, Option<String>)> = Vec::new();
            let by_id = p.indices("SecurityGroupRuleDescription");
            if by_id.is_empty() {
                let vpc = view.vpc.vpc_of_group(g).to_owned();
                for w in permissions::wanted(p, view, &vpc)? {
                    let r = existing.iter().find(|r| w.is(r)).ok_or_else(|| {
                        ApiError::new(
                            "InvalidPermission.NotFound",
                            format!("The specified rule does not exist in this security group ({}).", describe_rule(&w)),
                        )
                    })?;
                    changes.push((r.id.clone(), w.description.clone()));
                }
            } else {
                for n in by_id {
                    let id = p.required(&format!("SecurityGroupRuleDescription.{n}.SecurityGroupRuleId"))?;
                    if !existing.iter().any(|r| r.id == id) {
                        return Err(ApiError::new(
                            "InvalidSecurityGroupRuleId.NotFound",
                            format!("The security group rule ID '{id}' does not exist in this security group"),
                        ));
                    }
                    let d = p.get(&format!("SecurityGroupRuleDescription.{n}.Description")).map(str::to_owned);
                    changes.push((id.to_owned(), d));
                }
            }
            let ids: Vec<String> = changes.iter().map(|(id, _)| id.clone()).collect();
            isolate(view, doc, gi, dir, &ids)?;
            for (id, description) in changes {
                let Some(old) = existing.iter().find(|r| r.id == id) else { continue };
                let mut spec = RuleSpec::of(old);
                spec.description = description.filter(|d| !d.is_empty());
                doc.replace_rule(&g.name, dir, &spec, &list_name(view))?;
            }
            Ok(())
        })
        .await?;
    Ok(done())
}

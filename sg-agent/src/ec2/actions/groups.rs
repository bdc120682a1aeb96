//! Security groups: create, describe, delete; stale groups and references.

use super::{Answer, filtered, permissions, tag_filter};
use crate::{
    config::Direction,
    ec2::{
        edit::RuleSpec,
        error::ApiError,
        ids,
        query::Params,
        store::Store,
        view::{Target, View},
        xml::Xml,
    },
};

/// The VPCs the file names ("" for the one unnamed VPC).
pub fn vpc_names(view: &View<'_>) -> Vec<String> {
    if view.vpc.vpcs.is_empty() {
        vec![String::new()]
    } else {
        view.vpc.vpcs.iter().map(|v| v.name.clone()).collect()
    }
}

/// A VPC by id (`None`: the default VPC).
pub fn vpc_by_id(view: &View<'_>, id: Option<&str>) -> Result<String, ApiError> {
    let Some(id) = id else {
        return Ok(view.vpc.default_vpc().to_owned());
    };
    vpc_names(view)
        .into_iter()
        .find(|n| view.vpc_id(n) == id)
        .ok_or_else(|| {
            ApiError::new(
                "InvalidVpcID.NotFound",
                format!("The vpc ID '{id}' does not exist"),
            )
        })
}

/// Whether a VPC has an IPv6 range.
fn has_ipv6(view: &View<'_>, vpc: &str) -> bool {
    let blocks = if view.vpc.vpcs.is_empty() {
        &view.vpc.cidr_blocks
    } else {
        match view.vpc.vpcs.iter().find(|v| v.name == vpc) {
            Some(v) => &v.cidr_blocks,
            None => return false,
        }
    };
    blocks.iter().any(|b| matches!(b, ipnet::IpNet::V6(_)))
}

/// The group a request names by `GroupId` (or `GroupName`, in the default
/// VPC).
pub fn named_group(p: &Params, view: &View<'_>) -> Result<usize, ApiError> {
    if let Some(id) = p.get("GroupId") {
        return view
            .group_by_id(id)
            .ok_or_else(|| ApiError::group_not_found(id));
    }
    if let Some(name) = p.get("GroupName") {
        let vpc = view.vpc.default_vpc();
        return view.group_by_name(name, Some(vpc)).ok_or_else(|| {
            ApiError::new(
                "InvalidGroup.NotFound",
                format!(
                    "The security group '{name}' does not exist in default VPC '{}'",
                    view.vpc_id(vpc)
                ),
            )
        });
    }
    Err(ApiError::missing("GroupId"))
}

/// AWS's characters for group names and descriptions.
fn aws_text(what: &str, text: &str) -> Result<(), ApiError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c);
    if text.is_empty() || text.chars().count() > 255 || !text.chars().all(ok) {
        return Err(ApiError::invalid_value(format!(
            "Value ({text}) for parameter {what} is invalid. Character sets beyond ASCII are not \
             supported; use 1 to 255 of a-z, A-Z, 0-9, spaces and ._-:/()#,@[]+=&;{{}}!$*"
        )));
    }
    Ok(())
}

pub async fn create(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    // AWS trims trailing spaces from the name.
    let name = p.required("GroupName")?.trim_end().to_owned();
    let description = p.required("GroupDescription")?.to_owned();
    aws_text("GroupName", &name)?;
    aws_text("GroupDescription", &description)?;
    if name.to_ascii_lowercase().starts_with("sg-") {
        return Err(ApiError::invalid_value(format!(
            "Group names may not be in the format sg-*: {name}"
        )));
    }
    let vpc_id = p.get("VpcId").map(str::to_owned);
    let tags = p.tag_specifications("security-group")?;
    let id = ids::fresh("sg");
    let account = store.account.clone();
    let (gid, tags) = store
        .change(move |view, doc| {
            let vpc = vpc_by_id(view, vpc_id.as_deref())?;
            if view.group_by_name(&name, Some(&vpc)).is_some() {
                return Err(ApiError::new(
                    "InvalidGroup.Duplicate",
                    format!(
                        "The security group '{name}' already exists for VPC '{}'",
                        view.vpc_id(&vpc)
                    ),
                ));
            }
            let in_vpc = (!view.vpc.vpcs.is_empty() && vpc != view.vpc.default_vpc())
                .then_some(vpc.as_str());
            doc.add_group(&name, &id, &description, in_vpc, &tags);
            // AWS's default outbound rule(s): all traffic to 0.0.0.0/0, and
            // to ::/0 where the VPC has an IPv6 range.
            let mut egress = vec![Target::V4("0.0.0.0/0".to_owned())];
            if has_ipv6(view, &vpc) {
                egress.push(Target::V6("::/0".to_owned()));
            }
            let rules: Vec<RuleSpec> = egress
                .into_iter()
                .map(|target| RuleSpec {
                    id: ids::fresh("sgr"),
                    protocol: crate::config::Protocol::All,
                    ports: crate::config::Ports::All,
                    target,
                    description: None,
                    tags: Vec::new(),
                })
                .collect();
            doc.push_rules(&name, Direction::Egress, &rules, &|s| s.to_owned())?;
            Ok((id, tags))
        })
        .await?;
    let mut x = Xml::new();
    x.bool("return", true)
        .text("groupId", &gid)
        .tags("tagSet", &tags)
        .text(
            "securityGroupArn",
            &format!(
                "arn:aws:ec2:{}:{}:security-group/{gid}",
                account.region, account.id
            ),
        );
    Ok(Answer::Ec2(x))
}

pub async fn describe(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let snap = store.read().await?;
    let view = snap.view(&store.account);
    let mut wanted: Vec<usize> = (0..view.vpc.groups.len()).collect();
    let ids = p.list("GroupId");
    if !ids.is_empty() {
        wanted = ids
            .iter()
            .map(|id| {
                view.group_by_id(id)
                    .ok_or_else(|| ApiError::group_not_found(id))
            })
            .collect::<Result<_, _>>()?;
    }
    let names = p.list("GroupName");
    if !names.is_empty() {
        let vpc = view.vpc.default_vpc();
        let by_name: Vec<usize> = names
            .iter()
            .map(|n| {
                view.group_by_name(n, Some(vpc)).ok_or_else(|| {
                    ApiError::new(
                        "InvalidGroup.NotFound",
                        format!(
                            "The security group '{n}' does not exist in default VPC '{}'",
                            view.vpc_id(vpc)
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        wanted.retain(|g| by_name.contains(g));
    }
    let wanted = filtered(wanted, &p.filters(), |&gi, name| {
        let g = &view.vpc.groups[gi];
        Some(match name {
            "group-id" => vec![view.group_id(g)],
            "group-name" => vec![g.name.clone()],
            "vpc-id" => vec![view.group_vpc_id(g)],
            "description" => vec![g.description.clone().unwrap_or_default()],
            "owner-id" => vec![view.account.id.clone()],
            other => return tag_filter(&g.tags, other),
        })
    })?;
    let mut x = Xml::new();
    x.list("securityGroupInfo", wanted, |x, gi| {
        write_group(x, gi, &view);
    });
    Ok(Answer::Ec2(x))
}

fn write_group(x: &mut Xml, gi: usize, view: &View<'_>) {
    let g = &view.vpc.groups[gi];
    let id = view.group_id(g);
    x.text("ownerId", &view.account.id)
        .text("groupId", &id)
        .text("groupName", &g.name)
        .text(
            "groupDescription",
            g.description.as_deref().unwrap_or_default(),
        )
        .text("vpcId", &view.group_vpc_id(g))
        .text("securityGroupArn", &view.group_arn(&id));
    permissions::write_permissions(
        x,
        "ipPermissions",
        &view.rules(gi, Direction::Ingress),
        view,
    );
    permissions::write_permissions(
        x,
        "ipPermissionsEgress",
        &view.rules(gi, Direction::Egress),
        view,
    );
    x.tags("tagSet", &g.tags);
}

pub async fn delete(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let p_id = p.get("GroupId").map(str::to_owned);
    let p_name = p.get("GroupName").map(str::to_owned);
    store
        .change(move |view, doc| {
            let gi = match (&p_id, &p_name) {
                (Some(id), _) => view.group_by_id(id).ok_or_else(|| ApiError::group_not_found(id))?,
                (None, Some(name)) => view
                    .group_by_name(name, Some(view.vpc.default_vpc()))
                    .ok_or_else(|| ApiError::group_not_found(name))?,
                (None, None) => return Err(ApiError::missing("GroupId")),
            };
            let g = &view.vpc.groups[gi];
            let id = view.group_id(g);
            if g.name == crate::config::DEFAULT_GROUP {
                return Err(ApiError::new(
                    "CannotDelete",
                    format!("the specified group: \"{id}\" name: \"default\" cannot be deleted by a user"),
                ));
            }
            let (instances, referencing) = view.users(gi);
            if let Some(i) = instances.first() {
                return Err(ApiError::new(
                    "DependencyViolation",
                    format!("resource {id} has a dependent object (instance {}, {})", view.instance_id(i), i.name),
                ));
            }
            if let Some(other) = referencing.first() {
                return Err(ApiError::new(
                    "DependencyViolation",
                    format!("resource {id} has a dependent object (a rule of {other} references it)"),
                ));
            }
            doc.remove("security_group", &g.name)?;
            Ok(id)
        })
        .await
        .map(|id| {
            let mut x = Xml::new();
            x.bool("return", true).text("groupId", &id);
            Answer::Ec2(x)
        })
}

/// Rules that reference a group that is not there (another VPC's, not
/// peered; or no group at all).
pub async fn stale(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let snap = store.read().await?;
    let view = snap.view(&store.account);
    let vpc = vpc_by_id(&view, Some(p.required("VpcId")?))?;
    let mut x = Xml::new();
    let stale: Vec<usize> = (0..view.vpc.groups.len())
        .filter(|&gi| view.vpc.vpc_of_group(&view.vpc.groups[gi]) == vpc)
        .filter(|&gi| {
            !stale_rules(&view, gi, Direction::Ingress).is_empty()
                || !stale_rules(&view, gi, Direction::Egress).is_empty()
        })
        .collect();
    x.list("staleSecurityGroupSet", stale, |x, gi| {
        let g = &view.vpc.groups[gi];
        x.text("groupId", &view.group_id(g))
            .text("groupName", &g.name)
            .text("description", g.description.as_deref().unwrap_or_default())
            .text("vpcId", &view.group_vpc_id(g));
        for (name, dir) in [
            ("staleIpPermissions", Direction::Ingress),
            ("staleIpPermissionsEgress", Direction::Egress),
        ] {
            let rules = stale_rules(&view, gi, dir);
            permissions::write_permissions(x, name, &rules, &view);
        }
    });
    Ok(Answer::Ec2(x))
}

fn stale_rules(view: &View<'_>, gi: usize, dir: Direction) -> Vec<crate::ec2::view::ApiRule> {
    let g = &view.vpc.groups[gi];
    view.rules(gi, dir)
        .into_iter()
        .filter(|r| match &r.target {
            Target::Group { id, .. } => view.group_by_id(id).is_none_or(|o| {
                view.vpc
                    .stale_reference(&g.name, &view.vpc.groups[o].name, dir)
                    .is_some()
            }),
            _ => false,
        })
        .collect()
}

/// The VPCs (peered ones: the file's `[[vpc_peering]]`) whose groups
/// reference the named groups.
pub async fn references(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let snap = store.read().await?;
    let view = snap.view(&store.account);
    let ids = p.list("GroupId");
    if ids.is_empty() {
        return Err(ApiError::missing("GroupId"));
    }
    let mut found = Vec::new();
    for id in &ids {
        let gi = view
            .group_by_id(id)
            .ok_or_else(|| ApiError::group_not_found(id))?;
        let own = view.vpc.vpc_of_group(&view.vpc.groups[gi]).to_owned();
        for r in view.all_rules() {
            let other = &view.vpc.groups[r.group];
            let other_vpc = view.vpc.vpc_of_group(other);
            if matches!(&r.target, Target::Group { id: t, .. } if t == id) && other_vpc != own {
                let entry = (id.clone(), view.vpc_id(other_vpc));
                if !found.contains(&entry) {
                    found.push(entry);
                }
            }
        }
    }
    let mut x = Xml::new();
    x.list("securityGroupReferenceSet", found, |x, (id, vpc)| {
        x.text("groupId", &id).text("referencingVpcId", &vpc);
    });
    Ok(Answer::Ec2(x))
}

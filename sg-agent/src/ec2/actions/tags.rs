//! Tags on groups, rules, instances and prefix lists, kept in the file
//! (`tags = { Key = "value" }` on each table).

use super::{Answer, done, filtered, rules};
use crate::{
    config::Direction,
    ec2::{edit::Doc, error::ApiError, query::Params, store::Store, view::View, xml::Xml},
};

/// What a tagged resource id names.
enum Resource {
    Group(usize),
    Rule(usize, Direction),
    Instance(usize),
    PrefixList(usize),
}

fn find(view: &View<'_>, id: &str) -> Result<Resource, ApiError> {
    let nf = |code: &'static str, what: &str| {
        ApiError::new(code, format!("The {what} ID '{id}' does not exist"))
    };
    if id.starts_with("sgr-") {
        return view
            .all_rules()
            .into_iter()
            .find(|r| r.id == id)
            .map(|r| Resource::Rule(r.group, r.direction))
            .ok_or_else(|| nf("InvalidSecurityGroupRuleId.NotFound", "security group rule"));
    }
    if id.starts_with("sg-") {
        return view
            .group_by_id(id)
            .map(Resource::Group)
            .ok_or_else(|| ApiError::group_not_found(id));
    }
    if id.starts_with("i-") {
        return view
            .instance_by_id(id)
            .map(Resource::Instance)
            .ok_or_else(|| nf("InvalidInstanceID.NotFound", "instance"));
    }
    if id.starts_with("pl-") {
        return view
            .prefix_list(id)
            .map(Resource::PrefixList)
            .ok_or_else(|| nf("InvalidPrefixListID.NotFound", "prefix list"));
    }
    Err(ApiError::new(
        "InvalidID",
        format!(
            "The ID '{id}' is not valid (sg-agent tags security groups, their rules, instances and prefix lists)"
        ),
    ))
}

fn change_tags(
    view: &View<'_>,
    doc: &mut Doc,
    id: &str,
    add: &[(String, String)],
    remove: &[(String, Option<String>)],
) -> Result<(), ApiError> {
    let missing = || ApiError::internal("a tagged resource is not in the rules file");
    match find(view, id)? {
        Resource::Group(gi) => {
            rules::prepare(view, doc, gi, Direction::Ingress)?;
            let name = &view.vpc.groups[gi].name;
            Doc::set_tags(
                doc.named("security_group", name).ok_or_else(missing)?,
                add,
                remove,
            );
        }
        Resource::Rule(gi, dir) => {
            rules::isolate(view, doc, gi, dir, &[id.to_owned()])?;
            let name = &view.vpc.groups[gi].name;
            Doc::set_tags(doc.rule_block(name, dir, id)?, add, remove);
        }
        Resource::Instance(i) => {
            let name = &view.vpc.instances[i].name;
            Doc::set_tags(
                doc.named("instance", name).ok_or_else(missing)?,
                add,
                remove,
            );
        }
        Resource::PrefixList(i) => {
            let name = &view.vpc.prefix_lists[i].name;
            Doc::set_tags(
                doc.named("prefix_list", name).ok_or_else(missing)?,
                add,
                remove,
            );
        }
    }
    Ok(())
}

pub async fn create(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let ids = p.list("ResourceId");
    if ids.is_empty() {
        return Err(ApiError::missing("ResourceId"));
    }
    let tags: Vec<(String, String)> = p
        .tags("Tag")
        .into_iter()
        .map(|(k, v)| (k, v.unwrap_or_default()))
        .collect();
    if tags.is_empty() {
        return Err(ApiError::missing("Tag"));
    }
    for (k, _) in &tags {
        if k.starts_with("aws:") {
            return Err(ApiError::invalid_value(format!(
                "Tag keys starting with 'aws:' are reserved for internal use: {k}"
            )));
        }
    }
    store
        .change(move |view, doc| {
            for id in &ids {
                change_tags(view, doc, id, &tags, &[])?;
            }
            Ok(())
        })
        .await?;
    Ok(done())
}

pub async fn delete(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let ids = p.list("ResourceId");
    if ids.is_empty() {
        return Err(ApiError::missing("ResourceId"));
    }
    let tags = p.tags("Tag");
    store
        .change(move |view, doc| {
            for id in &ids {
                // No tags named: every tag of the resource goes.
                let remove = if tags.is_empty() {
                    all_tags(view, id)?
                        .into_iter()
                        .map(|(k, _)| (k, None))
                        .collect()
                } else {
                    tags.clone()
                };
                change_tags(view, doc, id, &[], &remove)?;
            }
            Ok(())
        })
        .await?;
    Ok(done())
}

fn all_tags(view: &View<'_>, id: &str) -> Result<Vec<(String, String)>, ApiError> {
    Ok(match find(view, id)? {
        Resource::Group(gi) => view.vpc.groups[gi].tags.clone(),
        Resource::Rule(..) => view
            .all_rules()
            .into_iter()
            .find(|r| r.id == id)
            .map(|r| r.tags)
            .unwrap_or_default(),
        Resource::Instance(i) => view.vpc.instances[i].tags.clone(),
        Resource::PrefixList(i) => view.vpc.prefix_lists[i].tags.clone(),
    })
}

pub async fn describe(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let snap = store.read().await?;
    let view = snap.view(&store.account);
    let mut all: Vec<(String, &'static str, String, String)> = Vec::new();
    let mut add = |id: String, ty: &'static str, tags: &[(String, String)]| {
        for (k, v) in tags {
            all.push((id.clone(), ty, k.clone(), v.clone()));
        }
    };
    for g in &view.vpc.groups {
        add(view.group_id(g), "security-group", &g.tags);
    }
    for r in view.all_rules() {
        add(r.id.clone(), "security-group-rule", &r.tags);
    }
    for i in &view.vpc.instances {
        add(view.instance_id(i), "instance", &i.tags);
    }
    for pl in &view.vpc.prefix_lists {
        add(view.prefix_list_id(pl), "prefix-list", &pl.tags);
    }
    let all = filtered(all, &p.filters(), |(id, ty, k, v), name| {
        Some(match name {
            "resource-id" => vec![id.clone()],
            "resource-type" => vec![(*ty).to_owned()],
            "key" => vec![k.clone()],
            "value" => vec![v.clone()],
            _ => return None,
        })
    })?;
    let mut x = Xml::new();
    x.list("tagSet", all, |x, (id, ty, k, v)| {
        x.text("resourceId", &id)
            .text("resourceType", ty)
            .text("key", &k)
            .text("value", &v);
    });
    Ok(Answer::Ec2(x))
}

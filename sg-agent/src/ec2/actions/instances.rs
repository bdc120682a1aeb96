//! The file's instances as EC2's instances and network interfaces (one
//! primary interface each), and their groups changed.

use super::{Answer, done, filtered, tag_filter};
use crate::{
    config::Instance,
    ec2::{error::ApiError, ids, query::Params, store::Store, view::View, xml::Xml},
};

/// An instance's groups: (id, name).
fn groups_of(view: &View<'_>, i: &Instance) -> Vec<(String, String)> {
    let vpc = view.vpc.vpc_of_instance(i);
    i.groups
        .iter()
        .filter_map(|(name, _)| {
            view.group_by_name(name, Some(vpc))
                .map(|gi| (view.group_id(&view.vpc.groups[gi]), name.clone()))
        })
        .collect()
}

fn instance_field(view: &View<'_>, i: &Instance, name: &str) -> Option<Vec<String>> {
    let groups = groups_of(view, i);
    Some(match name {
        "instance-id" | "attachment.instance-id" => vec![view.instance_id(i)],
        "network-interface-id" | "network-interface.network-interface-id" => vec![view.eni_id(i)],
        "vpc-id" => vec![view.vpc_id(view.vpc.vpc_of_instance(i))],
        "subnet-id" => view
            .subnet_of(i)
            .map(|s| view.subnet_id(&s))
            .into_iter()
            .collect(),
        "group-id" | "instance.group-id" => groups.into_iter().map(|(id, _)| id).collect(),
        "group-name" | "instance.group-name" => groups.into_iter().map(|(_, n)| n).collect(),
        "private-ip-address" | "addresses.private-ip-address" => i
            .addresses
            .iter()
            .filter(|a| a.is_ipv4())
            .map(ToString::to_string)
            .collect(),
        "instance-state-name" => vec!["running".to_owned()],
        "owner-id" => vec![view.account.id.clone()],
        other => return tag_filter(&i.tags, other),
    })
}

fn selected<'a>(
    view: &'a View<'_>,
    p: &Params,
    ids_key: &str,
    by_eni: bool,
) -> Result<Vec<&'a Instance>, ApiError> {
    let mut list: Vec<&Instance> = view.vpc.instances.iter().collect();
    let ids = p.list(ids_key);
    if !ids.is_empty() {
        for id in &ids {
            let found = if by_eni {
                view.instance_by_eni(id)
            } else {
                view.instance_by_id(id)
            };
            if found.is_none() {
                return Err(if by_eni {
                    ApiError::new(
                        "InvalidNetworkInterfaceID.NotFound",
                        format!("The networkInterface ID '{id}' does not exist"),
                    )
                } else {
                    ApiError::new(
                        "InvalidInstanceID.NotFound",
                        format!("The instance ID '{id}' does not exist"),
                    )
                });
            }
        }
        list.retain(|i| {
            ids.contains(&if by_eni {
                view.eni_id(i)
            } else {
                view.instance_id(i)
            })
        });
    }
    filtered(list, &p.filters(), |i, name| instance_field(view, i, name))
}

fn write_interface(x: &mut Xml, view: &View<'_>, i: &Instance, in_instance: bool) {
    let v4 = i
        .addresses
        .iter()
        .find(|a| a.is_ipv4())
        .map(ToString::to_string);
    x.text("networkInterfaceId", &view.eni_id(i));
    if let Some(s) = view.subnet_of(i) {
        x.text("subnetId", &view.subnet_id(&s));
    }
    x.text("vpcId", &view.vpc_id(view.vpc.vpc_of_instance(i)))
        .text("ownerId", &view.account.id)
        .text("status", "in-use")
        .opt("macAddress", i.mac.map(|m| m.to_string()).as_deref())
        .opt("privateIpAddress", v4.as_deref())
        .bool("sourceDestCheck", i.source_dest_check);
    x.list("groupSet", groups_of(view, i), |x, (id, name)| {
        x.text("groupId", &id).text("groupName", &name);
    });
    x.elem("attachment", |x| {
        x.text(
            "attachmentId",
            &ids::derived("eni-attach", &[&view.eni_id(i)]),
        );
        if !in_instance {
            x.text("instanceId", &view.instance_id(i))
                .text("instanceOwnerId", &view.account.id);
        }
        x.num("deviceIndex", 0)
            .text("status", "attached")
            .bool("deleteOnTermination", true);
    });
    x.list(
        "privateIpAddressesSet",
        i.addresses.iter().filter(|a| a.is_ipv4()).enumerate(),
        |x, (n, a)| {
            x.text("privateIpAddress", &a.to_string())
                .bool("primary", n == 0);
        },
    );
    x.list(
        "ipv6AddressesSet",
        i.addresses.iter().filter(|a| a.is_ipv6()),
        |x, a| {
            x.text("ipv6Address", &a.to_string());
        },
    );
    x.text("interfaceType", "interface");
    if !in_instance {
        x.tags("tagSet", &[]);
    }
}

pub async fn describe(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let snap = store.read().await?;
    let view = snap.view(&store.account);
    let list = selected(&view, p, "InstanceId", false)?;
    let mut x = Xml::new();
    x.list("reservationSet", list, |x, i| {
        x.text("reservationId", &ids::derived("r", &[&view.instance_id(i)]))
            .text("ownerId", &view.account.id)
            .list("groupSet", Vec::<()>::new(), |_, ()| {});
        x.list("instancesSet", [i], |x, i| {
            let v4 = i
                .addresses
                .iter()
                .find(|a| a.is_ipv4())
                .map(ToString::to_string);
            x.text("instanceId", &view.instance_id(i))
                .elem("instanceState", |x| {
                    x.num("code", 16).text("name", "running");
                })
                .text(
                    "instanceType",
                    i.instance_type.as_deref().unwrap_or("t3.micro"),
                )
                .opt("privateIpAddress", v4.as_deref())
                .opt(
                    "subnetId",
                    view.subnet_of(i).map(|s| view.subnet_id(&s)).as_deref(),
                )
                .text("vpcId", &view.vpc_id(view.vpc.vpc_of_instance(i)))
                .bool("sourceDestCheck", i.source_dest_check)
                .list("groupSet", groups_of(&view, i), |x, (id, name)| {
                    x.text("groupId", &id).text("groupName", &name);
                })
                .list("networkInterfaceSet", [i], |x, i| {
                    write_interface(x, &view, i, true);
                })
                .tags("tagSet", &i.tags);
        });
    });
    Ok(Answer::Ec2(x))
}

pub async fn describe_interfaces(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let snap = store.read().await?;
    let view = snap.view(&store.account);
    let list = selected(&view, p, "NetworkInterfaceId", true)?;
    let mut x = Xml::new();
    x.list("networkInterfaceSet", list, |x, i| {
        write_interface(x, &view, i, false);
    });
    Ok(Answer::Ec2(x))
}

/// Sets an instance's groups (by id) in the file.
async fn set_groups(
    store: &Store,
    find: impl Fn(&View<'_>) -> Result<usize, ApiError> + Send + 'static,
    ids: Vec<String>,
) -> Result<Answer, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::missing("GroupId"));
    }
    store
        .change(move |view, doc| {
            let ii = find(view)?;
            let inst = &view.vpc.instances[ii];
            let vpc = view.vpc.vpc_of_instance(inst);
            let mut names = Vec::new();
            for id in &ids {
                let gi = view.group_by_id(id).ok_or_else(|| ApiError::group_not_found(id))?;
                let g = &view.vpc.groups[gi];
                if !view.vpc.vpcs_of_group(g).any(|v| v == vpc) {
                    return Err(ApiError::invalid_value(format!(
                        "Security group {id} and instance {} belong to different networks.",
                        view.instance_id(inst)
                    )));
                }
                if !names.contains(&g.name) {
                    names.push(g.name.clone());
                }
            }
            let limit = view.vpc.limits.groups_per_instance as usize;
            if names.len() > limit {
                return Err(ApiError::new(
                    "SecurityGroupsPerInstanceLimitExceeded",
                    format!("The maximum number of security groups per interface has been reached ({limit}: [limits] groups_per_instance)."),
                ));
            }
            doc.set_strings("instance", &inst.name, "security_groups", &names)
        })
        .await?;
    Ok(done())
}

pub async fn modify(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let id = p.required("InstanceId")?.to_owned();
    let groups = p.list("GroupId");
    if groups.is_empty() {
        let what = p
            .get("Attribute")
            .map(str::to_owned)
            .or_else(|| p.indices("").first().map(|_| String::new()))
            .unwrap_or_else(|| "this attribute".to_owned());
        return Err(ApiError::new(
            "UnsupportedOperation",
            format!(
                "ModifyInstanceAttribute: sg-agent changes an instance's security groups (GroupId.N) only, not {what}"
            ),
        ));
    }
    set_groups(
        store,
        move |view| {
            view.instance_by_id(&id).ok_or_else(|| {
                ApiError::new(
                    "InvalidInstanceID.NotFound",
                    format!("The instance ID '{id}' does not exist"),
                )
            })
        },
        groups,
    )
    .await
}

pub async fn modify_interface(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let id = p.required("NetworkInterfaceId")?.to_owned();
    let groups = p.list("SecurityGroupId");
    if groups.is_empty() {
        return Err(ApiError::new(
            "UnsupportedOperation",
            "ModifyNetworkInterfaceAttribute: sg-agent changes an interface's security groups (SecurityGroupId.N) only",
        ));
    }
    set_groups(
        store,
        move |view| {
            view.instance_by_eni(&id).ok_or_else(|| {
                ApiError::new(
                    "InvalidNetworkInterfaceID.NotFound",
                    format!("The networkInterface ID '{id}' does not exist"),
                )
            })
        },
        groups,
    )
    .await
}

//! The actions: one module per kind of resource; each reads the file
//! (`Store::read`) or changes it (`Store::change`).

mod groups;
mod instances;
mod network_acls;
mod permissions;
mod prefix_lists;
mod rules;
mod tags;
mod vpcs;

use super::{
    Shared,
    error::ApiError,
    query::Params,
    xml::{EC2_NS, Xml},
};

/// An action's answer.
pub enum Answer {
    Ec2(Xml),
    /// STS's `GetCallerIdentity`, in STS's own shape.
    Sts(Xml),
}

impl Answer {
    pub fn render(self, action: &str, request_id: &str) -> String {
        match self {
            Self::Ec2(x) => x.response(action, request_id, EC2_NS),
            Self::Sts(x) => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{action}Response xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><{action}Result>{}</{action}Result><ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{action}Response>",
                x.into_string()
            ),
        }
    }
}

/// `<return>true</return>` and nothing else.
fn done() -> Answer {
    let mut x = Xml::new();
    x.bool("return", true);
    Answer::Ec2(x)
}

pub async fn dispatch(action: &str, p: &Params, api: &Shared) -> Result<Answer, ApiError> {
    let store = &api.store;
    match action {
        "" => Err(ApiError::missing("Action")),
        "GetCallerIdentity" => {
            let a = &store.account;
            let mut x = Xml::new();
            x.text("Arn", &format!("arn:aws:iam::{}:root", a.id))
                .text("UserId", &a.id)
                .text("Account", &a.id);
            Ok(Answer::Sts(x))
        }
        "CreateSecurityGroup" => groups::create(p, store).await,
        "DescribeSecurityGroups" => groups::describe(p, store).await,
        "DeleteSecurityGroup" => groups::delete(p, store).await,
        "DescribeStaleSecurityGroups" => groups::stale(p, store).await,
        "DescribeSecurityGroupReferences" => groups::references(p, store).await,
        "AuthorizeSecurityGroupIngress" => {
            rules::authorize(p, store, crate::config::Direction::Ingress).await
        }
        "AuthorizeSecurityGroupEgress" => {
            rules::authorize(p, store, crate::config::Direction::Egress).await
        }
        "RevokeSecurityGroupIngress" => {
            rules::revoke(p, store, crate::config::Direction::Ingress).await
        }
        "RevokeSecurityGroupEgress" => {
            rules::revoke(p, store, crate::config::Direction::Egress).await
        }
        "DescribeSecurityGroupRules" => rules::describe(p, store).await,
        "ModifySecurityGroupRules" => rules::modify(p, store).await,
        "UpdateSecurityGroupRuleDescriptionsIngress" => {
            rules::update_descriptions(p, store, crate::config::Direction::Ingress).await
        }
        "UpdateSecurityGroupRuleDescriptionsEgress" => {
            rules::update_descriptions(p, store, crate::config::Direction::Egress).await
        }
        "CreateTags" => tags::create(p, store).await,
        "DeleteTags" => tags::delete(p, store).await,
        "DescribeTags" => tags::describe(p, store).await,
        "DescribeInstances" => instances::describe(p, store).await,
        "DescribeNetworkInterfaces" => instances::describe_interfaces(p, store).await,
        "ModifyInstanceAttribute" => instances::modify(p, store).await,
        "ModifyNetworkInterfaceAttribute" => instances::modify_interface(p, store).await,
        "DescribeVpcs" => vpcs::describe(p, store).await,
        "DescribeSubnets" => vpcs::subnets(p, store).await,
        "DescribeNetworkAcls" => network_acls::describe(p, store).await,
        "CreateNetworkAcl" => network_acls::create(p, store).await,
        "DeleteNetworkAcl" => network_acls::delete(p, store).await,
        "CreateNetworkAclEntry" => network_acls::create_entry(p, store).await,
        "ReplaceNetworkAclEntry" => network_acls::replace_entry(p, store).await,
        "DeleteNetworkAclEntry" => network_acls::delete_entry(p, store).await,
        "ReplaceNetworkAclAssociation" => network_acls::replace_association(p, store).await,
        "DescribeManagedPrefixLists" => prefix_lists::describe(p, store).await,
        "GetManagedPrefixListEntries" => prefix_lists::entries(p, store).await,
        "CreateManagedPrefixList" => prefix_lists::create(p, store).await,
        "ModifyManagedPrefixList" => prefix_lists::modify(p, store).await,
        "DeleteManagedPrefixList" => prefix_lists::delete(p, store).await,
        "RunInstances" | "TerminateInstances" | "StartInstances" | "StopInstances" => {
            Err(ApiError::new(
                "UnsupportedOperation",
                format!(
                    "{action}: sg-agent's instances are the rules file's [[instance]] tables \
                     (where each lives is this host's business: a namespace, a container's veth, \
                     a VM's tap); add or remove them there"
                ),
            ))
        }
        other => Err(ApiError::new(
            "InvalidAction",
            format!(
                "The action {other} is not valid for this web service (sg-agent answers EC2's security-group, instance-group, tag, VPC, subnet, network-ACL and prefix-list calls)."
            ),
        )),
    }
}

/// Keeps what every filter matches; `field` gives a resource's values for
/// a filter name (`None`: a filter this call does not know).
fn filtered<T>(
    items: Vec<T>,
    filters: &[super::query::Filter],
    field: impl Fn(&T, &str) -> Option<Vec<String>>,
) -> Result<Vec<T>, ApiError> {
    let mut out = Vec::new();
    for item in items {
        let mut keep = true;
        for f in filters {
            let values = field(&item, &f.name).ok_or_else(|| {
                ApiError::invalid_value(format!("The filter '{}' is invalid", f.name))
            })?;
            if !values.iter().any(|v| f.matches(v)) {
                keep = false;
            }
        }
        if keep {
            out.push(item);
        }
    }
    Ok(out)
}

/// A `tag:KEY`, `tag-key` or `tag-value` filter's values on `tags`.
fn tag_filter(tags: &[(String, String)], name: &str) -> Option<Vec<String>> {
    if let Some(key) = name.strip_prefix("tag:") {
        return Some(
            tags.iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
                .collect(),
        );
    }
    match name {
        "tag-key" => Some(tags.iter().map(|(k, _)| k.clone()).collect()),
        "tag-value" => Some(tags.iter().map(|(_, v)| v.clone()).collect()),
        _ => None,
    }
}

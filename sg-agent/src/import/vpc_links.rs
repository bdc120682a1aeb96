//! How the imported VPCs reach each other besides peering: transit
//! gateways with their VPC attachments, and security group VPC
//! associations, as the AWS CLI describes them
//! (`describe-transit-gateways`, `describe-transit-gateway-vpc-attachments`,
//! `describe-security-group-vpc-associations`) or Terraform's state holds
//! them. Both importers read them into [`VpcLinks`], which the renderer
//! writes as `[[transit_gateway]]` tables and `associated_vpcs` keys.
//!
//! Decisions:
//! * Only what is in force is carried: attachments in state `available`
//!   (or `pending`/`modifying`, which AWS routes), associations in state
//!   `associated`. A deleted attachment or a disassociated VPC makes the
//!   references across it stale on AWS, and here by its absence.
//! * AWS's defaults are kept: a transit gateway's
//!   `SecurityGroupReferencingSupport` is off unless it says `enable`, an
//!   attachment's is on unless it says `disable`.
//! * Two VPCs that a transit gateway attaches are not taken as peered
//!   because a rule references across them (the peering the renderer
//!   otherwise assumes): across a transit gateway AWS carries inbound
//!   references only, and only with the option on, so a peering made up
//!   here would bring outbound references back to life.

use std::{collections::BTreeSet, fmt::Write as _};

use serde::Deserialize;

use super::aws::Tag;

/// A transit gateway and the VPCs it attaches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransitGateway {
    pub id: String,
    /// Its `Name` tag, if any (the file's name for it; else its id).
    pub name: Option<String>,
    /// The gateway's `SecurityGroupReferencingSupport` (AWS: off).
    pub referencing: bool,
    /// Each attached VPC's id, with its attachment's option (AWS: on).
    pub vpcs: Vec<(String, bool)>,
}

/// The links between VPCs an import carries besides peerings.
#[derive(Clone, Debug, Default)]
pub struct VpcLinks {
    pub transit_gateways: Vec<TransitGateway>,
    /// (group id, VPC id): a security group associated with another VPC.
    pub associations: Vec<(String, String)>,
    /// VPC pairs peered by a peering the input names (Terraform's
    /// `aws_vpc_peering_connection`), besides those the renderer infers.
    pub peerings: Vec<(String, String)>,
}

impl VpcLinks {
    /// Whether some transit gateway attaches both VPCs (whatever its
    /// options: then it is the link, and no peering is assumed).
    pub fn attached_together(&self, a: &str, b: &str) -> bool {
        self.transit_gateways
            .iter()
            .any(|t| t.vpcs.iter().any(|(v, _)| v == a) && t.vpcs.iter().any(|(v, _)| v == b))
    }

    /// The VPCs `group` is associated with.
    pub fn associated_vpcs(&self, group: &str) -> Vec<String> {
        let set: BTreeSet<&str> = self
            .associations
            .iter()
            .filter(|(g, _)| g == group)
            .map(|(_, v)| v.as_str())
            .collect();
        set.into_iter().map(str::to_owned).collect()
    }

    /// Every VPC these links name.
    pub fn vpcs(&self) -> BTreeSet<&str> {
        self.associations
            .iter()
            .map(|(_, v)| v.as_str())
            .chain(
                self.peerings
                    .iter()
                    .flat_map(|(a, b)| [a.as_str(), b.as_str()]),
            )
            .collect()
    }

    /// The `[[transit_gateway]]` tables, each with the attachments to
    /// `declared` VPCs (the others are outside the import). A gateway
    /// left with fewer than two links nothing and is left out.
    pub fn render_transit_gateways(&self, declared: &BTreeSet<&str>, out: &mut String) {
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let mut gateways: Vec<&TransitGateway> = self.transit_gateways.iter().collect();
        gateways.sort_by(|a, b| a.id.cmp(&b.id));
        for t in gateways {
            let mut vpcs: Vec<&(String, bool)> = t
                .vpcs
                .iter()
                .filter(|(v, _)| declared.contains(v.as_str()))
                .collect();
            vpcs.sort();
            vpcs.dedup();
            if vpcs.len() < 2 {
                continue;
            }
            let _ = writeln!(out, "\n[[transit_gateway]]");
            let _ = writeln!(out, "name = {}", quote(t.name.as_deref().unwrap_or(&t.id)));
            if crate::config::is_aws_id("tgw", &t.id) {
                let _ = writeln!(out, "id = {}", quote(&t.id));
            }
            let _ = writeln!(out, "security_group_referencing = {}", t.referencing);
            let items: Vec<String> = vpcs
                .iter()
                .map(|(v, on)| {
                    if *on {
                        quote(v)
                    } else {
                        format!(
                            "{{ vpc = {}, security_group_referencing = false }}",
                            quote(v)
                        )
                    }
                })
                .collect();
            let _ = writeln!(out, "vpcs = [{}]", items.join(", "));
        }
    }
}

/// `describe-transit-gateways`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TransitGateways {
    #[serde(default)]
    pub transit_gateways: Vec<DescribedGateway>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribedGateway {
    pub transit_gateway_id: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub options: Options,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Options {
    #[serde(default)]
    pub security_group_referencing_support: Option<String>,
}

/// `describe-transit-gateway-vpc-attachments`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TransitGatewayVpcAttachments {
    #[serde(default)]
    pub transit_gateway_vpc_attachments: Vec<DescribedAttachment>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribedAttachment {
    pub transit_gateway_id: String,
    pub vpc_id: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub options: Options,
}

/// `describe-security-group-vpc-associations`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecurityGroupVpcAssociations {
    #[serde(default)]
    pub security_group_vpc_associations: Vec<DescribedAssociation>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribedAssociation {
    pub group_id: String,
    pub vpc_id: String,
    #[serde(default)]
    pub state: Option<String>,
}

/// Whether an option's value turns it on, `default` when absent.
pub fn enabled(value: Option<&str>, default: bool) -> bool {
    value.map_or(default, |v| v.eq_ignore_ascii_case("enable"))
}

/// Whether a transit gateway or attachment in `state` carries traffic.
pub fn attachment_live(state: Option<&str>) -> bool {
    state.is_none_or(|s| matches!(s, "available" | "pending" | "modifying"))
}

/// Whether an association in `state` is in force.
pub fn association_live(state: Option<&str>) -> bool {
    state.is_none_or(|s| s == "associated")
}

impl VpcLinks {
    /// The links the AWS CLI's JSON describes; `gateways` without
    /// `attachments` (or the reverse) links nothing.
    pub fn described(
        gateways: &TransitGateways,
        attachments: &TransitGatewayVpcAttachments,
        associations: &SecurityGroupVpcAssociations,
    ) -> Self {
        let transit_gateways = gateways
            .transit_gateways
            .iter()
            .filter(|g| attachment_live(g.state.as_deref()))
            .map(|g| TransitGateway {
                id: g.transit_gateway_id.clone(),
                name: g
                    .tags
                    .iter()
                    .find(|t| t.key == "Name")
                    .map(|t| t.value.clone()),
                referencing: enabled(
                    g.options.security_group_referencing_support.as_deref(),
                    false,
                ),
                vpcs: attachments
                    .transit_gateway_vpc_attachments
                    .iter()
                    .filter(|a| {
                        a.transit_gateway_id == g.transit_gateway_id
                            && attachment_live(a.state.as_deref())
                    })
                    .map(|a| {
                        (
                            a.vpc_id.clone(),
                            enabled(
                                a.options.security_group_referencing_support.as_deref(),
                                true,
                            ),
                        )
                    })
                    .collect(),
            })
            .collect();
        Self {
            transit_gateways,
            associations: associations
                .security_group_vpc_associations
                .iter()
                .filter(|a| association_live(a.state.as_deref()))
                .map(|a| (a.group_id.clone(), a.vpc_id.clone()))
                .collect(),
            peerings: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_defaults_and_states_are_kept() {
        let gateways: TransitGateways = serde_json::from_str(
            r#"{"TransitGateways": [
              {"TransitGatewayId": "tgw-0a", "State": "available",
               "Options": {"SecurityGroupReferencingSupport": "enable"},
               "Tags": [{"Key": "Name", "Value": "core"}]},
              {"TransitGatewayId": "tgw-0b", "State": "available", "Options": {}},
              {"TransitGatewayId": "tgw-0c", "State": "deleted", "Options": {}}]}"#,
        )
        .expect("parses");
        let attachments: TransitGatewayVpcAttachments = serde_json::from_str(
            r#"{"TransitGatewayVpcAttachments": [
              {"TransitGatewayId": "tgw-0a", "VpcId": "vpc-1", "State": "available", "Options": {}},
              {"TransitGatewayId": "tgw-0a", "VpcId": "vpc-2", "State": "available",
               "Options": {"SecurityGroupReferencingSupport": "disable"}},
              {"TransitGatewayId": "tgw-0a", "VpcId": "vpc-3", "State": "deleted", "Options": {}},
              {"TransitGatewayId": "tgw-0b", "VpcId": "vpc-1", "State": "available"}]}"#,
        )
        .expect("parses");
        let associations: SecurityGroupVpcAssociations = serde_json::from_str(
            r#"{"SecurityGroupVpcAssociations": [
              {"GroupId": "sg-1", "VpcId": "vpc-2", "State": "associated"},
              {"GroupId": "sg-1", "VpcId": "vpc-3", "State": "disassociated"}]}"#,
        )
        .expect("parses");
        let links = VpcLinks::described(&gateways, &attachments, &associations);
        assert_eq!(links.transit_gateways.len(), 2, "the deleted gateway goes");
        let core = &links.transit_gateways[0];
        assert_eq!(core.name.as_deref(), Some("core"));
        assert!(core.referencing);
        assert_eq!(
            core.vpcs,
            vec![("vpc-1".to_owned(), true), ("vpc-2".to_owned(), false)],
            "an attachment's option is on unless disabled; a deleted attachment goes"
        );
        assert!(
            !links.transit_gateways[1].referencing,
            "a gateway's is off by default"
        );
        assert!(links.attached_together("vpc-1", "vpc-2"));
        assert!(!links.attached_together("vpc-1", "vpc-3"));
        assert_eq!(links.associated_vpcs("sg-1"), vec!["vpc-2".to_owned()]);
        let mut out = String::new();
        links.render_transit_gateways(&["vpc-1", "vpc-2"].into_iter().collect(), &mut out);
        assert_eq!(
            out,
            "\n[[transit_gateway]]\nname = \"core\"\nsecurity_group_referencing = true\n\
             vpcs = [\"vpc-1\", { vpc = \"vpc-2\", security_group_referencing = false }]\n",
            "tgw-0a is no id of AWS's form (too short), tgw-0b links one declared VPC"
        );
    }
}

//! The VPC around the groups, as the file describes it: VPCs, subnets,
//! prefix lists.

use super::{Answer, filtered, groups::vpc_names, tag_filter};
use crate::ec2::{error::ApiError, query::Params, store::Store, xml::Xml};

pub async fn describe(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let snap = store.read().await?;
    let view = snap.view(&store.account);
    let mut names = vpc_names(&view);
    let ids = p.list("VpcId");
    if !ids.is_empty() {
        for id in &ids {
            if !names.iter().any(|n| &view.vpc_id(n) == id) {
                return Err(ApiError::new(
                    "InvalidVpcID.NotFound",
                    format!("The vpc ID '{id}' does not exist"),
                ));
            }
        }
        names.retain(|n| ids.contains(&view.vpc_id(n)));
    }
    let default = view.vpc.default_vpc().to_owned();
    let blocks = |n: &str| -> Vec<ipnet::IpNet> {
        if view.vpc.vpcs.is_empty() {
            view.vpc.cidr_blocks.clone()
        } else {
            view.vpc
                .vpcs
                .iter()
                .find(|v| v.name == n)
                .map(|v| v.cidr_blocks.clone())
                .unwrap_or_default()
        }
    };
    let names = filtered(names, &p.filters(), |n, f| {
        Some(match f {
            "vpc-id" => vec![view.vpc_id(n)],
            "is-default" => vec![(n == &default).to_string()],
            "cidr" | "cidr-block-association.cidr-block" => blocks(n)
                .iter()
                .filter(|b| b.addr().is_ipv4())
                .map(ToString::to_string)
                .collect(),
            "owner-id" => vec![view.account.id.clone()],
            "state" => vec!["available".to_owned()],
            other => return tag_filter(&[], other),
        })
    })?;
    let mut x = Xml::new();
    x.list("vpcSet", names, |x, n| {
        let b = blocks(&n);
        let v4: Vec<_> = b.iter().filter(|b| b.addr().is_ipv4()).collect();
        let v6: Vec<_> = b.iter().filter(|b| b.addr().is_ipv6()).collect();
        x.text("vpcId", &view.vpc_id(&n))
            .text("ownerId", &view.account.id)
            .text("state", "available")
            .opt("cidrBlock", v4.first().map(ToString::to_string).as_deref())
            .list(
                "cidrBlockAssociationSet",
                v4.iter().enumerate(),
                |x, (k, c)| {
                    x.text(
                        "associationId",
                        &crate::ec2::ids::derived("vpc-cidr-assoc", &[&n, &k.to_string()]),
                    )
                    .text("cidrBlock", &c.to_string())
                    .elem("cidrBlockState", |x| {
                        x.text("state", "associated");
                    });
                },
            )
            .list(
                "ipv6CidrBlockAssociationSet",
                v6.iter().enumerate(),
                |x, (k, c)| {
                    x.text(
                        "associationId",
                        &crate::ec2::ids::derived("vpc-cidr-assoc", &[&n, "6", &k.to_string()]),
                    )
                    .text("ipv6CidrBlock", &c.to_string())
                    .elem("ipv6CidrBlockState", |x| {
                        x.text("state", "associated");
                    });
                },
            )
            .text("dhcpOptionsId", &crate::ec2::ids::derived("dopt", &[&n]))
            .text("instanceTenancy", "default")
            .bool("isDefault", n == default)
            .tags("tagSet", &[]);
    });
    Ok(Answer::Ec2(x))
}

pub async fn subnets(p: &Params, store: &Store) -> Result<Answer, ApiError> {
    let snap = store.read().await?;
    let view = snap.view(&store.account);
    let mut subnets = view.subnets();
    let ids = p.list("SubnetId");
    if !ids.is_empty() {
        for id in &ids {
            if !subnets.iter().any(|s| &view.subnet_id(s) == id) {
                return Err(ApiError::new(
                    "InvalidSubnetID.NotFound",
                    format!("The subnet ID '{id}' does not exist"),
                ));
            }
        }
        subnets.retain(|s| ids.contains(&view.subnet_id(s)));
    }
    // The VPC holding each subnet.
    let vpc_of = |s: &ipnet::IpNet| -> String {
        view.vpc
            .vpcs
            .iter()
            .find(|v| v.cidr_blocks.iter().any(|b| b.contains(s)))
            .map_or_else(|| view.vpc.default_vpc().to_owned(), |v| v.name.clone())
    };
    let subnets = filtered(subnets, &p.filters(), |s, f| {
        Some(match f {
            "subnet-id" => vec![view.subnet_id(s)],
            "vpc-id" => vec![view.vpc_id(&vpc_of(s))],
            "cidr-block" | "cidr" => vec![s.to_string()],
            "state" => vec!["available".to_owned()],
            other => return tag_filter(&[], other),
        })
    })?;
    let mut x = Xml::new();
    x.list("subnetSet", subnets, |x, s| {
        x.text("subnetId", &view.subnet_id(&s))
            .text(
                "subnetArn",
                &format!(
                    "arn:aws:ec2:{}:{}:subnet/{}",
                    view.account.region,
                    view.account.id,
                    view.subnet_id(&s)
                ),
            )
            .text("state", "available")
            .text("vpcId", &view.vpc_id(&vpc_of(&s)))
            .text("ownerId", &view.account.id)
            .text("cidrBlock", &s.to_string())
            .num("availableIpAddressCount", available(&s))
            .text("availabilityZone", &format!("{}a", view.account.region))
            .text(
                "availabilityZoneId",
                &format!("{}-az1", zone_prefix(&view.account.region)),
            )
            .bool("defaultForAz", false)
            .bool("mapPublicIpOnLaunch", false)
            .bool("assignIpv6AddressOnCreation", false)
            .list("ipv6CidrBlockAssociationSet", Vec::<()>::new(), |_, ()| {})
            .bool("ipv6Native", false)
            .elem("privateDnsNameOptionsOnLaunch", |x| {
                x.text("hostnameType", "ip-name")
                    .bool("enableResourceNameDnsARecord", false)
                    .bool("enableResourceNameDnsAAAARecord", false);
            })
            .tags("tagSet", &[]);
    });
    Ok(Answer::Ec2(x))
}

/// AWS's zone-id prefix of a region: `us-east-1` is `use1`.
fn zone_prefix(region: &str) -> String {
    let mut parts = region.split('-');
    let (Some(geo), Some(dir), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
        return region.to_owned();
    };
    format!("{geo}{}{n}", dir.chars().next().unwrap_or('x'))
}

/// AWS's count: the range less its five reserved addresses.
fn available(s: &ipnet::IpNet) -> u64 {
    match s {
        ipnet::IpNet::V4(n) => (1u64 << (32 - u32::from(n.prefix_len()))).saturating_sub(5),
        ipnet::IpNet::V6(_) => 0,
    }
}

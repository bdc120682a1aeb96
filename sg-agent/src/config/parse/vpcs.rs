//! `[vpc]`, `[[vpc]]` and `[[subnet]]`: the VPCs' and subnets' ranges.

use super::{DeTable, DeValue, IpNet, Parser, Span, Subnet, TextKind, Value, Vpc};

impl Parser {
    /// `[[subnet]]`: a subnet's IPv4 range (AWS: /16 to /28), whose five
    /// reserved addresses security groups never filter, and its IPv6 range
    /// if it has one; named, network ACLs and instances refer to it.
    pub(super) fn subnet(&mut self, t: &DeTable, span: &Span) -> Option<Subnet> {
        self.known_keys(
            t,
            &[
                "name",
                "id",
                "cidr_block",
                "ipv6_cidr_block",
                "vpc",
                "description",
            ],
            "a subnet",
        );
        self.description(t);
        let name = self
            .opt_string(t, "name")
            .filter(|name| self.text_ok(t, "name", name, TextKind::Other));
        let id = self.aws_id(t, "subnet", "subnet-0123456789abcdef0");
        let vpc = self.opt_string(t, "vpc");
        let ipv6 = match Self::get(t, "ipv6_cidr_block") {
            None => None,
            Some(v) => {
                let text = self.string(v, "ipv6_cidr_block")?;
                let net = self.cidr(&text, v.span(), Some((6, "ipv6_cidr_block")))?;
                if !(44..=64).contains(&net.prefix_len()) {
                    self.err_hint(
                        v.span(),
                        format!("{net} cannot be a subnet's IPv6 range"),
                        "an AWS subnet's IPv6 range is a /64 (/44 to /64 accepted)",
                    );
                    return None;
                }
                Some(net)
            }
        };
        let (text, sp) = self.req_string(t, span, "cidr_block", "this subnet")?;
        let net = self.cidr(&text, sp.clone(), None)?;
        if net.addr().is_ipv6() {
            self.err_hint(
                sp,
                format!("{net} is an IPv6 range"),
                "a subnet's cidr_block is its IPv4 range; its IPv6 range is ipv6_cidr_block",
            );
            None
        } else if (16..=28).contains(&net.prefix_len()) {
            Some(Subnet {
                name,
                id,
                cidr: net,
                ipv6,
                vpc,
                span: span.clone(),
            })
        } else {
            self.err_hint(
                sp,
                format!("{net} cannot be a subnet's range"),
                "an AWS subnet's IPv4 range is /16 to /28",
            );
            None
        }
    }

    /// `[[vpc]]`: several VPCs, each with its `name` and ranges (and the
    /// services' MAC address, one for the whole file). Their ranges
    /// together are the file's (Amazon DNS at each one's base plus two).
    pub(super) fn vpcs(&mut self, v: &Value, vpc: &mut Vpc) {
        for (t, span) in self.tables(v, "vpc") {
            self.known_keys(
                t,
                &[
                    "name",
                    "cidr_blocks",
                    "service_mac",
                    "description",
                    "region",
                    "account",
                ],
                "a vpc",
            );
            self.description(t);
            let Some((name, name_span)) = self
                .req_string(t, &span, "name", "this vpc")
                .filter(|(n, _)| self.text_ok(t, "name", n, TextKind::Other))
            else {
                continue;
            };
            if vpc.vpcs.iter().any(|d| d.name == name) {
                self.err(name_span, format!("a second vpc named {name}"));
                continue;
            }
            let blocks = self.vpc_table_blocks(t);
            if let Some(mac) = self.mac(t, "service_mac") {
                vpc.service_mac.get_or_insert(mac);
            }
            vpc.cidr_blocks.extend(blocks.iter().copied());
            let region = self.opt_string(t, "region").filter(|r| {
                let ok = !r.is_empty()
                    && r.len() <= 32
                    && r.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if !ok {
                    let sp = Self::get(t, "region").map_or(span.clone(), toml::Spanned::span);
                    self.err_hint(
                        sp,
                        format!("\"{r}\" is not a Region"),
                        "write AWS's code, as \"eu-west-1\"",
                    );
                }
                ok
            });
            let account = self.opt_string(t, "account").filter(|a| {
                let ok = a.len() == 12 && a.chars().all(|c| c.is_ascii_digit());
                if !ok {
                    let sp = Self::get(t, "account").map_or(span.clone(), toml::Spanned::span);
                    self.err_hint(
                        sp,
                        format!("\"{a}\" is not an account id"),
                        "an AWS account id is 12 digits",
                    );
                }
                ok
            });
            vpc.vpcs.push(crate::config::VpcDecl {
                name,
                cidr_blocks: blocks,
                region,
                account,
                span,
            });
        }
    }

    /// `[[transit_gateway]]`: a transit gateway, whether it carries group
    /// references (`security_group_referencing`, AWS's default off), and
    /// its VPC attachments (`vpcs`: names, or `{ vpc = NAME,
    /// security_group_referencing = false }` for an attachment with the
    /// option off; AWS's default for an attachment is on).
    pub(super) fn transit_gateways(&mut self, v: &Value, vpc: &mut Vpc) {
        for (t, span) in self.tables(v, "transit_gateway") {
            self.known_keys(
                t,
                &[
                    "name",
                    "id",
                    "security_group_referencing",
                    "vpcs",
                    "description",
                ],
                "a transit_gateway",
            );
            self.description(t);
            let _ = self.aws_id(t, "tgw", "tgw-0123456789abcdef0");
            let Some((name, name_span)) = self
                .req_string(t, &span, "name", "this transit_gateway")
                .filter(|(n, _)| self.text_ok(t, "name", n, TextKind::Other))
            else {
                continue;
            };
            if vpc.transit_gateways.iter().any(|g| g.name == name) {
                self.err(name_span, format!("a second transit_gateway named {name}"));
                continue;
            }
            let referencing = Self::get(t, "security_group_referencing")
                .and_then(|v| self.boolean(v, "security_group_referencing"))
                .unwrap_or(false);
            let mut attachments = Vec::new();
            let items = Self::get(t, "vpcs").and_then(|v| self.array(v, "vpcs"));
            for item in items.into_iter().flatten() {
                let attachment = if let DeValue::Table(a) = item.get_ref() {
                    self.known_keys(a, &["vpc", "security_group_referencing"], "an attachment");
                    let vpc_name = self.req_string(a, &item.span(), "vpc", "this attachment");
                    let on = Self::get(a, "security_group_referencing")
                        .and_then(|v| self.boolean(v, "security_group_referencing"))
                        .unwrap_or(true);
                    vpc_name.map(|(n, _)| (n, on))
                } else {
                    self.string(item, "vpcs").map(|n| (n, true))
                };
                if let Some(a) = attachment {
                    if attachments.iter().any(|(n, _): &(String, bool)| *n == a.0) {
                        self.err(item.span(), format!("VPC {} is attached twice", a.0));
                    } else {
                        attachments.push(a);
                    }
                }
            }
            vpc.transit_gateways.push(crate::config::TransitGateway {
                name,
                referencing,
                attachments,
                span,
            });
        }
    }

    /// `[vpc]`: the VPC's address ranges (so Amazon DNS, at the base of
    /// each IPv4 range plus two, is known). AWS's VPC blocks are /16 to /28
    /// (IPv4) and /44 to /60 (IPv6).
    pub(super) fn vpc_blocks(&mut self, v: &Value) -> Vec<IpNet> {
        let Some(t) = self.table(v, "vpc") else {
            return Vec::new();
        };
        self.known_keys(t, &["cidr_blocks", "service_mac"], "[vpc]");
        self.vpc_table_blocks(t)
    }

    /// A VPC's `cidr_blocks`, each of a size AWS allows.
    pub(super) fn vpc_table_blocks(&mut self, t: &DeTable) -> Vec<IpNet> {
        let mut blocks = Vec::new();
        for (text, span) in self.string_array(t, "cidr_blocks") {
            let Some(net) = self.cidr(&text, span.clone(), None) else {
                continue;
            };
            let (lo, hi) = match net {
                IpNet::V4(_) => (16, 28),
                IpNet::V6(_) => (44, 60),
            };
            if (lo..=hi).contains(&net.prefix_len()) {
                blocks.push(net);
            } else {
                self.err_hint(
                    span,
                    format!("{net} cannot be a VPC's range"),
                    format!(
                        "an AWS VPC's {} ranges are /{lo} to /{hi}",
                        if lo == 16 { "IPv4" } else { "IPv6" }
                    ),
                );
            }
        }
        blocks
    }
}

//! EC2's `IpPermission`s: read from a request (each source one rule), and
//! written from rules (grouped by protocol and ports, as AWS shows them);
//! `SecurityGroupRule`s written.

use ipnet::IpNet;

use crate::{
    config::{Direction, Ports, Protocol},
    ec2::{
        error::ApiError,
        query::Params,
        view::{ApiRule, Target, View, api_ports, api_protocol},
        xml::Xml,
    },
};

/// One rule a request asks for.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub protocol: Protocol,
    pub ports: Ports,
    pub target: Target,
    pub description: Option<String>,
}

impl Wanted {
    /// Whether `r` is this rule (its description aside).
    pub fn is(&self, r: &ApiRule) -> bool {
        r.protocol == self.protocol
            && same_ports(self.protocol, r.ports, self.ports)
            && r.target.key() == self.target.key()
    }
}

fn same_ports(p: Protocol, a: Ports, b: Ports) -> bool {
    match p {
        Protocol::Number(6 | 17 | 1 | 58) => a == b,
        _ => true,
    }
}

/// A protocol as the API gives it.
pub fn protocol(text: &str) -> Result<Protocol, ApiError> {
    let t = text.to_ascii_lowercase();
    Ok(match t.as_str() {
        "-1" | "all" => Protocol::All,
        "tcp" => Protocol::Number(6),
        "udp" => Protocol::Number(17),
        "icmp" => Protocol::Number(1),
        "icmpv6" => Protocol::Number(58),
        n => match n.parse::<u8>() {
            Ok(n) => Protocol::Number(n),
            Err(_) => {
                return Err(ApiError::invalid_value(format!(
                    "Invalid value '{text}' for IP protocol. Unknown protocol."
                )));
            }
        },
    })
}

/// `FromPort` and `ToPort` for a protocol.
pub fn ports(protocol: Protocol, from: Option<i64>, to: Option<i64>) -> Result<Ports, ApiError> {
    match protocol {
        Protocol::Number(6 | 17) => {
            let (Some(f), Some(t)) = (from, to) else {
                return Err(ApiError::invalid_value(
                    "Invalid value for portRange. Must specify both from and to ports with TCP/UDP.",
                ));
            };
            if !(0..=65535).contains(&f) || !(0..=65535).contains(&t) || f > t {
                return Err(ApiError::invalid_value(format!(
                    "Invalid value for portRange. The from port ({f}) must be less than or equal to the to port ({t}), both from 0 to 65535."
                )));
            }
            Ok(Ports::Range {
                from: u16::try_from(f).unwrap_or_default(),
                to: u16::try_from(t).unwrap_or_default(),
            })
        }
        Protocol::Number(1 | 58) => {
            let field = |v: Option<i64>, what: &str| match v {
                None | Some(-1) => Ok(None),
                Some(n) if (0..=255).contains(&n) => Ok(Some(u8::try_from(n).unwrap_or_default())),
                Some(n) => Err(ApiError::invalid_value(format!(
                    "Invalid value '{n}' for ICMP {what}: -1 or 0 to 255"
                ))),
            };
            let ty = field(from, "type")?;
            let code = field(to, "code")?;
            if ty.is_none() && code.is_some() {
                return Err(ApiError::invalid_value(
                    "Invalid value for ICMP code: an ICMP code needs a type",
                ));
            }
            Ok(Ports::Icmp { ty, code })
        }
        _ => Ok(Ports::All),
    }
}

fn cidr(text: &str, v6: bool) -> Result<String, ApiError> {
    let net: IpNet = text
        .parse()
        .map_err(|_| ApiError::invalid_value(format!("CIDR block {text} is malformed")))?;
    if matches!(net, IpNet::V6(_)) != v6 {
        return Err(ApiError::invalid_value(format!(
            "CIDR block {text} is malformed: {} here",
            if v6 {
                "an IPv6 range (CidrIpv6)"
            } else {
                "an IPv4 range (CidrIp)"
            }
        )));
    }
    if net.trunc() != net {
        return Err(ApiError::invalid_value(format!(
            "CIDR block {text} is malformed: the address has bits set past the prefix length (did you mean {}?)",
            net.trunc()
        )));
    }
    Ok(net.to_string())
}

/// A group reference by id (or name, in the group's VPC).
pub fn group_target(
    view: &View<'_>,
    id: Option<&str>,
    name: Option<&str>,
    vpc: &str,
) -> Result<Target, ApiError> {
    let gi = match (id, name) {
        (Some(id), _) => view
            .group_by_id(id)
            .ok_or_else(|| ApiError::group_not_found(id))?,
        (None, Some(name)) => view
            .group_by_name(name, Some(vpc))
            .ok_or_else(|| ApiError::group_not_found(name))?,
        (None, None) => return Err(ApiError::missing("GroupId")),
    };
    let g = &view.vpc.groups[gi];
    Ok(Target::Group {
        id: view.group_id(g),
        name: g.name.clone(),
        vpc_id: view.group_vpc_id(g),
    })
}

pub fn prefix_list_target(view: &View<'_>, id: &str) -> Result<Target, ApiError> {
    let pi = view.prefix_list(id).ok_or_else(|| {
        ApiError::new(
            "InvalidPrefixListID.NotFound",
            format!("The prefix list ID '{id}' does not exist"),
        )
    })?;
    Ok(Target::PrefixList(
        view.prefix_list_id(&view.vpc.prefix_lists[pi]),
    ))
}

/// The rules a request's `IpPermissions` (or the old flat form:
/// `IpProtocol`, `CidrIp`, `SourceSecurityGroupName`) ask for; `vpc`: the
/// VPC of the group they go in.
pub fn wanted(p: &Params, view: &View<'_>, vpc: &str) -> Result<Vec<Wanted>, ApiError> {
    let mut out = Vec::new();
    let perms = p.indices("IpPermissions");
    if perms.is_empty() {
        if let Some(proto) = p.get("IpProtocol") {
            let protocol = protocol(proto)?;
            let ports = ports(protocol, p.int("FromPort")?, p.int("ToPort")?)?;
            let mut targets = Vec::new();
            if let Some(c) = p.get("CidrIp") {
                targets.push(Target::V4(cidr(c, false)?));
            }
            if let Some(c) = p.get("CidrIpv6") {
                targets.push(Target::V6(cidr(c, true)?));
            }
            if let Some(name) = p.get("SourceSecurityGroupName") {
                targets.push(group_target(view, None, Some(name), vpc)?);
            }
            for target in targets {
                out.push(Wanted {
                    protocol,
                    ports,
                    target,
                    description: None,
                });
            }
        } else if let Some(name) = p.get("SourceSecurityGroupName") {
            // The old form: every protocol from a group.
            for (protocol, ports) in [
                (Protocol::Number(6), Ports::Range { from: 0, to: 65535 }),
                (Protocol::Number(17), Ports::Range { from: 0, to: 65535 }),
                (
                    Protocol::Number(1),
                    Ports::Icmp {
                        ty: None,
                        code: None,
                    },
                ),
            ] {
                out.push(Wanted {
                    protocol,
                    ports,
                    target: group_target(view, None, Some(name), vpc)?,
                    description: None,
                });
            }
        }
        if out.is_empty() {
            return Err(ApiError::missing("IpPermissions"));
        }
        return Ok(out);
    }
    for n in perms {
        let k = |s: &str| format!("IpPermissions.{n}.{s}");
        let protocol = protocol(
            p.get(&k("IpProtocol"))
                .ok_or_else(|| ApiError::missing(&k("IpProtocol")))?,
        )?;
        let ports = ports(protocol, p.int(&k("FromPort"))?, p.int(&k("ToPort"))?)?;
        let before = out.len();
        let desc = |prefix: &str, m: u32| {
            p.get(&format!("{prefix}.{m}.Description"))
                .map(str::to_owned)
        };
        let mut push = |target: Target, description: Option<String>| {
            out.push(Wanted {
                protocol,
                ports,
                target,
                description,
            });
        };
        let ranges = k("IpRanges");
        for m in p.indices(&ranges) {
            let c = p.required(&format!("{ranges}.{m}.CidrIp"))?;
            push(Target::V4(cidr(c, false)?), desc(&ranges, m));
        }
        let ranges6 = k("Ipv6Ranges");
        for m in p.indices(&ranges6) {
            let c = p.required(&format!("{ranges6}.{m}.CidrIpv6"))?;
            push(Target::V6(cidr(c, true)?), desc(&ranges6, m));
        }
        let lists = k("PrefixListIds");
        for m in p.indices(&lists) {
            let id = p.required(&format!("{lists}.{m}.PrefixListId"))?;
            push(prefix_list_target(view, id)?, desc(&lists, m));
        }
        let groups = k("Groups");
        for m in p.indices(&groups) {
            let id = p.get(&format!("{groups}.{m}.GroupId"));
            let name = p.get(&format!("{groups}.{m}.GroupName"));
            push(group_target(view, id, name, vpc)?, desc(&groups, m));
        }
        if out.len() == before {
            return Err(ApiError::new(
                "InvalidParameterValue",
                format!(
                    "IpPermissions.{n} names no source (IpRanges, Ipv6Ranges, PrefixListIds or Groups)"
                ),
            ));
        }
    }
    Ok(out)
}

/// Writes rules as AWS's `IpPermission`s: those of one protocol and port
/// range together, in the order they first appear.
pub fn write_permissions(x: &mut Xml, name: &str, rules: &[ApiRule], view: &View<'_>) {
    let mut keys: Vec<(Protocol, Option<(i32, i32)>)> = Vec::new();
    for r in rules {
        let key = (r.protocol, api_ports(r.protocol, r.ports));
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    x.list(name, keys, |x, (protocol, ports)| {
        let these: Vec<&ApiRule> = rules
            .iter()
            .filter(|r| r.protocol == protocol && api_ports(r.protocol, r.ports) == ports)
            .collect();
        x.text("ipProtocol", &api_protocol(protocol));
        if let Some((f, t)) = ports {
            x.num("fromPort", f).num("toPort", t);
        }
        x.list(
            "groups",
            these.iter().filter_map(|r| match &r.target {
                Target::Group { id, name, vpc_id } => Some((id, name, vpc_id, r)),
                _ => None,
            }),
            |x, (id, name, vpc_id, r)| {
                x.opt("description", r.description.as_deref())
                    .text("userId", &view.account.id)
                    .text("groupId", id);
                // AWS names the group only in the default VPC (EC2-Classic's
                // heritage); the id is what clients read.
                let _ = name;
                if !vpc_id.is_empty() {
                    x.text("vpcId", vpc_id);
                }
            },
        );
        x.list(
            "ipRanges",
            these.iter().filter_map(|r| match &r.target {
                Target::V4(c) => Some((c, r)),
                _ => None,
            }),
            |x, (c, r)| {
                x.opt("description", r.description.as_deref())
                    .text("cidrIp", c);
            },
        );
        x.list(
            "ipv6Ranges",
            these.iter().filter_map(|r| match &r.target {
                Target::V6(c) => Some((c, r)),
                _ => None,
            }),
            |x, (c, r)| {
                x.opt("description", r.description.as_deref())
                    .text("cidrIpv6", c);
            },
        );
        x.list(
            "prefixListIds",
            these.iter().filter_map(|r| match &r.target {
                Target::PrefixList(id) => Some((id, r)),
                _ => None,
            }),
            |x, (id, r)| {
                x.opt("description", r.description.as_deref())
                    .text("prefixListId", id);
            },
        );
    });
}

/// One `SecurityGroupRule` item's fields.
pub fn write_rule(x: &mut Xml, r: &ApiRule, view: &View<'_>) {
    let g = &view.vpc.groups[r.group];
    let (from, to) = api_ports(r.protocol, r.ports).unwrap_or((-1, -1));
    x.text("securityGroupRuleId", &r.id)
        .text("groupId", &view.group_id(g))
        .text("groupOwnerId", &view.account.id)
        .bool("isEgress", r.direction == Direction::Egress)
        .text("ipProtocol", &api_protocol(r.protocol))
        .num("fromPort", from)
        .num("toPort", to);
    match &r.target {
        Target::V4(c) => {
            x.text("cidrIpv4", c);
        }
        Target::V6(c) => {
            x.text("cidrIpv6", c);
        }
        Target::PrefixList(id) => {
            x.text("prefixListId", id);
        }
        Target::Group { id, vpc_id, .. } => {
            x.elem("referencedGroupInfo", |x| {
                x.text("groupId", id).text("userId", &view.account.id);
                if !vpc_id.is_empty() {
                    x.text("vpcId", vpc_id);
                }
            });
        }
    }
    x.opt("description", r.description.as_deref())
        .tags("tagSet", &r.tags)
        .text("securityGroupRuleArn", &view.rule_arn(&r.id));
}

//! `[[network_acl]]` and its `ingress`/`egress` entries, in Terraform's
//! vocabulary (`aws_network_acl`'s inline blocks).

use super::{DeTable, IpNet, Parser, Span, TextKind, Value};
use crate::config::{
    AclEntry, NetworkAcl, Ports, Protocol,
    network_acl::{MAX_RULE_NO, MAX_RULES_PER_NETWORK_ACL},
};

impl Parser {
    pub(super) fn network_acl(&mut self, t: &DeTable, span: Span) -> Option<NetworkAcl> {
        self.known_keys(
            t,
            &[
                "name",
                "id",
                "description",
                "default",
                "vpc",
                "subnets",
                "ingress",
                "egress",
                "tags",
            ],
            "a network_acl",
        );
        self.description(t);
        let name = self
            .req_string(t, &span, "name", "this network_acl")
            .filter(|(n, _)| self.text_ok(t, "name", n, TextKind::Other));
        let id = self.aws_id(t, "acl", "acl-0123456789abcdef0");
        let default = match Self::get(t, "default") {
            None => false,
            Some(v) => v.get_ref().as_bool().unwrap_or_else(|| {
                self.err(v.span(), "\"default\" must be true or false");
                false
            }),
        };
        let vpc = self.opt_string(t, "vpc");
        let subnets = self.string_array(t, "subnets");
        let tags = self.tags(t);
        let mut entries = |key: &str| {
            let mut out = Vec::new();
            if let Some(v) = Self::get(t, key) {
                for (e, sp) in self.tables(v, key) {
                    if let Some(entry) = self.acl_entry(e, sp, key) {
                        out.push(entry);
                    }
                }
            }
            self.acl_numbers(&mut out, key);
            out
        };
        let ingress = entries("ingress");
        let egress = entries("egress");
        Some(NetworkAcl {
            name: name?.0,
            id,
            default,
            vpc,
            subnets,
            ingress,
            egress,
            tags,
            span,
        })
    }

    /// Sorts one direction's entries by rule number, refusing a number
    /// given twice and more entries than any quota allows.
    fn acl_numbers(&mut self, entries: &mut Vec<AclEntry>, key: &str) {
        entries.sort_by_key(|e| e.rule_no);
        let mut i = 1;
        while i < entries.len() {
            if entries[i].rule_no == entries[i - 1].rule_no {
                let e = entries.remove(i);
                self.err_hint(
                    e.span,
                    format!("a second {key} rule numbered {}", e.rule_no),
                    "each rule of a direction has its own rule_no (AWS refuses the second: \
                     NetworkAclEntryAlreadyExists)",
                );
            } else {
                i += 1;
            }
        }
        self.shadowed(entries, key);
        if let Some(e) = entries.get(MAX_RULES_PER_NETWORK_ACL) {
            self.err_hint(
                e.span.clone(),
                format!("more than {MAX_RULES_PER_NETWORK_ACL} {key} rules in one network ACL"),
                "AWS allows 20 per direction, 40 with a quota increase",
            );
            entries.truncate(MAX_RULES_PER_NETWORK_ACL);
        }
    }

    /// Warns of an entry an earlier one covers entirely: it never matches
    /// (the classic: a deny numbered after an allow for everyone).
    fn shadowed(&mut self, entries: &[AclEntry], key: &str) {
        for (j, later) in entries.iter().enumerate() {
            let Some(first) = entries[..j].iter().find(|e| covers(e, later)) else {
                continue;
            };
            self.warn_hint(
                later.span.clone(),
                format!(
                    "{key} rule {} never matches: rule {} ({}) matches everything it does first",
                    later.rule_no,
                    first.rule_no,
                    first.action()
                ),
                format!(
                    "the lowest-numbered rule that matches decides: number it below {}",
                    first.rule_no
                ),
            );
        }
    }

    /// One `[[network_acl.ingress]]` or `[[network_acl.egress]]` table.
    fn acl_entry(&mut self, t: &DeTable, span: Span, key: &str) -> Option<AclEntry> {
        let what = format!("a network_acl {key} rule");
        self.known_keys(
            t,
            &[
                "rule_no",
                "action",
                "protocol",
                "from_port",
                "to_port",
                "icmp_type",
                "icmp_code",
                "cidr_block",
                "ipv6_cidr_block",
                "description",
                // Refused below, with the reason.
                "security_groups",
                "prefix_list_ids",
                "cidr_blocks",
                "self",
            ],
            &what,
        );
        self.description(t);
        let rule_no = match Self::get(t, "rule_no") {
            None => {
                self.err_hint(
                    span.clone(),
                    format!("{what} has no rule_no"),
                    "add rule_no = 100 (1 to 32766; the lowest that matches decides)",
                );
                None
            }
            Some(v) => self.integer(v, "rule_no").and_then(|n| {
                let ok = (1..=i64::from(MAX_RULE_NO)).contains(&n);
                if !ok {
                    self.err_hint(
                        v.span(),
                        format!("rule_no {n} is out of range"),
                        "rule numbers go from 1 to 32766 (32767 is the * rule, which denies)",
                    );
                }
                u16::try_from(n).ok().filter(|_| ok)
            }),
        };
        let allow = match Self::get(t, "action") {
            None => {
                self.err_hint(
                    span.clone(),
                    format!("{what} has no action"),
                    "add action = \"allow\" or \"deny\"",
                );
                None
            }
            Some(v) => match v.get_ref().as_str() {
                Some(a) if a.eq_ignore_ascii_case("allow") => Some(true),
                Some(a) if a.eq_ignore_ascii_case("deny") => Some(false),
                _ => {
                    self.err_hint(
                        v.span(),
                        "a network ACL rule's action is \"allow\" or \"deny\"",
                        "network ACLs (unlike security groups) deny too; nothing else",
                    );
                    None
                }
            },
        };
        let protocol = if let Some(v) = Self::get(t, "protocol") {
            self.protocol(v)
        } else {
            self.err_hint(
                span.clone(),
                format!("{what} has no \"protocol\""),
                "add protocol = \"tcp\", \"udp\", \"icmp\", \"icmpv6\", \"all\" or a number",
            );
            None
        };
        let ports = protocol.and_then(|p| self.acl_ports(t, &span, p));
        let cidr = self.acl_cidr(t, &span, &what);
        Some(AclEntry {
            rule_no: rule_no?,
            allow: allow?,
            protocol: protocol?,
            ports: ports?,
            cidr: cidr?,
            span,
        })
    }

    /// `cidr_block` or `ipv6_cidr_block`, exactly one: network ACLs take
    /// address ranges only (no groups, no prefix lists).
    fn acl_cidr(&mut self, t: &DeTable, span: &Span, what: &str) -> Option<IpNet> {
        for key in ["security_groups", "prefix_list_ids", "cidr_blocks", "self"] {
            if let Some(v) = Self::get(t, key) {
                self.err_hint(
                    v.span(),
                    format!("{what} cannot name {key}"),
                    "a network ACL rule takes one cidr_block or ipv6_cidr_block (network ACLs \
                     know no security groups or prefix lists)",
                );
            }
        }
        match (Self::get(t, "cidr_block"), Self::get(t, "ipv6_cidr_block")) {
            (Some(v), None) => self.acl_block(v, "cidr_block", 4),
            (None, Some(v)) => self.acl_block(v, "ipv6_cidr_block", 6),
            (Some(_), Some(v)) => {
                self.err_hint(
                    v.span(),
                    format!("{what} has both cidr_block and ipv6_cidr_block"),
                    "one range per rule: write a second rule for the other family",
                );
                None
            }
            (None, None) => {
                self.err_hint(
                    span.clone(),
                    format!("{what} has no cidr_block"),
                    "add cidr_block = \"0.0.0.0/0\" (or ipv6_cidr_block = \"::/0\")",
                );
                None
            }
        }
    }

    fn acl_block(&mut self, v: &Value, key: &str, family: u8) -> Option<IpNet> {
        let text = self.string(v, key)?;
        self.cidr(&text, v.span(), Some((family, key)))
    }

    /// TCP and UDP: `from_port`/`to_port` (required, as AWS requires a
    /// port range); ICMP: `icmp_type`/`icmp_code` (absent or -1: any);
    /// anything else: every port.
    fn acl_ports(&mut self, t: &DeTable, span: &Span, protocol: Protocol) -> Option<Ports> {
        match protocol {
            Protocol::Number(6 | 17) => self.ports(t, span, protocol),
            Protocol::Number(1 | 58) => {
                let mut field = |key: &str, what: &str| match Self::get(t, key) {
                    None => Ok(None),
                    Some(v) => match self.integer(v, key) {
                        Some(n) => self.icmp_field(n, v.span(), what, key),
                        None => Err(()),
                    },
                };
                let ty = field("icmp_type", "type");
                let code = field("icmp_code", "code");
                let (Ok(ty), Ok(code)) = (ty, code) else {
                    return None;
                };
                if ty.is_none() && code.is_some() {
                    self.err_hint(
                        span.clone(),
                        "an ICMP code without a type",
                        "set icmp_type too, or icmp_code = -1",
                    );
                    return None;
                }
                Some(Ports::Icmp { ty, code })
            }
            _ => Some(Ports::All),
        }
    }
}

/// Whether every packet `later` matches, `earlier` matches too.
fn covers(earlier: &AclEntry, later: &AclEntry) -> bool {
    let (lo, hi) = earlier.ports.port_interval();
    let (l, h) = later.ports.port_interval();
    let protocol = earlier.protocol == Protocol::All || earlier.protocol == later.protocol;
    let ports = earlier.protocol == Protocol::All
        || (lo, hi) == (0, u16::MAX)
        || (later.protocol != Protocol::All && lo <= l && h <= hi);
    earlier.cidr.contains(&later.cidr) && protocol && ports
}

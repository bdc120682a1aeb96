//! TOML text -> [`Vpc`], collecting every error with its span rather than
//! stopping at the first (serde would stop at the first).

use std::{net::IpAddr, str::FromStr};

use ipnet::IpNet;
use sg_common::maps as m;
use toml::{
    Spanned,
    de::{DeArray, DeTable, DeValue},
};

use super::{
    diagnostics::{Diagnostic, did_you_mean},
    model::{
        ConntrackOverrides, ConntrackSettings, Instance, Limits, Link, MacAddr, Ports, PrefixList,
        Protocol, Rule, SecurityGroup, ServiceKind, Source, SourceRef, Span, TrackedService, Vpc,
    },
    network_acl::Subnet,
};

mod groups;
mod instances;
mod limits;
mod network_acls;
mod prefix_lists;
mod vpcs;

type Value<'i> = Spanned<DeValue<'i>>;

/// What [`Parser::text_ok`] checks a text as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TextKind {
    GroupName,
    Description,
    /// Instance and prefix-list names: no control character.
    Other,
}

/// Parses `text`; returns the model (possibly partial) and the errors found.
///
/// Warnings (what AWS accepts and ignores) go to `Vpc::warnings`.
pub fn parse(text: &str) -> (Vpc, Vec<Diagnostic>) {
    let mut p = Parser {
        diags: Vec::new(),
        warnings: Vec::new(),
        reported: Vec::new(),
    };
    if let Some(d) = pasted(text) {
        p.diags.push(d);
        return (Vpc::default(), p.diags);
    }
    // TOML allows no control character but tab and line ends anywhere (a
    // string must escape them): one is enough to say the file is not a
    // rules file, before the parser reports every byte of a binary file.
    if let Some((at, c)) = text
        .char_indices()
        .find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        p.diags.push(
            Diagnostic::new(at..at + c.len_utf8(), format!("control character {c:?} in the file"))
                .hint("TOML allows none (inside a string write it escaped, e.g. \\u0000); is this the rules file?"),
        );
        return (Vpc::default(), p.diags);
    }
    // toml lexes the whole file into memory before parsing it (some 70
    // bytes a token, more for what it makes of garbage): count the tokens
    // first, streamed, and refuse a file with more than a rules file of the
    // largest size would have.
    let tokens = toml_parser::Source::new(text)
        .lex()
        .take(MAX_TOKENS + 1)
        .count();
    if tokens > MAX_TOKENS {
        p.diags.push(
            Diagnostic::new(
                0..0,
                format!("more than {MAX_TOKENS} TOML tokens in the file"),
            )
            .hint("a rules file of 16 MiB has about 3 million; is this the rules file?"),
        );
        return (Vpc::default(), p.diags);
    }
    let (root, errors, cut) = parse_toml(text);
    if let Some(at) = cut {
        p.diags.push(
            Diagnostic::new(at..at, "further syntax errors were not looked for")
                .hint("fix the errors above and check again"),
        );
    }
    for e in errors {
        let span = e.span().unwrap_or(0..0);
        p.diags.push(Diagnostic::new(
            span,
            format!("TOML syntax: {}", e.message().trim()),
        ));
    }
    let mut vpc = p.vpc(root.get_ref());
    vpc.warnings = p.warnings;
    (vpc, p.diags)
}

/// A file that is not TOML but what people paste from AWS: the AWS CLI's
/// JSON, `terraform show -json`'s, or Terraform's HCL. One diagnostic that
/// names the import that converts it, not a page of TOML errors.
fn pasted(text: &str) -> Option<Diagnostic> {
    let head: String = text.chars().take(64 << 10).collect();
    let trimmed = head.trim_start();
    let at = text.len() - text.trim_start().len();
    let span = at..at;
    if trimmed.starts_with('{')
        || trimmed.starts_with('[') && trimmed[1..].trim_start().starts_with('{')
    {
        let hint = if head.contains("\"SecurityGroups\"")
            || head.contains("\"Reservations\"")
            || head.contains("\"GroupId\"")
        {
            "this is the AWS CLI's JSON: `sg-agent import aws --security-groups FILE [--instances \
             FILE] > vpc.toml` converts it"
        } else if head.contains("\"terraform_version\"") || head.contains("\"format_version\"") {
            "this is `terraform show -json`'s output: `sg-agent import terraform FILE > vpc.toml` \
             converts it"
        } else {
            "a rules file is TOML (see `man 5 sg-agent.toml`); AWS CLI JSON converts with \
             `sg-agent import aws`"
        };
        return Some(Diagnostic::new(span, "this file is JSON, not a TOML rules file").hint(hint));
    }
    let hcl = head.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("resource \"aws_")
            || l.starts_with("provider \"")
            || l.starts_with("terraform {")
    });
    if hcl {
        return Some(
            Diagnostic::new(span, "this file is Terraform (HCL), not a TOML rules file").hint(
                "convert its state: `terraform show -json > state.json && sg-agent import \
                 terraform state.json > vpc.toml`",
            ),
        );
    }
    None
}

/// A group named by its AWS id (`sg-...`) where the group declares that
/// `id`, in a rule's `security_groups` or an instance's, stands for the
/// group (as AWS names groups by id).
fn by_id(vpc: &mut Vpc) {
    let ids: Vec<(String, String)> = vpc
        .groups
        .iter()
        .filter_map(|g| g.id.as_ref().map(|(id, _)| (id.clone(), g.name.clone())))
        .collect();
    if ids.is_empty() {
        return;
    }
    let name_of = |s: &str| {
        ids.iter()
            .find(|(id, _)| id == s)
            .map(|(_, name)| name.clone())
    };
    let is_name = |vpc: &Vpc, s: &str| vpc.groups.iter().any(|g| g.name == s);
    let names: Vec<String> = vpc.groups.iter().map(|g| g.name.clone()).collect();
    for g in &mut vpc.groups {
        for rule in g.ingress.iter_mut().chain(g.egress.iter_mut()) {
            for src in &mut rule.sources {
                if let Source::Group(s) = &mut src.source
                    && !names.contains(s)
                    && let Some(name) = name_of(s)
                {
                    *s = name;
                }
            }
        }
    }
    let instances = std::mem::take(&mut vpc.instances);
    vpc.instances = instances
        .into_iter()
        .map(|mut i| {
            for (g, _) in &mut i.groups {
                if !is_name(vpc, g)
                    && let Some(name) = name_of(g)
                {
                    *g = name;
                }
            }
            i
        })
        .collect();
}

/// TOML tokens a rules file may have: a 16 MiB prefix list of /32 entries
/// one per line has about 3 million.
const MAX_TOKENS: usize = 4_000_000;

/// Bytes past the first syntax error in which more are looked for: the
/// TOML parser's error recovery costs microseconds per error, and a file of
/// garbage has millions.
const SYNTAX_WINDOW: usize = 64 << 10;

/// The document, its syntax errors and, if the search for them stopped
/// early, where: a file without errors is parsed once; one with errors
/// again, with recovery, up to [`SYNTAX_WINDOW`] past its first error.
fn parse_toml(text: &str) -> (Spanned<DeTable<'_>>, Vec<toml::de::Error>, Option<usize>) {
    let first = match DeTable::parse(text) {
        Ok(root) => return (root, Vec::new(), None),
        Err(e) => e.span().map_or(0, |s| s.start),
    };
    let mut end = (first + SYNTAX_WINDOW).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    let end = text[end..].find('\n').map_or(text.len(), |i| end + i);
    let (root, errors) = DeTable::parse_recoverable(&text[..end]);
    (root, errors, (end < text.len()).then_some(end))
}

struct Parser {
    diags: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    /// Top-level keys already reported as misplaced (said once).
    reported: Vec<String>,
}

/// Protocol names accepted besides numbers, as `/etc/protocols` spells them.
pub(crate) const PROTOCOL_NAMES: &[(&str, u8)] = &[
    ("icmp", 1),
    ("igmp", 2),
    ("ipip", 4),
    ("ipencap", 4),
    ("tcp", 6),
    ("udp", 17),
    ("ipv6", 41),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("icmpv6", 58),
    ("ipv6-icmp", 58),
    ("ospf", 89),
    ("pim", 103),
    ("vrrp", 112),
    ("l2tp", 115),
    ("sctp", 132),
];

impl Parser {
    fn err(&mut self, span: Span, msg: impl Into<String>) {
        self.diags.push(Diagnostic::new(span, msg));
    }

    fn err_hint(&mut self, span: Span, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags.push(Diagnostic::new(span, msg).hint(hint));
    }

    /// Something AWS accepts and ignores: accepted, and said.
    fn warn_hint(&mut self, span: Span, msg: impl Into<String>, hint: impl Into<String>) {
        self.warnings
            .push(Diagnostic::warning(span, msg).hint(hint));
    }

    /// A name or description as AWS validates them: no control character
    /// (they would reach terminals, logs and metrics), a group name of at
    /// most 255 characters that does not start with `sg-`; outside AWS's
    /// character set (a-z, A-Z, 0-9, spaces and `._-:/()#,@[]+=&;{}!$*`),
    /// or a description over 255 characters, a warning: a lab may want more
    /// than AWS allows, and `import`/`export` stay within it.
    fn text_ok(&mut self, t: &DeTable, key: &str, text: &str, kind: TextKind) -> bool {
        let span = Self::get(t, key).map(Value::span).unwrap_or_default();
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            self.err_hint(
                span,
                format!("{key} {text:?} contains the control character {c:?}"),
                "names and descriptions are printable text",
            );
            return false;
        }
        if kind == TextKind::GroupName {
            if text.len() > 255 {
                self.err_hint(
                    span,
                    format!("group name of {} characters", text.chars().count()),
                    "AWS allows at most 255",
                );
                return false;
            }
            if text.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("sg-")) {
                self.err_hint(
                    span,
                    format!("group name {text:?} starts with \"sg-\""),
                    "AWS reserves sg- for group ids: write the id as `id = \"sg-...\"` and give the group a name",
                );
                return false;
            }
        }
        if kind != TextKind::Other {
            let outside: Option<char> = text
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(*c)));
            if let Some(c) = outside {
                self.warn_hint(
                    span.clone(),
                    format!("{key} {text:?} has {c:?}, which AWS does not accept there"),
                    "AWS allows a-z, A-Z, 0-9, spaces and ._-:/()#,@[]+=&;{}!$* (accepted here)",
                );
            }
            if kind == TextKind::Description && text.chars().count() > 255 {
                self.warn_hint(
                    span,
                    format!("description of {} characters", text.chars().count()),
                    "AWS allows at most 255 (accepted here)",
                );
            }
        }
        true
    }

    /// An optional `description`, checked as AWS checks it.
    fn description(&mut self, t: &DeTable) -> Option<String> {
        self.opt_string(t, "description")
            .filter(|d| self.text_ok(t, "description", d, TextKind::Description))
    }

    /// The shapes people write by mistake at the top of a rules file, each
    /// said with what to write instead (the unknown-key error follows).
    fn misplaced(&mut self, root: &DeTable) {
        for (key, value) in root {
            let name = key.get_ref().as_ref();
            let hint = match (name, value.get_ref()) {
                ("security_group" | "instance" | "prefix_list", DeValue::Table(_)) => format!(
                    "[{name}] is one table; each {name} is an entry of an array of tables: \
                     write [[{name}]] (double brackets)"
                ),
                ("ingress" | "egress", _) => format!(
                    "a rule belongs to its group: write [[security_group.{name}]] under the \
                     group's [[security_group]]"
                ),
                _ => continue,
            };
            let message = if matches!(name, "ingress" | "egress") {
                format!("\"{name}\" at the top of the rules file")
            } else {
                format!("[{name}] with single brackets")
            };
            self.err_hint(key.span(), message, hint);
            self.reported.push(name.to_owned());
        }
    }

    /// Reports every key of `table` not in `allowed`.
    fn known_keys(&mut self, table: &DeTable, allowed: &[&str], what: &str) {
        for (key, _) in table {
            let name = key.get_ref().as_ref();
            if !allowed.contains(&name) && !self.reported.iter().any(|r| r == name) {
                let hint = match did_you_mean(name, allowed.iter().copied()) {
                    Some(s) => format!("did you mean \"{s}\"?"),
                    None => format!("{what} takes: {}", allowed.join(", ")),
                };
                self.err_hint(
                    key.span(),
                    format!("unknown key \"{name}\" in {what}"),
                    hint,
                );
            }
        }
    }

    fn get<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t Value<'i>> {
        table.get(key)
    }

    fn string(&mut self, v: &Value, key: &str) -> Option<String> {
        if let Some(s) = v.get_ref().as_str() {
            Some(s.to_owned())
        } else {
            let ty = v.get_ref().type_str();
            self.err(v.span(), format!("\"{key}\" must be a string, found {ty}"));
            None
        }
    }

    fn opt_string(&mut self, t: &DeTable, key: &str) -> Option<String> {
        Self::get(t, key).and_then(|v| self.string(v, key))
    }

    /// An optional `id` in AWS's form: `prefix-` and 8 or 17 lowercase hex
    /// digits (`sg-12345678`, `sgr-0123456789abcdef0`).
    fn aws_id(&mut self, t: &DeTable, prefix: &str, example: &str) -> Option<(String, Span)> {
        let v = Self::get(t, "id")?;
        let id = self.string(v, "id")?;
        if is_aws_id(prefix, &id) {
            Some((id, v.span()))
        } else {
            self.err_hint(
                v.span(),
                format!("\"{id}\" is not an AWS id of this kind"),
                format!("write {prefix}- and 8 or 17 lowercase hex digits, e.g. \"{example}\", or leave id out"),
            );
            None
        }
    }

    /// `tags = { Key = "value", ... }`: AWS's tags (at most 50; keys up to
    /// 128 characters, not starting with `aws:`; values up to 256), in the
    /// file's order.
    fn tags(&mut self, t: &DeTable) -> Vec<(String, String)> {
        let Some(v) = Self::get(t, "tags") else {
            return Vec::new();
        };
        let Some(table) = self.table(v, "tags") else {
            return Vec::new();
        };
        let mut tags = Vec::new();
        for (k, val) in table {
            let key = k.get_ref().to_string();
            let Some(value) = self.string(val, &key) else {
                continue;
            };
            if key.is_empty() || key.chars().count() > 128 || key.starts_with("aws:") {
                self.err_hint(
                    k.span(),
                    format!("tag key \"{key}\" is not one AWS accepts"),
                    "a key has 1 to 128 characters and does not start with aws:",
                );
            } else if value.chars().count() > 256 {
                self.err(
                    val.span(),
                    format!("the value of tag \"{key}\" is longer than 256 characters"),
                );
            } else {
                tags.push((key, value));
            }
        }
        if tags.len() > 50 {
            self.err(
                v.span(),
                format!("{} tags: AWS allows at most 50 per resource", tags.len()),
            );
        }
        tags
    }

    fn req_string(
        &mut self,
        t: &DeTable,
        span: &Span,
        key: &str,
        what: &str,
    ) -> Option<(String, Span)> {
        if let Some(v) = Self::get(t, key) {
            self.string(v, key).map(|s| (s, v.span()))
        } else {
            self.err(span.clone(), format!("{what} has no \"{key}\""));
            None
        }
    }

    fn integer(&mut self, v: &Value, key: &str) -> Option<i64> {
        let parsed = v
            .get_ref()
            .as_integer()
            .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok());
        if parsed.is_none() {
            let ty = v.get_ref().type_str();
            self.err(
                v.span(),
                format!("\"{key}\" must be an integer, found {ty}"),
            );
        }
        parsed
    }

    fn boolean(&mut self, v: &Value, key: &str) -> Option<bool> {
        let b = v.get_ref().as_bool();
        if b.is_none() {
            let ty = v.get_ref().type_str();
            self.err(
                v.span(),
                format!("\"{key}\" must be true or false, found {ty}"),
            );
        }
        b
    }

    fn array<'t, 'i>(&mut self, v: &'t Value<'i>, key: &str) -> Option<&'t DeArray<'i>> {
        let a = v.get_ref().as_array();
        if a.is_none() {
            let ty = v.get_ref().type_str();
            self.err(v.span(), format!("\"{key}\" must be an array, found {ty}"));
        }
        a
    }

    fn string_array(&mut self, t: &DeTable, key: &str) -> Vec<(String, Span)> {
        let Some(v) = Self::get(t, key) else {
            return Vec::new();
        };
        let Some(items) = self.array(v, key) else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| self.string(item, key).map(|s| (s, item.span())))
            .collect()
    }

    /// Items of an array of tables, each with its span.
    fn tables<'t, 'i>(&mut self, v: &'t Value<'i>, key: &str) -> Vec<(&'t DeTable<'i>, Span)> {
        if self.reported.iter().any(|r| r == key) {
            return Vec::new();
        }
        let Some(items) = self.array(v, key) else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| {
                if let Some(t) = item.get_ref().as_table() {
                    Some((t, item.span()))
                } else {
                    self.err_hint(
                        item.span(),
                        format!("each \"{key}\" must be a table"),
                        format!("write it as [[{key}]]"),
                    );
                    None
                }
            })
            .collect()
    }

    /// `[[aws_service]]`, each name once.
    fn tracked_services(&mut self, v: &Value, vpc: &mut Vpc) {
        for (t, span) in self.tables(v, "aws_service") {
            if let Some(service) = self.tracked_service(t, span) {
                if vpc.tracked_services.iter().any(|s| s.name == service.name) {
                    self.err(
                        service.span.clone(),
                        format!("a second aws_service named {}", service.name),
                    );
                    continue;
                }
                vpc.tracked_services.push(service);
            }
        }
    }

    fn vpc(&mut self, root: &DeTable) -> Vpc {
        self.misplaced(root);
        self.known_keys(
            root,
            &[
                "prefix_list",
                "security_group",
                "instance",
                "limits",
                "conntrack",
                "vpc",
                "vpc_peering",
                "transit_gateway",
                "subnet",
                "network_acl",
                "aws_service",
            ],
            "the rules file",
        );
        let mut vpc = Vpc::default();
        if let Some(v) = Self::get(root, "prefix_list") {
            for (t, span) in self.tables(v, "prefix_list") {
                if let Some(p) = self.prefix_list(t, span) {
                    vpc.prefix_lists.push(p);
                }
            }
        }
        if let Some(v) = Self::get(root, "security_group") {
            for (t, span) in self.tables(v, "security_group") {
                if let Some(g) = self.group(t, span) {
                    vpc.groups.push(g);
                }
            }
        }
        if let Some(v) = Self::get(root, "instance") {
            for (t, span) in self.tables(v, "instance") {
                if let Some(i) = self.instance(t, span) {
                    vpc.instances.push(i);
                }
            }
        }
        if let Some(v) = Self::get(root, "limits") {
            vpc.limits = self.limits(v);
        }
        if let Some(v) = Self::get(root, "conntrack") {
            vpc.conntrack_set = self.conntrack(v, "[conntrack]");
            vpc.conntrack = ConntrackSettings::default().with(vpc.conntrack_set);
        }
        if let Some(v) = Self::get(root, "vpc") {
            if v.get_ref().as_array().is_some() {
                self.vpcs(v, &mut vpc);
            } else {
                vpc.cidr_blocks = self.vpc_blocks(v);
                if let Some(t) = v.get_ref().as_table() {
                    vpc.service_mac = self.mac(t, "service_mac");
                }
            }
        }
        if let Some(v) = Self::get(root, "vpc_peering") {
            for (t, span) in self.tables(v, "vpc_peering") {
                self.known_keys(t, &["vpcs", "description"], "a vpc_peering");
                self.description(t);
                let vpcs = self.string_array(t, "vpcs");
                match vpcs.as_slice() {
                    [(a, _), (b, _)] if a != b => vpc.peerings.push((a.clone(), b.clone())),
                    _ => self.err_hint(
                        span,
                        "a vpc_peering joins two different VPCs",
                        "write vpcs = [\"NAME\", \"OTHER\"], two names of [[vpc]]",
                    ),
                }
            }
        }
        if let Some(v) = Self::get(root, "transit_gateway") {
            self.transit_gateways(v, &mut vpc);
        }
        if let Some(v) = Self::get(root, "subnet") {
            for (t, span) in self.tables(v, "subnet") {
                if let Some(net) = self.subnet(t, &span) {
                    vpc.subnets.push(net);
                }
            }
        }
        if let Some(v) = Self::get(root, "network_acl") {
            for (t, span) in self.tables(v, "network_acl") {
                if let Some(acl) = self.network_acl(t, span) {
                    vpc.network_acls.push(acl);
                }
            }
        }
        if let Some(v) = Self::get(root, "aws_service") {
            self.tracked_services(v, &mut vpc);
        }
        by_id(&mut vpc);
        default_group(&mut vpc);
        default_egress_families(&mut vpc);
        vpc
    }
}

/// Whether `id` has AWS's form for `prefix` (`sg`, `sgr`): `prefix-` and 8
/// or 17 lowercase hex digits.
pub fn is_aws_id(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|d| {
            matches!(d.len(), 8 | 17)
                && d.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// AWS's default security group: an instance the file gives no group
/// (`security_groups = []`, or no such key) is in the VPC's group named
/// `default`, as an instance launched without one is. The file may define
/// `default` (its rules then are the file's, as they can be changed on
/// AWS); if it does not, the group is AWS's: all inbound traffic from its
/// own members, all outbound traffic.
fn default_group(vpc: &mut Vpc) {
    let mut needed = false;
    let default_vpc = vpc.default_vpc().to_owned();
    for i in &mut vpc.instances {
        // Only the default VPC's default group is modelled: an instance of
        // another VPC names its groups.
        let in_default = i.vpc.as_deref().is_none_or(|v| v == default_vpc);
        if i.groups.is_empty() && in_default {
            i.groups.push((DEFAULT_GROUP.to_owned(), i.span.clone()));
            needed = true;
        }
    }
    if !needed || vpc.groups.iter().any(|g| g.name == DEFAULT_GROUP) {
        return;
    }
    let span = 0..0;
    vpc.groups.push(SecurityGroup {
        name: DEFAULT_GROUP.to_owned(),
        id: None,
        description: Some("default VPC security group".to_owned()),
        associated_vpcs: Vec::new(),
        ingress: vec![Rule {
            id: None,
            protocol: Protocol::All,
            ports: Ports::All,
            sources: vec![SourceRef {
                source: Source::SelfGroup,
                span: span.clone(),
            }],
            description: Some("default: all inbound traffic from the group itself".to_owned()),
            tags: Vec::new(),
            implicit: false,
            span: span.clone(),
        }],
        egress: vec![default_egress(span.clone())],
        vpc: None,
        tags: Vec::new(),
        span,
    });
}

/// AWS's default outbound rule allows `::/0` only in a VPC with an IPv6
/// range: where the file gives a group's VPC its ranges and none of them is
/// IPv6, the implicit rule allows `0.0.0.0/0` alone. A VPC whose ranges the
/// file does not give (a lab without `[vpc]`) is taken to have both.
fn default_egress_families(vpc: &mut Vpc) {
    let ranges: Vec<(Option<String>, bool, bool)> = if vpc.vpcs.is_empty() {
        vec![(
            None,
            !vpc.cidr_blocks.is_empty(),
            vpc.cidr_blocks.iter().any(|n| n.addr().is_ipv6()),
        )]
    } else {
        vpc.vpcs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    (i > 0).then(|| d.name.clone()),
                    !d.cidr_blocks.is_empty(),
                    d.cidr_blocks.iter().any(|n| n.addr().is_ipv6()),
                )
            })
            .collect()
    };
    let default = vpc.default_vpc().to_owned();
    for g in &mut vpc.groups {
        let name = g.vpc.clone().filter(|v| *v != default);
        let Some((_, given, ipv6)) = ranges.iter().find(|(n, _, _)| *n == name) else {
            continue;
        };
        if *given && !ipv6 {
            for rule in g.egress.iter_mut().filter(|r| r.implicit) {
                rule.sources
                    .retain(|s| !matches!(s.source, Source::Cidr(IpNet::V6(_))));
            }
        }
    }
}

/// The name of the VPC's default security group.
pub const DEFAULT_GROUP: &str = "default";

/// AWS's default outbound rule: all traffic to 0.0.0.0/0 and `::/0`.
fn default_egress(span: Span) -> Rule {
    let any = |s: &str| SourceRef {
        source: Source::Cidr(s.parse().expect("constant CIDR")),
        span: span.clone(),
    };
    Rule {
        id: None,
        protocol: Protocol::All,
        ports: Ports::All,
        sources: vec![any("0.0.0.0/0"), any("::/0")],
        description: Some("default: all outbound traffic (no egress key)".to_owned()),
        tags: Vec::new(),
        implicit: true,
        span: span.clone(),
    }
}

#[cfg(test)]
mod tests {
    /// What `check` says about `text`: every diagnostic, rendered.
    fn said(text: &str) -> (usize, String) {
        let d = crate::config::from_str("vpc.toml".as_ref(), text).expect_err("refused");
        (d.items.len(), d.to_string())
    }

    #[test]
    fn pasted_aws_json_and_terraform_get_one_line_naming_the_import() {
        let (n, text) = said("{\n  \"SecurityGroups\": [\n    {\"GroupId\": \"sg-1\"}\n  ]\n}\n");
        assert_eq!(n, 1, "{text}");
        assert!(text.contains("sg-agent import aws"), "{text}");
        let (n, text) = said("{\"format_version\": \"1.0\", \"terraform_version\": \"1.9.0\"}");
        assert_eq!(n, 1, "{text}");
        assert!(text.contains("sg-agent import terraform"), "{text}");
        let (n, text) = said(
            "resource \"aws_security_group\" \"web\" {\n  name = \"web\"\n  ingress {\n    from_port = 80\n  }\n}\n",
        );
        assert_eq!(n, 1, "{text}");
        assert!(
            text.contains("Terraform (HCL)") && text.contains("import terraform"),
            "{text}"
        );
    }

    #[test]
    fn single_brackets_and_a_top_level_rule_say_what_to_write() {
        let (n, text) = said("[security_group]\nname = \"web\"\n");
        assert_eq!(n, 1, "{text}");
        assert!(
            text.contains("write [[security_group]] (double brackets)"),
            "{text}"
        );
        let (n, text) = said(
            "[[security_group]]\nname = \"web\"\n\n[[ingress]]\nprotocol = \"tcp\"\nfrom_port = 22\nto_port = 22\n",
        );
        assert_eq!(n, 1, "{text}");
        assert!(text.contains("write [[security_group.ingress]]"), "{text}");
    }

    #[test]
    fn aws_services_are_checked_as_declared() {
        let (n, text) = said(
            "[[aws_service]]\nname = \"lb\"\ntype = \"network_load_balancr\"\naddresses = [\"10.0.0.5\"]\n",
        );
        assert_eq!(n, 1, "{text}");
        assert!(
            text.contains("did you mean network_load_balancer?"),
            "{text}"
        );
        let (n, text) = said(
            "[[aws_service]]\nname = \"nat\"\ntype = \"nat_gateway\"\naddresses = [\"0.0.0.0/0\"]\ntcp_idle_timeout = 100\n",
        );
        assert_eq!(n, 2, "{text}");
        assert!(text.contains("0.0.0.0/0 is every address"), "{text}");
        assert!(
            text.contains("tcp_idle_timeout is a Network Load Balancer's setting"),
            "{text}"
        );
        let (n, text) = said(
            "[[aws_service]]\nname = \"lb\"\ntype = \"network_load_balancer\"\naddresses = [\"10.0.0.5\"]\ntcp_idle_timeout = 7000\n",
        );
        assert_eq!(n, 1, "{text}");
        assert!(
            text.contains("tcp_idle_timeout goes from 60 to 6000"),
            "{text}"
        );
        let vpc = super::super::from_str(
            "t.toml".as_ref(),
            "[[aws_service]]\nname = \"lb\"\ntype = \"network_load_balancer\"\naddresses = [\"10.0.0.5\", \"10.0.1.0/28\"]\n",
        )
        .expect("valid");
        let lb = &vpc.tracked_services[0];
        assert_eq!(lb.timeouts(), Some((350, 120)));
        assert_eq!(lb.addresses.len(), 2);
        assert!(vpc.tracked_service("10.0.1.7".parse().unwrap()).is_some());
        assert!(vpc.tracked_service("10.0.1.17".parse().unwrap()).is_none());
    }

    #[test]
    fn a_service_name_as_protocol_is_told_its_protocol_and_port() {
        let (_, text) = said(
            "[[security_group]]\nname = \"web\"\n  [[security_group.ingress]]\n  protocol = \"SSH\"\n  cidr_blocks = [\"10.0.0.0/8\"]\n",
        );
        assert!(text.contains("ssh is tcp port 22"), "{text}");
        assert!(
            text.contains("protocol = \"tcp\", from_port = 22, to_port = 22"),
            "{text}"
        );
    }

    #[test]
    fn a_group_may_be_named_by_the_id_it_declares() {
        let text = "[[security_group]]\nname = \"web\"\nid = \"sg-0a1b2c3d4e5f60718\"\n\n\
                    [[security_group]]\nname = \"db\"\n  [[security_group.ingress]]\n  \
                    protocol = \"tcp\"\n  from_port = 3306\n  to_port = 3306\n  \
                    security_groups = [\"sg-0a1b2c3d4e5f60718\"]\n\n\
                    [[instance]]\nname = \"app\"\naddresses = [\"10.0.0.1\"]\n\
                    security_groups = [\"sg-0a1b2c3d4e5f60718\"]\n";
        let vpc =
            crate::config::from_str("vpc.toml".as_ref(), text).unwrap_or_else(|d| panic!("{d}"));
        let db = vpc.groups.iter().find(|g| g.name == "db").expect("db");
        assert!(matches!(&db.ingress[0].sources[0].source, super::Source::Group(g) if g == "web"));
        assert_eq!(vpc.instances[0].groups[0].0, "web");
        let (_, text) = said(&text.replace("id = \"sg-0a1b2c3d4e5f60718\"\n", ""));
        assert!(
            text.contains("unknown security group \"sg-0a1b2c3d4e5f60718\""),
            "{text}"
        );
    }

    /// AWS's default egress allows `::/0` only in a VPC with an IPv6
    /// range: a file that gives its VPC only IPv4 ranges gets the IPv4
    /// rule alone; one that gives none keeps both (a lab without `[vpc]`).
    #[test]
    fn the_default_egress_allows_ipv6_only_where_the_vpc_has_an_ipv6_range() {
        let egress = |head: &str| {
            let text = format!("{head}[[security_group]]\nname = \"web\"\n");
            let vpc = crate::config::from_str("vpc.toml".as_ref(), &text)
                .unwrap_or_else(|d| panic!("{d}"));
            let rule = &vpc.groups[0].egress[0];
            assert!(rule.implicit);
            rule.sources
                .iter()
                .map(|s| s.source.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            egress("[vpc]\ncidr_blocks = [\"10.0.0.0/16\"]\n\n"),
            ["0.0.0.0/0"]
        );
        assert_eq!(
            egress("[vpc]\ncidr_blocks = [\"10.0.0.0/16\", \"2001:db8::/56\"]\n\n"),
            ["0.0.0.0/0", "::/0"]
        );
        assert_eq!(egress(""), ["0.0.0.0/0", "::/0"]);
        // Several VPCs: each group's own.
        let two = "[[vpc]]\nname = \"a\"\ncidr_blocks = [\"10.0.0.0/16\"]\n\n[[vpc]]\nname = \"b\"\ncidr_blocks = [\"10.1.0.0/16\", \"2001:db8:1::/56\"]\n\n";
        let text = format!(
            "{two}[[security_group]]\nname = \"x\"\n\n[[security_group]]\nname = \"y\"\nvpc = \"b\"\n"
        );
        let vpc =
            crate::config::from_str("vpc.toml".as_ref(), &text).unwrap_or_else(|d| panic!("{d}"));
        let count = |name: &str| vpc.group(name).expect("group").egress[0].sources.len();
        assert_eq!((count("x"), count("y")), (1, 2));
    }
}

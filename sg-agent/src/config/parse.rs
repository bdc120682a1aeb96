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
};

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
                "subnet",
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
        if let Some(v) = Self::get(root, "subnet") {
            for (t, span) in self.tables(v, "subnet") {
                if let Some(net) = self.subnet(t, &span) {
                    vpc.subnets.push(net);
                }
            }
        }
        if let Some(v) = Self::get(root, "aws_service") {
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
        by_id(&mut vpc);
        default_group(&mut vpc);
        vpc
    }

    fn prefix_list(&mut self, t: &DeTable, span: Span) -> Option<PrefixList> {
        self.known_keys(
            t,
            &[
                "name",
                "id",
                "entries",
                "description",
                "max_entries",
                "tags",
                "version",
                "address_family",
            ],
            "a prefix_list",
        );
        let description = self.description(t);
        let version =
            Self::get(t, "version").map(|_| self.bounded(t, "version", 1..=i64::MAX, 1, ""));
        let ipv6 = match self.opt_string(t, "address_family").as_deref() {
            None => None,
            Some("IPv4") => Some(false),
            Some("IPv6") => Some(true),
            Some(other) => {
                let span = Self::get(t, "address_family").map_or(span.clone(), toml::Spanned::span);
                self.err_hint(
                    span,
                    format!("address_family \"{other}\" is not one AWS has"),
                    "write \"IPv4\" or \"IPv6\"",
                );
                None
            }
        };
        let id = self.aws_id(t, "pl", "pl-0123456789abcdef0");
        let tags = self.tags(t);
        let max_entries = Self::get(t, "max_entries").map(|v| {
            let n = self.bounded(t, "max_entries", 1..=1_000_000, 0, "");
            (u32::try_from(n).unwrap_or(u32::MAX), v.span())
        });
        let name = self
            .req_string(t, &span, "name", "this prefix_list")
            .filter(|(n, _)| self.text_ok(t, "name", n, TextKind::Other));
        let entries = self
            .string_array(t, "entries")
            .into_iter()
            .filter_map(|(s, span)| self.cidr(&s, span, None))
            .collect();
        Some(PrefixList {
            name: name?.0,
            id,
            description,
            entries,
            max_entries,
            tags,
            version,
            ipv6,
            span,
        })
    }

    /// `[[aws_service]]`: a service AWS tracks every connection through
    /// (a Network Load Balancer, a NAT gateway...), with its addresses.
    fn tracked_service(&mut self, t: &DeTable, span: Span) -> Option<TrackedService> {
        self.known_keys(
            t,
            &[
                "name",
                "type",
                "addresses",
                "tcp_idle_timeout",
                "description",
            ],
            "an aws_service",
        );
        self.description(t);
        let name = self
            .req_string(t, &span, "name", "this aws_service")
            .filter(|(n, _)| self.text_ok(t, "name", n, TextKind::Other));
        let kind = match self.req_string(t, &span, "type", "this aws_service") {
            Some((text, sp)) => {
                let kind = ServiceKind::parse(&text);
                if kind.is_none() {
                    let known: Vec<&str> = ServiceKind::ALL.iter().map(|k| k.as_str()).collect();
                    let hint = did_you_mean(&text, known.iter().copied()).map_or_else(
                        || format!("AWS tracks connections through: {}", known.join(", ")),
                        |m| format!("did you mean {m}?"),
                    );
                    self.err_hint(
                        sp,
                        format!("\"{text}\" is not a service AWS tracks connections through"),
                        hint,
                    );
                }
                kind
            }
            None => None,
        };
        let mut addresses = Vec::new();
        for (text, sp) in self.string_array(t, "addresses") {
            let net = match IpAddr::from_str(&text) {
                Ok(a) => Some(IpNet::from(a)),
                Err(_) => self.cidr(&text, sp.clone(), None),
            };
            match net {
                Some(net) if net.prefix_len() == 0 => self.err_hint(
                    sp,
                    format!("{net} is every address"),
                    "name the service's own addresses (an NLB's, a NAT gateway's...)",
                ),
                Some(net) => addresses.push(net),
                None => {}
            }
        }
        if addresses.is_empty() && Self::get(t, "addresses").is_none() {
            self.err_hint(
                span.clone(),
                "this aws_service has no \"addresses\"",
                "add the addresses traffic through it comes from, e.g. addresses = [\"10.0.1.5\"]",
            );
        }
        let nlb = kind == Some(ServiceKind::NetworkLoadBalancer);
        let tcp_idle_timeout = match Self::get(t, "tcp_idle_timeout") {
            Some(v) if !nlb => {
                self.err_hint(
                    v.span(),
                    "tcp_idle_timeout is a Network Load Balancer's setting",
                    "the other services' connections idle out after the instance's timeouts",
                );
                super::NLB_TCP_IDLE_TIMEOUT
            }
            _ => self.bounded(
                t,
                "tcp_idle_timeout",
                60..=6_000,
                super::NLB_TCP_IDLE_TIMEOUT,
                " seconds (AWS's bounds for a Network Load Balancer)",
            ),
        };
        Some(TrackedService {
            name: name?.0,
            kind: kind?,
            addresses,
            tcp_idle_timeout,
            span,
        })
    }

    fn not_a_cidr(&mut self, text: &str, span: Span) -> Option<IpNet> {
        if let Ok(addr) = IpAddr::from_str(text) {
            let len = if addr.is_ipv4() { 32 } else { 128 };
            self.err_hint(
                span,
                format!("\"{text}\" is an address, not a CIDR block"),
                format!("write {addr}/{len} for this one host"),
            );
        } else {
            self.err_hint(
                span,
                format!("\"{text}\" is not a CIDR block"),
                "write an address and a prefix length, e.g. 10.0.0.0/16 or 2001:db8::/32",
            );
        }
        None
    }

    /// A CIDR block; `family` 4 or 6 restricts it (with a hint to move it).
    fn cidr(&mut self, text: &str, span: Span, family: Option<(u8, &str)>) -> Option<IpNet> {
        let Ok(net) = IpNet::from_str(text) else {
            return self.not_a_cidr(text, span);
        };
        if net.network() != net.addr() {
            let fixed = net.trunc();
            self.err_hint(
                span.clone(),
                format!("{net} has host bits set"),
                format!("did you mean {fixed}?"),
            );
            return None;
        }
        match (family, net) {
            (Some((6, key)), IpNet::V4(_)) => {
                self.err_hint(
                    span,
                    format!("{net} is an IPv4 block in {key}"),
                    "move it to cidr_blocks",
                );
                None
            }
            (Some((4, key)), IpNet::V6(_)) => {
                self.err_hint(
                    span,
                    format!("{net} is an IPv6 block in {key}"),
                    "move it to ipv6_cidr_blocks",
                );
                None
            }
            _ => Some(net),
        }
    }

    fn group(&mut self, t: &DeTable, span: Span) -> Option<SecurityGroup> {
        self.known_keys(
            t,
            &[
                "name",
                "id",
                "description",
                "ingress",
                "egress",
                "vpc",
                "tags",
            ],
            "a security_group",
        );
        let name = self
            .req_string(t, &span, "name", "this security_group")
            .filter(|(n, _)| self.text_ok(t, "name", n, TextKind::GroupName));
        let id = self.aws_id(t, "sg", "sg-0123456789abcdef0");
        let description = self.description(t);
        let mut ingress = Vec::new();
        if let Some(v) = Self::get(t, "ingress") {
            for (rt, rspan) in self.tables(v, "security_group.ingress") {
                ingress.extend(self.rule(rt, rspan, "an ingress rule"));
            }
        }
        let egress = if let Some(v) = Self::get(t, "egress") {
            let mut rules = Vec::new();
            for (rt, rspan) in self.tables(v, "security_group.egress") {
                rules.extend(self.rule(rt, rspan, "an egress rule"));
            }
            rules
        } else {
            vec![default_egress(span.clone())]
        };
        let vpc = self.opt_string(t, "vpc");
        let tags = self.tags(t);
        Some(SecurityGroup {
            name: name?.0,
            id,
            description,
            ingress,
            egress,
            vpc,
            tags,
            span,
        })
    }

    fn rule(&mut self, t: &DeTable, span: Span, what: &str) -> Option<Rule> {
        self.known_keys(
            t,
            &[
                "id",
                "protocol",
                "from_port",
                "to_port",
                "cidr_blocks",
                "ipv6_cidr_blocks",
                "security_groups",
                "prefix_list_ids",
                "self",
                "description",
                "tags",
            ],
            what,
        );
        let description = self.description(t);
        let id = self.aws_id(t, "sgr", "sgr-0123456789abcdef0");
        let tags = self.tags(t);
        let protocol = if let Some(v) = Self::get(t, "protocol") {
            self.protocol(v)
        } else {
            self.err_hint(
                span.clone(),
                format!("{what} has no \"protocol\""),
                "add protocol = \"tcp\", \"udp\", \"icmp\", \"icmpv6\", \"all\" or a protocol number",
            );
            None
        };
        let ports = protocol.and_then(|p| self.ports(t, &span, p));

        let mut sources = Vec::new();
        for (s, sp) in self.string_array(t, "cidr_blocks") {
            if let Some(net) = self.cidr(&s, sp.clone(), Some((4, "cidr_blocks"))) {
                sources.push(SourceRef {
                    source: Source::Cidr(net),
                    span: sp,
                });
            }
        }
        for (s, sp) in self.string_array(t, "ipv6_cidr_blocks") {
            if let Some(net) = self.cidr(&s, sp.clone(), Some((6, "ipv6_cidr_blocks"))) {
                sources.push(SourceRef {
                    source: Source::Cidr(net),
                    span: sp,
                });
            }
        }
        for (s, sp) in self.string_array(t, "security_groups") {
            sources.push(SourceRef {
                source: Source::Group(s),
                span: sp,
            });
        }
        for (s, sp) in self.string_array(t, "prefix_list_ids") {
            sources.push(SourceRef {
                source: Source::PrefixList(s),
                span: sp,
            });
        }
        if let Some(v) = Self::get(t, "self") {
            match v.get_ref().as_bool() {
                Some(true) => sources.push(SourceRef {
                    source: Source::SelfGroup,
                    span: v.span(),
                }),
                Some(false) => {}
                None => self.err(v.span(), "\"self\" must be true or false"),
            }
        }
        let source_keys = [
            "cidr_blocks",
            "ipv6_cidr_blocks",
            "security_groups",
            "prefix_list_ids",
            "self",
        ];
        if sources.is_empty() && !source_keys.iter().any(|k| Self::get(t, k).is_some()) {
            self.err_hint(
                span.clone(),
                format!("{what} has no source"),
                "add cidr_blocks, ipv6_cidr_blocks, security_groups, prefix_list_ids or self = true",
            );
        }
        Some(Rule {
            id,
            protocol: protocol?,
            ports: ports?,
            sources,
            description,
            tags,
            implicit: false,
            span,
        })
    }

    fn protocol(&mut self, v: &Value) -> Option<Protocol> {
        /// The console's rule types that people write as protocols.
        const SERVICES: &[(&str, &str, u16)] = &[
            ("ssh", "tcp", 22),
            ("http", "tcp", 80),
            ("https", "tcp", 443),
            ("rdp", "tcp", 3389),
            ("mysql", "tcp", 3306),
            ("aurora", "tcp", 3306),
            ("postgresql", "tcp", 5432),
            ("postgres", "tcp", 5432),
            ("mssql", "tcp", 1433),
            ("redis", "tcp", 6379),
            ("smtp", "tcp", 25),
            ("dns", "udp", 53),
            ("ntp", "udp", 123),
            ("nfs", "tcp", 2049),
            ("ldap", "tcp", 389),
            ("imap", "tcp", 143),
            ("pop3", "tcp", 110),
        ];
        let bad = |p: &mut Self| {
            p.err_hint(
                v.span(),
                "unknown protocol",
                "use \"tcp\", \"udp\", \"icmp\", \"icmpv6\", \"all\" (or \"-1\"), a name such as \"gre\", or a number 0-255",
            );
            None
        };
        let text = match v.get_ref() {
            DeValue::String(s) => s.to_ascii_lowercase(),
            DeValue::Integer(i) => i.as_str().to_owned(),
            _ => return bad(self),
        };
        if text == "all" || text == "-1" {
            return Some(Protocol::All);
        }
        if let Ok(n) = text.parse::<i64>() {
            return if let Ok(n) = u8::try_from(n) {
                Some(Protocol::Number(n))
            } else {
                self.err_hint(
                    v.span(),
                    format!("protocol number {n} is out of range"),
                    "protocol numbers go from 0 to 255; -1 means all",
                );
                None
            };
        }
        if let Some(&(_, n)) = PROTOCOL_NAMES.iter().find(|(name, _)| *name == text) {
            return Some(Protocol::Number(n));
        }
        // A service where a protocol goes, as the console's rule types
        // ("SSH", "HTTPS") invite.
        if let Some(&(_, proto, port)) = SERVICES.iter().find(|(name, _, _)| *name == text) {
            self.err_hint(
                v.span(),
                format!("\"{text}\" is a service, not a protocol: {text} is {proto} port {port}"),
                format!("write protocol = \"{proto}\", from_port = {port}, to_port = {port}"),
            );
            return None;
        }
        if let Some(s) = did_you_mean(&text, PROTOCOL_NAMES.iter().map(|(n, _)| *n).chain(["all"]))
        {
            self.err_hint(
                v.span(),
                format!("unknown protocol \"{text}\""),
                format!("did you mean \"{s}\"?"),
            );
            return None;
        }
        bad(self)
    }

    fn ports(&mut self, t: &DeTable, span: &Span, protocol: Protocol) -> Option<Ports> {
        let from = Self::get(t, "from_port").map(|v| (self.integer(v, "from_port"), v.span()));
        let to = Self::get(t, "to_port").map(|v| (self.integer(v, "to_port"), v.span()));
        if matches!(from, Some((None, _))) || matches!(to, Some((None, _))) {
            return None;
        }
        let from = from.map(|(v, s)| (v.unwrap_or_default(), s));
        let to = to.map(|(v, s)| (v.unwrap_or_default(), s));
        match protocol {
            Protocol::Number(6 | 17) => {
                let (Some((f, fspan)), Some((to, tspan))) = (from, to) else {
                    self.err_hint(
                        span.clone(),
                        format!("{protocol} rule needs from_port and to_port"),
                        "for every port write from_port = 0 and to_port = 65535",
                    );
                    return None;
                };
                let mut ok = true;
                for (v, s, k) in [(f, &fspan, "from_port"), (to, &tspan, "to_port")] {
                    if !(0..=65535).contains(&v) {
                        self.err_hint(
                            s.clone(),
                            format!("{k} {v} is out of range"),
                            "ports go from 0 to 65535",
                        );
                        ok = false;
                    }
                }
                if ok && f > to {
                    self.err_hint(
                        fspan.start..tspan.end.max(fspan.end),
                        format!("from_port {f} is greater than to_port {to}"),
                        format!("did you mean from_port = {to}, to_port = {f}?"),
                    );
                    ok = false;
                }
                ok.then(|| Ports::Range {
                    from: u16::try_from(f).unwrap_or_default(),
                    to: u16::try_from(to).unwrap_or_default(),
                })
            }
            Protocol::Number(1 | 58) => {
                // Absent means -1, any.
                let ty = from.clone().map_or(Ok(None), |(v, s)| {
                    self.icmp_field(v, s, "type", "from_port")
                });
                let code = to
                    .clone()
                    .map_or(Ok(None), |(v, s)| self.icmp_field(v, s, "code", "to_port"));
                let (Ok(ty), Ok(code)) = (ty, code) else {
                    return None;
                };
                if ty.is_none() && code.is_some() {
                    let s = to.map_or(span.clone(), |(_, s)| s);
                    self.err_hint(
                        s,
                        "an ICMP code without a type",
                        "set from_port (the type) too, or to_port = -1",
                    );
                    return None;
                }
                Some(Ports::Icmp { ty, code })
            }
            _ => {
                // AWS accepts ports on a protocol without them and ignores
                // them ("traffic on all ports is allowed, regardless of any
                // ports you specify"): so does sg-agent, and says so.
                if let Some(&(v, ref s)) = [from.as_ref(), to.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|(v, _)| *v != 0 && *v != -1)
                {
                    let hint = if protocol == Protocol::All {
                        "protocol \"all\" covers every port: remove from_port and to_port"
                            .to_owned()
                    } else {
                        format!("protocol {protocol} has no ports: remove from_port and to_port")
                    };
                    self.warn_hint(
                        s.clone(),
                        format!("port {v} given for protocol {protocol} is ignored (every port is allowed), as AWS ignores it"),
                        hint,
                    );
                }
                Some(Ports::All)
            }
        }
    }

    /// An ICMP type or code: -1 (any, `None`) or 0-255; `Err` once reported.
    fn icmp_field(&mut self, v: i64, span: Span, what: &str, key: &str) -> Result<Option<u8>, ()> {
        if v == -1 {
            return Ok(None);
        }
        if let Ok(b) = u8::try_from(v) {
            Ok(Some(b))
        } else {
            self.err_hint(
                span,
                format!("ICMP {what} {v} (in {key}) is out of range"),
                format!("an ICMP {what} goes from 0 to 255; -1 means any"),
            );
            Err(())
        }
    }

    fn instance(&mut self, t: &DeTable, span: Span) -> Option<Instance> {
        self.known_keys(
            t,
            &[
                "name",
                "id",
                "description",
                "tags",
                "addresses",
                "prefixes",
                "security_groups",
                "interface",
                "host_interface",
                "libvirt_domain",
                "libvirt_mac",
                "mac",
                "netns",
                "netns_path",
                "node",
                "source_dest_check",
                "conntrack",
                "instance_type",
                "nitro_version",
                "vpc",
            ],
            "an instance",
        );
        let node = self.node_name(t);
        self.description(t);
        let id = self.aws_id(t, "i", "i-0123456789abcdef0");
        let tags = self.tags(t);
        let name = self
            .req_string(t, &span, "name", "this instance")
            .filter(|(n, _)| self.text_ok(t, "name", n, TextKind::Other));
        let addresses = self.addresses(t);
        let prefixes = self.delegated_prefixes(t);
        let groups = self.string_array(t, "security_groups");
        let link = self.link(t);
        let netns = self.netns(t);
        let linked = ["interface", "host_interface", "libvirt_domain"]
            .iter()
            .any(|k| Self::get(t, k).is_some());
        for key in ["netns", "netns_path"] {
            if let (Some(v), false) = (Self::get(t, key), linked) {
                self.err_hint(
                    v.span(),
                    format!("{key} without interface"),
                    "name the interface inside that namespace, e.g. interface = \"eth0\" (or host_interface = \"vnet0\" for the host side of a VM's tap or a container's veth)",
                );
            }
        }
        let mac = self.mac(t, "mac");
        self.mac_fits(t, link.as_ref(), linked);
        let source_dest_check = match Self::get(t, "source_dest_check") {
            None => true,
            Some(v) => v.get_ref().as_bool().unwrap_or_else(|| {
                self.err_hint(
                    v.span(),
                    "\"source_dest_check\" must be true or false",
                    "false lets the instance send and receive for addresses not its own (a NAT or router instance)",
                );
                true
            }),
        };
        let conntrack = Self::get(t, "conntrack")
            .map(|v| self.conntrack(v, "an instance's [instance.conntrack]"))
            .unwrap_or_default();
        let instance_type = self.instance_type(t);
        let nitro_version = self.nitro_version(t);
        let vpc = self.opt_string(t, "vpc");
        Some(Instance {
            name: name?.0,
            id,
            tags,
            addresses,
            prefixes,
            groups,
            link,
            netns,
            mac,
            node,
            source_dest_check,
            conntrack,
            instance_type,
            nitro_version,
            vpc,
            span,
        })
    }

    /// An instance's `addresses`: host addresses, without prefix lengths.
    fn addresses(&mut self, t: &DeTable) -> Vec<IpAddr> {
        let mut addresses = Vec::new();
        for (s, sp) in self.string_array(t, "addresses") {
            match IpAddr::from_str(&s) {
                Ok(a) => addresses.push(a),
                Err(_) if IpNet::from_str(&s).is_ok() => self.err_hint(
                    sp,
                    format!("\"{s}\" has a prefix length"),
                    format!(
                        "addresses are host addresses: write \"{}\" (a prefix delegated to \
                         the interface, IPv4 /28 or IPv6 /80, goes in prefixes = [...])",
                        s.split('/').next().unwrap_or_default()
                    ),
                ),
                Err(_) => self.err_hint(
                    sp,
                    format!("\"{s}\" is not an IP address"),
                    "write e.g. \"10.0.1.10\" or \"2001:db8::10\"",
                ),
            }
        }
        addresses
    }

    /// `nitro_version`: the Nitro version AWS's "Platform summary" of the
    /// instance family shows.
    fn nitro_version(&mut self, t: &DeTable) -> Option<u8> {
        Self::get(t, "nitro_version")?;
        let v = self.bounded(
            t,
            "nitro_version",
            1..=9,
            0,
            " (the Nitro version AWS's \"Platform summary\" of the instance family shows)",
        );
        u8::try_from(v).ok().filter(|&v| v > 0)
    }

    /// `instance_type`: an EC2 instance type as AWS writes it, family and
    /// size (`c8i.large`, `p6e-gb200.36xlarge`, `u7i-12tb.224xlarge`).
    fn instance_type(&mut self, t: &DeTable) -> Option<String> {
        let v = Self::get(t, "instance_type")?;
        let text = self.string(v, "instance_type")?;
        let part = |p: &str| {
            !p.is_empty()
                && p.len() <= 32
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        match text.split_once('.') {
            Some((family, size)) if part(family) && part(size) => Some(text),
            _ => {
                self.err_hint(
                    v.span(),
                    format!("\"{text}\" is not an EC2 instance type"),
                    "write the family and the size as AWS does, e.g. \"c8i.large\" or \"m7g.xlarge\"",
                );
                None
            }
        }
    }

    /// `prefixes`: AWS's prefix delegation, IPv4 /28 and IPv6 /80 only, as
    /// AWS assigns them, without host bits.
    fn delegated_prefixes(&mut self, t: &DeTable) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (s, sp) in self.string_array(t, "prefixes") {
            let Ok(net) = IpNet::from_str(&s) else {
                self.err_hint(
                    sp,
                    format!("\"{s}\" is not a prefix"),
                    "write e.g. \"10.0.5.16/28\" or \"2001:db8:0:5:1::/80\"",
                );
                continue;
            };
            let want = if net.addr().is_ipv4() { 28 } else { 80 };
            if net.prefix_len() != want {
                self.err_hint(
                    sp,
                    format!(
                        "\"{s}\" is a /{}: AWS delegates IPv4 /28 and IPv6 /80 prefixes",
                        net.prefix_len()
                    ),
                    format!("write a /{want}"),
                );
            } else if net.trunc() != net {
                self.err_hint(
                    sp,
                    format!("\"{s}\" has host bits set"),
                    format!("write \"{}\"", net.trunc()),
                );
            } else {
                out.push(net);
            }
        }
        out
    }

    /// `node`: the host name an agent's `run --node` gives.
    fn node_name(&mut self, t: &DeTable) -> Option<String> {
        self.opt_string(t, "node").filter(|n| {
            let ok = !n.is_empty() && n.len() <= 253 && !n.chars().any(char::is_control);
            if !ok {
                let span = Self::get(t, "node").map(Value::span).unwrap_or_default();
                self.err_hint(
                    span,
                    format!("node {n:?} is not a host name"),
                    "name the host whose agent enforces it, as its `run --node` says, e.g. \"host-a\"",
                );
            }
            ok
        })
    }

    /// `netns` (a name under /run/netns) or `netns_path` (a namespace file
    /// elsewhere), not both.
    fn netns(&mut self, t: &DeTable) -> Option<String> {
        let mut netns = self
            .opt_string(t, "netns")
            .filter(|name| self.netns_name_ok(t, name));
        if let Some(path) = self.opt_string(t, "netns_path") {
            let span = Self::get(t, "netns_path")
                .map(Value::span)
                .unwrap_or_default();
            if netns.is_some() {
                self.err_hint(
                    span,
                    "netns and netns_path both given",
                    "keep netns (a name under /run/netns) or netns_path (a namespace file elsewhere)",
                );
            } else if !path.starts_with('/') || path.contains('\0') {
                self.err_hint(
                    span,
                    "netns_path must be an absolute path",
                    "e.g. netns_path = \"/proc/1234/ns/net\" or \"/run/docker/netns/abc\"",
                );
            } else {
                netns = Some(path);
            }
        }
        netns
    }

    /// `interface`, `host_interface` or `libvirt_domain` (with
    /// `libvirt_mac`): at most one of the three.
    fn link(&mut self, t: &DeTable) -> Option<Link> {
        let given: Vec<&str> = ["interface", "host_interface", "libvirt_domain"]
            .into_iter()
            .filter(|k| Self::get(t, k).is_some())
            .collect();
        if given.len() > 1 {
            let span = Self::get(t, given[1]).map(Value::span).unwrap_or_default();
            self.err_hint(
                span,
                format!("{} and {} both given", given[0], given[1]),
                "interface is the instance's own end of its link (inside its namespace or VM); \
                 host_interface the host's end (a VM's tap, a container's host veth), which the \
                 guest cannot lift; libvirt_domain finds a libvirt domain's tap: keep one",
            );
            return None;
        }
        let libvirt_mac = self.mac(t, "libvirt_mac");
        if let (Some(v), false) = (
            Self::get(t, "libvirt_mac"),
            given.first() == Some(&"libvirt_domain"),
        ) {
            self.err_hint(
                v.span(),
                "libvirt_mac without libvirt_domain",
                "libvirt_mac picks one NIC of a libvirt domain: write libvirt_domain = \"NAME\" too",
            );
        }
        match *given.first()? {
            "interface" => self
                .opt_string(t, "interface")
                .filter(|name| self.interface_name_ok(t, "interface", name))
                .map(Link::Instance),
            "host_interface" => self
                .opt_string(t, "host_interface")
                .filter(|name| self.interface_name_ok(t, "host_interface", name))
                .map(Link::Host),
            _ => self
                .opt_string(t, "libvirt_domain")
                .filter(|name| self.domain_name_ok(t, name))
                .map(|domain| Link::Libvirt {
                    domain,
                    mac: libvirt_mac,
                }),
        }
    }

    /// `mac` belongs on the host side of an instance's link.
    fn mac_fits(&mut self, t: &DeTable, link: Option<&Link>, linked: bool) {
        if let Some(v) = Self::get(t, "mac") {
            let why = match link {
                Some(Link::Host(_)) => None,
                Some(Link::Instance(_)) => Some((
                    "mac is checked on the host side of an instance's link only",
                    "write host_interface = \"...\" (the VM's tap or the container's host veth) instead of interface, or leave mac out",
                )),
                Some(Link::Libvirt { .. }) => Some((
                    "a libvirt domain's MAC address comes from libvirt",
                    "leave mac out; libvirt_mac = \"...\" picks one NIC of a domain that has several",
                )),
                None if linked => None,
                None => Some((
                    "mac without host_interface",
                    "name the host side of the instance's link, e.g. host_interface = \"vnet0\"",
                )),
            };
            if let Some((msg, hint)) = why {
                self.err_hint(v.span(), msg, hint);
            }
        }
    }

    /// A MAC address under `key`: six hex octets, a unicast address.
    fn mac(&mut self, t: &DeTable, key: &str) -> Option<MacAddr> {
        let v = Self::get(t, key)?;
        let text = self.string(v, key)?;
        match text.parse::<MacAddr>() {
            Ok(mac) if mac.is_unicast() => Some(mac),
            Ok(_) => {
                self.err_hint(
                    v.span(),
                    format!("{key} {text:?} is not a NIC's own address (multicast, broadcast or zero)"),
                    "a NIC's MAC address has the lowest bit of its first octet clear, e.g. \"52:54:00:12:34:56\"",
                );
                None
            }
            Err(why) => {
                self.err_hint(
                    v.span(),
                    format!("{key} {text:?} {why}"),
                    "write six hexadecimal octets separated by ':', e.g. \"52:54:00:12:34:56\"",
                );
                None
            }
        }
    }

    /// A libvirt domain name, which names its live state file
    /// (`/run/libvirt/qemu/NAME.xml`): one path component, as libvirt
    /// itself requires.
    fn domain_name_ok(&mut self, t: &DeTable, name: &str) -> bool {
        let bad = name.is_empty()
            || name == "."
            || name == ".."
            || name.len() > 200
            || name.chars().any(|c| c == '/' || c.is_control());
        if bad {
            let span = Self::get(t, "libvirt_domain")
                .map(Value::span)
                .unwrap_or_default();
            self.err_hint(
                span,
                format!("libvirt_domain {name:?} is not a domain name"),
                "name the domain as `virsh list` shows it: no '/' or control characters",
            );
        }
        !bad
    }

    /// A Linux interface name: 1 to 15 bytes, no `/`, NUL or whitespace
    /// (the kernel's `dev_valid_name`), not `.` or `..`.
    fn interface_name_ok(&mut self, t: &DeTable, key: &str, name: &str) -> bool {
        let why = if name.is_empty() || name.len() > 15 {
            Some(format!("is {} bytes long", name.len()))
        } else if name == "." || name == ".." {
            Some("is not a name".to_owned())
        } else {
            name.chars()
                .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
                .map(|c| format!("contains {c:?}"))
        };
        if let Some(why) = why {
            let span = Self::get(t, key).map(Value::span).unwrap_or_default();
            self.err_hint(
                span,
                format!("{key} {name:?} {why}"),
                "an interface name is 1 to 15 bytes without '/', ':', whitespace or control characters, e.g. \"eth0\"",
            );
            return false;
        }
        true
    }

    /// A named network namespace (`ip netns add NAME`): one path component
    /// under /run/netns, never `.` or `..`.
    fn netns_name_ok(&mut self, t: &DeTable, name: &str) -> bool {
        let bad = name.is_empty()
            || name == "."
            || name == ".."
            || name.len() > 255
            || name.chars().any(|c| c == '/' || c.is_control());
        if bad {
            let span = Self::get(t, "netns").map(Value::span).unwrap_or_default();
            self.err_hint(
                span,
                format!("netns {name:?} is not a namespace name"),
                "netns names a namespace under /run/netns (ip netns add NAME); for a namespace file elsewhere write netns_path = \"/proc/PID/ns/net\"",
            );
        }
        !bad
    }

    fn table<'t, 'i>(&mut self, v: &'t Value<'i>, key: &str) -> Option<&'t DeTable<'i>> {
        let t = v.get_ref().as_table();
        if t.is_none() {
            self.err_hint(
                v.span(),
                format!("\"{key}\" must be a table"),
                format!("write it as [{key}]"),
            );
        }
        t
    }

    fn bounded(
        &mut self,
        t: &DeTable,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        default: u64,
        why: &str,
    ) -> u64 {
        let Some(v) = Self::get(t, key) else {
            return default;
        };
        let Some(n) = self.integer(v, key) else {
            return default;
        };
        if range.contains(&n) {
            u64::try_from(n).unwrap_or(default)
        } else {
            self.err_hint(
                v.span(),
                format!("{key} = {n} is out of range"),
                format!("{key} goes from {} to {}{why}", range.start(), range.end()),
            );
            default
        }
    }

    fn limits(&mut self, v: &Value) -> Limits {
        let d = Limits::default();
        let Some(t) = self.table(v, "limits") else {
            return d;
        };
        self.known_keys(
            t,
            &["rules_per_group", "groups_per_instance", "beyond_aws"],
            "[limits]",
        );
        let beyond_aws = match Self::get(t, "beyond_aws") {
            None => false,
            Some(v) => v.get_ref().as_bool().unwrap_or_else(|| {
                self.err_hint(
                    v.span(),
                    "\"beyond_aws\" must be true or false",
                    "true lifts AWS's ceilings (1,000 rules per group, 1,000 rules x groups)",
                );
                false
            }),
        };
        let to_u32 = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        let (max_rules, why) = if beyond_aws {
            (1_000_000, "")
        } else {
            (1_000, " (AWS's maximum; beyond_aws = true lifts it)")
        };
        let limits = Limits {
            rules_per_group: to_u32(self.bounded(
                t,
                "rules_per_group",
                1..=max_rules,
                u64::from(d.rules_per_group),
                why,
            )),
            groups_per_instance: to_u32(self.bounded(
                t,
                "groups_per_instance",
                1..=16,
                u64::from(d.groups_per_instance),
                " (AWS's maximum is 16)",
            )),
            beyond_aws,
        };
        // AWS: "The quota for inbound or outbound rules per security group
        // multiplied by the quota for security groups per network interface
        // cannot exceed 1,000."
        let product = u64::from(limits.rules_per_group) * u64::from(limits.groups_per_instance);
        if !beyond_aws && product > 1_000 {
            let span = Self::get(t, "rules_per_group")
                .or_else(|| Self::get(t, "groups_per_instance"))
                .map_or_else(|| v.span(), Value::span);
            self.err_hint(
                span,
                format!(
                    "rules_per_group x groups_per_instance = {} x {} = {product}, more than AWS's 1,000 per interface",
                    limits.rules_per_group, limits.groups_per_instance
                ),
                "lower one of them (AWS: 60 x 5 by default, e.g. 62 x 16 at most), or set beyond_aws = true to lift AWS's ceilings",
            );
        }
        limits
    }

    /// `[[subnet]]`: a subnet's IPv4 range (AWS: /16 to /28), whose five
    /// reserved addresses security groups never filter.
    fn subnet(&mut self, t: &DeTable, span: &Span) -> Option<IpNet> {
        self.known_keys(t, &["name", "cidr_block", "description"], "a subnet");
        self.description(t);
        if let Some(name) = self.opt_string(t, "name") {
            self.text_ok(t, "name", &name, TextKind::Other);
        }
        let (text, sp) = self.req_string(t, span, "cidr_block", "this subnet")?;
        let net = self.cidr(&text, sp.clone(), None)?;
        if net.addr().is_ipv6() {
            self.err_hint(
                sp,
                format!("{net} is an IPv6 range"),
                "a subnet here is its IPv4 range, the one whose addresses AWS reserves",
            );
            None
        } else if (16..=28).contains(&net.prefix_len()) {
            Some(net)
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
    fn vpcs(&mut self, v: &Value, vpc: &mut Vpc) {
        for (t, span) in self.tables(v, "vpc") {
            self.known_keys(
                t,
                &["name", "cidr_blocks", "service_mac", "description"],
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
            vpc.vpcs.push(super::VpcDecl {
                name,
                cidr_blocks: blocks,
                span,
            });
        }
    }

    /// `[vpc]`: the VPC's address ranges (so Amazon DNS, at the base of
    /// each IPv4 range plus two, is known). AWS's VPC blocks are /16 to /28
    /// (IPv4) and /44 to /60 (IPv6).
    fn vpc_blocks(&mut self, v: &Value) -> Vec<IpNet> {
        let Some(t) = self.table(v, "vpc") else {
            return Vec::new();
        };
        self.known_keys(t, &["cidr_blocks", "service_mac"], "[vpc]");
        self.vpc_table_blocks(t)
    }

    /// A VPC's `cidr_blocks`, each of a size AWS allows.
    fn vpc_table_blocks(&mut self, t: &DeTable) -> Vec<IpNet> {
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

    /// A `[conntrack]` or `[instance.conntrack]` table: the keys it sets.
    fn conntrack(&mut self, v: &Value, what: &str) -> ConntrackOverrides {
        let Some(t) = self.table(v, "conntrack") else {
            return ConntrackOverrides::default();
        };
        self.known_keys(
            t,
            &[
                "max_tracked_connections",
                "tcp_established_timeout",
                "udp_timeout",
                "udp_stream_timeout",
            ],
            what,
        );
        let mut set = |key: &str, range: std::ops::RangeInclusive<i64>, why: &str| {
            Self::get(t, key)?;
            Some(self.bounded(t, key, range, 0, why)).filter(|n| *n != 0)
        };
        ConntrackOverrides {
            max_tracked_connections: set(
                "max_tracked_connections",
                i64::from(m::CONNS_MIN_ENTRIES)..=i64::from(m::CONNS_MAX_ENTRIES),
                " (the connection table is preallocated: about 128 bytes each)",
            )
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            tcp_established_timeout: set(
                "tcp_established_timeout",
                60..=432_000,
                " seconds, as in AWS",
            ),
            udp_timeout: set("udp_timeout", 30..=60, " seconds, as in AWS"),
            udp_stream_timeout: set("udp_stream_timeout", 60..=180, " seconds, as in AWS"),
        }
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
}

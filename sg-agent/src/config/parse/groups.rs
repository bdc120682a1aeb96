//! `[[security_group]]` and its rules: protocols, ports, sources.

use super::{
    DeTable, DeValue, FromStr, IpAddr, IpNet, PROTOCOL_NAMES, Parser, Ports, Protocol, Rule,
    SecurityGroup, Source, SourceRef, Span, TextKind, Value, default_egress, did_you_mean,
};

impl Parser {
    pub(super) fn not_a_cidr(&mut self, text: &str, span: Span) -> Option<IpNet> {
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

    /// A security group rule's CIDR block: one with host bits set is taken
    /// as its network, with a warning, as AWS takes it (its API reference:
    /// `100.68.0.18/18` is stored and returned as `100.68.0.0/18`).
    fn rule_cidr(&mut self, text: &str, span: Span, family: Option<(u8, &str)>) -> Option<IpNet> {
        if let Ok(net) = IpNet::from_str(text)
            && net.network() != net.addr()
        {
            let fixed = net.trunc();
            self.warn_hint(
                span.clone(),
                format!("{net} has host bits set: taken as {fixed}, as AWS takes it"),
                format!("write {fixed} (AWS stores and shows the rule as {fixed})"),
            );
            return self.cidr(&fixed.to_string(), span, family);
        }
        self.cidr(text, span, family)
    }

    /// A CIDR block; `family` 4 or 6 restricts it (with a hint to move it).
    pub(super) fn cidr(
        &mut self,
        text: &str,
        span: Span,
        family: Option<(u8, &str)>,
    ) -> Option<IpNet> {
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

    pub(super) fn group(&mut self, t: &DeTable, span: Span) -> Option<SecurityGroup> {
        self.known_keys(
            t,
            &[
                "name",
                "id",
                "description",
                "ingress",
                "egress",
                "vpc",
                "associated_vpcs",
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
        let associated_vpcs = self.string_array(t, "associated_vpcs");
        let tags = self.tags(t);
        Some(SecurityGroup {
            name: name?.0,
            id,
            description,
            ingress,
            egress,
            vpc,
            associated_vpcs,
            tags,
            span,
        })
    }

    pub(super) fn rule(&mut self, t: &DeTable, span: Span, what: &str) -> Option<Rule> {
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
            if let Some(net) = self.rule_cidr(&s, sp.clone(), Some((4, "cidr_blocks"))) {
                sources.push(SourceRef {
                    source: Source::Cidr(net),
                    span: sp,
                });
            }
        }
        for (s, sp) in self.string_array(t, "ipv6_cidr_blocks") {
            if let Some(net) = self.rule_cidr(&s, sp.clone(), Some((6, "ipv6_cidr_blocks"))) {
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

    pub(super) fn protocol(&mut self, v: &Value) -> Option<Protocol> {
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

    pub(super) fn ports(&mut self, t: &DeTable, span: &Span, protocol: Protocol) -> Option<Ports> {
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
    pub(super) fn icmp_field(
        &mut self,
        v: i64,
        span: Span,
        what: &str,
        key: &str,
    ) -> Result<Option<u8>, ()> {
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
}

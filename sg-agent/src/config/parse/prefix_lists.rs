//! `[[prefix_list]]` and `[[aws_service]]`.

use std::collections::BTreeMap;

use super::{
    DeTable, DeValue, FromStr, IpAddr, IpNet, Parser, PrefixList, ServiceKind, Span, TextKind,
    TrackedService, did_you_mean,
};

impl Parser {
    pub(super) fn prefix_list(&mut self, t: &DeTable, span: Span) -> Option<PrefixList> {
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
        let (entries, entry_descriptions) = self.prefix_list_entries(t);
        Some(PrefixList {
            name: name?.0,
            id,
            description,
            entries,
            entry_descriptions,
            max_entries,
            tags,
            version,
            ipv6,
            span,
        })
    }

    /// A list's `entries`: each a range (`"10.0.0.0/8"`) or a range with
    /// its description, as AWS keeps one per entry (`{ cidr =
    /// "10.0.0.0/8", description = "office" }`).
    fn prefix_list_entries(&mut self, t: &DeTable) -> (Vec<IpNet>, BTreeMap<IpNet, String>) {
        let (mut entries, mut descriptions) = (Vec::new(), BTreeMap::new());
        let Some(items) = Self::get(t, "entries").and_then(|v| self.array(v, "entries")) else {
            return (entries, descriptions);
        };
        for item in items {
            let (net, description) = if let DeValue::Table(e) = item.get_ref() {
                self.known_keys(e, &["cidr", "description"], "a prefix list entry");
                let net = self
                    .req_string(e, &item.span(), "cidr", "this entry")
                    .and_then(|(text, span)| self.cidr(&text, span, None));
                (net, self.description(e))
            } else {
                let net = self
                    .string(item, "entries")
                    .and_then(|text| self.cidr(&text, item.span(), None));
                (net, None)
            };
            if let Some(net) = net {
                entries.push(net);
                if let Some(d) = description {
                    descriptions.insert(net, d);
                }
            }
        }
        (entries, descriptions)
    }

    /// `[[aws_service]]`: a service AWS tracks every connection through
    /// (a Network Load Balancer, a NAT gateway...), with its addresses.
    pub(super) fn tracked_service(&mut self, t: &DeTable, span: Span) -> Option<TrackedService> {
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
                crate::config::NLB_TCP_IDLE_TIMEOUT
            }
            _ => self.bounded(
                t,
                "tcp_idle_timeout",
                60..=6_000,
                crate::config::NLB_TCP_IDLE_TIMEOUT,
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
}

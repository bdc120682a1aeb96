//! `[[prefix_list]]` and `[[aws_service]]`.

use super::{
    DeTable, FromStr, IpAddr, IpNet, Parser, PrefixList, ServiceKind, Span, TextKind,
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

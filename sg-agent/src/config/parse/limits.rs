//! `[limits]` and `[conntrack]` (file-wide and per instance).

use super::{ConntrackOverrides, DeTable, Limits, Parser, Value, m};

impl Parser {
    pub(super) fn table<'t, 'i>(&mut self, v: &'t Value<'i>, key: &str) -> Option<&'t DeTable<'i>> {
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

    pub(super) fn bounded(
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

    pub(super) fn limits(&mut self, v: &Value) -> Limits {
        let d = Limits::default();
        let Some(t) = self.table(v, "limits") else {
            return d;
        };
        self.known_keys(
            t,
            &[
                "rules_per_group",
                "groups_per_instance",
                "rules_per_network_acl",
                "beyond_aws",
            ],
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
            rules_per_network_acl: to_u32(self.bounded(
                t,
                "rules_per_network_acl",
                1..=40,
                u64::from(d.rules_per_network_acl),
                " (AWS's maximum is 40 per direction)",
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

    /// A `[conntrack]` or `[instance.conntrack]` table: the keys it sets.
    pub(super) fn conntrack(&mut self, v: &Value, what: &str) -> ConntrackOverrides {
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

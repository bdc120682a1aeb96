//! Synthetic rules files of a given size, deterministic so runs compare.

use std::fmt::Write as _;

/// Where the benchmark's traffic comes from: allowed on tcp/80 (and tcp/5201
/// for iperf3) by every policy, whatever its size.
pub const CLIENT_V4: &str = "198.51.100.7";
pub const CLIENT_V6: &str = "2001:db8:1::7";
pub const SERVER_V4: &str = "10.0.0.1";
pub const SERVER_V6: &str = "2001:db8::1";

/// How the filler rules are spread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// All in one group (raised `rules_per_group` past 60).
    OneGroup,
    /// 60 per group over as many groups as needed (at most 16).
    Groups,
    /// One rule whose source is a prefix list of the filler CIDRs.
    PrefixList,
    /// As `Groups`, but every filler rule on tcp/443: as many address
    /// prefixes, one class. The control experiment for trie depth.
    GroupsOnePort,
}

/// A small deterministic generator (xorshift), so every run sees the same
/// policy.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `n` distinct CIDR blocks away from the benchmark's addresses: IPv4 in
/// 10.64.0.0/10 (every fourth one IPv6, in `2001:db8:8000::/33`).
pub fn filler_cidrs(n: usize, v4_only: bool) -> Vec<String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = rng.next();
        let cidr = if v4_only || out.len() % 4 != 3 {
            let len = 16 + u32::try_from(r % 17).expect("small");
            let addr = 0x0a40_0000u32 | (u32::try_from((r >> 8) & 0x003f_ffff).expect("22 bits"));
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            format!("{}/{len}", std::net::Ipv4Addr::from(addr & mask))
        } else {
            let len = 48 + u32::try_from(r % 81).expect("small");
            let addr = (0x2001_0db8_8000u128 << 80)
                | (u128::from(r) << 16 | u128::from(rng.next() & 0xffff)) & ((1u128 << 95) - 1);
            let mask = u128::MAX << (128 - len);
            format!("{}/{len}", std::net::Ipv6Addr::from(addr & mask))
        };
        if seen.insert(cidr.clone()) {
            out.push(cidr);
        }
    }
    out
}

fn rule(out: &mut String, proto: &str, port: u16, key: &str, cidr: &str) {
    let _ = writeln!(
        out,
        "  [[security_group.ingress]]\n  protocol = \"{proto}\"\n  from_port = {port}\n  to_port = {port}\n  {key} = [\"{cidr}\"]"
    );
}

/// The inbound rules of a policy, as AWS counts them (one per source, a
/// prefix list as its entries): what each bench's tables call its size.
pub fn ingress_rules(vpc: &sg_agent::config::Vpc) -> usize {
    vpc.groups
        .iter()
        .flat_map(|g| &g.ingress)
        .map(|r| sg_agent::config::rule_count(vpc, r))
        .sum()
}

/// A rules file whose instance "bench" (enforced on `place`, netns and
/// interface, when given) has the base rules (tcp/80 from the client's /24
/// and /48, tcp/5201 from its /24: 3 rules as AWS counts them) plus
/// `fillers` rules, one filler CIDR each, on assorted TCP and UDP ports.
pub fn rules_file(
    fillers: usize,
    shape: Shape,
    v4_only: bool,
    place: Option<(&str, &str)>,
) -> String {
    rules_file_with(fillers, shape, v4_only, place, "")
}

/// `rules_file` with `extra` (ingress rule tables) added to the base group.
pub fn rules_file_with(
    fillers: usize,
    shape: Shape,
    v4_only: bool,
    place: Option<(&str, &str)>,
    extra: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "[limits]\nrules_per_group = {}\ngroups_per_instance = 16\nbeyond_aws = true\n",
        fillers.max(60) + 8
    );
    let cidrs = filler_cidrs(fillers, v4_only);
    let mut rng = Rng(42);
    let mut groups = vec!["bench-base".to_owned()];
    // The client's rule: tcp 80 and 5201 (iperf3) from its /24 and /48.
    let _ = writeln!(out, "[[security_group]]\nname = \"bench-base\"");
    let _ = writeln!(
        out,
        "  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 80\n  to_port = 80\n  cidr_blocks = [\"198.51.100.0/24\"]{}",
        if v4_only {
            String::new()
        } else {
            "\n  ipv6_cidr_blocks = [\"2001:db8:1::/48\"]".to_owned()
        }
    );
    let _ = writeln!(
        out,
        "  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 5201\n  to_port = 5201\n  cidr_blocks = [\"198.51.100.0/24\"]"
    );
    out.push_str(extra);
    match shape {
        Shape::PrefixList => {
            // A prefix list has one address family (AWS): one list each.
            let (v6, v4): (Vec<&String>, Vec<&String>) =
                cidrs.iter().partition(|c| c.contains(':'));
            let lists: Vec<(&str, Vec<&String>)> = [("fillers", v4), ("fillers-v6", v6)]
                .into_iter()
                .filter(|(_, l)| !l.is_empty())
                .collect();
            if !lists.is_empty() {
                let names: Vec<String> = lists.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                let _ = writeln!(
                    out,
                    "  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 443\n  to_port = 443\n  prefix_list_ids = [{}]",
                    names.join(", ")
                );
                for (name, entries) in lists {
                    let list: Vec<String> = entries.iter().map(|c| format!("\"{c}\"")).collect();
                    let _ = writeln!(
                        out,
                        "\n[[prefix_list]]\nname = \"{name}\"\nentries = [{}]",
                        list.join(", ")
                    );
                }
            }
        }
        Shape::OneGroup | Shape::Groups | Shape::GroupsOnePort => {
            // Groups: 60 per group (AWS's default), more when 15 groups
            // would not hold them (an instance has at most 16).
            let per_group = fillers.div_ceil(15).max(60);
            for (i, cidr) in cidrs.iter().enumerate() {
                // OneGroup: the fillers follow the base rules in bench-base.
                if shape != Shape::OneGroup && i % per_group == 0 {
                    let g = format!("bench-{}", groups.len());
                    let _ = writeln!(out, "\n[[security_group]]\nname = \"{g}\"");
                    groups.push(g);
                }
                let proto = if rng.next().is_multiple_of(3) {
                    "udp"
                } else {
                    "tcp"
                };
                let port = u16::try_from(1 + rng.next() % 65_000).expect("fits");
                let (proto, port) = if shape == Shape::GroupsOnePort {
                    ("tcp", 443)
                } else {
                    (proto, port)
                };
                let key = if cidr.contains(':') {
                    "ipv6_cidr_blocks"
                } else {
                    "cidr_blocks"
                };
                rule(&mut out, proto, port, key, cidr);
            }
        }
    }
    let _ = writeln!(out, "\n[[instance]]\nname = \"bench\"");
    let addrs = if v4_only {
        format!("\"{SERVER_V4}\"")
    } else {
        format!("\"{SERVER_V4}\", \"{SERVER_V6}\"")
    };
    let _ = writeln!(out, "addresses = [{addrs}]");
    let list: Vec<String> = groups.iter().map(|g| format!("\"{g}\"")).collect();
    let _ = writeln!(out, "security_groups = [{}]", list.join(", "));
    if let Some((netns, ifname)) = place {
        let _ = writeln!(out, "netns = \"{netns}\"\ninterface = \"{ifname}\"");
    }
    out
}

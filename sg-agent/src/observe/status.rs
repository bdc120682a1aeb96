//! What `sg-agent status` shows, and the metrics endpoint exposes: one
//! snapshot of the running agent, taken by its enforcement thread.
//!
//! The JSON form (`status --json`) is a stable schema: fields are added,
//! never renamed or removed, within a `schema` version.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

/// The schema version of [`Status`]'s JSON.
pub const SCHEMA: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub schema: u32,
    pub agent: AgentStatus,
    pub instances: Vec<InstanceStatus>,
    /// `status --domain NAME`: every NIC of that running libvirt domain,
    /// and the instance enforced on it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainStatus>,
}

/// A libvirt domain's NICs as libvirt's live state lists them (hot-plugged
/// ones included), each with the instance enforced on its tap.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainStatus {
    pub name: String,
    /// Why its NICs cannot be listed (not running), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub nics: Vec<DomainNicStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainNicStatus {
    pub mac: String,
    pub interface: String,
    /// The instance enforced on it; `None`: nothing filters it.
    pub instance: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub version: String,
    /// Unix seconds.
    pub started: u64,
    pub rules_file: String,
    /// Of the file in force (hex).
    pub sha256: String,
    /// Reloads applied since start.
    pub reloads: u64,
    /// Reloads refused (the file did not validate, or did not fit).
    pub reloads_rejected: u64,
    pub last_reload: Option<ReloadStatus>,
    /// Seconds the last applied change took (start-up included).
    pub last_apply_seconds: f64,
    pub flow_log: Option<FlowLogStatus>,
    /// Times an enforced instance was found with nothing attached.
    pub lapses: u64,
    /// `sg-agent flows --live` followers now (while there is one, every
    /// instance reports its dropped packets).
    #[serde(default)]
    pub live_followers: u64,
    /// `run --node`: whose instances this agent enforces.
    #[serde(default)]
    pub node: Option<String>,
    /// With `run --etcd`: where the rules come from and how that goes.
    #[serde(default)]
    pub etcd: Option<EtcdStatus>,
    /// With `run --follow-ec2`: the endpoint whose groups are enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<FollowStatus>,
    /// With `run --confirm-within`: seconds left before the policy in
    /// force is rolled back unless `sg-agent confirm` confirms it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_in_seconds: Option<u64>,
}

/// `run --follow-ec2`: the endpoint, its last answer, its failures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowStatus {
    pub url: String,
    /// Unix time of its last answer.
    pub last_ok: Option<u64>,
    /// Unix time of the first failure since (`None`: answering).
    pub failing_since: Option<u64>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdStatus {
    pub endpoints: Vec<String>,
    pub key: String,
    /// The revision that wrote the description in force.
    pub revision: Option<i64>,
    /// The latest revision seen (newer than `revision` when it was
    /// rejected).
    pub latest_revision: Option<i64>,
    /// Whether the watch is up; when not, the policy in force stays and
    /// the agent reconnects with backoff.
    pub connected: bool,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// Unix seconds.
    pub time: u64,
    /// `SIGHUP`, `file changed`, `file changed (polled)`...
    pub trigger: String,
    pub duration_ms: u64,
    /// `applied`, `unchanged` or `rejected`.
    pub result: String,
    /// The full error of a rejected reload.
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowLogStatus {
    /// A file, or `-` for standard output.
    pub destination: String,
    pub interval_seconds: u64,
    pub format: String,
    pub records_written: u64,
    /// Records that could not be written (a full disk): the file says so
    /// with a `SKIPDATA` record once writing works again.
    #[serde(default)]
    pub records_lost: u64,
    /// Packets summed into one `SKIPDATA` record per instance and action
    /// because the interval already held the most flows it records apart.
    #[serde(default)]
    pub packets_summed: u64,
}

/// An address a guest uses that its instance's `addresses` do not list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestAddressStatus {
    pub address: String,
    /// `ARP`, `neighbour discovery` or `IP`.
    pub seen_in: String,
    /// Unix seconds.
    pub first_seen: u64,
    /// Its packets dropped since.
    pub packets: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    /// Its AWS id (the file's, or derived from its name: what the EC2 API
    /// answers).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    pub netns: Option<String>,
    /// Its addresses as enforced: the rules file's, or libvirt's for a
    /// libvirt instance the file gives none (`addresses_from`).
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
    /// `libvirt` when its addresses are libvirt's (the domain's `<ip>`,
    /// its network's reservation and leases), else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses_from: Option<String>,
    /// The interface it is enforced on (empty while a libvirt domain is
    /// not running: its tap is not known).
    pub interface: String,
    /// `instance` (its own interface) or `host` (the host side of its
    /// link: a tap, a host veth, a libvirt domain's NIC).
    #[serde(default)]
    pub side: String,
    /// `libvirt_domain`, for an instance on a libvirt domain's NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_domain: Option<String>,
    /// The host side: the MAC address every frame it sends must come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// How that MAC address was found: `configured` (the rules file),
    /// `libvirt` (the domain's XML) or `learned` (its first frame).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_source: Option<String>,
    /// A learned MAC address: when the agent saw it learned (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_learned_at: Option<u64>,
    /// The host side: addresses its guest was seen using (in its ARP, its
    /// neighbour discovery, as its packets' source) that its `addresses`
    /// do not list; what it sends from them is dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_addresses_unlisted: Vec<GuestAddressStatus>,
    /// `enforced`, `waiting` (its interface or namespace does not exist
    /// yet, its libvirt domain is not running, or loading failed: see
    /// `waiting_reason`) or `lost` (its interface was recreated;
    /// re-attaching).
    pub state: String,
    pub waiting_reason: Option<String>,
    /// Enforced, but not where the rules now place it: why that place
    /// cannot be used (it stays enforced where `interface` says, with the
    /// rules in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unapplied: Option<String>,
    /// The hook that judges its inbound: `XDP (driver mode)`, `XDP
    /// (generic mode)`, `TC` or `TC egress of the host side`.
    pub ingress_hook: Option<String>,
    /// Why that hook (`auto: driver veth, ...`, or the option given).
    #[serde(default)]
    pub ingress_reason: Option<String>,
    pub links: Vec<LinkStatus>,
    /// The policy generation (0 or 1) the programs judge by.
    pub generation: Option<u32>,
    /// Packets by direction (`ingress`, `egress`) and reason.
    pub packets: BTreeMap<String, BTreeMap<String, u64>>,
    pub conntrack: ConntrackStatus,
    /// Events the programs could not send (over the bound or ring full).
    pub events_lost: u64,
    /// New tracked flows seen (events).
    pub new_flows: u64,
    pub rules: Vec<RuleHits>,
    /// Its subnet's network ACL, each entry with what it decided; absent
    /// where no network ACL filters it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_acl: Option<NetworkAclHits>,
}

/// `status --rules`: the network ACL that filters an instance's subnet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAclHits {
    pub name: String,
    pub entries: Vec<AclEntryHits>,
}

/// One network ACL entry, in the order it is judged (the `*` rule last).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclEntryHits {
    /// `ingress` or `egress`.
    pub direction: String,
    /// The rule number, or `*`.
    pub rule: String,
    /// `allow` or `deny`, and what it matches, as `check` prints it.
    pub summary: String,
    /// New flows whose first packet it allowed across the boundary.
    pub flows: u64,
    /// Packets it denied, as drop events show them (with flow logs or the
    /// drop log on, within their bound; `packets` counts them all).
    pub denied: u64,
    /// Unix seconds of the last of either.
    pub last: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// `xdp-native`, `xdp-generic`, `tc-ingress`, `tc-egress`, or on the
    /// host side `host-tc-egress` (its inbound) and `host-tc-ingress` (its
    /// outbound).
    pub hook: String,
    pub link_id: u32,
    pub program_id: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStatus {
    pub entries: u64,
    pub capacity: u64,
    /// New flows refused because the table was full.
    pub allowance_exceeded: u64,
    /// A smaller allowance the table drains to: it held more connections
    /// when the allowance was lowered, so they are kept and new flows are
    /// refused until no more than this remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_to: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleHits {
    pub group: String,
    /// The group's AWS id, when the rules file gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// The rule's AWS id, when the rules file gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    /// `ingress` or `egress`.
    pub direction: String,
    /// 1-based among the group's rules of that direction, as `check`
    /// numbers them.
    pub rule: usize,
    /// What the rule allows, as `check` prints it.
    pub summary: String,
    /// Flows it allowed (a flow allowed by several rules counts under each).
    pub flows: u64,
    /// Unix seconds of the last such flow.
    pub last: Option<u64>,
    /// Why a source of the rule is stale (a group of a VPC not peered with
    /// its own): it matches nothing, as AWS's stale rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
}

pub fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    if s < 120 {
        format!("{s}s ago")
    } else if s < 7200 {
        format!("{}m ago", s / 60)
    } else {
        format!("{}h ago", s / 3600)
    }
}

/// The human table of `sg-agent status`.
/// `--follow-ec2`'s line.
fn render_follow(out: &mut String, f: &FollowStatus, now: u64) {
    let _ = match (f.failing_since, f.last_ok) {
        (Some(since), _) => writeln!(
            out,
            "following   {}: NOT ANSWERING {} ({}); the policy in force stays",
            f.url,
            ago(now, since),
            f.error.as_deref().unwrap_or("unknown")
        ),
        (None, Some(ok)) => writeln!(out, "following   {}: answered {}", f.url, ago(now, ok)),
        (None, None) => writeln!(out, "following   {}", f.url),
    };
}

pub fn render(status: &Status, now: u64, rules: bool) -> String {
    let a = &status.agent;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "sg-agent {} (pid {}), up {}",
        a.version,
        a.pid,
        ago(now, a.started).trim_end_matches(" ago")
    );
    let _ = writeln!(
        out,
        "rules file  {} (sha256 {})",
        a.rules_file,
        a.sha256.get(..16).unwrap_or(&a.sha256)
    );
    if let Some(node) = &a.node {
        let _ = writeln!(out, "node        {node}");
    }
    if let Some(f) = &a.follow {
        render_follow(&mut out, f, now);
    }
    if let Some(e) = &a.etcd {
        let rev = |r: Option<i64>| r.map_or_else(|| "-".to_owned(), |r| r.to_string());
        let _ = writeln!(
            out,
            "etcd        {} at {}: revision {} in force (latest {}), {}",
            e.key,
            e.endpoints.join(","),
            rev(e.revision),
            rev(e.latest_revision),
            if e.connected {
                "watching".to_owned()
            } else {
                format!(
                    "DISCONNECTED ({}); reconnecting, the policy in force stays",
                    e.error.as_deref().unwrap_or("unknown")
                )
            }
        );
    }
    match &a.last_reload {
        Some(r) => {
            let _ = writeln!(
                out,
                "last reload {} ({}), {}, {} ms{}",
                ago(now, r.time),
                r.trigger,
                r.result,
                r.duration_ms,
                r.error
                    .as_deref()
                    .map(|e| format!("\n  {}", e.replace('\n', "\n  ")))
                    .unwrap_or_default()
            );
        }
        None => {
            let _ = writeln!(out, "last reload none since start");
        }
    }
    let _ = writeln!(
        out,
        "reloads     {} applied, {} rejected; lapses {}",
        a.reloads, a.reloads_rejected, a.lapses
    );
    if let Some(left) = a.rollback_in_seconds {
        let _ = writeln!(
            out,
            "UNCONFIRMED rolled back in {left} s unless `sg-agent confirm` (run --confirm-within)"
        );
    }
    if let Some(f) = &a.flow_log {
        render_flow_log(&mut out, f);
    }
    if let Some(d) = &status.domain {
        render_domain(&mut out, d);
    }
    for i in &status.instances {
        render_instance(&mut out, i, now, rules);
    }
    out
}

/// The flow log's line (and what it lost or summed).
fn render_flow_log(out: &mut String, f: &FlowLogStatus) {
    let _ = writeln!(
        out,
        "flow log    {} ({}, every {} s), {} records",
        f.destination, f.format, f.interval_seconds, f.records_written
    );
    if f.records_lost > 0 {
        let _ = writeln!(
            out,
            "            {} records LOST (could not be written; a SKIPDATA record marks \
             them once writing works again)",
            f.records_lost
        );
    }
    if f.packets_summed > 0 {
        let _ = writeln!(
            out,
            "            {} packets summed into SKIPDATA records (more than {} flows in \
             an instance's interval)",
            f.packets_summed,
            crate::observe::flowlog::MAX_FLOWS_PER_INTERVAL
        );
    }
}

/// `status --domain`: each NIC of the domain and what filters it.
fn render_domain(out: &mut String, d: &DomainStatus) {
    let _ = writeln!(out, "\nlibvirt domain {}", d.name);
    if let Some(e) = &d.error {
        let _ = writeln!(out, "  {e}");
    }
    for n in &d.nics {
        let _ = match &n.instance {
            Some(i) => writeln!(out, "  NIC {} on {}: instance {i}", n.mac, n.interface),
            None => writeln!(
                out,
                "  NIC {} on {}: NOT ENFORCED (no instance of the rules file names it; \
                 `libvirt_domain` with `libvirt_mac = \"{}\"` would)",
                n.mac, n.interface, n.mac
            ),
        };
    }
}

/// Why an instance waits, or why it is enforced where it is rather than
/// where the rules now place it.
fn render_why(out: &mut String, i: &InstanceStatus) {
    if let Some(why) = &i.waiting_reason {
        let _ = writeln!(out, "  {why}");
    }
    if let Some(why) = &i.unapplied {
        let _ = writeln!(
            out,
            "  still enforced here, with the rules in force: the place the rules now give cannot \
             be used ({why})"
        );
    }
}

fn render_instance(out: &mut String, i: &InstanceStatus, now: u64, rules: bool) {
    let mut place = match (&i.libvirt_domain, i.interface.is_empty()) {
        (Some(d), true) => format!("libvirt domain {d}"),
        (Some(d), false) => format!("libvirt domain {d} on {}", i.interface),
        (None, _) => i.interface.clone(),
    };
    if let Some(ns) = &i.netns {
        place.push_str(" in netns ");
        place.push_str(ns);
    }
    if i.side == "host" {
        place.push_str(", host side");
    }
    let _ = writeln!(out, "\ninstance {} ({place}): {}", i.name, i.state);
    if !i.id.is_empty() {
        let _ = writeln!(out, "  id: {}", i.id);
    }
    render_why(out, i);
    if let Some(mac) = &i.mac {
        let source = match (i.mac_source.as_deref(), i.mac_learned_at) {
            (Some("learned"), Some(at)) => {
                format!("learned from its first frame {}", ago(now, at))
            }
            (Some("libvirt"), _) => "from the domain's XML".to_owned(),
            (source, _) => source.unwrap_or("configured").to_owned(),
        };
        let _ = writeln!(
            out,
            "  MAC address {mac} ({source}): every frame it sends must come from it"
        );
    }
    for g in &i.guest_addresses_unlisted {
        let _ = writeln!(
            out,
            "  its guest uses {} (seen in its {} {}, {} packets dropped): not in its addresses",
            g.address,
            g.seen_in,
            ago(now, g.first_seen),
            g.packets
        );
    }
    if let Some(hook) = &i.ingress_hook {
        let links: Vec<String> = i
            .links
            .iter()
            .map(|l| format!("{} link {} prog {}", l.hook, l.link_id, l.program_id))
            .collect();
        let why = i
            .ingress_reason
            .as_ref()
            .map_or_else(String::new, |r| format!(" ({r})"));
        let _ = writeln!(
            out,
            "  inbound by {hook}{why}, generation {}; {}",
            i.generation.map_or_else(|| "-".into(), |g| g.to_string()),
            links.join(", ")
        );
    }
    let c = &i.conntrack;
    let _ = writeln!(
        out,
        "  connections {} of {} ({} refused for the allowance); {} new flows; {} events lost",
        c.entries, c.capacity, c.allowance_exceeded, i.new_flows, i.events_lost
    );
    if let Some(to) = c.draining_to {
        let _ = writeln!(
            out,
            "  allowance lowered to {to}: new flows refused until no more than {to} connections \
             remain (established ones are kept)"
        );
    }
    for (direction, reasons) in &i.packets {
        // The instance's directions, as AWS names them (on the host side
        // of its link the hooks' own directions are the other way round).
        let direction = match direction.as_str() {
            "ingress" => "inbound",
            "egress" => "outbound",
            other => other,
        };
        let shown: Vec<String> = reasons
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  {direction:<8} {}",
            if shown.is_empty() {
                "no packets".into()
            } else {
                shown.join(", ")
            }
        );
    }
    if rules {
        render_rule_hits(out, i, now);
        if let Some(acl) = &i.network_acl {
            render_acl_hits(out, acl, now);
        }
    }
}

/// `status --rules`: the subnet's network ACL, entry by entry.
fn render_acl_hits(out: &mut String, acl: &NetworkAclHits, now: u64) {
    let _ = writeln!(
        out,
        "  network ACL {} (stateless, first match):\n  {:>8}  {:>8}  {:<12} {:<7} {:>5}  entry",
        acl.name, "flows", "denied", "last", "way", "rule"
    );
    for e in &acl.entries {
        let _ = writeln!(
            out,
            "  {:>8}  {:>8}  {:<12} {:<7} {:>5}  {}",
            e.flows,
            e.denied,
            e.last.map_or_else(|| "never".into(), |t| ago(now, t)),
            e.direction,
            e.rule,
            e.summary
        );
    }
}

/// `status --rules`: each rule's flows, last use, and staleness.
fn render_rule_hits(out: &mut String, i: &InstanceStatus, now: u64) {
    // Columns as wide as their widest cell: group names run long.
    let group_w = i
        .rules
        .iter()
        .map(|r| r.group.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let _ = writeln!(
        out,
        "  {:>8}  {:<12} {:<7} {:<group_w$} {:>3}  rule",
        "flows", "last", "way", "group", "#"
    );
    for r in &i.rules {
        let mut id = r
            .rule_id
            .as_ref()
            .map_or_else(String::new, |id| format!(" [{id}]"));
        if let Some(why) = &r.stale {
            let _ = write!(id, " (stale: {why})");
        }
        let _ = writeln!(
            out,
            "  {:>8}  {:<12} {:<7} {:<group_w$} {:>3}  {}{id}",
            r.flows,
            r.last.map_or_else(|| "never".into(), |t| ago(now, t)),
            r.direction,
            r.group,
            r.rule,
            r.summary
        );
    }
}

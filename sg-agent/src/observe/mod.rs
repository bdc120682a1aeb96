//! What the running agent tells its users: live status, per-rule hit
//! counters, flow logs, metrics and the drop log.
//!
//! The programs send events (`sg_common::events`) and count packets; the
//! enforcement thread drains the events every 100 ms into the [`Observer`],
//! which attributes new flows to the rules that allowed them (in userspace,
//! with the reference evaluator: the kernel keeps no per-rule state, so a
//! reload changes nothing for it, and a rule is named exactly as `check`
//! names it), aggregates flow-log records and writes the drop log. The
//! control socket ([`control`]) and the metrics endpoint ([`metrics`]) ask
//! the enforcement thread for a [`status::Status`] snapshot.

pub mod control;
pub mod flowlog;
pub mod listen;
pub mod metrics;
pub mod status;

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use sg_common::{
    conntrack::{CtEntry, CtKey},
    counters,
    events::{EVENT_DROP, EVENT_NEW_FLOW, EVENT_UNTRACKED, FlowEvent},
    flow::{FAMILY_V4, addr_octets},
};

use crate::{
    config::{Direction, Vpc},
    policy::reference::{self, L4, Packet},
};

use flowlog::{Action, FlowKey, Record, Window};

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Converts the programs' clock to Unix seconds, by the offset between the
/// two measured now.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    wall_ns: u64,
    program_ns: u64,
}

impl WallClock {
    pub fn now(program_ns: u64) -> Self {
        let wall_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            wall_ns,
            program_ns,
        }
    }

    /// Unix seconds of a program-clock time.
    pub fn unix(&self, program_ns: u64) -> u64 {
        self.wall_ns
            .saturating_sub(self.program_ns.saturating_sub(program_ns))
            / 1_000_000_000
    }
}

/// How many flows a rule allowed, and when last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hits {
    pub flows: u64,
    pub last: Option<u64>,
}

/// A rule as `check` numbers it: group, direction, 1-based number.
pub type RuleId = (String, Direction, usize);

/// A network ACL entry: network ACL, direction, rule number (`None`: the
/// `*` rule).
pub type AclEntryId = (String, Direction, Option<u16>);

/// What a network ACL entry decided: flows whose first packet it allowed,
/// packets it denied (seen as drop events: with flow logs or the drop log,
/// within their bound), and when last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclHits {
    pub flows: u64,
    pub denied: u64,
    pub last: Option<u64>,
}

/// What is observed of one enforced instance.
#[derive(Debug, Default)]
pub struct InstanceView {
    pub hits: BTreeMap<RuleId, Hits>,
    /// Its subnet's network ACL's entries, by what they decided.
    pub acl_hits: BTreeMap<AclEntryId, AclHits>,
    pub new_flows: u64,
    window: Window,
    /// Untracked flows already counted against their rules this interval.
    untracked_seen: HashSet<FlowKey>,
    primed: bool,
    /// The host side: addresses its guest was seen using (in its ARP, its
    /// neighbour discovery, as its packets' source) that its `addresses`
    /// do not list, the first [`GUEST_ADDRESSES_KEPT`] of them.
    pub guest_addresses: BTreeMap<IpAddr, GuestAddress>,
}

/// How many addresses a guest uses beyond its instance's are kept (a guest
/// spoofing many makes no list without end; the rest are counted).
pub const GUEST_ADDRESSES_KEPT: usize = 16;

/// An address a guest used that its instance's `addresses` do not list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestAddress {
    /// Where it was seen: `ARP`, `neighbour discovery`, `IP`.
    pub seen_in: &'static str,
    /// When first (Unix seconds).
    pub first: u64,
    /// Packets dropped for it since.
    pub packets: u64,
}

impl InstanceView {
    /// A drop on the host side that names an address the guest uses: one
    /// its instance's `addresses` do not list is kept, and said in the
    /// log (with both) the first time. Link-local and unspecified
    /// addresses are no instance's `addresses` and are left out.
    fn guest_address(
        &mut self,
        name: &str,
        inst: &crate::config::Instance,
        direction: Direction,
        e: &FlowEvent,
        src: IpAddr,
        at: u64,
    ) {
        let reason = u32::from(e.reason);
        if direction != Direction::Egress
            || !counters::names_guest_address(reason)
            || src.is_unspecified()
            || inst.owns(src)
            || match src {
                IpAddr::V4(a) => a.is_link_local() || a.is_broadcast() || a.is_multicast(),
                IpAddr::V6(a) => a.is_unicast_link_local() || a.is_multicast(),
            }
        {
            return;
        }
        if let Some(seen) = self.guest_addresses.get_mut(&src) {
            seen.packets += 1;
            return;
        }
        if self.guest_addresses.len() >= GUEST_ADDRESSES_KEPT {
            return;
        }
        let seen_in = match reason {
            counters::DROP_ARP_SPOOFED => "ARP",
            counters::DROP_ND_SPOOFED => "neighbour discovery",
            _ => "IP",
        };
        log::warn!(
            instance = name;
            "instance {name}: its guest uses {src} (seen in its {seen_in}), which its addresses \
             ({}) do not include: what it sends from there is dropped, as the source/destination \
             check and the host side's guard drop it on AWS; add it to the instance's addresses \
             if it is the guest's",
            show_addresses(&inst.addresses)
        );
        self.guest_addresses.insert(
            src,
            GuestAddress {
                seen_in,
                first: at,
                packets: 1,
            },
        );
    }

    /// A packet the subnet's network ACL denied: the entry that did, in
    /// its hits and (with flow logs, `record`) on the interval's `REJECT`
    /// record.
    fn denied_by_acl(
        &mut self,
        vpc: &Vpc,
        inst: &crate::config::Instance,
        direction: Direction,
        packet: &Packet,
        record: Option<FlowKey>,
        at: u64,
    ) {
        let Some((entry, false)) = reference::network_acl(vpc, inst, direction, packet) else {
            return;
        };
        if let Some(key) = record {
            self.window.denied_by_acl(key, entry.to_string());
        }
        let hits = self
            .acl_hits
            .entry((entry.acl, direction, entry.rule_no))
            .or_default();
        hits.denied += 1;
        hits.last = Some(at);
    }
}

/// `sg-agent flows --live`: a record per event as the agent drains it,
/// to the followers the control socket counts. While there is one, every
/// instance reports its dropped and untracked packets too
/// (`sg_common::policy::LIVE`), whatever the agent was started with.
#[derive(Clone, Debug)]
pub struct LiveFeed {
    pub records: tokio::sync::broadcast::Sender<Record>,
    pub followers: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for LiveFeed {
    fn default() -> Self {
        Self {
            records: tokio::sync::broadcast::channel(4096).0,
            followers: std::sync::Arc::default(),
        }
    }
}

impl LiveFeed {
    /// How many follow live now.
    pub fn followers(&self) -> usize {
        self.followers.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The observer's state, owned by the enforcement thread.
pub struct Observer {
    flow_log: Option<(flowlog::Settings, flowlog::Writer)>,
    drop_log: bool,
    instances: BTreeMap<String, InstanceView>,
    window_started: (Instant, u64),
    /// Flow-log records for `sg-agent flows --follow`.
    pub followers: tokio::sync::broadcast::Sender<Record>,
    /// A record per event for `sg-agent flows --live`.
    pub live: LiveFeed,
}

/// One event as a record for `flows --live`: a new or untracked flow's
/// packet `ACCEPT`, a dropped one `REJECT` with the reason (a drop the
/// parser judged before it read the addresses has none to show).
fn live_record(name: &str, interface_id: &str, e: &FlowEvent, clock: &WallClock) -> Option<Record> {
    let action = match e.kind {
        EVENT_NEW_FLOW | EVENT_UNTRACKED => Action::Accept,
        EVENT_DROP if counters::has_addresses(u32::from(e.reason)) => Action::Reject,
        _ => return None,
    };
    let at = clock.unix(e.time_ns);
    let (packet, src, dst) = packet_of(e);
    let (sport, dport) = match packet.l4 {
        L4::Ports { src, dst } => (Some(src), Some(dst)),
        _ => (None, None),
    };
    Some(Record {
        version: 2,
        account_id: "-".into(),
        interface_id: interface_id.to_owned(),
        srcaddr: Some(src),
        dstaddr: Some(dst),
        srcport: sport,
        dstport: dport,
        protocol: Some(e.proto),
        packets: Some(1),
        bytes: Some(u64::from(e.len)),
        start: at,
        end: at,
        action: Some(action),
        log_status: flowlog::LogStatus::Ok,
        instance: name.to_owned(),
        rules: None,
        tracked_through: None,
        network_acl: None,
        reason: Some(reason_words(e.reason).to_owned()),
    })
}

/// The event as the reference evaluator takes a packet.
fn packet_of(e: &FlowEvent) -> (Packet, IpAddr, IpAddr) {
    let ip = |a| {
        let o = addr_octets(a);
        if e.family == FAMILY_V4 {
            IpAddr::from([o[0], o[1], o[2], o[3]])
        } else {
            IpAddr::from(o)
        }
    };
    let (src, dst) = (ip(&e.src), ip(&e.dst));
    let l4 = if e.later_fragment != 0 {
        L4::None
    } else {
        match e.proto {
            6 | 17 => L4::Ports {
                src: e.sport,
                dst: e.dport,
            },
            1 | 58 => L4::Icmp {
                ty: e.icmp_type,
                code: e.icmp_code,
            },
            _ => L4::None,
        }
    };
    let packet = Packet {
        src,
        dst,
        proto: e.proto,
        l4,
        later_fragment: e.later_fragment != 0,
        via_ah: e.ipv6_ah != 0,
        // A new flow's event: never traffic with an AWS service.
        service_place: false,
    };
    (packet, src, dst)
}

/// An instance's addresses as the log shows them.
pub fn show_addresses(addresses: &[IpAddr]) -> String {
    if addresses.is_empty() {
        return "none".to_owned();
    }
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn direction_of(code: u8) -> Direction {
    if code == sg_common::policy::INGRESS {
        Direction::Ingress
    } else {
        Direction::Egress
    }
}

fn protocol_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => format!("protocol {n}"),
    }
}

/// The drop log's line for one dropped packet: instance, direction,
/// protocol, addresses and ports, and the reason in words.
/// A rule as flow-log records name it: its AWS id when the file gives one,
/// else `GROUP DIRECTION #N` as `check` numbers it.
fn rule_label(vpc: &Vpc, r: &reference::RuleRef) -> String {
    let rules = vpc.group(&r.group).map(|g| match r.direction {
        crate::config::Direction::Ingress => &g.ingress,
        crate::config::Direction::Egress => &g.egress,
    });
    rules
        .and_then(|rules| rules.get(r.rule_number.wrapping_sub(1)))
        .and_then(|rule| rule.id.as_ref())
        .map_or_else(
            || format!("{} {} #{}", r.group, r.direction.as_str(), r.rule_number),
            |(id, _)| id.clone(),
        )
}

/// A drop reason in words, as the drop log and its JSON field give it.
fn reason_words(reason: u8) -> &'static str {
    counters::WORDS
        .get(usize::from(reason))
        .copied()
        .unwrap_or("unknown reason")
}

pub fn drop_line(instance: &str, e: &FlowEvent) -> String {
    let reason = u32::from(e.reason);
    let words = reason_words(e.reason);
    let way = if e.direction == sg_common::policy::INGRESS {
        "inbound"
    } else {
        "outbound"
    };
    if !counters::has_addresses(reason) {
        return format!("instance {instance}: dropped {way} packet: {words}");
    }
    let (packet, src, dst) = packet_of(e);
    let ends = match packet.l4 {
        L4::Ports { src: sp, dst: dp } => {
            let fmt = |a: IpAddr, p: u16| match a {
                IpAddr::V4(_) => format!("{a}:{p}"),
                IpAddr::V6(_) => format!("[{a}]:{p}"),
            };
            format!("{} -> {}", fmt(src, sp), fmt(dst, dp))
        }
        L4::Icmp { ty, code } => format!("{src} -> {dst} type {ty} code {code}"),
        L4::None => format!("{src} -> {dst}"),
    };
    let fragment = if packet.later_fragment {
        " (later fragment)"
    } else {
        ""
    };
    format!(
        "instance {instance}: dropped {way} {} {ends}{fragment}: {words}",
        protocol_name(e.proto)
    )
}

impl Observer {
    pub fn new(
        flow_log: Option<flowlog::Settings>,
        drop_log: bool,
        followers: Option<tokio::sync::broadcast::Sender<Record>>,
        live: Option<LiveFeed>,
    ) -> std::io::Result<Self> {
        let flow_log = match flow_log {
            Some(s) => {
                let w = flowlog::Writer::open(&s)?;
                Some((s, w))
            }
            None => None,
        };
        Ok(Self {
            flow_log,
            drop_log,
            instances: BTreeMap::new(),
            window_started: (Instant::now(), unix_now()),
            followers: followers.unwrap_or_else(|| tokio::sync::broadcast::channel(16).0),
            live: live.unwrap_or_default(),
        })
    }

    pub fn flow_logs(&self) -> Option<&flowlog::Settings> {
        self.flow_log.as_ref().map(|(s, _)| s)
    }

    /// Flow-log records written since the agent started.
    pub fn records_written(&self) -> u64 {
        self.flow_log.as_ref().map_or(0, |(_, w)| w.written)
    }

    /// Flow-log records that could not be written (a full disk, say),
    /// since the agent started.
    pub fn records_lost(&self) -> u64 {
        self.flow_log.as_ref().map_or(0, |(_, w)| w.lost)
    }

    /// Packets summed into one record per action because an instance's
    /// interval already held [`flowlog::MAX_FLOWS_PER_INTERVAL`] flows.
    pub fn packets_summed(&self) -> u64 {
        self.instances
            .values()
            .map(|v| v.window.packets_summed)
            .sum()
    }

    /// Opens the flow-log file again (logrotate moved it; on SIGHUP).
    pub fn reopen(&mut self) {
        if let Some((_, writer)) = &mut self.flow_log
            && let Err(e) = writer.reopen()
        {
            log::error!("reopening the flow log: {e}; records are counted as lost until it opens");
        }
    }

    pub fn instance(&self, name: &str) -> Option<&InstanceView> {
        self.instances.get(name)
    }

    /// The addresses `name`'s guest was seen using that `inst` (as the
    /// file now gives it) still does not list; those it lists now are
    /// forgotten.
    pub fn guest_addresses_unlisted(
        &mut self,
        name: &str,
        inst: &crate::config::Instance,
    ) -> Vec<IpAddr> {
        let Some(view) = self.instances.get_mut(name) else {
            return Vec::new();
        };
        view.guest_addresses.retain(|a, _| !inst.owns(*a));
        view.guest_addresses.keys().copied().collect()
    }

    /// Forgets instances no longer enforced.
    pub fn retain(&mut self, enforced: &dyn Fn(&str) -> bool) {
        self.instances.retain(|name, _| enforced(name));
    }

    /// Moves an instance's counts to its new name (a rename in the file).
    pub fn rename(&mut self, from: &str, to: &str) {
        if let Some(v) = self.instances.remove(from) {
            self.instances.insert(to.to_owned(), v);
        }
    }

    /// Whether `name` still needs its first read of the connection table.
    pub fn needs_priming(&self, name: &str) -> bool {
        self.flow_log.is_some() && !self.instances.get(name).is_some_and(|v| v.primed)
    }

    /// The connection table's counts when the agent starts looking at an
    /// instance: what came before is not logged.
    pub fn prime(&mut self, name: &str, entries: &[(CtKey, CtEntry)], clock: &WallClock) {
        let start = self.window_started.1;
        let view = self.instances.entry(name.to_owned()).or_default();
        view.window
            .add_connections(entries, false, start, |t| clock.unix(t));
        view.window.settle(entries);
        view.primed = true;
    }

    /// Takes one instance's drained events (`interface_id`: where it is,
    /// as its records name it).
    pub fn ingest(
        &mut self,
        vpc: &Vpc,
        (name, interface_id): (&str, &str),
        events: &[FlowEvent],
        clock: &WallClock,
    ) {
        if self.live.followers() > 0 {
            for e in events {
                if let Some(r) = live_record(name, interface_id, e, clock) {
                    // No follower left meanwhile is not an error.
                    let _ = self.live.records.send(r);
                }
            }
        }
        let instance = vpc.instance(name);
        let flow_logs = self.flow_log.is_some();
        let view = self.instances.entry(name.to_owned()).or_default();
        for e in events {
            let at = clock.unix(e.time_ns);
            let (packet, src, dst) = packet_of(e);
            let direction = direction_of(e.direction);
            let (sport, dport) = match packet.l4 {
                L4::Ports { src, dst } => (src, dst),
                _ => (0, 0),
            };
            let key = |action| FlowKey {
                src,
                dst,
                sport,
                dport,
                proto: e.proto,
                action,
            };
            // Rule hits, and with flow logs the rules named on the record
            // of the interval the flow started in.
            let count_rules = |view: &mut InstanceView| {
                if let Some(inst) = instance {
                    let mut labels = Vec::new();
                    for r in reference::allowing_rules(vpc, inst, direction, &packet) {
                        if flow_logs {
                            labels.push(rule_label(vpc, &r));
                        }
                        let hits = view
                            .hits
                            .entry((r.group, direction, r.rule_number))
                            .or_default();
                        hits.flows += 1;
                        hits.last = Some(at);
                    }
                    if !labels.is_empty() {
                        let through = vpc
                            .tracked_service(reference::remote_of(direction, &packet))
                            .map(|s| format!("{} {}", s.kind, s.name));
                        view.window.attribute(key(Action::Accept), labels, through);
                    }
                    // The network ACL entry that let the flow's first
                    // packet across the subnet's boundary.
                    if let Some((entry, true)) =
                        reference::network_acl(vpc, inst, direction, &packet)
                    {
                        let hits = view
                            .acl_hits
                            .entry((entry.acl, direction, entry.rule_no))
                            .or_default();
                        hits.flows += 1;
                        hits.last = Some(at);
                    }
                }
            };
            match e.kind {
                EVENT_NEW_FLOW => {
                    view.new_flows += 1;
                    count_rules(view);
                }
                EVENT_UNTRACKED => {
                    if view.untracked_seen.insert(key(Action::Accept)) {
                        count_rules(view);
                    }
                    if flow_logs {
                        view.window
                            .add_packet(key(Action::Accept), u64::from(e.len), at);
                    }
                }
                EVENT_DROP => {
                    if let Some(inst) = instance {
                        view.guest_address(name, inst, direction, e, src, at);
                    }
                    if flow_logs && counters::has_addresses(u32::from(e.reason)) {
                        view.window
                            .add_packet(key(Action::Reject), u64::from(e.len), at);
                    }
                    if u32::from(e.reason) == counters::DROP_NETWORK_ACL
                        && let Some(inst) = instance
                    {
                        let record = flow_logs.then(|| key(Action::Reject));
                        view.denied_by_acl(vpc, inst, direction, &packet, record, at);
                    }
                    if self.drop_log {
                        log::info!(
                            target: "sg_agent::drops",
                            instance = name,
                            direction = direction.as_str(),
                            reason = reason_words(e.reason);
                            "{}",
                            drop_line(name, e)
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// Entries the agent is about to reclaim: their last counts go into the
    /// interval before they are gone.
    pub fn reclaimed(&mut self, name: &str, gone: &[(CtKey, CtEntry)], clock: &WallClock) {
        if self.flow_log.is_none() || gone.is_empty() {
            return;
        }
        let start = self.window_started.1;
        if let Some(view) = self.instances.get_mut(name) {
            view.window
                .add_connections(gone, true, start, |t| clock.unix(t));
        }
    }

    /// Whether the aggregation interval has ended.
    pub fn window_due(&self) -> bool {
        self.flow_log
            .as_ref()
            .is_some_and(|(s, _)| self.window_started.0.elapsed() >= s.interval)
    }

    /// Reads one instance's connection table into the interval ending now.
    pub fn collect(&mut self, name: &str, entries: &[(CtKey, CtEntry)], clock: &WallClock) {
        let start = self.window_started.1;
        let view = self.instances.entry(name.to_owned()).or_default();
        view.window
            .add_connections(entries, false, start, |t| clock.unix(t));
        view.window.settle(entries);
    }

    /// Ends the interval: one instance's records, given its interface id
    /// and events lost so far.
    pub fn close_instance(&mut self, name: &str, interface_id: &str, lost: u64) -> Vec<Record> {
        let (start, end) = (self.window_started.1, unix_now());
        let view = self.instances.entry(name.to_owned()).or_default();
        view.untracked_seen.clear();
        view.window.close(name, interface_id, start, end, lost)
    }

    /// Writes the interval's records and starts the next interval.
    pub fn publish(&mut self, records: &[Record]) {
        self.window_started = (Instant::now(), unix_now());
        self.write(records);
    }

    /// The agent stops with every record written (see
    /// [`flowlog::Writer::finish`]).
    pub fn finish(&self) {
        if let Some((_, writer)) = &self.flow_log {
            writer.finish();
        }
    }

    /// Writes records of the interval still open: an instance's, as it is
    /// removed (its interval ends with it), or every one's as the agent
    /// stops.
    pub fn write(&mut self, records: &[Record]) {
        let Some((_, writer)) = &mut self.flow_log else {
            return;
        };
        if let Err(e) = writer.write(records) {
            log::warn!("writing flow-log records: {e}");
        }
        for r in records {
            // No follower is not an error.
            let _ = self.followers.send(r.clone());
        }
    }
}

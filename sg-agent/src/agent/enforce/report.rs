//! What the agent tells: flow-log records and rule hits drained from the
//! programs' events, and the snapshot `sg-agent status` and the metrics
//! show.

use super::{Agent, Enforced, Rules};
use crate::{
    config::{self, Link, Vpc},
    dataplane::{Side, conns},
    observe::{
        WallClock,
        status::{self, Status},
    },
};

impl Agent<'_> {
    /// Drains every instance's events into the observer; at the end of a
    /// flow-log interval, reads the connection tables and writes the
    /// interval's records.
    pub(super) fn observe(&mut self) {
        let enforced = &self.enforced;
        self.observer.retain(&|name| enforced.contains_key(name));
        // Someone follows live: every instance tells its drops too.
        let live = self.observer.live.followers() > 0;
        for (name, e) in &mut self.enforced {
            if e.dataplane.live() != live
                && let Err(err) = e.dataplane.set_live(live)
            {
                log::warn!(instance = name; "instance {name}: {}", crate::errors::chain(&err));
            }
        }
        let clock = WallClock::now(conns::program_now());
        let mut events = Vec::new();
        for (name, e) in &mut self.enforced {
            if self.observer.needs_priming(name) {
                match e.dataplane.connections() {
                    Ok(entries) => self.observer.prime(name, &entries, &clock),
                    Err(err) => log::warn!(
                        instance = name;
                        "instance {name}: reading its connections: {}",
                        crate::errors::chain(&err)
                    ),
                }
            }
            events.clear();
            e.dataplane.drain_events(&mut events);
            self.observer
                .ingest(&self.vpc, (name, &e.place.interface_id()), &events, &clock);
        }
        if !self.observer.window_due() {
            return;
        }
        let mut records = Vec::new();
        for (name, e) in &self.enforced {
            match e.dataplane.connections() {
                Ok(entries) => self.observer.collect(name, &entries, &clock),
                Err(err) => log::warn!(
                    instance = name;
                    "instance {name}: reading its connections: {}",
                    crate::errors::chain(&err)
                ),
            }
            let lost = e.dataplane.events_lost().unwrap_or(0);
            records.extend(
                self.observer
                    .close_instance(name, &e.place.interface_id(), lost),
            );
        }
        self.observer.publish(&records);
    }

    /// Ends the open flow-log interval of instance `only` (every instance
    /// when `None`) now and writes its records: an instance removed by a
    /// reload, or all of them as the agent stops (a restart or an upgrade
    /// loses no record). The others' interval runs on.
    pub(super) fn flush_flow_log(&mut self, only: Option<&str>) {
        if self.observer.flow_logs().is_none() {
            return;
        }
        let clock = WallClock::now(conns::program_now());
        let mut events = Vec::new();
        let mut records = Vec::new();
        for (name, e) in &mut self.enforced {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            events.clear();
            e.dataplane.drain_events(&mut events);
            self.observer
                .ingest(&self.vpc, (name, &e.place.interface_id()), &events, &clock);
            if let Ok(entries) = e.dataplane.connections() {
                self.observer.collect(name, &entries, &clock);
            }
            let lost = e.dataplane.events_lost().unwrap_or(0);
            records.extend(
                self.observer
                    .close_instance(name, &e.place.interface_id(), lost),
            );
        }
        self.observer.write(&records);
    }

    /// A snapshot of everything `sg-agent status` and the metrics show.
    pub(super) fn status(&self) -> Status {
        let flow_log = self.observer.flow_logs().map(|s| status::FlowLogStatus {
            destination: match &s.sink {
                crate::observe::flowlog::Sink::Stdout => "-".into(),
                crate::observe::flowlog::Sink::File(p) => p.display().to_string(),
            },
            interval_seconds: s.interval.as_secs(),
            format: match s.format {
                crate::observe::flowlog::Format::Text => "text".into(),
                crate::observe::flowlog::Format::Json => "json".into(),
            },
            records_written: self.observer.records_written(),
            records_lost: self.observer.records_lost(),
            packets_summed: self.observer.packets_summed(),
        });
        let agent = status::AgentStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            started: self.started,
            rules_file: self.path.display().to_string(),
            sha256: config::hex(&self.in_force),
            reloads: self.reloads - self.reloads_rejected.min(self.reloads),
            reloads_rejected: self.reloads_rejected,
            last_reload: self.last_reload.clone(),
            last_apply_seconds: self.last_apply.as_secs_f64(),
            flow_log,
            lapses: self.lapses,
            live_followers: self.observer.live.followers() as u64,
            node: self.opts.node.clone(),
            follow: match &self.rules {
                Rules::Follow { opts, state, .. } => {
                    let state = state
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    Some(status::FollowStatus {
                        url: opts.url.clone(),
                        last_ok: state.last_ok,
                        failing_since: state.failing_since,
                        error: state.error.clone(),
                    })
                }
                _ => None,
            },
            etcd: match &self.rules {
                Rules::File(_) | Rules::Follow { .. } => None,
                Rules::Etcd { opts, state } => {
                    let state = state.lock().expect("etcd state");
                    Some(status::EtcdStatus {
                        endpoints: opts.endpoints.clone(),
                        key: opts.key(),
                        revision: self.in_force_revision,
                        latest_revision: state.latest.as_ref().map(|l| l.mod_revision),
                        connected: state.connected,
                        error: state.error.clone(),
                    })
                }
            },
            rollback_in_seconds: self.confirm_left().map(|d| d.as_secs()),
        };
        let mut instances: Vec<status::InstanceStatus> = self
            .enforced
            .iter()
            .map(|(name, e)| self.instance_status(name, e))
            .collect();
        for (name, p) in &self.pending {
            let link = self.vpc.instance(name).and_then(|i| i.link.as_ref());
            instances.push(status::InstanceStatus {
                name: name.clone(),
                id: self
                    .vpc
                    .instance(name)
                    .map(crate::config::Instance::aws_id)
                    .unwrap_or_default(),
                netns: p.place.as_ref().and_then(|p| p.netns.clone()),
                addresses: self.addresses_of(name),
                addresses_from: self.addresses_from(name),
                interface: p
                    .place
                    .as_ref()
                    .map(|p| p.ifname.clone())
                    .or_else(|| link.and_then(Link::ifname).map(str::to_owned))
                    .unwrap_or_default(),
                side: side_name(link.is_some_and(Link::host_side)).into(),
                libvirt_domain: libvirt_domain(link),
                state: "waiting".into(),
                waiting_reason: Some(p.reason.clone()),
                ..status::InstanceStatus::default()
            });
        }
        instances.sort_by(|a, b| a.name.cmp(&b.name));
        Status {
            schema: status::SCHEMA,
            agent,
            instances,
            domain: None,
        }
    }

    fn addresses_of(&self, name: &str) -> Vec<std::net::IpAddr> {
        self.vpc
            .instance(name)
            .map(|i| i.addresses.clone())
            .unwrap_or_default()
    }

    fn addresses_from(&self, name: &str) -> Option<String> {
        self.vpc
            .instance(name)
            .filter(|i| i.addresses_from_libvirt)
            .map(|_| "libvirt".to_owned())
    }

    fn instance_status(&self, name: &str, e: &Enforced) -> status::InstanceStatus {
        let dp = &e.dataplane;
        let packets = dp
            .counters()
            .map(|c| {
                let by = |r: &crate::dataplane::ReasonCounts| {
                    r.by_reason
                        .iter()
                        .filter(|(n, _)| !n.starts_with("retired"))
                        .map(|(n, v)| ((*n).to_owned(), *v))
                        .collect()
                };
                [
                    ("ingress".to_owned(), by(&c.ingress)),
                    ("egress".to_owned(), by(&c.egress)),
                ]
                .into_iter()
                .collect()
            })
            .unwrap_or_default();
        let view = self.observer.instance(name);
        let rules = self
            .vpc
            .instance(name)
            .map(|inst| rule_rows(&self.vpc, inst, view))
            .unwrap_or_default();
        let network_acl = self
            .vpc
            .instance(name)
            .and_then(|inst| acl_rows(&self.vpc, inst, view));
        let mac = dp.mac().ok().flatten();
        let link = self.vpc.instance(name).and_then(|i| i.link.as_ref());
        status::InstanceStatus {
            name: name.to_owned(),
            id: self
                .vpc
                .instance(name)
                .map(crate::config::Instance::aws_id)
                .unwrap_or_default(),
            netns: e.place.netns.clone(),
            addresses: self.addresses_of(name),
            addresses_from: self.addresses_from(name),
            interface: e.place.ifname.clone(),
            side: side_name(e.place.side == Side::Host).into(),
            libvirt_domain: libvirt_domain(link),
            mac: mac.map(|m| crate::config::MacAddr(m.mac).to_string()),
            mac_source: mac.map(|m| {
                match (m.learned, link) {
                    (true, _) => "learned",
                    (false, Some(Link::Libvirt { .. })) => "libvirt",
                    (false, _) => "configured",
                }
                .into()
            }),
            mac_learned_at: e
                .macs
                .learned
                .filter(|l| mac.is_some_and(|m| m.learned && m.mac == l.mac))
                .map(|l| l.since),
            guest_addresses_unlisted: view.map(guest_addresses).unwrap_or_default(),
            state: if e.stopped.is_some() {
                "waiting".into()
            } else if e.lost_since.is_some() {
                "lost".into()
            } else {
                "enforced".into()
            },
            waiting_reason: e.stopped.clone(),
            unapplied: e.unapplied.clone(),
            ingress_hook: dp.attachment.as_ref().map(|a| a.ingress.to_owned()),
            ingress_reason: dp.attachment.as_ref().map(|a| a.ingress_reason.clone()),
            links: dp
                .links()
                .into_iter()
                .map(|(hook, link_id, program_id)| status::LinkStatus {
                    hook: hook.to_owned(),
                    link_id,
                    program_id,
                })
                .collect(),
            generation: dp.generation(),
            packets,
            conntrack: status::ConntrackStatus {
                entries: dp.tracked_connections() as u64,
                capacity: u64::from(e.allowance),
                allowance_exceeded: dp.allowance_refusals(),
                draining_to: e.shrinking_to.map(u64::from),
            },
            events_lost: dp.events_lost().unwrap_or(0),
            new_flows: view.map_or(0, |v| v.new_flows),
            rules,
            network_acl,
        }
    }
}

fn side_name(host: bool) -> &'static str {
    if host { "host" } else { "instance" }
}

/// The addresses an instance's guest used that its `addresses` do not
/// list, as status shows them.
fn guest_addresses(v: &crate::observe::InstanceView) -> Vec<status::GuestAddressStatus> {
    v.guest_addresses
        .iter()
        .map(|(a, g)| status::GuestAddressStatus {
            address: a.to_string(),
            seen_in: g.seen_in.to_owned(),
            first_seen: g.first,
            packets: g.packets,
        })
        .collect()
}

fn libvirt_domain(link: Option<&Link>) -> Option<String> {
    match link {
        Some(Link::Libvirt { domain, .. }) => Some(domain.clone()),
        _ => None,
    }
}

/// The network ACL of `inst`'s subnet, entry by entry in the order they are
/// judged (the `*` rule last), with what each decided.
fn acl_rows(
    vpc: &Vpc,
    inst: &config::Instance,
    view: Option<&crate::observe::InstanceView>,
) -> Option<status::NetworkAclHits> {
    let (_, acl) = vpc.network_acl_for(inst)?;
    let mut entries = Vec::new();
    for direction in [config::Direction::Ingress, config::Direction::Egress] {
        let numbered = acl.entries(direction).iter().map(|e| {
            let ports = if e.ports == config::Ports::All {
                String::new()
            } else {
                format!(" {}", e.ports)
            };
            (
                Some(e.rule_no),
                format!("{} {}{ports} {}", e.action(), e.protocol, e.cidr),
            )
        });
        for (rule_no, summary) in numbered.chain([(None, "deny all (no rule matched)".to_owned())])
        {
            let hits = view
                .and_then(|v| v.acl_hits.get(&(acl.name.clone(), direction, rule_no)))
                .copied()
                .unwrap_or_default();
            entries.push(status::AclEntryHits {
                direction: direction.as_str().to_owned(),
                rule: rule_no.map_or_else(|| "*".to_owned(), |n| n.to_string()),
                summary,
                flows: hits.flows,
                denied: hits.denied,
                last: hits.last,
            });
        }
    }
    Some(status::NetworkAclHits {
        name: acl.name.clone(),
        entries,
    })
}

/// Every rule of `inst`'s groups, as `check` numbers them, with its hits
/// (rules that never matched included: the question before removing one).
fn rule_rows(
    vpc: &Vpc,
    inst: &config::Instance,
    view: Option<&crate::observe::InstanceView>,
) -> Vec<status::RuleHits> {
    let mut rows = Vec::new();
    for (group_name, _) in &inst.groups {
        let Some(group) = vpc.group(group_name) else {
            continue;
        };
        for (direction, rules) in [
            (config::Direction::Ingress, &group.ingress),
            (config::Direction::Egress, &group.egress),
        ] {
            for (i, rule) in rules.iter().enumerate() {
                let id = (group.name.clone(), direction, i + 1);
                let hits = view
                    .and_then(|v| v.hits.get(&id))
                    .copied()
                    .unwrap_or_default();
                let sources: Vec<String> =
                    rule.sources.iter().map(|s| s.source.to_string()).collect();
                let way = match direction {
                    config::Direction::Ingress => "from",
                    config::Direction::Egress => "to",
                };
                rows.push(status::RuleHits {
                    group: group.name.clone(),
                    group_id: group.id.as_ref().map(|(id, _)| id.clone()),
                    rule_id: rule.id.as_ref().map(|(id, _)| id.clone()),
                    direction: match direction {
                        config::Direction::Ingress => "ingress".into(),
                        config::Direction::Egress => "egress".into(),
                    },
                    rule: i + 1,
                    summary: format!(
                        "{} {} {way} {}",
                        rule.protocol,
                        rule.ports,
                        sources.join(", ")
                    ),
                    flows: hits.flows,
                    last: hits.last,
                    stale: rule.sources.iter().find_map(|s| match &s.source {
                        config::Source::Group(to) => {
                            vpc.stale_reference(&group.name, to, direction)
                        }
                        _ => None,
                    }),
                });
            }
        }
    }
    rows
}

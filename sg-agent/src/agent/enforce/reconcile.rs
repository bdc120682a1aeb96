//! Closing the gap between what the rules ask for and what the kernel has,
//! whatever woke the agent (a link event, the reconcile tick, libvirt's
//! hook): instances whose interface was recreated or whose libvirt domain
//! started again on another tap are attached again, instances waiting for
//! their interface are attached once it is there, and expired connections
//! give their place in the allowance back.

use std::time::{Duration, Instant};

use super::{Agent, place::namespaces};
use crate::{
    agent::RECONCILE, dataplane::conns, libvirt::DomainNic, observe::WallClock,
    policy::compile::CompiledInstance,
};

/// Expired connections are reclaimed this often...
const RECLAIM_EVERY: Duration = Duration::from_secs(10);
/// ...and as often as this while the allowance refuses new flows.
const RECLAIM_WHEN_FULL: Duration = Duration::from_secs(1);

impl Agent<'_> {
    /// Re-attaches instances whose interface was recreated (or whose
    /// domain moved to another tap), and retries those not enforced: those
    /// whose retry is due, or all of them when `now` (a link appeared).
    pub(super) fn reconcile(&mut self, now: bool) {
        // Out of descriptors, nothing here can be told (a namespace that
        // cannot be opened is not a namespace gone): this round is skipped,
        // and said so, rather than reported as lapses that did not happen.
        if let Err(e) = std::fs::File::open("/proc/thread-self/ns/net") {
            log::error!("reconciling skipped: cannot open this thread's network namespace: {e}");
            return;
        }
        let Some(compiled) = self.compiled.take() else {
            return;
        };
        let names: Vec<String> = self.enforced.keys().cloned().collect();
        for name in names {
            if let Some(inst) = compiled.instances.iter().find(|i| i.name == name) {
                self.keep_attached(&name, inst, false);
            }
        }
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| now || p.next_try <= Instant::now())
            .map(|(n, _)| n.clone())
            .collect();
        // Those whose interface is there and whose object is prepared are
        // attached together (interfaces that appear at once: a container
        // runtime starting many), the others one by one.
        let mut ready = Vec::new();
        for name in due {
            let Some(inst) = compiled.instances.iter().find(|i| i.name == name) else {
                self.forget_pending(&name);
                continue;
            };
            match self.ready_to_attach(&name, inst) {
                Some((place, mac, dp)) => {
                    let reserved = self.reserved_for(&name, &place);
                    ready.push((name, place, mac, reserved, dp, inst));
                }
                None => {
                    self.try_attach(&name, inst);
                }
            }
        }
        if !ready.is_empty() {
            self.attach_many(ready);
        }
        self.compiled = Some(compiled);
        self.watch_namespaces();
        self.guard_macs();
    }

    /// An enforced instance whose place is gone, recreated, or now another
    /// (a libvirt domain started again on a new tap): attached again where
    /// it is to be.
    fn keep_attached(&mut self, name: &str, inst: &CompiledInstance, announced: bool) {
        let wanted = self.domains.wanted(inst);
        let ingress = self.opts.ingress;
        let e = self.enforced.get_mut(name).expect("enforced");
        let (place, mac) = match wanted {
            Ok(wanted) => wanted,
            Err(why) => return place_unknown(name, e, why),
        };
        let moved = place != e.place;
        let state = e.dataplane.attached_place_current();
        // Its interface is there, but someone took its programs off (another
        // agent on the same state, `bpftool link detach`): a lapse too.
        let mut taken_off = 0;
        if !moved {
            match state {
                Some(true) if e.dataplane.links_attached() => {
                    e.checked = Instant::now();
                    e.stopped = None;
                    e.hook_stopped = false;
                    return;
                }
                Some(true) => {
                    taken_off = e.dataplane.drop_detached_links();
                }
                // Gone (a VM stopped, a container removed): nothing there
                // is unprotected; it is attached again as it comes back.
                _ if place.exists().is_err() => {
                    if e.stopped.is_none() {
                        log::info!(
                            instance = name;
                            "instance {name}: {} is gone; enforced again as it comes back",
                            place.describe()
                        );
                        e.stopped = Some(format!("{} is gone", place.describe()));
                    }
                    e.checked = Instant::now();
                    return;
                }
                _ => {}
            }
        }
        if !moved && namespace_replaced(name, e, &place) {
            return;
        }
        // There now without our programs: since the last check that found
        // it gone or enforced (a link event comes within milliseconds of a
        // new interface; the tick within RECONCILE). A domain started again
        // on another tap is attached as that tap comes, not counted.
        let since = e.checked;
        // A libvirt domain's start its hook announced (its CPUs wait for
        // the answer) on the tap it stopped on, made again: nothing passed
        // unjudged, so it is no lapse.
        let restarted = (announced || e.hook_stopped) && e.stopped.is_some();
        if !moved && !restarted && e.lost_since.is_none() {
            self.lapses += 1;
        }
        e.lost_since.get_or_insert(since);
        let attached = e
            .dataplane
            .attach(&place.ifname, place.netns.as_deref(), ingress, place.side)
            .map(|_| ())
            .and_then(|()| e.dataplane.forget_learned_mac())
            .and_then(|()| e.dataplane.set_macs(place.with_services(mac)));
        let now = Instant::now();
        match attached {
            Ok(()) if moved => {
                e.unapplied = None;
                log::info!(
                    instance = name;
                    "instance {name}: now on {} (was {}): attached",
                    place.describe(),
                    e.place.describe()
                );
                e.place = place;
            }
            Ok(()) if restarted => {
                log::info!(
                    instance = name;
                    "instance {name}: started again on {} (made anew); attached before its \
                     guest runs",
                    place.describe()
                );
            }
            Ok(()) => {
                let unprotected = now.duration_since(e.lost_since.unwrap_or(since));
                let what = lapse_cause(&e.place, taken_off, state == Some(true));
                log::error!(
                    instance = name;
                    "instance {name}: {what}; programs attached again, the interface was \
                     unprotected for at most {} ms (lapse {} since start)",
                    unprotected.as_millis(),
                    self.lapses
                );
            }
            Err(err) => {
                if now.duration_since(since) < RECONCILE * 2 {
                    log::error!(
                        instance = name;
                        "instance {name} NOT ENFORCED: {} ({}); retrying",
                        place.describe(),
                        crate::errors::chain(&err)
                    );
                }
                return;
            }
        }
        e.lost_since = None;
        e.stopped = None;
        e.hook_stopped = false;
        e.checked = now;
    }

    /// A waiting instance whose interface is there now and whose object
    /// was prepared while it waited: where, and its data plane (taken from
    /// its `Pending`), to attach.
    fn ready_to_attach(
        &mut self,
        name: &str,
        inst: &CompiledInstance,
    ) -> Option<(
        super::place::Place,
        crate::dataplane::Macs,
        crate::dataplane::Dataplane,
    )> {
        let (place, mac) = self.domains.wanted(inst).ok()?;
        let p = self.pending.get_mut(name)?;
        p.prepared.as_ref()?;
        place.exists().ok()?;
        let dp = p.prepared.take()?;
        let mac = place.with_services(mac);
        Some((place, mac, *dp))
    }

    /// An instance not enforced yet: attached if its place is there now.
    /// Returns whether it is enforced.
    fn try_attach(&mut self, name: &str, inst: &CompiledInstance) -> bool {
        let (place, mac) = match self.domains.wanted(inst) {
            Ok(wanted) => wanted,
            Err(why) => {
                self.wait_for(name, None, why);
                return false;
            }
        };
        if let Err(why) = place.exists() {
            self.wait_for(name, Some(place), why);
            return false;
        }
        // Prepared while it waited (see `Pending::prepared`), or now.
        let prepared = self
            .pending
            .get_mut(name)
            .and_then(|p| p.prepared.take())
            .map_or_else(|| self.prepare_new(name, inst), |dp| Ok(*dp));
        match prepared {
            Ok(dp) => self.attach_new(name, &place, place.with_services(mac), dp, inst),
            Err(e) => {
                self.wait_for(name, Some(place), crate::errors::chain(&e));
                false
            }
        }
    }

    /// libvirt's hook, as a domain starts (its CPUs not running yet): the
    /// instances on the domain's NICs are attached now, before the guest
    /// sends its first frame. An error names the instances that could not
    /// be, and the hook refuses the domain's start. The NICs are kept
    /// until libvirt's live state of the domain says the same.
    pub(super) fn domain_started(
        &mut self,
        domain: &str,
        nics: Vec<DomainNic>,
    ) -> Result<Vec<String>, String> {
        // Its metadata may make instances of its NICs (or its addresses
        // changed): admitted first, so they are attached below.
        if nics.iter().any(|n| n.instance.is_some()) || self.libvirt.problems.contains_key(domain) {
            let mut from_hook = self.domains.from_hook.clone();
            from_hook.insert(domain.to_owned(), nics.clone());
            let running = crate::libvirt::overlay::Running::read(&self.libvirt.dirs, &from_hook);
            if running.signature() != self.libvirt.in_force {
                self.domains.from_hook = from_hook;
                self.reload(&format!("libvirt domain {domain} starts"), false);
            }
            if let Some(why) = self.libvirt.problems.get(domain) {
                return Err(why.clone());
            }
        }
        let Some(compiled) = self.compiled.take() else {
            return Err("the agent has no policy yet".to_owned());
        };
        // A tap another instance is enforced on is not this domain's to
        // take (a domain XML naming another's `<target dev>`): the domain
        // is refused, and nothing of it is attached there.
        let of_domain = |i: &CompiledInstance| matches!(&i.link, Some(crate::config::Link::Libvirt { domain: d, .. }) if d == domain);
        let netns: Vec<Option<&str>> = compiled
            .instances
            .iter()
            .filter(|i| of_domain(i))
            .map(|i| i.netns.as_deref())
            .collect();
        let taken = nics.iter().find_map(|nic| {
            self.enforced.iter().find(|(name, e)| {
                e.stopped.is_none()
                    && e.place.ifname == nic.ifname
                    && netns.contains(&e.place.netns.as_deref())
                    && !compiled
                        .instances
                        .iter()
                        .any(|i| &i.name == *name && of_domain(i))
            })
        });
        if let Some((other, e)) = taken {
            let refusal = format!(
                "its NIC {} is instance {other}'s tap ({}), enforced there: not this domain's",
                e.place.ifname,
                e.place.describe()
            );
            self.compiled = Some(compiled);
            log::error!("libvirt domain {domain} refused: {refusal}");
            return Err(refusal);
        }
        self.domains.from_hook.insert(domain.to_owned(), nics);
        let mut enforced = Vec::new();
        let mut failed = Vec::new();
        for inst in compiled.instances.iter().filter(|i| {
            matches!(&i.link, Some(crate::config::Link::Libvirt { domain: d, .. }) if d == domain)
        }) {
            let name = inst.name.clone();
            let ok = if self.enforced.contains_key(&name) {
                self.keep_attached(&name, inst, true);
                let e = &self.enforced[&name];
                e.lost_since.is_none() && e.stopped.is_none()
            } else {
                self.try_attach(&name, inst)
            };
            if ok {
                enforced.push(format!(
                    "{name} on {}",
                    self.enforced[&name].place.describe()
                ));
            } else {
                // Why now, with the NICs the hook gave (not what was said
                // of it before the domain started).
                let why = match self.domains.wanted(inst) {
                    Err(why) => why,
                    Ok(_) => self
                        .enforced
                        .get(&name)
                        .and_then(|e| e.stopped.clone())
                        .or_else(|| self.pending.get(&name).map(|p| p.reason.clone()))
                        .unwrap_or_else(|| "not attached".to_owned()),
                };
                failed.push(format!("{name}: {why}"));
            }
        }
        self.compiled = Some(compiled);
        self.watch_namespaces();
        if failed.is_empty() {
            Ok(enforced)
        } else {
            Err(failed.join("; "))
        }
    }

    /// libvirt's hook, as a domain stopped: what its hook gave is
    /// forgotten (a tap of that name may be another domain's next), and
    /// its instances' programs are taken off what was its tap.
    pub(super) fn domain_stopped(&mut self, domain: &str) {
        self.domains.from_hook.remove(domain);
        let Some(compiled) = &self.compiled else {
            return;
        };
        for inst in compiled.instances.iter().filter(|i| {
            matches!(&i.link, Some(crate::config::Link::Libvirt { domain: d, .. }) if d == domain)
        }) {
            if let Some(e) = self.enforced.get_mut(&inst.name)
                && e.stopped.is_none()
            {
                e.dataplane.detach_links();
                log::info!(
                    instance = inst.name.as_str();
                    "instance {}: libvirt domain {domain} stopped; its programs taken off {}",
                    inst.name,
                    e.place.describe()
                );
                e.stopped = Some(format!("libvirt domain {domain} stopped"));
                e.hook_stopped = true;
            }
        }
    }

    /// Tells the link watch which namespaces hold an instance now.
    pub(super) fn watch_namespaces(&self) {
        let Some(links) = &self.links else {
            return;
        };
        let set = namespaces(
            self.enforced
                .values()
                .map(|e| e.place.netns.as_deref())
                .chain(
                    self.pending
                        .values()
                        .map(|p| p.place.as_ref().and_then(|p| p.netns.as_deref())),
                ),
        );
        links.send_if_modified(|current| {
            let changed = *current != set;
            if changed {
                *current = set;
            }
            changed
        });
    }

    /// An instance whose table drained to its smaller allowance: a new
    /// object with a table of that capacity, its connections carried over,
    /// replaces the programs in place; it takes new flows again. If that
    /// fails, it stays as it was (draining) and is tried again at the next
    /// reclaim.
    fn finish_shrinking(&mut self, name: &str) {
        let Some(inst) = self
            .compiled
            .as_ref()
            .and_then(|c| c.instances.iter().find(|i| i.name == name))
            .cloned()
        else {
            return;
        };
        let Some(e) = self.enforced.get(name) else {
            return;
        };
        let (from, place) = (e.allowance, e.place.clone());
        let mac = self
            .domains
            .wanted(&inst)
            .ok()
            .map(|(_, mac)| place.with_services(mac))
            .unwrap_or_default();
        match self.prepare_new(name, &inst) {
            Ok(dp) => {
                if self.attach_new(name, &place, mac, dp, &inst) {
                    log::info!(
                        instance = name;
                        "instance {name}: connections drained; connection allowance {from} -> {}, \
                         new flows taken again",
                        inst.max_tracked_connections
                    );
                }
            }
            Err(err) => log::warn!(
                instance = name;
                "instance {name}: resizing its drained connection table: {}",
                crate::errors::chain(&err)
            ),
        }
    }

    /// Gives the allowance back: removes expired connections of each
    /// instance every [`RECLAIM_EVERY`], and every [`RECLAIM_WHEN_FULL`]
    /// while its allowance refuses new flows.
    pub(super) fn reclaim(&mut self) {
        let Some(compiled) = &self.compiled else {
            return;
        };
        let observer = &mut self.observer;
        let mut drained = Vec::new();
        for (name, e) in &mut self.enforced {
            let Some(inst) = compiled.instances.iter().find(|i| &i.name == name) else {
                continue;
            };
            let (last, refused_then) = e.reclaimed;
            let refused = e.dataplane.allowance_refusals();
            let due = last.elapsed() >= RECLAIM_EVERY
                || ((refused != refused_then || e.shrinking_to.is_some())
                    && last.elapsed() >= RECLAIM_WHEN_FULL);
            if !due {
                continue;
            }
            e.reclaimed = (Instant::now(), refused);
            let clock = WallClock::now(conns::program_now());
            match e.dataplane.reclaim_expired(&inst.settings) {
                Ok(r) => {
                    observer.reclaimed(name, &r.gone, &clock);
                    if e.shrinking_to
                        .is_some_and(|t| r.live <= usize::try_from(t).unwrap_or(usize::MAX))
                    {
                        drained.push(name.clone());
                    }
                    if refused != refused_then && e.shrinking_to.is_none() {
                        log::warn!(
                            "instance {name}: connection allowance used up ({refused} new flows \
                             refused so far); {} expired connections reclaimed, {} tracked",
                            r.removed,
                            r.live
                        );
                    } else if r.removed > 0 {
                        log::debug!(
                            instance = name;
                            "instance {name}: {} expired connections reclaimed, {} tracked",
                            r.removed,
                            r.live
                        );
                    }
                }
                Err(err) => log::warn!(
                    instance = name;
                    "instance {name}: reclaiming expired connections: {}",
                    crate::errors::chain(&err)
                ),
            }
        }
        for name in drained {
            self.finish_shrinking(&name);
        }
    }
}

/// A namespace given by path (`netns_path`) that now names another
/// namespace than the one the instance was attached in (its container gone,
/// its PID taken by another process): not the instance's, never attached
/// there. Says so once, and returns true.
fn namespace_replaced(name: &str, e: &mut super::Enforced, place: &super::place::Place) -> bool {
    let (Some(path), Some(was)) = (place.netns.as_deref(), e.netns_id) else {
        return false;
    };
    if crate::dataplane::netns::NetnsId::of(path).is_none_or(|now| now == was) {
        return false;
    }
    let why = format!("{path} names another network namespace now (not attached there)");
    if e.stopped.as_deref() != Some(why.as_str()) {
        log::error!(
            instance = name;
            "instance {name}: {path} now names another network namespace than the one it was \
             attached in (its process is gone and the path names another's: a PID reused); not \
             attached there. Name the instance's new namespace in the rules file"
        );
        e.stopped = Some(why);
    }
    e.checked = Instant::now();
    true
}

/// An enforced instance whose place the rules give cannot be known now
/// (`why`): while the interface it is attached to is still there with its
/// programs on it (a NIC hot-plugged into its domain makes `libvirt_mac`
/// necessary; the rules' place could not be used), it stays enforced
/// there and status says why (see `Step::Keep`); otherwise (its domain
/// stopped) it has stopped.
fn place_unknown(name: &str, e: &mut super::Enforced, why: String) {
    let still_on = e.stopped.is_none()
        && e.dataplane.attached_place_current() == Some(true)
        && e.dataplane.links_attached();
    if still_on {
        if e.unapplied.as_deref() != Some(why.as_str()) {
            log::warn!(
                instance = name;
                "instance {name}: {why}; it stays enforced on {}",
                e.place.describe()
            );
        }
        e.unapplied = Some(why);
        e.checked = Instant::now();
    } else {
        e.unapplied = None;
        stopped(name, e, why);
    }
}

/// An enforced instance whose place cannot be known now: a libvirt domain
/// that stopped (its tap went with it, and nothing is unprotected until it
/// starts again). The reason is kept current (a domain that starts with no
/// NIC of the file's `libvirt_mac` is not "not running").
fn stopped(name: &str, e: &mut super::Enforced, why: String) {
    if e.stopped.is_none() {
        log::info!(instance = name; "instance {name}: {why}; enforced again as it starts");
    }
    e.stopped = Some(why);
    e.checked = Instant::now();
}

/// What a lapse found at `place`: programs taken off (`taken_off` of them),
/// none there though the interface is the same (`same`), or the interface
/// made again.
fn lapse_cause(place: &super::place::Place, taken_off: usize, same: bool) -> String {
    if taken_off > 0 {
        format!(
            "{} had {taken_off} of its programs taken off by someone else",
            place.describe()
        )
    } else if same {
        format!("{} had none of its programs on it", place.describe())
    } else {
        format!("{} was recreated", place.describe())
    }
}

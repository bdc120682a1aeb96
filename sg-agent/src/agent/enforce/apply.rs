//! Putting a policy in force: every change is prepared in full (new objects
//! loaded and filled, places checked) before anything changes; then each
//! instance switches atomically, moved instances are attached at their new
//! place before their old links go, and removed instances are detached
//! last. A stop asked for while a change is prepared abandons it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use super::{
    Agent, Enforced, MAX_BACKOFF, Pending, macs, on_instance,
    place::{Place, Wanted},
};
use crate::{
    agent::{AgentError, RECONCILE},
    config::Vpc,
    dataplane::{Capacity, Dataplane, Macs, Side},
    policy::compile::{CompiledInstance, CompiledPolicy},
};

/// What a prepared change does to one instance.
enum Step {
    /// Same place: swap its policy.
    Publish,
    /// Same place, another connection allowance, or a policy whose single
    /// ports outgrow its port hash: a new object with maps of the new
    /// capacity (its connections carried over), replacing the programs on
    /// the links in place.
    Resize(Box<Dataplane>),
    /// Same name, another place: attach there first, then let go of the
    /// old place.
    Move(Place),
    /// Same place as an instance the file no longer names: keep its data
    /// plane (links, connection table) under the new name.
    Rename(String),
    /// A new instance, loaded and filled, to be attached.
    New(Box<Dataplane>),
    /// A new object to load (for `New`, or `Resize` when `resize`): loaded
    /// for every such instance at once, on as many threads as there are
    /// CPUs, before anything is committed.
    Load { resize: bool },
    /// Its namespace or interface does not exist (yet), or where it is
    /// cannot be known yet (a libvirt domain that is not running): waited
    /// for, its object prepared meanwhile (when that worked).
    Wait(Option<Place>, String, Option<Box<Dataplane>>),
    /// A new instance attached as soon as it was loaded (at start, see
    /// [`Agent::load_all`]): only its bookkeeping is left.
    Attached(Box<Attached>),
    /// An enforced instance whose new place cannot be used (why): it keeps
    /// its place, its MAC addresses and links, and takes the new policy.
    Keep(String),
}

impl Agent<'_> {
    /// Makes `vpc` the policy in force. Everything is prepared first (new
    /// objects loaded and filled, places checked); a failure there changes
    /// nothing. Then each instance switches atomically, and removed
    /// instances are detached last.
    pub(super) fn apply(&mut self, vpc: Vpc, compiled: CompiledPolicy) -> Result<(), AgentError> {
        if self.stopping() {
            return Err(AgentError::Stopping);
        }
        let wanted: BTreeMap<String, (&CompiledInstance, Wanted)> = compiled
            .instances
            .iter()
            .filter(|i| i.link.is_some())
            .map(|i| (i.name.clone(), (i, self.domains.wanted(i))))
            .collect();

        // Prepare.
        let (mut steps, renamed_from) = self.plan(&wanted);
        self.keep_prepared_waiting(&wanted, &mut steps);
        // At start nothing is enforced that a failed change would have to
        // keep as it was: each new instance is attached as soon as its
        // object is loaded (a host of hundreds is enforced progressively,
        // and a start cut short keeps what it attached: see `load_all`).
        let attach_as_loaded = self.enforced.is_empty();
        if attach_as_loaded {
            self.configured_macs = macs::configured(&compiled.instances);
        }
        if let Err(e) = self.load_all(&wanted, &mut steps, attach_as_loaded) {
            // Nothing changed: the instances that were to drain take new
            // flows again (unless they were draining already).
            for (name, e) in &mut self.enforced {
                if let Err(err) = e.dataplane.refuse_new_flows(e.shrinking_to.is_some()) {
                    log::warn!(instance = name; "instance {name}: {}", crate::errors::chain(&err));
                }
            }
            return Err(e);
        }

        // Commit: each step is atomic for the instance it concerns. New
        // instances are attached together, last.
        self.configured_macs = macs::configured(&compiled.instances);
        let mut failures = Vec::new();
        let mut new = Vec::new();
        let mut attached = Vec::new();
        for (name, step) in steps {
            let (inst, want) = &wanted[&name];
            if let Step::Attached(outcome) = step {
                let Ok((place, _)) = want else {
                    unreachable!("attached where it is to be");
                };
                attached.push((name, place.clone(), *inst, *outcome));
                continue;
            }
            let (place, mac) = match want {
                Ok((place, mac)) => (Some(place), place.with_services(*mac)),
                Err(_) => (None, Macs::default()),
            };
            if let Step::New(dp) = step {
                let place = place.expect("a new instance is prepared for its place");
                let reserved = self.reserved_for(&name, place);
                new.push((name, place.clone(), mac, reserved, *dp, *inst));
                continue;
            }
            let result = self.commit(&name, inst, mac, step);
            if let Err(e) = result {
                log::error!("{}", crate::errors::chain(&e));
                failures.push(name);
            }
        }
        for (name, place, inst, outcome) in attached {
            self.attached(&name, &place, inst, outcome);
        }
        self.attach_many(new);
        self.retire_and_remove(|n| wanted.contains_key(n) || renamed_from.iter().any(|r| r == n));
        self.forget_pending_but(|n| wanted.contains_key(n));
        self.vpc = vpc;
        self.compiled = Some(compiled);
        self.watch_namespaces();
        self.guard_macs();
        self.warn_address_mismatches();
        // A failed switch leaves that instance as it was (each switch is
        // atomic); the others are in force, so the reload itself stands.
        if !failures.is_empty() {
            log::error!(
                "instances not updated, keeping their previous policy: {}",
                failures.join(", ")
            );
        }
        Ok(())
    }

    /// What the change does to each instance it names (see [`Step`]),
    /// and the instances renamed by it.
    fn plan(
        &mut self,
        wanted: &BTreeMap<String, (&CompiledInstance, Wanted)>,
    ) -> (Vec<(String, Step)>, Vec<String>) {
        let mut steps: Vec<(String, Step)> = Vec::new();
        let mut renamed_from: Vec<String> = Vec::new();
        for (name, (inst, want)) in wanted {
            let place = match want {
                Ok((place, _)) => place,
                // Enforced where it is, which is still there: it stays so
                // (a reload naming a NIC its running domain does not have
                // leaves the NIC it is on as it was, with the new rules).
                Err(why)
                    if self
                        .enforced
                        .get(name)
                        .is_some_and(|e| e.stopped.is_none() && e.place.exists().is_ok()) =>
                {
                    steps.push((name.clone(), Step::Keep(why.clone())));
                    continue;
                }
                Err(why) => {
                    steps.push((name.clone(), Step::Wait(None, why.clone(), None)));
                    continue;
                }
            };
            let drains = self.drains_first(name, place, inst.max_tracked_connections);
            let step = if let Some(e) = self.enforced.get(name) {
                let resized = (e.allowance != inst.max_tracked_connections && !drains)
                    || e.dataplane.port_exact_capacity() < inst.port_exact_capacity;
                if &e.place == place && resized {
                    Step::Load { resize: true }
                } else if &e.place == place {
                    Step::Publish
                } else if let Err(why) = place.exists() {
                    Step::Keep(format!("cannot move to {} ({why})", place.describe()))
                } else {
                    Step::Move(place.clone())
                }
            } else if let Some(old) = self
                .enforced
                .iter()
                .find(|(n, e)| &e.place == place && !wanted.contains_key(*n))
                .map(|(n, _)| n.clone())
            {
                renamed_from.push(old.clone());
                Step::Rename(old)
            } else if let Err(why) = place.exists() {
                Step::Wait(Some(place.clone()), why, None)
            } else {
                Step::Load { resize: false }
            };
            steps.push((name.clone(), step));
        }
        (steps, renamed_from)
    }

    /// After a change is committed: the old policy generations go, one
    /// grace period after the last flip; then the instances the change no
    /// longer names (`keep` says which stay) are detached.
    pub(super) fn retire_and_remove(&mut self, keep: impl Fn(&str) -> bool) {
        // The old generations go, one grace period after the last flip.
        if self.enforced.values().any(|e| e.dataplane.retiring()) {
            std::thread::sleep(crate::dataplane::GRACE);
            for (name, e) in &mut self.enforced {
                if let Err(err) = e.dataplane.retire() {
                    log::warn!(
                        instance = name;
                        "instance {name}: deleting the old policy generation: {}",
                        crate::errors::chain(&err)
                    );
                }
            }
        }
        // Removed instances go last, once everything else is in force.
        let gone: Vec<String> = self.enforced.keys().filter(|n| !keep(n)).cloned().collect();
        for name in gone {
            // Its open interval ends with it: its records are written.
            self.flush_flow_log(Some(&name));
            let e = self.enforced.remove(&name).expect("listed");
            let place = e.place.describe();
            match e.dataplane.unpin() {
                Ok(()) => log::info!(instance = name; "detached instance {name} from {place}"),
                Err(e) => {
                    log::error!(instance = name; "detaching instance {name}: {}", crate::errors::chain(&e));
                }
            }
        }
    }

    /// Loads the objects of every `Step::Load`, in parallel (verifying the
    /// programs is most of an instance's start: a host of hundreds of
    /// instances starts as many times faster as it has CPUs). A stop asked
    /// for meanwhile, or any failure, abandons the whole change: what was
    /// prepared is dropped.
    ///
    /// With `attach_as_loaded` (at start, when nothing is enforced yet),
    /// each new instance is attached as its object comes from the loading
    /// threads, while the others are still verified: the first is enforced
    /// after one load rather than after all of them, the attaches (each
    /// waits for an RCU grace period in the kernel) overlap the loads, and a
    /// start cut short keeps what it attached: with `--keep-on-exit` (the
    /// service's) pinned, for the next agent to adopt. A failure then
    /// detaches what this start attached (unless the stop is one that keeps
    /// it), so that the start still changes nothing it does not finish.
    fn load_all(
        &self,
        wanted: &BTreeMap<String, (&CompiledInstance, Wanted)>,
        steps: &mut [(String, Step)],
        attach_as_loaded: bool,
    ) -> Result<(), AgentError> {
        // Instances waiting for their interface are prepared too, so that
        // it is enforced as soon as it appears; their failure is no
        // failure of the change (it is tried again as they attach).
        let jobs: Vec<(usize, &str, &CompiledInstance)> = steps
            .iter()
            .enumerate()
            .filter(|(_, (_, step))| matches!(step, Step::Load { .. } | Step::Wait(_, _, None)))
            .map(|(i, (name, _))| {
                let (name, (inst, _)) = wanted.get_key_value(name).expect("wanted");
                (i, name.as_str(), *inst)
            })
            .collect();
        if jobs.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(jobs.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let progress = Progress::new("loaded", jobs.len());
        let loader = Loader {
            state: &self.state,
            observe: self.opts.observe.dataplane(),
            stop: self.stop,
            ingress: self.opts.ingress,
        };
        let mut failure = None;
        let (mut attached, mut attaching) = (0, std::time::Duration::ZERO);
        std::thread::scope(|scope| {
            let (done, results) = std::sync::mpsc::channel();
            for _ in 0..threads {
                let done = done.clone();
                let (next, jobs, loader, progress) = (&next, &jobs, &loader, &progress);
                scope.spawn(move || {
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(i, name, inst)) = jobs.get(k) else {
                            break;
                        };
                        let result = loader.prepare(name, inst);
                        progress.one_more();
                        if done.send((i, result)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(done);
            for (i, result) in results {
                let (name, step) = &mut steps[i];
                match (result, &mut *step) {
                    (Ok(dp), Step::Wait(_, _, prepared)) => *prepared = Some(Box::new(dp)),
                    (Err(e), Step::Wait(..)) => log::debug!(
                        "instance {name}: not prepared while it waits: {}",
                        crate::errors::chain(&e)
                    ),
                    (Ok(dp), Step::Load { resize: true }) => *step = Step::Resize(Box::new(dp)),
                    (Ok(dp), _) if attach_as_loaded && failure.is_none() => {
                        let Ok((place, mac)) = &wanted[name.as_str()].1 else {
                            unreachable!("loaded for its place");
                        };
                        let reserved = self.reserved_for(name, place);
                        let began = Instant::now();
                        let outcome = attach_prepared(
                            dp,
                            place,
                            place.with_services(*mac),
                            &reserved,
                            self.opts.ingress,
                        );
                        attaching += began.elapsed();
                        attached += usize::from(outcome.result.is_ok());
                        *step = Step::Attached(Box::new(outcome));
                    }
                    (Ok(dp), _) => *step = Step::New(Box::new(dp)),
                    (Err(e), _) => {
                        failure.get_or_insert(e);
                    }
                }
            }
        });
        log::debug!(
            "loaded {} instance object(s) in {} ms on {threads} thread(s)",
            jobs.len(),
            started.elapsed().as_millis(),
        );
        if attached > 0 {
            log::debug!(
                "attached {attached} instance(s) in {} ms, each as it was loaded (while the \
                 others loaded)",
                attaching.as_millis()
            );
        }
        let Some(e) = failure else {
            return Ok(());
        };
        self.abandon(steps, &e);
        Err(e)
    }

    /// Drops what an abandoned change prepared (`failure` says why). A stop
    /// that keeps what is enforced (`--keep-on-exit`) keeps what a start
    /// attached, pinned; anything else undoes it.
    fn abandon(&self, steps: &mut [(String, Step)], failure: &AgentError) {
        let stopping = matches!(failure, AgentError::Stopping);
        if stopping {
            // Undoing is the stop's own bounded work (detaching, each link
            // an RCU grace period): the stop has begun.
            self.stop.begun.notify_one();
        }
        let keep = stopping && self.opts.keep_on_exit;
        for (name, step) in steps.iter_mut() {
            match std::mem::replace(step, Step::Load { resize: false }) {
                Step::New(dp) | Step::Resize(dp) => Self::forget_prepared(name, *dp),
                Step::Attached(outcome) if keep => drop(outcome),
                Step::Attached(outcome) => Self::forget_prepared(name, outcome.dp),
                Step::Wait(place, why, prepared) => {
                    if let Some(dp) = prepared {
                        Self::forget_prepared(name, *dp);
                    }
                    *step = Step::Wait(place, why, None);
                }
                other => *step = other,
            }
        }
    }

    /// Loads a new instance's object (see [`Loader::prepare`]).
    pub(super) fn prepare_new(
        &self,
        name: &str,
        inst: &CompiledInstance,
    ) -> Result<Dataplane, AgentError> {
        Loader {
            state: &self.state,
            observe: self.opts.observe.dataplane(),
            stop: self.stop,
            ingress: self.opts.ingress,
        }
        .prepare(name, inst)
    }
    /// Drops a prepared data plane of a change that is abandoned. Pins an
    /// earlier agent left stay (they still enforce); new ones go.
    pub(super) fn forget_prepared(name: &str, dp: Dataplane) {
        if dp.adopted() {
            drop(dp);
        } else if let Err(e) = dp.unpin() {
            log::warn!(instance = name; "instance {name}: {}", crate::errors::chain(&e));
        }
    }

    /// Same place: the new policy is flipped in, and a lowered connection
    /// allowance the table cannot take yet (it holds more) is drained to.
    fn publish_in_place(
        &mut self,
        name: &str,
        inst: &CompiledInstance,
        mac: Macs,
    ) -> Result<(), AgentError> {
        let settings = inst.settings;
        let e = self.enforced.get_mut(name).expect("enforced");
        e.dataplane.set_macs(mac).map_err(on_instance(name))?;
        if e.dataplane
            .flip(&inst.tables, settings)
            .map_err(on_instance(name))?
        {
            log::info!(
                instance = name;
                "instance {name}: new policy in force ({} classes)",
                inst.tables.classes
            );
        }
        let target = inst.max_tracked_connections;
        let draining = (target < e.allowance).then_some(target);
        if draining.is_some() && e.shrinking_to != draining {
            log::warn!(
                instance = name;
                "instance {name}: connection allowance lowered from {} to {target} while \
                 {} connections are tracked: they are kept, and new flows are refused \
                 until no more than {target} remain",
                e.allowance,
                e.dataplane.tracked_connections()
            );
        }
        e.shrinking_to = draining;
        e.dataplane
            .refuse_new_flows(draining.is_some())
            .map_err(on_instance(name))?;
        Ok(())
    }

    fn commit(
        &mut self,
        name: &str,
        inst: &CompiledInstance,
        mac: Macs,
        step: Step,
    ) -> Result<(), AgentError> {
        let settings = inst.settings;
        match step {
            Step::Publish => {
                self.publish_in_place(name, inst, mac)?;
                self.enforced.get_mut(name).expect("enforced").unapplied = None;
            }
            Step::Keep(why) => {
                let e = self.enforced.get_mut(name).expect("enforced");
                // Its MAC addresses as they are (a learned one is kept).
                let known = e.dataplane.mac().map_err(on_instance(name))?;
                let kept = Macs {
                    instance: known.filter(|k| !k.learned).map(|k| k.mac),
                    services: e.dataplane.service_mac().map_err(on_instance(name))?,
                };
                if e.unapplied.as_deref() != Some(why.as_str()) {
                    log::error!(
                        instance = name;
                        "instance {name}: {why}; it stays enforced on {}, with the new rules",
                        e.place.describe()
                    );
                }
                e.unapplied = Some(why);
                self.publish_in_place(name, inst, kept)?;
            }
            Step::Move(to) => {
                let e = self.enforced.get_mut(name).expect("enforced");
                e.dataplane
                    .publish(&inst.tables, settings)
                    .map_err(on_instance(name))?;
                // Another link: whatever was learned of the old one goes.
                e.dataplane
                    .forget_learned_mac()
                    .map_err(on_instance(name))?;
                e.dataplane.set_macs(mac).map_err(on_instance(name))?;
                let a = e
                    .dataplane
                    .attach(&to.ifname, to.netns.as_deref(), self.opts.ingress, to.side)
                    .map_err(on_instance(name))?;
                log::info!(
                    instance = name;
                    "moved instance {name} from {} to {}: {} ({})",
                    e.place.describe(),
                    to.describe(),
                    a.ingress,
                    a.ingress_reason
                );
                e.place = to;
            }
            Step::Rename(old) => {
                let mut e = self.enforced.remove(&old).expect("enforced");
                if let Err(err) = e.dataplane.rename_pins(&self.state.instance(name)) {
                    log::error!(
                        instance = name;
                        "instance {name} (was {old}): {}; its pins stay under the old name",
                        crate::errors::chain(&err)
                    );
                }
                let result = e
                    .dataplane
                    .set_macs(mac)
                    .and_then(|()| e.dataplane.publish(&inst.tables, settings));
                let place = e.place.describe();
                self.enforced.insert(name.to_owned(), e);
                self.observer.rename(&old, name);
                result.map_err(on_instance(name))?;
                log::info!(
                    instance = name;
                    "renamed instance {old} to {name} on {place}: links and connections kept"
                );
            }
            Step::New(_) | Step::Load { .. } | Step::Attached(_) => {
                unreachable!("new instances are attached together; load_all replaced every Load")
            }
            Step::Resize(dp) => {
                let from = self.enforced.get(name).map_or(0, |e| e.allowance);
                let place = self.enforced[name].place.clone();
                self.attach_new(name, &place, mac, *dp, inst);
                if from == inst.max_tracked_connections {
                    log::info!(
                        instance = name;
                        "instance {name}: single-port table grown to {} entries",
                        inst.port_exact_capacity
                    );
                } else {
                    log::info!(
                        instance = name;
                        "instance {name}: connection allowance {from} -> {}",
                        inst.max_tracked_connections
                    );
                }
            }
            Step::Wait(place, why, prepared) => {
                self.wait_for(name, place, why);
                if let Some(p) = self.pending.get_mut(name) {
                    p.prepared = prepared;
                }
            }
        }
        Ok(())
    }

    /// Attaches a prepared data plane at `place`; on failure the instance
    /// waits. Returns whether it is enforced.
    pub(super) fn attach_new(
        &mut self,
        name: &str,
        place: &Place,
        mac: Macs,
        dp: Dataplane,
        inst: &CompiledInstance,
    ) -> bool {
        let reserved = self.reserved_for(name, place);
        let attached = attach_prepared(dp, place, mac, &reserved, self.opts.ingress);
        self.attached(name, place, inst, attached)
    }

    /// Attaches many prepared data planes at once (a host's instances at
    /// start): each attach waits for the kernel's RCU grace periods (TCX
    /// synchronises on every link change), so they overlap on threads.
    pub(super) fn attach_many(&mut self, jobs: Vec<NewJob<'_>>) {
        const THREADS: usize = 16;
        if jobs.is_empty() {
            return;
        }
        let started = Instant::now();
        let ingress = self.opts.ingress;
        let queue = std::sync::Mutex::new(
            jobs.into_iter()
                .map(|(n, p, m, r, dp, i)| (n, p, m, r, Some(dp), i))
                .collect::<Vec<_>>(),
        );
        let results = std::sync::Mutex::new(Vec::new());
        let count = queue.lock().expect("queue").len();
        let progress = Progress::new("attached", count);
        std::thread::scope(|scope| {
            for _ in 0..THREADS.min(count) {
                scope.spawn(|| {
                    loop {
                        let job = queue.lock().expect("queue").pop();
                        let Some((name, place, mac, reserved, dp, inst)) = job else {
                            break;
                        };
                        let dp = dp.expect("each job once");
                        let attached = attach_prepared(dp, &place, mac, &reserved, ingress);
                        progress.one_more();
                        results
                            .lock()
                            .expect("results")
                            .push((name, place, inst, attached));
                    }
                });
            }
        });
        let mut results = results.into_inner().expect("results");
        log::debug!(
            "attached {count} instance(s) in {} ms",
            started.elapsed().as_millis()
        );
        results.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, place, inst, attached) in results {
            self.attached(&name, &place, inst, attached);
        }
    }

    /// Bookkeeping after an attach: enforced, or waiting (and its new pins
    /// removed). Returns whether it is enforced.
    fn attached(
        &mut self,
        name: &str,
        place: &Place,
        inst: &CompiledInstance,
        attached: Attached,
    ) -> bool {
        let Attached { mut dp, result } = attached;
        match result {
            Ok((ingress, reason, links_adopted)) => {
                // A table that keeps a larger capacity than the allowance
                // (it held more connections) drains to it; any other takes
                // new flows (a refusal left pinned by an earlier agent
                // included).
                let capacity = dp.conns_capacity();
                let target = inst.max_tracked_connections;
                let shrinking_to = (capacity > target).then_some(target);
                if let Err(e) = dp.refuse_new_flows(shrinking_to.is_some()) {
                    log::warn!(instance = name; "instance {name}: {}", crate::errors::chain(&e));
                }
                if shrinking_to.is_some() {
                    log::warn!(
                        instance = name;
                        "instance {name}: {} connections tracked, more than its allowance of \
                         {target}: they are kept, and new flows are refused until no more than \
                         {target} remain",
                        dp.tracked_connections()
                    );
                }
                let how = match (links_adopted, dp.adopted()) {
                    (true, _) => "; adopted its pinned links (program replaced in place) and maps",
                    (false, true) => "; adopted its pinned maps (connection table kept)",
                    (false, false) => "",
                };
                let hooks = match place.side {
                    Side::Instance => format!("{ingress} ingress ({reason}), TC egress"),
                    Side::Host => reason,
                };
                log::info!(
                    instance = name;
                    "attached instance {name} to {}: {hooks}{how}",
                    place.describe(),
                );
                self.pending.remove(name);
                self.enforced.insert(
                    name.to_owned(),
                    Enforced {
                        place: place.clone(),
                        dataplane: dp,
                        lost_since: None,
                        stopped: None,
                        unapplied: None,
                        hook_stopped: false,
                        checked: Instant::now(),
                        allowance: capacity,
                        shrinking_to,
                        reclaimed: (Instant::now(), 0),
                        macs: macs::MacGuard::default(),
                        netns_id: place
                            .netns
                            .as_deref()
                            .filter(|ns| ns.starts_with('/'))
                            .and_then(crate::dataplane::netns::NetnsId::of),
                    },
                );
                true
            }
            Err(e) => {
                let why = crate::errors::chain(&e);
                if !dp.adopted() {
                    let _ = dp.unpin();
                }
                self.wait_for(name, Some(place.clone()), why);
                false
            }
        }
    }

    /// An instance enforced on its own interface whose `addresses` are not
    /// the interface's: what it sends from an unlisted address is dropped
    /// by the source/destination check, and a listed address it does not
    /// have is never reached, both silently, as on AWS. Said with both
    /// sets, at start and on every reload. On the host side, where the
    /// guest's interface cannot be read, the addresses its guest was seen
    /// using (`observe`) that the file still does not list are said again.
    fn warn_address_mismatches(&mut self) {
        for (name, e) in &self.enforced {
            let Some(inst) = self.vpc.instance(name) else {
                continue;
            };
            if e.place.side != Side::Instance {
                let still = self.observer.guest_addresses_unlisted(name, inst);
                if !still.is_empty() {
                    log::warn!(
                        instance = name;
                        "instance {name}: its guest was seen using {}, which its addresses ({}) \
                         do not include: what it sends from there is dropped",
                        still.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                        crate::observe::show_addresses(&inst.addresses)
                    );
                }
                continue;
            }
            let Ok(actual) = e.place.addresses() else {
                continue;
            };
            let listed: Vec<std::net::IpAddr> = inst.addresses.clone();
            let unlisted: Vec<String> = actual
                .iter()
                .filter(|a| !inst.owns(**a))
                .map(ToString::to_string)
                .collect();
            let absent: Vec<String> = listed
                .iter()
                .filter(|a| !actual.contains(a))
                .map(ToString::to_string)
                .collect();
            if (unlisted.is_empty() || !inst.source_dest_check) && absent.is_empty() {
                continue;
            }
            let show = |v: &[std::net::IpAddr]| {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut why = Vec::new();
            if inst.source_dest_check && !unlisted.is_empty() {
                why.push(format!(
                    "what it sends from {} is dropped by the source/destination check",
                    unlisted.join(", ")
                ));
            }
            if !absent.is_empty() {
                why.push(format!("{} never reach it", absent.join(", ")));
            }
            log::warn!(
                instance = name;
                "instance {name}: its addresses ({}) are not those of {} ({}): {}",
                show(&listed),
                e.place.describe(),
                if actual.is_empty() { "none".to_owned() } else { show(&actual) },
                why.join("; ")
            );
        }
    }

    /// Whether instance `name`, enforced at `place`, must drain before its
    /// connection table can shrink to `target`: it holds more connections
    /// than that. New flows are refused from here on (so none arrive
    /// between the count and the resize); the commit, or the abandoned
    /// change, settles that.
    fn drains_first(&mut self, name: &str, place: &Place, target: u32) -> bool {
        let Some(e) = self.enforced.get_mut(name) else {
            return false;
        };
        if &e.place != place || target >= e.allowance {
            return false;
        }
        if let Err(err) = e.dataplane.refuse_new_flows(true) {
            log::warn!(instance = name; "instance {name}: {}", crate::errors::chain(&err));
        }
        e.dataplane.tracked_connections() > usize::try_from(target).unwrap_or(usize::MAX)
    }

    /// Instances that still wait keep the object prepared for them, with
    /// this change's policy published into it (a reload verifies nothing
    /// again for them); one whose connection table or single-port hash no
    /// longer fits is prepared again by `load_all`.
    fn keep_prepared_waiting(
        &mut self,
        wanted: &BTreeMap<String, (&CompiledInstance, Wanted)>,
        steps: &mut [(String, Step)],
    ) {
        for (name, step) in steps.iter_mut() {
            let Step::Wait(_, _, prepared) = step else {
                continue;
            };
            let Some(mut dp) = self.pending.get_mut(name).and_then(|p| p.prepared.take()) else {
                continue;
            };
            let inst = wanted[name.as_str()].0;
            let fits = dp.conns_capacity() == inst.max_tracked_connections
                && dp.port_exact_capacity() >= inst.port_exact_capacity;
            match fits
                .then(|| dp.publish(&inst.tables, inst.settings))
                .transpose()
            {
                Ok(Some(_)) => *prepared = Some(dp),
                Ok(None) => Self::forget_prepared(name, *dp),
                Err(e) => {
                    log::debug!(
                        "instance {name}: prepared again: {}",
                        crate::errors::chain(&e)
                    );
                    Self::forget_prepared(name, *dp);
                }
            }
        }
    }

    /// Instances no longer waited for (all but those `keep` names).
    fn forget_pending_but(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self.pending.keys().filter(|n| !keep(n)).cloned().collect();
        for name in gone {
            self.forget_pending(&name);
        }
    }

    /// An instance no longer waited for: what was prepared for it goes.
    pub(super) fn forget_pending(&mut self, name: &str) {
        if let Some(p) = self.pending.remove(name)
            && let Some(dp) = p.prepared
        {
            Self::forget_prepared(name, *dp);
        }
    }

    pub(super) fn wait_for(&mut self, name: &str, place: Option<Place>, reason: String) {
        let first = !self.pending.contains_key(name);
        let p = self.pending.entry(name.to_owned()).or_insert(Pending {
            place: None,
            reason: String::new(),
            next_try: Instant::now(),
            backoff: RECONCILE,
            prepared: None,
        });
        if (first || p.reason != reason) && crate::libvirt::only_not_running(&reason) {
            // A shut-off domain: nothing of it runs unfiltered.
            log::info!(instance = name; "instance {name}: {reason}; enforced as it starts");
        } else if first || p.reason != reason {
            let on = place
                .as_ref()
                .map_or_else(String::new, |p| format!(" on {}", p.describe()));
            log::error!(
                instance = name;
                "instance {name} NOT ENFORCED{on}: {reason}; retrying"
            );
        }
        p.place = place;
        p.reason = reason;
        p.next_try = Instant::now() + p.backoff;
        p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
    }

    /// Pinned instances the file does not name (left by an agent killed
    /// before a reload removed them): detached once everything the file
    /// names is in force.
    pub(super) fn detach_unknown_pins(&mut self) {
        let Ok(pinned) = self.state.instances() else {
            return;
        };
        let named: Vec<&str> = self
            .vpc
            .instances
            .iter()
            .filter(|i| i.enforced_here())
            .map(|i| i.name.as_str())
            .collect();
        for name in pinned {
            if !named.contains(&name.as_str()) {
                match self.state.instance(&name).remove() {
                    Ok(()) => {
                        log::info!(instance = name; "detached pinned instance {name}: not in the rules file");
                    }
                    Err(e) => log::error!(instance = name; "detaching pinned instance {name}: {e}"),
                }
            }
        }
    }
}

/// An attach's outcome: the data plane, and its inbound hook, why that
/// hook and whether pinned links were adopted, or why it failed.
struct Attached {
    dp: Dataplane,
    result: Result<(&'static str, String, bool), crate::dataplane::DataplaneError>,
}

/// A prepared new instance to attach: name, place, MAC, data plane.
pub(super) type NewJob<'c> = (
    String,
    Place,
    Macs,
    BTreeSet<[u8; 6]>,
    Dataplane,
    &'c CompiledInstance,
);

/// Attaches a prepared data plane at `place` and gives it the MAC address
/// to check. What it may not learn (`reserved`: the host's, every other
/// instance's) it knows before its first frame. A link attached anew may
/// be another guest's: what was learned of the one before goes (an
/// adopted link is the same link, and keeps it).
fn attach_prepared(
    mut dp: Dataplane,
    place: &Place,
    mac: Macs,
    reserved: &BTreeSet<[u8; 6]>,
    ingress: crate::dataplane::IngressHook,
) -> Attached {
    let result = dp
        .set_reserved_macs(reserved)
        .and_then(|()| dp.attach(&place.ifname, place.netns.as_deref(), ingress, place.side))
        .map(|a| (a.ingress, a.ingress_reason.clone(), a.adopted))
        .and_then(|attached| {
            if !attached.2 {
                dp.forget_learned_mac()?;
            }
            dp.set_macs(mac)?;
            Ok(attached)
        });
    Attached { dp, result }
}

/// Progress of a long step over many instances, told to systemd every few
/// seconds with its start timeout pushed further out (see
/// [`crate::agent::service::progress`]).
struct Progress {
    what: &'static str,
    of: usize,
    done: std::sync::atomic::AtomicUsize,
    told: std::sync::Mutex<Instant>,
}

impl Progress {
    /// How often systemd hears of it, and how far each time pushes its
    /// timeout.
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    const EXTEND: std::time::Duration = std::time::Duration::from_secs(30);

    fn new(what: &'static str, of: usize) -> Self {
        Self {
            what,
            of,
            done: std::sync::atomic::AtomicUsize::new(0),
            told: std::sync::Mutex::new(Instant::now()),
        }
    }

    fn one_more(&self) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let Ok(mut told) = self.told.try_lock() else {
            return;
        };
        if told.elapsed() >= Self::EVERY {
            *told = Instant::now();
            crate::agent::service::progress(
                &format!("{} {done} of {} instance(s)", self.what, self.of),
                Self::EXTEND,
            );
        }
    }
}

/// What loading an instance's object needs, shared by the loading threads.
struct Loader<'a> {
    state: &'a crate::dataplane::StateDir,
    observe: crate::dataplane::Observe,
    stop: &'a crate::agent::StopFlag,
    ingress: crate::dataplane::IngressHook,
}

impl Loader<'_> {
    /// Loads a new instance's object (adopting what an earlier agent pinned
    /// for it) and fills its policy; nothing is attached. A stop asked for
    /// meanwhile abandons it.
    fn prepare(&self, name: &str, inst: &CompiledInstance) -> Result<Dataplane, AgentError> {
        if self.stop.asked.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AgentError::Stopping);
        }
        let settings = inst.settings;
        let pins = self.state.instance(name);
        let existed = pins.exists();
        let mut dp = Dataplane::load_pinned(
            pins.clone(),
            self.observe,
            Capacity {
                conns: inst.max_tracked_connections,
                port_exact: inst.port_exact_capacity,
            },
        )
        .map_err(|e| {
            if !existed {
                let _ = pins.remove();
            }
            on_instance(name)(e)
        })?;
        // The programs it will attach, verified here (in parallel with the
        // other instances' at start) rather than one by one as they attach.
        // In the variant its policy needs (with or without network ACLs).
        let loaded = dp
            .use_programs_for(&inst.tables)
            .and_then(|()| {
                self.programs(inst)
                    .into_iter()
                    .try_for_each(|p| dp.load_program(p))
            })
            .and_then(|()| dp.publish(&inst.tables, settings).map(|_| ()));
        if let Err(e) = loaded {
            if !existed {
                let _ = dp.unpin();
            }
            return Err(on_instance(name)(e));
        }
        Ok(dp)
    }

    /// The programs `inst` will attach: on the host side the inbound one
    /// at TC and the guarded outbound one; on its own interface the
    /// outbound one and the inbound one the hook asks for (for `auto`, TC,
    /// which every virtual interface gets; a NIC's XDP is loaded when it
    /// is attached).
    fn programs(&self, inst: &CompiledInstance) -> Vec<&'static str> {
        use crate::dataplane::{
            EGRESS_HOST_PROGRAM, EGRESS_PROGRAM, INGRESS_PROGRAM, INGRESS_TC_PROGRAM, IngressHook,
        };
        if inst
            .link
            .as_ref()
            .is_some_and(crate::config::Link::host_side)
        {
            return vec![INGRESS_TC_PROGRAM, EGRESS_HOST_PROGRAM];
        }
        let inbound = match self.ingress {
            IngressHook::Auto | IngressHook::Tc => INGRESS_TC_PROGRAM,
            IngressHook::XdpNative | IngressHook::XdpGeneric => INGRESS_PROGRAM,
        };
        vec![inbound, EGRESS_PROGRAM]
    }
}

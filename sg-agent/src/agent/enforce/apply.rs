//! Putting a policy in force: every change is prepared in full (new objects
//! loaded and filled, places checked) before anything changes; then each
//! instance switches atomically, moved instances are attached at their new
//! place before their old links go, and removed instances are detached
//! last. A stop asked for while a change is prepared abandons it.

use std::{collections::BTreeMap, time::Instant};

use super::{
    Agent, Enforced, MAX_BACKOFF, Pending, on_instance,
    place::{Place, Wanted},
};
use crate::{
    agent::{AgentError, RECONCILE},
    config::Vpc,
    dataplane::{Dataplane, Side},
    policy::compile::{CompiledInstance, CompiledPolicy},
};

/// What a prepared change does to one instance.
enum Step {
    /// Same place: swap its policy.
    Publish,
    /// Same place, another connection allowance: a new object with a table
    /// of the new capacity (its connections carried over), replacing the
    /// programs on the links in place.
    Resize(Box<Dataplane>),
    /// Same name, another place: attach there first, then let go of the
    /// old place.
    Move(Place),
    /// Same place as an instance the file no longer names: keep its data
    /// plane (links, connection table) under the new name.
    Rename(String),
    /// A new instance, loaded and filled, to be attached.
    New(Box<Dataplane>),
    /// Its namespace or interface does not exist (yet), or where it is
    /// cannot be known yet (a libvirt domain that is not running): waited
    /// for.
    Wait(Option<Place>, String),
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
        let mut steps: Vec<(String, Step)> = Vec::new();
        let mut renamed_from: Vec<String> = Vec::new();
        for (name, (inst, want)) in &wanted {
            let place = match want {
                Ok((place, _)) => place,
                Err(why) => {
                    steps.push((name.clone(), Step::Wait(None, why.clone())));
                    continue;
                }
            };
            let step = if let Some(e) = self.enforced.get(name) {
                if &e.place == place && e.allowance != inst.max_tracked_connections {
                    self.prepare_or_abandon(name, inst, &mut steps)
                        .map(|dp| Step::Resize(Box::new(dp)))?
                } else if &e.place == place {
                    Step::Publish
                } else if let Err(why) = place.exists() {
                    log::error!(
                        instance = name;
                        "instance {name}: cannot move to {} ({why}); it stays enforced on {}",
                        place.describe(),
                        e.place.describe()
                    );
                    Step::Publish
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
                Step::Wait(Some(place.clone()), why)
            } else {
                self.prepare_or_abandon(name, inst, &mut steps)
                    .map(|dp| Step::New(Box::new(dp)))?
            };
            steps.push((name.clone(), step));
        }

        // Commit: each step is atomic for the instance it concerns.
        let mut failures = Vec::new();
        for (name, step) in steps {
            let (inst, want) = &wanted[&name];
            let (place, mac) = match want {
                Ok((place, mac)) => (Some(place), *mac),
                Err(_) => (None, None),
            };
            let result = self.commit(&name, inst, place, mac, step);
            if let Err(e) = result {
                log::error!("{}", crate::cli::error_chain(&e));
                failures.push(name);
            }
        }
        // Removed instances go last, once everything else is in force.
        let gone: Vec<String> = self
            .enforced
            .keys()
            .filter(|n| !wanted.contains_key(*n) && !renamed_from.contains(n))
            .cloned()
            .collect();
        for name in gone {
            let e = self.enforced.remove(&name).expect("listed");
            let place = e.place.describe();
            match e.dataplane.unpin() {
                Ok(()) => log::info!(instance = name; "detached instance {name} from {place}"),
                Err(e) => {
                    log::error!(instance = name; "detaching instance {name}: {}", crate::cli::error_chain(&e));
                }
            }
        }
        self.pending.retain(|n, _| wanted.contains_key(n));
        self.vpc = vpc;
        self.compiled = Some(compiled);
        self.watch_namespaces();
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

    /// [`Agent::prepare_new`], unless a stop was asked for; on failure the
    /// whole change is abandoned: what `steps` prepared so far is dropped
    /// (nothing has changed yet).
    fn prepare_or_abandon(
        &self,
        name: &str,
        inst: &CompiledInstance,
        steps: &mut Vec<(String, Step)>,
    ) -> Result<Dataplane, AgentError> {
        // Loading an object is the long part of preparing: a stop asked
        // for meanwhile abandons the change here.
        let prepared = if self.stopping() {
            Err(AgentError::Stopping)
        } else {
            self.prepare_new(name, inst)
        };
        if prepared.is_err() {
            for (n, step) in steps.drain(..) {
                if let Step::New(dp) | Step::Resize(dp) = step {
                    Self::forget_prepared(&n, *dp);
                }
            }
        }
        prepared
    }

    /// Loads a new instance's object (adopting what an earlier agent pinned
    /// for it) and fills its policy; nothing is attached.
    pub(super) fn prepare_new(
        &self,
        name: &str,
        inst: &CompiledInstance,
    ) -> Result<Dataplane, AgentError> {
        let settings = inst.settings;
        let pins = self.state.instance(name);
        let existed = pins.exists();
        let mut dp = Dataplane::load_pinned(
            pins.clone(),
            self.opts.observe.dataplane(),
            inst.max_tracked_connections,
        )
        .map_err(|e| {
            if !existed {
                let _ = pins.remove();
            }
            on_instance(name)(e)
        })?;
        if let Err(e) = dp.publish(&inst.tables, settings) {
            if !existed {
                let _ = dp.unpin();
            }
            return Err(on_instance(name)(e));
        }
        Ok(dp)
    }

    /// Drops a prepared data plane of a change that is abandoned. Pins an
    /// earlier agent left stay (they still enforce); new ones go.
    fn forget_prepared(name: &str, dp: Dataplane) {
        if dp.adopted() {
            drop(dp);
        } else if let Err(e) = dp.unpin() {
            log::warn!(instance = name; "instance {name}: {}", crate::cli::error_chain(&e));
        }
    }

    fn commit(
        &mut self,
        name: &str,
        inst: &CompiledInstance,
        place: Option<&Place>,
        mac: Option<[u8; 6]>,
        step: Step,
    ) -> Result<(), AgentError> {
        let settings = inst.settings;
        match step {
            Step::Publish => {
                let e = self.enforced.get_mut(name).expect("enforced");
                e.dataplane.set_mac(mac).map_err(on_instance(name))?;
                if e.dataplane
                    .publish(&inst.tables, settings)
                    .map_err(on_instance(name))?
                {
                    log::info!(
                        instance = name;
                        "instance {name}: new policy in force ({} classes)",
                        inst.tables.classes
                    );
                }
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
                e.dataplane.set_mac(mac).map_err(on_instance(name))?;
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
                        crate::cli::error_chain(&err)
                    );
                }
                let result = e
                    .dataplane
                    .set_mac(mac)
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
            Step::New(dp) => {
                let place = place.expect("a new instance is prepared for its place");
                self.attach_new(name, place, mac, *dp, inst);
            }
            Step::Resize(dp) => {
                let from = self.enforced.get(name).map_or(0, |e| e.allowance);
                let place = self.enforced[name].place.clone();
                self.attach_new(name, &place, mac, *dp, inst);
                log::info!(
                    instance = name;
                    "instance {name}: connection allowance {from} -> {}",
                    inst.max_tracked_connections
                );
            }
            Step::Wait(place, why) => {
                self.wait_for(name, place, why);
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
        mac: Option<[u8; 6]>,
        mut dp: Dataplane,
        inst: &CompiledInstance,
    ) -> bool {
        let maps_adopted = dp.adopted();
        let result = dp
            .attach(
                &place.ifname,
                place.netns.as_deref(),
                self.opts.ingress,
                place.side,
            )
            .map(|a| (a.ingress, a.ingress_reason.clone(), a.adopted))
            .and_then(|attached| {
                // A link attached anew may be another guest's: what was
                // learned of the one before goes (an adopted link is the
                // same link, and keeps it).
                if !attached.2 {
                    dp.forget_learned_mac()?;
                }
                dp.set_mac(mac)?;
                Ok(attached)
            });
        match result {
            Ok((ingress, reason, links_adopted)) => {
                let how = match (links_adopted, maps_adopted) {
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
                        checked: Instant::now(),
                        allowance: inst.max_tracked_connections,
                        reclaimed: (Instant::now(), 0),
                    },
                );
                true
            }
            Err(e) => {
                let why = crate::cli::error_chain(&e);
                if !dp.adopted() {
                    let _ = dp.unpin();
                }
                self.wait_for(name, Some(place.clone()), why);
                false
            }
        }
    }

    pub(super) fn wait_for(&mut self, name: &str, place: Option<Place>, reason: String) {
        let first = !self.pending.contains_key(name);
        let p = self.pending.entry(name.to_owned()).or_insert(Pending {
            place: None,
            reason: String::new(),
            next_try: Instant::now(),
            backoff: RECONCILE,
        });
        if first || p.reason != reason {
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

//! The enforcement thread: every instance's data plane, and the work on it.
//!
//! * Each instance's maps and links are pinned ([`crate::dataplane::pins`]):
//!   a killed agent leaves its instances enforced, and the next one adopts
//!   them, connection tables included, replacing the programs in place.
//! * A change is prepared in full (every namespace opened, every interface
//!   found, every new object loaded and filled) before anything changes;
//!   then each instance switches atomically, moved instances are attached at
//!   their new place before their old links go, and removed instances are
//!   detached last. A stop asked for while a change is prepared abandons it.
//! * A reconcile tick re-attaches instances whose interface (or namespace)
//!   was recreated, attaches instances whose interface appeared, and polls
//!   the rules file in case the watch missed a change.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{atomic::Ordering, mpsc::Receiver},
    time::{Duration, Instant},
};

use super::{AgentError, Command, Options, RECONCILE, StopFlag, service};
use crate::{
    config::{self, FileStamp, RulesFile, Vpc},
    dataplane::{
        Dataplane, DataplaneError, StateDir, conns,
        netns::NetnsGuard,
        pins::{PinError, place_here},
    },
    observe::{
        Observer, WallClock,
        status::{self, ReloadStatus, Status},
        unix_now,
    },
    policy::{
        Refusal, admit_as,
        compile::{CompiledInstance, CompiledPolicy},
        summary,
    },
};

/// Retries of an instance that could not be enforced back off up to this.
/// Lines of a reload's effective-rule diff in its log message, and rule
/// lines in its JSON record's `diff` field: enough to read a change, small
/// enough for a journal record (`sg-agent diff OLD NEW` prints all).
const DIFF_LINES_LOGGED: usize = 40;
const DIFF_RULES_RECORDED: usize = 1_000;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn on_instance(name: &str) -> impl FnOnce(DataplaneError) -> AgentError + '_ {
    move |source| AgentError::Instance {
        instance: name.to_owned(),
        source,
    }
}

/// Where an instance is enforced: (netns, interface).
type Place = (Option<String>, String);

fn describe((netns, ifname): &Place) -> String {
    match netns {
        Some(ns) => format!("{ifname} in netns {ns}"),
        None => ifname.clone(),
    }
}

fn place_of(i: &CompiledInstance) -> Option<Place> {
    Some((i.netns.clone(), i.interface.clone()?))
}

struct Enforced {
    place: Place,
    dataplane: Dataplane,
    /// When the interface was found gone or recreated, until re-attached.
    lost_since: Option<Instant>,
    /// The capacity of its connection table (its connection allowance).
    allowance: u32,
    /// When its expired connections were last reclaimed, and how many new
    /// flows the allowance had refused by then.
    reclaimed: (Instant, u64),
}

/// Expired connections are reclaimed this often...
const RECLAIM_EVERY: Duration = Duration::from_secs(10);
/// ...and as often as this while the allowance refuses new flows.
const RECLAIM_WHEN_FULL: Duration = Duration::from_secs(1);

/// An instance the file asks for that is not enforced yet: its namespace or
/// interface does not exist (a VM that boots later), or loading failed.
struct Pending {
    place: Place,
    reason: String,
    next_try: Instant,
    backoff: Duration,
}

/// Everything the agent enforces, by instance name.
struct Agent<'a> {
    /// How diagnostics and status name the rules: the file, or
    /// `etcd:PREFIX/vpc`.
    path: PathBuf,
    rules: Rules,
    opts: Options,
    state: StateDir,
    stop: &'a StopFlag,
    vpc: Vpc,
    compiled: Option<CompiledPolicy>,
    enforced: BTreeMap<String, Enforced>,
    pending: BTreeMap<String, Pending>,
    reloads: u64,
    /// The stamp of the file as last read (applied or not), or of the path
    /// when it could not be read: polling compares the path's with it.
    seen: Option<FileStamp>,
    /// Polling saw a change on the last tick that is not applied yet.
    poll_pending: bool,
    /// The digest of the file in force.
    in_force: [u8; 32],
    /// From etcd: the revision that wrote the description in force.
    in_force_revision: Option<i64>,
    /// How many times an enforced instance was found with nothing attached
    /// (its interface or namespace recreated).
    lapses: u64,
    /// Flow logs, rule hits, the drop log.
    observer: Observer,
    /// Unix seconds.
    started: u64,
    reloads_rejected: u64,
    last_reload: Option<ReloadStatus>,
    /// How long the last applied change took.
    last_apply: Duration,
}

/// Starts enforcing `path`, then serves the signal loop's commands until
/// told to stop.
pub(super) fn run(
    rules: Rules,
    opts: Options,
    queue: &Receiver<Command>,
    stop: &StopFlag,
) -> Result<(), AgentError> {
    let started = Instant::now();
    let path = rules.path();
    let path = path.as_path();
    let (file, revision) = rules.read(opts.read).map_err(AgentError::Config)?;
    let (vpc, compiled) = acceptable(path, &file, &opts)?;
    let state = StateDir::open(&opts.state_dir)?;
    let observer = Observer::new(
        opts.observe.flow_log.clone(),
        opts.observe.drop_log,
        opts.observe.records.clone(),
    )
    .map_err(|e| AgentError::Start("flow log", e))?;
    let mut agent = Agent {
        path: path.to_owned(),
        rules,
        opts,
        state,
        stop,
        vpc: Vpc::default(),
        compiled: None,
        enforced: BTreeMap::new(),
        pending: BTreeMap::new(),
        reloads: 0,
        seen: Some(file.stamp),
        poll_pending: false,
        in_force: file.sha256,
        in_force_revision: revision,
        lapses: 0,
        observer,
        started: unix_now(),
        reloads_rejected: 0,
        last_reload: None,
        last_apply: Duration::ZERO,
    };
    match agent.apply(vpc, compiled) {
        Ok(()) => {}
        Err(AgentError::Stopping) => {
            log::info!("stopped during start-up, before anything was attached");
            agent.stop();
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    agent.last_apply = started.elapsed();
    agent.detach_unknown_pins();
    agent.log_ready(&file, revision);
    service::ready(&agent.service_status());
    agent.serve(queue);
    Ok(())
}

/// The rules file as read, if it may be put in force: valid, and (unless
/// `allow_empty`) enforcing at least one instance. The same test at start
/// and on every reload.
/// `check` asks the very same question ([`crate::policy::admit`]).
fn acceptable(
    path: &Path,
    file: &RulesFile,
    opts: &Options,
) -> Result<(Vpc, CompiledPolicy), AgentError> {
    let started = Instant::now();
    let enforcer = crate::policy::Enforcer::Node(opts.node.as_deref());
    let (vpc, compiled) =
        admit_as(path, &file.text, opts.allow_empty, enforcer).map_err(|r| match r {
            // The daemon's log names file:line:col, the message and the hint,
            // never the file's lines (`check` shows them to the file's owner).
            Refusal::Invalid(d) => AgentError::Config(config::ConfigError::Invalid(d.brief())),
            Refusal::Empty(p) => AgentError::Empty(p),
            other @ Refusal::TooLarge { .. } => AgentError::Refused(other),
        })?;
    log::debug!(
        "parsed, validated and compiled in {} ms",
        started.elapsed().as_millis()
    );
    if let Some(warnings) = config::render_warnings(path, &file.text, &vpc, true) {
        log::warn!("accepted, as AWS accepts it:\n{warnings}");
    }
    Ok((vpc, compiled))
}

/// Where the rules come from.
pub enum Rules {
    /// A rules file on this host.
    File(PathBuf),
    /// etcd: the watch keeps the latest description in `state`.
    Etcd {
        opts: crate::source::etcd::EtcdOptions,
        state: crate::source::etcd::Shared,
    },
}

impl Rules {
    /// How diagnostics name the rules.
    pub fn path(&self) -> PathBuf {
        match self {
            Self::File(path) => path.clone(),
            Self::Etcd { opts, .. } => PathBuf::from(opts.display()),
        }
    }

    /// The rules as they are now, and (from etcd) the revision that wrote
    /// them; bounded as `policy` says, as a file is.
    fn read(
        &self,
        policy: config::ReadPolicy,
    ) -> Result<(RulesFile, Option<i64>), config::ConfigError> {
        use sha2::Digest as _;
        match self {
            Self::File(path) => config::read_with(path, policy).map(|f| (f, None)),
            Self::Etcd { opts, state } => {
                let latest = state.lock().expect("etcd state").latest.clone();
                let Some(snapshot) = latest else {
                    return Err(config::ConfigError::Read {
                        path: self.path(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("no description in etcd at {}", opts.key()),
                        ),
                    });
                };
                if snapshot.text.len() as u64 > policy.max_bytes {
                    return Err(config::ConfigError::TooLarge {
                        path: self.path(),
                        size: snapshot.text.len() as u64,
                        max: policy.max_bytes,
                    });
                }
                let sha256 = sha2::Sha256::digest(snapshot.text.as_bytes()).into();
                Ok((
                    RulesFile {
                        text: snapshot.text,
                        stamp: config::FileStamp::default(),
                        sha256,
                    },
                    Some(snapshot.mod_revision),
                ))
            }
        }
    }
}

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
    /// Its namespace or interface does not exist (yet): waited for.
    Wait(String),
}

impl Agent<'_> {
    /// Makes `vpc` the policy in force. Everything is prepared first (new
    /// objects loaded and filled, places checked); a failure there changes
    /// nothing. Then each instance switches atomically, and removed
    /// instances are detached last.
    fn apply(&mut self, vpc: Vpc, compiled: CompiledPolicy) -> Result<(), AgentError> {
        if self.stopping() {
            return Err(AgentError::Stopping);
        }
        let wanted: BTreeMap<String, (&CompiledInstance, Place)> = compiled
            .instances
            .iter()
            .filter_map(|i| Some((i.name.clone(), (i, place_of(i)?))))
            .collect();

        // Prepare.
        let mut steps: Vec<(String, Step)> = Vec::new();
        let mut renamed_from: Vec<String> = Vec::new();
        for (name, (inst, place)) in &wanted {
            let step = if let Some(e) = self.enforced.get(name) {
                if &e.place == place && e.allowance != inst.max_tracked_connections {
                    self.prepare_or_abandon(name, inst, &mut steps)
                        .map(|dp| Step::Resize(Box::new(dp)))?
                } else if &e.place == place {
                    Step::Publish
                } else if let Err(why) = place_exists(place) {
                    log::error!(
                        instance = name;
                        "instance {name}: cannot move to {} ({why}); it stays enforced on {}",
                        describe(place),
                        describe(&e.place)
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
            } else if let Err(why) = place_exists(place) {
                Step::Wait(why)
            } else {
                self.prepare_or_abandon(name, inst, &mut steps)
                    .map(|dp| Step::New(Box::new(dp)))?
            };
            steps.push((name.clone(), step));
        }

        // Commit: each step is atomic for the instance it concerns.
        let mut failures = Vec::new();
        for (name, step) in steps {
            let (inst, place) = &wanted[&name];
            let result = self.commit(&name, inst, place, step);
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
            let place = describe(&e.place);
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
    fn prepare_new(&self, name: &str, inst: &CompiledInstance) -> Result<Dataplane, AgentError> {
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
        place: &Place,
        step: Step,
    ) -> Result<(), AgentError> {
        let settings = inst.settings;
        match step {
            Step::Publish => {
                let e = self.enforced.get_mut(name).expect("enforced");
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
                let a = e
                    .dataplane
                    .attach(&to.1, to.0.as_deref(), self.opts.ingress)
                    .map_err(on_instance(name))?;
                log::info!(
                    instance = name;
                    "moved instance {name} from {} to {}: {} ingress ({}), TC egress",
                    describe(&e.place),
                    describe(&to),
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
                let result = e.dataplane.publish(&inst.tables, settings);
                self.enforced.insert(name.to_owned(), e);
                self.observer.rename(&old, name);
                result.map_err(on_instance(name))?;
                log::info!(
                    instance = name;
                    "renamed instance {old} to {name} on {}: links and connections kept",
                    describe(place)
                );
            }
            Step::New(dp) => {
                self.attach_new(name, place, *dp, inst.max_tracked_connections);
            }
            Step::Resize(dp) => {
                let from = self.enforced.get(name).map_or(0, |e| e.allowance);
                self.attach_new(name, place, *dp, inst.max_tracked_connections);
                log::info!(
                    instance = name;
                    "instance {name}: connection allowance {from} -> {}",
                    inst.max_tracked_connections
                );
            }
            Step::Wait(why) => {
                self.wait_for(name, place, why);
            }
        }
        Ok(())
    }

    fn attach_new(&mut self, name: &str, place: &Place, mut dp: Dataplane, allowance: u32) {
        let maps_adopted = dp.adopted();
        let result = dp
            .attach(&place.1, place.0.as_deref(), self.opts.ingress)
            .map(|a| (a.ingress, a.ingress_reason.clone(), a.adopted));
        match result {
            Ok((ingress, reason, links_adopted)) => {
                let how = match (links_adopted, maps_adopted) {
                    (true, _) => "; adopted its pinned links (program replaced in place) and maps",
                    (false, true) => "; adopted its pinned maps (connection table kept)",
                    (false, false) => "",
                };
                log::info!(
                    instance = name;
                    "attached instance {name} to {}: {ingress} ingress ({reason}), TC egress{how}",
                    describe(place),
                );
                self.pending.remove(name);
                self.enforced.insert(
                    name.to_owned(),
                    Enforced {
                        place: place.clone(),
                        dataplane: dp,
                        lost_since: None,
                        allowance,
                        reclaimed: (Instant::now(), 0),
                    },
                );
            }
            Err(e) => {
                let why = crate::cli::error_chain(&e);
                if !dp.adopted() {
                    let _ = dp.unpin();
                }
                self.wait_for(name, place, why);
            }
        }
    }

    fn wait_for(&mut self, name: &str, place: &Place, reason: String) {
        let first = !self.pending.contains_key(name);
        let p = self.pending.entry(name.to_owned()).or_insert(Pending {
            place: place.clone(),
            reason: String::new(),
            next_try: Instant::now(),
            backoff: RECONCILE,
        });
        if first || p.reason != reason {
            log::error!(
                instance = name;
                "instance {name} NOT ENFORCED on {}: {reason}; retrying",
                describe(place)
            );
        }
        p.place = place.clone();
        p.reason = reason;
        p.next_try = Instant::now() + p.backoff;
        p.backoff = (p.backoff * 2).min(MAX_BACKOFF);
    }

    /// Pinned instances the file does not name (left by an agent killed
    /// before a reload removed them): detached once everything the file
    /// names is in force.
    fn detach_unknown_pins(&mut self) {
        let Ok(pinned) = self.state.instances() else {
            return;
        };
        let named: Vec<&str> = self
            .vpc
            .instances
            .iter()
            .filter(|i| i.interface.is_some())
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

    /// Re-attaches instances whose interface was recreated, retries those
    /// not enforced, and reloads if the file changed unseen.
    fn reconcile(&mut self) {
        let ingress = self.opts.ingress;
        let lapses = &mut self.lapses;
        for (name, e) in &mut self.enforced {
            match e.dataplane.attached_place_current() {
                Some(true) => {}
                state => {
                    if e.lost_since.is_none() {
                        *lapses += 1;
                    }
                    let since = *e.lost_since.get_or_insert_with(Instant::now);
                    match e
                        .dataplane
                        .attach(&e.place.1, e.place.0.as_deref(), ingress)
                    {
                        Ok(_) => {
                            log::error!(
                                "instance {name}: {} was {}; programs attached again, the \
                                 interface was unprotected for at most {} ms (lapse {} since \
                                 start)",
                                describe(&e.place),
                                if state.is_none() { "gone" } else { "recreated" },
                                since.elapsed().as_millis() + RECONCILE.as_millis(),
                                *lapses
                            );
                            e.lost_since = None;
                        }
                        Err(err) if since.elapsed() < RECONCILE * 2 => log::error!(
                            instance = name;
                            "instance {name} NOT ENFORCED: {} is gone ({}); waiting for it",
                            describe(&e.place),
                            crate::cli::error_chain(&err)
                        ),
                        Err(_) => {}
                    }
                }
            }
        }
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.next_try <= Instant::now())
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let Some(compiled) = self.compiled.clone() else {
                break;
            };
            let Some(inst) = compiled.instances.iter().find(|i| i.name == name) else {
                self.pending.remove(&name);
                continue;
            };
            let place = self.pending[&name].place.clone();
            if let Err(why) = place_exists(&place) {
                self.wait_for(&name, &place, why);
                continue;
            }
            match self.prepare_new(&name, inst) {
                Ok(dp) => {
                    self.attach_new(&name, &place, dp, inst.max_tracked_connections);
                }
                Err(e) => self.wait_for(&name, &place, crate::cli::error_chain(&e)),
            }
        }
    }

    /// Gives the allowance back: removes expired connections of each
    /// instance every [`RECLAIM_EVERY`], and every [`RECLAIM_WHEN_FULL`]
    /// while its allowance refuses new flows.
    fn reclaim(&mut self) {
        let Some(compiled) = &self.compiled else {
            return;
        };
        let observer = &mut self.observer;
        for (name, e) in &mut self.enforced {
            let Some(inst) = compiled.instances.iter().find(|i| &i.name == name) else {
                continue;
            };
            let (last, refused_then) = e.reclaimed;
            let refused = e.dataplane.allowance_refusals();
            let due = last.elapsed() >= RECLAIM_EVERY
                || (refused != refused_then && last.elapsed() >= RECLAIM_WHEN_FULL);
            if !due {
                continue;
            }
            e.reclaimed = (Instant::now(), refused);
            let clock = WallClock::now(conns::program_now());
            match e.dataplane.reclaim_expired(&inst.settings) {
                Ok(r) => {
                    observer.reclaimed(name, &r.gone, &clock);
                    if refused != refused_then {
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
                    crate::cli::error_chain(&err)
                ),
            }
        }
    }

    /// Drains every instance's events into the observer; at the end of a
    /// flow-log interval, reads the connection tables and writes the
    /// interval's records.
    fn observe(&mut self) {
        let enforced = &self.enforced;
        self.observer.retain(&|name| enforced.contains_key(name));
        let clock = WallClock::now(conns::program_now());
        let mut events = Vec::new();
        for (name, e) in &mut self.enforced {
            if self.observer.needs_priming(name) {
                match e.dataplane.connections() {
                    Ok(entries) => self.observer.prime(name, &entries, &clock),
                    Err(err) => log::warn!(
                        instance = name;
                        "instance {name}: reading its connections: {}",
                        crate::cli::error_chain(&err)
                    ),
                }
            }
            events.clear();
            e.dataplane.drain_events(&mut events);
            self.observer.ingest(&self.vpc, name, &events, &clock);
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
                    crate::cli::error_chain(&err)
                ),
            }
            let lost = e.dataplane.events_lost().unwrap_or(0);
            records.extend(
                self.observer
                    .close_instance(name, &interface_id(&e.place), lost),
            );
        }
        self.observer.publish(&records);
    }

    /// A snapshot of everything `sg-agent status` and the metrics show.
    fn status(&self) -> Status {
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
        });
        let agent = status::AgentStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            started: self.started,
            rules_file: self.path.display().to_string(),
            sha256: self.in_force.iter().fold(String::new(), |mut hex, b| {
                let _ = std::fmt::Write::write_fmt(&mut hex, format_args!("{b:02x}"));
                hex
            }),
            reloads: self.reloads - self.reloads_rejected.min(self.reloads),
            reloads_rejected: self.reloads_rejected,
            last_reload: self.last_reload.clone(),
            last_apply_seconds: self.last_apply.as_secs_f64(),
            flow_log,
            lapses: self.lapses,
            node: self.opts.node.clone(),
            etcd: match &self.rules {
                Rules::File(_) => None,
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
        };
        let mut instances: Vec<status::InstanceStatus> = self
            .enforced
            .iter()
            .map(|(name, e)| self.instance_status(name, e))
            .collect();
        for (name, p) in &self.pending {
            instances.push(status::InstanceStatus {
                name: name.clone(),
                netns: p.place.0.clone(),
                interface: p.place.1.clone(),
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
        }
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
        status::InstanceStatus {
            name: name.to_owned(),
            netns: e.place.0.clone(),
            interface: e.place.1.clone(),
            state: if e.lost_since.is_some() {
                "lost".into()
            } else {
                "enforced".into()
            },
            waiting_reason: None,
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
            },
            events_lost: dp.events_lost().unwrap_or(0),
            new_flows: view.map_or(0, |v| v.new_flows),
            rules,
        }
    }

    fn stopping(&self) -> bool {
        self.stop.asked.load(Ordering::SeqCst)
    }

    /// Reads the file once and applies what was read. A change of stamp
    /// whose bytes are those in force is no change, unless `forced`
    /// (SIGHUP: apply again, retrying what is not enforced).
    /// A reload, between systemd's RELOADING=1 and READY=1.
    fn reload(&mut self, why: &str, forced: bool) {
        service::reloading();
        self.reload_once(why, forced);
        service::ready(&self.service_status());
    }

    /// What systemd shows as the service's status.
    fn service_status(&self) -> String {
        use std::fmt::Write as _;
        let mut line = format!("enforcing {} instance(s)", self.enforced.len());
        if !self.pending.is_empty() {
            let waiting: Vec<&str> = self.pending.keys().map(String::as_str).collect();
            let _ = write!(line, "; waiting for {}", waiting.join(", "));
        }
        if let Some(r) = &self.last_reload {
            let first = r
                .error
                .as_deref()
                .and_then(|e| e.lines().find(|l| !l.trim().is_empty()))
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            let _ = write!(line, "; last reload ({}) {}{first}", r.trigger, r.result);
        }
        line
    }

    fn reload_once(&mut self, why: &str, forced: bool) {
        let started = Instant::now();
        let read = self.rules.read(self.opts.read);
        // From etcd: the revision read, which may be newer than the one
        // that triggered the reload (changes coalesce).
        let why_owned;
        let why = match &read {
            Ok((_, Some(revision))) => {
                why_owned = format!("{why} revision {revision}");
                why_owned.as_str()
            }
            _ => why,
        };
        let (file, revision) = match read {
            Ok(read) => read,
            Err(e) => {
                self.seen = FileStamp::of_path(&self.path);
                self.reloads += 1;
                log::error!(
                    reload = self.reloads, trigger = why, result = "rejected";
                    "reload #{} ({why}) rejected, the running policy stays in force: {e}",
                    self.reloads
                );
                self.note_reload(why, started, "rejected", Some(e.to_string()));
                return;
            }
        };
        self.seen = Some(file.stamp);
        if !forced && file.sha256 == self.in_force {
            log::debug!("{why}: same content as the policy in force, nothing to do");
            return;
        }
        self.reloads += 1;
        let n = self.reloads;
        let (vpc, compiled) = match acceptable(&self.path, &file, &self.opts) {
            Ok(v) => v,
            Err(e) => {
                // Diagnostics start on a line of their own.
                let why_not = match e {
                    AgentError::Config(config::ConfigError::Invalid(d)) => format!("\n{d}"),
                    other => format!(" {other}"),
                };
                log::error!(
                    reload = n, trigger = why, result = "rejected";
                    "reload #{n} ({why}) rejected, the running policy stays in force:{why_not}"
                );
                self.note_reload(why, started, "rejected", Some(why_not.trim().to_owned()));
                return;
            }
        };
        log::debug!(
            "reload #{n}: parsed, validated and compiled in {} ms",
            started.elapsed().as_millis()
        );
        let old = self.vpc.clone();
        match self.apply(vpc, compiled) {
            Ok(()) => {
                let result = if self.in_force == file.sha256 {
                    "unchanged"
                } else {
                    "applied"
                };
                self.in_force = file.sha256;
                self.in_force_revision = revision;
                self.last_apply = started.elapsed();
                let took = started.elapsed().as_millis();
                // Summarised after the swap: the log record never delays
                // enforcement. It carries the effective-rule diff that
                // `sg-agent diff OLD NEW` prints (a bounded excerpt in the
                // message, all of it in the JSON record's `diff` field).
                let changes = summary::changes(&old, &self.vpc);
                let effective = crate::policy::diff::diff(&old, &self.vpc);
                let excerpt = crate::policy::diff::excerpt(&effective, DIFF_LINES_LOGGED);
                let (diff, diff_omitted) =
                    crate::policy::diff::bounded(&effective, DIFF_RULES_RECORDED);
                log::info!(
                    reload = n, trigger = why, result = result, duration_ms = took,
                    diff:serde = diff, diff_omitted = diff_omitted;
                    "reload #{n} ({why}) applied in {took} ms: {changes}{excerpt}"
                );
                self.note_reload(why, started, result, None);
            }
            Err(AgentError::Stopping) => {
                log::info!("reload #{n} ({why}) abandoned to stop: nothing changed");
            }
            Err(e) => {
                let e = crate::cli::error_chain(&e);
                log::error!(
                    reload = n, trigger = why, result = "rejected";
                    "reload #{n} ({why}) rejected, nothing changed: {e}"
                );
                self.note_reload(why, started, "rejected", Some(e));
            }
        }
    }

    /// Remembers a reload's outcome for `status` and the metrics.
    fn note_reload(&mut self, why: &str, started: Instant, result: &str, error: Option<String>) {
        if result == "rejected" {
            self.reloads_rejected += 1;
        }
        self.last_reload = Some(ReloadStatus {
            time: unix_now(),
            trigger: why.to_owned(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            result: result.to_owned(),
            error,
        });
    }

    /// Polls the rules file. With the watch running, polling is only its
    /// fallback: a change is reloaded from here when it is still not
    /// applied a tick after polling first saw it (the watch, debounced,
    /// takes a few tens of milliseconds), so each change is reloaded once,
    /// by the watch when it works.
    fn poll(&mut self, watched: bool) {
        if matches!(self.rules, Rules::Etcd { .. }) {
            // etcd's watch tells; losing it re-reads the whole description.
            return;
        }
        if FileStamp::of_path(&self.path) == self.seen {
            self.poll_pending = false;
        } else if watched && !self.poll_pending {
            self.poll_pending = true;
        } else {
            self.poll_pending = false;
            self.reload("file changed (seen by polling)", false);
        }
    }

    fn log_ready(&self, file: &RulesFile, revision: Option<i64>) {
        log::info!(
            instances = self.enforced.len(), waiting = self.pending.len(), revision = revision;
            "ready: enforcing {} instance(s) from {}{} (sha256 {}){}",
            self.enforced.len(),
            self.path.display(),
            revision.map_or_else(String::new, |r| format!(" at revision {r}")),
            &file.sha256_hex()[..12],
            if self.pending.is_empty() {
                String::new()
            } else {
                format!(
                    "; NOT ENFORCED yet: {}",
                    self.pending.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        );
    }

    /// Serves the signal loop's commands until it asks to stop. Commands
    /// that queued up while one ran are taken together: one reload, one
    /// tick.
    fn serve(&mut self, queue: &Receiver<Command>) {
        while let Ok(first) = queue.recv() {
            let mut reload: Option<(&'static str, bool)> = None;
            let mut tick: Option<bool> = None;
            let (mut observe, mut stop) = (false, false);
            let mut asked = Vec::new();
            for command in std::iter::once(first).chain(queue.try_iter()) {
                match command {
                    Command::Reload { why, forced } => {
                        let f = reload.is_some_and(|(_, f)| f);
                        reload = Some((why, forced || f));
                    }
                    Command::Tick { watched } => tick = Some(watched),
                    Command::Observe => observe = true,
                    Command::Status(reply) => asked.push(reply),
                    Command::Stop => stop = true,
                }
            }
            if stop || self.stopping() {
                break;
            }
            if let Some((why, forced)) = reload {
                self.reload(why, forced);
            }
            if let Some(watched) = tick {
                self.reconcile();
                self.reclaim();
                if self.opts.watch {
                    self.poll(watched);
                }
            }
            if observe {
                self.observe();
            }
            if !asked.is_empty() {
                let status = self.status();
                for reply in asked {
                    let _ = reply.send(status.clone());
                }
            }
        }
        self.stop();
    }

    /// On SIGINT/SIGTERM: detach and unpin everything, unless
    /// `--keep-on-exit` leaves it all enforced for the next agent.
    fn stop(&mut self) {
        self.stop.begun.notify_one();
        service::stopping();
        let n = self.enforced.len();
        if self.opts.keep_on_exit {
            log::info!(
                "stopped: {n} instance(s) left enforced, pinned under {} (--keep-on-exit)",
                self.state.root().display()
            );
            return;
        }
        for (name, e) in std::mem::take(&mut self.enforced) {
            if let Err(err) = e.dataplane.unpin() {
                log::error!(
                    instance = name;
                    "detaching instance {name}: {}",
                    crate::cli::error_chain(&err)
                );
            }
        }
        let _ = std::fs::remove_dir(self.state.root());
        log::info!("stopped: detached {n} instance(s)");
    }
}

/// A flow-log record's `interface-id`: the interface, qualified by its
/// namespace (interface names repeat across namespaces).
fn interface_id((netns, ifname): &Place) -> String {
    match netns {
        Some(ns) => format!("{ns}/{ifname}"),
        None => ifname.clone(),
    }
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
                });
            }
        }
    }
    rows
}

/// Whether the namespace and interface exist, and if not, why.
fn place_exists((netns, ifname): &Place) -> Result<(), String> {
    let _guard = NetnsGuard::enter_opt(netns.as_deref()).map_err(|e| e.to_string())?;
    place_here(ifname)
        .map(|_| ())
        .map_err(|e| format!("interface {ifname}: {e}"))
}

/// `sg-agent detach`: removes pinned state an agent left (killed, or
/// stopped with `--keep-on-exit`): the programs detach, the maps go.
pub fn detach(state_dir: &Path, instance: Option<&str>) -> Result<Vec<String>, PinError> {
    if !state_dir.exists() {
        return Ok(Vec::new());
    }
    let state = StateDir::open(state_dir)?;
    let names = match instance {
        Some(name) => vec![name.to_owned()],
        None => state.instances()?,
    };
    let mut done = Vec::new();
    for name in names {
        let pins = state.instance(&name);
        if pins.exists() {
            pins.remove()?;
            done.push(name);
        }
    }
    if instance.is_none() {
        let _ = std::fs::remove_dir(state.root());
    }
    Ok(done)
}

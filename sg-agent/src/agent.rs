//! `sg-agent run`: enforce the rules file until told to stop, and never let
//! enforcement lapse.
//!
//! * Each instance's maps and links are pinned ([`crate::dataplane::pins`]):
//!   a killed agent leaves its instances enforced, and the next one adopts
//!   them, connection tables included, replacing the programs in place.
//! * A change is prepared in full (every namespace opened, every interface
//!   found, every new object loaded and filled) before anything changes;
//!   then each instance switches atomically, moved instances are attached at
//!   their new place before their old links go, and removed instances are
//!   detached last.
//! * A reconcile tick re-attaches instances whose interface (or namespace)
//!   was recreated, attaches instances whose interface appeared, and polls
//!   the rules file (inode, size, mtime) in case inotify missed a change.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
};

use crate::{
    config::{self, ConfigError, Vpc},
    dataplane::{
        Dataplane, DataplaneError, IngressHook, StateDir,
        netns::NetnsGuard,
        pins::{PinError, place_here},
    },
    policy::{
        compile::{CompiledInstance, CompiledPolicy, compile},
        summary,
    },
    source::watch::{WatchError, watch_file},
};

/// Bursts of file events within this window make one reload.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// How often interfaces and the rules file are checked.
const RECONCILE: Duration = Duration::from_millis(250);
/// Retries of an instance that could not be enforced back off up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The rules file at start; its diagnostics say where.
    #[error("{0}\nnothing attached")]
    Config(ConfigError),
    #[error(
        "{} enforces no instance (no [[instance]] with an `interface`): refused, since it would \
         leave every interface unfiltered; pass --allow-empty if that is what you want",
        .0.display()
    )]
    Empty(PathBuf),
    #[error("instance {instance}: {source}")]
    Instance {
        instance: String,
        #[source]
        source: DataplaneError,
    },
    #[error(transparent)]
    State(#[from] PinError),
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("starting the event loop: {0}")]
    Runtime(#[source] std::io::Error),
}

fn on_instance(name: &str) -> impl FnOnce(DataplaneError) -> AgentError + '_ {
    move |source| AgentError::Instance {
        instance: name.to_owned(),
        source,
    }
}

/// How the agent runs, from the command line.
#[derive(Clone, Debug)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent command-line switches"
)]
pub struct Options {
    /// Reload when the file changes (SIGHUP always reloads).
    pub watch: bool,
    pub ingress: IngressHook,
    /// Forward the eBPF programs' debug records (one per dropped packet).
    pub ebpf_log: bool,
    /// Where maps and links are pinned.
    pub state_dir: PathBuf,
    /// On SIGINT/SIGTERM leave everything attached and pinned (for
    /// restarts and upgrades without a gap).
    pub keep_on_exit: bool,
    /// Accept a rules file that enforces no instance.
    pub allow_empty: bool,
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
}

/// An instance the file asks for that is not enforced yet: its namespace or
/// interface does not exist (a VM that boots later), or loading failed.
struct Pending {
    place: Place,
    reason: String,
    next_try: Instant,
    backoff: Duration,
}

/// Everything the agent enforces, by instance name.
struct Agent {
    path: PathBuf,
    opts: Options,
    state: StateDir,
    vpc: Vpc,
    compiled: Option<CompiledPolicy>,
    enforced: BTreeMap<String, Enforced>,
    pending: BTreeMap<String, Pending>,
    reloads: u64,
    file_stamp: Option<FileStamp>,
}

/// What polling compares to tell the rules file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

fn file_stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

struct Signals {
    hup: Signal,
    int: Signal,
    term: Signal,
}

pub fn run(path: &Path, opts: Options) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(async {
        // Before anything is loaded: a SIGHUP or SIGTERM during start-up is
        // queued, not fatal.
        let signals = Signals {
            hup: signal(SignalKind::hangup()).map_err(AgentError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(AgentError::Signals)?,
            term: signal(SignalKind::terminate()).map_err(AgentError::Signals)?,
        };
        // The watch too: a change made during start-up is not missed.
        let changes = if opts.watch {
            Some(watch_file(path)?)
        } else {
            None
        };
        let file_stamp = file_stamp(path);
        let vpc = config::load(path).map_err(AgentError::Config)?;
        if !opts.allow_empty && enforced_count(&vpc) == 0 {
            return Err(AgentError::Empty(path.to_owned()));
        }
        let state = StateDir::open(&opts.state_dir)?;
        let mut agent = Agent {
            path: path.to_owned(),
            opts,
            state,
            vpc: Vpc::default(),
            compiled: None,
            enforced: BTreeMap::new(),
            pending: BTreeMap::new(),
            reloads: 0,
            file_stamp,
        };
        agent.apply(vpc)?;
        agent.detach_unknown_pins();
        let result = agent.watch(signals, changes).await;
        agent.stop();
        result
    })
}

fn enforced_count(vpc: &Vpc) -> usize {
    vpc.instances
        .iter()
        .filter(|i| i.interface.is_some())
        .count()
}

/// What a prepared change does to one instance.
enum Step {
    /// Same place: swap its policy.
    Publish,
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

impl Agent {
    /// Makes `vpc` the policy in force. Everything is prepared first (new
    /// objects loaded and filled, places checked); a failure there changes
    /// nothing. Then each instance switches atomically, and removed
    /// instances are detached last.
    fn apply(&mut self, vpc: Vpc) -> Result<(), AgentError> {
        let started = Instant::now();
        let compiled = compile(&vpc);
        log::debug!("compiled in {} ms", started.elapsed().as_millis());
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
                if &e.place == place {
                    Step::Publish
                } else if let Err(why) = place_exists(place) {
                    log::error!(
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
                match self.prepare_new(name, inst, compiled.settings) {
                    Ok(dp) => Step::New(Box::new(dp)),
                    Err(e) => {
                        // Nothing has changed yet: drop what was prepared.
                        for (n, step) in steps {
                            if let Step::New(dp) = step {
                                Self::forget_prepared(&n, *dp);
                            }
                        }
                        return Err(e);
                    }
                }
            };
            steps.push((name.clone(), step));
        }

        // Commit: each step is atomic for the instance it concerns.
        let mut failures = Vec::new();
        for (name, step) in steps {
            let (inst, place) = &wanted[&name];
            let result = self.commit(&name, inst, place, step, compiled.settings);
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
                Ok(()) => log::info!("detached instance {name} from {place}"),
                Err(e) => log::error!("detaching instance {name}: {}", crate::cli::error_chain(&e)),
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

    /// Loads a new instance's object (adopting what an earlier agent pinned
    /// for it) and fills its policy; nothing is attached.
    fn prepare_new(
        &self,
        name: &str,
        inst: &CompiledInstance,
        settings: sg_common::policy::Settings,
    ) -> Result<Dataplane, AgentError> {
        let pins = self.state.instance(name);
        let existed = pins.exists();
        let mut dp = Dataplane::load_pinned(pins.clone(), self.opts.ebpf_log).map_err(|e| {
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
            log::warn!("instance {name}: {}", crate::cli::error_chain(&e));
        }
    }

    fn commit(
        &mut self,
        name: &str,
        inst: &CompiledInstance,
        place: &Place,
        step: Step,
        settings: sg_common::policy::Settings,
    ) -> Result<(), AgentError> {
        match step {
            Step::Publish => {
                let e = self.enforced.get_mut(name).expect("enforced");
                if e.dataplane
                    .publish(&inst.tables, settings)
                    .map_err(on_instance(name))?
                {
                    log::info!(
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
                    "moved instance {name} from {} to {}: {} ingress, TC egress",
                    describe(&e.place),
                    describe(&to),
                    a.ingress
                );
                e.place = to;
            }
            Step::Rename(old) => {
                let mut e = self.enforced.remove(&old).expect("enforced");
                if let Err(err) = e.dataplane.rename_pins(&self.state.instance(name)) {
                    log::error!(
                        "instance {name} (was {old}): {}; its pins stay under the old name",
                        crate::cli::error_chain(&err)
                    );
                }
                let result = e.dataplane.publish(&inst.tables, settings);
                self.enforced.insert(name.to_owned(), e);
                result.map_err(on_instance(name))?;
                log::info!(
                    "renamed instance {old} to {name} on {}: links and connections kept",
                    describe(place)
                );
            }
            Step::New(dp) => {
                self.attach_new(name, place, *dp);
            }
            Step::Wait(why) => {
                self.wait_for(name, place, why);
            }
        }
        Ok(())
    }

    fn attach_new(&mut self, name: &str, place: &Place, mut dp: Dataplane) {
        let maps_adopted = dp.adopted();
        let result = dp
            .attach(&place.1, place.0.as_deref(), self.opts.ingress)
            .map(|a| (a.ingress, a.adopted));
        match result {
            Ok((ingress, links_adopted)) => {
                let how = match (links_adopted, maps_adopted) {
                    (true, _) => "; adopted its pinned links (program replaced in place) and maps",
                    (false, true) => "; adopted its pinned maps (connection table kept)",
                    (false, false) => "",
                };
                log::info!(
                    "attached instance {name} to {}: {ingress} ingress, TC egress{how}",
                    describe(place),
                );
                self.pending.remove(name);
                self.enforced.insert(
                    name.to_owned(),
                    Enforced {
                        place: place.clone(),
                        dataplane: dp,
                        lost_since: None,
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
                    Ok(()) => log::info!("detached pinned instance {name}: not in the rules file"),
                    Err(e) => log::error!("detaching pinned instance {name}: {e}"),
                }
            }
        }
    }

    /// Re-attaches instances whose interface was recreated, retries those
    /// not enforced, and reloads if the file changed unseen.
    fn reconcile(&mut self) {
        let ingress = self.opts.ingress;
        for (name, e) in &mut self.enforced {
            match e.dataplane.attached_place_current() {
                Some(true) => {}
                state => {
                    let since = *e.lost_since.get_or_insert_with(Instant::now);
                    match e
                        .dataplane
                        .attach(&e.place.1, e.place.0.as_deref(), ingress)
                    {
                        Ok(_) => {
                            log::error!(
                                "instance {name}: {} was {}; programs attached again, the \
                                 interface was unprotected for at most {} ms",
                                describe(&e.place),
                                if state.is_none() { "gone" } else { "recreated" },
                                since.elapsed().as_millis() + RECONCILE.as_millis()
                            );
                            e.lost_since = None;
                        }
                        Err(err) if since.elapsed() < RECONCILE * 2 => log::error!(
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
            match self.prepare_new(&name, inst, compiled.settings) {
                Ok(dp) => {
                    self.attach_new(&name, &place, dp);
                }
                Err(e) => self.wait_for(&name, &place, crate::cli::error_chain(&e)),
            }
        }
    }

    fn reload(&mut self, why: &str) {
        let started = Instant::now();
        self.reloads += 1;
        let n = self.reloads;
        self.file_stamp = file_stamp(&self.path);
        let vpc = match config::load(&self.path) {
            Ok(v) => v,
            Err(e) => {
                log::error!(
                    "reload #{n} ({why}) rejected, the running policy stays in force:\n{e}"
                );
                return;
            }
        };
        if !self.opts.allow_empty && enforced_count(&vpc) == 0 {
            log::error!(
                "reload #{n} ({why}) rejected, the running policy stays in force: {}",
                AgentError::Empty(self.path.clone())
            );
            return;
        }
        log::debug!(
            "reload #{n}: parsed and validated in {} ms",
            started.elapsed().as_millis()
        );
        let old = self.vpc.clone();
        match self.apply(vpc) {
            Ok(()) => {
                let took = started.elapsed().as_millis();
                // Summarised after the swap: the log line never delays
                // enforcement.
                let changes = summary::changes(&old, &self.vpc);
                log::info!("reload #{n} ({why}) applied in {took} ms: {changes}");
            }
            Err(e) => log::error!(
                "reload #{n} ({why}) rejected, nothing changed: {}",
                crate::cli::error_chain(&e)
            ),
        }
    }

    async fn watch(
        &mut self,
        mut signals: Signals,
        changes: Option<mpsc::UnboundedReceiver<()>>,
    ) -> Result<(), AgentError> {
        // Without a watch, a channel that never delivers.
        let (_keep, mut changes) = if let Some(rx) = changes {
            (None, rx)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), rx)
        };
        log::info!(
            "ready: enforcing {} instance(s) from {}{}",
            self.enforced.len(),
            self.path.display(),
            if self.pending.is_empty() {
                String::new()
            } else {
                format!(
                    "; NOT ENFORCED yet: {}",
                    self.pending.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        );
        // Only ticks when --ebpf-log asked for the eBPF side's records.
        let mut log_tick = tokio::time::interval(Duration::from_millis(100));
        let mut reconcile = tokio::time::interval(RECONCILE);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = log_tick.tick(), if self.opts.ebpf_log => {
                    for e in self.enforced.values_mut() {
                        e.dataplane.flush_logs();
                    }
                }
                _ = signals.hup.recv() => self.reload("SIGHUP"),
                _ = signals.int.recv() => return Ok(()),
                _ = signals.term.recv() => return Ok(()),
                Some(()) = changes.recv() => {
                    // Debounce: editors write, rename and chmod in bursts.
                    tokio::time::sleep(DEBOUNCE).await;
                    while changes.try_recv().is_ok() {}
                    self.reload("file changed");
                }
                _ = reconcile.tick() => {
                    self.reconcile();
                    if self.opts.watch && file_stamp(&self.path) != self.file_stamp {
                        self.reload("file changed (seen by polling)");
                    }
                }
            }
        }
    }

    /// On SIGINT/SIGTERM: detach and unpin everything, unless
    /// `--keep-on-exit` leaves it all enforced for the next agent.
    fn stop(&mut self) {
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
                    "detaching instance {name}: {}",
                    crate::cli::error_chain(&err)
                );
            }
        }
        let _ = std::fs::remove_dir(self.state.root());
        log::info!("stopped: detached {n} instance(s)");
    }
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

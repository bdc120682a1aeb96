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

mod apply;
mod confirm;
mod macs;
mod place;
mod reconcile;
mod reload;
mod report;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{atomic::Ordering, mpsc::Receiver},
    time::{Duration, Instant},
};

use super::{AgentError, Command, Options, StopFlag, service};
use crate::{
    config::{self, FileStamp, RulesFile, Vpc},
    dataplane::{Dataplane, DataplaneError, StateDir, pins::PinError},
    libvirt::overlay::{self, Running},
    observe::{Observer, status::ReloadStatus, unix_now},
    policy::{Refusal, admit_overlaid, compile::CompiledPolicy},
    source::links::Namespace,
};
pub use confirm::store_path as confirmed_policy_path;
use place::{Domains, Place};

/// Lines of a reload's effective-rule diff in its log message, and rule
/// lines in its JSON record's `diff` field: enough to read a change, small
/// enough for a journal record (`sg-agent diff OLD NEW` prints all).
const DIFF_LINES_LOGGED: usize = 40;
const DIFF_RULES_RECORDED: usize = 1_000;

/// Retries of an instance that could not be enforced back off up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

fn on_instance(name: &str) -> impl FnOnce(DataplaneError) -> AgentError + '_ {
    move |source| AgentError::Instance {
        instance: name.to_owned(),
        source,
    }
}

struct Enforced {
    place: Place,
    dataplane: Dataplane,
    /// From when its interface may have been there without its programs
    /// (recreated), until they are attached again.
    lost_since: Option<Instant>,
    /// Why it is not enforced now though nothing is unprotected: its
    /// interface is gone (a VM stopped, a container removed), or its
    /// libvirt domain is not running; enforced again as it comes back.
    stopped: Option<String>,
    /// Its libvirt domain stopped as its hook said: the hook is installed,
    /// so its next start is announced and attached before the guest runs,
    /// whichever of the hook and the tap's link event comes first (no
    /// lapse).
    hook_stopped: bool,
    /// When its interface was last found enforced (or gone): a recreated
    /// interface was unprotected for at most the time since.
    checked: Instant,
    /// The capacity of its connection table (its connection allowance).
    allowance: u32,
    /// A smaller allowance the table is draining to: it held more
    /// connections than that when the allowance was lowered, so it keeps
    /// its capacity and refuses new flows until no more remain, then is
    /// resized (no established connection is evicted).
    shrinking_to: Option<u32>,
    /// When its expired connections were last reclaimed, and how many new
    /// flows the allowance had refused by then.
    reclaimed: (Instant, u64),
    /// Its MAC address as its guest taught it, and what it may not learn.
    macs: macs::MacGuard,
    /// Which namespace its `netns_path` named when it was attached: only
    /// that one is enforced again (a PID reused after its container died
    /// names another).
    netns_id: Option<crate::dataplane::netns::NetnsId>,
    /// Why the place the rules now give it cannot be used (a libvirt
    /// domain with no NIC of the file's `libvirt_mac`, a namespace that
    /// does not exist): it stays enforced where it is, with the new rules,
    /// and status says so.
    unapplied: Option<String>,
}

/// What of libvirt is in force: the files read, their stamp when last
/// read, the signature of what they said, and the domains whose metadata
/// made no instance (why).
#[derive(Default)]
struct Libvirt {
    dirs: overlay::Dirs,
    stamp: overlay::Stamp,
    in_force: String,
    problems: BTreeMap<String, String>,
}

/// An instance the file asks for that is not enforced yet: its namespace or
/// interface does not exist (a VM that boots later), its libvirt domain is
/// not running (`place` unknown), or loading failed.
struct Pending {
    place: Option<Place>,
    reason: String,
    next_try: Instant,
    backoff: Duration,
    /// Its object, loaded, verified and filled with its policy while it
    /// waits (by the change that made it wait), so that its interface is
    /// enforced as soon as it appears, not a verification later.
    prepared: Option<Box<Dataplane>>,
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
    /// The text of the policy in force (what `--confirm-within` keeps once
    /// confirmed).
    in_force_text: String,
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
    /// What libvirt's hook told of domains as they started.
    domains: Domains,
    /// What libvirt's domains bring to the description (their metadata's
    /// instances, libvirt's addresses), as in force.
    libvirt: Libvirt,
    /// A start or reload that `--confirm-within` rolls back unless
    /// confirmed.
    unconfirmed: Option<confirm::Unconfirmed>,
    /// The MAC addresses the rules file in force gives its instances.
    configured_macs: BTreeMap<[u8; 6], String>,
    /// The namespaces whose link events wake the agent (`None`: no link
    /// watch, in tests).
    links: Option<tokio::sync::watch::Sender<BTreeSet<Namespace>>>,
}

/// Starts enforcing `path`, then serves the signal loop's commands until
/// told to stop.
pub(super) fn run(
    rules: Rules,
    opts: Options,
    queue: &Receiver<Command>,
    stop: &StopFlag,
    links: tokio::sync::watch::Sender<BTreeSet<Namespace>>,
) -> Result<(), AgentError> {
    let started = Instant::now();
    let path = rules.path();
    let path = path.as_path();
    let (file, revision) = rules.read(opts.read).map_err(AgentError::Config)?;
    let mut libvirt = Libvirt::default();
    let running = Running::read(&libvirt.dirs, &BTreeMap::new());
    let (vpc, compiled) = acceptable(path, &file, &opts, &running, &mut libvirt.problems)?;
    libvirt.in_force = running.signature();
    let cut = crate::agent::lockout::cut(&vpc, &crate::agent::lockout::sessions());
    if !cut.is_empty() {
        if !opts.accept.cut_ssh {
            return Err(AgentError::Lockout(cut.join("\n")));
        }
        log::warn!(
            "--force: starting though it cuts SSH sessions:\n{}",
            cut.join("\n")
        );
    }
    let state = StateDir::open_locked(&opts.state_dir)?;
    let observer = Observer::new(
        opts.observe.flow_log.clone(),
        opts.observe.drop_log,
        opts.observe.records.clone(),
        opts.observe.live.clone(),
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
        in_force_text: file.text.clone(),
        in_force_revision: revision,
        lapses: 0,
        observer,
        started: unix_now(),
        reloads_rejected: 0,
        last_reload: None,
        last_apply: Duration::ZERO,
        domains: Domains::default(),
        libvirt,
        unconfirmed: None,
        configured_macs: BTreeMap::new(),
        links: Some(links),
    };
    match agent.apply(vpc, compiled) {
        Ok(()) => {}
        Err(AgentError::Stopping) => {
            if agent.opts.keep_on_exit {
                log::info!(
                    "stopped during start-up: the instances attached so far stay enforced \
                     (pinned, --keep-on-exit) for the next agent"
                );
            } else {
                log::info!("stopped during start-up: nothing it attached is left attached");
            }
            agent.stop();
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    agent.last_apply = started.elapsed();
    agent.detach_unknown_pins();
    agent.log_ready(&file, revision);
    agent.await_confirmation(None);
    service::ready(&agent.service_status());
    agent.serve(queue);
    Ok(())
}

/// The rules file as read, if it may be put in force: valid, and (unless
/// `allow_empty`) enforcing at least one instance. The same test at start
/// and on every reload.
/// `check` asks the very same question ([`crate::policy::admit`]).
///
/// `running`: what libvirt says of the domains on this host, laid over the
/// file (`libvirt::overlay`); the domains whose metadata made no instance
/// are said, and kept in `problems`.
fn acceptable(
    path: &Path,
    file: &RulesFile,
    opts: &Options,
    running: &Running,
    problems: &mut BTreeMap<String, String>,
) -> Result<(Vpc, CompiledPolicy), AgentError> {
    let started = Instant::now();
    let enforcer = crate::policy::Enforcer::Node(opts.node.as_deref());
    let at = overlay::Place {
        node: opts.node.as_deref(),
        netns: opts.libvirt_netns.as_deref(),
    };
    let mut found = BTreeMap::new();
    let admitted = admit_overlaid(path, &file.text, opts.accept.empty, enforcer, |vpc| {
        found = overlay::overlay(vpc, running, &at);
    });
    for (domain, why) in &found {
        if problems.get(domain) != Some(why) {
            log::error!("libvirt domain {domain} is no instance: {why}");
        }
    }
    *problems = found;
    let (vpc, compiled) = admitted.map_err(|r| match r {
        // The daemon's log names file:line:col, the message and the hint,
        // never the file's lines (`check` shows them to the file's owner).
        Refusal::Invalid(d) => AgentError::Config(config::ConfigError::Invalid(d.brief())),
        Refusal::Empty(p) => AgentError::Empty(p),
        other @ (Refusal::TooLarge { .. } | Refusal::Place { .. }) => AgentError::Refused(other),
    })?;
    log::debug!(
        "parsed, validated and compiled in {} ms",
        started.elapsed().as_millis()
    );
    if let Some(limits) = &opts.remote {
        limits.check_places(&vpc).map_err(AgentError::Remote)?;
    }
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
    /// A rules file whose groups and prefix lists come from another EC2
    /// endpoint (`--follow-ec2`): the follower keeps its last answer.
    Follow {
        path: PathBuf,
        opts: crate::source::follow::FollowOptions,
        state: crate::source::follow::Shared,
    },
}

impl Rules {
    /// How diagnostics name the rules.
    pub fn path(&self) -> PathBuf {
        match self {
            Self::File(path) | Self::Follow { path, .. } => path.clone(),
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
            Self::Follow { path, opts, state } => {
                let file = config::read_with(path, policy)?;
                let latest = state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .latest
                    .clone()
                    .unwrap_or_default();
                let text = crate::source::follow::compose(&file.text, &latest).map_err(|e| {
                    config::ConfigError::Read {
                        path: path.clone(),
                        source: std::io::Error::other(format!("with {}'s groups: {e}", opts.url)),
                    }
                })?;
                let sha256 = sha2::Sha256::digest(text.as_bytes()).into();
                Ok((
                    RulesFile {
                        text,
                        stamp: file.stamp,
                        sha256,
                    },
                    None,
                ))
            }
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

impl Agent<'_> {
    fn stopping(&self) -> bool {
        self.stop.asked.load(Ordering::SeqCst)
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
            let (mut observe, mut stop, mut link) = (false, false, false);
            let mut asked = Vec::new();
            let mut domains = Vec::new();
            let mut applies = Vec::new();
            for command in std::iter::once(first).chain(queue.try_iter()) {
                match command {
                    Command::Reload { why, forced } => {
                        let f = reload.is_some_and(|(_, f)| f);
                        reload = Some((why, forced || f));
                    }
                    Command::Tick { watched } => tick = Some(watched),
                    Command::Link => link = true,
                    Command::Observe => observe = true,
                    Command::Status(reply) => asked.push(reply),
                    Command::Domain(d) => domains.push(d),
                    Command::Confirm(reply) => {
                        let _ = reply.send(self.confirm());
                    }
                    Command::Apply(reply) => {
                        let f = reload.is_some_and(|(_, f)| f);
                        reload = Some(("EC2 API", f));
                        applies.push(reply);
                    }
                    Command::Stop => stop = true,
                }
            }
            if stop || self.stopping() {
                break;
            }
            // A link appeared: whatever waits for it is attached first.
            if link {
                self.reconcile(true);
            }
            if let Some((why, forced)) = reload {
                if why == "SIGHUP" {
                    // logrotate's signal: the flow log may have moved.
                    self.observer.reopen();
                }
                let before = self.reloads_rejected;
                self.reload(why, forced);
                let error = (self.reloads_rejected != before)
                    .then(|| self.last_reload.as_ref().and_then(|r| r.error.clone()))
                    .flatten()
                    .or_else(|| (self.reloads_rejected != before).then(|| "rejected".to_owned()));
                for reply in applies.drain(..) {
                    let _ = reply.send(crate::ec2::Applied {
                        in_force: self.in_force,
                        revision: self.in_force_revision,
                        error: error.clone(),
                    });
                }
            }
            for d in domains {
                let answer = if let Some(nics) = d.nics {
                    self.domain_started(&d.domain, nics)
                } else {
                    self.domain_stopped(&d.domain);
                    Ok(Vec::new())
                };
                let _ = d.reply.send(answer);
            }
            if let Some(watched) = tick {
                self.check_confirmation();
                self.reconcile(false);
                self.reclaim();
                if self.opts.watch {
                    self.poll(watched);
                }
                self.poll_libvirt();
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
        // The interval still open is written, whether the instances stay
        // enforced or not; then the file says nothing is left unwritten.
        self.flush_flow_log(None);
        self.observer.finish();
        let n = self.enforced.len();
        // What was prepared for instances still waiting: kept pinned for
        // the next agent with --keep-on-exit, else removed.
        for (name, p) in &mut self.pending {
            if let Some(dp) = p.prepared.take()
                && !self.opts.keep_on_exit
            {
                Self::forget_prepared(name, *dp);
            }
        }
        if self.opts.keep_on_exit {
            // Only what is pinned outlives this process: said as it is.
            let unpinned: Vec<&str> = self
                .enforced
                .iter()
                .filter(|(_, e)| !e.dataplane.links_pinned())
                .map(|(n, _)| n.as_str())
                .collect();
            if unpinned.is_empty() {
                log::info!(
                    "stopped: {n} instance(s) left enforced, pinned under {} (--keep-on-exit)",
                    self.state.root().display()
                );
            } else {
                log::error!(
                    "stopped: {} of {n} instance(s) left enforced, pinned under {}; NOT \
                     enforced any more, their link pins gone: {}",
                    n - unpinned.len(),
                    self.state.root().display(),
                    unpinned.join(", ")
                );
            }
            return;
        }
        for (name, e) in std::mem::take(&mut self.enforced) {
            if let Err(err) = e.dataplane.unpin() {
                log::error!(
                    instance = name;
                    "detaching instance {name}: {}",
                    crate::errors::chain(&err)
                );
            }
        }
        let _ = std::fs::remove_dir(self.state.root());
        log::info!("stopped: detached {n} instance(s)");
    }
}

/// `sg-agent detach`: removes pinned state an agent left (killed, or
/// stopped with `--keep-on-exit`): the programs detach, the maps go.
pub fn detach(state_dir: &Path, instance: Option<&str>) -> Result<Vec<String>, PinError> {
    if !state_dir.exists() {
        return Ok(Vec::new());
    }
    let state = StateDir::open_locked(state_dir)?;
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

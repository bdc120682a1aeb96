//! `sg-agent run`: enforce the rules file until told to stop, and never let
//! enforcement lapse.
//!
//! Two threads. This one is the signal loop: it owns the signal handlers,
//! the file watch and the timers, and only sends commands. The enforcement
//! thread ([`enforce`]) owns every instance's data plane and does the work:
//! start-up, reloads, reconciliation. So a reload, however long, never
//! keeps SIGTERM waiting: the signal loop answers at once, and the
//! enforcement thread abandons a reload still being prepared (nothing has
//! changed until it is prepared in full) and stops.

mod enforce;
pub mod lockout;
pub mod remote;
mod service;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc as std_mpsc,
    },
    time::Duration,
};

use nix::sys::signal::{SigSet, SigmaskHow, Signal as NixSignal, pthread_sigmask};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    config::ConfigError,
    dataplane::{DataplaneError, IngressHook, pins::PinError},
    observe::{
        control::{self, AskConfirm, AskDomain, AskStatus},
        flowlog, metrics,
        status::Status,
    },
};

pub use enforce::{confirmed_policy_path, detach};

/// Bursts of file events within this window make one reload.
const DEBOUNCE: Duration = Duration::from_millis(20);
/// How often interfaces and the rules file are checked.
pub(crate) const RECONCILE: Duration = Duration::from_millis(250);
/// How long SIGINT/SIGTERM may wait for a reload in progress to be
/// abandoned before the agent exits anyway, leaving everything enforced.
const STOP_DEADLINE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The rules file at start; its diagnostics say where.
    #[error("{0}\nnothing attached")]
    Config(ConfigError),
    #[error(
        "{} enforces no instance here (no [[instance]] with an `interface` whose `node` is this \
         agent's --node, or has none without --node): refused, since it would leave every \
         interface unfiltered; check --node, or pass --allow-empty if that is what you want",
        .0.display()
    )]
    Empty(PathBuf),
    #[error("instance {instance}: {source}")]
    Instance {
        instance: String,
        #[source]
        source: DataplaneError,
    },
    /// Refused for another reason than its diagnostics (a policy too
    /// large for the maps).
    #[error("{0}\nnothing changed")]
    Refused(crate::policy::Refusal),
    #[error(transparent)]
    State(#[from] PinError),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("starting the {0}: {1}")]
    Start(&'static str, #[source] std::io::Error),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("--metrics-listen {0}: {1}")]
    Metrics(std::net::SocketAddr, #[source] std::io::Error),
    #[error("--ec2-api {0}: {1}")]
    Ec2Api(std::net::SocketAddr, #[source] std::io::Error),
    /// A stop was asked for while a change was being prepared: it was
    /// abandoned, nothing changed.
    #[error("stopping: the change being prepared was abandoned, nothing changed")]
    Stopping,
    /// A description from etcd asks for what this host does not allow a
    /// remote description to do.
    #[error("the description from etcd is refused on this host:\n{0}\nnothing changed")]
    Remote(String),
    /// Enforcing would cut an SSH session (see [`lockout`]).
    #[error("refusing to start, it would lock SSH out:\n{0}\n(`run --force` starts anyway)")]
    Lockout(String),
    #[error(
        "the start or reload in progress was not abandoned within {} ms of the signal: exiting \
         with every instance it had attached left enforced and pinned under {}; `sg-agent detach \
         --all` removes them, the next `sg-agent run` adopts them",
        STOP_DEADLINE.as_millis(),
        .0.display()
    )]
    StopDeadline(PathBuf),
    #[error(
        "the enforcement thread panicked: every instance it had attached stays enforced and \
         pinned under {}; start sg-agent again to adopt them",
        .0.display()
    )]
    Panicked(PathBuf),
    #[error(transparent)]
    Etcd(crate::source::etcd::EtcdError),
    #[error("--follow-ec2: {0}")]
    Follow(String),
}

/// How the agent runs, from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    /// Reload when the file changes (SIGHUP always reloads).
    pub watch: bool,
    /// `run --node NAME`: enforce the instances of that node only (`None`:
    /// those with no node).
    pub node: Option<String>,
    pub ingress: IngressHook,
    /// Flow logs, the drop log, the control socket and metrics.
    pub observe: ObserveOptions,
    /// Where maps and links are pinned.
    pub state_dir: PathBuf,
    /// On SIGINT/SIGTERM leave everything attached and pinned (for
    /// restarts and upgrades without a gap).
    pub keep_on_exit: bool,
    /// `--libvirt-netns`: where libvirtd's taps are (`None`: the agent's
    /// own namespace).
    pub libvirt_netns: Option<String>,
    /// What the operator told the agent to accept that it refuses by
    /// default.
    pub accept: Accept,
    /// `--confirm-within`: a start or reload not confirmed (`sg-agent
    /// confirm`) within this long is rolled back.
    pub confirm_within: Option<std::time::Duration>,
    /// How the rules file is read (size bound, owner and mode checks).
    pub read: crate::config::ReadPolicy,
    /// With rules from etcd: what a remote description may touch here.
    pub remote: Option<remote::RemoteLimits>,
    /// `--ec2-api`: EC2's Query API, changing the rules file.
    pub ec2_api: Option<crate::ec2::ApiOptions>,
    /// `--follow-ec2`: the groups come from another EC2 endpoint.
    pub follow: Option<crate::source::follow::FollowOptions>,
}

/// Refusals the operator lifts (`run --allow-empty`, `--force`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Accept {
    /// A rules file that enforces no instance.
    pub empty: bool,
    /// An instance that would cut an SSH session ([`lockout`]).
    pub cut_ssh: bool,
}

/// What the running agent tells its users (see [`crate::observe`]).
#[derive(Clone, Debug)]
pub struct ObserveOptions {
    /// Flow-log records: where, how often, in which format.
    pub flow_log: Option<flowlog::Settings>,
    /// Log every dropped packet (bounded by `events_per_cpu`).
    pub drop_log: bool,
    /// The programs' event bound per CPU and second.
    pub events_per_cpu: u32,
    pub control_socket: PathBuf,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Flow-log records for `flows --follow`; made by the signal loop.
    pub records: Option<tokio::sync::broadcast::Sender<flowlog::Record>>,
    /// Records as they come for `flows --live`; made by the signal loop.
    pub live: Option<crate::observe::LiveFeed>,
}

impl ObserveOptions {
    /// What the programs are loaded to observe.
    pub fn dataplane(&self) -> crate::dataplane::Observe {
        let mut o = crate::dataplane::Observe {
            events_per_cpu: self.events_per_cpu,
            ..crate::dataplane::Observe::default()
        };
        if self.flow_log.is_some() {
            o = o.with_flow_logs();
        }
        if self.drop_log {
            o = o.with_drops();
        }
        o
    }
}

/// SIGHUP, SIGINT and SIGTERM held blocked from the first line of `main`
/// until the agent's handlers exist: one that arrives during start-up is
/// delivered to them then (a SIGHUP is a reload, not a death). Dropping
/// this value unblocks them.
pub struct HeldSignals(SigSet);

impl HeldSignals {
    pub fn hold() -> Self {
        let mut set = SigSet::empty();
        for s in [NixSignal::SIGHUP, NixSignal::SIGINT, NixSignal::SIGTERM] {
            set.add(s);
        }
        // Cannot fail with a valid `how`; if it did, the window is the
        // default one, so there is nothing better to do than go on.
        let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None);
        Self(set)
    }
}

impl Drop for HeldSignals {
    fn drop(&mut self) {
        let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&self.0), None);
    }
}

/// What the signal loop asks of the enforcement thread.
#[derive(Debug)]
enum Command {
    Reload {
        why: &'static str,
        forced: bool,
    },
    /// Reconcile with the kernel and poll the rules file; `watched`: the
    /// inotify watch runs, so polling is only its fallback.
    Tick {
        watched: bool,
    },
    /// A link appeared or changed in a namespace with an instance:
    /// reconcile now.
    Link,
    /// Drain the programs' events (flow logs, rule hits, drop log).
    Observe,
    /// A status snapshot, for the control socket and metrics.
    Status(tokio::sync::oneshot::Sender<Status>),
    /// libvirt's hook: a domain starts (enforce its NICs now) or stopped.
    Domain(control::DomainEvent),
    /// `sg-agent confirm`: keep what `--confirm-within` would roll back.
    Confirm(tokio::sync::oneshot::Sender<Result<String, String>>),
    /// The EC2 API wrote the rules file: reload now, and say what is in
    /// force once done.
    Apply(tokio::sync::oneshot::Sender<crate::ec2::Applied>),
    Stop,
}

/// Shared between the two threads: the stop request, and the enforcement
/// thread's answer that it is stopping.
pub(crate) struct StopFlag {
    pub(crate) asked: AtomicBool,
    begun: tokio::sync::Notify,
}

/// Where `run` takes the rules from.
#[derive(Clone, Debug)]
pub enum Source {
    File(PathBuf),
    /// etcd; `wait`: wait for etcd and a first description at start
    /// instead of failing.
    Etcd {
        opts: crate::source::etcd::EtcdOptions,
        wait: bool,
    },
}

pub fn run(source: &Source, opts: Options, held: HeldSignals) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::Start("event loop", e))?;
    runtime.block_on(signal_loop(source, opts, held))
}

/// What `run --etcd` starts from: the options, the client, the revision
/// the first description was read at, and the state the watch keeps.
type EtcdStart = (
    crate::source::etcd::EtcdOptions,
    etcd_client::Client,
    i64,
    crate::source::etcd::Shared,
);

/// etcd: the first description, read before anything is attached (an
/// agent that cannot get one does not start, unless told to wait).
async fn first_description(source: &Source) -> Result<Option<EtcdStart>, AgentError> {
    let Source::Etcd { opts, wait } = source else {
        return Ok(None);
    };
    let (client, snapshot, revision) = crate::source::etcd::first_read(opts, *wait)
        .await
        .map_err(AgentError::Etcd)?;
    let state = Arc::new(std::sync::Mutex::new(crate::source::etcd::State {
        latest: Some(snapshot),
        connected: true,
        error: None,
    }));
    Ok(Some((opts.clone(), client, revision, state)))
}

/// The rules file's watch, started before the file is first read: a change
/// made during start-up is not missed. Without inotify (or with
/// `--no-watch`, or etcd), `None`: the tick polls the file.
fn watch_rules_file(
    source: &Source,
    watch: bool,
) -> Option<tokio::sync::mpsc::UnboundedReceiver<()>> {
    let Source::File(path) = source else {
        return None;
    };
    if !watch {
        return None;
    }
    match crate::source::watch::watch_file(path) {
        Ok(rx) => Some(rx),
        Err(e) => {
            log::warn!(
                "{}: the rules file is polled every {} ms instead",
                crate::errors::chain(&e),
                RECONCILE.as_millis()
            );
            None
        }
    }
}

/// The control socket and the metrics endpoint, bound.
type Listeners = (tokio::net::UnixListener, Option<tokio::net::TcpListener>);

async fn bind_observers(
    observe: &ObserveOptions,
) -> Result<(Listeners, tokio::sync::broadcast::Sender<flowlog::Record>), AgentError> {
    let control = control::bind(&observe.control_socket)?;
    let metrics = match observe.metrics_listen {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .map_err(|e| AgentError::Metrics(addr, e))?,
        ),
        None => None,
    };
    Ok(((control, metrics), tokio::sync::broadcast::channel(4096).0))
}

/// Serves the control socket and the metrics endpoint on this runtime.
fn serve_observers(
    (control, metrics): Listeners,
    commands: &std_mpsc::Sender<Command>,
    records: (
        tokio::sync::broadcast::Sender<flowlog::Record>,
        crate::observe::LiveFeed,
    ),
) {
    let ask: AskStatus = {
        let commands = commands.clone();
        Arc::new(move |reply| {
            let _ = commands.send(Command::Status(reply));
        })
    };
    let domain: AskDomain = {
        let commands = commands.clone();
        Arc::new(move |event| {
            let _ = commands.send(Command::Domain(event));
        })
    };
    let confirm: AskConfirm = {
        let commands = commands.clone();
        Arc::new(move |reply| {
            let _ = commands.send(Command::Confirm(reply));
        })
    };
    tokio::spawn(control::serve(
        control,
        Arc::clone(&ask),
        domain,
        confirm,
        records,
    ));
    if let Some(listener) = metrics {
        tokio::spawn(metrics::serve(listener, ask));
    }
}

/// `--follow-ec2`: the endpoint and its first answer, before anything is
/// attached (an agent that cannot read it does not start).
type Followed = (
    crate::source::follow::FollowOptions,
    crate::source::follow::Shared,
);

async fn first_answer(
    follow: Option<&crate::source::follow::FollowOptions>,
) -> Result<Option<Followed>, AgentError> {
    let Some(f) = follow else {
        return Ok(None);
    };
    let state = crate::source::follow::first_fetch(f)
        .await
        .map_err(AgentError::Follow)?;
    Ok(Some((f.clone(), state)))
}

/// Where the enforcement thread reads the rules.
fn rules_of(
    etcd: Option<&EtcdStart>,
    source: &Source,
    followed: Option<&Followed>,
) -> enforce::Rules {
    match (etcd, source) {
        (Some((e, _, _, state)), _) => enforce::Rules::Etcd {
            opts: e.clone(),
            state: Arc::clone(state),
        },
        (None, Source::File(path)) => match followed {
            Some((f, state)) => enforce::Rules::Follow {
                path: path.clone(),
                opts: f.clone(),
                state: Arc::clone(state),
            },
            None => enforce::Rules::File(path.clone()),
        },
        (None, Source::Etcd { .. }) => unreachable!("read above"),
    }
}

/// `--follow-ec2`: each changed answer of the endpoint is a reload.
fn follow_endpoint((f, state): Followed, commands: &std_mpsc::Sender<Command>) {
    let commands = commands.clone();
    tokio::spawn(crate::source::follow::follow(f, state, move || {
        let _ = commands.send(Command::Reload {
            why: "followed endpoint",
            forced: false,
        });
    }));
}

/// etcd: each committed change is a reload (validated and swapped in
/// exactly as a changed file is).
fn follow_etcd((e, client, revision, state): EtcdStart, commands: &std_mpsc::Sender<Command>) {
    let commands = commands.clone();
    let reload = move |_revision| {
        let _ = commands.send(Command::Reload {
            why: "etcd",
            forced: false,
        });
    };
    tokio::spawn(crate::source::etcd::follow(
        e, client, revision, state, reload,
    ));
}

/// The EC2 API's listener, bound before anything is attached (as the
/// control socket's).
async fn bind_ec2_api(
    api: Option<&crate::ec2::ApiOptions>,
) -> Result<Option<tokio::net::TcpListener>, AgentError> {
    let Some(api) = api else {
        return Ok(None);
    };
    crate::ec2::bind(api.listen)
        .await
        .map(Some)
        .map_err(|e| AgentError::Ec2Api(api.listen, e))
}

/// The EC2 API on this runtime: its changes go through the rules file and
/// are answered once the enforcement thread has them in force.
fn serve_ec2_api(
    listener: tokio::net::TcpListener,
    api: &crate::ec2::ApiOptions,
    source: &Source,
    (node, allow_empty, max_bytes): &(Option<String>, bool, u64),
    commands: &std_mpsc::Sender<Command>,
) {
    let backend = match source {
        Source::File(path) => {
            crate::ec2::edit::remove_stale_temporaries(path);
            crate::ec2::store::Backend::File(path.clone())
        }
        Source::Etcd { opts, .. } => {
            crate::ec2::store::Backend::Etcd(Box::new(crate::ec2::store::EtcdBackend {
                opts: opts.clone(),
                client: tokio::sync::Mutex::new(None),
            }))
        }
    };
    let apply: crate::ec2::AskApply = {
        let commands = commands.clone();
        Arc::new(move |reply| {
            let _ = commands.send(Command::Apply(reply));
        })
    };
    let store = crate::ec2::Store::new(
        backend,
        node.clone(),
        *allow_empty,
        *max_bytes,
        api.account.clone(),
        apply,
    );
    log::info!(
        "EC2 API at http://{} ({})",
        api.listen,
        if api.credentials.is_some() {
            "SigV4 signatures checked"
        } else {
            "loopback: any credentials accepted"
        }
    );
    tokio::spawn(crate::ec2::serve(
        listener,
        Arc::new(crate::ec2::Api {
            store,
            credentials: api.credentials.clone(),
        }),
    ));
}

/// Link events of the namespaces the enforcement thread names (through the
/// returned sender) wake it at once.
fn watch_links(
    commands: std_mpsc::Sender<Command>,
) -> tokio::sync::watch::Sender<std::collections::BTreeSet<crate::source::links::Namespace>> {
    let (links, wanted) = tokio::sync::watch::channel(std::collections::BTreeSet::new());
    tokio::spawn(crate::source::links::follow(wanted, move |_, _| {
        let _ = commands.send(Command::Link);
    }));
    links
}

async fn signal_loop(source: &Source, opts: Options, held: HeldSignals) -> Result<(), AgentError> {
    let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    // Signals that came during start-up reach the handlers now.
    drop(held);

    let etcd = first_description(source).await?;
    let followed = first_answer(opts.follow.as_ref()).await?;
    let mut changes = watch_rules_file(source, opts.watch);

    // Bound before anything is attached: an agent that cannot serve its
    // status refuses to start rather than run unseen.
    let (listeners, records) = bind_observers(&opts.observe).await?;
    let ec2_listener = bind_ec2_api(opts.ec2_api.as_ref()).await?;
    // Removed however the loop ends.
    let _socket = control::RemoveOnDrop(opts.observe.control_socket.clone());
    let mut opts = opts;
    opts.observe.records = Some(records.clone());
    let live = crate::observe::LiveFeed::default();
    opts.observe.live = Some(live.clone());
    let ec2_api = opts.ec2_api.take();
    let ec2_store_opts = (opts.node.clone(), opts.accept.empty, opts.read.max_bytes);

    let stop = Arc::new(StopFlag {
        asked: AtomicBool::new(false),
        begun: tokio::sync::Notify::new(),
    });
    let (commands, queue) = std_mpsc::channel();
    let (done_tx, mut done) = tokio::sync::oneshot::channel();
    let state_dir = opts.state_dir.clone();
    let keep_on_exit = opts.keep_on_exit;
    let rules = rules_of(etcd.as_ref(), source, followed.as_ref());
    let links_tx = watch_links(commands.clone());
    {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("enforce".into())
            .spawn(move || {
                let result = enforce::run(rules, opts, &queue, &stop, links_tx);
                let _ = done_tx.send(result);
            })
            .map_err(|e| AgentError::Start("enforcement thread", e))?;
    }
    if let Some(etcd) = etcd {
        follow_etcd(etcd, &commands);
    }
    if let Some(followed) = followed {
        follow_endpoint(followed, &commands);
    }
    serve_observers(listeners, &commands, (records, live));
    if let (Some(listener), Some(api)) = (ec2_listener, &ec2_api) {
        serve_ec2_api(listener, api, source, &ec2_store_opts, &commands);
    }
    let send = |c: Command| {
        // The enforcement thread only goes away by returning, which `done`
        // reports.
        let _ = commands.send(c);
    };

    // Events are drained ten times a second: the ring holds over a second
    // of them at the default bound.
    let mut observe_tick = tokio::time::interval(Duration::from_millis(100));
    let mut reconcile = tokio::time::interval(RECONCILE);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let signal_name = loop {
        tokio::select! {
            result = &mut done => {
                // Start-up failed (or the thread panicked).
                return result.unwrap_or_else(|_| Err(AgentError::Panicked(state_dir)));
            }
            _ = hup.recv() => send(Command::Reload { why: "SIGHUP", forced: true }),
            _ = int.recv() => break "SIGINT",
            _ = term.recv() => break "SIGTERM",
            event = async { changes.as_mut()?.recv().await }, if changes.is_some() => {
                let Some(rx) = changes.as_mut().filter(|_| event.is_some()) else {
                    // The watch thread ended (and said why): the tick polls.
                    changes = None;
                    continue;
                };
                // Debounce: editors write, rename and chmod in bursts.
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
                send(Command::Reload { why: "file changed", forced: false });
            }
            _ = reconcile.tick() => send(Command::Tick { watched: changes.is_some() }),
            _ = observe_tick.tick() => send(Command::Observe),
        }
    };
    log::info!("{signal_name}: stopping");
    stop.asked.store(true, Ordering::SeqCst);
    send(Command::Stop);
    tokio::select! {
        result = &mut done => {
            return result.unwrap_or_else(|_| Err(AgentError::Panicked(state_dir)));
        }
        () = stop.begun.notified() => {}
        () = tokio::time::sleep(STOP_DEADLINE) => {
            // What was only loaded (a start or reload in progress, an
            // instance waiting for its interface) enforces nothing: its
            // pins go with the agent unless --keep-on-exit. Attached
            // instances stay enforced.
            if !keep_on_exit {
                let n = crate::dataplane::pins::remove_unattached(&state_dir);
                if n > 0 {
                    log::info!("unpinned {n} instance(s) loaded but never attached");
                }
            }
            return Err(AgentError::StopDeadline(state_dir));
        }
    }
    // Stopping is bounded work (detaching and unpinning); let it finish.
    done.await
        .unwrap_or_else(|_| Err(AgentError::Panicked(state_dir)))
}

//! `sg-agent run`: load, attach, then watch the rules file and reload until
//! told to stop.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    config::{self, ConfigError, Vpc},
    dataplane::{Dataplane, DataplaneError, IngressHook},
    policy::{
        compile::{CompiledInstance, compile},
        summary,
    },
    source::watch::{WatchError, watch_file},
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The rules file at start; its diagnostics say where.
    #[error("{0}\nnothing attached")]
    Config(ConfigError),
    #[error("instance {instance}: {source}")]
    Instance {
        instance: String,
        #[source]
        source: DataplaneError,
    },
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error("installing signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error("starting the event loop: {0}")]
    Runtime(#[source] std::io::Error),
}

fn on_instance(name: &str) -> impl FnOnce(DataplaneError) -> AgentError {
    move |source| AgentError::Instance {
        instance: name.to_owned(),
        source,
    }
}

/// Bursts of file events within this window make one reload.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Where an instance is enforced; a change means detach and attach anew.
type Place = (Option<String>, String);

struct Enforced {
    place: Place,
    dataplane: Dataplane,
}

/// Everything the agent enforces, by instance name.
struct Agent {
    path: PathBuf,
    vpc: Vpc,
    enforced: BTreeMap<String, Enforced>,
    reloads: u64,
    ingress: IngressHook,
    ebpf_log: bool,
}

/// How the agent runs, from the command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Reload when the file changes (SIGHUP always reloads).
    pub watch: bool,
    pub ingress: IngressHook,
    /// Forward the eBPF programs' debug records (one per dropped packet).
    pub ebpf_log: bool,
}

pub fn run(path: &Path, opts: Options) -> Result<(), AgentError> {
    let Options {
        watch,
        ingress,
        ebpf_log,
    } = opts;
    let vpc = config::load(path).map_err(AgentError::Config)?;
    let mut agent = Agent {
        path: path.to_owned(),
        vpc: Vpc::default(),
        enforced: BTreeMap::new(),
        reloads: 0,
        ingress,
        ebpf_log,
    };
    // At start any failure is fatal: dropping `agent` detaches what was
    // attached so far.
    agent.apply(vpc)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    runtime.block_on(agent.watch(watch))?;
    let n = agent.enforced.len();
    drop(agent);
    log::info!("stopped: detached {n} instance(s)");
    Ok(())
}

impl Agent {
    /// Makes `vpc` the policy in force: detaches instances that left (or
    /// moved), swaps each remaining instance's policy atomically, attaches
    /// new ones.
    fn apply(&mut self, vpc: Vpc) -> Result<(), AgentError> {
        let started = std::time::Instant::now();
        let compiled = compile(&vpc);
        log::debug!("compiled in {} ms", started.elapsed().as_millis());
        let wanted: BTreeMap<&str, &CompiledInstance> = compiled
            .instances
            .iter()
            .filter(|i| i.interface.is_some())
            .map(|i| (i.name.as_str(), i))
            .collect();
        let place =
            |i: &CompiledInstance| (i.netns.clone(), i.interface.clone().expect("filtered"));

        let gone: Vec<String> = self
            .enforced
            .iter()
            .filter(|(name, e)| {
                wanted
                    .get(name.as_str())
                    .is_none_or(|i| place(i) != e.place)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            let e = self.enforced.remove(&name).expect("listed");
            log::info!("detached instance {name} from {}", describe(&e.place));
        }
        for (name, inst) in &wanted {
            if let Some(e) = self.enforced.get_mut(*name) {
                if e.dataplane
                    .publish(&inst.tables, compiled.settings)
                    .map_err(on_instance(name))?
                {
                    log::info!(
                        "instance {name}: new policy in force ({} classes)",
                        inst.tables.classes
                    );
                }
                continue;
            }
            let mut dataplane =
                Dataplane::load_logging(self.ebpf_log).map_err(on_instance(name))?;
            dataplane
                .publish(&inst.tables, compiled.settings)
                .map_err(on_instance(name))?;
            let p = place(inst);
            let a = dataplane
                .attach(&p.1, p.0.as_deref(), self.ingress)
                .map_err(on_instance(name))?;
            log::info!(
                "attached instance {name} to {}: {} ingress, TC egress; {} address classes",
                describe(&p),
                a.ingress,
                inst.tables.classes
            );
            self.enforced.insert(
                (*name).to_owned(),
                Enforced {
                    place: p,
                    dataplane,
                },
            );
        }
        self.vpc = vpc;
        Ok(())
    }

    fn reload(&mut self, why: &str) {
        let started = std::time::Instant::now();
        self.reloads += 1;
        let n = self.reloads;
        let vpc = match config::load(&self.path) {
            Ok(v) => v,
            Err(e) => {
                log::error!(
                    "reload #{n} ({why}) rejected, the running policy stays in force:\n{e}"
                );
                return;
            }
        };
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
                "reload #{n} ({why}) failed part-way: {}; instances not updated keep their previous policy",
                crate::cli::error_chain(&e)
            ),
        }
    }

    async fn watch(&mut self, watch_file_changes: bool) -> Result<(), AgentError> {
        let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
        let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
        let (_keep, mut changes) = if watch_file_changes {
            (None, watch_file(&self.path)?)
        } else {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), rx)
        };
        // Only now, with signal handlers and the file watch in place, is a
        // change or a SIGHUP sure to be seen.
        log::info!(
            "ready: enforcing {} instance(s) from {}",
            self.enforced.len(),
            self.path.display()
        );
        // Only ticks when --ebpf-log asked for the eBPF side's records.
        let mut log_tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = log_tick.tick(), if self.ebpf_log => {
                    for e in self.enforced.values_mut() {
                        e.dataplane.flush_logs();
                    }
                }
                _ = hup.recv() => self.reload("SIGHUP"),
                _ = int.recv() => return Ok(()),
                _ = term.recv() => return Ok(()),
                Some(()) = changes.recv() => {
                    // Debounce: editors write, rename and chmod in bursts.
                    tokio::time::sleep(DEBOUNCE).await;
                    while changes.try_recv().is_ok() {}
                    self.reload("file changed");
                }
            }
        }
    }
}

fn describe((netns, ifname): &Place) -> String {
    match netns {
        Some(ns) => format!("{ifname} in netns {ns}"),
        None => ifname.clone(),
    }
}

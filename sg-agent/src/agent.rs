//! `sg-agent run`: load, attach, then watch the rules file and reload until
//! told to stop.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    compile::{CompiledInstance, compile},
    config::{self, ConfigError, Vpc},
    dataplane::{Dataplane, IngressHook},
    summary,
};

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

pub fn run(path: &Path, opts: Options) -> anyhow::Result<()> {
    let Options {
        watch,
        ingress,
        ebpf_log,
    } = opts;
    let vpc = match config::load(path) {
        Ok(v) => v,
        Err(ConfigError::Invalid(d)) => anyhow::bail!("{d}\nnothing attached"),
        Err(e) => return Err(e).context("nothing attached"),
    };
    bump_memlock_rlimit();
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
        .build()?;
    runtime.block_on(agent.watch(watch))?;
    let n = agent.enforced.len();
    drop(agent);
    log::info!("stopped: detached {n} instance(s)");
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to `RLIMIT_MEMLOCK`.
fn bump_memlock_rlimit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) } != 0 {
        log::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

impl Agent {
    /// Makes `vpc` the policy in force: detaches instances that left (or
    /// moved), swaps each remaining instance's policy atomically, attaches
    /// new ones.
    fn apply(&mut self, vpc: Vpc) -> anyhow::Result<()> {
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
                if e.dataplane.publish(&inst.tables, compiled.settings)? {
                    log::info!(
                        "instance {name}: new policy in force ({} classes)",
                        inst.tables.classes
                    );
                }
                continue;
            }
            let mut dataplane = Dataplane::load_logging(self.ebpf_log)?;
            dataplane.publish(&inst.tables, compiled.settings)?;
            let p = place(inst);
            let a = dataplane
                .attach(&p.1, p.0.as_deref(), self.ingress)
                .with_context(|| format!("instance {name}"))?;
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
                "reload #{n} ({why}) failed part-way: {e:#}; instances not updated keep their previous policy"
            ),
        }
    }

    async fn watch(&mut self, watch_file_changes: bool) -> anyhow::Result<()> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
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

/// Events for `path`, watched through its directory so that editors that
/// write a new file and rename it over the old one are seen: a rename into
/// place, or a writer closing the file (never mid-write).
fn watch_file(path: &Path) -> anyhow::Result<mpsc::UnboundedReceiver<()>> {
    use inotify::{Inotify, WatchMask};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let name = path
        .file_name()
        .context("the rules file path names no file")?
        .to_owned();
    let inotify = Inotify::init().context("inotify")?;
    inotify
        .watches()
        .add(&dir, WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO)
        .with_context(|| format!("watching {}", dir.display()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            let mut inotify = inotify;
            let mut buf = [0u8; 4096];
            loop {
                let Ok(events) = inotify.read_events_blocking(&mut buf) else {
                    return;
                };
                for e in events {
                    if e.name == Some(name.as_os_str()) && tx.send(()).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}

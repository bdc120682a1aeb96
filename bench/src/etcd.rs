//! Measurement 5: many hosts through etcd. A real etcd (Debian's
//! etcd-server) on loopback; how long from a push to the new policy in
//! force on every agent, for two agents (`run --etcd --node`, each
//! enforcing a namespace of its own) and for 100 simulated watchers in one
//! process that read and compile each revision (the fan-out a fleet puts
//! on etcd); and what one push of 10,000 rules costs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sg_agent::{
    policy::{Enforcer, admit_as, validate_as},
    source::etcd::{EtcdOptions, compare_and_put, connect, read},
};
use sg_tests::{agent::AgentProcess, etcd::EtcdServer};

use super::{
    e2e::Pair,
    policies::{Shape, rules_file},
    stats::Stat,
};

pub struct Config {
    /// Pushes measured per part.
    pub pushes: usize,
    /// Simulated watchers.
    pub watchers: usize,
    /// Pushes of 10,000 rules measured (and validations of the fleet's
    /// description).
    pub big_pushes: usize,
    /// Instances in the fleet's description.
    pub fleet_instances: usize,
}

impl Config {
    /// 100 pushes, 100 watchers, 5 pushes of 10,000 rules, a fleet of
    /// 4,000 instances; a handful in the smoke run.
    pub fn new(smoke: bool) -> Self {
        if smoke {
            Self {
                pushes: 3,
                watchers: 10,
                big_pushes: 1,
                fleet_instances: 400,
            }
        } else {
            Self {
                pushes: 100,
                watchers: 100,
                big_pushes: 5,
                fleet_instances: 4_000,
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Results {
    /// Push committed -> both agents have logged the new policy in force
    /// (ms): p50 and p99, and the count.
    pub agents_ms: (f64, f64, usize),
    /// Push committed -> every watcher has read and compiled it (ms).
    pub watchers_ms: (f64, f64, usize),
    pub watchers: usize,
    /// One push of 10,000 rules: validation here (parse, validate,
    /// compile), the etcd transaction, and the description's size.
    pub big_validate_ms: Stat,
    pub big_txn_ms: Stat,
    pub big_bytes: usize,
    pub big_rules: usize,
    /// Validating (as `push` does) a description of many instances on many
    /// nodes, in groups that reference themselves and each other: (ms, its
    /// size in bytes, instances).
    pub fleet_validate_ms: Stat,
    pub fleet_bytes: usize,
    pub fleet_instances: usize,
}

/// A fleet's description validated as `push` validates it, `big_pushes`
/// times: the times (ms) and its size.
fn fleet_validation(cfg: &Config) -> (Vec<f64>, usize) {
    let text = fleet(cfg.fleet_instances);
    let mut ms = Vec::new();
    for _ in 0..cfg.big_pushes {
        let t0 = Instant::now();
        validate_as("fleet.toml".as_ref(), &text, false, Enforcer::Everyone).expect("valid");
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    (ms, text.len())
}

/// A fleet's description: `instances` on 50 nodes, each in two of 20
/// groups; each group admits SSH from itself and HTTPS from the next
/// group, so every instance's policy holds a tenth of the fleet's addresses.
pub fn fleet(instances: usize) -> String {
    use std::fmt::Write as _;
    const GROUPS: usize = 20;
    let mut out = String::new();
    for g in 0..GROUPS {
        let _ = write!(
            out,
            "[[security_group]]\nname = \"g{g}\"\n  [[security_group.ingress]]\n  protocol = \"tcp\"\n  \
             from_port = 22\n  to_port = 22\n  self = true\n  [[security_group.ingress]]\n  protocol = \
             \"tcp\"\n  from_port = 443\n  to_port = 443\n  security_groups = [\"g{}\"]\n",
            (g + 1) % GROUPS
        );
    }
    for i in 0..instances {
        let _ = write!(
            out,
            "[[instance]]\nname = \"i{i}\"\nnode = \"n{}\"\nnetns = \"ns{i}\"\ninterface = \"eth0\"\n\
             addresses = [\"10.{}.{}.1\"]\nsecurity_groups = [\"g{}\", \"g{}\"]\n",
            i % 50,
            1 + i / 250,
            i % 250 + 1,
            i % GROUPS,
            (i + 7) % GROUPS
        );
    }
    out
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short sample"
    )]
    let i = ((s.len() as f64 * p).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

/// Two instances, one per node, one group whose port `port` toggles.
fn description(pair: &Pair, port: u16) -> String {
    format!(
        "[[security_group]]\nname = \"toggle\"\n  [[security_group.ingress]]\n  protocol = \"tcp\"\n  \
         from_port = {port}\n  to_port = {port}\n  cidr_blocks = [\"198.51.100.0/24\"]\n\n\
         [[instance]]\nname = \"a1\"\nnode = \"a\"\nnetns = \"{}\"\ninterface = \"eth0\"\n\
         addresses = [\"198.51.100.7\"]\nsecurity_groups = [\"toggle\"]\n\n\
         [[instance]]\nname = \"b1\"\nnode = \"b\"\nnetns = \"{}\"\ninterface = \"eth0\"\n\
         addresses = [\"10.0.0.1\"]\nsecurity_groups = [\"toggle\"]\n",
        pair.gen_ns.name, pair.sink_ns.name
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn measure(cfg: &Config) -> Results {
    let etcd = EtcdServer::start("bench");
    let opts = EtcdOptions {
        endpoints: vec![etcd.url()],
        prefix: "/sg-bench".to_owned(),
        ..EtcdOptions::default()
    };
    let pair = Pair::new();
    let rt = runtime();
    let mut client = rt.block_on(connect(&opts)).expect("etcd");
    let mut push = |text: &str| {
        rt.block_on(async {
            let (current, _) = read(&mut client, &opts).await.expect("read");
            let rev = current.map_or(0, |c| c.mod_revision);
            compare_and_put(&mut client, &opts, rev, text)
                .await
                .expect("push")
        })
    };
    push(&description(&pair, 7000));

    // Two agents.
    let url = etcd.url();
    let args = |node: &'static str| {
        [
            "--etcd",
            url.as_str(),
            "--etcd-prefix",
            "/sg-bench",
            "--node",
            node,
        ]
    };
    let agents = [
        AgentProcess::start_without_file(&args("a")),
        AgentProcess::start_without_file(&args("b")),
    ];
    for a in &agents {
        a.expect_log("ready: enforcing", 0, Duration::from_mins(1));
    }
    let mut agent_ms = Vec::new();
    for i in 0..cfg.pushes {
        let marks = agents.each_ref().map(AgentProcess::log_lines);
        let port = 7001 + u16::try_from(i % 2).expect("0 or 1");
        let text = description(&pair, port);
        let t0 = Instant::now();
        push(&text);
        for (a, mark) in agents.iter().zip(marks) {
            a.expect_log("applied in", mark, Duration::from_secs(10));
        }
        agent_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    for a in agents {
        assert_eq!(a.terminate().code(), Some(0), "agent exit");
    }

    // 100 watchers in this process.
    let watchers_ms = rt.block_on(watchers(&opts, &pair, cfg));

    // One push of 10,000 rules.
    let big = rules_file(
        9_997,
        Shape::OneGroup,
        true,
        Some((pair.sink_ns.name.as_str(), "eth0")),
    );
    let big_rules = 9_997 + 3;
    let (mut validate, mut txn) = (Vec::new(), Vec::new());
    for _ in 0..cfg.big_pushes {
        let t0 = Instant::now();
        admit_as("big.toml".as_ref(), &big, false, Enforcer::Everyone).expect("valid");
        validate.push(t0.elapsed().as_secs_f64() * 1e3);
        // A different text each time: etcd writes it (`push` skips an
        // unchanged one).
        let text = format!("{big}# push {}\n", txn.len());
        let t0 = Instant::now();
        push(&text);
        txn.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (fleet_ms, fleet_bytes) = fleet_validation(cfg);
    eprintln!(
        "etcd: agents p50 {:.1} ms, watchers p50 {:.1} ms, 10k push {:.1} + {:.1} ms",
        percentile(&agent_ms, 0.5),
        watchers_ms.0,
        Stat::of(&validate).median,
        Stat::of(&txn).median
    );
    Results {
        agents_ms: (
            percentile(&agent_ms, 0.5),
            percentile(&agent_ms, 0.99),
            agent_ms.len(),
        ),
        watchers_ms,
        watchers: cfg.watchers,
        big_validate_ms: Stat::of(&validate),
        big_txn_ms: Stat::of(&txn),
        big_bytes: big.len(),
        big_rules,
        fleet_validate_ms: Stat::of(&fleet_ms),
        fleet_bytes,
        fleet_instances: cfg.fleet_instances,
    }
}

/// Each watcher: its own client and watch; on each revision it parses,
/// validates and compiles the description as an agent does. p50, p99 and
/// count of push committed -> all compiled.
async fn watchers(opts: &EtcdOptions, pair: &Pair, cfg: &Config) -> (f64, f64, usize) {
    let done = Arc::new(AtomicUsize::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    let mut client = connect(opts).await.expect("etcd");
    let (_, start) = read(&mut client, opts).await.expect("read");
    let mut tasks = Vec::new();
    for _ in 0..cfg.watchers {
        let (opts, done, notify) = (opts.clone(), Arc::clone(&done), Arc::clone(&notify));
        let mut c = connect(&opts).await.expect("etcd");
        let mut stream = c
            .watch(
                opts.key(),
                Some(etcd_client::WatchOptions::new().with_start_revision(start + 1)),
            )
            .await
            .expect("watch");
        tasks.push(tokio::spawn(async move {
            let _keep = c;
            while let Ok(Some(resp)) = stream.message().await {
                for e in resp.events() {
                    let text = e.kv().and_then(|kv| kv.value_str().ok()).unwrap_or("");
                    admit_as("etcd".as_ref(), text, true, Enforcer::Everyone).expect("valid");
                    done.fetch_add(1, Ordering::SeqCst);
                    notify.notify_one();
                }
            }
        }));
    }
    let mut ms = Vec::new();
    for i in 0..cfg.pushes {
        done.store(0, Ordering::SeqCst);
        let port = 7001 + u16::try_from(i % 2).expect("0 or 1");
        let text = description(pair, port);
        let (current, _) = read(&mut client, opts).await.expect("read");
        let rev = current.map_or(0, |c| c.mod_revision);
        let t0 = Instant::now();
        compare_and_put(&mut client, opts, rev, &text)
            .await
            .expect("push");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while done.load(Ordering::SeqCst) < cfg.watchers {
            assert!(
                tokio::time::timeout_at(deadline, notify.notified())
                    .await
                    .is_ok()
                    || done.load(Ordering::SeqCst) >= cfg.watchers,
                "watchers did not all compile revision {}",
                rev + 1
            );
        }
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    for t in tasks {
        t.abort();
    }
    (percentile(&ms, 0.5), percentile(&ms, 0.99), ms.len())
}

//! Measurement 3: how long from a changed rules file to the new policy
//! answering packets, whether any packet is misjudged meanwhile, and how
//! long from start to the first enforced packet. Probes are UDP datagrams
//! every millisecond, bounded in count and time.

use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{
    e2e::Pair,
    policies::{CLIENT_V4, SERVER_V4, Shape, rules_file_with},
    stats::Stat,
};
use sg_tests::{agent::AgentProcess, lab::in_netns, lab::unique_prefix, probe::Servers};

/// Toggled by the reload; allowed by both policies; allowed by neither.
const TOGGLED: u16 = 7000;
const ALWAYS: u16 = 7001;
const NEVER: u16 = 7002;
const PORTS: [u16; 3] = [TOGGLED, ALWAYS, NEVER];
const INTERVAL: Duration = Duration::from_millis(1);
const MAX_PROBE: Duration = Duration::from_secs(30);

pub struct Row {
    pub rules: usize,
    /// File renamed into place -> first datagram of the new policy answered, ms.
    pub reload_ms: Stat,
    /// What the agent logs for the same reload (parse, compile, swap), ms.
    pub agent_ms: Stat,
    /// Start of the process -> first datagram dropped by the policy, ms.
    pub start_ms: Stat,
    /// The agent's debug log for the measured reloads: parse and validate,
    /// compile, write the inactive generation (ms, since the reload began
    /// for the first; each phase's own for the others).
    pub phases_ms: [Stat; 2],
    /// Datagrams both policies allow that went unanswered during reloads.
    pub allowed_lost: u64,
    /// Datagrams neither policy allows that were answered.
    pub denied_answered: u64,
    pub allowed_sent: u64,
}

/// Every datagram sent: (port, send time, answered).
struct Probe {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Vec<(u16, Instant, bool)>>,
}

impl Probe {
    fn start(ns: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ns.to_owned();
        let handle = std::thread::spawn(move || {
            in_netns(&ns, move || {
                let s = UdpSocket::bind((CLIENT_V4, 0)).expect("bind");
                s.set_nonblocking(true).expect("nonblocking");
                let mut sent: Vec<(u16, Instant, bool)> = Vec::new();
                let begin = Instant::now();
                let mut buf = [0u8; 16];
                while !flag.load(Ordering::Relaxed) && begin.elapsed() < MAX_PROBE {
                    for port in PORTS {
                        let seq = u64::try_from(sent.len()).expect("fits");
                        let to = SocketAddr::new(SERVER_V4.parse().expect("addr"), port);
                        let _ = s.send_to(&seq.to_le_bytes(), to);
                        sent.push((port, Instant::now(), false));
                    }
                    let next = Instant::now() + INTERVAL;
                    while Instant::now() < next {
                        while let Ok((8, _)) = s.recv_from(&mut buf) {
                            let seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                            if let Some(e) = sent.get_mut(usize::try_from(seq).expect("fits")) {
                                e.2 = true;
                            }
                        }
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
                // Late answers.
                std::thread::sleep(Duration::from_millis(20));
                while let Ok((8, _)) = s.recv_from(&mut buf) {
                    let seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                    if let Some(e) = sent.get_mut(usize::try_from(seq).expect("fits")) {
                        e.2 = true;
                    }
                }
                sent
            })
        });
        Self { stop, handle }
    }

    fn finish(self) -> Vec<(u16, Instant, bool)> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("probe thread")
    }
}

/// Send time of the first datagram to `port` from which on every one was
/// answered (`answered`) or none was (`!answered`).
fn switch_time(sent: &[(u16, Instant, bool)], port: u16, answered: bool) -> Option<Instant> {
    let on_port: Vec<_> = sent.iter().filter(|e| e.0 == port).collect();
    let last_other = on_port.iter().rposition(|e| e.2 != answered);
    match last_other {
        None => on_port.first().map(|e| e.1),
        Some(i) => on_port.get(i + 1).map(|e| e.1),
    }
}

fn policy(fillers: usize, netns: &str, toggled: bool) -> String {
    let rule = |port: u16| {
        format!(
            "  [[security_group.ingress]]\n  protocol = \"udp\"\n  from_port = {port}\n  to_port = {port}\n  cidr_blocks = [\"198.51.100.0/24\"]\n"
        )
    };
    let mut extra = rule(ALWAYS);
    if toggled {
        extra.push_str(&rule(TOGGLED));
    }
    rules_file_with(
        fillers,
        Shape::OneGroup,
        true,
        Some((netns, "eth0")),
        &extra,
    )
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The number after `needle` ("... in N ms") on the last line before
/// `before` (from `from` on) that has it.
fn logged_ms(agent: &AgentProcess, from: usize, before: usize, needle: &str) -> f64 {
    let text = agent.log_text();
    text.lines()
        .enumerate()
        .filter(|(i, l)| *i >= from && *i <= before && l.contains(needle))
        .filter_map(|(_, l)| l.split(needle).nth(1)?.split(' ').next()?.parse().ok())
        .last()
        .unwrap_or(f64::NAN)
}

pub fn measure(sizes: &[usize], runs: usize) -> Vec<Row> {
    let dir = std::env::temp_dir().join(unique_prefix("sgbench-reload"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut rows = Vec::new();
    for &fillers in sizes {
        let pair = Pair::new();
        let _servers = Servers::start(&pair.sink_ns.name, &[], &PORTS);
        let path = dir.join("bench.toml");
        let (mut start_ms, mut reload_ms, mut agent_side) = (Vec::new(), Vec::new(), Vec::new());
        let mut phases: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        let (mut lost, mut answered, mut allowed_sent) = (0, 0, 0);
        let mut rules = 0;
        for run in 0..runs {
            let off = policy(fillers, &pair.sink_ns.name, false);
            if run == 0 {
                let vpc = sg_agent::config::from_str("b.toml".as_ref(), &off).expect("valid");
                rules = crate::policies::ingress_rules(&vpc);
            }
            write_atomically(&path, &off);
            // Start: probes run before the agent exists, so the first
            // dropped datagram marks the first enforced packet.
            let probe = Probe::start(&pair.gen_ns.name);
            std::thread::sleep(Duration::from_millis(100));
            let spawned = Instant::now();
            let agent = AgentProcess::start_logging(&path, &[], "info,sg_agent=debug");
            agent.expect_log("ready: enforcing", 0, Duration::from_mins(1));
            std::thread::sleep(Duration::from_millis(100));
            let sent = probe.finish();
            let enforced = switch_time(&sent, NEVER, false).expect("enforcement began");
            start_ms.push(enforced.saturating_duration_since(spawned).as_secs_f64() * 1e3);

            // Reload: the toggled port opens.
            let probe = Probe::start(&pair.gen_ns.name);
            std::thread::sleep(Duration::from_millis(100));
            let mark = agent.log_lines();
            let changed = Instant::now();
            write_atomically(&path, &policy(fillers, &pair.sink_ns.name, true));
            let line = agent.expect_log("applied in", mark, Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(100));
            let sent = probe.finish();
            let opened = switch_time(&sent, TOGGLED, true).expect("the toggled port opened");
            reload_ms.push(opened.saturating_duration_since(changed).as_secs_f64() * 1e3);
            agent_side.push(logged_ms(&agent, line, line, "applied in "));
            // The agent admits a file in one step (parse, validate,
            // compile with its size accounting), and logs it as one.
            for (p, needle) in phases
                .iter_mut()
                .zip(["parsed, validated and compiled in ", "policy swapped in "])
            {
                p.push(logged_ms(&agent, mark, line, needle));
            }
            // Misjudged meanwhile: leave out the last 10 ms, still in flight.
            let end = sent.last().map(|e| e.1).expect("probes sent");
            for e in sent
                .iter()
                .filter(|e| e.1 + Duration::from_millis(10) < end)
            {
                match e.0 {
                    ALWAYS => {
                        allowed_sent += 1;
                        lost += u64::from(!e.2);
                    }
                    NEVER => answered += u64::from(e.2),
                    _ => {}
                }
            }
            assert_eq!(agent.terminate().code(), Some(0), "agent exit");
        }
        eprintln!(
            "reload {rules} rules: {:.1} ms",
            Stat::of(&reload_ms).median
        );
        rows.push(Row {
            rules,
            reload_ms: Stat::of(&reload_ms),
            agent_ms: Stat::of(&agent_side),
            start_ms: Stat::of(&start_ms),
            phases_ms: phases.map(|p| Stat::of(&p)),
            allowed_lost: lost,
            denied_answered: answered,
            allowed_sent,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

//! Measurement 2: end to end between two network namespaces over a veth
//! pair, the same policy enforced four ways: nothing, sg-agent, the
//! nftables ruleset an administrator would write, and the iptables one.

use std::{fmt::Write as _, path::PathBuf, process::Command, time::Duration};

use sg_agent::{
    config::{Direction, Ports, Protocol, Vpc},
    policy::resolve::effective_rules,
};

use super::{
    connrate,
    policies::{CLIENT_V4, SERVER_V4, Shape, rules_file},
    stats::Stat,
};
use sg_tests::{
    agent::AgentProcess,
    lab::{Netns, bring_up_eth0, ip, unique_prefix},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    None,
    /// An XDP program that only passes, attached natively: what attaching
    /// any XDP program to a veth costs.
    FloorNative,
    FloorGeneric,
    SgAgent,
    SgAgentGeneric,
    SgAgentDefault,
    /// The agent on the host side of the receiver's link: the sender's end
    /// of the veth (as a VM's tap or a container's host veth), the inbound
    /// program at its TC egress, the guarded outbound one at its TC ingress.
    SgAgentHostSide,
    Nftables,
    Iptables,
}

impl Filter {
    pub const ALL: [Self; 9] = [
        Self::None,
        Self::FloorNative,
        Self::FloorGeneric,
        Self::SgAgent,
        Self::SgAgentGeneric,
        Self::SgAgentDefault,
        Self::SgAgentHostSide,
        Self::Nftables,
        Self::Iptables,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "no filter",
            Self::FloorNative => "XDP_PASS program, native",
            Self::FloorGeneric => "XDP_PASS program, generic",
            Self::SgAgent => "sg-agent, --ingress-hook xdp (native)",
            Self::SgAgentGeneric => "sg-agent, --xdp-mode generic",
            Self::SgAgentDefault => "sg-agent, default (auto: TC ingress on veth)",
            Self::SgAgentHostSide => "sg-agent, host side of the veth (TC egress + TC ingress)",
            Self::Nftables => "nftables (sets, ct state)",
            Self::Iptables => "iptables-nft (rule per source)",
        }
    }

    /// Whether its cost depends on the policy size.
    pub fn enforces_policy(self) -> bool {
        !matches!(self, Self::None | Self::FloorNative | Self::FloorGeneric)
    }
}

/// What is installed on the sink; dropped (detached) when done.
enum Installed {
    Nothing,
    Agent(AgentProcess),
    Floor(aya::Ebpf),
}

#[derive(Clone, Copy)]
pub struct Config {
    pub flood_secs: u64,
    pub iperf_secs: u64,
    /// Seconds of short TCP connections per round.
    pub conn_secs: f64,
    pub runs: usize,
}

impl Config {
    /// The full measurement, or tiny counts (`--smoke`).
    pub fn new(smoke: bool) -> Self {
        if smoke {
            Self {
                flood_secs: 1,
                iperf_secs: 1,
                conn_secs: 1.0,
                runs: 1,
            }
        } else {
            Self {
                flood_secs: 4,
                iperf_secs: 4,
                conn_secs: 2.0,
                runs: 5,
            }
        }
    }
}

pub struct Row {
    pub filter: Filter,
    pub rules: usize,
    /// Disallowed UDP packets absorbed per second.
    pub flood_pps: Stat,
    /// CPU time (all cores, busy) per absorbed packet, ns.
    pub cpu_ns: Stat,
    /// Of it, the time in softirq context (the receive path: veth's NAPI or
    /// backlog, XDP, TC, netfilter) per absorbed packet, ns.
    pub softirq_ns: Stat,
    /// TCP throughput of an allowed flow, Gbit/s.
    pub tcp_gbps: Stat,
    /// Short TCP connections completed per second (`connrate`).
    pub conn_per_sec: Stat,
    /// Of those attempted over every round, how many failed.
    pub conn_failed: u64,
    /// The agent's resident set while enforcing (sg-agent only), KiB.
    pub agent_rss_kib: Option<u64>,
}

/// Two namespaces joined by one veth pair: "gen" (the client, 198.51.100.7)
/// and "sink" (the instance, 10.0.0.1). Neither has a default route.
pub struct Pair {
    pub gen_ns: Netns,
    pub sink_ns: Netns,
}

impl Pair {
    pub fn new() -> Self {
        let prefix = unique_prefix("sgbe");
        let gen_ns = Netns::create(&format!("{prefix}-gen"));
        let sink_ns = Netns::create(&format!("{prefix}-sink"));
        ip(&[
            "-n",
            &gen_ns.name,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &sink_ns.name,
        ]);
        bring_up_eth0(&gen_ns.name, &[CLIENT_V4], &["10.0.0.0/8"]);
        bring_up_eth0(&sink_ns.name, &[SERVER_V4], &["198.51.100.0/24"]);
        // The short connections' many sources.
        for i in 0..connrate::SOURCES {
            let addr = format!("{}/32", connrate::source(i));
            ip(&["-n", &gen_ns.name, "addr", "add", &addr, "dev", "eth0"]);
        }
        Self { gen_ns, sink_ns }
    }

    fn mac(ns: &str) -> String {
        link_mac(ns, "eth0")
    }
}

impl Default for Pair {
    fn default() -> Self {
        Self::new()
    }
}

/// The MAC address of `dev` in namespace `ns`, as `ip` prints it.
pub fn link_mac(ns: &str, dev: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "link", "show", dev])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("MAC")
        .to_owned()
}

fn sh(ns: &str, script: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", script])
        .output()
        .expect("sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "in {ns}: {script}\n{text}");
    text
}

/// The instance's inbound TCP/UDP rules as (protocol, CIDR, from, to),
/// without those a broader block with the same protocol and ports already
/// covers (nftables refuses overlapping interval elements; iptables would
/// never reach them).
fn tcp_udp_rules(vpc: &Vpc) -> Vec<(&'static str, String, u16, u16)> {
    let inst = vpc.instance("bench").expect("bench instance");
    let mut rules: Vec<(&'static str, ipnet::IpNet, u16, u16)> = effective_rules(vpc, inst)
        .into_iter()
        .filter(|r| r.direction == Direction::Ingress)
        .flat_map(|r| {
            let proto = match r.rule.protocol {
                Protocol::Number(6) => "tcp",
                Protocol::Number(17) => "udp",
                _ => return Vec::new(),
            };
            let Ports::Range { from, to } = r.rule.ports else {
                return Vec::new();
            };
            r.prefixes
                .iter()
                .filter(|p| p.addr().is_ipv4())
                .map(|p| (proto, *p, from, to))
                .collect()
        })
        .collect();
    rules.sort_by_key(|r| r.1.prefix_len());
    let mut seen = std::collections::HashSet::new();
    rules
        .into_iter()
        .filter(|&(proto, net, f, t)| {
            let covered = (0..=net.prefix_len()).any(|len| {
                let wider = ipnet::IpNet::new(net.addr(), len).expect("valid").trunc();
                seen.contains(&(proto, wider, f, t))
            });
            seen.insert((proto, net, f, t));
            !covered
        })
        .map(|(proto, net, f, t)| (proto, net.to_string(), f, t))
        .collect()
}

/// What a Linux administrator writes to emulate the group: conntrack first,
/// a per-instance chain, one concatenated (address . port) set per protocol.
pub fn nft_ruleset(vpc: &Vpc) -> String {
    let rules = tcp_udp_rules(vpc);
    let mut out = String::from("table inet sg_bench {\n");
    for proto in ["tcp", "udp"] {
        let elems: Vec<String> = rules
            .iter()
            .filter(|r| r.0 == proto)
            .map(|(_, cidr, f, t)| {
                if f == t {
                    format!("{cidr} . {f}")
                } else {
                    format!("{cidr} . {f}-{t}")
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "  set {proto}_allow {{\n    type ipv4_addr . inet_service\n    flags interval"
        );
        if !elems.is_empty() {
            let _ = writeln!(out, "    elements = {{ {} }}", elems.join(", "));
        }
        out.push_str("  }\n");
    }
    out.push_str(
        "  chain instance_bench {\n    ip saddr . tcp dport @tcp_allow accept\n    ip saddr . udp dport @udp_allow accept\n    counter drop\n  }\n\
         \x20 chain input {\n    type filter hook input priority 0; policy accept;\n    iifname \"lo\" accept\n    ct state established,related accept\n    iifname \"eth0\" jump instance_bench\n  }\n}\n",
    );
    out
}

/// The iptables equivalent: conntrack match, one rule per source.
pub fn iptables_ruleset(vpc: &Vpc) -> String {
    let mut out = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:SG-BENCH - [0:0]\n-A INPUT -i lo -j ACCEPT\n-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A INPUT -i eth0 -j SG-BENCH\n",
    );
    for (proto, cidr, f, t) in tcp_udp_rules(vpc) {
        let ports = if f == t {
            f.to_string()
        } else {
            format!("{f}:{t}")
        };
        let _ = writeln!(
            out,
            "-A SG-BENCH -s {cidr} -p {proto} --dport {ports} -j ACCEPT"
        );
    }
    out.push_str("-A SG-BENCH -j DROP\nCOMMIT\n");
    out
}

/// Jiffies of all cores since boot: (busy, of which softirq).
/// Busy and softirq jiffies of the whole machine (/proc/stat).
pub fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy = cpu
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .take(6)
        .sum();
    (busy, cpu[6])
}

/// What the host-side agent dropped of what the host sends into the link
/// (its inbound direction), from its status.
fn host_side_drops(agent: &AgentProcess) -> u64 {
    agent_counts(agent, "ingress", |r| r.starts_with("drop"))
}

/// The packets the agent counted in `direction` under the reasons `counts`
/// picks, summed over its instances (from its status).
pub fn agent_counts(agent: &AgentProcess, direction: &str, counts: impl Fn(&str) -> bool) -> u64 {
    let status = agent.status_json();
    status["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["packets"][direction].as_object())
        .flat_map(|reasons| reasons.iter())
        .filter(|(r, _)| counts(r))
        .filter_map(|(_, n)| n.as_u64())
        .sum()
}

fn rx_packets(ns: &str) -> u64 {
    sh(ns, "cat /sys/class/net/eth0/statistics/rx_packets")
        .trim()
        .parse()
        .expect("rx_packets")
}

/// A flood of disallowed UDP (to port 9) from gen for `secs` seconds,
/// bounded by a packet count too; returns packets absorbed per second, and
/// busy and softirq CPU ns per packet.
/// `dropped_before`: packets dropped before they reach the receiver's
/// veth, which its `rx_packets` cannot count (the host-side row drops the
/// flood at TC egress of the sender's end): the agent's own count.
fn flood(pair: &Pair, secs: u64, dropped_before: &dyn Fn() -> u64) -> (f64, f64, f64) {
    let conf = std::env::temp_dir().join(format!("{}-flood.cfg", pair.gen_ns.name));
    let cfg = format!(
        "{{\n  eth(da={}, sa={}, type=0x0800),\n  ipv4(saddr={CLIENT_V4}, daddr={SERVER_V4}, proto=17, ttl=64),\n  udp(sp=12345, dp=9),\n  fill(0x41, 18)\n}}\n",
        Pair::mac(&pair.sink_ns.name),
        Pair::mac(&pair.gen_ns.name)
    );
    std::fs::write(&conf, cfg).expect("trafgen config");
    let rx0 = rx_packets(&pair.sink_ns.name) + dropped_before();
    let cpu0 = cpu_jiffies();
    let start = std::time::Instant::now();
    // trafgen gives up when the veth's ring pushes back (EAGAIN); restart it
    // until the time is up (bounded in restarts too).
    for _ in 0..10_000 {
        let left = secs.saturating_sub(start.elapsed().as_secs());
        if left == 0 {
            break;
        }
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &pair.gen_ns.name,
                "timeout",
                "-s",
                "INT",
                &left.to_string(),
                "trafgen",
                "-o",
                "eth0",
                "-c",
            ])
            .arg(&conf)
            .args(["-P", "1", "-n", "100000000", "-q"])
            .output()
            .expect("trafgen runs");
        if !(out.status.success() || out.status.code() == Some(124)) {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("Resource temporarily unavailable"),
                "trafgen: {err}"
            );
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&conf);
    let packets = rx_packets(&pair.sink_ns.name) + dropped_before() - rx0;
    let clk_tck = 100.0; // USER_HZ: /proc/stat counts in 1/100 s.
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let ns = |jiffies: u64| jiffies as f64 / clk_tck * 1e9;
    let cpu1 = cpu_jiffies();
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let p = packets as f64;
    (
        p / elapsed,
        ns(cpu1.0 - cpu0.0) / p.max(1.0),
        ns(cpu1.1 - cpu0.1) / p.max(1.0),
    )
}

/// iperf3, one TCP stream gen -> sink:5201 (allowed by every policy).
fn iperf(pair: &Pair, secs: u64) -> f64 {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.sink_ns.name,
            "iperf3",
            "-s",
            "-1",
            "-p",
            "5201",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.gen_ns.name,
            "iperf3",
            "-c",
            SERVER_V4,
            "-p",
            "5201",
            "-t",
            &secs.to_string(),
            "-J",
        ])
        .output()
        .expect("iperf3 client");
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 JSON: {e}\n{text}"));
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 result: {text}"))
        / 1e9
}

/// Installs `filter` on the sink for the policy with `fillers` filler rules;
/// returns what to keep alive while it is measured (the agent process when
/// it is sg-agent) and the number of rules.
fn install(
    filter: Filter,
    pair: &Pair,
    fillers: usize,
    dir: &std::path::Path,
) -> (Installed, usize) {
    let text = rules_file(
        fillers,
        Shape::OneGroup,
        true,
        Some((&pair.sink_ns.name, "eth0")),
    );
    let vpc = sg_agent::config::from_str("bench.toml".as_ref(), &text).expect("bench policy valid");
    let rules = crate::policies::ingress_rules(&vpc);
    let sink = &pair.sink_ns.name;
    match filter {
        Filter::None => (Installed::Nothing, rules),
        Filter::FloorNative | Filter::FloorGeneric => {
            let _inside = sg_agent::dataplane::netns::NetnsGuard::enter(sink).expect("enter sink");
            let mut ebpf = aya::EbpfLoader::new()
                .load(crate::floor::OBJECT)
                .expect("floor loads");
            let prog: &mut aya::programs::Xdp = ebpf
                .program_mut(crate::floor::PROGRAM)
                .and_then(|p| p.try_into().ok())
                .expect("floor");
            prog.load().expect("floor verifies");
            let mode = if filter == Filter::FloorNative {
                aya::programs::XdpMode::Driver
            } else {
                aya::programs::XdpMode::Skb
            };
            prog.attach("eth0", mode).expect("attach floor");
            (Installed::Floor(ebpf), 0)
        }
        Filter::SgAgent
        | Filter::SgAgentGeneric
        | Filter::SgAgentDefault
        | Filter::SgAgentHostSide => {
            let path = dir.join("bench.toml");
            let text = if filter == Filter::SgAgentHostSide {
                // The same policy, on the sender's end of the receiver's link.
                text.replace(
                    &format!("netns = \"{}\"\ninterface = \"eth0\"", pair.sink_ns.name),
                    &format!(
                        "netns = \"{}\"\nhost_interface = \"eth0\"",
                        pair.gen_ns.name
                    ),
                )
            } else {
                text.clone()
            };
            assert!(
                filter != Filter::SgAgentHostSide || text.contains("host_interface"),
                "the host-side row's rules name the host side"
            );
            // The connection allowance conntrack has here, so the short
            // connections measure the data path, not the default allowance
            // (65,536: a closed connection keeps its entry for 10 s).
            let text = format!(
                "[conntrack]\nmax_tracked_connections = {}\n\n{text}",
                nf_conntrack_max()
            );
            std::fs::write(&path, &text).expect("write rules");
            let args: &[&str] = match filter {
                Filter::SgAgent => &["--ingress-hook", "xdp"],
                Filter::SgAgentGeneric => &["--xdp-mode", "generic"],
                _ => &[],
            };
            let agent = AgentProcess::start_with(&path, args);
            agent.expect_log("ready: enforcing", 0, Duration::from_mins(1));
            if filter == Filter::SgAgentDefault {
                // The row measures what the default chose: say so if not TC.
                let line = agent.expect_log("attached instance", 0, Duration::from_secs(1));
                let logged = agent.log_line(line);
                assert!(
                    logged.contains("TC ingress (auto: driver veth"),
                    "the default hook on veth: {logged}"
                );
            }
            (Installed::Agent(agent), rules)
        }
        Filter::Nftables => {
            let path = dir.join("ruleset.nft");
            std::fs::write(&path, nft_ruleset(&vpc)).expect("write nft");
            sh(sink, &format!("nft -f {}", path.display()));
            (Installed::Nothing, rules)
        }
        Filter::Iptables => {
            let path = dir.join("rules.v4");
            std::fs::write(&path, iptables_ruleset(&vpc)).expect("write iptables");
            sh(sink, &format!("iptables-restore < {}", path.display()));
            (Installed::Nothing, rules)
        }
    }
}

/// This machine's conntrack table size (the nftables and iptables rows'
/// connection allowance).
fn nf_conntrack_max() -> u32 {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .expect("nf_conntrack_max: conntrack built in or its module loaded")
        .trim()
        .parse()
        .expect("a number")
}

/// One configuration under measurement: a filter at a policy size, on a
/// namespace pair of its own.
struct Setup {
    filter: Filter,
    rules: usize,
    pair: Pair,
    installed: Installed,
    pps: Vec<f64>,
    cpu: Vec<f64>,
    softirq: Vec<f64>,
    gbps: Vec<f64>,
    conns: Vec<f64>,
    conn_failed: u64,
}

/// Every configuration is installed side by side first, each on a pair of
/// its own (no state carries over), then measured in turns, run after run:
/// a slow moment of this shared machine spreads over all of them instead of
/// landing on one, so the ratios compare like with like.
pub fn measure(cfg: &Config, sizes: &[usize]) -> Vec<Row> {
    let dir: PathBuf = std::env::temp_dir().join(unique_prefix("sgbench-e2e"));
    let mut setups: Vec<Setup> = Vec::new();
    for (i, &fillers) in sizes.iter().enumerate() {
        for filter in Filter::ALL {
            if i > 0 && !filter.enforces_policy() {
                continue;
            }
            let own_dir = dir.join(setups.len().to_string());
            std::fs::create_dir_all(&own_dir).expect("temp dir");
            let pair = Pair::new();
            let (installed, rules) = install(filter, &pair, fillers, &own_dir);
            setups.push(Setup {
                filter,
                rules,
                pair,
                installed,
                pps: Vec::new(),
                cpu: Vec::new(),
                softirq: Vec::new(),
                gbps: Vec::new(),
                conns: Vec::new(),
                conn_failed: 0,
            });
        }
    }
    for run in 1..=cfg.runs {
        for s in &mut setups {
            let dropped_before = || match (&s.installed, s.filter) {
                (Installed::Agent(agent), Filter::SgAgentHostSide) => host_side_drops(agent),
                _ => 0,
            };
            let (p, c, si) = flood(&s.pair, cfg.flood_secs, &dropped_before);
            s.pps.push(p);
            s.cpu.push(c);
            s.softirq.push(si);
            s.gbps.push(iperf(&s.pair, cfg.iperf_secs));
            let conns = connrate::measure(&s.pair.gen_ns.name, &s.pair.sink_ns.name, cfg.conn_secs);
            s.conns.push(conns.per_sec);
            s.conn_failed += conns.failed;
            eprintln!(
                "e2e run {run}/{}: {} rules={}: {p:.0} pps, {:.1} Gbit/s, {:.0} connections/s ({} failed)",
                cfg.runs,
                s.filter.name(),
                s.rules,
                s.gbps.last().copied().unwrap_or_default(),
                conns.per_sec,
                conns.failed
            );
        }
    }
    let rows = setups
        .into_iter()
        .map(|s| {
            let agent_rss_kib = match s.installed {
                Installed::Agent(a) => {
                    let rss = rss_kib(a.pid());
                    assert_eq!(a.terminate().code(), Some(0), "agent exit");
                    Some(rss)
                }
                Installed::Floor(ebpf) => {
                    drop(ebpf);
                    None
                }
                Installed::Nothing => None,
            };
            drop(s.pair);
            Row {
                filter: s.filter,
                rules: s.rules,
                flood_pps: Stat::of(&s.pps),
                cpu_ns: Stat::of(&s.cpu),
                softirq_ns: Stat::of(&s.softirq),
                tcp_gbps: Stat::of(&s.gbps),
                conn_per_sec: Stat::of(&s.conns),
                conn_failed: s.conn_failed,
                agent_rss_kib,
            }
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

/// `VmRSS` of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

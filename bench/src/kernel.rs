//! Measurement 1: the in-kernel cost per packet through `BPF_PROG_TEST_RUN`,
//! with the real ingress ifindex in `ctx_in`.

use std::{fmt::Write as _, net::IpAddr, process::Command};

use aya::{
    EbpfLoader,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use sg_agent::{
    config::{self, Vpc},
    dataplane::{Dataplane, Observe, Variant, netns::NetnsGuard},
    policy::compile::compile,
};
use sg_common::policy::Settings;

use super::{
    policies::{CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6, Shape, rules_file_with},
    stats::Stat,
};
use sg_tests::{
    frames::{ACK, SYN, Shape as FrameShape, Transport, frame},
    lab::{Netns, ip, unique_prefix},
};

/// The policies measured: label, filler rules, how they are spread.
pub const POLICIES: &[(&str, usize, Shape)] = &[
    ("base rules only", 0, Shape::OneGroup),
    ("one full group", 57, Shape::OneGroup),
    ("five full groups", 297, Shape::Groups),
    ("1,000 via a prefix list", 1_000, Shape::PrefixList),
    ("10,000 via a prefix list", 10_000, Shape::PrefixList),
    ("10,000 over 16 groups", 10_000, Shape::Groups),
    (
        "10,000 over 16 groups, one port",
        10_000,
        Shape::GroupsOnePort,
    ),
    ("base rules, 20-entry network ACL", 0, Shape::OneGroup),
    (ACL_CODE_ONLY, 0, Shape::OneGroup),
    (
        "10,000 over 16 groups, 20-entry network ACL",
        10_000,
        Shape::Groups,
    ),
];

/// The smallest policy (no network ACL) judged by the programs built with
/// network-ACL code, as every instance was before the agent chose the
/// variant without it for instances that have none: what that code's mere
/// presence costs, side by side with *base rules only*.
pub const ACL_CODE_ONLY: &str = "base rules, programs with network-ACL code";

/// Whether a policy of [`POLICIES`] has the server's subnet filtered by a
/// network ACL of AWS's default quota ([`network_acl_20`]).
pub fn with_network_acl(label: &str) -> bool {
    label.ends_with("20-entry network ACL")
}

/// The server's subnet (`10.0.0.0/24`, `2001:db8::/64`; the client is
/// outside it) and its network ACL: 20 entries each way, AWS's default
/// quota, the 18 first denying addresses the client is not (every one is
/// tried before the allow-all entries at 190 and 200 match).
pub fn network_acl_20() -> String {
    let mut out = String::from(
        "\n[[subnet]]\nname = \"bench\"\ncidr_block = \"10.0.0.0/24\"\nipv6_cidr_block = \"2001:db8::/64\"\n\n[[network_acl]]\nname = \"bench\"\nsubnets = [\"bench\"]\n",
    );
    for direction in ["ingress", "egress"] {
        for i in 1..=18 {
            let _ = writeln!(
                out,
                "  [[network_acl.{direction}]]\n  rule_no = {}\n  action = \"deny\"\n  protocol = \"tcp\"\n  from_port = 80\n  to_port = 80\n  cidr_block = \"203.0.113.{i}/32\"",
                i * 10
            );
        }
        let _ = writeln!(
            out,
            "  [[network_acl.{direction}]]\n  rule_no = 190\n  action = \"allow\"\n  protocol = \"all\"\n  cidr_block = \"0.0.0.0/0\"\n  [[network_acl.{direction}]]\n  rule_no = 200\n  action = \"allow\"\n  protocol = \"all\"\n  ipv6_cidr_block = \"::/0\""
        );
    }
    out
}

pub struct Config {
    pub repeat: u32,
    pub runs: usize,
}

/// One measured cell: a policy, a family, a path.
struct Cell {
    policy: &'static str,
    rules: usize,
    family: &'static str,
    path: &'static str,
    dp: std::rc::Rc<Dataplane>,
    data: Vec<u8>,
    verdict: u32,
    reason: &'static str,
    samples: Vec<f64>,
}

pub struct Row {
    pub policy: String,
    pub rules: usize,
    pub family: &'static str,
    pub path: &'static str,
    pub ns: Stat,
    /// Each run's figure, in run order: every cell is measured once per
    /// run, one after another, so two rows' samples of one run are side by
    /// side (see [`paired_ratio`]).
    pub samples: Vec<f64>,
}

/// The median over runs of `a`'s figure over `b`'s in the same run: a
/// slow moment of the machine weighs on both of a run's figures, so this
/// reads a small difference that the medians' spread (run to run) hides.
pub fn paired_ratio(a: &Row, b: &Row) -> f64 {
    let ratios: Vec<f64> = a
        .samples
        .iter()
        .zip(&b.samples)
        .map(|(x, y)| x / y)
        .collect();
    Stat::of(&ratios).median
}

pub struct Report {
    pub ifindex: u32,
    pub floor: Stat,
    pub rows: Vec<Row>,
    /// xdp-filter on the same frames: (frame, its verdict, cost).
    pub peer: Vec<(&'static str, Stat)>,
    pub repeat: u32,
    /// New flows with keys never seen, timed by the kernel's statistics.
    pub fresh: Option<crate::newflows::Report>,
}

/// Single runs per row and round in [`crate::newflows`]: with `runs` rounds
/// of both families, the new flows fit the default allowance (65,536), and
/// a round's events fit the event ring (256 KiB of 72-byte records).
const FRESH_PER_ROUND: usize = 3_000;

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;

pub(crate) fn xdp_md(ifindex: u32, len: usize) -> Vec<u8> {
    let len = u32::try_from(len).expect("short frame");
    [0u32, len, 0, ifindex, 0, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect()
}

pub(crate) fn run(prog: &Xdp, data: &[u8], ctx: &[u8], repeat: u32) -> (u32, f64) {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(data),
            ctx_in: Some(ctx),
            repeat,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    (r.return_value, r.duration.as_secs_f64() * 1e9)
}

/// TC's "next" (TCX) verdict, which the egress program returns to pass.
const TC_NEXT: u32 = u32::MAX;

/// Inbound packets counted under reason `name`.
fn counter(dp: &Dataplane, name: &str) -> u64 {
    dp.counters().expect("counters").ingress.get(name)
}

/// Timeouts of zero: every entry is stale the next nanosecond, so each
/// repetition of the same packet takes the new-flow path (connection-table
/// lookup, classification, insertion) instead of becoming tracked.
fn always_new(s: Settings) -> Settings {
    Settings {
        tcp_syn_ns: 0,
        tcp_established_ns: 0,
        tcp_closing_ns: 0,
        tcp_closed_ns: 0,
        udp_ns: 0,
        udp_stream_ns: 0,
        icmp_ns: 0,
        other_ns: 0,
        ..s
    }
}

/// The port of the untracked new-flow path, and its rule.
const UNTRACKED_PORT: u16 = 8080;
pub(crate) const UNTRACKED_RULE: &str = "  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 8080\n  to_port = 8080\n  cidr_blocks = [\"0.0.0.0/0\"]\n  ipv6_cidr_blocks = [\"::/0\"]\n";

/// A TCP segment between the client (at `CLIENT_V4`/`CLIENT_V6`) and the
/// server, either way.
pub(crate) fn segment(v6: bool, to_server: bool, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let client: IpAddr = if v6 { CLIENT_V6 } else { CLIENT_V4 }
        .parse()
        .expect("address");
    segment_from(client, v6, to_server, sport, dport, flags)
}

/// [`segment`] from (or to) another client address.
pub(crate) fn segment_from(
    client: IpAddr,
    v6: bool,
    to_server: bool,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let server: IpAddr = if v6 { SERVER_V6 } else { SERVER_V4 }
        .parse()
        .expect("address");
    let (src, dst) = if to_server {
        (client, server)
    } else {
        (server, client)
    };
    frame(
        src,
        dst,
        &Transport::Tcp {
            sport,
            dport,
            flags,
        },
        &FrameShape::default(),
    )
}

/// The client's connection from `sport` to the server's port 80, made
/// tracked: SYN in, SYN-ACK out, ACK in (an inbound segment that is not a
/// SYN opens no entry), so that its next packets are tracked.
pub(crate) fn handshake(dp: &Dataplane, ifindex: u32, v6: bool, sport: u16) {
    let syn = segment(v6, true, sport, 80, SYN);
    run(dp.ingress(), &syn, &xdp_md(ifindex, syn.len()), 1);
    let synack = segment(v6, false, 80, sport, SYN | ACK);
    let out = dp
        .egress()
        .test_run(aya::programs::TestRunOptions {
            data_in: Some(&synack),
            ..aya::programs::TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN on TC egress");
    assert_eq!(out.return_value, TC_NEXT, "the SYN-ACK leaves");
    let ack = segment(v6, true, sport, 80, ACK);
    run(dp.ingress(), &ack, &xdp_md(ifindex, ack.len()), 1);
}

#[expect(clippy::too_many_lines, reason = "one measurement, read top to bottom")]
pub fn measure(cfg: &Config) -> Report {
    let prefix = unique_prefix("sgbk");
    let ns = Netns::create(&prefix);
    ip(&[
        "-n", &ns.name, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    ip(&["-n", &ns.name, "link", "set", "v0", "up"]);
    ip(&["-n", &ns.name, "link", "set", "v1", "up"]);
    // ctx_in's ingress ifindex is resolved in the caller's namespace.
    let inside = NetnsGuard::enter(&ns.name).expect("enter bench netns");
    let ifindex = nix::net::if_::if_nametoindex("v0").expect("v0 exists");

    let tcp_frame = |v6, sport, dport, flags| segment(v6, true, sport, dport, flags);
    // A new flow, a tracked one's next packet, a packet no rule allows.
    let frames = |v6: bool| {
        (
            tcp_frame(v6, 40000, 80, SYN),
            tcp_frame(v6, 40001, 80, ACK),
            tcp_frame(v6, 40002, 81, SYN),
        )
    };
    // A new flow AWS leaves untracked: tcp/8080 is allowed from the whole
    // address space, and the base group keeps the default all-traffic
    // egress, so no connection-table entry is made for it.
    let untracked_frame = |v6: bool| tcp_frame(v6, 40003, UNTRACKED_PORT, SYN);

    let mut floor_obj = EbpfLoader::new()
        .load(crate::floor::OBJECT)
        .expect("floor object loads");
    let floor: &mut Xdp = floor_obj
        .program_mut(crate::floor::PROGRAM)
        .and_then(|p| p.try_into().ok())
        .expect("floor program");
    floor.load().expect("floor program verifies");
    let floor: &Xdp = floor;

    // Every policy loaded twice: once with zero timeouts (the new-flow
    // path) and once as configured (tracked and dropped), all before any
    // measurement, so that the runs below interleave every cell and a slow
    // moment of this shared machine spreads over all of them.
    // `SG_BENCH_CELL=policy/family/path` measures that one cell alone, ten
    // times the runs and without the peer: for `perf record` (profile.rs).
    let only = std::env::var("SG_BENCH_CELL").ok();
    let cells: Vec<Cell> = POLICIES
        .iter()
        .filter(|(label, _, _)| {
            only.as_deref()
                .is_none_or(|o| o.split('/').next() == Some(*label))
        })
        .flat_map(|&(label, fillers, shape)| {
            let mut text = rules_file_with(fillers, shape, false, None, UNTRACKED_RULE);
            if with_network_acl(label) {
                text.push_str(&network_acl_20());
            }
            let vpc: Vpc =
                config::from_str("bench.toml".as_ref(), &text).expect("bench policy valid");
            let rules: usize = crate::policies::ingress_rules(&vpc);
            let compiled = compile(&vpc);
            let tables = &compiled.instances[0].tables;
            let mut fresh = Dataplane::load().expect("load");
            fresh
                .publish(tables, always_new(compiled.instances[0].settings))
                .expect("publish");
            let mut normal = Dataplane::load().expect("load");
            normal
                .publish(tables, compiled.instances[0].settings)
                .expect("publish");
            if label == ACL_CODE_ONLY {
                for dp in [&mut fresh, &mut normal] {
                    dp.use_variant(Variant::NetworkAcl)
                        .expect("the programs with network-ACL code load");
                }
            }
            let fresh = std::rc::Rc::new(fresh);
            let normal = std::rc::Rc::new(normal);
            // The same policy with flow logs on (per-flow counts, an event
            // per dropped packet within the bound), beside it, for the
            // smallest policy only.
            let logged = (fillers == 0).then(|| {
                let mut dp = Dataplane::load_observing(Observe::default().with_flow_logs())
                    .expect("load with flow logs");
                dp.publish(tables, compiled.instances[0].settings)
                    .expect("publish");
                if label == ACL_CODE_ONLY {
                    dp.use_variant(Variant::NetworkAcl)
                        .expect("the programs with network-ACL code load");
                }
                std::rc::Rc::new(dp)
            });
            [false, true].into_iter().flat_map(move |v6| {
                let family = if v6 { "IPv6" } else { "IPv4" };
                let (new, tracked, dropped) = frames(v6);
                let handshake = |dp: &Dataplane| handshake(dp, ifindex, v6, 40001);
                handshake(&normal);
                let logged_cells = logged.clone().map(|dp| {
                    handshake(&dp);
                    [
                        (
                            "tracked, flow logs on",
                            dp.clone(),
                            tracked.clone(),
                            XDP_PASS,
                            "pass_tracked",
                        ),
                        (
                            "dropped, flow logs on",
                            dp,
                            dropped.clone(),
                            XDP_DROP,
                            "drop_no_rule",
                        ),
                    ]
                });
                [
                    (
                        "new flow allowed",
                        fresh.clone(),
                        new,
                        XDP_PASS,
                        "pass_rule",
                    ),
                    (
                        "new flow, untracked",
                        normal.clone(),
                        untracked_frame(v6),
                        XDP_PASS,
                        "pass_untracked",
                    ),
                    ("tracked", normal.clone(), tracked, XDP_PASS, "pass_tracked"),
                    ("dropped", normal.clone(), dropped, XDP_DROP, "drop_no_rule"),
                ]
                .into_iter()
                .chain(logged_cells.into_iter().flatten())
                .map(move |(path, dp, data, verdict, reason)| Cell {
                    policy: label,
                    rules,
                    family,
                    path,
                    dp,
                    data,
                    verdict,
                    reason,
                    samples: Vec::new(),
                })
            })
        })
        .collect();
    let mut cells = cells;
    if let Some(only) = &only {
        cells.retain(|c| format!("{}/{}/{}", c.policy, c.family, c.path) == *only);
        assert!(!cells.is_empty(), "SG_BENCH_CELL={only}: no such cell");
    }
    let (new4, _, _) = frames(false);
    let floor_ctx = xdp_md(ifindex, new4.len());
    let mut floor_samples = Vec::new();
    let runs = if only.is_some() {
        cfg.runs * 10
    } else {
        cfg.runs
    };
    for _ in 0..runs {
        floor_samples.push(run(floor, &new4, &floor_ctx, cfg.repeat).1);
        for c in &mut cells {
            let ctx = xdp_md(ifindex, c.data.len());
            let before = counter(&c.dp, c.reason);
            let (ret, ns) = run(c.dp.ingress(), &c.data, &ctx, cfg.repeat);
            let taken = counter(&c.dp, c.reason) - before;
            assert_eq!(
                ret, c.verdict,
                "{} {} {}: verdict",
                c.policy, c.family, c.path
            );
            assert_eq!(
                taken,
                u64::from(cfg.repeat),
                "{} {} {}: every repetition must take the {} path",
                c.policy,
                c.family,
                c.path,
                c.reason
            );
            c.samples.push(ns);
        }
    }
    let fresh = only
        .is_none()
        .then(|| crate::newflows::measure(floor, ifindex, cfg.runs, FRESH_PER_ROUND));
    let floor = Stat::of(&floor_samples);
    let rows = cells
        .iter()
        .map(|c| Row {
            policy: c.policy.to_owned(),
            rules: c.rules,
            family: c.family,
            path: c.path,
            ns: Stat::of(&c.samples),
            samples: c.samples.clone(),
        })
        .collect();
    drop(inside);
    let peer = if only.is_some() {
        Vec::new()
    } else {
        xdp_filter(&ns.name, &frames(false), ifindex, cfg)
    };
    Report {
        ifindex,
        floor,
        rows,
        peer,
        repeat: cfg.repeat,
        fresh,
    }
}

/// xdp-filter (xdp-tools) in allow mode with a port rule (tcp/udp 80) and
/// an address rule, loaded natively on the same veth, run on the same IPv4
/// frames with `bpftool prog run`. It runs in a shell of its own mount
/// namespace, where bpffs is mounted for libxdp.
fn xdp_filter(
    ns: &str,
    frames: &(Vec<u8>, Vec<u8>, Vec<u8>),
    ifindex: u32,
    cfg: &Config,
) -> Vec<(&'static str, Stat)> {
    let dir = std::env::temp_dir().join(format!("{ns}-xdpfilter"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (_, tracked, dropped) = frames;
    let cases: [(&str, &[u8]); 2] = [
        ("tcp/80: port rule hit, XDP_DROP", tracked),
        ("tcp/81: no rule hit, XDP_PASS", dropped),
    ];
    let mut script = String::from(
        "set -e\nmount -t bpf bpf /sys/fs/bpf\nxdp-filter load -p allow v0 >/dev/null\nxdp-filter port 80 >/dev/null\nxdp-filter ip 203.0.113.9 >/dev/null\n\
         id=$(bpftool -j net show dev v0 | grep -o '\"id\":[0-9]*' | head -1 | cut -d: -f2)\n",
    );
    for (i, (_, data)) in cases.iter().enumerate() {
        let d = dir.join(format!("frame{i}"));
        let c = dir.join(format!("ctx{i}"));
        std::fs::write(&d, data).expect("frame file");
        std::fs::write(&c, xdp_md(ifindex, data.len())).expect("ctx file");
        for _ in 0..cfg.runs {
            let _ = writeln!(
                script,
                "echo case{i}; bpftool prog run id $id data_in {} ctx_in {} repeat {}",
                d.display(),
                c.display(),
                cfg.repeat
            );
        }
    }
    script.push_str("xdp-filter unload v0 >/dev/null\n");
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", &script])
        .output()
        .expect("sh runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "xdp-filter measurement failed:\n{text}"
    );
    let mut samples = vec![Vec::new(); cases.len()];
    let mut current = 0;
    for line in text.lines() {
        if let Some(i) = line.strip_prefix("case") {
            current = i.trim().parse().expect("case index");
        } else if let Some(rest) = line.split("duration (average): ").nth(1) {
            let ns: f64 = rest
                .trim_end_matches("ns")
                .trim()
                .parse()
                .expect("duration");
            samples[current].push(ns);
        }
    }
    cases
        .iter()
        .zip(samples)
        .map(|((name, _), s)| (*name, Stat::of(&s)))
        .collect()
}

//! Measurement 1c: a new flow as a server meets it, a key the connection
//! table has never held, beside a tracked packet, a dropped one and the
//! floor, timed by the kernel's own per-program statistics
//! (`BPF_ENABLE_STATS`).
//!
//! `BPF_PROG_TEST_RUN` repeats one packet, so section 1's new-flow row
//! makes each repetition find its entry stale (zero timeouts) and replace
//! it. Here every packet is another connection (its own source address and
//! port), each run once; with statistics on, the kernel adds each run's
//! duration to the program's `run_time_ns` (reading its clock twice, which
//! the floor row pays too), so the system call around it does not count.
//! Every row runs the same number of single runs, in turns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::Xdp;
use sg_agent::{
    config::{self, Vpc},
    dataplane::{Dataplane, Observe},
    policy::compile::compile,
};
use sg_tests::frames::{ACK, SYN};

use super::{
    kernel::{UNTRACKED_RULE, handshake, run, segment, segment_from, xdp_md},
    policies::{Shape, rules_file_with},
    stats::Stat,
};

pub struct Row {
    pub family: &'static str,
    pub path: &'static str,
    /// Mean ns per run in each round.
    pub ns: Stat,
}

pub struct Report {
    pub rows: Vec<Row>,
    /// Single runs per row and round.
    pub per_round: usize,
    /// Entries the connection table held at the end (every new flow's).
    pub entries_at_end: usize,
}

/// The rows, in the order each round runs them.
const PATHS: [&str; 5] = [
    "XDP_PASS floor",
    "tracked",
    "new flow, a key never seen",
    "new flow, a key never seen, no event",
    "dropped",
];

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;

/// Run time and count of `prog` so far, from the kernel.
fn stats(prog: &Xdp) -> (u64, u64) {
    let info = prog.info().expect("program info");
    (
        u64::try_from(info.run_time().as_nanos()).expect("ns fit"),
        info.run_count(),
    )
}

/// Runs each frame once through `prog`, checking the verdict; the mean
/// kernel-measured ns per run.
fn mean_ns(prog: &Xdp, ifindex: u32, frames: &[Vec<u8>], verdict: u32, what: &str) -> f64 {
    let ctx = xdp_md(ifindex, frames[0].len());
    let (t0, n0) = stats(prog);
    for f in frames {
        let (ret, _) = run(prog, f, &ctx, 1);
        assert_eq!(ret, verdict, "{what}: verdict");
    }
    let (t1, n1) = stats(prog);
    assert_eq!(
        n1 - n0,
        frames.len() as u64,
        "{what}: one counted run per frame"
    );
    #[expect(clippy::cast_precision_loss, reason = "far below 2^52")]
    let mean = (t1 - t0) as f64 / frames.len() as f64;
    mean
}

/// Client `i` of the allowed range (`198.51.100.0/24`, `2001:db8:1::/48`).
fn client(v6: bool, i: usize) -> IpAddr {
    let host = u8::try_from(1 + i % 254).expect("1..=254");
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, u16::from(host)))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, host))
    }
}

/// `rounds` rounds of `per_round` packets per row, for IPv4 and IPv6, on
/// the smallest policy; `floor` is the `XDP_PASS` program, `ifindex` a veth's
/// in the caller's namespace.
pub fn measure(floor: &Xdp, ifindex: u32, rounds: usize, per_round: usize) -> Report {
    let vpc: Vpc = config::from_str(
        "bench.toml".as_ref(),
        &rules_file_with(0, Shape::OneGroup, false, None, UNTRACKED_RULE),
    )
    .expect("bench policy valid");
    let compiled = compile(&vpc);
    let load = |events_per_cpu| {
        let mut dp = Dataplane::load_observing(Observe {
            bits: 0,
            events_per_cpu,
        })
        .expect("load");
        dp.publish(
            &compiled.instances[0].tables,
            compiled.instances[0].settings,
        )
        .expect("publish");
        dp
    };
    // Every new flow sends the agent an event attributing it to its rules,
    // within a per-CPU bound a second (5,000 by default): `dp` as below the
    // bound, its ring drained before each round as the agent drains it;
    // `quiet` as beyond it (the bound spent: no event).
    let mut dp = load(u32::MAX);
    let quiet = load(0);
    // Every new flow stays in the table (a server's busy table, not an
    // empty one): the default allowance must hold them all.
    let new_flows = 2 * rounds * per_round;
    assert!(
        new_flows < usize::try_from(dp.conns_capacity()).expect("fits"),
        "{new_flows} new flows must fit the table"
    );
    let mut events = Vec::new();
    let _on = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("BPF_ENABLE_STATS");
    let mut rows = Vec::new();
    for v6 in [false, true] {
        let family = if v6 { "IPv6" } else { "IPv4" };
        handshake(&dp, ifindex, v6, 40001);
        handshake(&quiet, ifindex, v6, 40001);
        let tracked = vec![segment(v6, true, 40001, 80, ACK); per_round];
        let dropped = vec![segment(v6, true, 40002, 81, SYN); per_round];
        let mut samples: [Vec<f64>; PATHS.len()] = Default::default();
        for round in 0..rounds {
            // Connections never seen: source port and address both move.
            let fresh: Vec<Vec<u8>> = (0..per_round)
                .map(|i| {
                    let k = round * per_round + i;
                    let sport = 1024 + u16::try_from(k / 254).expect("port fits");
                    segment_from(client(v6, k), v6, true, sport, 80, SYN)
                })
                .collect();
            for (i, path) in PATHS.iter().enumerate() {
                let (prog, frames, verdict) = match i {
                    0 => (floor, &tracked, XDP_PASS),
                    1 => (dp.ingress(), &tracked, XDP_PASS),
                    2 => {
                        events.clear();
                        dp.drain_events(&mut events);
                        (dp.ingress(), &fresh, XDP_PASS)
                    }
                    3 => (quiet.ingress(), &fresh, XDP_PASS),
                    _ => (dp.ingress(), &dropped, XDP_DROP),
                };
                samples[i].push(mean_ns(prog, ifindex, frames, verdict, path));
            }
        }
        for (path, samples) in PATHS.iter().zip(samples) {
            rows.push(Row {
                family,
                path,
                ns: Stat::of(&samples),
            });
        }
    }
    for each in [&dp, &quiet] {
        assert_eq!(
            each.counters().expect("counters").ingress.get("pass_rule"),
            (new_flows + 2) as u64,
            "every fresh SYN (and the two handshakes' SYNs) took the new-flow path"
        );
    }
    events.clear();
    dp.drain_events(&mut events);
    assert_eq!(
        events.len(),
        per_round,
        "the last round's new flows each sent their event"
    );
    assert_eq!(
        quiet.events_lost().expect("lost"),
        new_flows as u64 + 2,
        "no event past a bound of 0"
    );
    Report {
        rows,
        per_round,
        entries_at_end: dp.tracked_connections(),
    }
}

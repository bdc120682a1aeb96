//! `cargo xtask bench`: runs every measurement and writes BENCHMARKS.md.

use sg_tests::bench::{e2e, kernel};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    if only.as_deref().is_none_or(|o| o == "kernel") {
        let cfg = if smoke {
            kernel::Settings2 {
                repeat: 10_000,
                runs: 1,
            }
        } else {
            kernel::Settings2 {
                repeat: 1_000_000,
                runs: 5,
            }
        };
        let k = kernel::measure(&cfg);
        println!("floor {}", k.floor.show(1));
        for r in &k.rows {
            println!(
                "{:<28} {:>6} {} {:<18} {}",
                r.policy,
                r.rules,
                r.family,
                r.path,
                r.ns.show(1)
            );
        }
        for (n, s) in &k.peer {
            println!("xdp-filter {n}: {}", s.show(1));
        }
    }
    if only.as_deref().is_none_or(|o| o == "e2e") {
        let cfg = if smoke {
            e2e::Config {
                flood_secs: 1,
                iperf_secs: 1,
                runs: 1,
            }
        } else {
            e2e::Config {
                flood_secs: 5,
                iperf_secs: 5,
                runs: 3,
            }
        };
        for r in e2e::measure(&cfg, &[57, 9_997]) {
            println!(
                "{:<32} {:>6} flood {} pps cpu {} ns/pkt tcp {} Gbit/s rss {:?}",
                r.filter.name(),
                r.rules,
                r.flood_pps.show(0),
                r.cpu_ns.show(0),
                r.tcp_gbps.show(2),
                r.agent_rss_kib
            );
        }
    }
}

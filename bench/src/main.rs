//! `cargo xtask bench`: runs every measurement in one go and writes
//! BENCHMARKS.md (`--smoke`: tiny counts, written under target/ instead).
//! `--only kernel|profile|e2e|tap|reload|memory|etcd|many|ec2` runs one part and
//! prints it (BENCHMARKS.md is written only by a run of every part).
//!
//! A benchmark, never a test: it asserts that each measurement took the
//! path it claims, never a timing. sg-agent is measured against its floor
//! (an XDP program that only passes, built from `bench/floor` and embedded
//! here, never in the agent), a peer XDP program, nftables and iptables.

mod connrate;
mod e2e;
mod ec2;
mod etcd;
mod floor;
mod kernel;
mod many;
mod memory;
mod newflows;
mod policies;
mod profile;
mod reload;
mod report;
mod stats;
mod tap;
mod targets;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let part = |p: &str| only.as_deref().is_none_or(|o| o == p);

    let kcfg = if smoke {
        kernel::Config {
            repeat: 10_000,
            runs: 1,
        }
    } else {
        kernel::Config {
            repeat: 1_000_000,
            runs: 7,
        }
    };
    let ecfg = e2e::Config::new(smoke);
    let sizes = [57, 9_997];

    eprintln!("==> 1. in-kernel cost");
    let kernel = part("kernel").then(|| kernel::measure(&kcfg));
    eprintln!("==> 1b. where the in-kernel time goes (perf)");
    let profiles = if part("profile") && std::env::var_os("SG_BENCH_CELL").is_none() {
        profile::measure(smoke)
    } else {
        Vec::new()
    };
    eprintln!("==> 2. end to end");
    let e2e_rows = if part("e2e") {
        e2e::measure(&ecfg, &sizes)
    } else {
        Vec::new()
    };
    eprintln!("==> 2b. host side of a tap and a veth");
    let tap_rows = if part("tap") {
        tap::measure_run(smoke)
    } else {
        Vec::new()
    };
    eprintln!("==> 3. reload");
    let reload_rows = if part("reload") {
        reload::measure(&[57, 997, 9_997], if smoke { 1 } else { 5 })
    } else {
        Vec::new()
    };
    eprintln!("==> 4. memory");
    let memory = if part("memory") {
        memory::measure(true)
    } else {
        Vec::new()
    };

    eprintln!("==> 5. many hosts (etcd)");
    let etcd = part("etcd").then(|| etcd::measure(&etcd::Config::new(smoke)));
    eprintln!("==> 6. many instances on one host");
    let many = part("many").then(|| {
        if smoke {
            many::measure(10, 2)
        } else {
            many::measure(250, 10)
        }
    });

    let ec2_rows = ec2::run(part("ec2"), smoke);

    let Some(kernel) = kernel else {
        print_parts(&profiles, &e2e_rows, &tap_rows, &reload_rows, &ec2_rows);
        if let Some(e) = &etcd {
            println!("{e:?}");
        }
        if let Some(m) = &many {
            println!("{}", report::many_text(m));
        }
        return;
    };
    let all = report::All {
        kernel,
        profiles,
        e2e: e2e_rows,
        e2e_cfg: ecfg,
        tap: tap_rows,
        reload: reload_rows,
        memory,
        etcd,
        many,
        ec2: ec2_rows,
        smoke,
    };
    let text = report::render(&all);
    if only.is_some() {
        // One part (or a profile's single cell): printed, never written
        // over the whole run's report.
        println!("{text}");
        return;
    }
    let path = if smoke {
        "target/BENCHMARKS.smoke.md"
    } else {
        "BENCHMARKS.md"
    };
    std::fs::write(path, &text).expect("write the report");
    println!("{text}");
    eprintln!("wrote {path}");
}

/// `--only` without the kernel part: what was measured, without a report.
fn print_parts(
    profiles: &[profile::Profile],
    e2e_rows: &[e2e::Row],
    tap_rows: &[tap::Row],
    reload_rows: &[reload::Row],
    ec2_rows: &[ec2::Row],
) {
    tap::print(tap_rows);
    let mut text = String::new();
    ec2::render(&mut text, ec2_rows);
    println!("{text}");
    for p in profiles {
        println!("profile {} ({} samples):", p.path, p.samples);
        for (g, share) in profile::GROUPS.iter().zip(p.shares) {
            println!("  {:5.1}% {g}", share * 100.0);
        }
    }
    for r in e2e_rows {
        println!(
            "{} {} flood {} cpu {} softirq {} tcp {} connections/s {} ({} failed)",
            r.filter.name(),
            r.rules,
            r.flood_pps.show(0),
            r.cpu_ns.show(0),
            r.softirq_ns.show(0),
            r.tcp_gbps.show(2),
            r.conn_per_sec.show(0),
            r.conn_failed
        );
    }
    for r in reload_rows {
        println!(
            "reload {} rules {} ms start {} ms",
            r.rules,
            r.reload_ms.show(1),
            r.start_ms.show(1)
        );
    }
}

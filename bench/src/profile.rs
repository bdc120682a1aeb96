//! Where a path's time goes: `perf record` (the cpu-clock software event,
//! which needs no hardware counters) over one in-kernel cell measured on its
//! own, the kernel's symbols grouped by what they do. Debian's bpftool has
//! no `prog profile`; the program's own instructions show up in perf as one
//! `bpf_prog_<tag>_sg_ingress` symbol.

use std::process::Command;

/// The cells profiled: the smallest policy's IPv4 paths.
pub const CELLS: [(&str, &str); 4] = [
    ("tracked", "base rules only/IPv4/tracked"),
    ("new flow allowed", "base rules only/IPv4/new flow allowed"),
    (
        "new flow, untracked",
        "base rules only/IPv4/new flow, untracked",
    ),
    ("dropped", "base rules only/IPv4/dropped"),
];

/// What a kernel symbol is part of, in the order the report lists them.
pub const GROUPS: [&str; 7] = [
    "sg-agent's program (parse, state machine, inlined array lookups)",
    "BPF_PROG_TEST_RUN's loop (the XDP_PASS floor)",
    "hash tables: hashing, bucket walk, key compare",
    "LPM trie lookups",
    "connection-table insertion: element allocation and freeing, bucket lock",
    "clock (bpf_jiffies64 is inlined by the verifier: counted in the program)",
    "other kernel code",
];

fn group_of(symbol: &str) -> usize {
    if symbol.starts_with("bpf_prog_") && symbol.ends_with("_sg_ingress") {
        0
    } else if symbol.starts_with("bpf_test_")
        || symbol.starts_with("bpf_prog_") && symbol.ends_with("_sg_floor")
        || symbol == "__local_bh_enable_ip"
    {
        1
    } else if symbol == "htab_lru_map_update_elem"
        || symbol == "htab_map_update_elem"
        || symbol == "alloc_htab_elem"
        || symbol == "free_htab_elem"
        || symbol == "htab_elem_free"
        || symbol == "check_and_free_fields"
        || symbol.starts_with("unit_alloc")
        || symbol.starts_with("unit_free")
        || symbol.starts_with("bpf_mem_")
        || symbol.starts_with("pcpu_freelist")
        || symbol.starts_with("__pcpu_freelist")
        || symbol.starts_with("bpf_lru_")
        || symbol.starts_with("prealloc_lru")
        || symbol.starts_with("htab_lock_bucket")
        || symbol.starts_with("htab_unlock_bucket")
        || symbol.starts_with("_raw_spin")
        || symbol == "__pi_memcpy"
    {
        4
    } else if symbol.starts_with("htab_")
        || symbol.starts_with("__htab_")
        || symbol == "lookup_nulls_elem_raw"
        || symbol == "memcmp"
        || symbol == "bpf_map_lookup_elem"
    {
        2
    } else if symbol.starts_with("trie_") {
        3
    } else if symbol == "bpf_jiffies64"
        || symbol.contains("ktime_get_coarse")
        || symbol == "set_normalized_timespec64"
    {
        5
    } else {
        6
    }
}

/// Loading and verifying the programs happens in the same process; these
/// symbols are not the packet path, and are left out of the shares.
fn is_setup(symbol: &str) -> bool {
    const SETUP: [&str; 14] = [
        "do_check",
        "states_equal",
        "reg",
        "__reg",
        "__mark",
        "mark_",
        "check_",
        "clear_page",
        "htab_map_alloc",
        "htab_map_free",
        "bpf_update_live_stack",
        "reset_idmap_scratch",
        "kfree",
        "__memcg",
    ];
    symbol == "pv_native_safe_halt"
        || symbol.starts_with("bpf_prog_") && symbol.contains("xdpfilt")
        || SETUP.iter().any(|p| symbol.starts_with(p))
}

pub struct Profile {
    pub path: &'static str,
    /// Share of the packet path's samples per group, in [`GROUPS`] order.
    pub shares: [f64; GROUPS.len()],
    pub samples: u64,
}

/// Runs this benchmark binary under `perf record` once per cell (only that
/// cell's policy loaded, `runs` x the repeat count) and groups the samples.
pub fn measure(smoke: bool) -> Vec<Profile> {
    let exe = std::env::current_exe().expect("own path");
    let dir = std::env::temp_dir().join(format!("sgbench-perf{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let profiles = CELLS
        .iter()
        .map(|&(path, cell)| {
            let data = dir.join("perf.data");
            let mut args = vec![
                "record",
                "-q",
                "-a",
                "-e",
                "cpu-clock",
                "-F",
                "10000",
                "-o",
                data.to_str().expect("utf-8 path"),
                "--",
                exe.to_str().expect("utf-8 path"),
                "--only",
                "kernel",
            ];
            if smoke {
                args.push("--smoke");
            }
            let out = Command::new("perf")
                .args(&args)
                .env("SG_BENCH_CELL", cell)
                .output()
                .expect("perf runs (linux-perf, installed by cargo xtask bootstrap)");
            assert!(
                out.status.success(),
                "perf record: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let report = Command::new("perf")
                .args(["report", "-i", data.to_str().expect("utf-8 path")])
                .args(["--sort", "sym", "--stdio", "-F", "sample,sym"])
                .output()
                .expect("perf report runs");
            let text = String::from_utf8_lossy(&report.stdout);
            let (shares, samples) = group(&text);
            Profile {
                path,
                shares,
                samples,
            }
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    profiles
}

/// Parses `perf report -F sample,sym` lines ("  1234  [k] symbol").
fn group(text: &str) -> ([f64; GROUPS.len()], u64) {
    let mut counts = [0u64; GROUPS.len()];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut words = line.split_whitespace();
        let (Some(n), Some(space), Some(symbol)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        if space != "[k]" || is_setup(symbol) {
            continue;
        }
        counts[group_of(symbol)] += n;
    }
    let total: u64 = counts.iter().sum();
    #[expect(clippy::cast_precision_loss, reason = "sample counts far below 2^52")]
    let shares = counts.map(|c| c as f64 / total.max(1) as f64);
    (shares, total)
}

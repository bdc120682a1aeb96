//! `cargo xtask fuzz --seconds N`: each cargo-fuzz target of `fuzz/` for N
//! seconds (libFuzzer, nightly), from the seed corpus in the repository
//! (read only; what the run adds goes to a scratch directory), printing
//! each target's executions, coverage and findings. A crash fails the run
//! and leaves its input under fuzz/artifacts/.
//!
//! The targets are built as cargo-fuzz builds them (the same sanitizer-
//! coverage flags, no sanitizer), with the nightly toolchain the eBPF build
//! already installs, so nothing more is installed: `cargo fuzz` works on
//! the same directory for anyone who has it.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{step, workspace_root};

pub const TARGETS: [&str; 4] = ["rules_file", "policy_lookup", "packet_parser", "ec2_api"];

/// The flags cargo-fuzz builds libFuzzer targets with (`--sanitizer none`).
const RUSTFLAGS: &str = "-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cdebug-assertions";

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

pub fn run(seconds: u32, only: Option<&str>) -> anyhow::Result<()> {
    if let Some(name) = only
        && !TARGETS.contains(&name)
    {
        bail!(
            "no fuzz target {name:?}: the targets are {}",
            TARGETS.join(", ")
        );
    }
    let root = workspace_root();
    let fuzz = root.join("fuzz");
    step("building the fuzz targets (nightly, sanitizer coverage)");
    let status = Command::new("cargo")
        .current_dir(&fuzz)
        // The targets need no eBPF object: the agent's pure code only.
        .env("AYA_BUILD_SKIP", "1")
        .env("RUSTFLAGS", RUSTFLAGS)
        .args([
            "+nightly",
            "build",
            "--release",
            "--bins",
            "--target",
            TRIPLE,
        ])
        .status()
        .context("building the fuzz targets")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    for target in TARGETS.into_iter().filter(|t| only.is_none_or(|o| o == *t)) {
        step(&format!("fuzzing {target} for {seconds} s"));
        let scratch = std::env::temp_dir().join(format!("sg-fuzz-{target}"));
        std::fs::create_dir_all(&scratch).context("scratch corpus")?;
        let seeds = fuzz.join("corpus").join(target);
        let artifacts = fuzz.join("artifacts").join(target);
        std::fs::create_dir_all(&artifacts).context("artifacts dir")?;
        let binary = fuzz
            .join("target")
            .join(TRIPLE)
            .join("release")
            .join(target);
        let out = Command::new(&binary)
            .arg(&scratch)
            .arg(&seeds)
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .output()
            .with_context(|| format!("running {}", binary.display()))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let done = log
            .lines()
            .rev()
            .find(|l| l.contains("DONE") || l.contains("cov:"))
            .unwrap_or("(no libFuzzer status line)");
        let stat = |name: &str| {
            log.lines()
                .find(|l| l.starts_with(&format!("stat::{name}:")))
                .and_then(|l| l.split(':').next_back())
                .map_or("?".to_owned(), |v| v.trim().to_owned())
        };
        println!(
            "fuzz {target}: {} executions, {} exec/s, {}",
            stat("number_of_executed_units"),
            stat("average_exec_per_sec"),
            done.trim()
        );
        if !out.status.success() {
            eprintln!("{log}");
            bail!("fuzz target {target} failed: its input is under fuzz/artifacts/{target}/");
        }
    }
    Ok(())
}

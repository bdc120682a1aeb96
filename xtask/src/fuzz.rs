//! `cargo xtask fuzz --seconds N`: each cargo-fuzz target of `fuzz/` for N
//! seconds (libFuzzer, nightly), from the seed corpus in the repository
//! (read only; what the run adds goes to a scratch directory), printing
//! each target's executions, coverage and findings. A crash fails the run
//! and leaves its input under fuzz/artifacts/.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{step, workspace_root};

pub const TARGETS: [&str; 2] = ["rules_file", "policy_lookup"];

/// cargo-fuzz, from crates.io, if missing.
fn cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        step("installing cargo-fuzz (crates.io)");
        crate::cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    Ok(())
}

pub fn run(seconds: u32) -> anyhow::Result<()> {
    cargo_fuzz()?;
    let root = workspace_root();
    let fuzz = root.join("fuzz");
    for target in TARGETS {
        step(&format!("fuzzing {target} for {seconds} s"));
        let scratch = std::env::temp_dir().join(format!("sg-fuzz-{target}"));
        std::fs::create_dir_all(&scratch).context("scratch corpus")?;
        let seeds = fuzz.join("corpus").join(target);
        let out = Command::new("cargo")
            .current_dir(&root)
            // The targets need no eBPF object: the agent's pure code only.
            .env("AYA_BUILD_SKIP", "1")
            .args(["+nightly", "fuzz", "run", "--sanitizer", "none", target])
            .arg(&scratch)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .output()
            .context("running cargo fuzz")?;
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

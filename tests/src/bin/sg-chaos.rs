//! `cargo xtask chaos`: the fault-injection suite (see `sg_tests::chaos`).
//! A full run writes RELIABILITY.md; `--smoke` (CI) runs a short form and
//! prints the report. Either way the exit status is non-zero when a figure
//! misses its limit.

use std::{path::PathBuf, process::ExitCode};

use sg_tests::chaos::{Options, run, write_report};

fn main() -> ExitCode {
    let mut smoke = false;
    let mut out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => smoke = true,
            "--out" => out = args.next().map(PathBuf::from),
            other => {
                eprintln!("sg-chaos: unknown argument {other:?} (--smoke, --out FILE)");
                return ExitCode::from(2);
            }
        }
    }
    let report = run(if smoke { Options::SMOKE } else { Options::FULL });
    write_report(&report, smoke, out.as_deref());
    let failures = report.failures();
    if failures.is_empty() {
        eprintln!("chaos: every figure within its limit");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            eprintln!("chaos: FAILED: {f}");
        }
        ExitCode::FAILURE
    }
}

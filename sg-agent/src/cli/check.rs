//! `sg-agent check FILE`: validate a rules file, print the effective rules.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    config,
    policy::{Enforcer, report, validate_as},
};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The rules file (TOML), e.g. examples/seed-vpc.toml.
    file: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Accept a file that enforces no instance, as `run --allow-empty` does
    /// (without it, `check` refuses what `run` would refuse).
    #[arg(long)]
    allow_empty: bool,
    /// The largest rules file read, in bytes.
    #[arg(long, default_value_t = crate::config::MAX_BYTES)]
    max_config_bytes: u64,
    /// Judge the file as `run --node NAME` would: only that node's
    /// instances enforced, every other one a group member. Without it,
    /// every instance with an interface, whichever its node.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
}

/// A rules file read and admitted exactly as `run` admits it (the offline
/// verbs judge what `run` would enforce); the error already printed.
pub fn load(
    file: &std::path::Path,
    max_bytes: u64,
    allow_empty: bool,
) -> Result<(config::Vpc, String), ExitCode> {
    load_as(file, max_bytes, allow_empty, Enforcer::Everyone)
}

/// [`load`] as one enforcer sees the file.
pub fn load_as(
    file: &std::path::Path,
    max_bytes: u64,
    allow_empty: bool,
    enforcer: Enforcer<'_>,
) -> Result<(config::Vpc, String), ExitCode> {
    let policy = config::ReadPolicy {
        max_bytes,
        strict_owner: false,
    };
    let text = match config::read_with(file, policy) {
        Ok(f) => f.text,
        Err(e) => {
            eprintln!("{e}");
            return Err(ExitCode::from(1));
        }
    };
    // The very question `run` asks of the file, at start and on reload.
    match validate_as(file, &text, allow_empty, enforcer) {
        Ok(vpc) => Ok((vpc, text)),
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(1))
        }
    }
}

pub fn check(args: &CheckArgs) -> ExitCode {
    let file = &args.file;
    let enforcer = match &args.node {
        Some(node) => Enforcer::Node(Some(node)),
        None => Enforcer::Everyone,
    };
    let (vpc, text) = match load_as(file, args.max_config_bytes, args.allow_empty, enforcer) {
        Ok(v) => v,
        Err(code) => return code,
    };
    if let Some(warnings) = config::render_warnings(file, &text, &vpc, false) {
        eprintln!("{warnings}");
    }
    let report = report::report(&vpc);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialisable")
        );
    } else {
        print!(
            "{}",
            crate::config::diagnostics::printable_lines(&report::render_table(&report))
        );
        println!(
            "{}: valid ({} instances, {} security groups)",
            file.display(),
            vpc.instances.len(),
            vpc.groups.len()
        );
    }
    ExitCode::SUCCESS
}

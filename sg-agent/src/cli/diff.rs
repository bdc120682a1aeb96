//! `sg-agent diff OLD NEW [--json]`: per instance, the effective rules a
//! change adds and removes. Exit 0: no change; 3: they differ; 1: a file
//! is invalid.

use std::{path::PathBuf, process::ExitCode};

use crate::policy::diff;

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The rules file in force (or before the change).
    old: PathBuf,
    /// The rules file after the change.
    new: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Exit status when the files differ.
pub const DIFFERS: u8 = 3;

pub fn diff(args: &DiffArgs) -> ExitCode {
    let load = |f: &PathBuf| super::check::load(f, crate::config::MAX_BYTES, true);
    let (old, new) = match (load(&args.old), load(&args.new)) {
        (Ok((old, _)), Ok((new, _))) => (old, new),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let d = diff::diff(&old, &new);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&d).expect("serialisable")
        );
    } else {
        print!(
            "{}",
            crate::config::diagnostics::printable_lines(&diff::render(&d))
        );
    }
    if d.changed {
        ExitCode::from(DIFFERS)
    } else {
        ExitCode::SUCCESS
    }
}

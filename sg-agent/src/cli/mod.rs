//! The verbs behind the command line, returning the documented exit codes.

use std::{path::Path, process::ExitCode};

use crate::{check, config};

/// `sg-agent check FILE`.
pub fn check(file: &Path, json: bool) -> ExitCode {
    match config::load(file) {
        Ok(vpc) => {
            let report = check::report(&vpc);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serialisable")
                );
            } else {
                print!("{}", check::render_table(&report));
                println!(
                    "{}: valid ({} instances, {} security groups)",
                    file.display(),
                    vpc.instances.len(),
                    vpc.groups.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `sg-agent run --config FILE`.
pub fn run(file: &Path, opts: crate::agent::Options) -> ExitCode {
    match crate::agent::run(file, opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

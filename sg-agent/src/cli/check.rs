//! `sg-agent check FILE`: validate a rules file, print the effective rules.

use std::{path::PathBuf, process::ExitCode};

use crate::{config, policy::report};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The rules file (TOML), e.g. examples/seed-vpc.toml.
    file: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn check(args: &CheckArgs) -> ExitCode {
    let file = &args.file;
    match config::load(file) {
        Ok(vpc) => {
            let report = report::report(&vpc);
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serialisable")
                );
            } else {
                print!("{}", report::render_table(&report));
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

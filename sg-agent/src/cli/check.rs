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
    let loaded = config::read(file).and_then(|f| {
        config::from_str(file, &f.text)
            .map(|vpc| (vpc, f.text))
            .map_err(|d| config::ConfigError::Invalid(*d))
    });
    match loaded {
        Ok((vpc, text)) => {
            if let Some(warnings) = config::render_warnings(file, &text, &vpc) {
                eprintln!("{warnings}");
            }
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

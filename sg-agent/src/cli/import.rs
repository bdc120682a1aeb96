//! `sg-agent import aws ...` and `sg-agent export aws FILE`.

use std::{path::PathBuf, process::ExitCode};

use crate::import::{aws, terraform};

#[derive(Debug, clap::Subcommand)]
pub enum ImportCommand {
    /// From the JSON the AWS CLI prints (`aws ec2 describe-security-groups`
    /// and friends); writes a rules file to standard output.
    Aws(ImportAwsArgs),
    /// From `terraform show -json` (state or plan): `aws_security_group`,
    /// its standalone rule resources, prefix lists, instances and
    /// interfaces; writes a rules file to standard output.
    Terraform {
        /// `terraform show -json > STATE.json`.
        state: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct ImportAwsArgs {
    /// `aws ec2 describe-security-groups` output.
    #[arg(long, value_name = "SGS.json")]
    security_groups: PathBuf,
    /// `aws ec2 describe-network-interfaces` output: one instance per
    /// interface, with its addresses and groups.
    #[arg(long, value_name = "ENIS.json")]
    network_interfaces: Option<PathBuf>,
    /// `aws ec2 describe-instances` output: one instance per interface of
    /// each (named by its Name tag).
    #[arg(long, value_name = "INSTANCES.json")]
    instances: Option<PathBuf>,
    /// `aws ec2 describe-managed-prefix-lists` output.
    #[arg(long, value_name = "PLS.json")]
    prefix_lists: Option<PathBuf>,
    /// A directory of `aws ec2 get-managed-prefix-list-entries` outputs,
    /// one per list, named `pl-....json`.
    #[arg(long, value_name = "DIR")]
    entries_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ExportCommand {
    /// As `aws ec2 describe-security-groups` prints them (JSON, to standard
    /// output).
    Aws {
        /// The rules file.
        file: PathBuf,
    },
}

pub fn import(command: &ImportCommand) -> ExitCode {
    let mut warnings = Vec::new();
    let result = match command {
        ImportCommand::Aws(args) => {
            let inputs = aws::Inputs {
                security_groups: &args.security_groups,
                network_interfaces: args.network_interfaces.as_deref(),
                instances: args.instances.as_deref(),
                prefix_lists: args.prefix_lists.as_deref(),
                entries_dir: args.entries_dir.as_deref(),
            };
            aws::import(&inputs, &mut warnings)
        }
        ImportCommand::Terraform { state } => terraform::import(state, &mut warnings),
    };
    match result {
        Ok(text) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

pub fn export(command: &ExportCommand) -> ExitCode {
    let ExportCommand::Aws { file } = command;
    let (vpc, _) = match super::check::load(file, crate::config::MAX_BYTES, true) {
        Ok(v) => v,
        Err(code) => return code,
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&aws::export(&vpc)).expect("serialisable")
    );
    ExitCode::SUCCESS
}

//! `sg-agent import aws ...` and `sg-agent export aws FILE`.

use std::{path::PathBuf, process::ExitCode};

use crate::import::{aws, terraform};

#[derive(Debug, clap::Subcommand)]
pub enum ImportCommand {
    /// From the JSON the AWS CLI prints (`aws ec2 describe-security-groups`
    /// and friends); writes a rules file to standard output.
    Aws(Box<ImportAwsArgs>),
    /// From `terraform show -json` (state or plan): `aws_security_group`,
    /// its standalone rule resources, prefix lists, instances and
    /// interfaces, subnets and network ACLs, transit gateways, VPC
    /// associations and peerings; writes a rules file to
    /// standard output.
    Terraform {
        /// `terraform show -json > STATE.json`.
        state: PathBuf,
        /// Write the file even though some resources or fields cannot be
        /// carried over (each is named on standard error).
        #[arg(long)]
        allow_partial: bool,
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
    /// `aws ec2 describe-network-acls` output: the subnets' network ACLs
    /// (with --subnets, which gives their ranges).
    #[arg(long, value_name = "ACLS.json", requires = "subnets")]
    network_acls: Option<PathBuf>,
    /// `aws ec2 describe-subnets` output.
    #[arg(long, value_name = "SUBNETS.json")]
    subnets: Option<PathBuf>,
    /// `aws ec2 describe-transit-gateways` output: transit gateways and
    /// whether they carry group references (with
    /// --transit-gateway-attachments, which gives the VPCs they attach).
    #[arg(
        long,
        value_name = "TGWS.json",
        requires = "transit_gateway_attachments"
    )]
    transit_gateways: Option<PathBuf>,
    /// `aws ec2 describe-transit-gateway-vpc-attachments` output.
    #[arg(long, value_name = "ATTACHMENTS.json", requires = "transit_gateways")]
    transit_gateway_attachments: Option<PathBuf>,
    /// `aws ec2 describe-security-group-vpc-associations` output: the
    /// groups associated with other VPCs.
    #[arg(long, value_name = "ASSOCIATIONS.json")]
    vpc_associations: Option<PathBuf>,
    /// Write the file even though some of the input cannot be carried over
    /// (each is named on standard error).
    #[arg(long)]
    allow_partial: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum ExportCommand {
    /// As `aws ec2 describe-security-groups` prints them (JSON, to standard
    /// output); with --network-acls or --subnets, as `describe-network-acls`
    /// or `describe-subnets` print those.
    Aws {
        /// The rules file.
        file: PathBuf,
        /// The network ACLs instead (`describe-network-acls`).
        #[arg(long, conflicts_with = "subnets")]
        network_acls: bool,
        /// The subnets instead (`describe-subnets`).
        #[arg(long)]
        subnets: bool,
    },
}

pub fn import(command: &ImportCommand) -> ExitCode {
    let mut warnings = Vec::new();
    let (result, allow_partial) = match command {
        ImportCommand::Aws(args) => {
            let inputs = aws::Inputs {
                security_groups: &args.security_groups,
                network_interfaces: args.network_interfaces.as_deref(),
                instances: args.instances.as_deref(),
                prefix_lists: args.prefix_lists.as_deref(),
                entries_dir: args.entries_dir.as_deref(),
                network_acls: args.network_acls.as_deref(),
                subnets: args.subnets.as_deref(),
                transit_gateways: args.transit_gateways.as_deref(),
                transit_gateway_attachments: args.transit_gateway_attachments.as_deref(),
                vpc_associations: args.vpc_associations.as_deref(),
            };
            (aws::import(&inputs, &mut warnings), args.allow_partial)
        }
        ImportCommand::Terraform {
            state,
            allow_partial,
        } => (terraform::import(state, &mut warnings), *allow_partial),
    };
    match result {
        // A design must never import more open than it is: what is left
        // out is named, and nothing is written unless that is what the
        // user asked for.
        Ok(_) if !warnings.is_empty() && !allow_partial => {
            for w in &warnings {
                eprintln!("error: not carried over: {w}");
            }
            eprintln!(
                "hint: --allow-partial writes the rules file without them ({} left out)",
                warnings.len()
            );
            ExitCode::from(1)
        }
        Ok(text) => {
            for w in warnings {
                eprintln!("warning: not carried over: {w}");
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
    let ExportCommand::Aws {
        file,
        network_acls,
        subnets,
    } = command;
    let (vpc, _) = match super::check::load(file, crate::config::MAX_BYTES, true) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let json = if *network_acls {
        serde_json::to_string_pretty(&crate::import::network_acls::export(&vpc))
    } else if *subnets {
        serde_json::to_string_pretty(&crate::import::network_acls::export_subnets(&vpc))
    } else {
        serde_json::to_string_pretty(&aws::export(&vpc))
    };
    println!("{}", json.expect("serialisable"));
    ExitCode::SUCCESS
}

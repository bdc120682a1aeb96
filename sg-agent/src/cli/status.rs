//! `sg-agent status`: what the running agent enforces, asked through its
//! control socket.

use std::{path::PathBuf, process::ExitCode};

use crate::observe::{
    control::{self, ControlError},
    status, unix_now,
};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// One instance only.
    #[arg(long)]
    instance: Option<String>,
    /// The stable JSON form (schema version in its `schema` field; see
    /// docs/observability.md).
    #[arg(long)]
    json: bool,
    /// Every rule of every group with the flows it allowed and when last,
    /// rules that never matched included.
    #[arg(long)]
    rules: bool,
    /// The control socket the agent was started with.
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    control_socket: PathBuf,
}

/// Exit status when no agent answers.
pub const NOT_RUNNING: u8 = 3;

pub fn status(args: &StatusArgs) -> ExitCode {
    let mut status = match control::status(&args.control_socket) {
        Ok(s) => s,
        Err(e) => return failed(&e),
    };
    if let Some(name) = &args.instance {
        status.instances.retain(|i| i.name == *name);
        if status.instances.is_empty() {
            eprintln!("error: the agent enforces no instance named {name}");
            return ExitCode::from(1);
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).expect("status serializes")
        );
    } else {
        print!(
            "{}",
            crate::config::diagnostics::printable_lines(&status::render(
                &status,
                unix_now(),
                args.rules
            ))
        );
    }
    ExitCode::SUCCESS
}

pub fn failed(e: &ControlError) -> ExitCode {
    eprintln!(
        "error: {}",
        crate::config::diagnostics::printable_lines(&super::error_chain(e))
    );
    match e {
        ControlError::NotRunning(_) => ExitCode::from(NOT_RUNNING),
        _ => ExitCode::from(1),
    }
}

//! `sg-agent detach`: remove the pinned state an agent left behind.

use std::{path::PathBuf, process::ExitCode};

use crate::agent;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["instance", "all"])))]
pub struct DetachArgs {
    /// The instance whose programs and maps to remove.
    #[arg(long)]
    instance: Option<String>,
    /// Every instance under the state directory.
    #[arg(long)]
    all: bool,
    /// The state directory the agent ran with.
    #[arg(long, env = "SG_AGENT_STATE_DIR", default_value = crate::dataplane::pins::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

pub fn detach(args: &DetachArgs) -> ExitCode {
    let instance = if args.all {
        None
    } else {
        args.instance.as_deref()
    };
    match agent::detach(&args.state_dir, instance) {
        Ok(done) if done.is_empty() => {
            println!("nothing pinned under {}", args.state_dir.display());
            ExitCode::SUCCESS
        }
        Ok(done) => {
            for name in done {
                println!("detached {name}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "error: {}",
                crate::config::diagnostics::printable_lines(&super::error_chain(&e))
            );
            ExitCode::from(1)
        }
    }
}

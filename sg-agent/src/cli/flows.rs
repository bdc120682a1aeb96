//! `sg-agent flows --follow`: the running agent's flow-log records as each
//! aggregation interval ends, through its control socket.

use std::{io::Write, path::PathBuf, process::ExitCode};

use crate::observe::{
    control::{self, Reply},
    flowlog::{self, Action},
};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ActionArg {
    #[value(name = "ACCEPT", alias = "accept")]
    Accept,
    #[value(name = "REJECT", alias = "reject")]
    Reject,
}

#[derive(Debug, clap::Args)]
pub struct FlowsArgs {
    /// Keep following (required: records exist only as intervals end).
    #[arg(long, required = true)]
    follow: bool,
    /// One instance only.
    #[arg(long)]
    instance: Option<String>,
    /// Only ACCEPT or only REJECT records.
    #[arg(long, value_enum)]
    action: Option<ActionArg>,
    /// Records as JSON objects, one per line.
    #[arg(long, value_enum, default_value_t = flowlog::Format::Text)]
    format: flowlog::Format,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// The control socket the agent was started with.
    #[arg(long, value_name = "PATH", env = "SG_AGENT_CONTROL_SOCKET", default_value = control::DEFAULT_SOCKET)]
    control_socket: PathBuf,
}

pub fn flows(args: &FlowsArgs) -> ExitCode {
    let action = args.action.map(|a| match a {
        ActionArg::Accept => Action::Accept,
        ActionArg::Reject => Action::Reject,
    });
    let mut shown = 0u64;
    let mut out = std::io::stdout().lock();
    let result = control::follow(
        &args.control_socket,
        args.instance.clone(),
        action,
        |reply| {
            let line = match reply {
                Reply::Record(r) => match args.format {
                    flowlog::Format::Text => r.to_text(),
                    flowlog::Format::Json => r.to_json(),
                },
                Reply::Skipped(n) => {
                    eprintln!("warning: {n} records skipped (this reader fell behind)");
                    return true;
                }
                _ => return true,
            };
            let line = crate::config::diagnostics::printable_lines(&line);
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return false;
            }
            shown += 1;
            args.count.is_none_or(|n| shown < n)
        },
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::status::failed(&e),
    }
}

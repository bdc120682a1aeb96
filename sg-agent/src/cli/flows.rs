//! `sg-agent flows`: the running agent's latest flow-log records (the last
//! 1,000 it holds), with `--follow` each as its aggregation interval ends,
//! or with `--live` each packet event as the agent drains it (allowed new
//! flows and dropped packets, flow logs or not), through its control
//! socket.

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
    /// Keep following: each record as its interval ends (without it: the
    /// latest records the agent holds, at most 1,000, then exit).
    #[arg(long)]
    follow: bool,
    /// Follow packet events as they happen (within a tenth of a second): a
    /// record for each new or untracked flow allowed and each packet
    /// dropped, with the reason, whatever the agent was started with
    /// (no --flow-log or --ebpf-log needed; while someone follows live,
    /// every instance reports its drops). Bounded by --events-per-cpu.
    #[arg(long, conflicts_with = "follow")]
    live: bool,
    /// One instance only.
    #[arg(long, conflicts_with = "domain")]
    instance: Option<String>,
    /// The instances of one libvirt domain only (every NIC's, as the agent
    /// enforces them when asked; records name the instance).
    #[arg(long, value_name = "NAME")]
    domain: Option<String>,
    /// Only ACCEPT or only REJECT records.
    #[arg(long, value_enum)]
    action: Option<ActionArg>,
    /// Records as JSON objects, one per line.
    #[arg(long, value_enum, default_value_t = flowlog::Format::Text)]
    format: flowlog::Format,
    /// Stop after this many records (without --follow: the latest N).
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
    // A domain's instances, by name (a NIC hot-plugged later is not among
    // them: asked once).
    let of_domain: Option<Vec<String>> = match &args.domain {
        None => None,
        Some(domain) => match control::status(&args.control_socket) {
            Ok(status) => {
                let names: Vec<String> = status
                    .instances
                    .into_iter()
                    .filter(|i| i.libvirt_domain.as_deref() == Some(domain.as_str()))
                    .map(|i| i.name)
                    .collect();
                if names.is_empty() {
                    eprintln!(
                        "sg-agent flows: the agent enforces no instance of libvirt domain \
                         {domain} (`sg-agent status --domain {domain}` shows its NICs)"
                    );
                    return ExitCode::from(1);
                }
                Some(names)
            }
            Err(e) => return super::status::failed(&e),
        },
    };
    let wanted = |r: &flowlog::Record| of_domain.as_ref().is_none_or(|n| n.contains(&r.instance));
    let mut shown = 0u64;
    let mut out = std::io::stdout().lock();
    let render = |r: &flowlog::Record| match (args.format, &r.reason) {
        // A live record's reason after AWS's fields, as a comment.
        (flowlog::Format::Text, Some(why)) => format!("{}  # {why}", r.to_text()),
        (flowlog::Format::Text, None) => r.to_text(),
        (flowlog::Format::Json, _) => r.to_json(),
    };
    if !args.follow && !args.live {
        let mut held = Vec::new();
        let result = control::follow(
            &args.control_socket,
            (args.instance.clone(), action),
            control::Following::Recent,
            |reply| {
                if let Reply::Record(r) = reply
                    && wanted(r)
                {
                    held.push(render(r));
                }
                true
            },
        );
        if let Err(e) = result {
            return super::status::failed(&e);
        }
        let skip = args.count.map_or(0, |n| {
            held.len()
                .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX))
        });
        for line in &held[skip..] {
            let line = crate::config::diagnostics::printable_lines(line);
            if writeln!(out, "{line}").is_err() {
                break;
            }
        }
        return ExitCode::SUCCESS;
    }
    let result = control::follow(
        &args.control_socket,
        (args.instance.clone(), action),
        if args.live {
            control::Following::Live
        } else {
            control::Following::Intervals
        },
        |reply| {
            let line = match reply {
                Reply::Record(r) if !wanted(r) => return true,
                Reply::Record(r) => render(r),
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

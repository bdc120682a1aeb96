//! The `sg-agent` command line: one file per verb, each with its clap
//! arguments beside the code that runs it. `main` parses and dispatches.

mod check;
mod completions;
mod detach;
mod diff;
mod etcd;
mod explain;
mod flows;
mod import;
mod libvirt_hook;
mod matrix;
mod run;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit status:
  0  success (check: the file is valid; run: stopped by SIGINT/SIGTERM, everything
     detached unless --keep-on-exit; detach: the pinned state is gone)
  1  the rules file is invalid or enforces no instance (run, without --allow-empty),
     the state directory cannot be used, or an instance's programs could not be loaded;
     run: a reload in progress could not be abandoned within 1 s of SIGINT/SIGTERM
     (every instance is left enforced and pinned, as with --keep-on-exit);
     run --etcd (without --etcd-wait), push, pull: etcd cannot be reached, or has no
     description (pull, run); push: the file is invalid, or the description changed
     in etcd since it was read (pull, merge, push again)
  2  usage error (unknown option, missing argument)
  3  status, flows: no agent answers on the control socket; diff: the files differ
  4  explain: the flow is denied
  status --domain: 1 a NIC of the domain is not enforced
  libvirt-hook: 1 refuses the domain's start (an instance on its NICs could not
     be enforced, or no agent runs with --require-agent)

Example:
  sg-agent check examples/seed-vpc.toml
  sudo sg-agent run --config examples/seed-vpc.toml";

/// Each command's own exit statuses (the top level's `--help` has them
/// all).
const EXIT_CHECK: &str = "\
Exit status:
  0  the file is valid
  1  the file is invalid, or run would refuse it (it enforces no instance, without
     --allow-empty; a netns path is not a namespace)
  2  usage error";

const EXIT_RUN: &str = "\
Exit status:
  0  stopped by SIGINT/SIGTERM, everything detached (unless --keep-on-exit)
  1  the rules file is invalid or enforces no instance (without --allow-empty), the
     state directory cannot be used, an instance's programs could not be loaded,
     etcd cannot be reached or has no description (--etcd without --etcd-wait), or
     a reload in progress could not be abandoned within 1 s of SIGINT/SIGTERM
     (every instance is then left enforced and pinned, as with --keep-on-exit)
  2  usage error (a bad option or combination of options)";

const EXIT_ETCD: &str = "\
Exit status:
  0  done
  1  etcd cannot be reached or has no description (pull); push: the file is
     invalid, or the description changed in etcd since it was read (pull, merge,
     push again)
  2  usage error";

const EXIT_AGENT: &str = "\
Exit status:
  0  done
  1  the agent answered with an error (an instance it does not enforce, flow logs
     off, nothing to confirm); status --domain: a NIC of the domain is not enforced
  2  usage error
  3  no agent answers on the control socket";

const EXIT_OFFLINE: &str = "\
Exit status:
  0  done
  1  a file is invalid or cannot be read (import: something was not carried
     over, without --allow-partial)
  2  usage error";

const EXIT_EXPLAIN: &str = "\
Exit status:
  0  the flow is allowed
  1  the rules file is invalid, or the flow names what it does not have
  2  usage error
  4  the flow is denied";

const EXIT_DIFF: &str = "\
Exit status:
  0  the files enforce the same
  1  a file is invalid
  2  usage error
  3  the files differ";

const EXIT_DETACH: &str = "\
Exit status:
  0  the pinned state is gone
  1  it could not all be removed, or an agent still runs on it
  2  usage error";

const EXIT_HOOK: &str = "\
Exit status:
  0  the domain may start (its instances are enforced, or no rules file names it)
  1  the domain's start is refused (an instance on its NICs could not be enforced,
     or no agent runs with --require-agent); install/uninstall: it failed
  2  usage error";

/// AWS EC2 security groups on any Linux host, enforced in the kernel with
/// XDP (inbound) and TC (outbound).
#[derive(Debug, Parser)]
#[command(name = "sg-agent", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a rules file and print each instance's effective rules.
    #[command(after_help = EXIT_CHECK)]
    Check(check::CheckArgs),
    /// Enforce a rules file on this host's interfaces until stopped
    /// (as root). Reloads on SIGHUP and whenever the file changes.
    #[command(after_help = EXIT_RUN)]
    Run(Box<run::RunArgs>),
    /// Publish a rules file to etcd for every host's agent (`run --etcd`),
    /// after validating it here; compare-and-swap, so concurrent pushes do
    /// not interleave.
    #[command(after_help = EXIT_ETCD)]
    Push(etcd::PushArgs),
    /// Keep the policy a `run --confirm-within` agent put in force (it is
    /// rolled back otherwise).
    #[command(after_help = EXIT_AGENT)]
    Confirm(status::ConfirmArgs),
    /// Print the description in force in etcd.
    #[command(after_help = EXIT_ETCD)]
    Pull(etcd::PullArgs),
    /// Write a rules file from where the groups are kept (the AWS CLI's
    /// JSON).
    #[command(subcommand, after_help = EXIT_OFFLINE)]
    Import(import::ImportCommand),
    /// Write a rules file's groups as AWS shows them.
    #[command(subcommand, after_help = EXIT_OFFLINE)]
    Export(import::ExportCommand),
    /// Whether a flow is allowed and by which rules, or why not (offline).
    #[command(after_help = EXIT_EXPLAIN)]
    Explain(explain::ExplainArgs),
    /// Who can reach whom over TCP, by the rules alone (offline).
    #[command(after_help = EXIT_OFFLINE)]
    Matrix(matrix::MatrixArgs),
    /// The effective rules a change adds and removes, per instance.
    #[command(after_help = EXIT_DIFF)]
    Diff(diff::DiffArgs),
    /// What the running agent enforces: instances, attachments, policy,
    /// reloads, packet counters, connection tables, per-rule hits.
    #[command(after_help = EXIT_AGENT)]
    Status(status::StatusArgs),
    /// Follow the running agent's flow-log records (it must run with
    /// --flow-log), e.g. `sg-agent flows --follow --action REJECT`.
    #[command(after_help = EXIT_AGENT)]
    Flows(flows::FlowsArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish,
    /// powershell), e.g. `sg-agent completions bash >
    /// /etc/bash_completion.d/sg-agent`.
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff): sg-agent(1), generated from these
    /// definitions, or with `--section 5` sg-agent.toml(5), the rules file.
    Manpage(completions::ManpageArgs),
    /// Detach and remove what an agent left pinned (killed, or stopped
    /// with --keep-on-exit), as root.
    #[command(after_help = EXIT_DETACH)]
    Detach(detach::DetachArgs),
    /// libvirt's QEMU hook: as a domain starts (its CPUs not running yet),
    /// the running agent attaches the instances on its NICs, or the domain
    /// does not start. Installed as /etc/libvirt/hooks/qemu.d/sg-agent.
    #[command(after_help = EXIT_HOOK)]
    LibvirtHook(libvirt_hook::LibvirtHookArgs),
}

/// The whole command: parse, set up logging, run the verb.
pub fn main() -> ExitCode {
    // Before anything else: a SIGHUP while `run` starts is a reload, not a
    // death. Other verbs let them go at once.
    let held = crate::agent::HeldSignals::hold();
    let cli = Cli::parse();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Command::Run(args) = &cli.command {
        args.configure_logger(&mut logger);
    }
    logger.init();
    match cli.command {
        Command::Run(args) => run::run(&args, held),
        Command::Check(args) => {
            drop(held);
            check::check(&args)
        }
        Command::Push(args) => {
            drop(held);
            etcd::push(&args)
        }
        Command::Pull(args) => {
            drop(held);
            etcd::pull(&args)
        }
        Command::Detach(args) => {
            drop(held);
            detach::detach(&args)
        }
        Command::Status(args) => {
            drop(held);
            status::status(&args)
        }
        Command::Confirm(args) => {
            drop(held);
            status::confirm(&args)
        }
        Command::Import(command) => {
            drop(held);
            import::import(&command)
        }
        Command::Export(command) => {
            drop(held);
            import::export(&command)
        }
        Command::Explain(args) => {
            drop(held);
            explain::explain(&args)
        }
        Command::Matrix(args) => {
            drop(held);
            matrix::matrix(&args)
        }
        Command::Diff(args) => {
            drop(held);
            diff::diff(&args)
        }
        Command::Completions(args) => {
            drop(held);
            completions::completions(&args)
        }
        Command::Manpage(args) => {
            drop(held);
            completions::manpage(&args)
        }
        Command::Flows(args) => {
            drop(held);
            flows::flows(&args)
        }
        Command::LibvirtHook(args) => {
            drop(held);
            libvirt_hook::libvirt_hook(&args)
        }
    }
}

pub use crate::errors::chain as error_chain;

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// Each verb's `--help` ends with its own exit statuses, not the whole
    /// table (which the top level keeps).
    #[test]
    fn each_command_says_its_own_exit_statuses() {
        let mut top = Cli::command();
        let all = top.render_help().to_string();
        assert!(all.contains("4  explain: the flow is denied"), "{all}");
        for sub in top.get_subcommands_mut() {
            let name = sub.get_name().to_owned();
            let help = sub.render_help().to_string();
            if matches!(name.as_str(), "completions" | "manpage" | "help") {
                continue;
            }
            assert_eq!(help.matches("Exit status:").count(), 1, "{name}:\n{help}");
            assert!(
                !help.contains("libvirt-hook: 1") && !help.contains("explain: the flow"),
                "{name} repeats the whole table:\n{help}"
            );
        }
    }
}

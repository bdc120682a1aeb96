//! The `sg-agent` command: parse the command line and dispatch.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use sg_agent::dataplane::IngressHook;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpModeArg {
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum IngressHookArg {
    Xdp,
    Tc,
}

const EXIT_CODES: &str = "\
Exit status:
  0  success (check: the file is valid; run: stopped by SIGINT/SIGTERM, everything detached)
  1  the rules file is invalid, or the agent could not load or attach its programs
  2  usage error (unknown option, missing argument)

Example:
  sg-agent check examples/seed-vpc.toml
  sudo sg-agent run --config examples/seed-vpc.toml";

/// AWS EC2 security groups on any Linux host, enforced in the kernel with
/// XDP (inbound) and TC (outbound).
#[derive(Debug, Parser)]
#[command(version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a rules file and print each instance's effective rules.
    #[command(after_help = EXIT_CODES)]
    Check {
        /// The rules file (TOML), e.g. examples/seed-vpc.toml.
        file: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Enforce a rules file on this host's interfaces until stopped
    /// (as root). Reloads on SIGHUP and whenever the file changes.
    #[command(after_help = EXIT_CODES)]
    Run {
        /// The rules file (TOML), e.g. examples/seed-vpc.toml.
        #[arg(long, short)]
        config: PathBuf,
        /// Reload only on SIGHUP, not when the file changes.
        #[arg(long)]
        no_watch: bool,
        /// Where XDP runs: `native` in the driver where it has XDP support
        /// (generic otherwise), or `generic` after the kernel has built the
        /// packet (keeps GRO on veth; see BENCHMARKS.md).
        #[arg(long, value_enum, default_value_t = XdpModeArg::Native)]
        xdp_mode: XdpModeArg,
        /// Where inbound packets are judged: `xdp` (the default), or `tc`
        /// ingress, after GRO. On veth, `tc` keeps the bulk TCP throughput
        /// that XDP costs there, and drops a flood for less CPU too; on a
        /// physical NIC, XDP drops earliest (see BENCHMARKS.md).
        #[arg(long, value_enum, default_value_t = IngressHookArg::Xdp)]
        ingress_hook: IngressHookArg,
        /// Log every packet the eBPF programs drop, with its reason (debug
        /// level, through aya-log). Off by default: then the log statements
        /// are removed from the programs at load time.
        #[arg(long)]
        ebpf_log: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if matches!(cli.command, Command::Run { ebpf_log: true, .. }) {
        // The eBPF side's records carry its module path (sg_ebpf::...) as
        // target; --ebpf-log shows them whatever RUST_LOG says.
        logger.filter_module("sg_ebpf", log::LevelFilter::Debug);
    }
    logger.init();
    match cli.command {
        Command::Check { file, json } => sg_agent::cli::check(&file, json),
        Command::Run {
            config,
            no_watch,
            xdp_mode,
            ingress_hook,
            ebpf_log,
        } => sg_agent::cli::run(
            &config,
            sg_agent::agent::Options {
                watch: !no_watch,
                ingress: match (ingress_hook, xdp_mode) {
                    (IngressHookArg::Tc, _) => IngressHook::Tc,
                    (IngressHookArg::Xdp, XdpModeArg::Native) => IngressHook::XdpNative,
                    (IngressHookArg::Xdp, XdpModeArg::Generic) => IngressHook::XdpGeneric,
                },
                ebpf_log,
            },
        ),
    }
}

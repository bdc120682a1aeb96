//! `sg-agent run --config FILE`: enforce until stopped.

use std::{path::PathBuf, process::ExitCode};

use clap::ValueEnum;

use crate::{agent, dataplane::IngressHook};

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

#[derive(Debug, clap::Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent command-line switches"
)]
pub struct RunArgs {
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
    /// Where each instance's maps and links are pinned (on bpffs, mounted
    /// on /sys/fs/bpf if nothing is). State found there is adopted:
    /// enforcement and connection tables carry over a restart.
    #[arg(long, default_value = crate::dataplane::pins::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// On SIGINT/SIGTERM leave every instance enforced and pinned, for the
    /// next sg-agent to adopt (restarts and upgrades without a gap).
    /// Without it, stopping detaches everything and leaves nothing pinned.
    #[arg(long)]
    keep_on_exit: bool,
    /// Accept a rules file that enforces no instance (by default such a
    /// file is refused: an empty or half-written file would otherwise
    /// unfilter every interface).
    #[arg(long)]
    allow_empty: bool,
    /// Read a rules file owned by another user, or writable by its group or
    /// by anyone (or in such a directory). By default such a file is
    /// refused: whoever can write it decides every instance's firewall.
    #[arg(long)]
    insecure_config: bool,
    /// The largest rules file read, in bytes.
    #[arg(long, default_value_t = crate::config::MAX_BYTES)]
    max_config_bytes: u64,
}

impl RunArgs {
    /// The eBPF side's records carry its module path (`sg_ebpf::...`) as
    /// target; `--ebpf-log` shows them whatever `RUST_LOG` says.
    pub fn configure_logger(&self, logger: &mut env_logger::Builder) {
        if self.ebpf_log {
            logger.filter_module("sg_ebpf", log::LevelFilter::Debug);
        }
    }

    fn options(&self) -> agent::Options {
        agent::Options {
            watch: !self.no_watch,
            ingress: match (self.ingress_hook, self.xdp_mode) {
                (IngressHookArg::Tc, _) => IngressHook::Tc,
                (IngressHookArg::Xdp, XdpModeArg::Native) => IngressHook::XdpNative,
                (IngressHookArg::Xdp, XdpModeArg::Generic) => IngressHook::XdpGeneric,
            },
            ebpf_log: self.ebpf_log,
            state_dir: self.state_dir.clone(),
            keep_on_exit: self.keep_on_exit,
            allow_empty: self.allow_empty,
            read: crate::config::ReadPolicy {
                max_bytes: self.max_config_bytes,
                strict_owner: !self.insecure_config,
            },
        }
    }
}

pub fn run(args: &RunArgs, held: agent::HeldSignals) -> ExitCode {
    log::info!(
        "starting: rules file {}, state under {}",
        args.config.display(),
        args.state_dir.display()
    );
    match agent::run(&args.config, args.options(), held) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{}", super::error_chain(&e));
            ExitCode::from(1)
        }
    }
}

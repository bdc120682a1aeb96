//! `sg-agent run --config FILE`: enforce until stopped.

use std::{path::PathBuf, process::ExitCode};

use clap::ValueEnum;

use crate::{
    agent,
    dataplane::IngressHook,
    observe::{control, flowlog},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum XdpModeArg {
    Native,
    Generic,
}

/// How log records are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// JSON under systemd (`JOURNAL_STREAM` set), text otherwise.
    Auto,
    /// Human lines, for a terminal.
    Text,
    /// One JSON object per record (time, level, target, message and the
    /// event's fields: `instance`, `reload`, `result`, `duration_ms`, `diff`, ...): a
    /// multi-line message, such as a rejected reload's diagnostics, stays
    /// one record.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IngressHookArg {
    /// Per interface, by its driver: TC on veth and other virtual
    /// interfaces, native XDP on a NIC whose driver has it, TC otherwise.
    Auto,
    /// XDP (see --xdp-mode).
    Xdp,
    /// TC ingress (TCX), after GRO.
    Tc,
}

#[derive(Debug, clap::Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent command-line switches"
)]
pub struct RunArgs {
    /// The rules file (TOML), e.g. examples/seed-vpc.toml; or --etcd.
    #[arg(long, short, required_unless_present = "etcd", conflicts_with = "etcd")]
    config: Option<PathBuf>,
    /// Enforce only the instances whose `node` is NAME; every other
    /// instance counts as a group member only. Without it, the instances
    /// that have no `node`.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// Take the rules from etcd (see `push`) instead of a file, and follow
    /// every change committed there.
    #[command(flatten)]
    etcd: super::etcd::EtcdArgs,
    /// With --etcd: wait for etcd (and a first description) at start
    /// instead of exiting with status 1.
    #[arg(long, requires = "etcd")]
    etcd_wait: bool,
    /// With --etcd: an interface of this host's own namespace that a
    /// description from etcd may name (a shell pattern, repeatable). None
    /// by default: a remote description reaches network namespaces only.
    #[arg(long, value_name = "PATTERN", requires = "etcd")]
    allow_interface: Vec<String>,
    /// With --etcd: the network namespaces a description from etcd may name
    /// (shell patterns, repeatable; all by default).
    #[arg(long, value_name = "PATTERN", requires = "etcd")]
    allow_netns: Vec<String>,
    /// With --etcd: the most instances, in percent of those enforced here,
    /// one description may stop enforcing at once unless it was pushed
    /// with `push --allow-detach`.
    #[arg(long, value_name = "PERCENT", default_value_t = 50, requires = "etcd",
          value_parser = clap::value_parser!(u8).range(0..=100))]
    etcd_max_detach: u8,
    /// Reload only on SIGHUP, not when the file changes.
    #[arg(long)]
    no_watch: bool,
    /// With the XDP hook, where XDP runs: `native` in the driver where it
    /// has XDP support (generic otherwise), or `generic` after the kernel
    /// has built the packet. Implies `--ingress-hook xdp`; a usage error
    /// with any other hook.
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeArg>,
    /// Where inbound packets are judged. `auto` (the default) chooses per
    /// interface and says why in the log and `status`: on veth, native XDP
    /// makes the kernel copy every packet (about a fifth of no-filter TCP
    /// throughput), TC ingress keeps it; on a physical NIC, XDP drops
    /// earliest (see BENCHMARKS.md).
    #[arg(long, value_enum)]
    ingress_hook: Option<IngressHookArg>,
    /// Log every packet the programs drop: instance, direction, protocol,
    /// addresses, ports and the reason in words (target `sg_agent::drops`,
    /// bounded by --events-per-cpu). Off by default: then dropped packets
    /// are reported only while `sg-agent flows --live` follows (a flag's
    /// test on the dropped path).
    #[arg(long)]
    ebpf_log: bool,
    /// Write VPC Flow Logs (version 2 default format) to PATH, or `-` for
    /// standard output: one record per flow, direction and action per
    /// aggregation interval.
    #[arg(long, value_name = "PATH")]
    flow_log: Option<PathBuf>,
    /// The flow-log aggregation interval, in seconds (10 to 600).
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(10..=600))]
    flow_log_interval: u64,
    /// The flow-log record format.
    #[arg(long, value_enum, default_value_t = flowlog::Format::Text)]
    flow_log_format: flowlog::Format,
    /// Rotate the flow-log file when it reaches this many bytes (0: never):
    /// PATH becomes PATH.1, and so on. SIGHUP reopens it (for logrotate).
    #[arg(long, value_name = "BYTES", default_value_t = 100 << 20)]
    flow_log_max_bytes: u64,
    /// Rotated flow-log files kept.
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    flow_log_keep: u32,
    /// Events the programs may send per CPU and second (new flows, and with
    /// flow logs or --ebpf-log, dropped and untracked packets); beyond it
    /// they are counted as lost (flow logs say SKIPDATA).
    #[arg(long, value_name = "N", default_value_t = sg_common::events::EVENTS_PER_CPU_DEFAULT)]
    events_per_cpu: u32,
    /// The control socket `sg-agent status` and `sg-agent flows` ask.
    #[arg(long, value_name = "PATH", env = "SG_AGENT_CONTROL_SOCKET", default_value = control::DEFAULT_SOCKET)]
    control_socket: PathBuf,
    /// How log records are written.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Where each instance's maps and links are pinned (on bpffs, mounted
    /// on /sys/fs/bpf if nothing is). State found there is adopted:
    /// enforcement and connection tables carry over a restart.
    #[arg(long, env = "SG_AGENT_STATE_DIR", default_value = crate::dataplane::pins::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// On SIGINT/SIGTERM leave every instance enforced and pinned, for the
    /// next sg-agent to adopt (restarts and upgrades without a gap).
    /// Without it, stopping detaches everything and leaves nothing pinned.
    #[arg(long)]
    keep_on_exit: bool,
    /// Accept a rules file that enforces no instance (by default such a
    /// file is refused: an empty or half-written file would otherwise
    /// unfilter every interface). A host whose instances all come from
    /// libvirt domains' metadata starts with none.
    #[arg(long)]
    allow_empty: bool,
    /// The network namespace libvirtd's taps are in, where it runs in a
    /// namespace of its own (the instances domains' metadata makes are
    /// enforced there; the rules file's say their own `netns`).
    #[arg(long, value_name = "NAME")]
    libvirt_netns: Option<String>,
    /// Start even though an instance holds the address of an SSH session
    /// (the one that started the agent, or another of the host's sshd) and
    /// no rule allows it: by default that is refused, as it would lock the
    /// operator out.
    #[arg(long)]
    force: bool,
    /// Roll back a start (every instance detached) or a reload (the last
    /// confirmed policy back in force) unless `sg-agent confirm` confirms
    /// it within SECONDS, as a router's "commit confirmed" does.
    #[arg(long, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    confirm_within: Option<u64>,
    /// Read a rules file owned by another user, or writable by its group or
    /// by anyone (or in such a directory). By default such a file is
    /// refused: whoever can write it decides every instance's firewall.
    #[arg(long)]
    insecure_config: bool,
    /// The largest rules file read, in bytes.
    #[arg(long, default_value_t = crate::config::MAX_BYTES)]
    max_config_bytes: u64,
    /// Serve EC2's Query API at http://ADDR:PORT (e.g. 127.0.0.1:4566) for
    /// the AWS CLI, the SDKs and Terraform's AWS provider: every change is
    /// written into the rules file and answered once in force. Off
    /// loopback it needs --ec2-api-credentials.
    /// With --etcd, changes are written to etcd's description
    /// (compare-and-swap) and answered once this host enforces them.
    #[arg(long, value_name = "ADDR:PORT")]
    ec2_api: Option<std::net::SocketAddr>,
    /// The access keys the EC2 API accepts (one `KEY_ID SECRET` per line,
    /// mode 600); with it every request's `SigV4` signature is checked.
    /// Without it (loopback only) any credentials are accepted.
    #[arg(long, value_name = "FILE", requires = "ec2_api")]
    ec2_api_credentials: Option<PathBuf>,
    /// The account id the EC2 API answers as (`OwnerId`, STS's `Account`).
    #[arg(
        long,
        value_name = "ID",
        default_value = "000000000000",
        requires = "ec2_api"
    )]
    ec2_api_account: String,
    /// Take the security groups, their rules, the prefix lists and each
    /// instance's groups from another EC2 endpoint (moto's server,
    /// `LocalStack`, another sg-agent: `http://HOST:PORT`; AWS itself:
    /// `https://ec2.REGION.amazonaws.com`), asked every --follow-interval,
    /// and enforce them on the rules file's instances (matched by their
    /// `id`). Requests are signed with `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` (`test` where unset) and `AWS_SESSION_TOKEN`,
    /// for `AWS_REGION`.
    #[arg(
        long,
        value_name = "URL",
        requires = "config",
        conflicts_with = "ec2_api"
    )]
    follow_ec2: Option<String>,
    /// The CA certificates (PEM) an https:// --follow-ec2 endpoint's
    /// certificate must chain to, instead of the system's.
    #[arg(long, value_name = "FILE", requires = "follow_ec2")]
    follow_ec2_ca: Option<std::path::PathBuf>,
    /// How often --follow-ec2 asks, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, requires = "follow_ec2",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    follow_interval: u64,
    /// The region the EC2 API answers in (ARNs, availability zones).
    #[arg(
        long,
        value_name = "REGION",
        default_value = "us-east-1",
        requires = "ec2_api"
    )]
    ec2_api_region: String,
}

/// A log record's structured fields (`log::info!(instance = name, ...;
/// "...")`) as members of its JSON object, beside time, level, target and
/// message: numbers stay numbers, a `:serde` field keeps its shape.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let value = serde_json::to_value(&value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        self.0.insert(key.as_str().to_owned(), value);
        Ok(())
    }
}

impl RunArgs {
    /// The drop log's lines have their own target; `--ebpf-log` shows them
    /// whatever `RUST_LOG` says.
    pub fn configure_logger(&self, logger: &mut env_logger::Builder) {
        if self.ebpf_log {
            logger.filter_module("sg_agent::drops", log::LevelFilter::Info);
        }
        let json = match self.log_format {
            LogFormat::Json => true,
            LogFormat::Text => false,
            LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
        };
        if !json {
            // env_logger's own layout, with control characters escaped: a
            // message may carry an interface name from the kernel or an
            // error's text, and the log may be read on a terminal.
            logger.format(|buf, record| {
                use std::io::Write as _;
                writeln!(
                    buf,
                    "[{} {:<5} {}] {}",
                    buf.timestamp(),
                    record.level(),
                    record.target(),
                    crate::config::diagnostics::printable_lines(&record.args().to_string())
                )
            });
        }
        if json {
            logger.format(|buf, record| {
                use std::io::Write as _;
                let mut line = serde_json::json!({
                    "time": buf.timestamp().to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "message": record.args().to_string(),
                });
                if let Some(fields) = line.as_object_mut() {
                    let _ = record.key_values().visit(&mut JsonFields(fields));
                }
                writeln!(buf, "{line}")
            });
        }
    }

    /// The inbound hook the options ask for: `--xdp-mode` alone means XDP
    /// (as before `auto` existed); with another hook it is a usage error,
    /// not silently ignored.
    pub fn ingress_hook(&self) -> Result<IngressHook, clap::Error> {
        match (self.ingress_hook, self.xdp_mode) {
            (None | Some(IngressHookArg::Auto), None) => Ok(IngressHook::Auto),
            (Some(IngressHookArg::Tc), None) => Ok(IngressHook::Tc),
            (Some(IngressHookArg::Xdp) | None, None | Some(XdpModeArg::Native)) => {
                Ok(IngressHook::XdpNative)
            }
            (Some(IngressHookArg::Xdp) | None, Some(XdpModeArg::Generic)) => {
                Ok(IngressHook::XdpGeneric)
            }
            (Some(hook @ (IngressHookArg::Tc | IngressHookArg::Auto)), Some(_)) => {
                let hook = hook.to_possible_value().expect("not skipped");
                Err(clap::Error::raw(
                    clap::error::ErrorKind::ArgumentConflict,
                    format!(
                        "--xdp-mode applies to the XDP hook only, not --ingress-hook {}: \
                         drop --xdp-mode, or use --ingress-hook xdp\n",
                        hook.get_name()
                    ),
                ))
            }
        }
    }

    fn options(&self, ingress: IngressHook) -> agent::Options {
        agent::Options {
            watch: !self.no_watch,
            node: self.node.clone(),
            ingress,
            observe: agent::ObserveOptions {
                live: None,
                flow_log: self.flow_log.as_ref().map(|p| flowlog::Settings {
                    sink: if p.as_os_str() == "-" {
                        flowlog::Sink::Stdout
                    } else {
                        flowlog::Sink::File(p.clone())
                    },
                    interval: std::time::Duration::from_secs(self.flow_log_interval),
                    format: self.flow_log_format,
                    max_bytes: self.flow_log_max_bytes,
                    keep: self.flow_log_keep,
                }),
                drop_log: self.ebpf_log,
                events_per_cpu: self.events_per_cpu,
                control_socket: self.control_socket.clone(),
                metrics_listen: self.metrics_listen,
                records: None,
            },
            remote: (!self.etcd.etcd.is_empty()).then(|| agent::remote::RemoteLimits {
                allow_interface: self.allow_interface.clone(),
                allow_netns: if self.allow_netns.is_empty() {
                    vec!["*".into()]
                } else {
                    self.allow_netns.clone()
                },
                max_detach_percent: self.etcd_max_detach,
            }),
            state_dir: self.state_dir.clone(),
            keep_on_exit: self.keep_on_exit,
            libvirt_netns: self.libvirt_netns.clone(),
            confirm_within: self.confirm_within.map(std::time::Duration::from_secs),
            accept: agent::Accept {
                empty: self.allow_empty,
                cut_ssh: self.force,
            },
            read: crate::config::ReadPolicy {
                max_bytes: self.max_config_bytes,
                strict_owner: !self.insecure_config,
            },
            ec2_api: None,
            follow: None,
        }
    }

    /// `--ec2-api` and its options, checked.
    fn ec2_api(&self) -> Result<Option<crate::ec2::ApiOptions>, String> {
        let Some(listen) = self.ec2_api else {
            return Ok(None);
        };
        if !(self.ec2_api_account.len() == 12
            && self.ec2_api_account.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(format!(
                "--ec2-api-account {}: an AWS account id is 12 digits",
                self.ec2_api_account
            ));
        }
        crate::ec2::ApiOptions::new(
            listen,
            self.ec2_api_credentials.as_deref(),
            crate::ec2::Account {
                id: self.ec2_api_account.clone(),
                region: self.ec2_api_region.clone(),
            },
        )
        .map(Some)
    }
}

/// Whoever can write the description's key writes this host's firewall:
/// said loudly when etcd is reached without TLS or without authentication.
fn warn_unprotected_etcd(opts: &crate::source::etcd::EtcdOptions) {
    let plain: Vec<&str> = opts
        .endpoints
        .iter()
        .filter(|e| !e.starts_with("https://"))
        .map(String::as_str)
        .collect();
    if !plain.is_empty() || opts.cacert.is_none() {
        log::warn!(
            "etcd is reached WITHOUT TLS ({}): anyone on the path can change the rules this host \
             enforces; use https:// URLs with --etcd-cacert (docs/security.md)",
            if plain.is_empty() {
                "no --etcd-cacert".to_owned()
            } else {
                plain.join(",")
            }
        );
    }
    if opts.cert.is_none() && opts.user.is_none() {
        log::warn!(
            "etcd is reached WITHOUT AUTHENTICATION (no --etcd-cert, no --etcd-user): whoever \
             can write {} controls this host's firewall; give each host a read-only role on \
             its prefix (docs/security.md)",
            opts.key()
        );
    }
}

pub fn run(args: &RunArgs, held: agent::HeldSignals) -> ExitCode {
    let ingress = match args.ingress_hook() {
        Ok(hook) => hook,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let source = match &args.config {
        Some(path) => agent::Source::File(path.clone()),
        None => agent::Source::Etcd {
            opts: args.etcd.options(),
            wait: args.etcd_wait,
        },
    };
    if let agent::Source::Etcd { opts, .. } = &source {
        warn_unprotected_etcd(opts);
    }
    let from = match &source {
        agent::Source::File(path) => format!("rules file {}", path.display()),
        agent::Source::Etcd { opts, .. } => {
            format!("{} at {}", opts.display(), opts.endpoints.join(","))
        }
    };
    let node = args
        .node
        .as_ref()
        .map_or_else(String::new, |n| format!(", node {n}"));
    let descriptors = crate::observe::listen::raise_descriptor_limit();
    log::info!(
        "starting: {from}{node}, state under {} (up to {descriptors} open descriptors)",
        args.state_dir.display()
    );
    let mut options = args.options(ingress);
    options.ec2_api = match args.ec2_api() {
        Ok(api) => api,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(url) = &args.follow_ec2 {
        match crate::source::follow::FollowOptions::new(
            url,
            std::time::Duration::from_secs(args.follow_interval),
            args.follow_ec2_ca.as_deref(),
        ) {
            Ok(f) => options.follow = Some(f),
            Err(e) => {
                log::error!("{e}");
                return ExitCode::from(2);
            }
        }
    }
    match agent::run(&source, options, held) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{}", super::error_chain(&e));
            ExitCode::from(1)
        }
    }
}

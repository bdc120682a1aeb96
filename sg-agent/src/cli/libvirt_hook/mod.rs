//! `sg-agent libvirt-hook`: libvirt's QEMU hook. libvirtd runs its hooks
//! (`/etc/libvirt/hooks/qemu`, and since libvirt 6.5 each script under
//! `/etc/libvirt/hooks/qemu.d/`) as `HOOK DOMAIN OPERATION SUB-OPERATION
//! EXTRA` with the domain's XML on standard input, and waits for them; a
//! hook that fails as a domain starts (`prepare`, `start`, `started`) stops
//! it from starting. As a domain starts, its taps exist and its virtual
//! CPUs do not run yet: the hook hands the domain's NICs (tap and MAC
//! address) to the running agent, which attaches the instances on them
//! before answering, so the guest's first frame is judged.

use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::{
    config::{self, Link},
    dataplane::{StateDir, pins, rescue},
    libvirt::{self, DomainNic},
    observe::control::{self, ControlError},
};

mod install;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Install it: `sg-agent libvirt-hook install [--control-socket PATH] \
                        [--state-dir DIR] [--require-agent]` writes \
                        /etc/libvirt/hooks/qemu.d/sg-agent running this very binary with \
                        those options, checks it runs, and says whether libvirtd must be \
                        restarted; `sg-agent libvirt-hook uninstall` removes it."
)]
pub struct LibvirtHookArgs {
    /// The domain's name (libvirtd gives it); or `install` / `uninstall`
    /// alone: write (remove) the hook script.
    domain: String,
    /// libvirt's operation: `prepare`, `start`, `started`, `stopped`,
    /// `release`, `reconnect`, `migrate`, `restore`, `attach`.
    operation: Option<String>,
    /// `begin` or `end`.
    sub_operation: Option<String>,
    /// libvirt's extra argument (`-` mostly).
    extra: Option<String>,
    /// Refuse every domain's start when no agent runs (by default only a
    /// domain the rules file names is refused, unless an earlier agent's
    /// pinned programs are put on its taps; others start, and the hook
    /// says so in the journal and the domain's log).
    #[arg(long, conflicts_with = "allow_unfiltered")]
    require_agent: bool,
    /// Let a domain the rules file names start unfiltered when no agent
    /// runs and nothing of it is pinned (refused by default).
    #[arg(long)]
    allow_unfiltered: bool,
    /// The rules file the agent runs with: which domains it names (with no
    /// agent running, those are refused their start). Unreadable (an agent
    /// of `run --etcd`): no domain counts as named.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_RULES)]
    rules: PathBuf,
    /// The control socket the agent was started with.
    #[arg(long, value_name = "PATH", env = "SG_AGENT_CONTROL_SOCKET", default_value = control::DEFAULT_SOCKET)]
    control_socket: PathBuf,
    /// The state directory the agent was started with: with no agent
    /// running, the domain's instances' pinned programs are put on its new
    /// taps from there.
    #[arg(long, value_name = "DIR", env = "SG_AGENT_STATE_DIR", default_value = pins::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// `install`/`uninstall`: where libvirtd looks for QEMU hooks.
    #[arg(long, value_name = "DIR", default_value = install::HOOK_DIR)]
    hook_dir: PathBuf,
}

/// The rules file of the packaged agent (its systemd unit's `--config`).
pub const DEFAULT_RULES: &str = "/etc/sg-agent/vpc.toml";

/// The longest domain XML read from standard input.
const MAX_XML: u64 = 4 << 20;

pub fn libvirt_hook(args: &LibvirtHookArgs) -> ExitCode {
    let (operation, sub_operation) = match (&args.operation, &args.sub_operation) {
        (Some(op), Some(sub)) => (op.as_str(), sub.as_str()),
        // libvirtd always gives the three: one word alone is ours.
        (None, None) if args.domain == "install" => return install::install(args),
        (None, None) if args.domain == "uninstall" => return install::uninstall(args),
        _ => {
            eprintln!(
                "sg-agent libvirt-hook: give DOMAIN OPERATION SUB-OPERATION (as libvirtd runs \
                 it), or `install` or `uninstall` alone"
            );
            return ExitCode::from(2);
        }
    };
    let starting = matches!(
        (operation, sub_operation),
        (
            "start" | "started" | "reconnect" | "restore" | "attach",
            "begin"
        )
    );
    let stopped = matches!(operation, "stopped" | "release");
    if !starting && !stopped {
        return ExitCode::SUCCESS;
    }
    let nics = if starting {
        let mut xml = String::new();
        if let Err(e) = std::io::stdin().take(MAX_XML).read_to_string(&mut xml) {
            eprintln!("sg-agent: reading domain {}'s XML: {e}", args.domain);
            return ExitCode::from(1);
        }
        match libvirt::nics(&xml) {
            Ok(nics) => Some(nics),
            Err(e) => {
                eprintln!("sg-agent: domain {}: {e}", args.domain);
                return ExitCode::from(1);
            }
        }
    } else {
        None
    };
    match control::libvirt(&args.control_socket, &args.domain, nics.clone()) {
        Ok(enforced) if starting => {
            if !enforced.is_empty() {
                eprintln!(
                    "sg-agent: domain {} starts enforced: {}",
                    args.domain,
                    enforced.join(", ")
                );
            }
            ExitCode::SUCCESS
        }
        Ok(_) => ExitCode::SUCCESS,
        Err(ControlError::NotRunning(_)) if stopped => ExitCode::SUCCESS,
        Err(ControlError::NotRunning(path)) => {
            no_agent(args, &path, nics.as_deref().unwrap_or_default())
        }
        Err(e) if stopped => {
            eprintln!(
                "sg-agent: domain {} stopped: {}",
                args.domain,
                super::error_chain(&e)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "sg-agent: domain {} refused to start, its security groups are not in force: {}",
                args.domain,
                super::error_chain(&e)
            );
            ExitCode::from(1)
        }
    }
}

/// A domain starting while no agent answers on `path`: its pinned
/// programs put on its taps, or it is refused (the rules file names it, or
/// `--require-agent`), or it starts unfiltered, saying so.
fn no_agent(args: &LibvirtHookArgs, path: &Path, nics: &[DomainNic]) -> ExitCode {
    match without_agent(args, nics) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            // Named by the rules file, or by its own metadata (which asks
            // sg-agent for its groups): not started bare.
            let named = named_in_rules(args).or_else(|| {
                nics.iter()
                    .find_map(|n| n.instance.as_ref().map(|i| i.name.clone()))
            });
            if args.require_agent || (named.is_some() && !args.allow_unfiltered) {
                tell(
                    &args.domain,
                    &format!(
                        "domain {} refused to start: no agent answers on {}{}",
                        args.domain,
                        path.display(),
                        named.map_or_else(String::new, |n| format!(
                            ", and {} or its sg-agent metadata names it (instance {n}): start \
                             sg-agent, or give the hook --allow-unfiltered",
                            args.rules.display()
                        ))
                    ),
                );
                ExitCode::from(1)
            } else {
                tell(
                    &args.domain,
                    &format!(
                        "no agent answers on {}: domain {} starts unfiltered by sg-agent",
                        path.display(),
                        args.domain
                    ),
                );
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            tell(
                &args.domain,
                &format!(
                    "domain {} refused to start: no agent runs, and its instances' pinned \
                     programs could not be put on its new taps: {}",
                    args.domain,
                    super::error_chain(&e)
                ),
            );
            ExitCode::from(1)
        }
    }
}

/// A domain starting while no agent runs: its instances' programs, pinned
/// by an earlier agent, are put on its new taps (see
/// [`rescue`]). True when every one of those instances is in force
/// (none is pinned: false, and the caller says what it always said).
fn without_agent(args: &LibvirtHookArgs, nics: &[DomainNic]) -> Result<bool, rescue::RescueError> {
    if nics.is_empty() || !args.state_dir.is_dir() {
        return Ok(false);
    }
    // The lock keeps an agent that starts meanwhile off the pins until
    // they are moved; one that holds it runs on another control socket
    // (and attaches the domain from libvirt's state itself).
    let state = match StateDir::open_locked(&args.state_dir) {
        Ok(state) => state,
        Err(pins::PinError::Held { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let moved = rescue::reattach(&state, nics)?;
    for r in &moved {
        tell(
            &args.domain,
            &format!(
                "no agent runs: instance {} of domain {} is enforced on its new tap {} by the \
                 programs an earlier agent left pinned (an agent that starts adopts them)",
                r.instance, args.domain, r.tap
            ),
        );
    }
    Ok(!moved.is_empty())
}

/// The instance of the rules file on `args.domain`, if the file (as the
/// agent would read it) names the domain; `None` too when it cannot be
/// read or is invalid (said on standard error).
fn named_in_rules(args: &LibvirtHookArgs) -> Option<String> {
    // Read as `run` reads it: a file anyone but root may write is not
    // taken at its word.
    let policy = config::ReadPolicy {
        strict_owner: true,
        ..config::ReadPolicy::default()
    };
    let file = config::read_with(&args.rules, policy).ok()?;
    let Ok(vpc) = config::from_str(&args.rules, &file.text) else {
        eprintln!(
            "sg-agent: {} is not valid: which domains it names is not known",
            args.rules.display()
        );
        return None;
    };
    vpc.instances
        .iter()
        .find(|i| matches!(&i.link, Some(Link::Libvirt { domain, .. }) if *domain == args.domain))
        .map(|i| i.name.clone())
}

/// What the hook says of a domain where someone will read it: libvirt
/// keeps a hook's standard error only when it fails, so the journal
/// (syslog) and the domain's own log (`/var/log/libvirt/qemu/NAME.log`,
/// where `virsh start`'s users look) get it too.
fn tell(domain: &str, message: &str) {
    eprintln!("sg-agent: {message}");
    syslog(message);
    let log = Path::new(DOMAIN_LOGS).join(format!("{domain}.log"));
    // Only a log libvirt made (a domain name is no path to write to).
    if !domain.contains('/')
        && log.is_file()
        && let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log)
    {
        let _ = writeln!(f, "sg-agent libvirt-hook: {message}");
    }
}

/// Where libvirt keeps each QEMU domain's log.
const DOMAIN_LOGS: &str = "/var/log/libvirt/qemu";

fn syslog(message: &str) {
    let Ok(text) = std::ffi::CString::new(message.replace('\0', " ")) else {
        return;
    };
    // SAFETY: a static NUL-terminated identity (openlog keeps the pointer),
    // and a "%s" format with one NUL-terminated argument.
    unsafe {
        libc::openlog(
            c"sg-agent-libvirt-hook".as_ptr(),
            libc::LOG_PID,
            libc::LOG_DAEMON,
        );
        libc::syslog(libc::LOG_WARNING, c"%s".as_ptr(), text.as_ptr());
        libc::closelog();
    }
}

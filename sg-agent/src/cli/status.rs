//! `sg-agent status`: what the running agent enforces, asked through its
//! control socket.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::observe::{
    control::{self, ControlError},
    status, unix_now,
};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// One instance only.
    #[arg(long, conflicts_with = "domain")]
    instance: Option<String>,
    /// One libvirt domain: every NIC libvirt's live state lists for it
    /// (hot-plugged ones included), each with the instance enforced on it
    /// or NOT ENFORCED, then those instances (as `virsh nwfilter-binding-list`
    /// shows libvirt's own filters). Exit status 1 if a NIC is not enforced.
    #[arg(long, value_name = "NAME")]
    domain: Option<String>,
    /// The stable JSON form (schema version in its `schema` field; see
    /// docs/observability.md).
    #[arg(long)]
    json: bool,
    /// Every rule of every group with the flows it allowed and when last,
    /// rules that never matched included.
    #[arg(long)]
    rules: bool,
    /// The control socket the agent was started with.
    #[arg(long, value_name = "PATH", env = "SG_AGENT_CONTROL_SOCKET", default_value = control::DEFAULT_SOCKET)]
    control_socket: PathBuf,
    /// The state directory the agent runs with: with no agent running,
    /// what is still enforced from its pins.
    #[arg(long, value_name = "DIR", env = "SG_AGENT_STATE_DIR", default_value = crate::dataplane::pins::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// Exit status when no agent answers.
pub const NOT_RUNNING: u8 = 3;

pub fn status(args: &StatusArgs) -> ExitCode {
    let mut status = match control::status(&args.control_socket) {
        Ok(s) => s,
        Err(e) => {
            let code = failed(&e);
            if matches!(e, ControlError::NotRunning(_)) {
                left_enforced(&args.state_dir);
            }
            return code;
        }
    };
    if let Some(name) = &args.instance {
        status.instances.retain(|i| i.name == *name);
        if status.instances.is_empty() {
            eprintln!("error: the agent enforces no instance named {name}");
            return ExitCode::from(1);
        }
    }
    let mut bare = false;
    if let Some(name) = &args.domain {
        let d = domain_status(name, &mut status);
        bare = d.nics.iter().any(|n| n.instance.is_none());
        status.domain = Some(d);
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
    if bare {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Each NIC of libvirt domain `name` with the instance enforced on it; the
/// status keeps only that domain's instances.
fn domain_status(name: &str, status: &mut status::Status) -> status::DomainStatus {
    status
        .instances
        .retain(|i| i.libvirt_domain.as_deref() == Some(name));
    let mut d = status::DomainStatus {
        name: name.to_owned(),
        ..status::DomainStatus::default()
    };
    match crate::libvirt::running_nics(Path::new(crate::libvirt::QEMU_STATE_DIR), name) {
        Ok(nics) => {
            d.nics = nics
                .into_iter()
                .map(|n| status::DomainNicStatus {
                    instance: status
                        .instances
                        .iter()
                        .find(|i| i.interface == n.ifname && i.state == "enforced")
                        .map(|i| i.name.clone()),
                    mac: n.mac.to_string(),
                    interface: n.ifname,
                })
                .collect();
        }
        Err(e) => d.error = Some(e),
    }
    d
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

/// With no agent running: the instances its pins still enforce (an agent
/// stopped with `--keep-on-exit`, or killed), since when, and what to do,
/// as `nft list ruleset` shows what is loaded whether a daemon runs or not.
fn left_enforced(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    let mut rows = Vec::new();
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // A pinned link whose interface was deleted or replaced (a VM
        // restarted on a new tap), or that someone detached, is no
        // enforcement: only links still on a hook count.
        let links: Vec<std::fs::Metadata> = std::fs::read_dir(e.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|l| l.file_name().to_string_lossy().starts_with("link-"))
            .filter(|l| crate::dataplane::pin_attached(&l.path()).unwrap_or(true))
            .filter_map(|l| l.metadata().ok())
            .collect();
        let since = links
            .iter()
            .filter_map(|m| m.modified().ok())
            .min()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        rows.push((
            e.file_name().to_string_lossy().into_owned(),
            links.len(),
            since,
        ));
    }
    rows.sort();
    let enforced: Vec<_> = rows.iter().filter(|(_, n, _)| *n > 0).collect();
    if rows.is_empty() {
        return;
    }
    let now = unix_now();
    let mut out = format!(
        "{} instance(s) still enforced from pinned programs under {} (an agent stopped with \
         --keep-on-exit, or killed), with nothing reloading or reclaiming them:\n",
        enforced.len(),
        state_dir.display()
    );
    for (name, links, since) in &rows {
        let line = if *links == 0 {
            format!(
                "  {name:<20} NOT enforced (maps pinned, no link on its interface: the \
                 interface was deleted or replaced, or its programs taken off)\n"
            )
        } else {
            format!(
                "  {name:<20} {links} link(s), pinned {}\n",
                since.map_or_else(|| "-".to_owned(), |t| status::ago(now, t))
            )
        };
        out.push_str(&line);
    }
    // The hints name this state directory when it is not the default.
    let state = if state_dir == Path::new(crate::dataplane::pins::DEFAULT_STATE_DIR) {
        String::new()
    } else {
        format!(" --state-dir {}", state_dir.display())
    };
    let _ = writeln!(
        out,
        "`sg-agent run{state}` adopts them (no gap); `sg-agent detach --all{state}` removes them"
    );
    eprint!("{}", crate::config::diagnostics::printable_lines(&out));
}

#[derive(Debug, clap::Args)]
pub struct ConfirmArgs {
    /// The control socket the agent was started with.
    #[arg(long, value_name = "PATH", env = "SG_AGENT_CONTROL_SOCKET", default_value = control::DEFAULT_SOCKET)]
    control_socket: PathBuf,
}

/// `sg-agent confirm`: keeps the policy a `run --confirm-within` agent put
/// in force, which it would otherwise roll back.
pub fn confirm(args: &ConfirmArgs) -> ExitCode {
    match control::confirm(&args.control_socket) {
        Ok(what) => {
            println!("{what}");
            ExitCode::SUCCESS
        }
        Err(e) => failed(&e),
    }
}

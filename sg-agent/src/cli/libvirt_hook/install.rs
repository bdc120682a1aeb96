//! `sg-agent libvirt-hook install` / `uninstall`: the QEMU hook script
//! libvirtd runs, written with this binary's real path and the agent's
//! control socket and state directory, so neither a binary installed
//! outside /usr/bin nor a non-default socket means editing it by hand.

use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
};

use super::LibvirtHookArgs;

/// Where libvirtd (6.5 and later) runs every QEMU hook script from.
pub const HOOK_DIR: &str = "/etc/libvirt/hooks/qemu.d";
/// The script's name in [`HOOK_DIR`].
const NAME: &str = "sg-agent";
/// The line that marks a script as ours (`uninstall` removes no other).
const MARK: &str = "# sg-agent's libvirt QEMU hook";

/// `'text'` for sh, whatever it holds.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The script: this binary with the agent's options. A binary gone since
/// (uninstalled, moved) blocks no domain: the script says so and lets it
/// start, as a hook with no agent does.
fn script(binary: &Path, args: &LibvirtHookArgs) -> String {
    let bin = quoted(&binary.to_string_lossy());
    let mut options = format!(
        "--control-socket {} --state-dir {} --rules {}",
        quoted(&args.control_socket.to_string_lossy()),
        quoted(&args.state_dir.to_string_lossy()),
        quoted(&args.rules.to_string_lossy())
    );
    if args.require_agent {
        options.push_str(" --require-agent");
    }
    if args.allow_unfiltered {
        options.push_str(" --allow-unfiltered");
    }
    format!(
        "#!/bin/sh\n\
         {MARK}, written by `sg-agent libvirt-hook install`.\n\
         # libvirtd runs every script of this directory as a domain starts and\n\
         # stops, with the domain's XML on standard input, and waits for it. As a\n\
         # domain starts (its virtual CPUs not running yet), the running sg-agent\n\
         # attaches the instances on the domain's NICs before this returns; if it\n\
         # cannot, the domain does not start. `sg-agent libvirt-hook uninstall`\n\
         # removes this script.\n\
         if [ ! -x {bin} ]; then\n\
         \techo \"sg-agent: \"{bin}\" is gone: domain $1 is not filtered by sg-agent\" >&2\n\
         \texit 0\n\
         fi\n\
         exec {bin} libvirt-hook {options} \"$@\"\n"
    )
}

/// Whether libvirtd (or the modular daemon virtqemud) runs now.
fn libvirtd_running() -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| matches!(c.trim(), "libvirtd" | "virtqemud"))
        })
}

pub fn install(args: &LibvirtHookArgs) -> ExitCode {
    match try_install(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sg-agent libvirt-hook install: {e}");
            ExitCode::from(1)
        }
    }
}

fn try_install(args: &LibvirtHookArgs) -> Result<(), String> {
    let binary = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| format!("this binary's path: {e}"))?;
    let path = args.hook_dir.join(NAME);
    let text = script(&binary, args);
    let before = std::fs::read_to_string(&path).ok();
    if before.as_ref().is_some_and(|b| !b.contains(MARK)) {
        return Err(format!(
            "{} is there and is not sg-agent's: move it aside first",
            path.display()
        ));
    }
    std::fs::create_dir_all(&args.hook_dir)
        .map_err(|e| format!("{}: {e}", args.hook_dir.display()))?;
    // Written beside and renamed over: libvirtd never runs half a script.
    let tmp = args
        .hook_dir
        .join(format!(".{NAME}.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("{}: {e}", path.display()));
    }
    check_runs(&path)?;
    println!(
        "installed {} (runs {}, control socket {}, state directory {}, rules file {}; while no \
         agent runs, {})",
        path.display(),
        binary.display(),
        args.control_socket.display(),
        args.state_dir.display(),
        args.rules.display(),
        match (args.require_agent, args.allow_unfiltered) {
            (true, _) => "every domain is refused",
            (false, true) => "every domain starts unfiltered",
            (false, false) => "a domain the rules file names is refused, others start",
        }
    );
    match (before, libvirtd_running()) {
        (Some(_), _) => {
            println!("it replaced the earlier one: libvirtd runs it from the next call");
        }
        (None, true) => println!(
            "libvirtd reads its hooks as it starts: restart it once (systemctl restart libvirtd) \
             for domains to be enforced as they start"
        ),
        (None, false) => println!("libvirtd runs it from its next start"),
    }
    Ok(())
}

/// Runs the installed script as libvirtd would for an operation the hook
/// answers without asking anyone (`prepare`): the script and the binary
/// it names run.
fn check_runs(path: &Path) -> Result<(), String> {
    let out = Command::new(path)
        .args(["sg-agent-install-check", "prepare", "begin", "-"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", path.display()))?;
    if out.status.success() && out.stderr.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} does not run as libvirtd would run it ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn uninstall(args: &LibvirtHookArgs) -> ExitCode {
    let path: PathBuf = args.hook_dir.join(NAME);
    match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("{} is not there: nothing to remove", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sg-agent libvirt-hook uninstall: {}: {e}", path.display());
            ExitCode::from(1)
        }
        Ok(text) if !text.contains(MARK) => {
            eprintln!(
                "sg-agent libvirt-hook uninstall: {} is not sg-agent's: left as it is",
                path.display()
            );
            ExitCode::from(1)
        }
        Ok(_) => match std::fs::remove_file(&path) {
            Ok(()) => {
                println!(
                    "removed {}: domains start without sg-agent's hook from libvirtd's next call",
                    path.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sg-agent libvirt-hook uninstall: {}: {e}", path.display());
                ExitCode::from(1)
            }
        },
    }
}

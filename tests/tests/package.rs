//! The Debian package, installed on this machine as a user would: its
//! files in place, the unit's own command line enforcing, and a removal
//! that leaves nothing behind, not even the programs the unit's
//! `--keep-on-exit` keeps attached.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use nix::{sys::signal::Signal, unistd::Pid};
use sg_tests::{
    agent::binary,
    attached::attached_programs,
    package,
    probe::Outcome::{Connected, TimedOut},
    seed::{ALB, APP, OUTSIDER, SEED, SeedLab},
};

fn dpkg(args: &[&str]) -> std::process::Output {
    let out = Command::new("dpkg").args(args).output().expect("dpkg runs");
    assert!(out.status.success(), "dpkg {args:?}: {out:?}");
    out
}

/// Purges the package whatever happens to the test.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "sg-agent"]).output();
    }
}

/// The unit's `ExecStart=` as words.
fn exec_start(unit: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(unit).expect("the unit is installed");
    text.lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_package_installs_runs_its_units_command_and_removes_cleanly() {
    sg_tests::kernel::require_root();
    let status = Command::new("dpkg-query")
        .args(["-W", "sg-agent"])
        .output()
        .expect("dpkg-query runs");
    assert!(
        !status.status.success(),
        "sg-agent is already installed here: this test installs and removes its own"
    );
    let lab = SeedLab::new("sgp", SEED, &[]);
    let out_dir = lab.config.parent().expect("lab dir").join("deb");
    std::fs::create_dir_all(&out_dir).expect("dir");
    let deb = package::build(&binary(), &out_dir).expect("the package builds");
    let _installed = Installed;
    dpkg(&["-i", deb.to_str().expect("utf-8")]);

    let listed = String::from_utf8(dpkg(&["-L", "sg-agent"]).stdout).expect("utf-8");
    for file in [
        "/usr/bin/sg-agent",
        "/lib/systemd/system/sg-agent.service",
        "/usr/share/man/man1/sg-agent.1.gz",
        "/usr/share/man/man5/sg-agent.toml.5.gz",
        "/usr/share/bash-completion/completions/sg-agent",
        "/usr/share/zsh/vendor-completions/_sg-agent",
        "/usr/share/fish/vendor_completions.d/sg-agent.fish",
        "/usr/share/doc/sg-agent/examples/seed-vpc.toml",
        sg_tests::package::LIBVIRT_HOOK,
    ] {
        assert!(listed.lines().any(|l| l == file), "{file} in:\n{listed}");
        assert!(Path::new(file).exists(), "{file} installed");
    }
    let version = Command::new("/usr/bin/sg-agent")
        .arg("--version")
        .output()
        .expect("the installed binary runs");
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("sg-agent {}", package::VERSION)
    );

    // The unit's command line, as systemd would start it, on this lab's
    // rules file.
    let mut words = exec_start(Path::new("/lib/systemd/system/sg-agent.service"));
    assert_eq!(words[0], "/usr/bin/sg-agent");
    let config = words
        .iter()
        .position(|w| w == "--config")
        .expect("--config")
        + 1;
    words[config] = lab.config.to_string_lossy().into_owned();
    let mut agent = Command::new(&words[0])
        .args(&words[1..])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the unit's command starts");
    let mut log = BufReader::new(agent.stderr.take().expect("piped")).lines();
    let ready = log
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("ready: enforcing"));
    assert!(ready.is_some(), "the agent became ready");
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    assert_eq!(lab.tcp("internet", OUTSIDER, ALB, 80), Connected);
    let status = Command::new("/usr/bin/sg-agent")
        .arg("status")
        .output()
        .expect("status runs");
    assert!(status.status.success(), "{status:?}");
    let pid = Pid::from_raw(i32::try_from(agent.id()).expect("pid"));
    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("SIGTERM");
    assert!(agent.wait().expect("exits").success());
    // --keep-on-exit: still enforced with no agent running.
    assert_eq!(attached_programs(&lab.ns("app-1")).len(), 2);
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);

    // Removal detaches what the unit left and takes every file.
    dpkg(&["--purge", "sg-agent"]);
    for host in ["alb", "bastion", "app-1", "rds"] {
        assert!(
            attached_programs(&lab.ns(host)).is_empty(),
            "{host}: nothing left attached after removal"
        );
    }
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        Connected,
        "unfiltered"
    );
    assert!(!Path::new("/usr/bin/sg-agent").exists());
    assert!(!Path::new("/lib/systemd/system/sg-agent.service").exists());
}

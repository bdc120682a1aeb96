//! libvirt's QEMU hook driven as libvirtd drives it (`sg-agent libvirt-hook
//! DOMAIN OPERATION SUB-OPERATION -`, the domain's XML on standard input),
//! against taps in a lab namespace: what a domain XML that names another
//! instance's tap gets (hardening round four, item 17). The whole flow with
//! a real libvirtd and QEMU is `libvirt.rs`.

use std::{
    io::Write as _,
    net::IpAddr,
    path::Path,
    process::{Command, Output, Stdio},
};

use sg_tests::{
    agent::{AgentProcess, StateDir, binary},
    attached::tcx_on,
    lab::{Lab, Netns, RulesFile, ip},
    probe::{Outcome, ping},
    seed::START,
};

fn domain_xml(name: &str, tap: &str, mac: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><devices>\
         <interface type='bridge'><mac address='{mac}'/><source bridge='br0'/>\
         <target dev='{tap}'/><model type='virtio'/></interface></devices></domain>"
    )
}

/// The rules of one instance `vm` on libvirt domain `domain` (its NIC
/// `libvirt_mac` when given), its taps in namespace `sw`, in a group that
/// allows nothing in.
fn vm_rules(domain: &str, sw: &str, mac: Option<&str>) -> String {
    let mac = mac.map_or_else(String::new, |m| format!("libvirt_mac = \"{m}\"\n"));
    format!(
        "[[security_group]]\nname = \"vm\"\n\n[[instance]]\nname = \"vm\"\n\
         libvirt_domain = \"{domain}\"\n{mac}netns = \"{sw}\"\naddresses = [\"10.0.0.1\"]\n\
         security_groups = [\"vm\"]\n"
    )
}

/// Runs `cmd` as libvirtd runs a hook: `xml` on its standard input. A
/// hook may end without reading it (the packaged script whose binary is
/// gone does): a closed pipe is no failure of the hook's, as it is none
/// for libvirtd (a CI run once lost that race).
fn with_xml(cmd: &mut Command, xml: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the hook runs");
    let written = child.stdin.take().expect("stdin").write_all(xml.as_bytes());
    if let Err(e) = written {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "write the XML: {e}"
        );
    }
    child.wait_with_output().expect("the hook ends")
}

/// `sg-agent libvirt-hook DOMAIN OPERATION SUB -` with `xml` on stdin.
fn hook(socket: &Path, domain: &str, operation: &str, sub: &str, xml: &str) -> Output {
    hook_on(socket, None, domain, operation, sub, xml)
}

/// [`hook`], told the agent's state directory too.
fn hook_on(
    socket: &Path,
    state: Option<&Path>,
    domain: &str,
    operation: &str,
    sub: &str,
    xml: &str,
) -> Output {
    with_xml(
        Command::new(binary())
            .args([
                "libvirt-hook",
                domain,
                operation,
                sub,
                "-",
                "--control-socket",
            ])
            .arg(socket)
            .args(
                state
                    .map(|s| [std::ffi::OsStr::new("--state-dir"), s.as_os_str()])
                    .into_iter()
                    .flatten(),
            ),
        xml,
    )
}

#[test]
fn a_domain_naming_another_instances_tap_is_refused() {
    let lab = Lab::new("lvh");
    let sw = lab.switch_netns().to_owned();
    // Stand-ins for taps: veth ends in the lab's switch namespace.
    for tap in ["tapv", "tapi"] {
        let peer = format!("{tap}-p");
        ip(&[
            "-n", &sw, "link", "add", tap, "type", "veth", "peer", "name", &peer,
        ]);
        ip(&["-n", &sw, "link", "set", tap, "up"]);
    }
    let victim = format!("{}-victim", lab.prefix);
    let impostor = format!("{}-impostor", lab.prefix);
    let rules = RulesFile::new(
        &lab.prefix,
        &format!(
            r#"
[[security_group]]
name = "vm"

[[instance]]
name = "victim"
libvirt_domain = "{victim}"
netns = "{sw}"
addresses = ["10.0.0.1"]
security_groups = ["vm"]

[[instance]]
name = "impostor"
libvirt_domain = "{impostor}"
netns = "{sw}"
addresses = ["10.0.0.2"]
security_groups = ["vm"]
"#
        ),
    );
    let agent = AgentProcess::start_with(&rules.path, &["--allow-empty"]);
    agent.expect_log("ready: enforcing", 0, START);
    let socket = agent.control_socket.clone();

    let out = hook(
        &socket,
        &victim,
        "start",
        "begin",
        &domain_xml(&victim, "tapv", "52:54:00:00:00:01"),
    );
    assert!(out.status.success(), "the victim starts: {out:?}");
    let victim_programs = tcx_on(&sw, "tapv");
    assert_eq!(
        (victim_programs.0.len(), victim_programs.1.len()),
        (1, 1),
        "the victim's tap enforced"
    );

    // The impostor's XML names the victim's tap.
    let out = hook(
        &socket,
        &impostor,
        "start",
        "begin",
        &domain_xml(&impostor, "tapv", "52:54:00:00:00:02"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "refused: {err}");
    assert!(
        err.contains("is instance victim's tap"),
        "the hook says why: {err}"
    );
    assert_eq!(
        tcx_on(&sw, "tapv"),
        victim_programs,
        "only the victim's programs on its tap"
    );
    let status = agent.status_json();
    let impostor_state = status["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "impostor"))
        .map(|i| i["state"].clone());
    assert_ne!(
        impostor_state,
        Some(serde_json::json!("enforced")),
        "{status}"
    );

    // A domain's own tap, then its stop: its programs go with it.
    let out = hook(
        &socket,
        &impostor,
        "start",
        "begin",
        &domain_xml(&impostor, "tapi", "52:54:00:00:00:02"),
    );
    assert!(out.status.success(), "its own tap: {out:?}");
    assert_eq!(tcx_on(&sw, "tapi").0.len(), 1);
    let out = hook(&socket, &impostor, "stopped", "end", "");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        tcx_on(&sw, "tapi"),
        (Vec::new(), Vec::new()),
        "what its hook attached is taken off as it stops"
    );
    assert_eq!(tcx_on(&sw, "tapv"), victim_programs, "the victim's stay");
    assert_eq!(agent.terminate().code(), Some(0));
}

/// A guest's tap as libvirt makes it: `tap` in the lab's switch namespace
/// (the host side, with the host's address), its peer in `guest` with the
/// guest's MAC and address.
fn guest_tap(sw: &str, guest: &str, tap: &str, mac: &str) {
    let peer = format!("{tap}-p");
    ip(&[
        "-n", sw, "link", "add", tap, "type", "veth", "peer", "name", &peer, "netns", guest,
    ]);
    ip(&["-n", sw, "addr", "add", "10.0.0.254/24", "dev", tap]);
    ip(&["-n", sw, "link", "set", tap, "up"]);
    ip(&["-n", guest, "link", "set", &peer, "address", mac]);
    ip(&["-n", guest, "addr", "add", "10.0.0.1/24", "dev", &peer]);
    ip(&["-n", guest, "link", "set", &peer, "up"]);
}

/// The "also seen" point of hardening round four: a domain restarted while
/// no agent runs (its instance's programs pinned with `--keep-on-exit`)
/// got a new, open tap. The hook now puts the pinned programs on it, and
/// the next agent adopts them.
#[test]
fn a_domain_restarted_with_no_agent_keeps_its_pinned_programs() {
    let lab = Lab::new("lvr");
    let sw = lab.switch_netns().to_owned();
    let guest = Netns::create(&format!("{}-g", lab.prefix));
    let (mac, tap) = ("52:54:00:00:00:11", "tapr");
    guest_tap(&sw, &guest.name, tap, mac);
    let domain = format!("{}-vm", lab.prefix);
    let xml = domain_xml(&domain, tap, mac);
    // The group allows nothing in: the host's ping into the guest is dropped
    // where the instance is enforced.
    let rules = RulesFile::new(&lab.prefix, &vm_rules(&domain, &sw, None));
    let (host, vm): (IpAddr, IpAddr) = ("10.0.0.254".parse().unwrap(), "10.0.0.1".parse().unwrap());
    let state = StateDir::new();
    let socket = state.control_socket();
    let agent = AgentProcess::start_in(
        &state,
        &rules.path,
        &["--allow-empty", "--keep-on-exit"],
        "info",
    );
    agent.expect_log("ready: enforcing", 0, START);
    assert!(
        hook(&socket, &domain, "start", "begin", &xml)
            .status
            .success()
    );
    assert_eq!(ping(&sw, host, vm), Outcome::TimedOut, "enforced");
    assert_eq!(agent.terminate().code(), Some(0));
    assert_eq!(ping(&sw, host, vm), Outcome::TimedOut, "kept on exit");

    // The domain restarts: its tap goes and comes back, a new interface.
    ip(&["-n", &sw, "link", "del", tap]);
    guest_tap(&sw, &guest.name, tap, mac);
    assert_eq!(
        ping(&sw, host, vm),
        Outcome::Connected,
        "the new tap is open"
    );

    // Another domain's start finds nothing of its own pinned: as before.
    let other = hook_on(
        &socket,
        Some(&state.path),
        "other",
        "start",
        "begin",
        &domain_xml("other", "tapo", "52:54:00:00:00:12"),
    );
    assert!(other.status.success(), "{other:?}");
    assert!(String::from_utf8_lossy(&other.stderr).contains("starts unfiltered"));

    let out = hook_on(&socket, Some(&state.path), &domain, "start", "begin", &xml);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{out:?}");
    assert!(
        err.contains(&format!(
            "instance vm of domain {domain} is enforced on its new tap {tap}"
        )),
        "{err}"
    );
    let programs = tcx_on(&sw, tap);
    assert_eq!((programs.0.len(), programs.1.len()), (1, 1), "{programs:?}");
    assert_eq!(
        ping(&sw, host, vm),
        Outcome::TimedOut,
        "enforced with no agent"
    );

    // The next agent adopts those links (no second program on the tap).
    let agent = AgentProcess::start_in(&state, &rules.path, &["--allow-empty"], "info");
    agent.expect_log("ready: enforcing", 0, START);
    assert!(
        hook(&socket, &domain, "start", "begin", &xml)
            .status
            .success()
    );
    let status = agent.status_json();
    assert_eq!(status["instances"][0]["state"], "enforced", "{status}");
    let adopted = tcx_on(&sw, tap);
    assert_eq!((adopted.0.len(), adopted.1.len()), (1, 1), "{adopted:?}");
    assert_eq!(
        ping(&sw, host, vm),
        Outcome::TimedOut,
        "enforced by the agent"
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

/// libvirt round two, item 2: a hook refused for a `libvirt_mac` the domain
/// has no NIC with says so (it said the domain was not running), as the
/// domain first starts and as it starts again after a reload.
#[test]
fn a_refused_start_gives_the_real_reason() {
    let lab = Lab::new("lvm");
    let sw = lab.switch_netns().to_owned();
    ip(&[
        "-n", &sw, "link", "add", "tapm", "type", "veth", "peer", "name", "tapm-p",
    ]);
    ip(&["-n", &sw, "link", "set", "tapm", "up"]);
    let domain = format!("{}-vm", lab.prefix);
    let file = |mac: &str| vm_rules(&domain, &sw, Some(mac));
    let rules = RulesFile::new(&lab.prefix, &file("52:54:00:00:00:99"));
    let agent = AgentProcess::start_with(&rules.path, &["--allow-empty"]);
    agent.expect_log("ready: enforcing", 0, START);
    let socket = agent.control_socket.clone();
    let xml = domain_xml(&domain, "tapm", "52:54:00:00:00:21");
    let refused = |out: &Output| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!(
                "libvirt domain {domain} has no NIC with MAC address 52:54:00:00:00:99"
            )),
            "the real reason: {err}"
        );
        assert!(!err.contains("is not running"), "{err}");
    };
    refused(&hook(&socket, &domain, "start", "begin", &xml));

    // Started with the right MAC, stopped, then the file names a wrong one.
    std::fs::write(&rules.path, file("52:54:00:00:00:21")).expect("rewrite");
    let mark = agent.log_lines();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.expect_log("applied in", mark, START);
    assert!(
        hook(&socket, &domain, "start", "begin", &xml)
            .status
            .success()
    );

    // libvirt round two, item 5: a reload naming a NIC the running domain
    // does not have leaves the NIC it is on enforced (it was shown as
    // waiting, NOT ENFORCED, while its programs stayed on the tap), and
    // status says exactly that, after reconcile ticks too.
    let on_tap = |when: &str| {
        let (ingress, egress) = tcx_on(&sw, "tapm");
        assert!(
            !ingress.is_empty() && !egress.is_empty(),
            "{when}: the tap keeps its programs"
        );
        let status = agent.status_json();
        status["instances"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == "vm").cloned())
            .expect("vm in status")
    };
    std::fs::write(&rules.path, file("52:54:00:00:00:99")).expect("rewrite");
    let mark = agent.log_lines();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.expect_log("applied in", mark, START);
    std::thread::sleep(std::time::Duration::from_millis(700));
    let vm = on_tap("a wrong libvirt_mac");
    assert_eq!(vm["state"], "enforced", "{vm}");
    assert_eq!(vm["interface"], "tapm", "{vm}");
    assert!(
        vm["unapplied"]
            .as_str()
            .is_some_and(|w| w.contains("no NIC with MAC address 52:54:00:00:00:99")),
        "{vm}"
    );
    let since: Vec<String> = (mark..agent.log_lines())
        .map(|i| agent.log_line(i))
        .collect();
    assert!(
        !since.iter().any(|l| l.contains("NOT ENFORCED")),
        "{since:#?}"
    );
    assert!(
        since
            .iter()
            .any(|l| l.contains("it stays enforced on tapm")),
        "{since:#?}"
    );
    std::fs::write(&rules.path, file("52:54:00:00:00:21")).expect("rewrite");
    let mark = agent.log_lines();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.expect_log("applied in", mark, START);
    let vm = on_tap("the right libvirt_mac again");
    assert_eq!(vm["state"], "enforced", "{vm}");
    assert!(vm["unapplied"].is_null(), "{vm}");
    assert!(
        hook(&socket, &domain, "stopped", "end", "")
            .status
            .success()
    );
    std::fs::write(&rules.path, file("52:54:00:00:00:99")).expect("rewrite");
    let mark = agent.log_lines();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.expect_log("applied in", mark, START);
    refused(&hook(&socket, &domain, "start", "begin", &xml));
    assert_eq!(agent.terminate().code(), Some(0));
}

/// libvirt round two, item 3: a domain stopped and started again on a tap
/// of the same name (made anew) is attached before its guest runs, and
/// that is no lapse (it was logged as an ERROR "was recreated").
#[test]
fn a_restarted_domain_on_a_fixed_tap_name_is_no_lapse() {
    let lab = Lab::new("lvf");
    let sw = lab.switch_netns().to_owned();
    let tap = |make: bool| {
        if make {
            ip(&[
                "-n", &sw, "link", "add", "tapf", "type", "veth", "peer", "name", "tapf-p",
            ]);
            ip(&["-n", &sw, "link", "set", "tapf", "up"]);
        } else {
            ip(&["-n", &sw, "link", "del", "tapf"]);
        }
    };
    tap(true);
    let domain = format!("{}-vm", lab.prefix);
    let rules = RulesFile::new(&lab.prefix, &vm_rules(&domain, &sw, None));
    let agent = AgentProcess::start_with(&rules.path, &["--allow-empty"]);
    agent.expect_log("ready: enforcing", 0, START);
    let socket = agent.control_socket.clone();
    let xml = domain_xml(&domain, "tapf", "52:54:00:00:00:31");
    assert!(
        hook(&socket, &domain, "start", "begin", &xml)
            .status
            .success()
    );
    for _ in 0..2 {
        assert!(
            hook(&socket, &domain, "stopped", "end", "")
                .status
                .success()
        );
        tap(false);
        tap(true);
        // The new tap's link event may reach the agent first.
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            hook(&socket, &domain, "start", "begin", &xml)
                .status
                .success()
        );
        assert_eq!(tcx_on(&sw, "tapf").0.len(), 1, "enforced again");
    }
    let log = agent.log_text();
    assert!(!log.contains("was recreated"), "{log}");
    assert!(log.contains("started again on"), "{log}");
    let status = agent.status_json();
    assert_eq!(status["agent"]["lapses"], 0, "{status}");
    assert_eq!(agent.terminate().code(), Some(0));
}

/// libvirt round two, item 1: `libvirt-hook install` writes the hook with
/// the binary's real path (here a copy outside /usr/bin) and the agent's
/// socket and state directory; the script runs as libvirtd runs it and the
/// domain is enforced; a binary gone since blocks no domain; `uninstall`
/// removes the script, and never one that is not sg-agent's.
#[test]
fn the_hook_installed_by_install_runs_this_binary_against_this_agent() {
    let lab = Lab::new("lvi");
    let sw = lab.switch_netns().to_owned();
    ip(&[
        "-n", &sw, "link", "add", "tapi", "type", "veth", "peer", "name", "tapi-p",
    ]);
    ip(&["-n", &sw, "link", "set", "tapi", "up"]);
    let domain = format!("{}-vm", lab.prefix);
    let rules = RulesFile::new(&lab.prefix, &vm_rules(&domain, &sw, None));
    let state = StateDir::new();
    let agent = AgentProcess::start_in(&state, &rules.path, &["--allow-empty"], "info");
    agent.expect_log("ready: enforcing", 0, START);
    let dir = std::env::temp_dir().join(format!("sg-tests-{}-hooks", lab.prefix));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // The binary where a hand install puts it, not /usr/bin.
    let copy = dir.join("sbin").join("sg-agent");
    std::fs::create_dir_all(copy.parent().expect("sbin")).expect("sbin");
    std::fs::copy(binary(), &copy).expect("copy the binary");
    let hooks = dir.join("qemu.d");
    let install = Command::new(&copy)
        .args(["libvirt-hook", "install", "--hook-dir"])
        .arg(&hooks)
        .arg("--control-socket")
        .arg(&agent.control_socket)
        .arg("--state-dir")
        .arg(&state.path)
        .output()
        .expect("install runs");
    let said = String::from_utf8_lossy(&install.stdout).into_owned();
    assert!(install.status.success(), "{install:?}");
    assert!(said.contains(&format!("runs {}", copy.display())), "{said}");
    let script_path = hooks.join("sg-agent");
    let script = std::fs::read_to_string(&script_path).expect("the hook");
    assert!(
        script.contains(&agent.control_socket.display().to_string()),
        "{script}"
    );

    // As libvirtd runs it.
    let run = |xml: &str, op: &str| {
        with_xml(
            Command::new(&script_path).args([domain.as_str(), op, "begin", "-"]),
            xml,
        )
    };
    let out = run(&domain_xml(&domain, "tapi", "52:54:00:00:00:41"), "start");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(tcx_on(&sw, "tapi").0.len(), 1, "enforced through the hook");

    // The binary removed: the script blocks no domain.
    std::fs::remove_file(&copy).expect("remove the copy");
    let out = run(&domain_xml("another", "tapx", "52:54:00:00:00:42"), "start");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is gone"));

    let uninstall = |bin: &Path| {
        Command::new(bin)
            .args(["libvirt-hook", "uninstall", "--hook-dir"])
            .arg(&hooks)
            .output()
            .expect("uninstall runs")
    };
    assert!(uninstall(&binary()).status.success());
    assert!(!script_path.exists(), "removed");
    std::fs::write(&script_path, "#!/bin/sh\nexit 0\n").expect("someone else's hook");
    let out = uninstall(&binary());
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(script_path.exists(), "another's hook is left alone");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(agent.terminate().code(), Some(0));
}

/// libvirt round two, item 4: with no agent running, a domain the rules
/// file names (and of which nothing is pinned) is refused its start, saying
/// why; `--allow-unfiltered` lets it start; a domain the file does not
/// name starts, as before.
#[test]
fn with_no_agent_a_domain_the_rules_file_names_is_refused() {
    let state = StateDir::new();
    let dir = std::env::temp_dir().join(format!("sg-tests-lvn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let rules = dir.join("vpc.toml");
    std::fs::write(
        &rules,
        "[[security_group]]\nname = \"vm\"\n[[instance]]\nname = \"db\"\n\
         libvirt_domain = \"named-db\"\naddresses = [\"10.0.0.1\"]\nsecurity_groups = [\"vm\"]\n",
    )
    .expect("rules");
    let socket = state.control_socket();
    let start = |domain: &str, extra: &[&str]| {
        with_xml(
            Command::new(binary())
                .args([
                    "libvirt-hook",
                    domain,
                    "start",
                    "begin",
                    "-",
                    "--control-socket",
                ])
                .arg(&socket)
                .arg("--state-dir")
                .arg(&state.path)
                .arg("--rules")
                .arg(&rules)
                .args(extra),
            &domain_xml(domain, "vnet90", "52:54:00:00:00:51"),
        )
    };
    let out = start("named-db", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("domain named-db refused to start: no agent answers on")
            && err.contains("(instance db)"),
        "{err}"
    );
    let out = start("named-db", &["--allow-unfiltered"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("starts unfiltered"));
    let out = start("unnamed", &[]);
    assert!(out.status.success(), "{out:?}");
    let out = start("unnamed", &["--require-agent"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

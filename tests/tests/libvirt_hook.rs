//! libvirt's QEMU hook driven as libvirtd drives it (`sg-agent libvirt-hook
//! DOMAIN OPERATION SUB-OPERATION -`, the domain's XML on standard input),
//! against taps in a lab namespace: what a domain XML that names another
//! instance's tap gets (hardening round four, item 17). The whole flow with
//! a real libvirtd and QEMU is `libvirt.rs`.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
};

use sg_tests::{
    agent::{AgentProcess, binary},
    attached::tcx_on,
    lab::{Lab, RulesFile, ip},
    seed::START,
};

fn domain_xml(name: &str, tap: &str, mac: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><devices>\
         <interface type='bridge'><mac address='{mac}'/><source bridge='br0'/>\
         <target dev='{tap}'/><model type='virtio'/></interface></devices></domain>"
    )
}

/// `sg-agent libvirt-hook DOMAIN OPERATION SUB -` with `xml` on stdin.
fn hook(socket: &std::path::Path, domain: &str, operation: &str, sub: &str, xml: &str) -> Output {
    let mut child = Command::new(binary())
        .args([
            "libvirt-hook",
            domain,
            operation,
            sub,
            "-",
            "--control-socket",
        ])
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the hook runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(xml.as_bytes())
        .expect("write the XML");
    child.wait_with_output().expect("the hook ends")
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

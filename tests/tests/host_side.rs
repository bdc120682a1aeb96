//! Containers from the host side: every seed instance enforced on the host
//! end of its veth (its port on the lab bridge, as Docker's or Podman's
//! host veth), where Calico and Cilium enforce and where root inside the
//! container cannot reach. The directions reverse there; the tests check
//! the seed's reachability, and that a container that takes a neighbour's
//! address, MAC or ARP entry gets nowhere.

use std::{process::Command, time::Duration};

use sg_tests::{
    agent::AgentProcess,
    attached::{attached, tcx_on},
    lab::{eth0_mac, ip as run_ip},
    probe::{Outcome, eventually},
    seed::{ADMIN, ALB, APP, BASTION, OUTSIDER, RDS, RELOAD, SEED, START, SeedLab},
};

use Outcome::{Connected, TimedOut};

const RDS_MAC: &str = "52:54:00:00:02:10";

/// The seed lab with every instance on the host side of its link; rds
/// with a MAC address given in the file, the others learned.
fn host_side_lab(tag: &str) -> (SeedLab, AgentProcess) {
    let lab = SeedLab::new(tag, SEED, &[]);
    run_ip(&[
        "-n",
        &lab.ns("rds"),
        "link",
        "set",
        "eth0",
        "address",
        RDS_MAC,
    ]);
    let rules = lab.lab.host_side(SEED).replace(
        "name = \"rds\"\n",
        &format!("name = \"rds\"\nmac = \"{RDS_MAC}\"\n"),
    );
    lab.rewrite(&rules);
    let agent = AgentProcess::start_with(&lab.config, &[]);
    agent.expect_log("ready: enforcing 4 instance(s)", 0, START);
    (lab, agent)
}

fn instance(agent: &AgentProcess, name: &str) -> serde_json::Value {
    let status = agent.status_json();
    status["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} in status: {status}"))
}

fn counter(agent: &AgentProcess, name: &str, direction: &str, reason: &str) -> u64 {
    instance(agent, name)["packets"][direction][reason]
        .as_u64()
        .unwrap_or(0)
}

/// Runs a command inside a lab namespace; panics on failure.
fn in_ns(ns: &str, args: &[&str]) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec runs");
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_seed_from_the_host_side_of_each_containers_veth() {
    let (lab, agent) = host_side_lab("shs");
    let sw = lab.lab.switch_netns().to_owned();
    for h in ["alb", "bastion", "app-1", "rds"] {
        let port = lab.lab.port_of(h);
        let (ingress, egress) = tcx_on(&sw, port);
        assert_eq!(
            (ingress.len(), egress.len()),
            (1, 1),
            "{h}: one program at each of TC ingress and egress of its host-side port {port}"
        );
        let (xdp, i, e) = attached(&lab.ns(h));
        assert_eq!(
            (xdp.len(), i.len(), e.len()),
            (0, 0, 0),
            "{h}: nothing inside the container, where its root could detach it"
        );
        let inst = instance(&agent, h);
        assert_eq!(inst["side"], "host", "{inst}");
        assert_eq!(inst["ingress_hook"], "TC egress of the host side", "{inst}");
        let hooks: Vec<&str> = inst["links"]
            .as_array()
            .expect("links")
            .iter()
            .filter_map(|l| l["hook"].as_str())
            .collect();
        assert_eq!(hooks.len(), 2, "{inst}");
        assert!(hooks.contains(&"host-tc-egress") && hooks.contains(&"host-tc-ingress"));
    }
    let cases = [
        ("internet", OUTSIDER, ALB, 80, Connected),
        ("internet", OUTSIDER, ALB, 8080, TimedOut),
        ("internet", OUTSIDER, APP, 80, TimedOut),
        ("internet", ADMIN, BASTION, 22, Connected),
        ("internet", OUTSIDER, BASTION, 22, TimedOut),
        ("alb", ALB, APP, 80, Connected),
        ("bastion", BASTION, APP, 22, Connected),
        ("app-1", APP, RDS, 3306, Connected),
        ("bastion", BASTION, RDS, 3306, TimedOut),
        ("alb", ALB, RDS, 3306, TimedOut),
    ];
    let mut failures = Vec::new();
    for (host, from, to, port, want) in cases {
        let got = lab.tcp(host, from, to, port);
        if got != want {
            failures.push(format!(
                "{host} {from} -> {to}:{port}: {got}, expected {want}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The MAC addresses: rds's as given, the others learned from their
    // first frame.
    assert_eq!(instance(&agent, "rds")["mac"], RDS_MAC);
    assert_eq!(instance(&agent, "rds")["mac_source"], "configured");
    let alb = instance(&agent, "alb");
    assert_eq!(alb["mac_source"], "learned", "{alb}");
    assert_eq!(
        alb["mac"].as_str(),
        Some(eth0_mac(&lab.ns("alb")).as_str()),
        "the alb's MAC, learned from its first frame"
    );
}

/// Root inside the load balancer's container takes the app server's address
/// and tries the database, which admits the app server: the host side
/// drops it as the source/destination check (the container's own filter,
/// if it had one, would be its to remove).
#[test]
fn a_container_that_takes_another_instances_address_gets_nowhere() {
    let (lab, agent) = host_side_lab("shx");
    assert_eq!(lab.tcp("app-1", APP, RDS, 3306), Connected);
    run_ip(&[
        "-n",
        &lab.ns("alb"),
        "addr",
        "add",
        &format!("{APP}/32"),
        "dev",
        "eth0",
    ]);
    // The database's MAC, known without ARP (whose requests from the app
    // server's address the host side drops too, below): the SYN itself
    // leaves the container.
    run_ip(&[
        "-n",
        &lab.ns("alb"),
        "neigh",
        "replace",
        RDS,
        "lladdr",
        RDS_MAC,
        "dev",
        "eth0",
    ]);
    let before = counter(&agent, "alb", "egress", "drop_source_dest_check");
    assert_eq!(
        lab.tcp("alb", APP, RDS, 3306),
        TimedOut,
        "alb posing as the app server reaches the database"
    );
    assert!(
        counter(&agent, "alb", "egress", "drop_source_dest_check") > before,
        "dropped as the source/destination check, on the alb's host side"
    );

    // It claims the app server's address by ARP (a gratuitous ARP, then
    // replies): dropped, and the database keeps the app server's MAC.
    let arp_before = counter(&agent, "alb", "egress", "drop_arp_spoofed");
    in_ns(
        &lab.ns("alb"),
        &[
            "busybox", "arping", "-U", "-c", "3", "-w", "2", "-I", "eth0", "-s", APP, APP,
        ],
    );
    assert!(
        eventually(RELOAD, || counter(
            &agent,
            "alb",
            "egress",
            "drop_arp_spoofed"
        ) >= arp_before + 3),
        "three gratuitous ARPs for the app server's address, dropped as such"
    );
    let neigh = Command::new("ip")
        .args(["-n", &lab.ns("rds"), "neigh", "show", APP])
        .output()
        .expect("ip neigh");
    let alb_mac = eth0_mac(&lab.ns("alb"));
    assert!(
        !String::from_utf8_lossy(&neigh.stdout).contains(&alb_mac),
        "the database does not take the alb's MAC for the app server's: {}",
        String::from_utf8_lossy(&neigh.stdout)
    );
    assert_eq!(
        lab.tcp("app-1", APP, RDS, 3306),
        Connected,
        "the app server still reaches it"
    );

    // The agent says which address the alb's guest uses that its
    // instance's addresses do not include (hardening round four, also
    // seen): in the log, naming both, and in status.
    agent.expect_log(
        &format!("instance alb: its guest uses {APP} (seen in its IP), which its addresses ({ALB}"),
        0,
        RELOAD,
    );
    let unlisted = || instance(&agent, "alb")["guest_addresses_unlisted"].clone();
    let packets = |seen: &serde_json::Value| {
        seen.as_array()
            .and_then(|a| a.iter().find(|g| g["address"] == APP))
            .and_then(|g| g["packets"].as_u64())
            .unwrap_or(0)
    };
    // Its SYN, then three ARPs (events are read on the agent's next tick).
    assert!(
        eventually(RELOAD, || packets(&unlisted()) >= 4),
        "{}",
        unlisted()
    );
    let seen = unlisted();
    assert_eq!(seen[0]["seen_in"], "IP", "{seen}");
    assert_eq!(
        seen.as_array().map(Vec::len),
        Some(1),
        "nothing else it sent was another's: {seen}"
    );
    assert!(
        instance(&agent, "app-1")["guest_addresses_unlisted"].is_null(),
        "an instance that uses its own addresses has none"
    );
}

/// A container that changes its MAC address: the one the file gives (rds),
/// or the one learned from its first frame (app-1), no longer sends.
#[test]
fn a_container_that_changes_its_mac_no_longer_sends() {
    let (lab, agent) = host_side_lab("shm");
    assert_eq!(lab.tcp("app-1", APP, RDS, 3306), Connected);
    assert_eq!(lab.tcp("bastion", BASTION, APP, 22), Connected);
    for (host, mac) in [("rds", "52:54:00:00:02:99"), ("app-1", "52:54:00:00:01:99")] {
        let before = counter(&agent, host, "egress", "drop_mac_spoofed");
        run_ip(&["-n", &lab.ns(host), "link", "set", "eth0", "address", mac]);
        for other in ["internet", "alb", "bastion", "app-1", "rds"] {
            run_ip(&["-n", &lab.ns(other), "neigh", "flush", "all"]);
        }
        let (client, from, to, port) = if host == "rds" {
            ("app-1", APP, RDS, 3306)
        } else {
            ("bastion", BASTION, APP, 22)
        };
        assert_eq!(
            lab.tcp(client, from, to, port),
            TimedOut,
            "{host} with another MAC answers"
        );
        assert!(
            counter(&agent, host, "egress", "drop_mac_spoofed") > before,
            "{host}: its frames are dropped as spoofed"
        );
    }
}

/// A container restarted: its veth (both ends) deleted and made again. The
/// link event has the agent attach the new host-side port at once, and
/// the MAC address is learned anew from the new container's first frame.
#[test]
fn a_restarted_container_is_enforced_again_from_the_link_event() {
    let (lab, agent) = host_side_lab("shr");
    let learned = instance(&agent, "app-1")["mac"].clone();
    let skip = agent.log_lines();
    lab.lab.recreate_eth0("app-1");
    agent.expect_log("instance app-1:", skip, Duration::from_secs(5));
    assert!(
        eventually(RELOAD, || instance(&agent, "app-1")["state"] == "enforced"),
        "re-attached"
    );
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    assert_eq!(lab.tcp("alb", ALB, APP, 80), Connected);
    let relearned = instance(&agent, "app-1")["mac"].clone();
    assert_ne!(learned, relearned, "the new veth's MAC is learned anew");
    assert_eq!(
        relearned.as_str(),
        Some(eth0_mac(&lab.ns("app-1")).as_str())
    );
}

/// On the host side the host is where the AWS services are, as the Nitro
/// host is on EC2: a container with no outbound rule at all still reaches
/// a metadata server the host runs at 169.254.169.254 (on its bridge; any
/// port, as every link-local address is unfiltered), while another
/// container posing as Amazon DNS at 169.254.169.253 (TCP 53) is judged
/// by the rules.
#[test]
fn the_host_is_where_the_aws_services_answer() {
    const METADATA: &str = "169.254.169.254";
    const IMPOSTOR: &str = "169.254.169.253";
    let lab = SeedLab::new("sgh", SEED, &[("impostor", &[IMPOSTOR], &[53], &[])]);
    let switch = lab.lab.switch_netns().to_owned();
    run_ip(&[
        "-n",
        &switch,
        "addr",
        "add",
        "169.254.169.254/16",
        "dev",
        "br0",
    ]);
    run_ip(&["-n", &switch, "route", "add", "10.0.0.0/8", "dev", "br0"]);
    let _metadata = sg_tests::probe::Servers::start(&switch, &[8080], &[]);
    let rds = lab.ns("rds");
    run_ip(&["-n", &rds, "route", "add", "169.254.0.0/16", "dev", "eth0"]);
    let from = sg_tests::seed::ip(RDS);
    let to = |a: &str| sg_tests::seed::at(a, if a == METADATA { 8080 } else { 53 });
    assert_eq!(
        sg_tests::probe::tcp(&rds, from, to(METADATA)),
        Connected,
        "before any agent"
    );
    assert_eq!(
        sg_tests::probe::tcp(&rds, from, to(IMPOSTOR)),
        Connected,
        "before any agent"
    );

    // rds may send nothing at all.
    let rules = lab.lab.host_side(SEED).replace(
        "description = \"MySQL from the app servers\"\n",
        "description = \"MySQL from the app servers\"\negress = []\n",
    );
    assert!(rules.contains("egress = []"));
    lab.rewrite(&rules);
    let agent = AgentProcess::start_with(&lab.config, &[]);
    agent.expect_log("ready: enforcing 4 instance(s)", 0, START);
    assert_eq!(
        sg_tests::probe::tcp(&rds, from, to(METADATA)),
        Connected,
        "the host's metadata server is an AWS service: never filtered"
    );
    assert_eq!(
        sg_tests::probe::tcp(&rds, from, to(IMPOSTOR)),
        TimedOut,
        "a container at a link-local address is judged by the rules"
    );
    assert!(counter(&agent, "rds", "egress", "pass_aws_service") > 0);
    assert_eq!(agent.terminate().code(), Some(0));
}

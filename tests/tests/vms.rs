//! Local VMs the way AWS does it: the seed architecture as four real QEMU
//! guests on a bridge, each enforced by `sg-agent run` on the host side of
//! its tap (where EC2's hypervisor enforces, and where root inside the
//! guest cannot reach). The agent starts before the VMs: each tap is
//! attached as QEMU makes it, from the link event.

use std::time::Duration;

use nix::sys::signal::Signal;
use sg_tests::{
    agent::AgentProcess,
    attached::tcx_on,
    probe::{Outcome::*, eventually},
    seed::{
        ADMIN, ALB, APP, BASTION, OUTSIDER, RDS, RELOAD, SEED, START, seed_without_alb_ingress,
    },
    vm::SeedVms,
};

const TIMEOUT: Duration = Duration::from_mins(1);

fn instance(agent: &AgentProcess, name: &str) -> serde_json::Value {
    let status = agent.status_json();
    status["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} in status: {status}"))
}

fn egress_total(agent: &AgentProcess, name: &str) -> u64 {
    instance(agent, name)["packets"]["egress"]
        .as_object()
        .map_or(0, |reasons| {
            reasons.values().filter_map(serde_json::Value::as_u64).sum()
        })
}

fn counter(agent: &AgentProcess, name: &str, reason: &str) -> u64 {
    instance(agent, name)["packets"]["egress"][reason]
        .as_u64()
        .unwrap_or(0)
}

/// Every frame `name` sent into its tap was judged by its programs (`base`:
/// what they had judged before this tap existed). Read judged, sent, judged
/// again: a guest that keeps sending meanwhile cannot make it pass falsely,
/// and a frame that passed unjudged makes `sent` exceed the second count.
fn assert_all_judged(lab: &SeedVms, agent: &AgentProcess, name: &str, base: u64) {
    // A guest booting under TCG on a loaded machine may not have sent its
    // first frame yet (seen once: rds, 0 frames when asked at once).
    assert!(
        eventually(RELOAD, || lab.frames_sent(name) > 0),
        "{name} sent frames as it booted"
    );
    let before = egress_total(agent, name) - base;
    let sent = lab.frames_sent(name);
    let after = egress_total(agent, name) - base;
    assert!(
        before <= sent && sent <= after,
        "{name}: {sent} frames sent into its tap, {before}..{after} judged: some passed unjudged"
    );
}

/// The agent first, with every instance waiting for its tap; then the VMs.
fn start(tag: &str) -> (SeedVms, AgentProcess) {
    let mut lab = SeedVms::new(tag, SEED);
    let agent = AgentProcess::start_with(&lab.config, &[]);
    agent.expect_log("ready: enforcing 0 instance(s)", 0, START);
    lab.boot_all();
    for (name, ..) in sg_tests::vm::SEED_VMS {
        assert!(
            eventually(RELOAD, || instance(&agent, name)["state"] == "enforced"),
            "{name}: enforced once its tap exists: {}",
            instance(&agent, name)
        );
    }
    (lab, agent)
}

#[test]
fn the_seed_as_four_vms_enforced_from_the_host_side() {
    let (lab, agent) = start("svm");
    let sw = lab.lab.switch_netns().to_owned();
    for vm in &lab.vms {
        let (ingress, egress) = tcx_on(&sw, &vm.spec.tap);
        assert_eq!((ingress.len(), egress.len()), (1, 1), "{}", vm.spec.tap);
        let inst = instance(&agent, &vm.spec.name);
        assert_eq!(inst["side"], "host");
        assert_eq!(inst["mac"], vm.spec.mac.as_str(), "{inst}");
        // Inside the guest there is nothing to lift: no program on its NIC.
        let (out, _) = vm.run("ls /sys/fs/bpf 2>&1; ip -d link show eth0", TIMEOUT);
        assert!(!out.contains("prog/"), "{}: {out}", vm.spec.name);
    }
    // Every frame the guests sent since QEMU made their taps was judged:
    // the taps were attached before the guests' first frames.
    for (name, ..) in sg_tests::vm::SEED_VMS {
        assert_all_judged(&lab, &agent, name, 0);
    }

    // From the host (the internet namespace).
    assert_eq!(lab.from_internet(OUTSIDER, ALB, 80), Connected);
    assert_eq!(lab.from_internet(OUTSIDER, ALB, 8080), TimedOut);
    assert_eq!(lab.from_internet(OUTSIDER, APP, 80), TimedOut);
    assert_eq!(lab.from_internet(ADMIN, BASTION, 22), Connected);
    assert_eq!(lab.from_internet(OUTSIDER, BASTION, 22), TimedOut);
    // From inside the guests, over their consoles.
    let alb = lab.vm("alb");
    let bastion = lab.vm("bastion");
    let app = lab.vm("app-1");
    assert!(alb.connects(APP, 80, 3), "alb -> app:80");
    assert!(!alb.connects(APP, 22, 2), "alb -> app:22");
    assert!(bastion.connects(APP, 22, 3), "bastion -> app:22");
    assert!(app.connects(RDS, 3306, 3), "app -> rds:3306");
    assert!(!bastion.connects(RDS, 3306, 2), "bastion -> rds:3306");
    assert!(!alb.connects(RDS, 3306, 2), "alb -> rds:3306");

    // The seed's experiment: the load balancer's inbound rule removed (the
    // request hangs), then put back.
    let skip = agent.log_lines();
    std::fs::write(
        lab.config.with_extension("new"),
        lab.host_side(&seed_without_alb_ingress()),
    )
    .expect("write");
    std::fs::rename(lab.config.with_extension("new"), &lab.config).expect("rename");
    agent.expect_log("applied", skip, RELOAD);
    assert_eq!(lab.from_internet(OUTSIDER, ALB, 80), TimedOut);
    let skip = agent.log_lines();
    lab.rewrite(SEED);
    agent.expect_log("applied", skip, RELOAD);
    assert_eq!(lab.from_internet(OUTSIDER, ALB, 80), Connected);

    // SIGTERM: everything detached, nothing left on the taps.
    let mut agent = agent;
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).is_some());
    for vm in &lab.vms {
        assert_eq!(
            tcx_on(&sw, &vm.spec.tap),
            (vec![], vec![]),
            "{}",
            vm.spec.tap
        );
    }
    assert_eq!(
        lab.from_internet(OUTSIDER, APP, 80),
        Connected,
        "nothing filters now"
    );
}

/// Root inside a guest takes the app server's address (and, by ARP, its
/// place on the link) and tries the database, which admits the app servers:
/// the host side drops it, and the database's neighbour entry stays.
#[test]
fn a_guest_that_takes_another_vms_address_gets_nowhere() {
    let (lab, agent) = start("svx");
    let bastion = lab.vm("bastion");
    let rds = lab.vm("rds");
    assert!(
        lab.vm("app-1").connects(RDS, 3306, 3),
        "the app server reaches the database"
    );
    let (app_mac, _) = lab
        .vm("app-1")
        .run("cat /sys/class/net/eth0/address", TIMEOUT);
    let sdc = counter(&agent, "bastion", "drop_source_dest_check");
    let arp = counter(&agent, "bastion", "drop_arp_spoofed");
    bastion.run(&format!("ip addr add {APP}/32 dev eth0"), TIMEOUT);
    // The database's MAC given by hand (busybox arp), so the SYN itself
    // leaves the guest rather than an ARP request from the app server's
    // address (which the host side drops too, below).
    let (out, rc) = bastion.run(&format!("arp -s {RDS} 52:54:00:00:02:10"), TIMEOUT);
    assert_eq!(rc, 0, "{out}");
    // busybox nc has no -s: the route chooses the source address.
    bastion.run(
        &format!("ip route replace {RDS}/32 dev eth0 src {APP}"),
        TIMEOUT,
    );
    assert!(
        !bastion.connects(RDS, 3306, 2),
        "the bastion posing as the app server reaches the database"
    );
    assert!(
        counter(&agent, "bastion", "drop_source_dest_check") > sdc,
        "dropped by the source/destination check on the bastion's host side: {}",
        instance(&agent, "bastion")["packets"]["egress"]
    );
    // Gratuitous ARP claiming the app server's address.
    bastion.run(
        &format!("arping -U -c 3 -w 3 -I eth0 -s {APP} {APP}"),
        TIMEOUT,
    );
    assert!(
        eventually(RELOAD, || counter(&agent, "bastion", "drop_arp_spoofed")
            >= arp + 3),
        "the bastion's gratuitous ARPs for the app server's address are dropped"
    );
    let (neigh, _) = rds.run(&format!("ip neigh show {APP}"), TIMEOUT);
    let bastion_mac = &lab.vm("bastion").spec.mac;
    assert!(
        !neigh.contains(bastion_mac.as_str()),
        "the database maps the app server's address to the bastion: {neigh} (app {app_mac})"
    );
    // A MAC address of its own choosing: nothing it sends gets out.
    let mac_drops = counter(&agent, "bastion", "drop_mac_spoofed");
    bastion.run(&format!("ip addr del {APP}/32 dev eth0"), TIMEOUT);
    assert!(
        bastion.connects(APP, 22, 3),
        "bastion -> app:22, itself again"
    );
    bastion.run("ip link set eth0 address 52:54:00:00:00:99", TIMEOUT);
    assert!(!bastion.connects(APP, 22, 2), "with another MAC");
    assert!(counter(&agent, "bastion", "drop_mac_spoofed") > mac_drops);
    assert!(
        lab.vm("app-1").connects(RDS, 3306, 3),
        "the app server still does"
    );
}

/// A VM restarted: QEMU makes its tap anew (another interface); the agent
/// attaches it from the link event before the guest's first frame.
#[test]
fn a_restarted_vm_is_enforced_again_before_it_sends() {
    let (mut lab, agent) = start("svr");
    lab.stop("app-1");
    assert!(
        eventually(RELOAD, || instance(&agent, "app-1")["state"] == "waiting"),
        "its tap gone: waiting, nothing unprotected: {}",
        instance(&agent, "app-1")
    );
    let before = egress_total(&agent, "app-1");
    lab.start_again("app-1");
    assert!(
        eventually(RELOAD, || instance(&agent, "app-1")["state"] == "enforced"),
        "{}",
        instance(&agent, "app-1")
    );
    assert_eq!(lab.from_internet(OUTSIDER, APP, 80), TimedOut);
    assert!(
        lab.vm("alb").connects(APP, 80, 3),
        "alb -> app:80 after the restart"
    );
    assert_all_judged(&lab, &agent, "app-1", before);
    assert!(
        agent.log_text().contains("instance app-1: t-app in netns"),
        "the log says what happened:\n{}",
        agent.log_text()
    );
}

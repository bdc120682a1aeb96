//! Enforcement never lapses: the faults an operator meets (the agent killed
//! or restarted, an interface recreated, a rename, a reload that cannot be
//! applied, an empty file, an instance whose namespace comes later), each
//! under a real `sg-agent run` on the seed architecture.

use std::time::{Duration, Instant};

use sg_tests::{
    agent::{AgentProcess, StateDir, binary},
    attached::attached_programs,
    probe::{Outcome::*, echo, eventually, tcp_open},
    seed::{
        ALB, APP, OUTSIDER, RELOAD, SEED, START, SeedLab, at, ip, seed_without_alb_ingress,
        start_agent,
    },
};

fn start_in(state: &StateDir, lab: &SeedLab) -> AgentProcess {
    let agent = AgentProcess::start_in(state, &lab.config, &[], "info");
    agent.expect_log("ready: enforcing", 0, START);
    agent
}

/// The seed's blocked and allowed probes: the internet may not reach the
/// app server; the load balancer may.
fn assert_enforced(lab: &SeedLab, when: &str) {
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        TimedOut,
        "{when}: internet -> app:80 must stay blocked"
    );
    assert_eq!(
        lab.tcp("alb", ALB, APP, 80),
        Connected,
        "{when}: alb -> app:80 must stay allowed"
    );
}

#[test]
fn kill_9_leaves_every_instance_enforced_until_detached() {
    let lab = SeedLab::new("sek", SEED, &[]);
    let state = StateDir::new();
    let agent = start_in(&state, &lab);
    assert_enforced(&lab, "running");
    agent.kill9();
    for host in ["alb", "bastion", "app-1", "rds"] {
        assert_eq!(
            attached_programs(&lab.ns(host)).len(),
            2,
            "{host}: programs stay attached after kill -9"
        );
    }
    assert_enforced(&lab, "after kill -9");

    let out = std::process::Command::new(binary())
        .args(["detach", "--all", "--state-dir"])
        .arg(&state.path)
        .output()
        .expect("sg-agent detach runs");
    assert!(out.status.success(), "detach: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("detached app-1"),
        "detach says what it removed: {out:?}"
    );
    assert!(attached_programs(&lab.ns("app-1")).is_empty());
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        Connected,
        "after detach nothing filters"
    );
    assert!(
        !state.path.exists(),
        "detach --all leaves no state directory"
    );
}

#[test]
fn restart_adopts_enforcement_and_tracked_connections() {
    let lab = SeedLab::new("ser", SEED, &[]);
    let state = StateDir::new();
    let agent = start_in(&state, &lab);
    let internet = lab.ns("internet");
    let mut held =
        tcp_open(&internet, ip(OUTSIDER), at(ALB, 80)).expect("internet -> alb:80 while allowed");
    // The rule that allowed it goes: the connection lives on, tracked.
    let mark = agent.log_lines();
    lab.rewrite(&seed_without_alb_ingress());
    agent.expect_log("applied in", mark, RELOAD);
    assert!(eventually(Duration::from_secs(2), || lab
        .tcp("internet", OUTSIDER, ALB, 80)
        == TimedOut));
    assert_eq!(echo(&mut held), Ok(()), "tracked before the kill");
    let programs_before = attached_programs(&lab.ns("alb"));

    agent.kill9();
    assert_eq!(echo(&mut held), Ok(()), "tracked while no agent runs");
    assert_enforced(&lab, "while no agent runs");

    let agent = start_in(&state, &lab);
    assert!(
        agent.log_text().contains("adopted its pinned links"),
        "the new agent adopts the links:\n{}",
        agent.log_text()
    );
    assert_eq!(
        echo(&mut held),
        Ok(()),
        "a connection tracked before the restart, its rule since removed, survives it"
    );
    assert_eq!(
        lab.tcp("internet", OUTSIDER, ALB, 80),
        TimedOut,
        "new connections still refused"
    );
    assert_enforced(&lab, "after the restart");
    let programs_after = attached_programs(&lab.ns("alb"));
    assert_eq!(programs_after.len(), 2);
    assert_ne!(
        programs_before, programs_after,
        "the new agent's programs replaced the old ones on the same links"
    );
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(
        attached_programs(&lab.ns("alb")).is_empty(),
        "SIGTERM still detaches everything"
    );
    assert!(!state.path.exists(), "and leaves nothing pinned");
}

#[test]
fn keep_on_exit_leaves_enforcement_for_the_next_agent() {
    let lab = SeedLab::new("sep", SEED, &[]);
    let state = StateDir::new();
    let agent = AgentProcess::start_in(&state, &lab.config, &["--keep-on-exit"], "info");
    agent.expect_log("ready: enforcing", 0, START);
    assert_eq!(agent.terminate().code(), Some(0));
    assert_enforced(&lab, "after SIGTERM with --keep-on-exit");
    let agent = start_in(&state, &lab);
    assert_enforced(&lab, "after the next start");
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(attached_programs(&lab.ns("app-1")).is_empty());
}

#[test]
fn a_recreated_interface_is_enforced_again() {
    let lab = SeedLab::new("sei", SEED, &[]);
    let agent = start_agent(&lab);
    assert_enforced(&lab, "before");
    let mark = agent.log_lines();
    let started = Instant::now();
    lab.lab.recreate_eth0("app-1");
    assert!(
        eventually(Duration::from_secs(5), || attached_programs(
            &lab.ns("app-1")
        )
        .len()
            == 2),
        "the new eth0 gets its programs; log:\n{}",
        agent.log_text()
    );
    eprintln!(
        "re-attached {} ms after the interface was recreated",
        started.elapsed().as_millis()
    );
    agent.expect_log("was recreated; programs attached again", mark, RELOAD);
    assert_enforced(&lab, "after eth0 was recreated");
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn a_renamed_instance_keeps_its_links_and_connections() {
    let lab = SeedLab::new("sen", SEED, &[]);
    let agent = start_agent(&lab);
    let mut held = tcp_open(&lab.ns("alb"), ip(ALB), at(APP, 80)).expect("alb -> app:80");
    let before = attached_programs(&lab.ns("app-1"));
    let mark = agent.log_lines();
    lab.rewrite(&SEED.replace("name = \"app-1\"", "name = \"app-renamed\""));
    agent.expect_log("applied in", mark, RELOAD);
    assert!(
        agent
            .log_text()
            .contains("renamed instance app-1 to app-renamed"),
        "log:\n{}",
        agent.log_text()
    );
    assert_eq!(
        attached_programs(&lab.ns("app-1")),
        before,
        "the same programs stay attached: never detached"
    );
    assert_eq!(
        echo(&mut held),
        Ok(()),
        "its connection survives the rename"
    );
    assert_enforced(&lab, "after the rename");
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn a_reload_that_cannot_move_an_instance_changes_nothing_for_it() {
    let lab = SeedLab::new("sem", SEED, &[]);
    let agent = start_agent(&lab);
    let moved = lab.lab.localize(SEED).replace(
        &format!("netns = \"{}\"", lab.ns("app-1")),
        "netns = \"sg-no-such-ns\"",
    );
    assert_ne!(moved, lab.lab.localize(SEED));
    let mark = agent.log_lines();
    std::fs::write(&lab.config, moved).expect("rewrite");
    agent.expect_log("applied in", mark, RELOAD);
    assert!(
        agent
            .log_text()
            .contains("cannot move to eth0 in netns sg-no-such-ns"),
        "log:\n{}",
        agent.log_text()
    );
    assert_eq!(attached_programs(&lab.ns("app-1")).len(), 2);
    assert_enforced(&lab, "after the rejected move");
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn an_empty_file_is_refused_at_start_and_on_reload() {
    let lab = SeedLab::new("see", SEED, &[]);
    std::fs::write(&lab.config, "").expect("empty the file");
    let mut agent = AgentProcess::start(&lab.config);
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .expect("exits at once");
    assert_eq!(status.code(), Some(1));
    assert!(
        agent.log_text().contains("--allow-empty"),
        "{}",
        agent.log_text()
    );
    drop(agent);

    lab.rewrite(SEED);
    let agent = start_agent(&lab);
    let mark = agent.log_lines();
    // An in-place rewrite read half-way looks like this too.
    std::fs::write(&lab.config, "").expect("truncate");
    agent.expect_log("rejected, the running policy stays in force", mark, RELOAD);
    assert_enforced(&lab, "after the file was emptied");
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn an_instance_whose_namespace_comes_later_is_waited_for() {
    const LATE: &str = "10.0.1.99";
    let late = format!(
        "{SEED}\n[[instance]]\nname = \"late\"\nnetns = \"sg-late\"\ninterface = \"eth0\"\naddresses = [\"{LATE}\"]\nsecurity_groups = [\"instagram-server-security-group\"]\n"
    );
    let mut lab = SeedLab::new("sew", &late, &[]);
    let agent = start_agent(&lab);
    assert!(
        agent.log_text().contains("instance late NOT ENFORCED"),
        "the missing one is named:\n{}",
        agent.log_text()
    );
    assert_enforced(&lab, "with one instance missing");
    let mark = agent.log_lines();
    lab.lab.add_host("late", &[LATE]);
    agent.expect_log("attached instance late", mark, Duration::from_secs(10));
    assert_eq!(attached_programs(&lab.ns("late")).len(), 2);
    assert_eq!(agent.terminate().code(), Some(0));
}

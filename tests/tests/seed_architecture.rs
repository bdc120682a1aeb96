//! The seed's architecture (a load balancer, a bastion host, an app server,
//! a database and "the internet") in network namespaces on one bridge,
//! enforced by a real `sg-agent run` on examples/seed-vpc.toml, probed with
//! real connections.

use std::time::Duration;

use nix::sys::signal::Signal;
use sg_tests::{
    agent::AgentProcess,
    attached::{attached, attached_programs},
    probe::{Outcome, echo, eventually, ping, tcp, tcp_open, udp},
    seed::{
        ADMIN, ALB, ALB6, APP, BASTION, OUTSIDER, OUTSIDER6, RDS, RELOAD, SEED, START, SeedLab, at,
        ip, seed_without_alb_ingress, seed_without_bastion_ingress, start_agent,
        start_agent_logging_flows, start_agent_with,
    },
};

/// Runs named cases, reporting every mismatch rather than the first.
#[derive(Default)]
struct Cases {
    failures: Vec<String>,
    count: usize,
}

impl Cases {
    fn check(&mut self, name: &str, got: Outcome, want: Outcome) {
        self.count += 1;
        let status = if got == want { "ok" } else { "FAILED" };
        eprintln!("case {name}: {got} (expected {want}) ... {status}");
        if got != want {
            self.failures
                .push(format!("{name}: {got}, expected {want}"));
        }
    }

    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "{} of {} cases failed:\n{}",
            self.failures.len(),
            self.count,
            self.failures.join("\n")
        );
    }
}

use Outcome::{Connected, TimedOut};

/// The default hook (`auto`) on the lab's veth interfaces: TC ingress,
/// nothing at XDP, one TCX program at each of ingress and egress, and the
/// reason in the log and in `status`.
#[test]
fn seed_reachability_matrix() {
    reachability_matrix("sgm", &[]);
}

/// The same matrix judged by native XDP, as `--ingress-hook xdp` asks.
#[test]
fn seed_reachability_matrix_at_xdp() {
    reachability_matrix("sgx", &["--ingress-hook", "xdp"]);
}

fn reachability_matrix(prefix: &str, args: &[&str]) {
    let lab = SeedLab::new(prefix, SEED, &[]);
    // Before the agent: everything is reachable, so the blocks below are
    // the agent's doing.
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        Connected,
        "lab wiring: internet -> app:80 without the agent"
    );
    let agent = start_agent_with(&lab, args);
    let tc_ingress = !args.contains(&"xdp");
    let status = agent.status_json();
    for h in ["alb", "bastion", "app-1", "rds"] {
        let (xdp, ingress, egress) = attached(&lab.ns(h));
        assert_eq!(
            (xdp.len(), ingress.len(), egress.len()),
            if tc_ingress { (0, 1, 1) } else { (1, 0, 1) },
            "{h}: programs attached at XDP, TC ingress, TC egress"
        );
        let instance = status["instances"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == h))
            .unwrap_or_else(|| panic!("{h} in status: {status}"));
        let (hook, reason) = if tc_ingress {
            (
                "TC",
                "auto: driver veth, native XDP on veth copies every packet (TC keeps TCP throughput)",
            )
        } else {
            ("XDP (driver mode)", "--ingress-hook xdp")
        };
        assert_eq!(instance["ingress_hook"], hook, "{h}: {instance}");
        assert_eq!(instance["ingress_reason"], reason, "{h}: {instance}");
        let line = format!("attached instance {h} to ");
        assert!(
            agent
                .log_text()
                .lines()
                .any(|l| l.contains(&line) && l.contains(&format!("{hook} ingress ({reason})"))),
            "{h}: the log says which hook and why:\n{}",
            agent.log_text()
        );
    }
    let mut c = Cases::default();
    c.check(
        "internet -> alb:80 (v4)",
        lab.tcp("internet", OUTSIDER, ALB, 80),
        Connected,
    );
    c.check(
        "internet -> alb:80 (v6)",
        lab.tcp("internet", OUTSIDER6, ALB6, 80),
        Connected,
    );
    c.check(
        "internet -> alb:8080, a listener without a rule",
        lab.tcp("internet", OUTSIDER, ALB, 8080),
        TimedOut,
    );
    c.check(
        "internet -> app:80",
        lab.tcp("internet", OUTSIDER, APP, 80),
        TimedOut,
    );
    c.check(
        "alb -> app:80 (group reference)",
        lab.tcp("alb", ALB, APP, 80),
        Connected,
    );
    c.check("alb -> app:22", lab.tcp("alb", ALB, APP, 22), TimedOut);
    c.check(
        "bastion -> app:22 (group reference)",
        lab.tcp("bastion", BASTION, APP, 22),
        Connected,
    );
    c.check(
        "admin -> bastion:22 (prefix list)",
        lab.tcp("internet", ADMIN, BASTION, 22),
        Connected,
    );
    c.check(
        "other internet address -> bastion:22",
        lab.tcp("internet", OUTSIDER, BASTION, 22),
        TimedOut,
    );
    c.check(
        "app -> rds:3306 (group reference)",
        lab.tcp("app-1", APP, RDS, 3306),
        Connected,
    );
    c.check(
        "bastion -> rds:3306",
        lab.tcp("bastion", BASTION, RDS, 3306),
        TimedOut,
    );
    c.finish();
    assert_eq!(agent.terminate().code(), Some(0));
}

const EXTRA: &str = r#"
[[security_group]]
name = "lockdown"
description = "Restrictive egress; UDP, SSH and ICMP from the admins"

  [[security_group.ingress]]
  protocol = "udp"
  from_port = 53
  to_port = 53
  cidr_blocks = ["203.0.113.0/24"]

  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 22
  to_port = 22
  prefix_list_ids = ["admins"]

  [[security_group.ingress]]
  protocol = "icmp"
  from_port = 8
  to_port = -1
  prefix_list_ids = ["admins"]

  [[security_group.egress]]
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_blocks = ["198.51.100.0/24"]

[[instance]]
name = "worker"
netns = "sg-worker"
interface = "eth0"
addresses = ["10.0.3.10"]
security_groups = ["lockdown"]
"#;
const WORKER: &str = "10.0.3.10";

#[test]
fn stateful_egress_udp_and_icmp() {
    let rules = format!("{SEED}\n{EXTRA}");
    let lab = SeedLab::new("sgs", &rules, &[("worker", &[WORKER], &[22], &[53])]);
    let agent = start_agent(&lab);
    let mut c = Cases::default();
    c.check(
        "app -> internet:443: reply passes app's ingress",
        lab.tcp("app-1", APP, OUTSIDER, 443),
        Connected,
    );
    c.check(
        "bastion -> internet:443: reply passes bastion's ingress",
        lab.tcp("bastion", BASTION, OUTSIDER, 443),
        Connected,
    );
    c.check(
        "alb -> internet:80 over v6: reply passes",
        tcp(&lab.ns("alb"), ip(ALB6), at(OUTSIDER6, 80)),
        Connected,
    );
    c.check(
        "worker -> internet:80: allowed by its egress rule",
        lab.tcp("worker", WORKER, OUTSIDER, 80),
        Connected,
    );
    c.check(
        "worker -> internet:443: not in its egress rules",
        lab.tcp("worker", WORKER, OUTSIDER, 443),
        TimedOut,
    );
    c.check(
        "worker -> internet:80 at an address outside the rule",
        lab.tcp("worker", WORKER, ADMIN, 80),
        TimedOut,
    );
    c.check(
        "admin -> worker:22: the reply leaves though egress refuses it",
        lab.tcp("internet", ADMIN, WORKER, 22),
        Connected,
    );
    c.check(
        "admin -> worker udp/53: echo leaves though egress refuses udp",
        udp(&lab.ns("internet"), ip(ADMIN), at(WORKER, 53)),
        Connected,
    );
    c.check(
        "outsider -> worker udp/53: not in the rule's CIDR",
        udp(&lab.ns("internet"), ip(OUTSIDER), at(WORKER, 53)),
        TimedOut,
    );
    c.check(
        "worker -> internet udp/53: egress refuses",
        udp(&lab.ns("worker"), ip(WORKER), at(OUTSIDER, 53)),
        TimedOut,
    );
    c.check(
        "admin pings worker: allowed by an ICMP type rule",
        ping(&lab.ns("internet"), ip(ADMIN), ip(WORKER)),
        Connected,
    );
    c.check(
        "outsider pings worker: no rule",
        ping(&lab.ns("internet"), ip(OUTSIDER), ip(WORKER)),
        TimedOut,
    );
    c.check(
        "app pings the internet: the echo reply passes app's ingress",
        ping(&lab.ns("app-1"), ip(APP), ip(OUTSIDER)),
        Connected,
    );
    c.check(
        "internet pings app: no ICMP rule",
        ping(&lab.ns("internet"), ip(OUTSIDER), ip(APP)),
        TimedOut,
    );
    c.finish();
    assert_eq!(agent.terminate().code(), Some(0));
}

/// AWS tracks every connection through a Network Load Balancer, whatever
/// the rules say ("Automatically tracked connections"): with the load
/// balancer declared (`[[aws_service]]`), its connection to the ALB's port
/// 80 (a rule from `0.0.0.0/0` with all traffic out, untracked for anyone
/// else) outlives the rule, while an outsider's is cut at once.
#[test]
fn a_connection_through_a_load_balancer_outlives_its_rule() {
    const NLB: &str = "198.51.100.80";
    let service = format!(
        "\n[[aws_service]]\nname = \"nlb-1\"\ntype = \"network_load_balancer\"\naddresses = [\"{NLB}\"]\n"
    );
    let lab = SeedLab::new(
        "sgn",
        &format!("{SEED}{service}"),
        &[("nlb", &[NLB], &[], &[])],
    );
    let flow_log = lab.config.with_file_name("flows.log");
    let agent = start_agent_logging_flows(&lab, &flow_log, 10, &[]);
    let mut follower =
        agent.follow_flows(&["--instance", "alb", "--count", "40", "--format", "json"]);
    let mut through_nlb =
        tcp_open(&lab.ns("nlb"), ip(NLB), at(ALB, 80)).expect("nlb -> alb:80 before the reload");
    let mut outsider = tcp_open(&lab.ns("internet"), ip(OUTSIDER), at(ALB, 80))
        .expect("internet -> alb:80 before the reload");
    // The agent names the rules of a new flow by the policy it holds when
    // it reads the flow's event: let it attribute both connections to the
    // ALB's inbound rules before they go (its own outbound multicast
    // listener reports are new flows too, so the flow count alone says
    // nothing about these two).
    assert!(
        eventually(Duration::from_secs(5), || {
            let status = agent.status_json();
            let inbound_flows: u64 = status["instances"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["name"] == "alb"))
                .and_then(|i| i["rules"].as_array())
                .into_iter()
                .flatten()
                .filter(|r| r["direction"] == "ingress")
                .filter_map(|r| r["flows"].as_u64())
                .sum();
            inbound_flows >= 2
        }),
        "both connections are attributed to the ALB's inbound rules"
    );
    let mark = agent.log_lines();
    lab.rewrite(&format!("{}{service}", seed_without_alb_ingress()));
    agent.expect_log("reload #1 (file changed) applied in", mark, RELOAD);
    assert!(
        eventually(Duration::from_secs(2), || lab.tcp("nlb", NLB, ALB, 80)
            == TimedOut),
        "new connections from the load balancer time out once the rule is gone"
    );
    assert_eq!(
        echo(&mut outsider),
        Err(TimedOut),
        "the outsider's untracked connection is cut as soon as its rule goes"
    );
    assert_eq!(
        echo(&mut through_nlb),
        Ok(()),
        "the connection through the load balancer is tracked, and lives on"
    );
    // Its flow-log record names the service it went through (read with a
    // deadline: records come at the end of each 10 s interval).
    let stdout = follower.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let record = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            panic!("no record of the connection through the load balancer within 30 s: {seen:#?}");
        };
        seen.push(line.clone());
        let Ok(r) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if r["srcaddr"] == NLB && r.get("rules").is_some() {
            break r;
        }
    };
    assert_eq!(
        record["tracked-through"], "network_load_balancer nlb-1",
        "{record}"
    );
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn reload_cuts_untracked_connections_and_keeps_tracked_ones() {
    let lab = SeedLab::new("sgr", SEED, &[]);
    let agent = start_agent(&lab);
    let internet = lab.ns("internet");
    // The ALB's HTTP rule is from 0.0.0.0/0 and its group keeps AWS's
    // default egress (all traffic to 0.0.0.0/0): AWS does not track these
    // flows. The bastion's SSH rule is from the admins' /28: tracked.
    let mut untracked = tcp_open(&internet, ip(OUTSIDER), at(ALB, 80))
        .expect("internet -> alb:80 before the reload");
    let mut tracked = tcp_open(&internet, ip(ADMIN), at(BASTION, 22)).expect("admin -> bastion:22");

    let mark = agent.log_lines();
    lab.rewrite(&seed_without_bastion_ingress(&seed_without_alb_ingress()));
    agent.expect_log("reload #1 (file changed) applied in", mark, RELOAD);
    assert!(
        eventually(Duration::from_secs(2), || lab
            .tcp("internet", OUTSIDER, ALB, 80)
            == TimedOut),
        "new connections to alb:80 must time out once the rule is gone"
    );
    assert_eq!(
        echo(&mut untracked),
        Err(TimedOut),
        "an untracked connection is cut as soon as its rule goes (AWS)"
    );
    assert_eq!(
        echo(&mut tracked),
        Ok(()),
        "a tracked connection keeps working after its rule is gone (AWS)"
    );
    assert_eq!(lab.tcp("internet", ADMIN, BASTION, 22), TimedOut);
    assert_eq!(lab.tcp("internet", OUTSIDER6, ALB6, 80), TimedOut, "v6 too");

    // Put the rules back, this time writing the file in place.
    let mark = agent.log_lines();
    std::fs::write(&lab.config, lab.lab.localize(SEED)).expect("restore");
    agent.expect_log("applied", mark, RELOAD);
    assert!(
        eventually(Duration::from_secs(2), || lab
            .tcp("internet", OUTSIDER, ALB, 80)
            == Connected),
        "restoring the rule reopens alb:80"
    );
    assert_eq!(
        echo(&mut tracked),
        Ok(()),
        "and the tracked connection is still alive"
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn sighup_applies_a_membership_change() {
    const ALB2: &str = "10.0.0.11";
    let extra = |groups: &str| {
        format!(
            "{SEED}\n[[security_group]]\nname = \"spare\"\n\n[[instance]]\nname = \"alb-2\"\nnetns = \"sg-alb-2\"\ninterface = \"eth0\"\naddresses = [\"{ALB2}\"]\nsecurity_groups = [{groups}]\n"
        )
    };
    let lab = SeedLab::new("sgh", &extra("\"spare\""), &[("alb-2", &[ALB2], &[], &[])]);
    let agent = AgentProcess::start_with(&lab.config, &["--no-watch"]);
    agent.expect_log("ready: enforcing", 0, START);
    assert_eq!(
        lab.tcp("alb-2", ALB2, APP, 80),
        TimedOut,
        "alb-2 is not yet in the ALB's group"
    );

    std::fs::write(
        &lab.config,
        lab.lab
            .localize(&extra("\"spare\", \"instagram-elb-security-group\"")),
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        lab.tcp("alb-2", ALB2, APP, 80),
        TimedOut,
        "--no-watch: nothing changes before SIGHUP"
    );
    let mark = agent.log_lines();
    agent.signal(Signal::SIGHUP);
    agent.expect_log("reload #1 (SIGHUP) applied in", mark, RELOAD);
    assert_eq!(
        lab.tcp("alb-2", ALB2, APP, 80),
        Connected,
        "a new member of the referenced group reaches app:80"
    );
    assert_eq!(
        lab.tcp("alb-2", ALB2, APP, 22),
        TimedOut,
        "but only where that group is referenced"
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn invalid_file_on_reload_keeps_the_running_policy() {
    let lab = SeedLab::new("sgi", SEED, &[]);
    let mut agent = start_agent(&lab);
    let mark = agent.log_lines();
    lab.rewrite(&SEED.replace(
        "security_groups = [\"instagram-elb-security-group\"]",
        "security_groups = [\"instagram-elb-sg\"]",
    ));
    agent.expect_log("rejected, the running policy stays in force", mark, RELOAD);
    agent.expect_log(
        "did you mean \"instagram-elb-security-group\"?",
        mark,
        RELOAD,
    );
    assert!(agent.running(), "the agent keeps running");
    assert_eq!(
        lab.tcp("internet", OUTSIDER, ALB, 80),
        Connected,
        "old policy: alb:80 open"
    );
    assert_eq!(
        lab.tcp("internet", OUTSIDER, ALB, 8080),
        TimedOut,
        "old policy: alb:8080 closed"
    );
    assert_eq!(
        lab.tcp("alb", ALB, APP, 80),
        Connected,
        "old policy: group reference intact"
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn invalid_file_at_start_exits_1_and_attaches_nothing() {
    let lab = SeedLab::new(
        "sgx",
        &SEED.replace("203.0.113.0/28", "203.0.113.1/28"),
        &[],
    );
    let mut agent = AgentProcess::start(&lab.config);
    let status = agent.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(1), "log:\n{}", agent.log_text());
    assert!(
        agent
            .log_text()
            .contains("203.0.113.1/28 has host bits set"),
        "log:\n{}",
        agent.log_text()
    );
    assert!(agent.log_text().contains("nothing attached"));
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        Connected,
        "nothing attached: app:80 still reachable"
    );
}

#[test]
fn sigterm_leaves_no_program_attached() {
    let lab = SeedLab::new("sgt", SEED, &[]);
    let agent = start_agent(&lab);
    let hosts = ["alb", "bastion", "app-1", "rds"];
    let mut ids = Vec::new();
    for h in hosts {
        let progs = attached_programs(&lab.ns(h));
        assert_eq!(
            progs.len(),
            2,
            "{h}: one XDP and one TC program attached, found {progs:?}"
        );
        ids.extend(progs);
    }
    assert_eq!(agent.terminate().code(), Some(0));
    for h in hosts {
        assert!(
            attached_programs(&lab.ns(h)).is_empty(),
            "{h}: programs left attached after SIGTERM"
        );
    }
    for id in ids {
        let out = std::process::Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .output()
            .expect("bpftool runs");
        assert!(
            !out.status.success(),
            "program {id} still loaded after SIGTERM"
        );
    }
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        Connected,
        "no filtering left behind"
    );
}

/// With `--ebpf-log`, a dropped packet is logged with its instance,
/// direction, protocol, addresses, ports and reason in words. (Without it
/// the reporting code is not in the loaded program at all:
/// `kernel_verdicts`' `logging` module checks that on the programs.)
#[test]
fn ebpf_log_reports_drops_when_asked() {
    let lab = SeedLab::new("sgl", SEED, &[]);
    let agent = AgentProcess::start_with(&lab.config, &["--ebpf-log"]);
    agent.expect_log("ready: enforcing", 0, START);
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    let line = format!("instance app-1: dropped inbound tcp {OUTSIDER}:");
    let at = agent
        .wait_for(&line, 0, Duration::from_secs(3))
        .unwrap_or_else(|| panic!("no line with {line:?}:\n{}", agent.log_text()));
    let logged = agent.log_line(at);
    assert!(
        logged.contains(&format!("-> {APP}:80: no rule allows it")),
        "{logged}"
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn reload_attaches_new_instances_and_detaches_removed_ones() {
    // The seed without its database instance: rds's namespace exists but
    // nothing enforces there yet.
    let without_rds = SEED
        .split("[[instance]]\nname = \"rds\"")
        .next()
        .expect("rds instance")
        .to_owned();
    let lab = SeedLab::new("sga", &without_rds, &[]);
    let agent = start_agent(&lab);
    assert_eq!(
        lab.tcp("internet", OUTSIDER, RDS, 3306),
        Connected,
        "rds not enforced yet"
    );
    assert!(attached_programs(&lab.ns("rds")).is_empty());

    let mark = agent.log_lines();
    lab.rewrite(SEED);
    agent.expect_log("applied in", mark, RELOAD);
    assert!(
        agent.log_text().contains("attached instance rds"),
        "log:\n{}",
        agent.log_text()
    );
    assert_eq!(
        attached_programs(&lab.ns("rds")).len(),
        2,
        "rds now has its XDP and TC programs"
    );
    assert_eq!(
        lab.tcp("internet", OUTSIDER, RDS, 3306),
        TimedOut,
        "rds now enforced"
    );
    assert_eq!(
        lab.tcp("app-1", APP, RDS, 3306),
        Connected,
        "and its rule works"
    );

    // Remove the ALB instance: it is detached and filters nothing.
    let without_alb = SEED.replace(
        "[[instance]]\nname = \"alb\"\nnetns = \"sg-alb\"\ninterface = \"eth0\"\naddresses = [\"10.0.0.10\", \"2001:db8:0:1::10\"]\nsecurity_groups = [\"instagram-elb-security-group\"]\n",
        "",
    );
    assert_ne!(without_alb, SEED, "the ALB instance was found in the seed");
    let mark = agent.log_lines();
    lab.rewrite(&without_alb);
    agent.expect_log("applied in", mark, RELOAD);
    let left = attached_programs(&lab.ns("alb"));
    assert!(
        left.is_empty(),
        "alb's programs detached once the reload is logged applied; still there: {left:?}\nlog:\n{}",
        agent.log_text()
    );
    assert_eq!(
        lab.tcp("internet", OUTSIDER, ALB, 8080),
        Connected,
        "alb no longer filtered"
    );
    assert_eq!(
        lab.tcp("alb", ALB, APP, 80),
        TimedOut,
        "and no longer a member that app-1's rule admits"
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

/// AWS's source/destination check: the database lets the app servers' group
/// in on UDP 5353; the bastion, spoofing the app server's address, must not
/// get in by it (it does when its check is turned off, as for a NAT
/// instance).
#[test]
fn spoofed_sources_are_dropped_by_the_source_dest_check() {
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };
    const RDS_RULE_END: &str = "  security_groups = [\"instagram-server-security-group\"]\n";
    let extra = "\n  [[security_group.ingress]]\n  protocol = \"udp\"\n  from_port = 5353\n  to_port = 5353\n  security_groups = [\"instagram-server-security-group\"]\n";
    let at_rds = SEED.rfind(RDS_RULE_END).expect("the rds rule") + RDS_RULE_END.len();
    let rules = format!("{}{extra}{}", &SEED[..at_rds], &SEED[at_rds..]);
    let lab = SeedLab::new("sgs", &rules, &[]);
    let agent = start_agent(&lab);

    let received = Arc::new(AtomicU64::new(0));
    let sink = sg_tests::lab::in_netns(&lab.ns("rds"), move || {
        UdpSocket::bind((RDS, 5353)).expect("bind on rds")
    });
    sink.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let counter = received.clone();
    let listening = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let end = std::time::Instant::now() + Duration::from_mins(1);
        while std::time::Instant::now() < end {
            if let Ok(n) = sink.recv(&mut buf) {
                if &buf[..n] == b"stop" {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // Ten datagrams to rds:5353 from `ns`, with source address APP (the
    // kernel lets a transparent socket send from an address not its own).
    let send_as_app = |ns: String| {
        sg_tests::lab::in_netns(&ns, move || {
            use socket2::{Domain, Protocol, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
            s.set_ip_transparent_v4(true).expect("IP_TRANSPARENT");
            s.bind(&SocketAddr::new(ip(APP), 0).into()).expect("bind");
            for _ in 0..10 {
                let _ = s.send_to(b"hello", &SocketAddr::new(ip(RDS), 5353).into());
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        received.swap(0, Ordering::SeqCst)
    };
    assert_eq!(
        send_as_app(lab.ns("app-1")),
        10,
        "the app server itself gets in"
    );
    assert_eq!(
        send_as_app(lab.ns("bastion")),
        0,
        "the bastion spoofing the app server's address does not"
    );
    let mark = agent.log_lines();
    let bastion = format!("addresses = [\"{BASTION}\"]\n");
    assert_eq!(
        rules.matches(&bastion).count(),
        1,
        "the bastion's addresses"
    );
    lab.rewrite(&rules.replace(&bastion, &format!("{bastion}source_dest_check = false\n")));
    agent.expect_log("applied in", mark, RELOAD);
    assert_eq!(
        send_as_app(lab.ns("bastion")),
        10,
        "with its check off (a NAT instance), the bastion's datagrams pass"
    );
    sg_tests::lab::in_netns(&lab.ns("app-1"), move || {
        let s = UdpSocket::bind((APP, 0)).expect("bind");
        let _ = s.send_to(b"stop", (RDS, 5353));
    });
    let _ = listening.join();
    assert_eq!(agent.terminate().code(), Some(0));
}

/// AWS's connection allowance on the bastion: once its tracked connections
/// fill it, a new SSH connection times out (and is counted), every held
/// connection still answers, and once they are closed and their entries
/// expire, the agent reclaims them and new connections are admitted again.
#[test]
fn a_full_connection_allowance_refuses_new_connections_and_keeps_held_ones() {
    const ALLOWANCE: usize = 16;
    let rules = with_bastion_allowance(SEED, ALLOWANCE);
    let lab = SeedLab::new("sga", &rules, &[]);
    let agent = start_agent(&lab);
    let internet = lab.ns("internet");

    // Open SSH connections until the allowance refuses one (the bastion's
    // own traffic, such as its IPv6 multicast reports, may hold a few
    // entries too).
    let mut held = Vec::new();
    let refused = loop {
        assert!(
            held.len() <= ALLOWANCE,
            "more connections than the allowance"
        );
        match tcp_open(&internet, ip(ADMIN), at(BASTION, 22)) {
            Ok(stream) => held.push(stream),
            Err(outcome) => break outcome,
        }
    };
    assert_eq!(refused, Outcome::TimedOut, "refused silently, as AWS does");
    assert!(
        held.len() >= ALLOWANCE - 4,
        "only {} connections fit an allowance of {ALLOWANCE}",
        held.len()
    );
    for (i, stream) in held.iter_mut().enumerate() {
        assert_eq!(echo(stream), Ok(()), "held connection {i} still answers");
    }
    agent.expect_log("connection allowance used up", 0, Duration::from_secs(3));

    // Close them all: both FINs put their entries in the closed state,
    // which idles out in 10 s; then they are reclaimed.
    drop(held);
    assert!(
        eventually(Duration::from_secs(25), || lab
            .tcp("internet", ADMIN, BASTION, 22)
            == Outcome::Connected),
        "new connections are admitted again once the closed ones are reclaimed"
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

/// `rules` with the bastion's connection allowance set: its instance table
/// ends at the first blank line after its name.
fn with_bastion_allowance(rules: &str, allowance: usize) -> String {
    let at_name = rules.find("name = \"bastion\"").expect("the bastion");
    let end = at_name + rules[at_name..].find("\n\n").expect("end of its table") + 1;
    format!(
        "{}  [instance.conntrack]\n  max_tracked_connections = {allowance}\n{}",
        &rules[..end],
        &rules[end..]
    )
}

/// A new allowance takes a connection table of the new capacity: the
/// tracked connections are carried over into it. Shown by removing the
/// SSH rule in the same change: the held connection lives on only if the
/// new table tracks it.
#[test]
fn a_new_allowance_carries_the_tracked_connections_over() {
    let lab = SeedLab::new("sgz", SEED, &[]);
    let agent = start_agent(&lab);
    let internet = lab.ns("internet");
    let mut tracked = tcp_open(&internet, ip(ADMIN), at(BASTION, 22)).expect("admin -> bastion:22");
    let before = attached_programs(&lab.ns("bastion"));

    let mark = agent.log_lines();
    lab.rewrite(&with_bastion_allowance(
        &seed_without_bastion_ingress(SEED),
        32,
    ));
    agent.expect_log(
        "instance bastion: connection allowance 65536 -> 32",
        mark,
        RELOAD,
    );
    assert_eq!(
        lab.tcp("internet", ADMIN, BASTION, 22),
        Outcome::TimedOut,
        "the SSH rule is gone"
    );
    assert_eq!(
        echo(&mut tracked),
        Ok(()),
        "the held connection was carried over into the new table"
    );
    let after = attached_programs(&lab.ns("bastion"));
    assert_eq!(
        after.len(),
        before.len(),
        "one program per hook, before and after"
    );
    assert!(
        after.iter().all(|id| !before.contains(id)),
        "new programs (with the new table) replaced the old in place: {before:?} -> {after:?}"
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

/// A lowered allowance evicts nothing: the bastion holds more SSH
/// connections than the new allowance, every one of them keeps answering,
/// new connections are refused (counted) until the table drains, and then
/// the table takes its new size, which the allowance enforces from then on.
#[test]
fn a_lowered_allowance_keeps_every_connection_and_drains_first() {
    const BEFORE: usize = 48;
    const AFTER: usize = 16;
    const HELD: usize = 28;
    let lab = SeedLab::new("sgw", &with_bastion_allowance(SEED, BEFORE), &[]);
    let agent = start_agent(&lab);
    let internet = lab.ns("internet");
    let mut held: Vec<_> = (0..HELD)
        .map(|i| {
            tcp_open(&internet, ip(ADMIN), at(BASTION, 22))
                .unwrap_or_else(|o| panic!("connection {i} within the allowance: {o:?}"))
        })
        .collect();

    let mark = agent.log_lines();
    lab.rewrite(&with_bastion_allowance(SEED, AFTER));
    agent.expect_log(
        &format!("instance bastion: connection allowance lowered from {BEFORE} to {AFTER}"),
        mark,
        RELOAD,
    );
    for (i, stream) in held.iter_mut().enumerate() {
        assert_eq!(echo(stream), Ok(()), "held connection {i} kept");
    }
    assert_eq!(
        lab.tcp("internet", ADMIN, BASTION, 22),
        Outcome::TimedOut,
        "a new connection is refused while the table drains"
    );
    let status = agent.status_json();
    let bastion = status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["name"] == "bastion")
        .expect("the bastion");
    assert_eq!(bastion["conntrack"]["draining_to"], AFTER, "{bastion}");
    assert!(
        bastion["conntrack"]["allowance_exceeded"].as_u64() >= Some(1),
        "the refusal is counted: {bastion}"
    );

    // Closed, they idle out and are reclaimed; then the table is resized.
    let mark = agent.log_lines();
    drop(held);
    agent.expect_log(
        &format!("instance bastion: connections drained; connection allowance {BEFORE} -> {AFTER}"),
        mark,
        Duration::from_secs(30),
    );
    let mut again = Vec::new();
    let refused = loop {
        assert!(
            again.len() <= AFTER,
            "more connections than the new allowance"
        );
        match tcp_open(&internet, ip(ADMIN), at(BASTION, 22)) {
            Ok(stream) => again.push(stream),
            Err(outcome) => break outcome,
        }
    };
    assert_eq!(refused, Outcome::TimedOut);
    assert!(
        again.len() >= AFTER - 4,
        "new flows are taken again, up to the new allowance: {}",
        again.len()
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

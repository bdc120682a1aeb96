//! Network ACLs on the wire: the seed's VPC split into subnets (public:
//! the load balancer and the bastion; app; db), a real `sg-agent run`, real
//! TCP connections between namespaces. The mistakes people make with
//! network ACLs, each as AWS behaves: the ephemeral-port trap (a
//! connection that hangs), a deny after an allow that never matches, a
//! custom network ACL denying everything until rules are added (but not
//! between neighbours of one subnet), and a held connection cut at once by
//! a new deny.

use std::time::Duration;

use sg_tests::{
    attached::tcx_names,
    probe::{Outcome::*, echo, eventually, tcp_open},
    seed::{ADMIN, ALB, APP, BASTION, OUTSIDER, RDS, RELOAD, SEED, SeedLab, at, ip, start_agent},
};

const SUBNETS: &str = r#"
[[subnet]]
name = "public"
cidr_block = "10.0.0.0/24"

[[subnet]]
name = "app"
cidr_block = "10.0.1.0/24"

[[subnet]]
name = "db"
cidr_block = "10.0.2.0/24"
"#;

/// The public subnet's network ACL as a newcomer writes it: HTTP in (an
/// allow-all at 100 and, numbered after it, a deny for the admins' network
/// that never matches), and out only to the VPC: the answers to the
/// internet's clients, on their ephemeral ports, have no rule.
const TRAP: &str = r#"
[[network_acl]]
name = "public-acl"
subnets = ["public"]
  [[network_acl.ingress]]
  rule_no = 100
  action = "allow"
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_block = "0.0.0.0/0"
  [[network_acl.ingress]]
  rule_no = 110
  action = "deny"
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_block = "203.0.113.0/24"
  [[network_acl.ingress]]
  rule_no = 120
  action = "allow"
  protocol = "all"
  cidr_block = "10.0.0.0/16"
  [[network_acl.egress]]
  rule_no = 100
  action = "allow"
  protocol = "all"
  cidr_block = "10.0.0.0/16"
"#;

/// What AWS's documentation advises: the ephemeral ports out, and the deny
/// numbered before the allow.
fn fixed() -> String {
    TRAP.replace("rule_no = 110", "rule_no = 90")
        + r#"
  [[network_acl.egress]]
  rule_no = 120
  action = "allow"
  protocol = "tcp"
  from_port = 1024
  to_port = 65535
  cidr_block = "0.0.0.0/0"
"#
}

fn rules(acls: &str) -> String {
    format!("{SEED}\n{SUBNETS}\n{acls}")
}

#[test]
fn the_ephemeral_port_trap_and_its_fix() {
    let lab = SeedLab::new("nacl", &rules(TRAP), &[]);
    let agent = start_agent(&lab);
    // The SYN is allowed in (rule 100) and tracked by the group; the
    // SYN-ACK to the client's ephemeral port meets the outbound * rule.
    assert_eq!(
        lab.tcp("internet", OUTSIDER, ALB, 80),
        TimedOut,
        "the connection hangs: the answers are denied on their way out"
    );
    let status = agent.status_json();
    let alb = status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["name"] == "alb")
        .expect("alb");
    assert!(
        alb["packets"]["egress"]["drop_network_acl"].as_u64() > Some(0),
        "counted as the network ACL's drop: {}",
        alb["packets"]
    );
    let mark = agent.log_lines();
    lab.rewrite(&rules(&fixed()));
    agent.expect_log("applied in", mark, RELOAD);
    assert!(
        eventually(Duration::from_secs(2), || lab
            .tcp("internet", OUTSIDER, ALB, 80)
            == Connected),
        "with the ephemeral ports let out, the connection completes"
    );
    assert_eq!(
        lab.tcp("internet", ADMIN, ALB, 80),
        TimedOut,
        "renumbered before the allow, the deny matches first"
    );
    // Inside the VPC (rule 120 both ways): the app server's SSH from the
    // bastion crosses two subnets' boundaries.
    assert_eq!(lab.tcp("bastion", BASTION, APP, 22), Connected);
}

#[test]
fn the_trap_with_the_deny_numbered_too_late_lets_the_admins_in() {
    // Rule 110 comes after 100, which allows everyone: the deny never
    // matches (with the answers let out, the admins connect).
    let late = fixed().replace("rule_no = 90", "rule_no = 110");
    let lab = SeedLab::new("nacl-late", &rules(&late), &[]);
    let _agent = start_agent(&lab);
    assert_eq!(lab.tcp("internet", ADMIN, ALB, 80), Connected);
}

#[test]
fn a_custom_network_acl_denies_everything_across_its_boundary_only() {
    // db's network ACL has no rule yet; app's none at all (AWS's default,
    // allowing everything).
    let closed = "[[network_acl]]\nname = \"db-acl\"\nsubnets = [\"db\"]\n\n[[network_acl]]\nname = \"public-closed\"\nsubnets = [\"public\"]\n";
    let lab = SeedLab::new("nacl-closed", &rules(closed), &[]);
    let _agent = start_agent(&lab);
    assert_eq!(
        lab.tcp("app-1", APP, RDS, 3306),
        TimedOut,
        "app -> db crosses db's boundary: the * rule denies"
    );
    assert_eq!(lab.tcp("internet", OUTSIDER, ALB, 80), TimedOut);
    assert_eq!(
        lab.tcp("bastion", BASTION, ALB, 80),
        Connected,
        "the bastion and the load balancer share the public subnet: its network ACL does not \
         filter them"
    );
}

#[test]
fn a_new_deny_cuts_a_held_connection_at_once() {
    let lab = SeedLab::new("nacl-cut", &rules(&fixed()), &[]);
    let agent = start_agent(&lab);
    let mut held = tcp_open(&lab.ns("internet"), ip(OUTSIDER), at(ALB, 80))
        .expect("the outsider connects to alb:80");
    echo(&mut held).expect("echo on the held connection");
    // AWS: a security group change leaves tracked connections alone; "to
    // ensure that traffic is immediately interrupted", a network ACL.
    let cut = fixed().replace(
        "  [[network_acl.ingress]]\n  rule_no = 100",
        "  [[network_acl.ingress]]\n  rule_no = 50\n  action = \"deny\"\n  protocol = \"all\"\n  \
         cidr_block = \"198.51.100.0/24\"\n  [[network_acl.ingress]]\n  rule_no = 100",
    );
    let mark = agent.log_lines();
    lab.rewrite(&rules(&cut));
    agent.expect_log("applied in", mark, RELOAD);
    assert!(
        echo(&mut held).is_err(),
        "the held connection's next exchange is cut"
    );
    assert_eq!(lab.tcp("internet", OUTSIDER, ALB, 80), TimedOut);
    assert_eq!(
        lab.tcp("internet", ADMIN, ALB, 80),
        TimedOut,
        "rule 90 still denies the admins"
    );
}

/// An instance runs the programs without network-ACL code until its subnet
/// gets a network ACL: then the other build goes on its live links in place
/// (its connections kept: the maps are the same), and back again when the
/// network ACL goes.
#[test]
fn a_subnet_gaining_a_network_acl_gets_the_programs_that_walk_it_in_place() {
    let lab = SeedLab::new("nacl-swap", &rules(""), &[]);
    let agent = start_agent(&lab);
    let names = || {
        let (ingress, egress) = tcx_names(&lab.ns("alb"), "eth0");
        [ingress, egress].concat()
    };
    assert_eq!(
        names(),
        ["sg_ingress_tc", "sg_egress"],
        "no network ACL: the programs without its code"
    );
    let mut outsider = tcp_open(&lab.ns("internet"), ip(OUTSIDER), at(ALB, 80))
        .expect("the outsider connects to alb:80");
    let mut admin =
        tcp_open(&lab.ns("internet"), ip(ADMIN), at(ALB, 80)).expect("an admin connects to alb:80");
    echo(&mut outsider).expect("echo");
    echo(&mut admin).expect("echo");
    let deny_outsiders = r#"
[[network_acl]]
name = "public-acl"
subnets = ["public"]
  [[network_acl.ingress]]
  rule_no = 50
  action = "deny"
  protocol = "all"
  cidr_block = "198.51.100.0/24"
  [[network_acl.ingress]]
  rule_no = 100
  action = "allow"
  protocol = "all"
  cidr_block = "0.0.0.0/0"
  [[network_acl.egress]]
  rule_no = 100
  action = "allow"
  protocol = "all"
  cidr_block = "0.0.0.0/0"
"#;
    let mark = agent.log_lines();
    lab.rewrite(&rules(deny_outsiders));
    agent.expect_log("its programs walk network ACLs now", mark, RELOAD);
    agent.expect_log("applied in", mark, RELOAD);
    assert_eq!(
        names(),
        ["sg_ingress_tc_a", "sg_egress_acl"],
        "the programs that walk it, on the same links (one each way)"
    );
    assert!(
        echo(&mut outsider).is_err(),
        "the new deny is in force on the held connection at once"
    );
    echo(&mut admin).expect("a connection the network ACL allows is kept through the swap");
    let mark = agent.log_lines();
    lab.rewrite(&rules(""));
    agent.expect_log("its programs carry no network ACLs now", mark, RELOAD);
    assert_eq!(names(), ["sg_ingress_tc", "sg_egress"]);
    echo(&mut admin).expect("kept through the swap back");
    assert_eq!(lab.tcp("internet", OUTSIDER, ALB, 80), Connected);
}

/// The first JSON record `follower` prints that `wanted` accepts, within
/// `deadline`; the follower is stopped either way.
fn next_record(
    follower: &mut std::process::Child,
    wanted: impl Fn(&serde_json::Value) -> bool + Send + 'static,
    deadline: Duration,
) -> Option<serde_json::Value> {
    use std::io::BufRead as _;
    let out = follower.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(record) = serde_json::from_str::<serde_json::Value>(&line)
                && wanted(&record)
            {
                let _ = tx.send(record);
                return;
            }
        }
    });
    let found = rx.recv_timeout(deadline).ok();
    let _ = follower.kill();
    let _ = follower.wait();
    found
}

#[test]
fn flow_logs_and_status_name_the_network_acl_entry() {
    let lab = SeedLab::new("nacl-log", &rules(TRAP), &[]);
    let dir = lab.config.parent().expect("lab dir").to_owned();
    let flow_log = dir.join("flows.log");
    let agent = sg_tests::seed::start_agent_logging_flows(
        &lab,
        &flow_log,
        10,
        &["--flow-log-format", "json"],
    );
    let mut follower = agent.follow_flows(&[
        "--action",
        "REJECT",
        "--instance",
        "alb",
        "--count",
        "100",
        "--format",
        "json",
    ]);
    // The SYN-ACK meets the outbound * rule (the trap).
    assert_eq!(lab.tcp("internet", OUTSIDER, ALB, 80), TimedOut);
    let record = next_record(
        &mut follower,
        |r| r["srcaddr"] == ALB && r["dstaddr"] == OUTSIDER,
        Duration::from_secs(30),
    )
    .expect("a REJECT record for the answer, within the interval");
    assert_eq!(
        record["network-acl"], "network ACL public-acl, outbound rule * (no rule matched)",
        "{record}"
    );
    assert_eq!(record["srcport"], 80, "{record}");

    let status = agent.status_json();
    let alb = status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["name"] == "alb")
        .expect("alb");
    let acl = &alb["network_acl"];
    assert_eq!(acl["name"], "public-acl", "{alb}");
    let entry = |direction: &str, rule: &str| {
        acl["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .find(|e| e["direction"] == direction && e["rule"] == rule)
            .unwrap_or_else(|| panic!("{direction} {rule} in {acl}"))
            .clone()
    };
    assert!(
        entry("ingress", "100")["flows"].as_u64() >= Some(1),
        "the SYN came in by rule 100: {acl}"
    );
    assert!(
        entry("egress", "*")["denied"].as_u64() >= Some(1),
        "the answer was denied by the * rule: {acl}"
    );
    let text = std::process::Command::new(sg_tests::agent::binary())
        .args(["status", "--rules", "--control-socket"])
        .arg(&agent.control_socket)
        .output()
        .expect("status runs");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("network ACL public-acl (stateless, first match):"),
        "{text}"
    );
}

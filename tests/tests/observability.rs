//! What the running agent tells its users, checked against known traffic in
//! the seed lab: `sg-agent status` (counters, connection tables, rule hits),
//! `sg-agent flows --follow` and `--live`, the flow-log file, the drop log and the
//! metrics endpoint, each number checked exactly, or against a second,
//! independent count of the same packets (the programs' counters against
//! the flow records built from events and connection-table counts).

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use sg_tests::{
    agent::binary,
    probe::Outcome::{Connected, TimedOut},
    seed::{ALB, APP, OUTSIDER, RDS, SEED, SeedLab, start_agent, start_agent_logging_flows},
};

/// The flow-log interval the test runs with (the shortest allowed).
const INTERVAL: u64 = 10;

fn sg_agent(args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("sg-agent runs")
}

fn status(socket: &Path) -> Value {
    let out = sg_agent(&[
        "status",
        "--json",
        "--control-socket",
        socket.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "status: {out:?}");
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

fn instance<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("instance {name} in {status:#}"))
}

fn packets(status: &Value, name: &str, direction: &str, reason: &str) -> u64 {
    instance(status, name)["packets"][direction][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} {direction} {reason}"))
}

fn rule_flows(status: &Value, name: &str, group: &str, direction: &str, rule: u64) -> u64 {
    instance(status, name)["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["group"] == group && r["direction"] == direction && r["rule"] == rule)
        .unwrap_or_else(|| panic!("{name}: {group} {direction} #{rule}"))["flows"]
        .as_u64()
        .expect("flows")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// One scrape of the metrics endpoint, as Prometheus reads it.
fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let response = sg_tests::agent::get_metrics(addr);
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP head and body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("openmetrics-text"), "{head}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parses")
}

fn sample(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {metric} {labels:?}"));
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{metric}: {other:?}"),
    }
}

/// Flow-log records of the file (text format), as field maps.
fn records(path: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    if let Some(first) = lines.next() {
        assert_eq!(
            first,
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets \
             bytes start end action log-status",
            "the file starts with AWS's field names"
        );
    }
    lines
        .map(|l| l.split(' ').map(str::to_owned).collect())
        .collect()
}

#[test]
fn status_rule_hits_flow_logs_metrics_and_the_drop_log_show_the_traffic_sent() {
    // The database's group and rule carry AWS ids, as imported ones do.
    let with_ids = SEED
        .replace(
            "name = \"instagram-rds-security-group\"\n",
            "name = \"instagram-rds-security-group\"\nid = \"sg-0123456789abcdef0\"\n",
        )
        .replace(
            "  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 3306",
            "  [[security_group.ingress]]\n  id = \"sgr-0fedcba9876543210\"\n  protocol = \"tcp\"\n  from_port = 3306",
        );
    assert_ne!(with_ids, SEED);
    let lab = SeedLab::new("sgo", &with_ids, &[]);
    let dir = lab.config.parent().expect("lab dir").to_owned();
    let flow_log = dir.join("flows.log");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let agent = start_agent_logging_flows(
        &lab,
        &flow_log,
        INTERVAL,
        &["--metrics-listen", &metrics.to_string(), "--ebpf-log"],
    );
    let socket = agent.control_socket.clone();
    let socket_arg = socket.to_str().expect("utf-8").to_owned();

    // A user watching for blocked requests, started before they happen.
    let mut follower = agent.follow_flows(&[
        "--action",
        "REJECT",
        "--instance",
        "app-1",
        "--count",
        "100",
        "--format",
        "json",
    ]);

    // And one for what rds accepts: the records name the allowing rule.
    let mut accepted = agent.follow_flows(&[
        "--action",
        "ACCEPT",
        "--instance",
        "rds",
        "--count",
        "100",
        "--format",
        "json",
    ]);

    // The lab's own IPv6 chatter (multicast listener reports as addresses
    // come up) is over within a few seconds; counts are taken from here.
    std::thread::sleep(Duration::from_secs(3));
    let before = status(&socket);

    // Known traffic: 3 tracked connections app-1 -> rds:3306, 2 untracked
    // ones internet -> alb:80 (a whole-space rule, every port open back), 2
    // blocked attempts internet -> app-1:80 (one SYN each: the probe gives
    // up before the kernel's first retransmission).
    for _ in 0..3 {
        assert_eq!(lab.tcp("app-1", APP, RDS, 3306), Connected);
    }
    for _ in 0..2 {
        assert_eq!(lab.tcp("internet", OUTSIDER, ALB, 80), Connected);
    }
    for _ in 0..2 {
        assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    }
    let traffic_done = Instant::now();

    let s = check_status(&socket, &before);
    let human = sg_agent(&["status", "--rules", "--control-socket", &socket_arg]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains("instance rds") && human.contains("never"),
        "{human}"
    );
    assert!(
        human.contains(
            "tcp 3306 from group instagram-server-security-group [sgr-0fedcba9876543210]"
        ),
        "{human}"
    );
    let rds_rule = &instance(&s, "rds")["rules"][0];
    assert_eq!(rds_rule["group_id"], "sg-0123456789abcdef0", "{rds_rule}");
    assert_eq!(rds_rule["rule_id"], "sgr-0fedcba9876543210", "{rds_rule}");

    // The drop log names instance, direction, addresses, ports and reason.
    agent.expect_log(
        &format!("instance app-1: dropped inbound tcp {OUTSIDER}:"),
        0,
        Duration::from_secs(3),
    );
    assert!(
        agent
            .log_text()
            .contains(&format!("-> {APP}:80: no rule allows it")),
        "{}",
        agent.log_text()
    );

    check_metrics(metrics, &s);
    check_follower(&mut follower, traffic_done);
    check_recent(&socket_arg);
    check_rule_attribution(&mut accepted);
    check_flow_log(&lab, &flow_log, &socket, &before);
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(!socket.exists(), "the control socket goes with the agent");
}

/// Status after the traffic: new flows, counters and rule hits grew by
/// exactly what was sent.
fn check_status(socket: &Path, before: &Value) -> Value {
    // Events are drained ten times a second.
    let new_flows = |s: &Value, name: &str| instance(s, name)["new_flows"].as_u64().expect("n");
    let grown = |s: &Value, name: &str| new_flows(s, name) - new_flows(before, name);
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = loop {
        let s = status(socket);
        if grown(&s, "rds") >= 3 || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(s["schema"], 1);
    assert_eq!(grown(&s, "rds"), 3, "{s:#}");
    assert_eq!(grown(&s, "app-1"), 3, "app-1 opened them");
    assert_eq!(grown(&s, "alb"), 0, "untracked: no entry");
    for name in ["alb", "bastion", "app-1", "rds"] {
        let i = instance(&s, name);
        assert_eq!(i["state"], "enforced");
        assert_eq!(i["links"].as_array().map(Vec::len), Some(2), "{i:#}");
        assert!(i["conntrack"]["capacity"].as_u64() > Some(0));
    }
    let dropped = |s: &Value| packets(s, "app-1", "ingress", "drop_no_rule");
    assert_eq!(
        dropped(&s) - dropped(before),
        2,
        "one SYN per blocked attempt"
    );
    assert!(instance(&s, "rds")["conntrack"]["entries"].as_u64() >= Some(3));
    // Rule hits, as `check` numbers the rules.
    let hits = |s: &Value, name, group, direction, rule| {
        rule_flows(s, name, group, direction, rule)
            - rule_flows(before, name, group, direction, rule)
    };
    assert_eq!(
        hits(&s, "rds", "instagram-rds-security-group", "ingress", 1),
        3
    );
    assert_eq!(
        hits(&s, "app-1", "instagram-server-security-group", "egress", 1),
        3,
        "the implicit all-traffic egress rule"
    );
    assert_eq!(
        hits(&s, "alb", "instagram-elb-security-group", "ingress", 1),
        2,
        "untracked flows, once per 5-tuple"
    );
    assert_eq!(
        rule_flows(
            &s,
            "bastion",
            "instagram-bastion-host-security-group",
            "ingress",
            1
        ),
        0,
        "a rule that never matched is listed, with no flows"
    );
    s
}

/// The metrics endpoint, scraped: the numbers status shows.
fn check_metrics(metrics: SocketAddr, s: &Value) {
    let dropped = |s: &Value| packets(s, "app-1", "ingress", "drop_no_rule");
    // Metrics: the same numbers, through a real scrape.
    let m = scrape(metrics);
    let drop_no_rule = sample(
        &m,
        "sg_agent_packets_total",
        &[
            ("instance", "app-1"),
            ("direction", "ingress"),
            ("verdict", "drop"),
            ("reason", "drop_no_rule"),
        ],
    );
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let at_least = dropped(s) as f64;
    assert!(drop_no_rule >= at_least, "{drop_no_rule} < {at_least}");
    let hits = sample(
        &m,
        "sg_agent_rule_flows_total",
        &[
            ("instance", "rds"),
            ("group", "instagram-rds-security-group"),
            ("direction", "ingress"),
            ("rule", "1"),
        ],
    );
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let want = rule_flows(s, "rds", "instagram-rds-security-group", "ingress", 1) as f64;
    assert!((hits - want).abs() < f64::EPSILON, "{hits} != {want}");
    let capacity = sample(&m, "sg_agent_conntrack_capacity", &[("instance", "rds")]);
    assert!(capacity > 0.0);
}

/// `flows --follow --action REJECT --instance app-1`: the blocked attempt.
fn check_follower(follower: &mut std::process::Child, traffic_done: Instant) {
    // The follower gets the REJECT records as their interval ends (the
    // lab's IPv6 chatter, refused too, may come first).
    let record = next_record(follower, |record| {
        assert_eq!(record["instance"], "app-1", "--instance filters: {record}");
        record["dstaddr"] == APP
    });
    assert_eq!(record["action"], "REJECT", "{record}");
    assert_eq!(record["srcaddr"], OUTSIDER);
    assert_eq!(record["dstaddr"], APP);
    assert_eq!(record["dstport"], 80);
    assert_eq!(record["protocol"], 6);
    assert_eq!(record["packets"], 1, "one SYN per attempt");
    assert_eq!(record["log-status"], "OK");
    assert!(
        traffic_done.elapsed() < Duration::from_secs(INTERVAL + 5),
        "records come at the interval's end"
    );
}

/// `flows` without `--follow`: the latest records the agent holds, filtered
/// as a follower's, then exit 0; `--count N` keeps the latest N.
fn check_recent(socket: &str) {
    let out = sg_agent(&[
        "flows",
        "--action",
        "REJECT",
        "--instance",
        "app-1",
        "--format",
        "json",
        "--control-socket",
        socket,
    ]);
    assert!(out.status.success(), "{out:?}");
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    assert!(
        records
            .iter()
            .all(|r| r["instance"] == "app-1" && r["action"] == "REJECT"),
        "filtered: {records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["srcaddr"] == OUTSIDER && r["dstaddr"] == APP && r["dstport"] == 80),
        "the blocked attempts are among the latest records: {records:?}"
    );
    let out = sg_agent(&["flows", "--count", "1", "--control-socket", socket]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "{out:?}"
    );
}

/// The first JSON record the follower prints that `wanted` accepts; the
/// follower is stopped then.
fn next_record(follower: &mut std::process::Child, wanted: impl Fn(&Value) -> bool) -> Value {
    let mut lines = BufReader::new(follower.stdout.take().expect("piped")).lines();
    let record: Value = loop {
        let line = lines
            .next()
            .expect("the follower prints records")
            .expect("a line");
        let record: Value = serde_json::from_str(&line).expect("a JSON record");
        if wanted(&record) {
            break record;
        }
    };
    let _ = follower.kill();
    let _ = follower.wait();
    record
}

/// JSON records name the rules that allowed a flow (by AWS id where the
/// file has one) on the record of the interval it started in.
fn check_rule_attribution(follower: &mut std::process::Child) {
    let record = next_record(follower, |record| {
        record["dstaddr"] == RDS && record["dstport"] == 3306 && record.get("rules").is_some()
    });
    assert_eq!(record["srcaddr"], APP, "{record}");
    assert_eq!(
        record["rules"],
        serde_json::json!(["sgr-0fedcba9876543210"]),
        "{record}"
    );
}

/// The file: every record of the traffic (a flow whose packets straddle
/// two intervals has a record in each), summing to the programs' own
/// counters: events and connection-table counts against the per-reason
/// counters.
/// What rds's programs passed inbound, by a rule or as tracked.
fn rds_inbound(s: &Value) -> u64 {
    packets(s, "rds", "ingress", "pass_rule") + packets(s, "rds", "ingress", "pass_tracked")
}

fn check_flow_log(lab: &SeedLab, flow_log: &Path, socket: &Path, before: &Value) {
    let ns = |host: &str| format!("{}/eth0", lab.ns(host));
    let pick = |rows: &[Vec<String>], iface: &str, dst: &str, action: &str| -> (usize, u64) {
        let picked: Vec<&Vec<String>> = rows
            .iter()
            .filter(|r| r[2] == iface && r[4] == dst && r[12] == action)
            .collect();
        let flows: std::collections::BTreeSet<(&String, &String)> =
            picked.iter().map(|r| (&r[5], &r[6])).collect();
        (
            flows.len(),
            picked
                .iter()
                .map(|r| r[8].parse::<u64>().expect("packets"))
                .sum(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(2 * INTERVAL + 5);
    let (s, rows) = loop {
        // Status first: the counters can only have grown by the time the
        // file is read, never the other way.
        let s = status(socket);
        let rows = records(flow_log);
        let rds_in = rds_inbound(&s) - rds_inbound(before);
        let done = pick(&rows, &ns("rds"), RDS, "ACCEPT") == (3, rds_in)
            && pick(&rows, &ns("app-1"), APP, "REJECT") == (2, 2)
            && pick(&rows, &ns("alb"), ALB, "ACCEPT").0 == 2;
        if done || Instant::now() > deadline {
            break (s, rows);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let (flows, rds_in) = pick(&rows, &ns("rds"), RDS, "ACCEPT");
    assert_eq!(flows, 3, "three connections into rds:\n{rows:?}");
    // From the baseline: the lab's IPv6 chatter as interfaces came up can
    // pass as tracked too (a multicast listener report from `::` matches
    // rds's own report's entry), on flows whose records are not rds's.
    assert_eq!(
        rds_in,
        rds_inbound(&s) - rds_inbound(before),
        "rds's inbound records count what its programs passed"
    );
    let (flows, rds_out) = pick(&rows, &ns("rds"), APP, "ACCEPT");
    assert_eq!(flows, 3, "and their replies");
    // (Counted from the baseline: rds's own multicast listener reports, a
    // tracked flow to ff02::16, pass as tracked too.)
    assert_eq!(
        rds_out,
        packets(&s, "rds", "egress", "pass_tracked")
            - packets(before, "rds", "egress", "pass_tracked")
    );
    let (flows, alb_in) = pick(&rows, &ns("alb"), ALB, "ACCEPT");
    assert_eq!(flows, 2, "untracked flows too:\n{rows:?}");
    assert_eq!(alb_in, packets(&s, "alb", "ingress", "pass_untracked"));
    assert_eq!(pick(&rows, &ns("app-1"), APP, "REJECT"), (2, 2), "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.len() == 14 && r[0] == "2" && r[13] == "OK"),
        "{rows:?}"
    );
}

#[test]
fn status_says_when_no_agent_runs() {
    let out = sg_agent(&[
        "status",
        "--control-socket",
        "/run/sg-agent-tests/nobody-here.sock",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no sg-agent is running here"), "{err}");
}

/// `sg-agent flows --live` (libvirt round two): an agent started without
/// flow logs or the drop log streams each allowed new flow and each
/// dropped packet, with its reason, to a live follower, and stops
/// reporting drops when the follower goes.
#[test]
fn flows_live_streams_allowed_and_dropped_packets_without_flow_logs() {
    let lab = SeedLab::new("sgl", SEED, &[]);
    let agent = start_agent(&lab);
    let socket = agent.control_socket.clone();
    let followers = || status(&socket)["agent"]["live_followers"].as_u64();
    assert_eq!(followers(), Some(0));
    let mut follower = Command::new(binary())
        .args(["flows", "--live", "--format", "json", "--control-socket"])
        .arg(&socket)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sg-agent flows --live starts");
    let lines = {
        let out = follower.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        rx
    };
    assert!(
        sg_tests::probe::eventually(Duration::from_secs(5), || followers() == Some(1)),
        "the agent counts the live follower"
    );
    // Its next tick (100 ms) turns every instance's drop reports on.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    assert_eq!(lab.tcp("app-1", APP, RDS, 3306), Connected);
    let (mut rejected, mut accepted) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while (rejected.is_none() || accepted.is_none()) && Instant::now() < deadline {
        let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let r: Value = serde_json::from_str(&line).expect("a JSON record");
        let to = |inst: &str, port: u64| r["instance"] == inst && r["dstport"] == port;
        if r["action"] == "REJECT" && to("app-1", 80) && r["srcaddr"] == OUTSIDER {
            rejected = Some(r);
        } else if r["action"] == "ACCEPT" && to("rds", 3306) && r["srcaddr"] == APP {
            accepted = Some(r);
        }
    }
    let rejected = rejected.expect("the dropped SYN to app-1:80, live");
    assert_eq!(rejected["reason"], "no rule allows it", "{rejected}");
    assert_eq!(rejected["packets"], 1, "{rejected}");
    let accepted = accepted.expect("the new flow to rds:3306, live");
    assert_eq!(accepted["protocol"], 6, "{accepted}");
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        sg_tests::probe::eventually(Duration::from_secs(5), || followers() == Some(0)),
        "the follower gone, the agent stops counting it"
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

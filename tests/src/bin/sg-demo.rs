//! `cargo xtask demo`: the seed's architecture in network namespaces under
//! a real `sg-agent run`, its reachability matrix checked cell by cell
//! against the reference evaluator, and the seed's experiment replayed.
//! `cargo xtask demo --vms`: the same with the four instances as real QEMU
//! VMs, enforced on the host side of their taps, the matrix probed from
//! inside the guests.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use sg_agent::{
    config::{Direction, Vpc},
    policy::reference::{L4, Packet, evaluate},
};
use sg_tests::{
    agent::binary,
    lab::in_netns,
    probe::{Outcome, tcp},
    seed::{
        ADMIN, ADMIN6, ALB, ALB6, APP, BASTION, OUTSIDER, OUTSIDER6, RDS, SEED, SeedLab, at, ip,
        seed_without_alb_ingress,
    },
    vm::SeedVms,
};

/// Where the demo's agent serves its metrics.
const METRICS: &str = "127.0.0.1:9477";
/// Where it serves EC2's API.
const EC2_API: &str = "127.0.0.1:4566";
/// Its flow-log interval: the shortest allowed, so records show soon.
const FLOW_LOG_INTERVAL: &str = "10";

/// (host, source address, instance name in the rules file, if any).
const SOURCES: &[(&str, &str, Option<&str>)] = &[
    ("internet", ADMIN, None),
    ("internet", OUTSIDER, None),
    ("internet", OUTSIDER6, None),
    ("internet", ADMIN6, None),
    ("alb", ALB, Some("alb")),
    ("bastion", BASTION, Some("bastion")),
    ("app-1", APP, Some("app-1")),
    ("rds", RDS, Some("rds")),
];

/// (instance, address, port).
const TARGETS: &[(&str, &str, u16)] = &[
    ("alb", ALB, 80),
    ("alb", ALB6, 80),
    ("alb", ALB, 8080),
    ("bastion", BASTION, 22),
    ("app-1", APP, 22),
    ("app-1", APP, 80),
    ("rds", RDS, 3306),
];

/// Where the demo's hosts are: namespaces, or VMs.
enum Demo {
    Namespaces(SeedLab),
    Vms(SeedVms),
}

impl Demo {
    fn internet(&self) -> String {
        match self {
            Self::Namespaces(lab) => lab.ns("internet"),
            Self::Vms(vms) => vms.lab.netns_of("internet"),
        }
    }

    /// A TCP probe from `host` (a namespace, or inside a VM over its
    /// console).
    fn probe(&self, host: &str, from: &str, to: &str, port: u16) -> Outcome {
        match self {
            Self::Vms(vms) if host != "internet" => {
                if vms.vm(host).connects(to, port, 2) {
                    Outcome::Connected
                } else {
                    Outcome::TimedOut
                }
            }
            Self::Vms(vms) => tcp(&vms.lab.netns_of(host), ip(from), at(to, port)),
            Self::Namespaces(lab) => tcp(&lab.ns(host), ip(from), at(to, port)),
        }
    }

    fn rewrite(&self, rules: &str) {
        match self {
            Self::Namespaces(lab) => lab.rewrite(rules),
            Self::Vms(vms) => vms.rewrite(rules),
        }
    }
}

fn main() -> ExitCode {
    let vms = std::env::args().any(|a| a == "--vms");
    println!(
        "sg-agent demo: AWS security groups on this host, enforced in the kernel with eBPF (XDP or TC)\n"
    );
    if vms {
        return vm_demo();
    }
    let lab = SeedLab::new("sgdemo", SEED, &[]);
    println!(
        "built the seed architecture: {} network namespaces on one bridge",
        lab.lab.hosts.len()
    );
    for h in &lab.lab.hosts {
        println!("  {:<9} netns {}", h.name, h.netns.name);
    }
    let agent = start_observed_agent(&lab.config, &["ready: enforcing"]);
    finish(&Demo::Namespaces(lab), agent)
}

/// The demo with VMs: the agent first (every instance waits for its tap),
/// then four QEMU guests, each attached as QEMU makes its tap.
fn vm_demo() -> ExitCode {
    let mut vms = SeedVms::new("sgdemo", SEED);
    println!(
        "built the lab: the internet as a network namespace, a bridge in netns {}; the \
         instances are QEMU VMs on it, enforced on the host side of their taps:",
        vms.lab.switch_netns()
    );
    for (name, tap, mac, addresses, _) in sg_tests::vm::SEED_VMS {
        println!(
            "  {name:<9} tap {tap:<10} MAC {mac}  {}",
            addresses.join(" ")
        );
    }
    let agent = start_observed_agent(&vms.config, &["ready: enforcing 0 instance(s)"]);
    println!("\n==> booting four VMs (QEMU, TCG: no KVM needed)");
    let started = Instant::now();
    vms.boot_all();
    println!("  booted in {:.1} s", started.elapsed().as_secs_f64());
    for (name, ..) in sg_tests::vm::SEED_VMS {
        let line = format!("attached instance {name} to ");
        let _ = agent.wait_for(&line, 0, Duration::from_secs(30));
    }
    finish(&Demo::Vms(vms), agent)
}

/// The matrix, the seed's experiment, what the agent saw, the teardown.
fn finish(demo: &Demo, agent: sg_tests::agent::AgentProcess) -> ExitCode {
    std::thread::sleep(Duration::from_millis(50)); // let the agent's log lines print first
    let vpc: Vpc = sg_agent::config::from_str("examples/seed-vpc.toml".as_ref(), SEED)
        .expect("the seed example is valid");

    println!("\n==> who reaches whom over TCP (each cell checked against the rules)");
    let cells: Vec<_> = SOURCES
        .iter()
        .flat_map(|s| TARGETS.iter().map(move |t| (*s, *t)))
        .filter(|((_, from, _), (_, to, _))| ip(from).is_ipv6() == ip(to).is_ipv6())
        .filter(|((host, ..), (target, ..))| host != target)
        .collect();
    // Probes run side by side: a blocked cell costs one time-out, not many
    // (a VM's probes share its console, so they queue there).
    let results: Vec<Outcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = cells
            .iter()
            .map(|&((host, from, _), (_, to, port))| {
                scope.spawn(move || demo.probe(host, from, to, port))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe"))
            .collect()
    });
    println!(
        "  {:<24} {:<28} {:>5}  {:<10} RULES SAY",
        "FROM", "TO", "PORT", "RESULT"
    );
    let mut wrong = 0;
    for (&((host, from, src_inst), (target, to, port)), got) in cells.iter().zip(&results) {
        let allowed = rules_allow(&vpc, src_inst, target, from, to, port);
        let want = if allowed {
            Outcome::Connected
        } else {
            Outcome::TimedOut
        };
        let mark = if *got == want {
            ""
        } else {
            "   <-- NOT WHAT THE RULES SAY"
        };
        wrong += usize::from(*got != want);
        println!(
            "  {:<24} {:<28} {:>5}  {:<10} {}{mark}",
            format!("{host} {from}"),
            format!("{target} {to}"),
            port,
            got.to_string(),
            if allowed { "allow" } else { "deny" }
        );
    }

    println!("\n==> the seed's experiment: remove every inbound rule of the ALB's group");
    let mark = agent.log_lines();
    demo.rewrite(&seed_without_alb_ingress());
    agent.expect_log("applied", mark, Duration::from_secs(5));
    let internet = demo.internet();
    let started = Instant::now();
    let hung = hanging_request(&internet);
    println!(
        "  GET http://{ALB}/ from the internet: {} after {:.1} s, no error and no reset: the request just hangs",
        hung,
        started.elapsed().as_secs_f64()
    );
    wrong += usize::from(hung != Outcome::TimedOut);
    println!("  put the rule back");
    let mark = agent.log_lines();
    demo.rewrite(SEED);
    agent.expect_log("applied", mark, Duration::from_secs(5));
    let back = tcp(&internet, ip(OUTSIDER), at(ALB, 80));
    println!("  GET http://{ALB}/ from the internet: {back}");
    wrong += usize::from(back != Outcome::Connected);

    wrong += with_the_aws_cli(&internet);
    wrong += observe(&agent, &internet);

    println!("\n==> tearing down");
    let status = agent.terminate();
    println!("  sg-agent stopped by SIGTERM: {status}, every program detached");
    println!("  VMs stopped, network namespaces removed");
    if wrong == 0 && status.success() {
        println!("\nevery cell is what the rules say");
        ExitCode::SUCCESS
    } else {
        println!("\n{wrong} result(s) differ from what the rules say");
        ExitCode::FAILURE
    }
}

/// What the rules say: the source instance's egress (if it is one) and the
/// target's ingress, by the reference evaluator.
fn rules_allow(
    vpc: &Vpc,
    src_inst: Option<&str>,
    target: &str,
    from: &str,
    to: &str,
    port: u16,
) -> bool {
    let packet = Packet {
        src: ip(from),
        dst: ip(to),
        proto: 6,
        l4: L4::Ports {
            src: 40000,
            dst: port,
        },
        later_fragment: false,
        via_ah: false,
        service_place: false,
    };
    let out = src_inst.is_none_or(|s| {
        evaluate(
            vpc,
            vpc.instance(s).expect("instance"),
            Direction::Egress,
            &packet,
            false,
        )
        .passes()
    });
    out && evaluate(
        vpc,
        vpc.instance(target).expect("instance"),
        Direction::Ingress,
        &packet,
        false,
    )
    .passes()
}

/// A client that waits three seconds, as a browser would wait longer.
fn hanging_request(ns: &str) -> Outcome {
    in_netns(ns, || {
        let addr = at(ALB, 80);
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(_) => Outcome::Connected,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::TimedOut,
            Err(_) => Outcome::Refused,
        }
    })
}

/// One rule authorized with the real AWS CLI, in force on the wire when it
/// answers, and revoked. Returns how many results were not as expected.
fn with_the_aws_cli(internet: &str) -> usize {
    let endpoint = format!("http://{EC2_API}");
    println!(
        "\n==> the AWS CLI against sg-agent's EC2 API (PyPI's awscli, installed into ~/.cache/sg-agent-tests/aws-venv on \
         the first run)"
    );
    let cli = |args: &[&str]| {
        println!("  $ aws --endpoint-url {endpoint} ec2 {}", args.join(" "));
        let mut all = vec!["ec2"];
        all.extend_from_slice(args);
        let out = sg_tests::aws::aws_cli(&endpoint, &all);
        if !out.status.success() {
            println!("  failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        out
    };
    let out = cli(&[
        "describe-security-groups",
        "--group-names",
        "instagram-server-security-group",
        "--query",
        "SecurityGroups[0].GroupId",
    ]);
    let group = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_matches('"')
        .to_owned();
    println!("  {group}");
    let before = tcp(internet, ip(OUTSIDER), at(APP, 80));
    println!("  GET http://{APP}/ from the internet ({OUTSIDER}): {before}");
    let cidr = format!("{OUTSIDER}/32");
    let rule = [
        "--group-id",
        group.as_str(),
        "--protocol",
        "tcp",
        "--port",
        "80",
        "--cidr",
        cidr.as_str(),
    ];
    let out = cli(&[
        &["authorize-security-group-ingress"][..],
        &rule[..],
        &["--query", "SecurityGroupRules[0].SecurityGroupRuleId"],
    ]
    .concat());
    println!("  {}", String::from_utf8_lossy(&out.stdout).trim());
    let during = tcp(internet, ip(OUTSIDER), at(APP, 80));
    println!("  GET http://{APP}/ from the internet, as soon as the CLI returned: {during}");
    cli(&[&["revoke-security-group-ingress"][..], &rule[..]].concat());
    let after = tcp(internet, ip(OUTSIDER), at(APP, 80));
    println!("  GET http://{APP}/ from the internet after the revoke: {after}");
    println!(
        "  (each call was written into the rules file, comments kept, and answered once in force)"
    );
    usize::from(before != Outcome::TimedOut)
        + usize::from(during != Outcome::Connected)
        + usize::from(after != Outcome::TimedOut)
}

/// `sg-agent run` with flow logs and metrics, on the default control
/// socket (so a user's `sg-agent status` finds it), and how to watch it.
fn start_observed_agent(config: &std::path::Path, ready: &[&str]) -> sg_tests::agent::AgentProcess {
    println!(
        "\n==> sg-agent run --config examples/seed-vpc.toml --flow-log flows.log --flow-log-interval \
         {FLOW_LOG_INTERVAL} --metrics-listen {METRICS} --ec2-api {EC2_API} (namespaces renamed for \
         this run)"
    );
    let flow_log = config.with_file_name("flows.log");
    let flow_log_arg = flow_log.to_string_lossy().into_owned();
    let agent = sg_tests::agent::AgentProcess::start_with(
        config,
        &[
            "--flow-log",
            &flow_log_arg,
            "--flow-log-interval",
            FLOW_LOG_INTERVAL,
            "--metrics-listen",
            METRICS,
            "--ec2-api",
            EC2_API,
            "--control-socket",
            sg_agent::observe::control::DEFAULT_SOCKET,
        ],
    );
    for line in ready {
        agent.expect_log(line, 0, sg_tests::seed::START);
    }
    println!(
        "\n  watch it from a second terminal while the demo runs:\n    \
         sudo {bin} status --rules\n    sudo {bin} flows --follow --action REJECT\n    \
         curl -s http://{METRICS}/metrics",
        bin = binary().display()
    );
    agent
}

/// What the agent saw of all this: its status, the flow-log records of the
/// blocked requests as their interval ends, and a few metrics. Returns how
/// many of these were missing.
fn observe(agent: &sg_tests::agent::AgentProcess, internet: &str) -> usize {
    let socket = agent.control_socket.to_string_lossy().into_owned();
    println!("\n==> sg-agent status --instance app-1 --rules");
    let status = std::process::Command::new(binary())
        .args([
            "status",
            "--instance",
            "app-1",
            "--rules",
            "--control-socket",
            &socket,
        ])
        .output()
        .expect("sg-agent status runs");
    for line in String::from_utf8_lossy(&status.stdout).lines() {
        println!("  {line}");
    }
    println!(
        "\n==> sg-agent flows --follow --action REJECT --instance app-1 --count 3, while the \
         internet tries app-1 on ports 22, 80 and 443: what app-1 refused, as flow-log records, \
         as each {FLOW_LOG_INTERVAL}-s interval ends"
    );
    let mut follower =
        agent.follow_flows(&["--action", "REJECT", "--instance", "app-1", "--count", "3"]);
    // Give it a moment to connect before the traffic it is to see.
    std::thread::sleep(Duration::from_millis(300));
    for port in [22, 80, 443] {
        let _ = tcp(internet, ip(OUTSIDER), at(APP, port));
    }
    // Bounded: an interval is 10 s; the follower is stopped after 30.
    let deadline = Instant::now() + Duration::from_secs(30);
    while matches!(follower.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = follower.kill();
    let flows = follower.wait_with_output().expect("sg-agent flows ends");
    let records = String::from_utf8_lossy(&flows.stdout);
    for line in records.lines() {
        println!("  {line}");
    }
    println!("\n==> curl http://{METRICS}/metrics (app-1's inbound drops)");
    let metrics = sg_tests::agent::get_metrics(METRICS.parse().expect("an address"));
    let shown: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("sg_agent_packets_total")
                && l.contains("\"app-1\"")
                && l.contains("\"drop\"")
                && !l.ends_with(" 0")
        })
        .collect();
    for line in &shown {
        println!("  {line}");
    }
    usize::from(!status.status.success())
        + usize::from(records.lines().count() < 3)
        + usize::from(shown.is_empty())
}

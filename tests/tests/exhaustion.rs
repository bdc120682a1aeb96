//! No client of the agent's listeners may take what enforcement needs: a
//! flood of idle connections to the metrics endpoint, with the agent at
//! systemd's default limit of 1,024 descriptors, leaves it following its
//! instances (an interface recreated meanwhile is enforced again), answering
//! its control socket, and not spinning; followers of `flows --follow` that
//! go away give their descriptors back at once.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use sg_tests::{
    agent::AgentProcess,
    attached::attached_programs,
    probe::{Outcome, eventually},
    seed::{APP, OUTSIDER, RELOAD, SEED, SeedLab, start_agent_with},
};

/// A free loopback port for the metrics endpoint.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// What the process's descriptors are, by kind (`socket`, `anon_inode:bpf-map`...).
fn descriptor_kinds(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let target =
            std::fs::read_link(e.path()).map_or_else(|_| "?".into(), |t| t.display().to_string());
        let kind = target.split(':').next().unwrap_or("?").to_owned();
        let kind = if kind.starts_with("anon_inode") {
            target.split('[').next().unwrap_or("?").to_owned()
        } else {
            kind
        };
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

/// CPU seconds the process used, user and system.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the command: state is field 3; utime and stime are 14 and 15.
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf without side effects.
    let hz = f64::from(i32::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100));
    ticks / hz
}

fn limit_descriptors(pid: u32, n: u32) {
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={n}:{n}")])
        .output()
        .expect("prlimit (util-linux)");
    assert!(out.status.success(), "prlimit: {out:?}");
}

#[test]
fn a_flood_of_idle_connections_leaves_enforcement_whole() {
    let lab = SeedLab::new("sgf", SEED, &[]);
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let agent = start_agent_with(&lab, &["--metrics-listen", &metrics]);
    let pid = agent.pid();
    // systemd's default for a unit that sets none.
    limit_descriptors(pid, 1024);

    // 1,100 idle connections tried (never a request): more than the agent
    // could hold if it accepted them all. It accepts 64; the kernel's
    // backlog holds some more, and the rest time out.
    let addr: SocketAddr = metrics.parse().expect("addr");
    let before = descriptors(pid);
    let idle: Vec<TcpStream> = (0..1100)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(20)).ok())
        .collect();
    assert!(
        idle.len() > 64,
        "the flood reached the agent: {}",
        idle.len()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        descriptors(pid) <= before + 64,
        "the agent holds {} descriptors ({before} before) with {} connections made: at most 64 more",
        descriptors(pid),
        idle.len()
    );
    let cpu = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        cpu_seconds(pid) - cpu < 0.5,
        "the agent does not spin under the flood"
    );

    // An interface recreated meanwhile is enforced again.
    let skip = agent.log_lines();
    lab.lab.recreate_eth0("app-1");
    assert!(
        eventually(RELOAD, || attached_programs(&lab.ns("app-1")).len() == 2),
        "the new eth0 gets its programs during the flood:\n{}",
        agent.log_text()
    );
    agent.expect_log("programs attached again", skip, RELOAD);
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        Outcome::TimedOut,
        "still blocked"
    );
    // The control socket answers, and status reports no lapse that did not
    // happen (one interface recreated: one lapse).
    let status = agent.status_json();
    assert_eq!(status["agent"]["lapses"], 1, "{}", status["agent"]);
    assert!(
        !agent.log_text().contains("Too many open files"),
        "{}",
        agent.log_text()
    );
    drop(idle);
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn followers_that_go_give_their_descriptors_back() {
    let lab = SeedLab::new("sgw", SEED, &[]);
    let dir = lab.config.parent().expect("dir").to_owned();
    let flow_log = dir.join("flows.log");
    let agent: AgentProcess =
        start_agent_with(&lab, &["--flow-log", flow_log.to_str().expect("utf-8")]);
    let pid = agent.pid();
    // Settled first: the agent opens a few descriptors of its own as it
    // starts observing (namespaces, link watches).
    std::thread::sleep(Duration::from_secs(2));
    let before = descriptors(pid);
    let kinds_before = descriptor_kinds(pid);
    let mut followers: Vec<_> = (0..100)
        .map(|_| agent.follow_flows(&["--action", "REJECT", "--instance", "app-1"]))
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || descriptors(pid) >= before + 50),
        "the followers are connected"
    );
    for f in &mut followers {
        let _ = f.kill();
        let _ = f.wait();
    }
    let started = Instant::now();
    // A few descriptors of the agent's own may come and go meanwhile; 100
    // followers held would be 100.
    assert!(
        eventually(Duration::from_secs(3), || descriptors(pid) <= before + 5),
        "followers that went hold {} descriptors {} ms later (before: {before}): {:?} -> {:?}",
        descriptors(pid),
        started.elapsed().as_millis(),
        kinds_before,
        descriptor_kinds(pid)
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

/// A name from the rules file cannot forge metric lines: a control
/// character is refused outright, and a quote (outside AWS's character set,
/// accepted with a warning) is escaped in the exposition.
#[test]
fn names_cannot_forge_metrics() {
    let forged = "web\"} 1\nsg_agent_injected_total 99\n#";
    let refused = SEED.replace(
        "instagram-server-security-group",
        &forged.replace('\n', "\\n").replace('"', "\\\""),
    );
    let lab = SeedLab::new("sgn", &refused, &[]);
    let out = Command::new(sg_tests::agent::binary())
        .args(["check"])
        .arg(&lab.config)
        .output()
        .expect("check runs");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("control character"), "{text}");

    let quoted = "web\"} 1 sg_agent_injected_total 99 #";
    lab.rewrite(&SEED.replace(
        "instagram-server-security-group",
        &quoted.replace('"', "\\\""),
    ));
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let agent = start_agent_with(&lab, &["--metrics-listen", &metrics]);
    assert!(
        agent.log_text().contains("which AWS does not accept there"),
        "a warning for the quote:\n{}",
        agent.log_text()
    );
    let response = sg_tests::agent::get_metrics(metrics.parse().expect("addr"));
    let (_, body) = response.split_once("\r\n\r\n").expect("HTTP");
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("the exposition still parses");
    assert!(
        !scrape.samples.iter().any(|s| s.metric.contains("injected")),
        "no forged metric:\n{body}"
    );
    // The exposition format escapes `"` and `\\` in a label value; the
    // line holds the whole name, and no line of the body starts a metric
    // the name made up.
    assert!(
        body.contains(r#"group="web\"} 1 sg_agent_injected_total 99 #""#),
        "the group's label is its name, escaped:\n{body}"
    );
    assert!(
        !body.lines().any(|l| l.starts_with("sg_agent_injected")),
        "{body}"
    );
    assert_eq!(agent.terminate().code(), Some(0));
}

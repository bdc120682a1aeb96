//! Hardening round four, items 10 and 11, as faults: a container's PID
//! taken by someone else's process after the container died (the
//! instance's `netns_path = "/proc/PID/ns/net"` now names another
//! namespace), and a description from etcd naming the agent's own
//! namespace. Each runs an agent of its own (its own state directory and
//! control socket) beside the suite's; the figure is how many of our
//! programs ended up where they must not.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    agent::{AgentProcess, StateDir, binary},
    attached::{attached_programs, tcx_on},
    contained::Contained,
    etcd::EtcdServer,
    lab::ip,
    probe::eventually,
    seed::START,
};

/// What the two faults left.
#[derive(Debug, Default)]
pub struct Namespaces {
    /// The agent said the path names another namespace now.
    pub reused_pid_refused: bool,
    /// From the newcomer's `eth0` appearing to the agent saying so (ms).
    pub reused_pid_detected_ms: u128,
    /// Our programs on the newcomer's `eth0`.
    pub reused_pid_programs: usize,
    /// The agent refused the description's instance, naming why.
    pub own_namespace_refused: bool,
    /// Our programs on the host's interface the description named.
    pub own_namespace_programs: usize,
}

pub fn measure(prefix: &str, switch_netns: &str, dir: &Path) -> Namespaces {
    let mut out = Namespaces::default();
    reused_pid(prefix, switch_netns, dir, &mut out);
    own_namespace(prefix, dir, &mut out);
    out
}

fn reused_pid(prefix: &str, sw: &str, dir: &Path, out: &mut Namespaces) {
    let container = Contained::start("");
    let pid = container.pid();
    let port = format!("{}-rp", &prefix[..prefix.len().min(9)]);
    container.plug(sw, &port);
    let path = format!("/proc/{pid}/ns/net");
    let config = dir.join("reused-pid.toml");
    std::fs::write(
        &config,
        format!(
            "[[security_group]]\nname = \"ctr\"\n\n[[instance]]\nname = \"ctr\"\n\
             netns_path = \"{path}\"\ninterface = \"eth0\"\naddresses = [\"10.0.9.1\"]\n\
             security_groups = [\"ctr\"]\n"
        ),
    )
    .expect("write rules");
    let state = StateDir::new();
    let agent = AgentProcess::start_quiet_in(&state, &config, &[]);
    agent.expect_log("ready: enforcing 1 instance(s)", 0, START);
    let mark = agent.log_lines();
    container.kill();
    agent.expect_log("is gone; enforced again as it comes back", mark, START);
    let mark = agent.log_lines();
    let newcomer = Contained::start_as(
        pid,
        "ip link add eth0 type veth peer name eth0p && ip link set eth0 up",
    );
    let appeared = Instant::now();
    let _ = eventually(Duration::from_secs(5), || {
        Command::new("nsenter")
            .args([&format!("--net={path}"), "ip", "link", "show", "eth0"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    out.reused_pid_refused = agent
        .wait_for(
            "now names another network namespace than the one it was attached in",
            mark,
            Duration::from_secs(5),
        )
        .is_some();
    out.reused_pid_detected_ms = appeared.elapsed().as_millis();
    // A few ticks more, then what is on the newcomer's eth0.
    std::thread::sleep(Duration::from_secs(1));
    let name = format!("{prefix}-newcomer");
    ip(&["netns", "attach", &name, &pid.to_string()]);
    out.reused_pid_programs = attached_programs(&name).len();
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    let _ = agent.terminate();
    drop(newcomer);
    let _ = Command::new("ip")
        .args(["-n", sw, "link", "del", &port])
        .output();
}

fn own_namespace(prefix: &str, dir: &Path, out: &mut Namespaces) {
    // An interface of the host's own namespace that is the suite's (a
    // veth pair, no address, no route): what a description naming the agent's own
    // namespace could reach if it were let through.
    let dummy = format!("{}hn", &prefix[..prefix.len().min(10)]);
    let peer = format!("{dummy}p");
    ip(&["link", "add", &dummy, "type", "veth", "peer", "name", &peer]);
    let etcd = EtcdServer::start(&format!("{prefix}-own"));
    let description = dir.join("own-namespace.toml");
    std::fs::write(
        &description,
        format!(
            "[[security_group]]\nname = \"web\"\n\n[[instance]]\nname = \"own\"\n\
             netns_path = \"/proc/self/ns/net\"\ninterface = \"{dummy}\"\n\
             addresses = [\"10.0.9.2\"]\nsecurity_groups = [\"web\"]\n"
        ),
    )
    .expect("write the description");
    let push = Command::new(binary())
        .args(["push", "--etcd", &etcd.url()])
        .arg(&description)
        .output()
        .expect("push runs");
    assert!(push.status.success(), "push: {push:?}");
    let agent = AgentProcess::start_without_file(&["--etcd", &etcd.url(), "--allow-empty"]);
    // Refused by either check: a namespace path needs an `--allow-netns`
    // pattern that is a path, and the host's own namespace an
    // `--allow-interface` pattern.
    out.own_namespace_refused = agent.wait_for("descriptions from etcd", 0, START).is_some();
    std::thread::sleep(Duration::from_secs(1));
    let host = format!("{prefix}-host");
    ip(&["netns", "attach", &host, &std::process::id().to_string()]);
    let (ingress, egress) = tcx_on(&host, &dummy);
    out.own_namespace_programs = ingress.len() + egress.len();
    let _ = Command::new("ip").args(["netns", "del", &host]).output();
    let _ = agent.terminate();
    drop(etcd);
    let _ = Command::new("ip").args(["link", "del", &dummy]).output();
}

//! VM start: how soon a tap is enforced after it appears, and whether a
//! booting guest gets a frame out before it is.
//!
//! * *tap created to enforced*: an instance waits for its tap
//!   (`host_interface`); the tap is made (`ip tuntap add`, as QEMU or
//!   libvirt make theirs) and the time until both of its programs are
//!   attached is measured (TCX queried every half millisecond). The first
//!   appearance loads the instance's object; each later one (the tap
//!   deleted and made again, a VM restarting) only attaches.
//! * *frames a booting guest sent unjudged*: a real QEMU guest whose tap
//!   QEMU makes (the link event attaches it), and a libvirt domain whose
//!   tap the QEMU hook attaches before the guest's CPU runs: the frames the
//!   tap received from the guest, against those the guest's outbound
//!   program judged.

use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};

use crate::{
    agent::{AgentProcess, StateDir, binary},
    lab::{Lab, in_netns},
    libvirt::{Hook, Libvirtd, domain_xml},
    probe::eventually,
    vm::{BOOT, SeedVms, Vm, plug},
};

#[derive(Debug, Default)]
pub struct VmStart {
    /// The first appearance of a waiting instance's tap to both programs
    /// attached, ms.
    pub first_ms: f64,
    /// The tap made again, ms, each time.
    pub again_ms: Vec<f64>,
    /// [`MANY`] taps of waiting instances made at once (a container runtime
    /// starting that many) to every one of them enforced, ms.
    pub many_ms: f64,
    /// The same taps deleted and made again at once (their instances
    /// enforced, only attached anew), ms: with the kernel's default RCU,
    /// and with expedited grace periods (`/sys/kernel/rcu_expedited`).
    pub many_again_ms: f64,
    pub many_again_expedited_ms: f64,
    /// A start of [`CUT`] instances cut short by `kill -9` as soon as the
    /// first is enforced: see [`CutShort`].
    pub cut_short: CutShort,
    /// Frames a QEMU guest sent into its tap (made by QEMU, attached from
    /// the link event), and how many of them no program judged.
    pub qemu: (u64, u64),
    /// The same for a libvirt domain attached by the QEMU hook.
    pub libvirt: (u64, u64),
}

/// A start of [`CUT`] instances (their taps there) cut short by `kill -9`
/// as soon as the first is enforced (hardening round four, item 14: an
/// agent attached nothing until every object was loaded, so a start
/// killed before its end had made no progress).
#[derive(Debug, Default)]
pub struct CutShort {
    /// Agent started -> the first instance enforced, ms.
    pub first_ms: f64,
    /// Instances enforced when the agent was killed, and still enforced
    /// (pinned) after it died.
    pub enforced_at_kill: usize,
    pub enforced_after_kill: usize,
    /// The next agent: started -> every instance enforced, ms, and how
    /// many it adopted (their pinned links, program replaced in place).
    pub restart_all_ms: f64,
    pub adopted: usize,
}

fn attached_count(netns: &str, tap: &str) -> usize {
    let tap = tap.to_owned();
    in_netns(netns, move || {
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .map(|at| SchedClassifier::query_tcx(&tap, at).map_or(0, |(_, progs)| progs.len()))
            .sum()
    })
}

/// Taps made at once in [`VmStart::many_ms`].
pub const MANY: usize = 60;

/// Instances of the start cut short ([`CutShort`]): the first of the
/// [`MANY`] (each object takes the verifier most of a second here).
pub const CUT: usize = 16;

/// Runs `batch` (lines of `ip` commands) in `netns` with one `ip -batch`.
fn ip_batch(netns: &str, batch: &str) {
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("ip runs");
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(batch.as_bytes())
            .expect("the batch");
    }
    assert!(child.wait().expect("ip ends").success(), "ip -batch");
}

/// Makes [`MANY`] taps `tm0..` in `netns` with one `ip -batch` and returns
/// how long until both programs are on every one (bounded: 30 s).
fn time_to_all_enforced(netns: &str) -> f64 {
    let mut batch = String::new();
    for i in 0..MANY {
        let _ = write!(batch, "tuntap add dev tm{i} mode tap\nlink set tm{i} up\n");
    }
    let made = Instant::now();
    ip_batch(netns, &batch);
    let end = made + Duration::from_secs(30);
    let mut left: Vec<usize> = (0..MANY).collect();
    while Instant::now() < end {
        left.retain(|i| attached_count(netns, &format!("tm{i}")) != 2);
        if left.is_empty() {
            return made.elapsed().as_secs_f64() * 1e3;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    f64::INFINITY
}

/// Deletes the [`MANY`] taps, waits for the agent to see them gone, and
/// returns how long until all are enforced again once made again at once.
fn time_to_all_enforced_again(netns: &str) -> f64 {
    let mut batch = String::new();
    for i in 0..MANY {
        let _ = writeln!(batch, "link del tm{i}");
    }
    ip_batch(netns, &batch);
    std::thread::sleep(Duration::from_millis(600));
    time_to_all_enforced(netns)
}

/// Runs `f` with the kernel's RCU grace periods expedited
/// (`/sys/kernel/rcu_expedited`), the setting restored after.
fn with_expedited_rcu<T>(f: impl FnOnce() -> T) -> T {
    const KNOB: &str = "/sys/kernel/rcu_expedited";
    let before = std::fs::read_to_string(KNOB).expect("rcu_expedited");
    std::fs::write(KNOB, "1").expect("expedite RCU");
    let out = f();
    std::fs::write(KNOB, before.trim()).expect("restore rcu_expedited");
    out
}

/// [`CutShort`]: the [`CUT`] taps `tm0..` exist in `netns` (no agent on
/// them), `rules` names their instances.
fn cut_short(netns: &str, rules: &std::path::Path) -> CutShort {
    let state = StateDir::new();
    let enforced = || {
        (0..CUT)
            .filter(|i| attached_count(netns, &format!("tm{i}")) == 2)
            .count()
    };
    let started = Instant::now();
    let agent = AgentProcess::start_quiet_in(&state, rules, &["--keep-on-exit"]);
    let mut out = CutShort::default();
    let end = started + Duration::from_mins(2);
    while Instant::now() < end && (0..CUT).all(|i| attached_count(netns, &format!("tm{i}")) != 2) {
        std::thread::sleep(Duration::from_millis(1));
    }
    out.first_ms = started.elapsed().as_secs_f64() * 1e3;
    agent.kill9();
    out.enforced_at_kill = enforced();
    std::thread::sleep(Duration::from_millis(200));
    out.enforced_after_kill = enforced();
    let started = Instant::now();
    let agent = AgentProcess::start_quiet_in(&state, rules, &["--keep-on-exit"]);
    agent.expect_log("ready: enforcing", 0, Duration::from_mins(2));
    out.restart_all_ms = started.elapsed().as_secs_f64() * 1e3;
    out.adopted = agent.log_text().matches("adopted its pinned links").count();
    // Stopped with --keep-on-exit: dropping `state` unpins what it left.
    let _ = agent.terminate();
    out
}

/// Makes `tap` in `netns` and returns how long until both programs are on
/// it (bounded: 10 s).
fn time_to_enforced(netns: &str, tap: &str) -> f64 {
    let made = Instant::now();
    crate::lab::ip(&["-n", netns, "tuntap", "add", "dev", tap, "mode", "tap"]);
    crate::lab::ip(&["-n", netns, "link", "set", tap, "up"]);
    let end = made + Duration::from_secs(10);
    while Instant::now() < end {
        if attached_count(netns, tap) == 2 {
            return made.elapsed().as_secs_f64() * 1e3;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    f64::INFINITY
}

fn egress_total(agent: &AgentProcess, name: &str) -> u64 {
    let status = agent.status_json();
    status["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name).cloned())
        .and_then(|i| {
            i["packets"]["egress"]
                .as_object()
                .map(|r| r.values().filter_map(serde_json::Value::as_u64).sum())
        })
        .unwrap_or(0)
}

fn rx_packets(netns: &str, tap: &str) -> u64 {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "cat"])
        .arg(format!("/sys/class/net/{tap}/statistics/rx_packets"))
        .output()
        .expect("read the tap's counters");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// (sent, unjudged): the guest's frames into its tap, and how many of them
/// its programs did not judge (the tap read first: a frame the guest sends
/// in between is judged, never counted unjudged).
fn unjudged(agent: &AgentProcess, name: &str, netns: &str, tap: &str) -> (u64, u64) {
    let sent = rx_packets(netns, tap);
    let judged = egress_total(agent, name);
    (sent, sent.saturating_sub(judged))
}

const RULES: &str = "[[security_group]]\nname = \"vm\"\n  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 22\n  to_port = 22\n  cidr_blocks = [\"10.0.0.0/8\"]\n";

fn instance(name: &str, link: &str, netns: &str) -> String {
    format!(
        "\n[[instance]]\nname = \"{name}\"\naddresses = [\"10.0.1.10\"]\nsecurity_groups = [\"vm\"]\nnetns = \"{netns}\"\n{link}\n"
    )
}

/// Instances `many-0..n` waiting for taps `tm0..` in `netns`.
fn waiting_instances(n: usize, netns: &str) -> String {
    (0..n)
        .map(|i| {
            instance(
                &format!("many-{i}"),
                &format!("host_interface = \"tm{i}\""),
                netns,
            )
            .replace("10.0.1.10", &format!("10.0.2.{}", i + 1))
        })
        .collect()
}

pub fn measure(recreations: usize) -> VmStart {
    let lab = Lab::new("chv");
    let sw = lab.switch_netns().to_owned();
    let dir = std::env::temp_dir().join(format!("sg-chaos-{}", lab.prefix));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("vpc.toml");
    let domain = format!("{}-vm", lab.prefix);
    let many = waiting_instances(MANY, &sw);
    let rules = format!(
        "{RULES}{many}{}{}{}",
        instance("tapped", "host_interface = \"tchaos0\"", &sw),
        instance(
            "qemu",
            "host_interface = \"t-app\"\nmac = \"52:54:00:00:01:10\"",
            &sw
        )
        .replace("10.0.1.10", "10.0.1.11"),
        instance("domain", &format!("libvirt_domain = \"{domain}\""), &sw)
            .replace("10.0.1.10", "10.0.1.12"),
    );
    std::fs::write(&config, rules).expect("rules");
    let state = StateDir::new();
    // libvirtd reads its hooks at start: the hook is in place first.
    let hook = Hook::install(
        &format!("sg-agent-chaos-{}", lab.prefix),
        &binary(),
        &state.control_socket(),
    );
    let agent = AgentProcess::start_quiet_in(&state, &config, &[]);
    agent.expect_log("ready: enforcing 0 instance(s)", 0, Duration::from_mins(1));

    let mut out = VmStart {
        first_ms: time_to_enforced(&sw, "tchaos0"),
        ..VmStart::default()
    };
    for _ in 0..recreations {
        // A VM stopped: its tap goes, and the agent sees it gone (the
        // link event, or the tick within 250 ms) before it comes back.
        crate::lab::ip(&["-n", &sw, "link", "del", "tchaos0"]);
        std::thread::sleep(Duration::from_millis(300));
        out.again_ms.push(time_to_enforced(&sw, "tchaos0"));
    }
    out.many_ms = time_to_all_enforced(&sw);
    out.many_again_ms = time_to_all_enforced_again(&sw);
    out.many_again_expedited_ms = with_expedited_rcu(|| time_to_all_enforced_again(&sw));

    // A QEMU guest: its tap made by QEMU, attached from the link event.
    let vm = Vm::start(&sw, SeedVms::spec("app-1"));
    plug(&sw, "t-app", "br0");
    vm.wait_ready();
    // A second for the guest's first frames (router solicitation, MLD).
    std::thread::sleep(Duration::from_secs(1));
    out.qemu = unjudged(&agent, "qemu", &sw, "t-app");
    drop(vm);

    // A libvirt domain: attached by the hook as it starts.
    let mut libvirtd = Libvirtd::start(&sw);
    let console = dir.join("domain.console");
    let xml = domain_xml(
        &domain,
        "52:54:00:00:01:12",
        "br0",
        "sg.addr=10.0.1.12/32 sg.routes=10.0.0.0/8 sg.tcp=22",
        &console,
    );
    libvirtd.create(&domain, &xml).expect("the domain starts");
    let booted = eventually(BOOT, || {
        std::fs::read_to_string(&console).is_ok_and(|c| c.contains("SGVM READY"))
    });
    assert!(booted, "the libvirt domain boots");
    // A second for the guest's first frames (router solicitation, MLD).
    std::thread::sleep(Duration::from_secs(1));
    out.libvirt = unjudged(&agent, "domain", &sw, &libvirtd.tap(&domain));
    drop(libvirtd);
    drop(hook);
    let _ = agent.terminate();

    // The taps stay: a start of their instances alone, cut short.
    let only_many = dir.join("many.toml");
    let cut = waiting_instances(CUT, &sw);
    std::fs::write(&only_many, format!("{RULES}{cut}")).expect("rules");
    out.cut_short = cut_short(&sw, &only_many);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

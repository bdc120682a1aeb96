//! `cargo xtask chaos`: every fault an operator meets, injected under live
//! traffic in network namespaces, with what enforcement lost measured:
//!
//! * how long a blocked port answered, by a prober that sends a numbered
//!   datagram every millisecond to a port no rule allows and counts those
//!   that arrive (one arrival = one millisecond unprotected);
//! * how many tracked connections died: TCP connections whose rule was
//!   removed before the faults, so only the connection table keeps them;
//! * packets misjudged while reloads alternate two policies under a flood
//!   of fresh flows that one policy allows and the other does not, counted
//!   in the kernel per policy generation (every packet, not a sample).

mod namespaces;
mod traffic;
mod vm_start;

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use sg_common::counters::{DROP_NO_RULE, PASS_RULE};
use traffic::{Flood, LeakProbe, Target, mac_of, pinned_counters};

use crate::{
    agent::{AgentProcess, StateDir},
    attached::attached_programs,
    kernel::require_root,
    lab::Lab,
    probe::{Outcome, Servers, echo, tcp, tcp_open},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 5, 1);
const S1: Ipv4Addr = Ipv4Addr::new(10, 0, 6, 1);
const S2: Ipv4Addr = Ipv4Addr::new(10, 0, 6, 2);
/// Served on S1, allowed by no rule: the prober's target.
const BLOCKED: u16 = 5002;
/// The flood's port, allowed from the flood's sources by one policy.
const FLOOD_PORT: u16 = 5001;
const FLOOD_NET: [u8; 2] = [10, 9];
const START: Duration = Duration::from_mins(1);
const APPLY: Duration = Duration::from_secs(10);

/// How much of the suite to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Reloads alternating the two policies under the flood.
    pub reloads: usize,
    /// Tracked connections kept open across the faults.
    pub connections: usize,
    /// Flood rate, packets per second over both targets.
    pub flood_pps: u64,
    /// Times a tap is deleted and made again (VM start).
    pub recreations: usize,
}

impl Options {
    pub const FULL: Self = Self {
        reloads: 1000,
        connections: 32,
        flood_pps: 20_000,
        recreations: 30,
    };
    /// The form CI runs.
    pub const SMOKE: Self = Self {
        reloads: 60,
        connections: 8,
        flood_pps: 10_000,
        recreations: 5,
    };
}

/// One fault, measured.
#[derive(Debug)]
pub struct Fault {
    pub name: &'static str,
    pub how: &'static str,
    /// How long the prober ran, and how many of its datagrams arrived.
    pub window: Duration,
    pub sent: u64,
    pub leaked: u64,
    /// The most the blocked port may answer, in milliseconds.
    pub limit_ms: u64,
    /// Tracked connections dead afterwards (of those alive before), and
    /// whether any may die.
    pub lost: usize,
    pub lost_allowed: bool,
}

impl Fault {
    fn leaked_ms(&self) -> u64 {
        self.leaked * u64::try_from(traffic::PROBE_INTERVAL.as_millis()).expect("a millisecond")
    }

    fn passed(&self) -> bool {
        self.leaked_ms() <= self.limit_ms && (self.lost_allowed || self.lost == 0)
    }
}

#[derive(Debug, Default)]
pub struct FloodResult {
    pub reloads: usize,
    pub took: Duration,
    pub sent: u64,
    /// Packets the programs judged by the flood's rules, per instance and
    /// generation: (allowed-by-generation, passed by rule, dropped no rule).
    pub judged: Vec<(String, u8, bool, u64, u64)>,
    pub misjudged: u64,
}

#[derive(Debug)]
pub struct Report {
    pub options: Options,
    /// The prober with nothing attached: it must see the port answer.
    pub control: Fault,
    pub faults: Vec<Fault>,
    pub flood: FloodResult,
    pub vm_start: vm_start::VmStart,
    pub records: Records,
    pub namespaces: namespaces::Namespaces,
}

/// Faults whose cost is a record or a refusal rather than a lapse.
#[derive(Debug, Default)]
pub struct Records {
    /// REJECT records of the blocked port in the flow log, written as the
    /// agent stopped (SIGTERM with --keep-on-exit) mid-interval.
    pub written_at_stop: usize,
    /// An agent given a state directory a local user prepared: whether it
    /// took the name back and enforced, and how many pins it put into the
    /// user's directory.
    pub prepared_taken_back: bool,
    pub prepared_pins: usize,
}

impl Report {
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.control.leaked * 2 < self.control.sent {
            out.push(format!(
                "the control failed: with nothing attached only {} of {} probes arrived, so the \
                 prober cannot be trusted",
                self.control.leaked, self.control.sent
            ));
        }
        for f in &self.faults {
            if !f.passed() {
                out.push(format!(
                    "{}: the blocked port answered {} ms (limit {} ms), {} tracked connections lost",
                    f.name,
                    f.leaked_ms(),
                    f.limit_ms,
                    f.lost
                ));
            }
        }
        let n = &self.namespaces;
        if !n.reused_pid_refused || n.reused_pid_programs > 0 {
            out.push(format!(
                "reused PID: refused {}, {} of our programs on the newcomer's eth0",
                n.reused_pid_refused, n.reused_pid_programs
            ));
        }
        if !n.own_namespace_refused || n.own_namespace_programs > 0 {
            out.push(format!(
                "a description from etcd naming the host's own namespace: refused {}, {} of our \
                 programs on its interface",
                n.own_namespace_refused, n.own_namespace_programs
            ));
        }
        if self.flood.misjudged > 0 {
            out.push(format!(
                "{} packets misjudged during {} reloads",
                self.flood.misjudged, self.flood.reloads
            ));
        }
        let v = &self.vm_start;
        if v.libvirt.0 == 0 || v.qemu.0 == 0 {
            out.push("a booting guest sent no frame: VM start measured nothing".into());
        }
        if v.libvirt.1 > 0 {
            out.push(format!(
                "{} of {} frames of a libvirt domain passed unjudged although the hook enforced \
                 it before its CPU ran",
                v.libvirt.1, v.libvirt.0
            ));
        }
        if !v.many_ms.is_finite() {
            out.push(format!(
                "{} taps made at once were not all enforced within 30 s",
                vm_start::MANY
            ));
        }
        let c = &v.cut_short;
        if c.enforced_at_kill == 0 || c.enforced_after_kill < c.enforced_at_kill {
            out.push(format!(
                "a start cut short by kill -9 kept {} of the {} instances it had enforced",
                c.enforced_after_kill, c.enforced_at_kill
            ));
        }
        if c.enforced_at_kill == vm_start::CUT {
            out.push(format!(
                "a start of {} instances had all enforced before its first: nothing is attached \
                 as it is loaded",
                vm_start::CUT
            ));
        }
        if c.adopted < c.enforced_after_kill || !c.restart_all_ms.is_finite() {
            out.push(format!(
                "the agent after a start cut short adopted {} of the {} instances left enforced",
                c.adopted, c.enforced_after_kill
            ));
        }
        if !v.first_ms.is_finite() || v.again_ms.iter().any(|m| !m.is_finite() || *m > 1000.0) {
            out.push(format!(
                "a tap was not enforced within 1 s of appearing: first {:.1} ms, again {:?}",
                v.first_ms, v.again_ms
            ));
        }
        if self.records.written_at_stop == 0 {
            out.push("the flow log's open interval was lost at a restart".into());
        }
        if !self.records.prepared_taken_back || self.records.prepared_pins > 0 {
            out.push(format!(
                "a state directory a local user prepared: taken back and enforced {}, pins \
                 put into the user's {}",
                self.records.prepared_taken_back, self.records.prepared_pins
            ));
        }
        if self.flood.judged.iter().any(|j| j.3 + j.4 == 0) {
            out.push("a generation judged no flood packet: the flood measured nothing".into());
        }
        out
    }

    /// RELIABILITY.md.
    pub fn markdown(&self, smoke: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Reliability\n");
        let _ = writeln!(
            s,
            "Written by `cargo xtask chaos`{} on this machine ({}), from one run. Every fault is \
             injected under live traffic in network namespaces against the real `sg-agent run` \
             (release build), the real kernel and pinned state under /sys/fs/bpf.\n",
            if smoke { " --smoke" } else { "" },
            machine()
        );
        let _ = writeln!(s, "## Faults\n");
        let _ = writeln!(
            s,
            "| fault | what is done | blocked port answered | limit | tracked connections lost | |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---|");
        let row = |s: &mut String, f: &Fault| {
            let control = f.limit_ms == u64::MAX;
            let _ = writeln!(
                s,
                "| {} | {} | {} ms (of {} ms probed) | {} | {} | {} |",
                f.name,
                f.how,
                f.leaked_ms(),
                f.window.as_millis(),
                if control {
                    "(control)".to_owned()
                } else {
                    format!("{} ms", f.limit_ms)
                },
                if control {
                    "(none open yet)".to_owned()
                } else {
                    format!(
                        "{} of {}{}",
                        f.lost,
                        self.options.connections,
                        if f.lost_allowed { " (reported)" } else { "" }
                    )
                },
                if f.limit_ms == u64::MAX {
                    "the prober works"
                } else if f.passed() {
                    "met"
                } else {
                    "**NOT MET**"
                }
            );
        };
        row(&mut s, &self.control);
        for f in &self.faults {
            row(&mut s, f);
        }
        let fl = &self.flood;
        let _ = writeln!(s, "\n## Reloads under a flood\n");
        let _ = writeln!(
            s,
            "{} reloads alternating two policies in {:.1} s ({} ms per reload, each applied \
             before the next), under a flood of {} fresh UDP flows ({} per second asked). \
             **Packets misjudged: {}.**\n",
            fl.reloads,
            fl.took.as_secs_f64(),
            fl.took.as_millis() / fl.reloads.max(1) as u128,
            fl.sent,
            self.options.flood_pps,
            fl.misjudged
        );
        let _ = writeln!(
            s,
            "| instance | generation | its policy lets the flood in | passed by a rule | dropped, no rule |"
        );
        let _ = writeln!(s, "|---|---:|---|---:|---:|");
        for (name, g, allows, pass, drop) in &fl.judged {
            let _ = writeln!(
                s,
                "| {name} | {g} | {} | {pass} | {drop} |",
                if *allows { "yes" } else { "no" }
            );
        }
        self.vm_start_markdown(&mut s);
        self.records_markdown(&mut s);
        s.push_str(METHOD);
        s
    }

    fn records_markdown(&self, s: &mut String) {
        let r = &self.records;
        let _ = writeln!(
            s,
            "\n## Records and refusals\n\n| fault | what is done | outcome | |\n|---|---|---|---|\n\
             | restart mid-interval | flow logs on (600-s interval), rejected datagrams to the blocked port, then SIGTERM with --keep-on-exit | {} REJECT records of the open interval written at the stop | {} |\n\
             | prepared state directory | a local user (uid 65534) made the state directory and an instance's below it before the agent | {}, {} pins put into the user's | {} |",
            r.written_at_stop,
            if r.written_at_stop > 0 {
                "met (must be > 0)"
            } else {
                "MISSED"
            },
            if r.prepared_taken_back {
                "set aside, made anew, enforcing"
            } else {
                "NOT ENFORCING"
            },
            r.prepared_pins,
            if r.prepared_taken_back && r.prepared_pins == 0 {
                "met"
            } else {
                "MISSED"
            },
        );
        let n = &self.namespaces;
        let _ = writeln!(
            s,
            "| reused PID | an instance on `/proc/PID/ns/net`: the container dies, a process in a namespace of its own with an eth0 takes its PID | {} after {} ms, {} of our programs on the newcomer's eth0 | {} |\n\
             | etcd names the host | a description pushed to etcd naming `netns_path = \"/proc/self/ns/net\"` and an interface of the host's own namespace | {}, {} of our programs on that interface | {} |",
            if n.reused_pid_refused {
                "refused (the path names another namespace now)"
            } else {
                "NOT REFUSED"
            },
            n.reused_pid_detected_ms,
            n.reused_pid_programs,
            if n.reused_pid_refused && n.reused_pid_programs == 0 {
                "met (must be 0)"
            } else {
                "MISSED"
            },
            if n.own_namespace_refused {
                "refused (neither --allow-netns nor --allow-interface allows it)"
            } else {
                "NOT REFUSED"
            },
            n.own_namespace_programs,
            if n.own_namespace_refused && n.own_namespace_programs == 0 {
                "met (must be 0)"
            } else {
                "MISSED"
            },
        );
    }

    fn vm_start_markdown(&self, s: &mut String) {
        let v = &self.vm_start;
        let again = if v.again_ms.is_empty() {
            "-".to_owned()
        } else {
            let mut sorted = v.again_ms.clone();
            sorted.sort_by(f64::total_cmp);
            format!(
                "{:.1} ms median ({:.1}-{:.1}, {} times)",
                sorted[sorted.len() / 2],
                sorted[0],
                sorted[sorted.len() - 1],
                sorted.len()
            )
        };
        let _ = writeln!(s, "\n## VM start\n");
        let _ = writeln!(s, "| what | measured | |\n|---|---:|---|");
        let _ = writeln!(
            s,
            "| tap created to enforced, an instance waiting for it (its object prepared while it waited) | {:.1} ms | reported |",
            v.first_ms
        );
        let _ = writeln!(
            s,
            "| tap made again (a VM restarting) to enforced | {again} | goal under 10 ms |"
        );
        let _ = writeln!(
            s,
            "| {} taps made at once (a runtime starting {} containers) to every one enforced | {:.1} ms | goal under 100 ms |",
            vm_start::MANY,
            vm_start::MANY,
            v.many_ms
        );
        let _ = writeln!(
            s,
            "| the same {} taps deleted and made again at once (their instances enforced, only attached anew) | {:.1} ms | reported |",
            vm_start::MANY,
            v.many_again_ms
        );
        let _ = writeln!(
            s,
            "| the same, with the kernel's RCU grace periods expedited (`/sys/kernel/rcu_expedited` = 1) | {:.1} ms | goal under 100 ms |",
            v.many_again_expedited_ms
        );
        let c = &v.cut_short;
        let _ = writeln!(
            s,
            "| a start of {} instances (taps there): agent started to its first instance enforced | {:.1} ms | reported |",
            vm_start::CUT,
            c.first_ms
        );
        let _ = writeln!(
            s,
            "| that start cut short by `kill -9` then: instances enforced at the kill, and still enforced after it | {} and {} of {} | met (none lost, fewer than all) |",
            c.enforced_at_kill,
            c.enforced_after_kill,
            vm_start::CUT
        );
        let _ = writeln!(
            s,
            "| the next agent: started to every instance enforced, adopting those left enforced | {:.1} ms, {} adopted | met (all adopted) |",
            c.restart_all_ms, c.adopted
        );
        let _ = writeln!(
            s,
            "| frames a booting QEMU guest sent unjudged (tap made by QEMU, attached from the link event) | {} of {} | measured |",
            v.qemu.1, v.qemu.0
        );
        let _ = writeln!(
            s,
            "| frames a booting libvirt domain sent unjudged (attached by the QEMU hook before its CPU ran) | {} of {} | {} |",
            v.libvirt.1,
            v.libvirt.0,
            if v.libvirt.1 == 0 {
                "met (must be 0)"
            } else {
                "**NOT MET**"
            }
        );
    }
}

const METHOD: &str = "
## Method

* **Blocked port answered.** A prober in the client's namespace sends a
  numbered UDP datagram every millisecond to a port of S1 that no rule
  allows, from before the fault until the agent says it is done; a receiver
  bound to that port in S1's namespace counts arrivals. Each arrival is a
  millisecond during which the port answered. The control row runs the same
  prober before any agent has started: most datagrams must arrive, or the
  prober could not see a lapse.
* **Tracked connections lost.** TCP connections from the client to S1:80 are
  opened while a rule allows them; the rule is then removed, so only the
  connection table keeps them (as AWS keeps tracked connections). After each
  fault, each connection must still echo a message.
* **Faults.** *kill -9*: SIGKILL, a second with no agent, then a new agent
  on the same state directory. *restart*: SIGTERM with `--keep-on-exit`,
  then a new agent. *upgrade*, *downgrade*: the same, the new agent loading
  a different program (`--ebpf-log` keeps the log statements the default
  build removes), which replaces the old one on the pinned links with
  `BPF_LINK_UPDATE`. *rename*: the instance renamed in the rules file.
  *failed reload*: a file that moves the instance to a namespace that does
  not exist. *empty file*: the file truncated to nothing. *interface
  recreated*: S1's eth0 deleted and made again (a new ifindex, nothing
  attached), as a VM reboot does; the link event (or, failing it, the
  reconcile tick every 250 ms) has the agent attach it again, and the limit
  is one second. *metrics flood*: the agent restarted with
  `--metrics-listen` and held to systemd's default 1,024 descriptors
  (`prlimit`), 1,100 idle connections opened to it, and S1's eth0 made
  again meanwhile: the listener holds 64 and backs off, so the enforcement
  thread still has the descriptors it needs (an earlier build left the
  port answering for 36.5 s). *netns_path a FIFO*: a reload naming a FIFO
  as an instance's namespace file is rejected without opening it for good
  (an earlier build's enforcement thread hung in `open`), and S1's eth0
  made again right after is enforced as always. *second agent*: a second
  `sg-agent run` on the same state directory, then `sg-agent detach --all`
  there, while the first runs: both refused at once (the state
  directory's lock); an earlier build let the second adopt the first's
  pins and detach them as it stopped, the ports open while the first said
  enforced. *programs taken off*: S1's links detached with `bpftool link
  detach`: the agent finds them defunct on its next tick (250 ms) and
  attaches again. *kill -9, unconfirmed*: with `--confirm-within 2`, a
  reload left unconfirmed, SIGKILL, a new agent on the same state: it
  rolls back to the last confirmed policy, kept on disk (an earlier build
  took the restart for a first start and detached everything).
* **Records and refusals.** *restart mid-interval*: the agent restarted
  with a flow log of 600-s intervals, three datagrams sent to the blocked
  port, then SIGTERM with `--keep-on-exit`: the REJECT records of the
  interval still open must be in the file (an earlier build dropped the
  open interval at every restart and upgrade). *prepared state
  directory*: a local user (uid 65534) makes the state directory and an
  instance's directory below it in bpffs, world-writable and sticky,
  before an agent starts on it: the agent must set it aside, make its own,
  and start, pinning nothing into the user's (an earlier build pinned into
  it, and the user could remove the pins; the build after refused to
  start, enforcing nothing). *reused PID*: an agent of its own enforces an
  instance on `/proc/PID/ns/net` of a process in a namespace of its own
  (a container); the process is killed and another, in a namespace of
  its own with an `eth0`, is started with the same PID (the kernel's next
  PID set through `ns_last_pid`, as a user forking in a loop gets it): the
  agent must say the path names another namespace and put nothing on the
  newcomer's `eth0` (an earlier build attached the container's policy
  there within 1.5 s and called it a recreated interface). *etcd names the
  host*: a real etcd, a description pushed to it naming the agent's own
  namespace by path and a dummy interface there, an agent run with
  `--etcd`: refused unless `--allow-interface` allows the interface, and
  nothing attached to it (an earlier build attached to the host's NIC).
* **VM start.** An instance waits for its tap (`host_interface`); the tap
  is made with `ip tuntap add` (as QEMU and libvirt make theirs) and the
  time until both programs are on it is measured by querying TCX every half
  millisecond: once as it first appears (the instance's object is loaded
  and verified then), then each time it is deleted and made again (only
  attached). Then a real QEMU guest (its tap made by QEMU, attached from the
  link event) and a libvirt domain (attached by the QEMU hook before its
  virtual CPU runs) boot, and the frames each tap received from its guest
  are compared with those the guest's outbound program judged. Many taps
  at once: 60 waiting instances' taps made by one `ip -batch`, then deleted
  and made again, once with the kernel's defaults and once with
  `/sys/kernel/rcu_expedited` set (restored after). Every TCX link is made
  under RTNL and waits for an RCU grace period before it returns (several
  ticks of a 250 Hz kernel here), so the 120 links queue one grace period
  each whatever the agent does; expedited grace periods take microseconds.
  Then a start of 16 of those instances alone (their taps there, `--keep-on-exit`,
  as the service runs) is cut short by `kill -9` as soon as its first
  instance is enforced: each instance is attached as its object is loaded,
  so what was enforced by then stays enforced (pinned), and the next agent
  adopts it.
* **Reloads under a flood.** Two servers and two policies: policy A allows
  the flood's sources to S1's port and not S2's, policy B the reverse. A
  packet socket in the client's namespace writes UDP frames to both, each
  from a source address and port not used before (a new flow, judged by the
  rules and never by the connection table). The rules file is rewritten
  alternately to A and B, each reload applied (logged) before the next. The
  programs count every packet under the policy generation that judged it
  (`SG_COUNTERS_V2`); which generation holds A is read from the counters
  before the first reload. A packet is misjudged if the generation that
  judged it holds the policy allowing it and it was dropped for want of a
  rule, or holds the policy refusing it and a rule passed it. The count can
  fail: with the swap changed by hand to flip the generation before filling
  it, the smoke form (60 reloads) counted 1,687 misjudged packets.
";

fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("Linux {}, {cpus} CPUs", kernel.trim())
}

/// The rules: S1 and S2 serve HTTP to the client (`web`, while `web_rule`),
/// and one of them takes the flood (`flood-ok`).
fn rules(s1: &str, s1_flood: bool, s1_netns: &str, web_rule: bool) -> String {
    let web = if web_rule {
        "  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 80\n  to_port = 80\n  cidr_blocks = [\"10.0.5.1/32\"]\n"
    } else {
        ""
    };
    let groups = |flood: bool| {
        if flood {
            "[\"web\", \"flood-ok\"]"
        } else {
            "[\"web\"]"
        }
    };
    format!(
        "[[security_group]]\nname = \"web\"\ndescription = \"HTTP from the client\"\n{web}\n\
         [[security_group]]\nname = \"flood-ok\"\n  [[security_group.ingress]]\n  protocol = \"udp\"\n  from_port = {FLOOD_PORT}\n  to_port = {FLOOD_PORT}\n  cidr_blocks = [\"10.9.0.0/16\"]\n\n\
         [[instance]]\nname = \"{s1}\"\nnetns = \"{s1_netns}\"\ninterface = \"eth0\"\naddresses = [\"{S1}\"]\nsecurity_groups = {}\n\n\
         [[instance]]\nname = \"s2\"\nnetns = \"sg-s2\"\ninterface = \"eth0\"\naddresses = [\"{S2}\"]\nsecurity_groups = {}\n",
        groups(s1_flood),
        groups(!s1_flood)
    )
}

/// Turns IPv6 off for `scope` (an interface, `all` or `default`) in `ns`:
/// no multicast listener reports or router solicitations reach the
/// programs beside the flood (an interface that comes up sends them). Not
/// `all` in a host's namespace: that turns it off for interfaces made later
/// too, to which the lab gives IPv6 routes.
fn ipv4_only(ns: &str, scope: &str) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw"])
        .arg(format!("net.ipv6.conf.{scope}.disable_ipv6=1"))
        .output()
        .expect("sysctl runs");
    assert!(out.status.success(), "disable IPv6 in {ns}: {out:?}");
}

struct Chaos {
    lab: Lab,
    config: std::path::PathBuf,
    state: StateDir,
    agent: Option<AgentProcess>,
    held: Vec<TcpStream>,
    s1_name: String,
}

impl Chaos {
    fn write(&self, rules: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, self.lab.localize(rules)).expect("write rules");
        std::fs::rename(&tmp, &self.config).expect("rename rules");
    }

    fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().expect("an agent runs")
    }

    fn start_agent(&mut self, extra: &[&str]) {
        let mut args = vec!["--keep-on-exit"];
        args.extend_from_slice(extra);
        let agent = AgentProcess::start_quiet_in(&self.state, &self.config, &args);
        agent.expect_log("ready: enforcing", 0, START);
        self.agent = Some(agent);
    }

    /// SIGTERM (the agent runs with `--keep-on-exit`), then a new agent on
    /// the same state with `extra` arguments.
    fn restart(&mut self, extra: &[&str]) {
        let status = self.agent.take().expect("an agent runs").terminate();
        assert!(status.success(), "the agent stops cleanly: {status}");
        self.start_agent(extra);
    }

    /// Writes `rules` and waits until the agent logs `needle` about it.
    fn reload(&self, rules: &str, needle: &str) {
        let mark = self.agent().log_lines();
        self.write(rules);
        self.agent().expect_log(needle, mark, APPLY);
    }

    fn ns(&self, host: &str) -> String {
        self.lab.netns_of(host)
    }

    fn tracked_lost(&mut self) -> usize {
        self.held
            .iter_mut()
            .map(echo)
            .filter(Result::is_err)
            .count()
    }

    /// Runs `fault` under the prober and counts tracked connections lost.
    fn measure(
        &mut self,
        name: &'static str,
        how: &'static str,
        limit_ms: u64,
        lost_allowed: bool,
        fault: impl FnOnce(&mut Self),
    ) -> Fault {
        eprintln!("chaos: {name}");
        // Each held connection echoes first: its server closes one idle
        // for 5 s, and that clock must start with this fault, not run on
        // from the previous row (the restart before the unconfirmed
        // reload's kill -9 used some 1.5 s of it, and a slow start of the
        // next agent once crossed 5 s and lost every connection).
        let _ = self.tracked_lost();
        let probe = LeakProbe::start(
            &self.ns("client"),
            CLIENT,
            &self.ns("s1"),
            SocketAddr::new(IpAddr::V4(S1), BLOCKED),
            Duration::from_mins(1),
        );
        // Some probes before the fault, to see the port closed.
        std::thread::sleep(Duration::from_millis(100));
        fault(self);
        std::thread::sleep(Duration::from_millis(100));
        let (sent, leaked, window) = probe.finish();
        let lost = self.tracked_lost();
        let f = Fault {
            name,
            how,
            window,
            sent,
            leaked,
            limit_ms,
            lost,
            lost_allowed,
        };
        eprintln!(
            "chaos: {name}: blocked port answered {} ms of {} ms, {lost} tracked connections lost",
            f.leaked_ms(),
            window.as_millis()
        );
        f
    }
}

/// Runs the whole suite once.
#[expect(clippy::too_many_lines, reason = "one fault after another, in order")]
pub fn run(options: Options) -> Report {
    require_root();
    let mut lab = Lab::new("ch");
    lab.add_host("client", &[&CLIENT.to_string()]);
    lab.add_host("s1", &[&S1.to_string()]);
    lab.add_host("s2", &[&S2.to_string()]);
    // IPv4 only: no IPv6 multicast listener reports or router solicitations
    // that the programs would judge beside the flood (an interface that
    // comes up sends them).
    for host in ["client", "s1", "s2"] {
        ipv4_only(&lab.netns_of(host), "eth0");
    }
    // The bridge's ports too, those made later included (the lab gives
    // the switch no IPv6 routes).
    for scope in ["all", "default"] {
        ipv4_only(&lab.netns_of("sw"), scope);
    }
    let _servers = [
        Servers::start(&lab.netns_of("s1"), &[80], &[]),
        Servers::start(&lab.netns_of("s2"), &[80], &[]),
    ];
    // The flood's port is bound (and never read) so the servers answer no
    // datagram with an ICMP error.
    let _sinks: Vec<std::net::UdpSocket> = ["s1", "s2"]
        .iter()
        .map(|h| {
            let addr = SocketAddr::new(IpAddr::V4(if *h == "s1" { S1 } else { S2 }), FLOOD_PORT);
            crate::lab::in_netns(&lab.netns_of(h), move || {
                std::net::UdpSocket::bind(addr).expect("bind the flood's port")
            })
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("sg-chaos-{}", lab.prefix));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut c = Chaos {
        config: dir.join("vpc.toml"),
        lab,
        state: StateDir::new(),
        agent: None,
        held: Vec::new(),
        s1_name: "s1".to_owned(),
    };
    let s1_ns = "sg-s1".to_owned();
    c.write(&rules("s1", true, &s1_ns, true));

    let control = c.measure(
        "control: no agent",
        "the prober alone, nothing attached",
        u64::MAX,
        true,
        |_| std::thread::sleep(Duration::from_millis(300)),
    );

    c.start_agent(&[]);
    for _ in 0..options.connections {
        let conn = tcp_open(
            &c.ns("client"),
            CLIENT.into(),
            SocketAddr::new(S1.into(), 80),
        )
        .expect("client -> s1:80 while its rule is in force");
        c.held.push(conn);
    }
    c.reload(&rules("s1", true, &s1_ns, false), "applied in");
    assert_eq!(
        tcp(
            &c.ns("client"),
            CLIENT.into(),
            SocketAddr::new(S1.into(), 80)
        ),
        Outcome::TimedOut,
        "with its rule gone, a new connection to s1:80 is refused"
    );
    assert_eq!(
        c.tracked_lost(),
        0,
        "tracked connections outlive their rule"
    );

    let mut faults = Vec::new();
    faults.push(c.measure(
        "kill -9",
        "SIGKILL, 1 s without an agent, a new agent adopts",
        0,
        false,
        |c| {
            c.agent.take().expect("agent").kill9();
            std::thread::sleep(Duration::from_secs(1));
            c.start_agent(&[]);
        },
    ));
    faults.push(c.measure(
        "restart",
        "SIGTERM with --keep-on-exit, a new agent adopts",
        0,
        false,
        |c| c.restart(&[]),
    ));
    let before = attached_programs(&c.ns("s1"));
    faults.push(c.measure(
        "upgrade",
        "a new agent with another program (BPF_LINK_UPDATE on the pinned links)",
        0,
        false,
        |c| c.restart(&["--ebpf-log"]),
    ));
    assert_ne!(
        before,
        attached_programs(&c.ns("s1")),
        "the upgrade replaced the programs"
    );
    faults.push(c.measure(
        "downgrade",
        "back to the default program, the same way",
        0,
        false,
        |c| c.restart(&[]),
    ));
    faults.push(c.measure(
        "rename",
        "the instance renamed in the rules file",
        0,
        false,
        |c| {
            c.reload(
                &rules("s1-renamed", true, &s1_ns, false),
                "renamed instance",
            );
            "s1-renamed".clone_into(&mut c.s1_name);
        },
    ));
    let s1 = c.s1_name.clone();
    faults.push(c.measure(
        "failed reload",
        "a file moving the instance to a namespace that does not exist",
        0,
        false,
        |c| c.reload(&rules(&s1, true, "sg-nowhere", false), "cannot move to"),
    ));
    faults.push(c.measure(
        "empty file",
        "the rules file truncated to nothing",
        0,
        false,
        |c| {
            let mark = c.agent().log_lines();
            std::fs::write(&c.config, "").expect("truncate");
            c.agent()
                .expect_log("rejected, the running policy stays in force", mark, APPLY);
        },
    ));
    c.reload(&rules(&s1, true, &s1_ns, false), "applied in");
    faults.push(c.measure(
        "interface recreated",
        "S1's eth0 deleted and made again (new ifindex)",
        1000,
        true,
        |c| {
            let mark = c.agent().log_lines();
            c.lab.recreate_eth0("s1");
            ipv4_only(&c.ns("s1"), "eth0");
            c.agent().expect_log("programs attached again", mark, APPLY);
        },
    ));

    faults.extend(hardening_round_four(&mut c, &s1, &s1_ns));
    faults.push(hardening_metrics_flood(&mut c));
    faults.push(hardening_fifo(&mut c, &dir, &s1, &s1_ns));
    let records = records_and_refusals(&mut c, &dir);
    let namespaces = namespaces::measure(&c.lab.prefix, c.lab.switch_netns(), &dir);

    let flood = flood(&mut c, &s1, &s1_ns, options);
    if let Some(agent) = c.agent.take() {
        let _ = agent.terminate();
    }
    let _ = std::fs::remove_dir_all(&dir);
    let vm_start = vm_start::measure(options.recreations);
    Report {
        options,
        control,
        faults,
        flood,
        vm_start,
        records,
        namespaces,
    }
}

/// Item 6 of the hardening round: the flow log's open interval is written
/// when the agent stops; item 2: a state directory a local user prepared
/// is refused.
fn records_and_refusals(c: &mut Chaos, dir: &Path) -> Records {
    let log = dir.join("flows.log");
    c.restart(&[
        "--flow-log",
        log.to_str().expect("utf-8"),
        "--flow-log-interval",
        "600",
    ]);
    for _ in 0..3 {
        let _ = crate::probe::udp(
            &c.ns("client"),
            CLIENT.into(),
            SocketAddr::new(S1.into(), BLOCKED),
        );
    }
    c.restart(&[]);
    let blocked = BLOCKED.to_string();
    let written_at_stop = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() == 14 && f[6] == blocked && f[12] == "REJECT"
        })
        .count();

    let prepared = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/sg-chaos-prepared-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&prepared);
    std::fs::create_dir_all(prepared.join("s2")).expect("mkdir in bpffs");
    for d in [prepared.clone(), prepared.join("s2")] {
        std::os::unix::fs::chown(&d, Some(65534), None).expect("chown");
    }
    // A second agent given the prepared directory, on a rules file of its
    // own whose instance waits for a namespace to come (S1 and S2 are the
    // first agent's): it must take the name back and start.
    let config = dir.join("prepared.toml");
    std::fs::write(
        &config,
        format!(
            "[[security_group]]\nname = \"web\"\n\n[[instance]]\nname = \"s2\"\n\
             netns = \"{}-later\"\ninterface = \"eth0\"\naddresses = [\"{S2}\"]\n\
             security_groups = [\"web\"]\n",
            c.lab.prefix
        ),
    )
    .expect("write rules");
    let prepared_state = StateDir {
        path: prepared.clone(),
    };
    let second = AgentProcess::start_quiet_in(&prepared_state, &config, &["--allow-empty"]);
    let prepared_taken_back = second.wait_for("ready: enforcing", 0, START).is_some()
        && second.log_text().contains("set aside as");
    let _ = second.terminate();
    let name = prepared
        .file_name()
        .expect("named")
        .to_string_lossy()
        .into_owned();
    let aside: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/bpf")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(&format!("{name}-set-aside-"))
            })
        })
        .collect();
    let prepared_pins = aside
        .iter()
        .map(|a| std::fs::read_dir(a.join("s2")).map_or(0, Iterator::count))
        .sum();
    for a in &aside {
        let _ = std::fs::remove_dir_all(a);
    }
    drop(prepared_state);
    Records {
        written_at_stop,
        prepared_taken_back,
        prepared_pins,
    }
}

/// Hardening round four: a second agent on the same state (and a detach
/// under the running one) is refused; programs someone takes off the
/// interface are put back; an agent killed while a reload waited for its
/// confirmation, started again, rolls back to the last confirmed policy
/// rather than to nothing.
fn hardening_round_four(c: &mut Chaos, s1: &str, s1_ns: &str) -> Vec<Fault> {
    let mut faults = Vec::new();
    faults.push(c.measure(
        "second agent",
        "a second sg-agent run on the same --state-dir (its own control socket), then `sg-agent detach --all` there",
        0,
        false,
        |c| {
            let second = std::process::Command::new(crate::agent::binary())
                .args(["run", "--config"])
                .arg(&c.config)
                .arg("--state-dir")
                .arg(&c.state.path)
                .args(["--control-socket", "/run/sg-agent-tests/chaos-second.sock"])
                .output()
                .expect("sg-agent runs");
            assert_eq!(second.status.code(), Some(1), "{second:?}");
            let detach = std::process::Command::new(crate::agent::binary())
                .args(["detach", "--all", "--state-dir"])
                .arg(&c.state.path)
                .output()
                .expect("sg-agent detach runs");
            assert_eq!(detach.status.code(), Some(1), "{detach:?}");
        },
    ));
    faults.push(c.measure(
        "programs taken off",
        "S1's links detached by someone else (bpftool link detach)",
        1000,
        false,
        |c| {
            let mark = c.agent().log_lines();
            let status = c.agent().status_json();
            let name = c.s1_name.clone();
            let ids: Vec<String> = status["instances"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["name"] == name.as_str()))
                .and_then(|i| i["links"].as_array())
                .map(|links| {
                    links
                        .iter()
                        .filter_map(|l| l["link_id"].as_u64())
                        .map(|id| id.to_string())
                        .collect()
                })
                .unwrap_or_default();
            assert!(!ids.is_empty(), "S1's links: {status}");
            for id in &ids {
                let out = std::process::Command::new("bpftool")
                    .args(["link", "detach", "id", id])
                    .output()
                    .expect("bpftool runs");
                assert!(out.status.success(), "{out:?}");
            }
            c.agent()
                .expect_log("taken off by someone else", mark, APPLY);
        },
    ));
    let confirm = |c: &Chaos| {
        let out = std::process::Command::new(crate::agent::binary())
            .args(["confirm", "--control-socket"])
            .arg(&c.agent().control_socket)
            .output()
            .expect("sg-agent confirm runs");
        assert!(out.status.success(), "{out:?}");
    };
    // 2 s: the held connections' server closes one idle for 5 s.
    c.restart(&["--confirm-within", "2"]);
    confirm(c);
    let policy = rules(s1, true, s1_ns, false);
    faults.push(c.measure(
        "kill -9, unconfirmed",
        "--confirm-within 2: a reload left unconfirmed, SIGKILL, a new agent (it rolls back to the last confirmed policy)",
        0,
        false,
        |c| {
            c.reload(&format!("# unconfirmed\n{policy}"), "applied in");
            c.agent.take().expect("agent").kill9();
            c.start_agent(&["--confirm-within", "2"]);
            c.agent()
                .expect_log("is back in force", 0, Duration::from_secs(10));
        },
    ));
    c.write(&policy);
    c.restart(&[]);
    faults
}

/// Idle connections flood the metrics port of an agent held to systemd's
/// default 1,024 descriptors while S1's eth0 is made again: enforcement
/// must not wait for a descriptor.
fn hardening_metrics_flood(c: &mut Chaos) -> Fault {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    c.restart(&["--metrics-listen", &addr.to_string()]);
    c.measure(
        "metrics flood",
        "1,100 idle connections to --metrics-listen (1,024 descriptors allowed), S1's eth0 made again meanwhile",
        1000,
        true,
        |c| {
            let pid = c.agent().pid();
            let out = std::process::Command::new("prlimit")
                .args(["--pid", &pid.to_string(), "--nofile=1024:1024"])
                .output()
                .expect("prlimit (util-linux)");
            assert!(out.status.success(), "prlimit: {out:?}");
            let idle: Vec<TcpStream> = (0..1100)
                .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(20)).ok())
                .collect();
            assert!(idle.len() > 64, "the flood reached the agent: {}", idle.len());
            let mark = c.agent().log_lines();
            c.lab.recreate_eth0("s1");
            ipv4_only(&c.ns("s1"), "eth0");
            c.agent().expect_log("programs attached again", mark, APPLY);
            drop(idle);
        },
    )
}

/// A reload naming a FIFO as an instance's `netns_path` is refused
/// without hanging the enforcement thread: S1's eth0 made again right
/// after is enforced again as always.
fn hardening_fifo(c: &mut Chaos, dir: &Path, s1: &str, s1_ns: &str) -> Fault {
    let fifo = dir.join("netns-fifo");
    let path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    let with_fifo = format!(
        "{}\n[[instance]]\nname = \"fifo\"\nnetns_path = \"{}\"\ninterface = \"eth0\"\n\
         addresses = [\"10.0.7.1\"]\nsecurity_groups = [\"web\"]\n",
        rules(s1, true, s1_ns, false),
        fifo.display()
    );
    c.measure(
        "netns_path a FIFO",
        "a reload naming a FIFO as an instance's netns_path, then S1's eth0 made again",
        1000,
        true,
        |c| {
            c.reload(&with_fifo, "rejected");
            let mark = c.agent().log_lines();
            c.lab.recreate_eth0("s1");
            ipv4_only(&c.ns("s1"), "eth0");
            c.agent().expect_log("programs attached again", mark, APPLY);
            // The file as in force again (no reload: the same bytes).
            c.write(&rules(s1, true, s1_ns, false));
        },
    )
}

/// Reloads alternating A (S1 takes the flood) and B (S2 does) under the
/// flood; every packet judged is checked against the policy of the
/// generation that judged it.
fn flood(c: &mut Chaos, s1: &str, s1_ns: &str, options: Options) -> FloodResult {
    eprintln!("chaos: {} reloads under a flood", options.reloads);
    // Policy A is in force (the faults ran under it).
    let policy = |a: bool| rules(s1, a, s1_ns, false);
    let counters = |instance: &str| {
        pinned_counters(&c.state.path.join(instance).join(sg_common::maps::COUNTERS))
    };
    let instances = [s1.to_owned(), "s2".to_owned()];
    let before: Vec<_> = instances.iter().map(|i| counters(i)).collect();
    let targets = vec![
        Target {
            addr: S1,
            port: FLOOD_PORT,
            mac: mac_of(&c.ns("s1")),
        },
        Target {
            addr: S2,
            port: FLOOD_PORT,
            mac: mac_of(&c.ns("s2")),
        },
    ];
    let flood = Flood::start(
        &c.ns("client"),
        targets,
        FLOOD_NET,
        options.flood_pps,
        Duration::from_mins(10),
    );
    std::thread::sleep(Duration::from_millis(300));
    eprintln!("chaos: flood sent {} frames so far", flood.sent());
    // Before any reload, all the flood is judged by the generation that
    // holds A: that is where each instance keeps A.
    let a_generation: Vec<u8> = instances
        .iter()
        .zip(&before)
        .map(|(i, b)| {
            let now = counters(i);
            let judged = |g: usize| -> u64 {
                now[g][0][PASS_RULE as usize] + now[g][0][DROP_NO_RULE as usize]
                    - b[g][0][PASS_RULE as usize]
                    - b[g][0][DROP_NO_RULE as usize]
            };
            assert!(
                judged(0) + judged(1) > 0,
                "{i}: the flood reaches the instance (counters now {:?}, before {:?})",
                now[0][0],
                b[0][0]
            );
            u8::from(judged(1) > judged(0))
        })
        .collect();
    let started = Instant::now();
    for n in 0..options.reloads {
        c.reload(&policy(n % 2 == 1), "applied in");
    }
    let took = started.elapsed();
    let sent = flood.finish();
    std::thread::sleep(Duration::from_millis(50));
    let mut result = FloodResult {
        reloads: options.reloads,
        took,
        sent,
        ..FloodResult::default()
    };
    for (k, i) in instances.iter().enumerate() {
        let now = counters(i);
        for g in 0..2u8 {
            let gi = usize::from(g);
            let pass = now[gi][0][PASS_RULE as usize] - before[k][gi][0][PASS_RULE as usize];
            let drop = now[gi][0][DROP_NO_RULE as usize] - before[k][gi][0][DROP_NO_RULE as usize];
            // A lets the flood into S1 (k = 0), B into S2.
            let holds_a = g == a_generation[k];
            let allows = holds_a == (k == 0);
            result.misjudged += if allows { drop } else { pass };
            result.judged.push((i.clone(), g, allows, pass, drop));
        }
    }
    result
}

/// Writes the report where asked (RELIABILITY.md for a full run).
pub fn write_report(report: &Report, smoke: bool, out: Option<&Path>) {
    let text = report.markdown(smoke);
    match out {
        Some(path) => std::fs::write(path, &text).expect("write the report"),
        None => println!("{text}"),
    }
}

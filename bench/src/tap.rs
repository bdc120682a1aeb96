//! Measurement 2b: what the agent costs per packet on the host side of a
//! VM's tap and of a container's veth, the places it enforces for local VMs
//! and containers.
//!
//! The instance's side is played by this process: it writes Ethernet frames
//! into the tap's file descriptor (what QEMU does with a guest's frames) or
//! sends them on the instance's end of a veth through a packet socket, one
//! frame per system call, from the instance's MAC and address to a UDP port
//! of the host. The host side receives them in the writer's own context
//! (the tap's receive, or veth's backlog run as the send returns), where
//! the agent's outbound program runs at TC ingress. Two kinds of frame: to
//! a port the instance's outbound rules do not allow (*dropped*), and to one
//! they allow (*allowed, tracked*: one flow, tracked after its first frame).
//! Without a filter both reach the host's UDP layer, which finds no socket.
//! The figure of interest is the difference per packet between the agent
//! and no filter on the same kind of link, measured side by side.

use std::{
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use sg_agent::dataplane::netns::NetnsGuard;
use sg_tests::{
    agent::AgentProcess,
    lab::{Netns, ip, unique_prefix},
};

use super::stats::Stat;

/// The instance's MAC and address, and the host's address on the link.
const VM_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x5b, 0x00, 0x01];
const VM_V4: [u8; 4] = [10, 0, 0, 1];
const HOST_V4: [u8; 4] = [10, 0, 0, 254];
/// The UDP port the instance's outbound rules allow, and one they do not.
const ALLOWED_PORT: u16 = 53;
const DENIED_PORT: u16 = 9;
/// At most this many frames per measurement, whatever the time.
const MAX_FRAMES: u64 = 50_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Tap,
    Veth,
}

impl Link {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tap => "tap",
            Self::Veth => "veth",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dropped,
    Tracked,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Dropped => "dropped (no outbound rule)",
            Self::Tracked => "allowed, tracked",
        }
    }

    fn port(self) -> u16 {
        match self {
            Self::Dropped => DENIED_PORT,
            Self::Tracked => ALLOWED_PORT,
        }
    }
}

pub struct Row {
    pub link: Link,
    /// The agent on the host side; false: no filter.
    pub agent: bool,
    pub kind: Kind,
    /// Frames written per second by one writer.
    pub pps: Stat,
    /// CPU time (all cores, busy) per frame, ns: the writer's system call
    /// and the whole receive path.
    pub cpu_ns: Stat,
}

/// One link with its host namespace and, for a veth, the instance's.
struct Setup {
    link: Link,
    agent: Option<AgentProcess>,
    /// The tap's descriptor, or a packet socket on the instance's end.
    writer: OwnedFd,
    host_mac: [u8; 6],
    samples: [(Vec<f64>, Vec<f64>); 2],
    _vm_ns: Option<Netns>,
    _host_ns: Netns,
}

fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let mac = super::e2e::link_mac(ns, dev);
    let mut out = [0u8; 6];
    for (o, part) in out.iter_mut().zip(mac.split(':')) {
        *o = u8::from_str_radix(part, 16).expect("hex");
    }
    out
}

/// The instance's frame to the host: Ethernet, IPv4 (with its checksum),
/// UDP from port 12345 to `port` (no checksum) and 18 bytes of payload.
fn frame(host_mac: [u8; 6], port: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&host_mac);
    f.extend_from_slice(&VM_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let payload = 18u16;
    let total = 20 + 8 + payload;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&VM_V4);
    ip.extend_from_slice(&HOST_V4);
    let sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    let check = !u16::try_from(folded).expect("folded");
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&12345u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&(8 + payload).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend(std::iter::repeat_n(0x41, usize::from(payload)));
    f
}

/// The rules: the instance may send UDP to port 53 of its subnet, nothing
/// else; it sits on the host side of `dev` in `netns`.
fn rules(netns: &str, dev: &str) -> String {
    format!(
        "[[security_group]]\nname = \"vm\"\n  [[security_group.egress]]\n  protocol = \"udp\"\n  \
         from_port = {ALLOWED_PORT}\n  to_port = {ALLOWED_PORT}\n  cidr_blocks = [\"10.0.0.0/24\"]\n\n\
         [[instance]]\nname = \"vm\"\naddresses = [\"10.0.0.1\"]\nsecurity_groups = [\"vm\"]\n\
         netns = \"{netns}\"\nhost_interface = \"{dev}\"\nmac = \"52:54:00:5b:00:01\"\n"
    )
}

impl Setup {
    fn new(link: Link, agent: bool, dir: &std::path::Path) -> Self {
        let prefix = unique_prefix("sgbt");
        let host_ns = Netns::create(&format!("{prefix}-host"));
        let (writer, vm_ns, dev) = match link {
            Link::Tap => {
                let _inside = NetnsGuard::enter(&host_ns.name).expect("enter the host namespace");
                (sg_tests::guest::open_tap("tap0", false), None, "tap0")
            }
            Link::Veth => {
                let vm_ns = Netns::create(&format!("{prefix}-vm"));
                ip(&[
                    "-n",
                    &vm_ns.name,
                    "link",
                    "add",
                    "eth0",
                    "address",
                    "52:54:00:5b:00:01",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "vm0",
                    "netns",
                    &host_ns.name,
                ]);
                ip(&["-n", &vm_ns.name, "link", "set", "eth0", "up"]);
                let fd = {
                    let _inside = NetnsGuard::enter(&vm_ns.name).expect("enter the VM namespace");
                    sg_tests::guest::packet_socket("eth0")
                };
                (fd, Some(vm_ns), "vm0")
            }
        };
        let host = &host_ns.name;
        ip(&["-n", host, "addr", "add", "10.0.0.254/24", "dev", dev]);
        ip(&["-n", host, "link", "set", dev, "up"]);
        let host_mac = mac_of(host, dev);
        let agent = agent.then(|| {
            let path = dir.join(format!("{prefix}.toml"));
            std::fs::write(&path, rules(host, dev)).expect("write rules");
            let agent = AgentProcess::start_with(&path, &[]);
            agent.expect_log("ready: enforcing", 0, Duration::from_mins(1));
            agent
        });
        Self {
            link,
            agent,
            writer,
            host_mac,
            samples: [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())],
            _vm_ns: vm_ns,
            _host_ns: host_ns,
        }
    }

    /// The agent's outbound counts of the reason `kind` should take.
    fn counted(&self, kind: Kind) -> u64 {
        let Some(agent) = &self.agent else {
            return 0;
        };
        super::e2e::agent_counts(agent, "egress", |r| match kind {
            Kind::Dropped => r == "drop_no_rule",
            Kind::Tracked => matches!(r, "pass_tracked" | "pass_rule"),
        })
    }

    /// Writes `kind`'s frame for `secs` seconds; frames per second and busy
    /// CPU ns per frame.
    fn measure(&mut self, kind: Kind, secs: f64) -> (f64, f64) {
        let data = frame(self.host_mac, kind.port());
        let counted0 = self.counted(kind);
        let cpu0 = super::e2e::cpu_jiffies();
        let start = Instant::now();
        let (mut sent, mut failed) = (0u64, 0u64);
        while sent + failed < MAX_FRAMES {
            if (sent + failed).is_multiple_of(1024) && start.elapsed().as_secs_f64() >= secs {
                break;
            }
            // SAFETY: a valid descriptor and buffer.
            let n =
                unsafe { libc::write(self.writer.as_raw_fd(), data.as_ptr().cast(), data.len()) };
            if usize::try_from(n) == Ok(data.len()) {
                sent += 1;
            } else {
                failed += 1;
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let cpu1 = super::e2e::cpu_jiffies();
        assert!(
            failed <= sent / 100,
            "{}: {failed} of {} writes failed",
            self.link.name(),
            sent + failed
        );
        if self.agent.is_some() {
            // Every frame took the path the row names (the status reads
            // the per-CPU counters, updated as each frame was judged).
            let counted = self.counted(kind) - counted0;
            assert!(
                counted >= sent,
                "{} {}: {counted} of {sent} frames counted",
                self.link.name(),
                kind.name()
            );
        }
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let (p, busy) = (sent as f64, (cpu1.0 - cpu0.0) as f64);
        // /proc/stat counts in USER_HZ (1/100 s).
        (p / elapsed, busy / 100.0 * 1e9 / p.max(1.0))
    }
}

/// Every configuration set up side by side (tap and veth, with and without
/// the agent), then measured in turns, `runs` times.
pub fn measure(secs: f64, runs: usize) -> Vec<Row> {
    let dir = std::env::temp_dir().join(unique_prefix("sgbench-tap"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut setups: Vec<(bool, Setup)> = Vec::new();
    for link in [Link::Tap, Link::Veth] {
        for agent in [false, true] {
            setups.push((agent, Setup::new(link, agent, &dir)));
        }
    }
    for run in 1..=runs {
        for (agent, s) in &mut setups {
            for (i, kind) in [Kind::Dropped, Kind::Tracked].into_iter().enumerate() {
                let (pps, cpu) = s.measure(kind, secs);
                s.samples[i].0.push(pps);
                s.samples[i].1.push(cpu);
                eprintln!(
                    "tap/veth run {run}/{runs}: {} {} {}: {pps:.0} frames/s, {cpu:.0} ns/frame",
                    s.link.name(),
                    if *agent { "sg-agent" } else { "no filter" },
                    kind.name()
                );
            }
        }
    }
    let mut rows = Vec::new();
    for (agent, s) in setups {
        for (i, kind) in [Kind::Dropped, Kind::Tracked].into_iter().enumerate() {
            rows.push(Row {
                link: s.link,
                agent,
                kind,
                pps: Stat::of(&s.samples[i].0),
                cpu_ns: Stat::of(&s.samples[i].1),
            });
        }
        if let Some(a) = s.agent {
            assert_eq!(a.terminate().code(), Some(0), "agent exit");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

/// The full measurement, or one short round (`--smoke`).
pub fn measure_run(smoke: bool) -> Vec<Row> {
    if smoke {
        measure(0.5, 1)
    } else {
        measure(super::report::TAP_SECS, 5)
    }
}

/// `--only tap`: the rows, without a report.
pub fn print(rows: &[Row]) {
    for r in rows {
        println!(
            "{} {} {}: {} frames/s, {} ns/frame",
            r.link.name(),
            if r.agent { "sg-agent" } else { "no filter" },
            r.kind.name(),
            r.pps.show(0),
            r.cpu_ns.show(0)
        );
    }
}

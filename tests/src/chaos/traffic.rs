//! The chaos suite's instruments: a prober that tells how long a blocked
//! port answered, a flood of fresh flows written straight to the wire, and
//! the per-generation counters read from an instance's pinned map.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, PerCpuArray};
use sg_common::counters;

use crate::{
    frames::{Shape, Transport, frame},
    lab::in_netns,
};

/// Datagrams a [`LeakProbe`] sends per second: one per millisecond, so each
/// that arrives stands for a millisecond during which the port answered.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(1);

/// Sends a numbered datagram every millisecond to a port the policy blocks,
/// and counts those that reach it. Bounded: at most `max` long.
pub struct LeakProbe {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl LeakProbe {
    pub fn start(
        from_ns: &str,
        from: Ipv4Addr,
        to_ns: &str,
        to: SocketAddr,
        max: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let listening = {
            let (stop, received, ns) = (stop.clone(), received.clone(), to_ns.to_owned());
            let socket = in_netns(&ns, move || {
                UdpSocket::bind(to).expect("bind the probed port")
            });
            socket
                .set_read_timeout(Some(Duration::from_millis(20)))
                .expect("timeout");
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if socket.recv(&mut buf).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let sending = {
            let (stop, sent) = (stop.clone(), sent.clone());
            let socket = in_netns(from_ns, move || {
                UdpSocket::bind((from, 0)).expect("bind the prober")
            });
            std::thread::spawn(move || {
                let end = Instant::now() + max;
                let mut next = Instant::now();
                let mut n: u64 = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let _ = socket.send_to(&n.to_be_bytes(), to);
                    n += 1;
                    sent.store(n, Ordering::Relaxed);
                    next += PROBE_INTERVAL;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        };
        Self {
            stop,
            sent,
            received,
            threads: vec![listening, sending],
            started: Instant::now(),
        }
    }

    /// Stops; returns (datagrams sent, datagrams that reached the port,
    /// how long it ran).
    pub fn finish(self) -> (u64, u64, Duration) {
        // Datagrams in flight arrive within a few milliseconds.
        std::thread::sleep(Duration::from_millis(30));
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.sent.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
            self.started.elapsed(),
        )
    }
}

/// UDP datagrams to `targets`, each from a source address and port not
/// used before in the run (so each is a new flow that the rules judge, not
/// the connection table), written to the wire with a packet socket at about
/// `pps`. Bounded: at most `max` long.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// A flood target: destination address and port, and the MAC address of
/// its interface.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub mac: [u8; 6],
}

impl Flood {
    /// Sources are `source_net.X.Y` (a /16 that the rules allow or not as
    /// a whole), ports from 1024 up.
    pub fn start(
        ns: &str,
        targets: Vec<Target>,
        source_net: [u8; 2],
        pps: u64,
        max: Duration,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, sent, ns) = (stop.clone(), sent.clone(), ns.to_owned());
            std::thread::spawn(move || {
                in_netns(&ns.clone(), move || {
                    let socket = PacketSocket::open("eth0");
                    let end = Instant::now() + max;
                    let started = Instant::now();
                    let mut n: u64 = 0;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        for t in &targets {
                            // Host part and port from the count: a new flow
                            // every packet, for 2^16 x 64,000 packets.
                            let host = u16::try_from(n / 64_000).unwrap_or(u16::MAX);
                            let [hi, lo] = host.to_be_bytes();
                            let src = Ipv4Addr::new(source_net[0], source_net[1], hi, lo.max(1));
                            let sport = 1024 + u16::try_from(n % 64_000).expect("below 64,000");
                            let mut f = frame(
                                src.into(),
                                t.addr.into(),
                                &Transport::Udp {
                                    sport,
                                    dport: t.port,
                                },
                                &Shape::default(),
                            );
                            f[0..6].copy_from_slice(&t.mac);
                            socket.send(&f);
                        }
                        n += 1;
                        let frames = n * targets.len() as u64;
                        sent.store(frames, Ordering::Relaxed);
                        // Paced in bursts of 32.
                        if n.is_multiple_of(32) {
                            let due = started + Duration::from_nanos(frames * 1_000_000_000 / pps);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                    }
                });
            })
        };
        Self {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops; returns the frames sent.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// An `AF_PACKET` socket bound to one interface of the current namespace.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
}

impl PacketSocket {
    fn open(ifname: &str) -> Self {
        use std::os::fd::{AsRawFd as _, FromRawFd as _};
        let ifindex = nix::net::if_::if_nametoindex(ifname).expect("interface");
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            raw >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).expect("a small constant");
        addr.sll_ifindex = i32::try_from(ifindex).expect("ifindex");
        // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).expect("size"),
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        Self { fd }
    }

    fn send(&self, frame: &[u8]) {
        use std::os::fd::AsRawFd as _;
        // SAFETY: `frame` is valid for its length. A full queue (ENOBUFS)
        // loses a frame of the flood, which is counted nowhere as judged.
        let _ = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    }
}

/// Packets by [generation][direction][reason], summed over CPUs, read from
/// an instance's pinned counters map.
pub type GenerationCounts = [[[u64; counters::REASONS as usize]; 2]; 2];

pub fn pinned_counters(path: &Path) -> GenerationCounts {
    let data = MapData::from_pin(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let map = Map::PerCpuArray(data);
    let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).expect("a per-CPU array");
    let mut out = [[[0u64; counters::REASONS as usize]; 2]; 2];
    for (g, by_direction) in (0u8..).zip(out.iter_mut()) {
        for (d, by_reason) in (0u8..).zip(by_direction.iter_mut()) {
            for (r, slot) in (0u32..).zip(by_reason.iter_mut()) {
                let index = counters::index(g, d, r);
                *slot = array
                    .get(&index, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or_default();
            }
        }
    }
    out
}

/// The MAC address of `eth0` in `ns`.
pub fn mac_of(ns: &str) -> [u8; 6] {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-j", "link", "show", "eth0"])
        .output()
        .expect("ip runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    let text = json[0]["address"].as_str().expect("a MAC address");
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16).expect("hex");
    }
    mac
}

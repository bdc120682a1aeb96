//! Traffic probes between lab namespaces: TCP and UDP echo servers, and
//! clients that tell "connected" from "refused" from "timed out". Every
//! probe is bounded in count and time.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::lab::in_netns;

/// How long a client waits before calling it a time-out. The kernel
/// retransmits a SYN after one second, so a dropped SYN never gets an
/// answer within this.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(900);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected and the echo came back.
    Connected,
    /// An RST or ICMP error: something answered "no".
    Refused,
    /// Silence: what a security group's drop looks like.
    TimedOut,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connected => "connected",
            Self::Refused => "refused",
            Self::TimedOut => "timed out",
        })
    }
}

/// Echo servers (TCP and UDP, v4 and v6) on some ports of one namespace,
/// stopped on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub fn start(ns: &str, tcp_ports: &[u16], udp_ports: &[u16]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &port in tcp_ports {
            let listener = in_netns(ns, move || {
                // [::] is dual-stack: one listener for v4 and v6.
                TcpListener::bind(("::", port))
                    .unwrap_or_else(|e| panic!("listen on tcp/{port}: {e}"))
            });
            listener.set_nonblocking(true).expect("nonblocking");
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || serve_tcp(&listener, &stop)));
        }
        for &port in udp_ports {
            let socket = in_netns(ns, move || {
                UdpSocket::bind(("::", port)).unwrap_or_else(|e| panic!("bind udp/{port}: {e}"))
            });
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || serve_udp(&socket, &stop)));
        }
        Self { stop, threads }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_tcp(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                // Echo until the client closes; one thread per connection.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_udp(socket: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], peer);
        }
    }
}

fn bound_socket(from: IpAddr, to: SocketAddr, ty: Type, proto: Protocol) -> Socket {
    let domain = if to.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, ty, Some(proto)).expect("socket");
    s.bind(&SockAddr::from(SocketAddr::new(from, 0)))
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    s
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::TimedOut,
        _ => Outcome::Refused,
    }
}

/// Opens a TCP connection from `from` (in namespace `ns`) to `to`, then
/// checks an echo comes back; returns the open stream when it does.
pub fn tcp_open(ns: &str, from: IpAddr, to: SocketAddr) -> Result<TcpStream, Outcome> {
    in_netns(ns, move || {
        let s = bound_socket(from, to, Type::STREAM, Protocol::TCP);
        s.connect_timeout(&SockAddr::from(to), PROBE_TIMEOUT)
            .map_err(|e| classify(&e))?;
        let mut stream: TcpStream = s.into();
        echo(&mut stream).map(|()| stream)
    })
}

/// One request-response on an open stream.
pub fn echo(stream: &mut TcpStream) -> Result<(), Outcome> {
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .expect("timeout");
    stream.write_all(b"ping\n").map_err(|e| classify(&e))?;
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).map_err(|e| classify(&e))?;
    if &buf == b"ping\n" {
        Ok(())
    } else {
        Err(Outcome::Refused)
    }
}

/// `tcp_open`, reduced to its outcome.
pub fn tcp(ns: &str, from: IpAddr, to: SocketAddr) -> Outcome {
    match tcp_open(ns, from, to) {
        Ok(_) => Outcome::Connected,
        Err(o) => o,
    }
}

/// One UDP datagram from `from` to `to` and its echo.
pub fn udp(ns: &str, from: IpAddr, to: SocketAddr) -> Outcome {
    in_netns(ns, move || {
        let s: UdpSocket = bound_socket(from, to, Type::DGRAM, Protocol::UDP).into();
        s.set_read_timeout(Some(PROBE_TIMEOUT)).expect("timeout");
        s.send_to(b"ping", to).expect("send");
        let mut buf = [0u8; 8];
        match s.recv_from(&mut buf) {
            Ok((4, _)) => Outcome::Connected,
            Ok(_) => Outcome::Refused,
            Err(e) => classify(&e),
        }
    })
}

/// One ICMP echo (ping -c 1) from `from` in `ns` to `to`: connected when a
/// reply comes back within the probe time-out.
pub fn ping(ns: &str, from: IpAddr, to: IpAddr) -> Outcome {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-c",
            "1",
            "-W",
            "1",
            "-I",
            &from.to_string(),
            &to.to_string(),
        ])
        .output()
        .expect("ping (iputils-ping) runs");
    if out.status.success() {
        Outcome::Connected
    } else {
        Outcome::TimedOut
    }
}

/// Polls `f` until it returns true or `deadline` passes.
pub fn eventually(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

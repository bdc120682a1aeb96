//! Connections per second: short TCP connections (connect, one request,
//! one reply, close) from many client addresses to the instance, the
//! figure AWS users know from the connection-tracking allowance and where
//! connection tracking costs most (every connection is a new flow, an
//! insertion and, for conntrack, a `TIME_WAIT` entry).
//!
//! The client and the server are threads of this process, each in its
//! namespace (`setns` binds a thread, and a socket stays in the namespace
//! it was made in): no helper process to start per round, and the same
//! client for every filter.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    os::fd::AsFd,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use sg_agent::dataplane::netns::NetnsGuard;
use socket2::{Domain, Socket, Type};

use super::policies::SERVER_V4;

/// The clients' addresses: `198.51.100.64/26`, inside the /24 every bench
/// policy allows on tcp/80, added to the client's link for the round.
pub const SOURCES: u8 = 64;
const FIRST_SOURCE: u8 = 64;
const PORT: u16 = 80;
/// Client threads (the machine has two cores; the server has two more).
pub const CLIENTS: usize = 2;
pub const SERVERS: usize = 2;
/// Bound on connections per client thread per round, whatever the rate.
const MAX_PER_CLIENT: u64 = 2_000_000;
pub const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
pub const REPLY: &[u8] = b"HTTP/1.0 200 OK\r\n\r\nok\n";

pub fn source(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, FIRST_SOURCE + i % SOURCES)
}

/// What one round measured.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    /// Connections completed (reply read to its end) per second.
    pub per_sec: f64,
    /// Connections that failed (refused, timed out, cut short).
    pub failed: u64,
}

/// Runs the clients in `client_ns` against a server in `server_ns` for
/// `secs` seconds. Every wait has a deadline: a filter that drops the
/// connections makes failures, never a hang.
pub fn measure(client_ns: &str, server_ns: &str, secs: f64) -> Round {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let listener = {
        let _inside = NetnsGuard::enter(server_ns).expect("enter the server's namespace");
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_reuse_address(true).expect("SO_REUSEADDR");
        let addr = SocketAddrV4::new(SERVER_V4.parse().expect("v4"), PORT);
        socket.bind(&SocketAddr::V4(addr).into()).expect("bind :80");
        socket.listen(4096).expect("listen");
        TcpListener::from(socket)
    };
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let dst = SocketAddr::V4(SocketAddrV4::new(SERVER_V4.parse().expect("v4"), PORT));
    let started = Instant::now();
    let elapsed = std::thread::scope(|scope| {
        for _ in 0..SERVERS {
            let listener = listener.try_clone().expect("listener clone");
            let stop = &stop;
            scope.spawn(move || serve(&listener, stop));
        }
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (done, failed) = (&done, &failed);
                scope.spawn(move || {
                    let _inside =
                        NetnsGuard::enter(client_ns).expect("enter the client's namespace");
                    let deadline = Instant::now() + Duration::from_secs_f64(secs);
                    let mut next = u8::try_from(c).expect("few clients");
                    for _ in 0..MAX_PER_CLIENT {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let ok = one_connection(source(next), dst);
                        next = next.wrapping_add(1);
                        if ok {
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("client thread");
        }
        let elapsed = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        elapsed
    });
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let per_sec = done.load(Ordering::Relaxed) as f64 / elapsed;
    Round {
        per_sec,
        failed: failed.load(Ordering::Relaxed),
    }
}

/// Connect from `src`, send the request, read the reply to the server's
/// close, close: whether all of it happened within the deadlines.
fn one_connection(src: Ipv4Addr, dst: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        // The server closes first, so a client's port is free again as
        // soon as its connection ends: 64 sources never run out of ports.
        socket.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())?;
        socket.connect_timeout(&dst.into(), Duration::from_secs(1))?;
        let mut stream = std::net::TcpStream::from(socket);
        stream.set_read_timeout(Some(Duration::from_secs(1)))?;
        stream.set_write_timeout(Some(Duration::from_secs(1)))?;
        stream.write_all(REQUEST)?;
        let mut reply = Vec::with_capacity(REPLY.len());
        stream.read_to_end(&mut reply)?;
        Ok(reply == REPLY)
    };
    attempt().unwrap_or(false)
}

/// Accepts until `stop`, answering each connection's request and closing it
/// (the server closes first, as an HTTP/1.0 server does: `TIME_WAIT` is the
/// server's).
fn serve(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
            continue;
        }
        if let Ok((stream, _)) = listener.accept() {
            let _ = answer(stream);
        }
    }
}

/// Reads one request and writes the reply; the stream closes when dropped.
fn answer(mut stream: std::net::TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut request = [0u8; REQUEST.len()];
    stream.read_exact(&mut request)?;
    stream.write_all(REPLY)
}

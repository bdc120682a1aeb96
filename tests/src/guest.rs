//! A hostile guest without a VM: a tap in a lab namespace whose descriptor
//! the test holds, as QEMU holds a VM's, with the virtio-net header QEMU
//! (vhost-net) writes before every frame (`IFF_VNET_HDR`). Every byte the
//! test writes there is what root inside a guest can put on its link; the
//! kernel builds the skb exactly as it does for a VM's frame (a frame over
//! a page lands mostly outside the skb's linear part), then the host side's
//! programs see it at the tap's TC ingress. And a sniffer: a packet socket
//! on a lab interface, which counts the frames that reach it.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::lab::{in_netns, ip};

/// `struct virtio_net_hdr`: no checksum offload, no GSO, and `hdr_len` 0,
/// which makes the kernel put all of a frame over a page outside the skb's
/// linear part (as vhost-net's frames are).
const VNET_HDR: [u8; 10] = [0; 10];

/// A tap in namespace `netns`, a port of its bridge `br0`, up; the guest's
/// end is the descriptor.
pub struct GuestTap {
    fd: OwnedFd,
    pub name: String,
}

impl GuestTap {
    pub fn open(netns: &str, name: &str) -> Self {
        let owned = name.to_owned();
        let fd = in_netns(netns, move || open_tap(&owned, true));
        ip(&["-n", netns, "link", "set", name, "master", "br0", "up"]);
        Self {
            fd,
            name: name.to_owned(),
        }
    }

    /// Writes one frame as the guest sends it.
    pub fn send(&self, frame: &[u8]) {
        let mut buf = VNET_HDR.to_vec();
        buf.extend_from_slice(frame);
        // SAFETY: a buffer and its length; the result is checked.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        assert_eq!(
            usize::try_from(n).ok(),
            Some(buf.len()),
            "write to the tap: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A tap named `name` in the current namespace, held by the descriptor (it
/// goes with it), with no packet information header; with `vnet_hdr`, each
/// frame written is preceded by a virtio-net header, as QEMU's are.
pub fn open_tap(name: &str, vnet_hdr: bool) -> OwnedFd {
    // SAFETY: a path and flags; the result is checked.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    assert!(
        fd >= 0,
        "open /dev/net/tun: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor just opened and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s.cast_signed();
    }
    let vnet = if vnet_hdr { libc::IFF_VNET_HDR } else { 0 };
    req.ifr_ifru.ifru_flags = i16::try_from(libc::IFF_TAP | libc::IFF_NO_PI | vnet).expect("flags");
    // SAFETY: TUNSETIFF reads and writes the ifreq it is given.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &raw mut req) };
    assert!(r == 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
    fd
}

/// A packet socket bound to `dev` in the current namespace (every
/// protocol): it receives every frame that reaches `dev`, and sends frames
/// out of it.
pub fn packet_socket(dev: &str) -> OwnedFd {
    let proto = u16::try_from(libc::ETH_P_ALL).expect("ETH_P_ALL").to_be();
    // SAFETY: plain arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a descriptor just made and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(dev).expect("name");
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index != 0, "no interface {dev}");
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).expect("family");
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(index).expect("index");
    // SAFETY: a valid sockaddr_ll and its size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            u32::try_from(size_of::<libc::sockaddr_ll>()).expect("size"),
        )
    };
    assert!(r == 0, "bind: {}", std::io::Error::last_os_error());
    fd
}

/// A packet socket on an interface of a lab namespace, receiving every
/// frame that reaches it.
pub struct Sniffer {
    fd: OwnedFd,
}

impl Sniffer {
    pub fn open(netns: &str, dev: &str) -> Self {
        let dev = dev.to_owned();
        Self {
            fd: in_netns(netns, move || packet_socket(&dev)),
        }
    }

    /// How many frames holding `marker` arrive within `wait`.
    pub fn count(&self, marker: &[u8], wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        let mut seen = 0;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return seen;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: one pollfd.
            if unsafe { libc::poll(&raw mut pfd, 1, ms) } <= 0 {
                continue;
            }
            // SAFETY: a buffer and its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if let Ok(n) = usize::try_from(n)
                && buf[..n].windows(marker.len()).any(|w| w == marker)
            {
                seen += 1;
            }
        }
    }
}

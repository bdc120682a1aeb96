//! Which driver an interface has (`ethtool -i`), for `--ingress-hook auto`.
//!
//! Asked with the `SIOCETHTOOL` ioctl (`ETHTOOL_GDRVINFO`) on a socket made
//! by the calling thread, so in the network namespace the thread is in.

use std::{ffi::CStr, os::fd::AsRawFd as _};

/// Drivers of virtual interfaces, where native XDP costs more than it
/// saves: veth copies every packet into its own pages to give XDP a
/// writable buffer (20% of no-filter TCP throughput measured, against 97%
/// or more at TC ingress: BENCHMARKS.md); the others either have no native
/// XDP or run it on packets the stack has already built.
pub const VIRTUAL_DRIVERS: &[&str] = &[
    "veth",
    "tun",
    "bridge",
    "dummy",
    "macvlan",
    "ipvlan",
    "vxlan",
    "geneve",
    "netkit",
    "802.1Q VLAN Support",
    "bonding",
    "team",
    "wireguard",
    "gre",
    "ipip",
];

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ifreq` with its `ifr_data` member.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut DrvInfo,
    _pad: [u8; 16],
}

/// The driver's name (`veth`, `ixgbe`, `virtio_net`, ...) of `ifname` in
/// this thread's network namespace.
pub fn driver_of(ifname: &str) -> std::io::Result<String> {
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    // SAFETY: a plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor this function just opened and owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: DrvInfo is plain integers and byte arrays: all zeroes is valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &raw mut info,
        _pad: [0; 16],
    };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: SIOCETHTOOL reads `req` (a NUL-terminated name and a pointer
    // to `info`, both live for the call) and writes only into `info`.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &raw mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let name = CStr::from_bytes_until_nul(&info.driver)
        .map_err(|_| std::io::Error::other("driver name not terminated"))?;
    Ok(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_overlong_names_are_errors() {
        let missing = driver_of("no-such-if0").unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENODEV));
        let long = driver_of("a-name-much-too-long").unwrap_err();
        assert_eq!(long.raw_os_error(), Some(libc::ENAMETOOLONG));
    }
}

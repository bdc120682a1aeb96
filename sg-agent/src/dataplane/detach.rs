//! Detaching a BPF link now (`BPF_LINK_DETACH`), whoever holds it.
//!
//! Closing a link's descriptor and unlinking its pin release only this
//! process's references: while anyone else holds the link (a `bpftool`
//! listing links at that moment, a process that opened the pin) its
//! program stays on the interface, judging packets after the agent logged
//! the instance detached, and a native XDP program cannot be attached while
//! the generic one it replaces is still there. `BPF_LINK_DETACH` takes the
//! program off its hook at once (XDP links since Linux 5.9, TCX links since
//! 6.6); the other holders keep a defunct link. cilium/ebpf's `Link.Detach`
//! is the same call. aya 0.14 exposes neither the call nor a link's
//! descriptor, so the link is reached by its id or its pin.

use std::{io, os::fd::OwnedFd, path::Path};

use super::sys::{Attr, BPF_LINK_GET_FD_BY_ID, bpf, link_info, obj_get, owned};

const BPF_LINK_DETACH: libc::c_long = 34;

fn detach_fd(fd: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let fd = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("bad descriptor"))?;
    // link_detach.link_fd
    bpf(BPF_LINK_DETACH, &Attr::default().u32_at(0, fd)).map(|_| ())
}

/// Detaches the link with this id from its hook now. A link already
/// released is not an error.
pub(super) fn by_id(id: u32) -> io::Result<()> {
    // link_id
    let fd = match bpf(BPF_LINK_GET_FD_BY_ID, &Attr::default().u32_at(0, id)) {
        Ok(fd) => owned(fd)?,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    detach_fd(&fd)
}

/// Detaches the link pinned at `path` from its hook now (the pin stays:
/// the caller removes it). No pin there is not an error.
pub(super) fn by_pin(path: &Path) -> io::Result<()> {
    match obj_get(path)? {
        Some(fd) => detach_fd(&fd),
        None => Ok(()),
    }
}

/// Whether the link with this id still has its program on a hook: a TCX
/// or XDP link someone detached (`BPF_LINK_DETACH`, `bpftool link detach`,
/// another agent), or whose interface was deleted, stays open for its
/// holders but reports interface 0. A link no longer there is not
/// attached.
pub(super) fn attached(id: u32) -> io::Result<bool> {
    match bpf(BPF_LINK_GET_FD_BY_ID, &Attr::default().u32_at(0, id)) {
        Ok(fd) => on_a_hook(&owned(fd)?),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`attached`] for the link pinned at `path` (no pin: not attached).
pub fn pin_attached(path: &Path) -> io::Result<bool> {
    match obj_get(path)? {
        Some(fd) => on_a_hook(&fd),
        None => Ok(false),
    }
}

/// Whether the link `fd` holds reports an interface (see [`attached`]).
fn on_a_hook(fd: &OwnedFd) -> io::Result<bool> {
    Ok(link_info(fd)?.ifindex != 0)
}

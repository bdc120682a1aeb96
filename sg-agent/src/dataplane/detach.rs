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

use std::{
    ffi::CString,
    io,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
};

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;

/// Room for the largest of the `union bpf_attr` members used here; the
/// kernel requires the bytes it does not read to be zero.
#[repr(C, align(8))]
#[derive(Default)]
struct Attr([u8; 24]);

impl Attr {
    fn u32_at(mut self, offset: usize, v: u32) -> Self {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn u64_at(mut self, offset: usize, v: u64) -> Self {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed `union bpf_attr` prefix of the size passed,
    // filled with the fields `cmd` reads; the kernel only reads it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this new descriptor; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

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
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let ptr = u64::try_from(c.as_ptr().addr()).expect("64-bit pointers");
    // pathname; bpf_fd, file_flags (read only) zero
    let fd = match bpf(BPF_OBJ_GET, &Attr::default().u64_at(0, ptr)) {
        Ok(fd) => owned(fd)?,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    detach_fd(&fd)
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
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let ptr = u64::try_from(c.as_ptr().addr()).expect("64-bit pointers");
    match bpf(BPF_OBJ_GET, &Attr::default().u64_at(0, ptr)) {
        Ok(fd) => on_a_hook(&owned(fd)?),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the link `fd` holds reports an interface (see [`attached`]).
fn on_a_hook(fd: &OwnedFd) -> io::Result<bool> {
    use std::os::fd::AsRawFd as _;
    /// `struct bpf_link_info`: type, id, `prog_id`, then (at 16) the union
    /// whose `tcx` and `xdp` members both start with the ifindex. Room for
    /// all of it; the kernel wants the bytes it does not know zero.
    #[repr(C, align(8))]
    struct Info([u8; 128]);
    let mut info = Info([0; 128]);
    let fd = u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("bad descriptor"))?;
    let ptr = u64::try_from((&raw mut info).addr()).expect("64-bit pointers");
    // info.bpf_fd, info.info_len, info.info
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        &Attr::default().u32_at(0, fd).u32_at(4, 128).u64_at(8, ptr),
    )?;
    let ifindex = u32::from_ne_bytes(info.0[16..20].try_into().expect("four bytes"));
    Ok(ifindex != 0)
}

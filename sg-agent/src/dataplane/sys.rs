//! The few `bpf(2)` commands aya 0.14 does not expose, called directly:
//! detaching a link whoever holds it, asking a link what it attaches and
//! where, and putting an already loaded program on a TCX hook (the libvirt
//! hook does it with no agent running, from the programs an earlier agent
//! left pinned), and swapping the program of a link aya does not hold
//! (the network-ACL variant, see `Dataplane::use_programs_for`).
//! cilium/ebpf and libbpf make the same calls.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
pub(super) const BPF_OBJ_PIN: libc::c_long = 6;
pub(super) const BPF_OBJ_GET: libc::c_long = 7;
pub(super) const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
pub(super) const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
pub(super) const BPF_LINK_CREATE: libc::c_long = 28;
pub(super) const BPF_LINK_UPDATE: libc::c_long = 29;
pub(super) const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// `enum bpf_attach_type`: the TCX hooks (Linux 6.6).
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// Room for the largest of the `union bpf_attr` members used here
/// (`link_create` with its `tcx` part); the kernel requires the bytes it
/// does not read to be zero.
#[repr(C, align(8))]
#[derive(Default)]
pub(super) struct Attr([u8; 32]);

impl Attr {
    pub(super) fn u32_at(mut self, offset: usize, v: u32) -> Self {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    pub(super) fn u64_at(mut self, offset: usize, v: u64) -> Self {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

pub(super) fn bpf(cmd: libc::c_long, attr: &Attr) -> io::Result<libc::c_long> {
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

pub(super) fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this new descriptor; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn raw(fd: &impl AsRawFd) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("bad descriptor"))
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn pointer<T: ?Sized>(p: *const T) -> u64 {
    u64::try_from(p.addr()).expect("64-bit pointers")
}

/// The object pinned at `path` (`None`: nothing is pinned there).
pub(super) fn obj_get(path: &Path) -> io::Result<Option<OwnedFd>> {
    let c = c_path(path)?;
    // pathname; bpf_fd, file_flags (read and write) zero
    match bpf(BPF_OBJ_GET, &Attr::default().u64_at(0, pointer(c.as_ptr()))) {
        Ok(fd) => owned(fd).map(Some),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Pins the object `fd` holds at `path`.
pub(super) fn obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    // pathname, bpf_fd
    bpf(
        BPF_OBJ_PIN,
        &Attr::default()
            .u64_at(0, pointer(c.as_ptr()))
            .u32_at(8, raw(fd)?),
    )
    .map(|_| ())
}

/// What a link attaches and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LinkInfo {
    pub prog_id: u32,
    /// The interface of a TCX or XDP link; 0 once the link is off its hook
    /// (detached, or its interface deleted).
    pub ifindex: u32,
}

pub(super) fn link_info(fd: &OwnedFd) -> io::Result<LinkInfo> {
    /// `struct bpf_link_info`: type, id, `prog_id`, then (at 16) the union
    /// whose `tcx` and `xdp` members both start with the ifindex. Room for
    /// all of it; the kernel wants the bytes it does not know zero.
    #[repr(C, align(8))]
    struct Info([u8; 128]);
    let mut info = Info([0; 128]);
    // info.bpf_fd, info.info_len, info.info
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        &Attr::default()
            .u32_at(0, raw(fd)?)
            .u32_at(4, 128)
            .u64_at(8, pointer((&raw mut info).cast_const())),
    )?;
    let word = |at: usize| u32::from_ne_bytes(info.0[at..at + 4].try_into().expect("four bytes"));
    Ok(LinkInfo {
        prog_id: word(8),
        ifindex: word(16),
    })
}

/// The loaded program with this id.
pub(super) fn prog_by_id(id: u32) -> io::Result<OwnedFd> {
    // prog_id
    owned(bpf(BPF_PROG_GET_FD_BY_ID, &Attr::default().u32_at(0, id))?)
}

/// A new TCX link of `prog` on interface `ifindex` of the calling thread's
/// network namespace, last in the hook's chain (as aya attaches).
pub(super) fn tcx_link(prog: &OwnedFd, ifindex: u32, ingress: bool) -> io::Result<OwnedFd> {
    let attach_type = if ingress {
        BPF_TCX_INGRESS
    } else {
        BPF_TCX_EGRESS
    };
    // link_create: prog_fd, target_ifindex, attach_type, flags (0), tcx's
    // relative_fd and expected_revision (0: none)
    owned(bpf(
        BPF_LINK_CREATE,
        &Attr::default()
            .u32_at(0, raw(prog)?)
            .u32_at(4, ifindex)
            .u32_at(8, attach_type),
    )?)
}

/// The link with this id.
pub(super) fn link_by_id(id: u32) -> io::Result<OwnedFd> {
    // link_id
    owned(bpf(BPF_LINK_GET_FD_BY_ID, &Attr::default().u32_at(0, id))?)
}

/// Puts `prog` on the live link `link` in place of its program: each
/// packet meets one or the other, none meets neither.
pub(super) fn link_update(link: &OwnedFd, prog: BorrowedFd<'_>) -> io::Result<()> {
    // link_update: link_fd, new_prog_fd, flags (0: whatever it ran),
    // old_prog_fd (unused without BPF_F_REPLACE)
    bpf(
        BPF_LINK_UPDATE,
        &Attr::default().u32_at(0, raw(link)?).u32_at(4, raw(&prog)?),
    )
    .map(|_| ())
}

//! Entering a network namespace for the current thread, and coming back:
//! a named one (`ip netns add NAME`, under /run/netns) or, with the rules
//! file's `netns_path`, a namespace file elsewhere (`/proc/PID/ns/net`, a
//! container runtime's bind mount).
//!
//! The rules file is a trust boundary: a name is one path component (the
//! parser refuses `/`, `.` and `..`), a named namespace file is opened
//! without following a symlink, an explicit path may be a symlink only as
//! `/proc/PID/ns/net` is one, and whatever is opened must be a network
//! namespace before the thread enters it.

use std::{
    fs::File,
    marker::PhantomData,
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace \"{name}\" not found at {}: create it with `ip netns add {name}`, or fix `netns` in the rules file", path.display())]
    NotFound { name: String, path: PathBuf },
    #[error("cannot enter network namespace \"{name}\": {source} (sg-agent must run as root)")]
    Enter {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot open this thread's network namespace: {0}")]
    Own(#[source] std::io::Error),
    #[error(
        "{}: {why}: `netns_path` must name a network namespace file, such as /proc/PID/ns/net or a bind mount of one",
        path.display()
    )]
    NotANamespace { path: PathBuf, why: String },
}

/// `ioctl(NS_GET_NSTYPE)`: the type of namespace a namespace file refers to.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Opens the namespace file at `path` and checks it is a network namespace.
/// `follow`: whether a final symlink may be followed (only `/proc`'s
/// namespace links are meant).
fn open_net_namespace(path: &Path, follow: bool) -> Result<File, NetnsError> {
    let not = |why: String| NetnsError::NotANamespace {
        path: path.to_owned(),
        why,
    };
    if follow {
        let meta = std::fs::symlink_metadata(path).map_err(|e| not(e.to_string()))?;
        let proc_link = path.starts_with("/proc")
            && path.file_name().is_some_and(|n| n == "net")
            && path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == "ns");
        if meta.file_type().is_symlink() && !proc_link {
            return Err(not("a symlink (give the namespace file itself)".to_owned()));
        }
    }
    if let Some(why) = crate::config::not_a_namespace_file(path) {
        return Err(not(why));
    }
    // Never blocking: a FIFO (or a device) must not hold the enforcement
    // thread in open(2), which it would before any check below.
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    options.custom_flags(flags);
    let file = options.open(path).map_err(|e| not(e.to_string()))?;
    let kind = file.metadata().map_err(|e| not(e.to_string()))?.file_type();
    if !kind.is_file() {
        return Err(not(format!(
            "{} (not a namespace file)",
            crate::config::describe_kind(kind)
        )));
    }
    // SAFETY: an ioctl without argument on a descriptor this function owns.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    if kind != libc::CLONE_NEWNET {
        return Err(not("not a network namespace".to_owned()));
    }
    Ok(file)
}

/// While alive, the current thread is in another network namespace; dropping
/// it returns the thread to the namespace it was in.
///
/// A namespace belongs to a thread (`setns` moves only the caller), so the
/// guard is neither `Send` nor `Sync`: it must be dropped on the thread
/// that entered.
pub struct NetnsGuard {
    original: File,
    _thread_bound: PhantomData<*const ()>,
}

impl NetnsGuard {
    /// Enters `/run/netns/NAME`, or the namespace file `NAME` when it is an
    /// absolute path (the rules file's `netns_path`).
    pub fn enter(name: &str) -> Result<Self, NetnsError> {
        let original = File::open("/proc/thread-self/ns/net").map_err(NetnsError::Own)?;
        let target = if name.starts_with('/') {
            open_net_namespace(Path::new(name), true)?
        } else {
            let path = PathBuf::from("/run/netns").join(name);
            if !path.exists() {
                return Err(NetnsError::NotFound {
                    name: name.to_owned(),
                    path,
                });
            }
            open_net_namespace(&path, false)?
        };
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            name: name.to_owned(),
            source,
        })?;
        Ok(Self {
            original,
            _thread_bound: PhantomData,
        })
    }

    /// Enters `name` when given; stays put otherwise.
    pub fn enter_opt(name: Option<&str>) -> Result<Option<Self>, NetnsError> {
        name.map(Self::enter).transpose()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.original, CloneFlags::CLONE_NEWNET) {
            // Staying in the wrong namespace would make every later attach
            // land on the wrong interface: better to stop this thread. A
            // thread already unwinding is stopping anyway, and a second
            // panic would abort the whole process.
            if std::thread::panicking() {
                log::error!("cannot return to the original network namespace: {e}");
            } else {
                panic!("cannot return to the original network namespace: {e}");
            }
        }
    }
}

/// Which network namespace a path named when an instance was attached
/// there: the namespace's device and inode, and for a `/proc/PID/...`
/// path the process's start time. A namespace's inode number is reused
/// once it is freed, and a PID once its process is gone: together they
/// tell the container's namespace from one a later process (any user's,
/// with the container's old PID) made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
    /// `/proc/PID/stat`'s start time (clock ticks after boot).
    pub started: Option<u64>,
}

impl NetnsId {
    /// The namespace `path` names now, if it can be looked at.
    pub fn of(path: &str) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(path).ok()?;
        let started = match proc_pid(path) {
            Some(pid) => Some(start_time(pid)?),
            None => None,
        };
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            started,
        })
    }
}

/// The PID of a `/proc/PID/...` path.
fn proc_pid(path: &str) -> Option<u32> {
    path.strip_prefix("/proc/")?.split('/').next()?.parse().ok()
}

/// Field 22 of `/proc/PID/stat`, read after the command name (which may
/// hold spaces and parentheses).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow the name; the start time is the 22nd field.
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod identity_tests {
    use super::NetnsId;

    #[test]
    fn a_proc_path_carries_its_process_start_time() {
        let own = NetnsId::of("/proc/self/ns/net").expect("own namespace");
        assert_eq!(own.started, None, "/proc/self is not a PID");
        let pid = std::process::id();
        let by_pid = NetnsId::of(&format!("/proc/{pid}/ns/net")).expect("by PID");
        assert_eq!((by_pid.dev, by_pid.ino), (own.dev, own.ino));
        assert!(by_pid.started.is_some_and(|t| t > 0));
    }
}

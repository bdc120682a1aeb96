//! Entering a named network namespace (`ip netns add NAME`) for the current
//! thread, and coming back.

use std::{fs::File, marker::PhantomData, path::PathBuf};

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
    /// Enters `/run/netns/NAME`.
    pub fn enter(name: &str) -> Result<Self, NetnsError> {
        let original = File::open("/proc/thread-self/ns/net").map_err(NetnsError::Own)?;
        let path = PathBuf::from("/run/netns").join(name);
        let target = File::open(&path).map_err(|_| NetnsError::NotFound {
            name: name.to_owned(),
            path: path.clone(),
        })?;
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

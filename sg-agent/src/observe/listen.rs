//! Accepting connections without letting the peer decide how many: every
//! listener of the agent (the control socket, the metrics endpoint) holds
//! at most a bounded number of connections at once, and waits for one to
//! end before it accepts another (the kernel's backlog holds the rest, at
//! no descriptor of ours). An accept that fails (out of descriptors, say)
//! is retried after a pause that doubles up to a second, never in a loop
//! that spins: the descriptors the enforcement thread needs to follow its
//! instances are never the listeners' to take.

use std::{sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections one listener serves at once.
pub const MAX_CONNECTIONS: usize = 64;

/// The first pause after a failed accept; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_secs(1);

pub struct Gate {
    permits: Arc<Semaphore>,
    pause: Duration,
    what: &'static str,
}

impl Gate {
    pub fn new(what: &'static str, max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            pause: FIRST_PAUSE,
            what,
        }
    }

    /// The next connection `accept` gives, with the permit its handler
    /// holds for as long as it serves it.
    pub async fn next<T, F, Fut>(&mut self, mut accept: F) -> (T, OwnedSemaphorePermit)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::io::Result<T>>,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the gate's semaphore is never closed");
        loop {
            match accept().await {
                Ok(conn) => {
                    self.pause = FIRST_PAUSE;
                    return (conn, permit);
                }
                Err(e) => {
                    if self.pause == FIRST_PAUSE {
                        log::warn!(
                            "{}: accepting a connection failed ({e}); retrying in \
                             backed-off pauses",
                            self.what
                        );
                    }
                    tokio::time::sleep(self.pause).await;
                    self.pause = (self.pause * 2).min(MAX_PAUSE);
                }
            }
        }
    }
}

/// Raises this process's soft limit of open descriptors to its hard limit
/// (the agent holds a few for each instance: its maps, programs and links,
/// and systemd's default soft limit of 1,024 is reached at about a hundred
/// instances). Returns the limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return 0;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}

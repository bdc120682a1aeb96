//! Events for the rules file, through inotify watches on the directories
//! that hold it.
//!
//! An event here means only "look again": the agent compares the file's
//! stamp and digest with what it runs ([`crate::config::RulesFile`]), so an
//! event too many costs a `stat`, and one too few is caught by its polling
//! tick. What the watch must survive:
//!
//! * editors that write a new file and rename it over the old one (an event
//!   in the directory, not on the file);
//! * a symlink swap, as Kubernetes updates a mounted `ConfigMap`: the path
//!   is a symlink through `..data`, which is replaced by a rename, so every
//!   event in the directory counts, whatever its name;
//! * the directory itself being deleted or replaced: its watch is dropped
//!   by the kernel, and is added again, by path, as soon as it exists;
//! * a symlink to a file elsewhere: the target's directory is watched too;
//! * a queue overflow: events were lost, so look again.

use std::{
    collections::BTreeMap,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the rules file path {} names no file", .0.display())]
    NoFileName(PathBuf),
    #[error("inotify: {0}")]
    Init(#[source] std::io::Error),
    #[error("starting the watch thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// How long the watch waits before trying again to watch a directory that
/// is missing (being replaced).
const RETRY_MS: u16 = 100;

/// Events for `path`: a message whenever the file may have changed.
pub fn watch_file(path: &Path) -> Result<mpsc::UnboundedReceiver<()>, WatchError> {
    if path.file_name().is_none() {
        return Err(WatchError::NoFileName(path.to_owned()));
    }
    let inotify = Inotify::init().map_err(WatchError::Init)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watch = Watch {
        path: path.to_owned(),
        inotify,
        dirs: BTreeMap::new(),
    };
    watch.refresh();
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || watch.run(&tx))
        .map_err(WatchError::Thread)?;
    Ok(rx)
}

struct Watch {
    path: PathBuf,
    inotify: Inotify,
    /// The directories watched, and the watch on each.
    dirs: BTreeMap<PathBuf, WatchDescriptor>,
}

impl Watch {
    /// The directories to watch: the path's own, and the directory of the
    /// file it resolves to when that is elsewhere (a symlink).
    fn wanted(&self) -> Vec<PathBuf> {
        let parent = |p: &Path| {
            p.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_owned()
        };
        let mut dirs = vec![parent(&self.path)];
        if let Ok(target) = std::fs::canonicalize(&self.path) {
            let dir = parent(&target);
            if std::fs::canonicalize(&dirs[0]).ok().as_ref() != Some(&dir) {
                dirs.push(dir);
            }
        }
        dirs
    }

    /// Watches what is wanted now, drops what is not. Returns whether every
    /// wanted directory is watched.
    fn refresh(&mut self) -> bool {
        let wanted = self.wanted();
        let stale: Vec<PathBuf> = self
            .dirs
            .keys()
            .filter(|d| !wanted.contains(d))
            .cloned()
            .collect();
        for dir in stale {
            if let Some(wd) = self.dirs.remove(&dir) {
                let _ = self.inotify.watches().remove(wd);
            }
        }
        let mut complete = true;
        for dir in wanted {
            if self.dirs.contains_key(&dir) {
                continue;
            }
            let mask = WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::ATTRIB
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF;
            match self.inotify.watches().add(&dir, mask) {
                Ok(wd) => {
                    self.dirs.insert(dir, wd);
                }
                Err(e) => {
                    log::debug!("watching {}: {e}; trying again", dir.display());
                    complete = false;
                }
            }
        }
        complete
    }

    fn run(mut self, tx: &mpsc::UnboundedSender<()>) {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let mut buf = [0u8; 4096];
        let mut complete = true;
        loop {
            // Wait for events; while a directory is missing, wake up to try
            // watching it again.
            let timeout = if complete {
                PollTimeout::NONE
            } else {
                PollTimeout::from(RETRY_MS)
            };
            let ready = {
                let mut fds = [PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, timeout)
            };
            let mut look_again = false;
            let mut lost = false;
            if matches!(ready, Ok(n) if n > 0) {
                let events = match self.inotify.read_events(&mut buf) {
                    Ok(events) => events,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => {
                        log::error!("the watch on the rules file failed ({e}): polling only");
                        return;
                    }
                };
                for e in events {
                    look_again = true;
                    if e.mask.contains(EventMask::Q_OVERFLOW) {
                        log::warn!("the watch's event queue overflowed: looking at the file again");
                    }
                    if e.mask.intersects(
                        EventMask::IGNORED | EventMask::DELETE_SELF | EventMask::MOVE_SELF,
                    ) {
                        // The directory went (or moved): its watch no
                        // longer sees the path.
                        self.dirs.retain(|_, wd| *wd != e.wd);
                        if e.mask.contains(EventMask::MOVE_SELF) {
                            let _ = self.inotify.watches().remove(e.wd.clone());
                        }
                        lost = true;
                    }
                }
            }
            if lost || !complete || look_again {
                let was_complete = complete;
                complete = self.refresh();
                if complete && !was_complete {
                    log::info!("watching the rules file's directory again");
                    look_again = true;
                }
            }
            if look_again && tx.send(()).is_err() {
                return;
            }
        }
    }
}

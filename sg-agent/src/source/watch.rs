//! Events for the rules file, through an inotify watch on its directory.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("the rules file path {} names no file", .0.display())]
    NoFileName(PathBuf),
    #[error("inotify: {0}")]
    Init(#[source] std::io::Error),
    #[error("watching {}: {source}", dir.display())]
    Watch {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the watch thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Events for `path`, watched through its directory so that editors that
/// write a new file and rename it over the old one are seen: a rename into
/// place, or a writer closing the file (never mid-write).
pub fn watch_file(path: &Path) -> Result<mpsc::UnboundedReceiver<()>, WatchError> {
    use inotify::{Inotify, WatchMask};
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let name = path
        .file_name()
        .ok_or_else(|| WatchError::NoFileName(path.to_owned()))?
        .to_owned();
    let inotify = Inotify::init().map_err(WatchError::Init)?;
    inotify
        .watches()
        .add(&dir, WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO)
        .map_err(|source| WatchError::Watch {
            dir: dir.clone(),
            source,
        })?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("watch".into())
        .spawn(move || {
            let mut inotify = inotify;
            let mut buf = [0u8; 4096];
            loop {
                let Ok(events) = inotify.read_events_blocking(&mut buf) else {
                    return;
                };
                for e in events {
                    if e.name == Some(name.as_os_str()) && tx.send(()).is_err() {
                        return;
                    }
                }
            }
        })
        .map_err(WatchError::Thread)?;
    Ok(rx)
}

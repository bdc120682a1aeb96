//! The control socket: a Unix socket under /run/sg-agent/ (root only) where
//! the running agent answers `sg-agent status` and `sg-agent flows`.
//!
//! One request per connection, one JSON object per line: the client sends
//! a [`Request`], the agent answers with [`Reply`] lines (one for a status,
//! a stream for `flows --follow`, until the client goes).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, oneshot},
};

use super::{
    flowlog::{Action, Record},
    status::Status,
};
use crate::libvirt::DomainNic;

pub const DEFAULT_SOCKET: &str = "/run/sg-agent/control.sock";

/// The longest request line read.
const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request, and the agent to answer
/// a status.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    Status,
    /// Flow-log records as each interval ends, filtered; with `recent`,
    /// the last ones the agent holds (at most [`RECENT`]), then the end.
    Flows {
        instance: Option<String>,
        action: Option<Action>,
        #[serde(default)]
        recent: bool,
        /// A record per packet event as the agent drains it (`flows
        /// --live`), flow logs or not; every instance reports its drops
        /// while a live follower is there.
        #[serde(default)]
        live: bool,
    },
    /// libvirt's hook (`sg-agent libvirt-hook`): a domain is starting, its
    /// CPUs not yet running (`nics`: its taps and MAC addresses; the
    /// instances on them are attached before the answer), or it stopped
    /// (`nics` is `None`).
    Libvirt {
        domain: String,
        nics: Option<Vec<DomainNic>>,
    },
    /// `sg-agent confirm`: keep the policy put in force under `run
    /// --confirm-within` (else it is rolled back).
    Confirm,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Status(Box<Status>),
    Record(Box<Record>),
    /// Followers fell behind by this many records (dropped, not waited for).
    Skipped(u64),
    /// A libvirt request done: the instances now enforced on the domain's
    /// NICs (`NAME on IFNAME ...`).
    Enforced(Vec<String>),
    /// A confirmation taken: what is kept.
    Confirmed(String),
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "another sg-agent answers on {0}: stop it first, or give this one its own socket with \
         --control-socket"
    )]
    InUse(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no sg-agent is running here: nothing answers on {0} (start one with `sg-agent run`, or \
         pass the --control-socket it was started with)"
    )]
    NotRunning(PathBuf),
    #[error("the agent answered: {0}")]
    Refused(String),
    #[error("the agent's answer is not understood: {0}")]
    Garbled(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Binds the socket, root only: its directory is created mode 0700 and the
/// socket made 0600. A socket left by an agent that died is replaced; one
/// another agent answers on is not.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io(path))?;
    }
    let listener = UnixListener::bind(path).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    Ok(listener)
}

/// Removes the socket file when dropped (the agent stops).
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How the server asks the enforcement thread for a snapshot.
pub type AskStatus = std::sync::Arc<dyn Fn(oneshot::Sender<Status>) + Send + Sync>;

/// A libvirt domain starting (`nics`) or stopped, for the enforcement
/// thread, with where its answer goes.
#[derive(Debug)]
pub struct DomainEvent {
    pub domain: String,
    pub nics: Option<Vec<DomainNic>>,
    pub reply: oneshot::Sender<Result<Vec<String>, String>>,
}

/// How the server hands a libvirt request to the enforcement thread.
pub type AskDomain = std::sync::Arc<dyn Fn(DomainEvent) + Send + Sync>;

/// How the server hands `sg-agent confirm` to the enforcement thread.
pub type AskConfirm = std::sync::Arc<dyn Fn(oneshot::Sender<Result<String, String>>) + Send + Sync>;

/// How long a libvirt request may take: the instances of a domain loaded
/// and attached (a domain's start waits for it).
const DOMAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The flow-log records the agent keeps for `sg-agent flows` (without
/// `--follow`): the last this many, whatever their instance.
pub const RECENT: usize = 1000;

/// The last [`RECENT`] records.
type Recent = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<Record>>>;

/// Keeps the last [`RECENT`] records of `records` in `recent`.
async fn keep_recent(mut records: broadcast::Receiver<Record>, recent: Recent) {
    loop {
        match records.recv().await {
            Ok(r) => {
                let mut held = recent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if held.len() == RECENT {
                    held.pop_front();
                }
                held.push_back(r);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Serves connections until the runtime stops.
pub async fn serve(
    listener: UnixListener,
    ask: AskStatus,
    domain: AskDomain,
    confirm: AskConfirm,
    (records, live): (broadcast::Sender<Record>, super::LiveFeed),
) {
    let mut gate = super::listen::Gate::new("control socket", super::listen::MAX_CONNECTIONS);
    let recent = Recent::default();
    tokio::spawn(keep_recent(records.subscribe(), recent.clone()));
    loop {
        let ((stream, _), permit) = gate.next(|| listener.accept()).await;
        let ask = ask.clone();
        let domain = domain.clone();
        let confirm = confirm.clone();
        let records = (records.subscribe(), recent.clone(), live.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = answer(stream, &ask, &domain, &confirm, records).await {
                log::debug!("control socket: {e}");
            }
        });
    }
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_string(reply).expect("replies serialize");
    line.push('\n');
    w.write_all(line.as_bytes()).await
}

async fn answer(
    stream: UnixStream,
    ask: &AskStatus,
    ask_domain: &AskDomain,
    ask_confirm: &AskConfirm,
    (records, recent, feed): (broadcast::Receiver<Record>, Recent, super::LiveFeed),
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = AsyncBufReader::new(read.take(MAX_REQUEST as u64));
    let mut line = String::new();
    match tokio::time::timeout(TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Ok(()),
    }
    let request: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            return send(&mut write, &Reply::Error(format!("not a request: {e}"))).await;
        }
    };
    match request {
        Request::Libvirt { domain, nics } => {
            let (reply, rx) = oneshot::channel();
            ask_domain(DomainEvent {
                domain,
                nics,
                reply,
            });
            let reply = match tokio::time::timeout(DOMAIN_TIMEOUT, rx).await {
                Ok(Ok(Ok(enforced))) => Reply::Enforced(enforced),
                Ok(Ok(Err(e))) => Reply::Error(e),
                _ => Reply::Error(format!(
                    "the agent did not attach the domain's instances within {} s",
                    DOMAIN_TIMEOUT.as_secs()
                )),
            };
            send(&mut write, &reply).await
        }
        Request::Confirm => {
            let (tx, rx) = oneshot::channel();
            ask_confirm(tx);
            let reply = match tokio::time::timeout(TIMEOUT, rx).await {
                Ok(Ok(Ok(what))) => Reply::Confirmed(what),
                Ok(Ok(Err(e))) => Reply::Error(e),
                _ => Reply::Error("the agent did not answer within 5 s (a reload running?)".into()),
            };
            send(&mut write, &reply).await
        }
        Request::Status => {
            let (tx, rx) = oneshot::channel();
            ask(tx);
            let reply = match tokio::time::timeout(TIMEOUT, rx).await {
                Ok(Ok(status)) => Reply::Status(Box::new(status)),
                _ => Reply::Error("the agent did not answer within 5 s (a reload running?)".into()),
            };
            send(&mut write, &reply).await
        }
        Request::Flows {
            instance,
            action,
            recent: want_recent,
            live: false,
        } => {
            let reader = reader.into_inner().into_inner();
            let held = want_recent.then_some(&recent);
            flows(
                reader,
                write,
                ask,
                (instance, action),
                held,
                (records, false),
            )
            .await
        }
        Request::Flows {
            instance,
            action,
            live: true,
            ..
        } => {
            let reader = reader.into_inner().into_inner();
            // Counted while it follows: the enforcement thread turns every
            // instance's drop reports on within its next tick.
            let _following = LiveFollower::new(&feed);
            let records = feed.records.subscribe();
            flows(
                reader,
                write,
                ask,
                (instance, action),
                None,
                (records, true),
            )
            .await
        }
    }
}

/// A live follower, counted for as long as it is there.
struct LiveFollower(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl LiveFollower {
    fn new(feed: &super::LiveFeed) -> Self {
        feed.followers
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(std::sync::Arc::clone(&feed.followers))
    }
}

impl Drop for LiveFollower {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `sg-agent flows`: the records `instance` and `action` select, those the
/// agent holds (`recent`) or, until the follower goes, each as it comes.
async fn flows(
    mut reader: tokio::net::unix::OwnedReadHalf,
    mut write: tokio::net::unix::OwnedWriteHalf,
    ask: &AskStatus,
    (instance, action): (Option<String>, Option<Action>),
    recent: Option<&Recent>,
    (mut records, live): (broadcast::Receiver<Record>, bool),
) -> std::io::Result<()> {
    // A status first: whether flow logs are on, which instances run.
    let (tx, rx) = oneshot::channel();
    ask(tx);
    let Ok(Ok(status)) = tokio::time::timeout(TIMEOUT, rx).await else {
        let e = "the agent did not answer within 5 s (a reload running?)";
        return send(&mut write, &Reply::Error(e.into())).await;
    };
    if status.agent.flow_log.is_none() && !live {
        let e = "this agent runs without flow logs: restart it with --flow-log PATH (or \
                 `-` for its standard output) to follow flows, or follow them live (--live)";
        return send(&mut write, &Reply::Error(e.into())).await;
    }
    if let Some(name) = &instance
        && !status.instances.iter().any(|i| i.name == *name)
    {
        let e = format!("no instance {name} is enforced by this agent");
        return send(&mut write, &Reply::Error(e)).await;
    }
    let wanted = |r: &Record| {
        instance.as_ref().is_none_or(|i| *i == r.instance)
            && action.is_none_or(|a| Some(a) == r.action)
    };
    if let Some(recent) = recent {
        let held: Vec<Record> = recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|r| wanted(r))
            .cloned()
            .collect();
        for r in held {
            send(&mut write, &Reply::Record(Box::new(r))).await?;
        }
        return Ok(());
    }
    // Until the follower goes: its end closing (a read returns nothing)
    // ends this at once, not at the next matching record.
    let mut gone = [0u8; 1];
    loop {
        let record = tokio::select! {
            r = records.recv() => r,
            read = reader.read(&mut gone) => match read {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            },
        };
        let reply = match record {
            Ok(r) => {
                if !wanted(&r) {
                    continue;
                }
                Reply::Record(Box::new(r))
            }
            Err(broadcast::error::RecvError::Lagged(n)) => Reply::Skipped(n),
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        send(&mut write, &reply).await?;
    }
}

/// A client connection: sends `request`, returns a reader of reply lines.
fn request(path: &Path, request: &Request) -> Result<BufReader<StdUnixStream>, ControlError> {
    let mut stream = StdUnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            ControlError::NotRunning(path.to_owned())
        }
        _ => ControlError::Io {
            path: path.to_owned(),
            source: e,
        },
    })?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io(path))?;
    Ok(BufReader::new(stream))
}

fn read_reply(path: &Path, reader: &mut impl BufRead) -> Result<Option<Reply>, ControlError> {
    let mut line = String::new();
    if reader.read_line(&mut line).map_err(io(path))? == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| ControlError::Garbled(format!("{e}: {}", line.trim())))
}

/// Confirms the policy in force of the agent on `path` (`run
/// --confirm-within`): what was kept.
pub fn confirm(path: &Path) -> Result<String, ControlError> {
    let mut reader = request(path, &Request::Confirm)?;
    match read_reply(path, &mut reader)? {
        Some(Reply::Confirmed(what)) => Ok(what),
        Some(Reply::Error(e)) => Err(ControlError::Refused(e)),
        other => Err(ControlError::Garbled(format!("{other:?}"))),
    }
}

/// Asks the agent on `path` for its status.
pub fn status(path: &Path) -> Result<Status, ControlError> {
    let mut reader = request(path, &Request::Status)?;
    match read_reply(path, &mut reader)? {
        Some(Reply::Status(s)) => Ok(*s),
        Some(Reply::Error(e)) => Err(ControlError::Refused(e)),
        other => Err(ControlError::Garbled(format!("{other:?}"))),
    }
}

/// How `sg-agent flows` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Following {
    /// The last records the agent holds, then the end.
    Recent,
    /// Flow-log records as each interval ends.
    Intervals,
    /// A record per packet event, as the agent drains them.
    Live,
}

/// Follows flow-log records as `how` says, calling `each` until it returns
/// false or the agent goes (or has sent them all).
pub fn follow(
    path: &Path,
    (instance, action): (Option<String>, Option<Action>),
    how: Following,
    mut each: impl FnMut(&Reply) -> bool,
) -> Result<(), ControlError> {
    let request_flows = Request::Flows {
        instance,
        action,
        recent: how == Following::Recent,
        live: how == Following::Live,
    };
    let mut reader = request(path, &request_flows)?;
    while let Some(reply) = read_reply(path, &mut reader)? {
        if let Reply::Error(e) = reply {
            return Err(ControlError::Refused(e));
        }
        if !each(&reply) {
            break;
        }
    }
    Ok(())
}

/// Tells the agent on `path` that a libvirt domain starts (with its NICs)
/// or stopped; returns the instances it enforces on the domain's NICs.
pub fn libvirt(
    path: &Path,
    domain: &str,
    nics: Option<Vec<DomainNic>>,
) -> Result<Vec<String>, ControlError> {
    let mut reader = request(
        path,
        &Request::Libvirt {
            domain: domain.to_owned(),
            nics,
        },
    )?;
    reader
        .get_ref()
        .set_read_timeout(Some(DOMAIN_TIMEOUT + TIMEOUT))
        .map_err(io(path))?;
    match read_reply(path, &mut reader)? {
        Some(Reply::Enforced(names)) => Ok(names),
        Some(Reply::Error(e)) => Err(ControlError::Refused(e)),
        other => Err(ControlError::Garbled(format!("{other:?}"))),
    }
}

//! The description the API reads and changes: the rules file. Every change
//! is one transaction: read the file, change it, admit the result exactly
//! as `run` would, write it atomically, have the agent put it in force,
//! and answer only then; a change the agent does not put in force is
//! undone (the file written back as it was).

use std::{path::PathBuf, sync::Arc, time::Duration};

use super::{
    edit::{Doc, write_atomically},
    error::ApiError,
    view::{Account, View},
};
use crate::{
    config::{self, Vpc},
    policy::{Enforcer, Refusal, admit_as},
};

/// What the enforcement thread answers to "put the file in force now".
#[derive(Debug, Clone)]
pub struct Applied {
    /// SHA-256 of the description in force after the reload.
    pub in_force: [u8; 32],
    /// etcd's revision of the description in force.
    pub revision: Option<i64>,
    /// Why the reload was rejected, if it was.
    pub error: Option<String>,
}

/// Asks the enforcement thread to reload now, and to answer once done.
pub type AskApply = Arc<dyn Fn(tokio::sync::oneshot::Sender<Applied>) + Send + Sync>;

/// How long a change may take to be put in force before the API gives up
/// on it (and undoes it).
const APPLY_DEADLINE: Duration = Duration::from_secs(30);

/// Where the description lives.
pub enum Backend {
    /// The rules file.
    File(PathBuf),
    /// etcd's key (`run --etcd`): changes are compare-and-swapped on the
    /// revision read, so two writers never lose each other's change.
    #[cfg(feature = "daemon")]
    Etcd(Box<EtcdBackend>),
}

/// etcd's description, and a client connected on first use.
#[cfg(feature = "daemon")]
pub struct EtcdBackend {
    pub opts: crate::source::etcd::EtcdOptions,
    pub client: tokio::sync::Mutex<Option<etcd_client::Client>>,
}

pub struct Store {
    backend: Backend,
    /// The path diagnostics name (the file, or etcd's key).
    pub path: PathBuf,
    /// `run --node`.
    pub node: Option<String>,
    /// `run --allow-empty`.
    pub allow_empty: bool,
    pub max_bytes: u64,
    pub account: Account,
    apply: AskApply,
    /// One commit at a time: each reads what the one before wrote.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Changes waiting for the next commit.
    queue: std::sync::Mutex<Vec<Queued>>,
    /// Itself, for the commits it runs as tasks of their own.
    me: std::sync::Weak<Store>,
}

/// The file as read, and as the API sees it.
pub struct Snapshot {
    pub text: String,
    pub vpc: Vpc,
}

impl Snapshot {
    pub fn view<'a>(&'a self, account: &'a Account) -> View<'a> {
        View::new(&self.vpc, account)
    }
}

impl Store {
    pub fn new(
        backend: Backend,
        node: Option<String>,
        allow_empty: bool,
        max_bytes: u64,
        account: Account,
        apply: AskApply,
    ) -> Arc<Self> {
        let path = match &backend {
            Backend::File(p) => p.clone(),
            #[cfg(feature = "daemon")]
            Backend::Etcd(e) => PathBuf::from(e.opts.key()),
        };
        // An etcd description is every host's: judged whole, as `push`
        // judges it.
        let (node, allow_empty) = match backend {
            Backend::File(_) => (node, allow_empty),
            #[cfg(feature = "daemon")]
            Backend::Etcd(_) => (None, true),
        };
        Arc::new_cyclic(|me| Self {
            backend,
            path,
            node,
            allow_empty,
            max_bytes,
            account,
            apply,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            queue: std::sync::Mutex::new(Vec::new()),
            me: me.clone(),
        })
    }

    /// The description now: every instance (any node's), every group.
    pub async fn read(&self) -> Result<Snapshot, ApiError> {
        let (text, _) = self.read_text().await?;
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || snapshot(&path, text))
            .await
            .map_err(|e| ApiError::internal(format!("reading the rules: {e}")))?
    }

    /// The description's text, and (etcd) the revision that wrote it.
    async fn read_text(&self) -> Result<(String, i64), ApiError> {
        match &self.backend {
            Backend::File(path) => {
                let path = path.clone();
                let max_bytes = self.max_bytes;
                tokio::task::spawn_blocking(move || {
                    let policy = config::ReadPolicy {
                        max_bytes,
                        strict_owner: false,
                    };
                    config::read_with(&path, policy)
                        .map(|f| (f.text, 0))
                        .map_err(|e| ApiError::internal(format!("reading the rules file: {e}")))
                })
                .await
                .map_err(|e| ApiError::internal(format!("reading the rules file: {e}")))?
            }
            #[cfg(feature = "daemon")]
            Backend::Etcd(e) => {
                let opts = &e.opts;
                let mut client = self.etcd(opts, &e.client).await?;
                let c = client.as_mut().ok_or_else(|| ApiError::internal("etcd"))?;
                match crate::source::etcd::read(c, opts).await {
                    Ok((Some(snap), _)) => Ok((snap.text, snap.mod_revision)),
                    Ok((None, _)) => Err(ApiError::internal(format!(
                        "{} holds no description yet: `sg-agent push` one first",
                        opts.key()
                    ))),
                    Err(e) => {
                        *client = None;
                        Err(ApiError::internal(format!("etcd: {e}")))
                    }
                }
            }
        }
    }

    /// The etcd client, connected on first use (and again after an error).
    #[cfg(feature = "daemon")]
    async fn etcd<'a>(
        &self,
        opts: &crate::source::etcd::EtcdOptions,
        client: &'a tokio::sync::Mutex<Option<etcd_client::Client>>,
    ) -> Result<tokio::sync::MutexGuard<'a, Option<etcd_client::Client>>, ApiError> {
        let mut guard = client.lock().await;
        if guard.is_none() {
            *guard = Some(
                crate::source::etcd::connect(opts)
                    .await
                    .map_err(|e| ApiError::internal(format!("etcd: {e}")))?,
            );
        }
        Ok(guard)
    }

    /// Writes `new` where `old` (read at `revision`) was; `IncorrectState`
    /// if someone else changed it since.
    /// The revision written (etcd; 0 for the file).
    #[cfg_attr(
        not(feature = "daemon"),
        expect(unused_variables, reason = "etcd's revision")
    )]
    async fn write(&self, old: &str, revision: i64, new: &str) -> Result<i64, ApiError> {
        let changed = || {
            ApiError::new(
                "IncorrectState",
                "the rules changed while this request was being made; try again",
            )
        };
        match &self.backend {
            Backend::File(path) => {
                let (path, old, new) = (path.clone(), old.to_owned(), new.to_owned());
                tokio::task::spawn_blocking(move || {
                    // A hand edit made since the read is not overwritten.
                    if std::fs::read_to_string(&path).ok().as_deref() != Some(old.as_str()) {
                        return Err(changed());
                    }
                    write_atomically(&path, &new)
                        .map(|()| 0)
                        .map_err(|e| ApiError::internal(format!("writing {}: {e}", path.display())))
                })
                .await
                .map_err(|e| ApiError::internal(format!("writing the rules file: {e}")))?
            }
            #[cfg(feature = "daemon")]
            Backend::Etcd(e) => {
                let opts = &e.opts;
                let mut client = self.etcd(opts, &e.client).await?;
                let c = client.as_mut().ok_or_else(|| ApiError::internal("etcd"))?;
                match crate::source::etcd::compare_and_put(c, opts, revision, new).await {
                    Ok(written) => Ok(written),
                    Err(crate::source::etcd::EtcdError::Conflict { .. }) => Err(changed()),
                    Err(e) => {
                        *client = None;
                        Err(ApiError::internal(format!("etcd: {e}")))
                    }
                }
            }
        }
    }

    /// Runs `change` on the file and puts the result in force; `T` is the
    /// action's answer, given once the kernel enforces the change.
    ///
    /// Changes made while another is being put in force are queued, and
    /// whoever commits next takes them all: each is made on what the one
    /// before wrote and admitted on its own (a refused one is answered
    /// with its error and leaves no trace), then the file is written once
    /// and put in force once, and all of them are answered.
    pub async fn change<T: Send + 'static>(
        &self,
        change: impl FnOnce(&View<'_>, &mut Doc) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = Queued {
            change: Box::new(move |view, doc| change(view, doc).map(|t| Box::new(t) as Made)),
            reply,
        };
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(queued);
        let mut answer = answer;
        // Either another caller's commit answers this change, or this one
        // commits what is queued (this change among them). A caller whose
        // answer has come never waits for a later commit.
        let made = loop {
            tokio::select! {
                biased;
                made = &mut answer => break made,
                one_at_a_time = Arc::clone(&self.writer).lock_owned() => {
                    let batch = std::mem::take(
                        &mut *self
                            .queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner),
                    );
                    // A task of its own, holding the lock: a commit runs to
                    // its end (and answers every change of its batch) even
                    // if this caller goes away (its client disconnected).
                    if !batch.is_empty()
                        && let Some(me) = self.me.upgrade()
                    {
                        let held = one_at_a_time;
                        let _ = tokio::spawn(async move {
                            me.commit(batch).await;
                            drop(held);
                        })
                        .await;
                    }
                }
            }
        };
        let made = made.map_err(|_| ApiError::internal("the change was dropped unanswered"))??;
        made.downcast::<T>()
            .map(|t| *t)
            .map_err(|_| ApiError::internal("a change answered with another type"))
    }

    /// Makes, admits, writes and puts in force a batch of changes, and
    /// answers each.
    async fn commit(&self, batch: Vec<Queued>) {
        log::debug!("EC2 API: committing {} change(s)", batch.len());
        let (old, revision) = match self.read_text().await {
            Ok(v) => v,
            Err(e) => {
                for q in batch {
                    let _ = q.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let path = self.path.clone();
        let account = self.account.clone();
        let (node, allow_empty) = (self.node.clone(), self.allow_empty);
        let base = old.clone();
        let made = tokio::task::spawn_blocking(move || {
            make(&path, &account, node.as_deref(), allow_empty, base, batch)
        })
        .await;
        let Ok((new, answers)) = made else {
            // The batch's senders went with the task: its callers hear
            // "dropped".
            return;
        };
        let failed = if old == new {
            None
        } else {
            match self.write(&old, revision, &new).await {
                Err(e) => Some(e),
                Ok(written) => {
                    log::debug!(
                        "EC2 API: wrote {} (read at revision {revision}, written at {written})",
                        self.path.display()
                    );
                    self.in_force_or_undone(&old, &new, written).await
                }
            }
        };
        for (reply, answer) in answers {
            let answer = match (&failed, answer) {
                (Some(e), Ok(_)) => Err(e.clone()),
                (_, answer) => answer,
            };
            let _ = reply.send(answer);
        }
    }

    /// Waits for `new` (etcd: the revision `written`) to be in force; if it
    /// is not, writes `old` back where nothing else changed it since, and
    /// says why.
    async fn in_force_or_undone(&self, old: &str, new: &str, written: i64) -> Option<ApiError> {
        let why = self.put_in_force(new, written).await.err()?;
        // Undone: the description as it was (unless someone changed it
        // since: then theirs stays), in force again.
        if self.write(new, written, old).await.is_err() {
            log::error!(
                "EC2 API: a change not put in force could not be undone in {}: it holds the \
                 change, the policy in force does not",
                self.path.display()
            );
        }
        let _ = self.put_in_force_any().await;
        Some(ApiError::internal(format!(
            "the change was not put in force, and was undone: {why}"
        )))
    }

    /// Has the agent reload, and checks that what it enforces is `text`
    /// (etcd: the revision `written`, or a later one, which holds it).
    #[cfg_attr(
        not(feature = "daemon"),
        expect(unused_variables, reason = "etcd's revision")
    )]
    async fn put_in_force(&self, text: &str, written: i64) -> Result<(), String> {
        use sha2::Digest as _;
        let want: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
        let deadline = tokio::time::Instant::now() + APPLY_DEADLINE;
        loop {
            let applied = self.put_in_force_any().await?;
            let holds_it = match self.backend {
                Backend::File(_) => applied.in_force == want,
                #[cfg(feature = "daemon")]
                Backend::Etcd(_) => applied.revision.is_some_and(|r| r >= written),
            };
            if holds_it {
                return Ok(());
            }
            if let Some(e) = applied.error {
                return Err(e);
            }
            // etcd: the agent reloads what its watch has seen, which may
            // not hold this write yet.
            if matches!(self.backend, Backend::File(_)) || tokio::time::Instant::now() > deadline {
                return Err("the agent enforces another version of the rules".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn put_in_force_any(&self) -> Result<Applied, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (self.apply)(tx);
        match tokio::time::timeout(APPLY_DEADLINE, rx).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err("the agent is stopping".to_owned()),
            Err(_) => Err(format!(
                "not in force within {} s",
                APPLY_DEADLINE.as_secs()
            )),
        }
    }
}

/// A change's answer, of the action's own type.
type Made = Box<dyn std::any::Any + Send>;

type Reply = tokio::sync::oneshot::Sender<Result<Made, ApiError>>;

/// A change to make: on the description as the API sees it, in the
/// document being edited.
type Change = Box<dyn FnOnce(&View<'_>, &mut Doc) -> Result<Made, ApiError> + Send>;

/// Each change of a batch, and its answer.
type Answers = Vec<(Reply, Result<Made, ApiError>)>;

/// A change waiting for the next commit.
struct Queued {
    change: Change,
    reply: Reply,
}

/// Makes a batch's changes one on top of the other, each admitted on its
/// own (blocking: parsing and compiling). The new text, and each change's
/// answer.
fn make(
    path: &std::path::Path,
    account: &Account,
    node: Option<&str>,
    allow_empty: bool,
    old: String,
    batch: Vec<Queued>,
) -> (String, Answers) {
    let start = snapshot(path, old.clone()).and_then(|s| Doc::parse(&s.text).map(|d| (s.vpc, d)));
    let (mut vpc, mut doc) = match start {
        Ok(v) => v,
        Err(e) => {
            let answers = batch
                .into_iter()
                .map(|q| (q.reply, Err(e.clone())))
                .collect();
            return (old, answers);
        }
    };
    let mut text = old;
    let mut answers = Vec::new();
    for q in batch {
        let mut trial = Doc(doc.0.clone());
        let outcome = (q.change)(&View::new(&vpc, account), &mut trial).and_then(|made| {
            let t = trial.render();
            if t == text {
                return Ok((made, None));
            }
            admit(path, &t, allow_empty, node).map(|v| (made, Some((t, v))))
        });
        match outcome {
            Ok((made, next)) => {
                if let Some((t, v)) = next {
                    text = t;
                    vpc = v;
                    doc = trial;
                }
                answers.push((q.reply, Ok(made)));
            }
            Err(e) => answers.push((q.reply, Err(e))),
        }
    }
    (text, answers)
}

/// A description's text, validated, as the API shows it.
fn snapshot(path: &std::path::Path, text: String) -> Result<Snapshot, ApiError> {
    let vpc = config::from_str(path, &text).map_err(|d| {
        ApiError::internal(format!(
            "the rules do not validate (fix them, or undo the last hand edit):\n{}",
            d.brief()
        ))
    })?;
    Ok(Snapshot { text, vpc })
}

/// The question `run` asks of a file, asked of the one about to be
/// written: a change it would refuse is refused here, with nothing
/// changed.
fn admit(
    path: &std::path::Path,
    text: &str,
    allow_empty: bool,
    node: Option<&str>,
) -> Result<Vpc, ApiError> {
    match admit_as(path, text, allow_empty, Enforcer::Node(node)) {
        Ok((vpc, _)) => Ok(vpc),
        Err(Refusal::Invalid(d)) => Err(ApiError::invalid_value(format!(
            "the change would make the rules file invalid: {}",
            d.brief()
        ))),
        Err(other) => Err(ApiError::invalid_value(format!(
            "the agent would refuse the change: {other}"
        ))),
    }
}

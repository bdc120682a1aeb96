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
    /// Why the reload was rejected, if it was.
    pub error: Option<String>,
}

/// Asks the enforcement thread to reload now, and to answer once done.
pub type AskApply = Arc<dyn Fn(tokio::sync::oneshot::Sender<Applied>) + Send + Sync>;

/// How long a change may take to be put in force before the API gives up
/// on it (and undoes it).
const APPLY_DEADLINE: Duration = Duration::from_secs(30);

pub struct Store {
    pub path: PathBuf,
    /// `run --node`.
    pub node: Option<String>,
    /// `run --allow-empty`.
    pub allow_empty: bool,
    pub max_bytes: u64,
    pub account: Account,
    apply: AskApply,
    /// One change at a time: each reads what the one before wrote.
    writer: tokio::sync::Mutex<()>,
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
        path: PathBuf,
        node: Option<String>,
        allow_empty: bool,
        max_bytes: u64,
        account: Account,
        apply: AskApply,
    ) -> Self {
        Self {
            path,
            node,
            allow_empty,
            max_bytes,
            account,
            apply,
            writer: tokio::sync::Mutex::new(()),
        }
    }

    /// The file now: every instance (any node's), every group.
    pub async fn read(&self) -> Result<Snapshot, ApiError> {
        let path = self.path.clone();
        let max_bytes = self.max_bytes;
        tokio::task::spawn_blocking(move || read_file(&path, max_bytes))
            .await
            .map_err(|e| ApiError::internal(format!("reading the rules file: {e}")))?
    }

    /// Runs `change` on the file and puts the result in force; `T` is the
    /// action's answer, given once the kernel enforces the change.
    pub async fn change<T: Send + 'static>(
        &self,
        change: impl FnOnce(&View<'_>, &mut Doc) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _one_at_a_time = self.writer.lock().await;
        let path = self.path.clone();
        let (max_bytes, account) = (self.max_bytes, self.account.clone());
        let (node, allow_empty) = (self.node.clone(), self.allow_empty);
        let (old, new, answer) = tokio::task::spawn_blocking(move || {
            let snap = read_file(&path, max_bytes)?;
            let mut doc = Doc::parse(&snap.text)?;
            let answer = change(&snap.view(&account), &mut doc)?;
            let new = doc.render();
            admit(&path, &new, allow_empty, node.as_deref())?;
            // The file may have been edited by hand since it was read:
            // that edit is not lost, the change is tried again by the caller.
            if std::fs::read_to_string(&path).ok().as_deref() != Some(snap.text.as_str()) {
                return Err(ApiError::new(
                    "IncorrectState",
                    "the rules file changed while this request was being made; try again",
                ));
            }
            if new != snap.text {
                write_atomically(&path, &new)
                    .map_err(|e| ApiError::internal(format!("writing {}: {e}", path.display())))?;
            }
            Ok::<_, ApiError>((snap.text, new, answer))
        })
        .await
        .map_err(|e| ApiError::internal(format!("changing the rules file: {e}")))??;
        if old == new {
            return Ok(answer);
        }
        match self.put_in_force(&new).await {
            Ok(()) => Ok(answer),
            Err(why) => {
                // Undone: the file as it was, and in force again.
                let path = self.path.clone();
                let restored =
                    tokio::task::spawn_blocking(move || write_atomically(&path, &old)).await;
                if !matches!(restored, Ok(Ok(()))) {
                    log::error!(
                        "EC2 API: a change not put in force could not be undone in {}: the file \
                         holds it, the policy in force does not",
                        self.path.display()
                    );
                }
                let _ = self.put_in_force_any().await;
                Err(ApiError::internal(format!(
                    "the change was not put in force, and was undone: {why}"
                )))
            }
        }
    }

    /// Has the agent reload, and checks that what it enforces is `text`.
    async fn put_in_force(&self, text: &str) -> Result<(), String> {
        use sha2::Digest as _;
        let want: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
        let applied = self.put_in_force_any().await?;
        if applied.in_force == want {
            return Ok(());
        }
        Err(applied
            .error
            .unwrap_or_else(|| "the agent enforces another version of the file".to_owned()))
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

fn read_file(path: &std::path::Path, max_bytes: u64) -> Result<Snapshot, ApiError> {
    let policy = config::ReadPolicy {
        max_bytes,
        strict_owner: false,
    };
    let file = config::read_with(path, policy)
        .map_err(|e| ApiError::internal(format!("reading the rules file: {e}")))?;
    let vpc = config::from_str(path, &file.text).map_err(|d| {
        ApiError::internal(format!(
            "the rules file does not validate (fix it, or undo the last hand edit):\n{}",
            d.brief()
        ))
    })?;
    Ok(Snapshot {
        text: file.text,
        vpc,
    })
}

/// The question `run` asks of a file, asked of the one about to be
/// written: a change it would refuse is refused here, with nothing
/// changed.
fn admit(
    path: &std::path::Path,
    text: &str,
    allow_empty: bool,
    node: Option<&str>,
) -> Result<(), ApiError> {
    match admit_as(path, text, allow_empty, Enforcer::Node(node)) {
        Ok(_) => Ok(()),
        Err(Refusal::Invalid(d)) => Err(ApiError::invalid_value(format!(
            "the change would make the rules file invalid: {}",
            d.brief()
        ))),
        Err(other) => Err(ApiError::invalid_value(format!(
            "the agent would refuse the change: {other}"
        ))),
    }
}

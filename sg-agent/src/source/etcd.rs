//! The VPC description in etcd: one key, `PREFIX/vpc`, holding the same
//! TOML text a rules file holds.
//!
//! One key, not one per group and instance: a description is validated
//! and put in force whole (a group reference or a quota spans groups), so
//! an agent needs every part at one revision anyway; one key makes each
//! push one revision, one watch event, one compare-and-swap, and leaves no
//! moment in which a half-written set of keys is the latest. What it
//! costs, a whole description per change, is measured in BENCHMARKS.md
//! (10,000 rules: well under etcd's 1.5 MiB request bound).
//!
//! [`watch`] keeps the latest description in [`Shared`] and tells the
//! agent when it changed; when etcd goes away the agent keeps enforcing
//! what it has, and this module reconnects with backoff and re-reads the
//! whole description (as after a compacted watch) before watching again.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    TlsOptions, Txn, TxnOp, WatchOptions,
};

/// Where the description lives and how to reach it.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    /// The key prefix (`/sg-agent` by default); the description is
    /// `PREFIX/vpc`.
    pub prefix: String,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl EtcdOptions {
    /// The key holding the description.
    pub fn key(&self) -> String {
        format!("{}/vpc", self.prefix.trim_end_matches('/'))
    }

    /// How diagnostics name the description: `etcd:/sg-agent/vpc`.
    pub fn display(&self) -> String {
        format!("etcd:{}", self.key())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error(
        "cannot reach etcd at {endpoints} (start etcd there or correct --etcd; `run \
         --etcd-wait` waits for it)"
    )]
    Unreachable {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("reading {}", path.display())]
    Tls {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--etcd-cert and --etcd-key go together: give both")]
    HalfIdentity,
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error(
        "no VPC description at {0} in etcd yet: push one with `sg-agent push FILE --etcd URL` \
         (`run --etcd-wait` waits for it)"
    )]
    Missing(String),
    #[error(
        "the value at {key} in etcd (revision {revision}) is not UTF-8 text, so no description: \
         replace it with a good one, `sg-agent push FILE --force`"
    )]
    NotText { key: String, revision: i64 },
    #[error(
        "the description in etcd changed while this push was under way (read at revision \
         {read}, now {now}): `sg-agent pull` it, merge your change, and push again"
    )]
    Conflict { read: i64, now: i64 },
}

/// The first line `push --allow-detach` gives a description: it may stop
/// enforcing more instances at once than a host allows otherwise
/// ([`crate::agent::remote`]).
pub const ALLOW_DETACH: &str = "# sg-agent push --allow-detach";

/// Whether the description carries [`ALLOW_DETACH`].
pub fn allows_detach(text: &str) -> bool {
    text.lines().next() == Some(ALLOW_DETACH)
}

/// The description as one revision of etcd has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub text: String,
    /// The revision that last wrote it.
    pub mod_revision: i64,
}

/// Connects (the connection is made lazily by gRPC; the first request
/// tells whether etcd answers).
pub async fn connect(opts: &EtcdOptions) -> Result<Client, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
        // Keep-alives on the idle watch too: a dead etcd is noticed within
        // seconds even when nothing is pushed.
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_keep_alive_while_idle(true);
    if let (Some(user), password) = (&opts.user, &opts.password) {
        options = options.with_user(user, password.clone().unwrap_or_default());
    }
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| EtcdError::Tls {
            path: path.clone(),
            source,
        })
    };
    if opts.cacert.is_some() || opts.cert.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &opts.cacert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&opts.cert, &opts.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            (None, None) => {}
            _ => return Err(EtcdError::HalfIdentity),
        }
        options = options.with_tls(tls);
    }
    Client::connect(&opts.endpoints, Some(options))
        .await
        .map_err(|source| EtcdError::Unreachable {
            endpoints: opts.endpoints.join(","),
            source,
        })
}

/// The description now (`None`: nothing pushed yet), and the store's
/// revision it was read at (a watch from the next one misses nothing).
pub async fn read(
    client: &mut Client,
    opts: &EtcdOptions,
) -> Result<(Option<Snapshot>, i64), EtcdError> {
    let key = opts.key();
    let resp = client
        .get(key.as_bytes(), None)
        .await
        .map_err(|source| EtcdError::Unreachable {
            endpoints: opts.endpoints.join(","),
            source,
        })?;
    let revision = resp
        .header()
        .map_or(0, etcd_client::ResponseHeader::revision);
    let Some(kv) = resp.kvs().first() else {
        return Ok((None, revision));
    };
    let text = kv
        .value_str()
        .map_err(|_| EtcdError::NotText {
            key: key.clone(),
            revision: kv.mod_revision(),
        })?
        .to_owned();
    Ok((
        Some(Snapshot {
            text,
            mod_revision: kv.mod_revision(),
        }),
        revision,
    ))
}

/// Writes `text` as the description if it is still what was read at
/// `read_revision` (the key's mod revision, 0 for none): two pushes that
/// read the same revision cannot both land. The new revision.
pub async fn compare_and_put(
    client: &mut Client,
    opts: &EtcdOptions,
    read_revision: i64,
    text: &str,
) -> Result<i64, EtcdError> {
    let key = opts.key();
    let unchanged = if read_revision == 0 {
        Compare::create_revision(key.as_bytes(), CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(key.as_bytes(), CompareOp::Equal, read_revision)
    };
    let txn = Txn::new()
        .when([unchanged])
        .and_then([TxnOp::put(key.as_bytes(), text.as_bytes(), None)])
        .or_else([TxnOp::get(key.as_bytes(), Some(GetOptions::new()))]);
    let resp = client.txn(txn).await?;
    let revision = resp
        .header()
        .map_or(0, etcd_client::ResponseHeader::revision);
    if resp.succeeded() {
        Ok(revision)
    } else {
        let now = resp
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => Some(
                    g.kvs()
                        .first()
                        .map_or(0, etcd_client::KeyValue::mod_revision),
                ),
                _ => None,
            })
            .unwrap_or(revision);
        Err(EtcdError::Conflict {
            read: read_revision,
            now,
        })
    }
}

/// What the watch knows, shared with the enforcement thread and `status`.
#[derive(Debug, Default)]
pub struct State {
    /// The latest description read (valid or not: the agent judges it).
    pub latest: Option<Snapshot>,
    /// Whether the last exchange with etcd succeeded.
    pub connected: bool,
    /// Why not, when not.
    pub error: Option<String>,
}

pub type Shared = Arc<Mutex<State>>;

/// Sleeps between reconnection attempts: 0.5 s doubling to 10 s.
struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(10);

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Self::MAX);
    }
}

/// Reads until etcd answers with a description (`wait`), or fails at once.
pub async fn first_read(
    opts: &EtcdOptions,
    wait: bool,
) -> Result<(Client, Snapshot, i64), EtcdError> {
    let mut backoff = Backoff(Backoff::FIRST);
    let mut said = false;
    loop {
        let attempt = async {
            let mut client = connect(opts).await?;
            let (snapshot, revision) = read(&mut client, opts).await?;
            match snapshot {
                Some(s) => Ok((client, s, revision)),
                None => Err(EtcdError::Missing(opts.key())),
            }
        };
        match attempt.await {
            Ok(v) => return Ok(v),
            Err(e) if wait => {
                if !said {
                    log::warn!("{e}; waiting (--etcd-wait)");
                    said = true;
                }
                backoff.wait().await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Follows the description from `revision` on: each change is stored in
/// `shared` and `changed` called with its revision. Never returns; etcd
/// going away is logged, reported in `shared`, and retried with backoff,
/// and the whole description is read again before the watch resumes (as
/// after a compaction), so no revision is missed.
pub async fn follow(
    opts: EtcdOptions,
    mut client: Client,
    mut revision: i64,
    shared: Shared,
    changed: impl Fn(i64),
) {
    let mut backoff = Backoff(Backoff::FIRST);
    loop {
        watch_until_lost(&opts, &mut client, revision, &shared, &changed).await;
        backoff.wait().await;
        // Reconnect, and re-read whole what may have been missed.
        loop {
            match reread(&opts, &shared, &changed).await {
                Ok((c, rev)) => {
                    client = c;
                    revision = rev;
                    backoff = Backoff(Backoff::FIRST);
                    break;
                }
                Err(e) => {
                    note_lost(&shared, &e.to_string());
                    backoff.wait().await;
                }
            }
        }
    }
}

/// Connects and reads the whole description: stored (and `changed`
/// called) if it is not the one known. The client and the revision read.
async fn reread(
    opts: &EtcdOptions,
    shared: &Shared,
    changed: &impl Fn(i64),
) -> Result<(Client, i64), EtcdError> {
    let mut client = connect(opts).await?;
    let (snapshot, rev) = read(&mut client, opts).await?;
    let newer = {
        let mut s = shared.lock().expect("etcd state");
        let was = s.latest.as_ref().map(|l| l.mod_revision);
        s.connected = true;
        s.error = None;
        match snapshot {
            Some(snap) if Some(snap.mod_revision) != was => {
                let r = snap.mod_revision;
                s.latest = Some(snap);
                Some(r)
            }
            _ => None,
        }
    };
    log::info!(
        revision = rev;
        "etcd reachable at revision {rev}: description re-read{}",
        newer.map_or_else(
            || ", unchanged".to_owned(),
            |r| format!(", changed at revision {r}")
        )
    );
    if let Some(r) = newer {
        changed(r);
    }
    Ok((client, rev))
}

/// Watches the key from `revision + 1` until the stream ends, fails, or is
/// compacted away.
async fn watch_until_lost(
    opts: &EtcdOptions,
    client: &mut Client,
    revision: i64,
    shared: &Shared,
    changed: &impl Fn(i64),
) {
    let key = opts.key();
    let watch = client
        .watch(
            key.as_bytes(),
            Some(WatchOptions::new().with_start_revision(revision + 1)),
        )
        .await;
    let mut stream = match watch {
        Ok(s) => s,
        Err(e) => return note_lost(shared, &e.to_string()),
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return note_lost(shared, "the watch stream ended"),
            Err(e) => return note_lost(shared, &e.to_string()),
        };
        if resp.canceled() || resp.compact_revision() > 0 {
            log::warn!(
                "etcd watch ended ({}; compacted to revision {}): re-reading the whole description",
                if resp.cancel_reason().is_empty() {
                    "canceled"
                } else {
                    resp.cancel_reason()
                },
                resp.compact_revision()
            );
            return;
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let rev = kv.mod_revision();
            match (event.event_type(), kv.value_str()) {
                (EventType::Put, Ok(text)) => {
                    shared.lock().expect("etcd state").latest = Some(Snapshot {
                        text: text.to_owned(),
                        mod_revision: rev,
                    });
                    changed(rev);
                }
                (EventType::Put, Err(_)) => log::error!(
                    revision = rev;
                    "etcd revision {rev}: the description is not UTF-8 text; the policy in force stays"
                ),
                (EventType::Delete, _) => log::error!(
                    revision = rev;
                    "etcd revision {rev}: the description at {key} was deleted; the policy in force stays (push one to change it)"
                ),
            }
        }
    }
}

/// Records (and logs, once per outage) that etcd is out of reach.
fn note_lost(shared: &Shared, why: &str) {
    let mut s = shared.lock().expect("etcd state");
    if s.connected {
        log::error!("etcd lost ({why}): the policy in force stays; reconnecting with backoff");
    }
    s.connected = false;
    s.error = Some(why.to_owned());
}

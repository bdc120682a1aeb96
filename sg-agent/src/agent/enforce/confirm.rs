//! `run --confirm-within SECONDS` and `sg-agent confirm`: a start or a
//! reload is rolled back unless confirmed in time, as `firewall-cmd
//! --timeout` and a router's "commit confirmed" do. An operator who loses
//! the session the new policy cut gets the old one back: after a reload
//! the last confirmed policy is put in force again; on the very first
//! start, before anything was ever confirmed, every instance is detached.
//!
//! The last confirmed policy is kept on disk ([`store_path`]: bpffs holds
//! no files), so an agent killed while a reload waited for its
//! confirmation, and started again, rolls back to it, never to nothing;
//! and a restart on the policy last confirmed asks no confirmation again.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::Agent;
use crate::{config::Vpc, policy::compile::CompiledPolicy};

/// Where the last confirmed policy of the agent on `state_dir` is kept:
/// `/var/lib/sg-agent/confirmed/` and the state directory's path with each
/// `/` as `_` (one per state directory, so agents on other state
/// directories keep their own).
pub fn store_path(state_dir: &Path) -> PathBuf {
    let name = state_dir.to_string_lossy().replace('/', "_");
    Path::new("/var/lib/sg-agent/confirmed").join(format!("{name}.toml"))
}

/// Writes `text` as the last confirmed policy: a temporary file in the same
/// directory (0700, root's), synced, renamed over the old one.
fn store(path: &Path, text: &str) -> std::io::Result<()> {
    use std::{
        io::Write as _,
        os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    };
    let dir = path.parent().expect("a file in a directory");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = path.with_extension("toml.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A policy in force that is rolled back at `deadline` unless confirmed.
pub(super) struct Unconfirmed {
    deadline: Instant,
    /// The policy it goes back to: the last confirmed one (`None`: the
    /// first start, whose rollback detaches everything).
    previous: Option<Box<Confirmed>>,
}

/// A policy as it was in force: what a rollback puts back.
pub(super) struct Confirmed {
    pub vpc: Vpc,
    pub compiled: CompiledPolicy,
    pub text: String,
    pub sha256: [u8; 32],
    pub revision: Option<i64>,
}

impl Agent<'_> {
    /// The policy in force now, as a rollback would restore it.
    pub(super) fn in_force_now(&self) -> Option<Confirmed> {
        Some(Confirmed {
            vpc: self.vpc.clone(),
            compiled: self.compiled.clone()?,
            text: self.in_force_text.clone(),
            sha256: self.in_force,
            revision: self.in_force_revision,
        })
    }

    /// The last confirmed policy kept on disk, if it is not the one in
    /// force, and still acceptable; the error says why not.
    fn stored_confirmed(&self) -> Result<Option<Confirmed>, String> {
        let path = store_path(&self.opts.state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let sha256: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(text.as_bytes()).into()
        };
        if sha256 == self.in_force {
            return Ok(None);
        }
        let enforcer = crate::policy::Enforcer::Node(self.opts.node.as_deref());
        let (vpc, compiled) =
            crate::policy::admit_as(&path, &text, self.opts.accept.empty, enforcer)
                .map_err(|r| format!("{}: not acceptable any more: {r}", path.display()))?;
        Ok(Some(Confirmed {
            vpc,
            compiled,
            text,
            sha256,
            revision: None,
        }))
    }

    /// Keeps the policy in force as the last confirmed one.
    fn store_confirmed(&self) {
        let path = store_path(&self.opts.state_dir);
        if let Err(e) = store(&path, &self.in_force_text) {
            log::error!(
                "keeping the confirmed policy in {}: {e}; a restart before the next \
                 confirmation would roll back to an older one",
                path.display()
            );
        }
    }

    /// After a start (`previous` is `None`) or a reload that changed the
    /// policy: with `--confirm-within`, it stands only if confirmed in
    /// time. Two changes unconfirmed in a row go back to the last
    /// confirmed policy.
    pub(super) fn await_confirmation(&mut self, previous: Option<Confirmed>) {
        let Some(within) = self.opts.confirm_within else {
            return;
        };
        // A start: the policy confirmed last (before a restart, a kill -9
        // included) is what a rollback puts back; none is the first start.
        let previous = match previous {
            Some(p) => Some(p),
            None => match self.stored_confirmed() {
                Ok(stored) => {
                    if stored.is_none() && self.has_stored_confirmed() {
                        log::info!(
                            "the policy in force (sha256 {}) is the one last confirmed: no \
                             confirmation is asked again",
                            &crate::config::hex(&self.in_force)[..12]
                        );
                        return;
                    }
                    stored
                }
                Err(e) => {
                    log::error!("the last confirmed policy cannot be put back: {e}");
                    None
                }
            },
        };
        let previous = match self.unconfirmed.take() {
            Some(earlier) => earlier.previous,
            None => previous.map(Box::new),
        };
        log::warn!(
            "this policy is rolled back in {} s unless confirmed: `sg-agent confirm` ({})",
            within.as_secs(),
            if previous.is_some() {
                "the previous policy comes back"
            } else {
                "every instance is detached"
            }
        );
        self.unconfirmed = Some(Unconfirmed {
            deadline: Instant::now() + within,
            previous,
        });
    }

    /// `sg-agent confirm`.
    pub(super) fn confirm(&mut self) -> Result<String, String> {
        match self.unconfirmed.take() {
            Some(_) => {
                self.store_confirmed();
                let what = format!(
                    "the policy in force (sha256 {}) is confirmed",
                    &crate::config::hex(&self.in_force)[..12]
                );
                log::info!("{what}");
                Ok(what)
            }
            None => Err("nothing waits for a confirmation (run --confirm-within SECONDS)".into()),
        }
    }

    /// Whether a confirmed policy is kept on disk at all.
    fn has_stored_confirmed(&self) -> bool {
        store_path(&self.opts.state_dir).exists()
    }

    /// When the confirmation is due: seconds left, for `status`.
    pub(super) fn confirm_left(&self) -> Option<Duration> {
        self.unconfirmed
            .as_ref()
            .map(|u| u.deadline.saturating_duration_since(Instant::now()))
    }

    /// Rolls back what was not confirmed in time.
    pub(super) fn check_confirmation(&mut self) {
        if self
            .unconfirmed
            .as_ref()
            .is_none_or(|u| Instant::now() < u.deadline)
        {
            return;
        }
        let Some(u) = self.unconfirmed.take() else {
            return;
        };
        match u.previous {
            None => {
                log::error!(
                    "not confirmed in time (--confirm-within): detaching every instance and \
                     stopping, as if this agent had never started"
                );
                self.retire_and_remove(|_| false);
                self.stop
                    .asked
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Some(previous) => {
                let Confirmed {
                    vpc,
                    compiled,
                    text,
                    sha256,
                    revision,
                } = *previous;
                match self.apply(vpc, compiled) {
                    Ok(()) => {
                        self.in_force = sha256;
                        self.in_force_text = text;
                        self.in_force_revision = revision;
                        log::error!(
                            "not confirmed in time (--confirm-within): the previous policy \
                             (sha256 {}) is back in force; the rules file is reloaded when it \
                             changes again, or on SIGHUP",
                            &crate::config::hex(&self.in_force)[..12]
                        );
                    }
                    Err(e) => log::error!(
                        "not confirmed in time, and putting the previous policy back failed: {}",
                        crate::errors::chain(&e)
                    ),
                }
            }
        }
    }
}

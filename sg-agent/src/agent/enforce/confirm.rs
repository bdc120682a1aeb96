//! `run --confirm-within SECONDS` and `sg-agent confirm`: a start or a
//! reload is rolled back unless confirmed in time, as `firewall-cmd
//! --timeout` and a router's "commit confirmed" do. An operator who loses
//! the session the new policy cut gets the old one back: on a first start
//! every instance is detached, after a reload the last confirmed policy is
//! put in force again.

use std::time::{Duration, Instant};

use super::Agent;
use crate::{config::Vpc, policy::compile::CompiledPolicy};

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
    pub sha256: [u8; 32],
    pub revision: Option<i64>,
}

impl Agent<'_> {
    /// The policy in force now, as a rollback would restore it.
    pub(super) fn in_force_now(&self) -> Option<Confirmed> {
        Some(Confirmed {
            vpc: self.vpc.clone(),
            compiled: self.compiled.clone()?,
            sha256: self.in_force,
            revision: self.in_force_revision,
        })
    }

    /// After a start (`previous` is `None`) or a reload that changed the
    /// policy: with `--confirm-within`, it stands only if confirmed in
    /// time. Two changes unconfirmed in a row go back to the last
    /// confirmed policy.
    pub(super) fn await_confirmation(&mut self, previous: Option<Confirmed>) {
        let Some(within) = self.opts.confirm_within else {
            return;
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
                    sha256,
                    revision,
                } = *previous;
                match self.apply(vpc, compiled) {
                    Ok(()) => {
                        self.in_force = sha256;
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

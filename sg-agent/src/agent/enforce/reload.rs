//! Reloads: the rules read again (from the file, or etcd's latest
//! description), validated and compiled exactly as at start, and put in
//! force; a rules file that changed unseen is found by polling.

use std::time::Instant;

use super::{Agent, DIFF_LINES_LOGGED, DIFF_RULES_RECORDED, Rules, acceptable};
use crate::{
    agent::{AgentError, service},
    config::{self, FileStamp},
    libvirt::overlay::{self, Running},
    observe::{status::ReloadStatus, unix_now},
    policy::summary,
};

impl Agent<'_> {
    /// Reads the file once and applies what was read. A change of stamp
    /// whose bytes are those in force is no change, unless `forced`
    /// (SIGHUP: apply again, retrying what is not enforced).
    /// A reload, between systemd's RELOADING=1 and READY=1.
    pub(super) fn reload(&mut self, why: &str, forced: bool) {
        service::reloading();
        self.reload_once(why, forced);
        service::ready(&self.service_status());
    }

    fn reload_once(&mut self, why: &str, forced: bool) {
        let started = Instant::now();
        let read = self.rules.read(self.opts.read);
        // From etcd: the revision read, which may be newer than the one
        // that triggered the reload (changes coalesce).
        let why_owned;
        let why = match &read {
            Ok((_, Some(revision))) => {
                why_owned = format!("{why} revision {revision}");
                why_owned.as_str()
            }
            _ => why,
        };
        let (file, revision) = match read {
            Ok(read) => read,
            Err(e) => {
                self.seen = FileStamp::of_path(&self.path);
                self.reloads += 1;
                log::error!(
                    reload = self.reloads, trigger = why, result = "rejected";
                    "reload #{} ({why}) rejected, the running policy stays in force: {e}",
                    self.reloads
                );
                self.note_reload(why, started, "rejected", Some(e.to_string()));
                return;
            }
        };
        self.seen = Some(file.stamp);
        self.libvirt.stamp = overlay::Stamp::of(&self.libvirt.dirs);
        let running = Running::read(&self.libvirt.dirs, &self.domains.from_hook);
        let libvirt = running.signature();
        if !forced && file.sha256 == self.in_force && libvirt == self.libvirt.in_force {
            log::debug!("{why}: same content as the policy in force, nothing to do");
            return;
        }
        self.reloads += 1;
        let n = self.reloads;
        let accepted = acceptable(
            &self.path,
            &file,
            &self.opts,
            &running,
            &mut self.libvirt.problems,
        );
        let (vpc, compiled) = match accepted {
            Ok(v) => v,
            Err(e) => {
                // Diagnostics start on a line of their own.
                let why_not = match e {
                    AgentError::Config(config::ConfigError::Invalid(d)) => format!("\n{d}"),
                    other => format!(" {other}"),
                };
                log::error!(
                    reload = n, trigger = why, result = "rejected";
                    "reload #{n} ({why}) rejected, the running policy stays in force:{why_not}"
                );
                self.note_reload(why, started, "rejected", Some(why_not.trim().to_owned()));
                return;
            }
        };
        log::debug!(
            "reload #{n}: parsed, validated and compiled in {} ms",
            started.elapsed().as_millis()
        );
        if let Err(e) = self.detach_share(&file.text, &compiled) {
            log::error!(
                reload = n, trigger = why, result = "rejected";
                "reload #{n} ({why}) rejected, the running policy stays in force: {e}"
            );
            self.note_reload(why, started, "rejected", Some(e));
            return;
        }
        let old = self.vpc.clone();
        let before = self.in_force_now();
        match self.apply(vpc, compiled) {
            Ok(()) => {
                let reload = Reloaded {
                    n,
                    why,
                    started,
                    old: &old,
                    before,
                };
                self.applied(reload, &file, revision, libvirt);
            }
            Err(AgentError::Stopping) => {
                log::info!("reload #{n} ({why}) abandoned to stop: nothing changed");
            }
            Err(e) => {
                let e = crate::errors::chain(&e);
                log::error!(
                    reload = n, trigger = why, result = "rejected";
                    "reload #{n} ({why}) rejected, nothing changed: {e}"
                );
                self.note_reload(why, started, "rejected", Some(e));
            }
        }
    }

    /// Notes a reload's change as in force, and says what changed.
    fn applied(
        &mut self,
        reload: Reloaded<'_>,
        file: &config::RulesFile,
        revision: Option<i64>,
        libvirt: String,
    ) {
        let Reloaded {
            n,
            why,
            started,
            old,
            before,
        } = reload;
        let result = if self.in_force == file.sha256 {
            "unchanged"
        } else {
            "applied"
        };
        if result == "applied" {
            self.await_confirmation(before);
        }
        self.in_force = file.sha256;
        self.libvirt.in_force = libvirt;
        self.in_force_text.clone_from(&file.text);
        self.in_force_revision = revision;
        self.last_apply = started.elapsed();
        let took = started.elapsed().as_millis();
        // Summarised after the swap: the log record never delays
        // enforcement. It carries the effective-rule diff that
        // `sg-agent diff OLD NEW` prints (a bounded excerpt in the
        // message, all of it in the JSON record's `diff` field).
        let changes = summary::changes(old, &self.vpc);
        let effective = crate::policy::diff::diff(old, &self.vpc);
        let excerpt = crate::policy::diff::excerpt(&effective, DIFF_LINES_LOGGED);
        let (diff, diff_omitted) = crate::policy::diff::bounded(&effective, DIFF_RULES_RECORDED);
        log::info!(
            reload = n, trigger = why, result = result, duration_ms = took,
            diff:serde = diff, diff_omitted = diff_omitted;
            "reload #{n} ({why}) applied in {took} ms: {changes}{excerpt}"
        );
        self.note_reload(why, started, result, None);
    }

    /// A description from etcd may stop enforcing only a share of the
    /// instances enforced now (left out, or moved to a namespace or
    /// interface that does not exist), unless `push --allow-detach`
    /// confirmed it.
    fn detach_share(
        &mut self,
        text: &str,
        compiled: &crate::policy::compile::CompiledPolicy,
    ) -> Result<(), String> {
        let Some(limits) = self.opts.remote.clone() else {
            return Ok(());
        };
        if crate::source::etcd::allows_detach(text) {
            return Ok(());
        }
        let names: Vec<String> = self.enforced.keys().cloned().collect();
        let mut gone = Vec::new();
        for name in names {
            let stays = match compiled
                .instances
                .iter()
                .find(|i| i.name == name && i.link.is_some())
            {
                None => false,
                Some(i) => match self.domains.wanted(i) {
                    Ok((place, _)) => place.exists().is_ok(),
                    // A libvirt domain not running: waited for, as now.
                    Err(_) => true,
                },
            };
            if !stays {
                gone.push(name);
            }
        }
        limits.check_detach(self.enforced.len(), &gone)
    }

    /// Remembers a reload's outcome for `status` and the metrics.
    fn note_reload(&mut self, why: &str, started: Instant, result: &str, error: Option<String>) {
        if result == "rejected" {
            self.reloads_rejected += 1;
        }
        self.last_reload = Some(ReloadStatus {
            time: unix_now(),
            trigger: why.to_owned(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            result: result.to_owned(),
            error,
        });
    }

    /// Whether what libvirt says of the domains changed since it was last
    /// read (their metadata, a lease): then the description is admitted
    /// again. Read only when one of its files changed.
    pub(super) fn poll_libvirt(&mut self) {
        let stamp = overlay::Stamp::of(&self.libvirt.dirs);
        if stamp == self.libvirt.stamp {
            return;
        }
        self.libvirt.stamp = stamp;
        let running = Running::read(&self.libvirt.dirs, &self.domains.from_hook);
        if running.signature() != self.libvirt.in_force {
            self.reload("libvirt's domains changed", false);
        }
    }

    /// Polls the rules file. With the watch running, polling is only its
    /// fallback: a change is reloaded from here when it is still not
    /// applied a tick after polling first saw it (the watch, debounced,
    /// takes a few tens of milliseconds), so each change is reloaded once,
    /// by the watch when it works.
    pub(super) fn poll(&mut self, watched: bool) {
        if matches!(self.rules, Rules::Etcd { .. }) {
            // etcd's watch tells; losing it re-reads the whole description.
            return;
        }
        if FileStamp::of_path(&self.path) == self.seen {
            self.poll_pending = false;
        } else if watched && !self.poll_pending {
            self.poll_pending = true;
        } else {
            self.poll_pending = false;
            self.reload("file changed (seen by polling)", false);
        }
    }
}

/// A reload whose change was put in force: what [`Agent::applied`] says
/// of it.
struct Reloaded<'a> {
    n: u64,
    why: &'a str,
    started: Instant,
    old: &'a crate::config::Vpc,
    before: Option<super::confirm::Confirmed>,
}

//! Rules to kernel encoding, pure: no kernel here.
//!
//! [`resolve`] (each instance's effective rules) -> [`compile`] (flat,
//! generation-free tables) -> [`encode`] (the exact map inserts and deletes
//! that swap one policy for another). [`reference`] is the plain-Rust oracle
//! every fast path is tested against; [`softmaps`] holds the maps in memory
//! with the kernel's semantics, so the production reload path runs on the
//! host in tests. [`report`] and [`summary`] describe a policy to people;
//! [`explain`] and [`diff`] answer their questions about one.

pub mod compile;
pub mod diff;
pub mod encode;
pub mod explain;
pub mod reference;
pub mod report;
pub mod resolve;
pub mod softmaps;
pub mod summary;

use std::path::Path;

use crate::config::{self, Diagnostics, Vpc};

/// Why a rules file is refused: the same answer for `check` and for `run`
/// (at start and on every reload), so `check` exits 1 exactly where `run`
/// would refuse the file.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Invalid(Box<Diagnostics>),
    #[error("{}: {source}", path.display())]
    TooLarge {
        source: compile::InstanceTooLarge,
        path: std::path::PathBuf,
    },
    #[error(
        "{} enforces no instance here (no [[instance]] with an `interface` whose `node` is this \
         agent's --node, or has none without --node): refused, since it would leave every \
         interface unfiltered; check --node, or pass --allow-empty if that is what you want",
        .0.display()
    )]
    Empty(std::path::PathBuf),
    /// An instance's `netns_path` names something on this host that no
    /// namespace file is (a FIFO, a device...): `run` could never enter it.
    #[error(
        "instance {instance}: netns_path {}: {why}; name a network namespace file such as \
         /proc/PID/ns/net or a bind mount of one",
        path.display()
    )]
    Place {
        instance: String,
        path: std::path::PathBuf,
        why: String,
    },
}

/// Parses, validates and compiles the rules-file text `text` (read from
/// `path`): the policy to put in force, or why not. The compiler's size
/// accounting runs before any instance's tables are built, so a policy the
/// maps cannot hold is refused here, not halfway through a reload.
pub fn admit(
    path: &Path,
    text: &str,
    allow_empty: bool,
) -> Result<(Vpc, compile::CompiledPolicy), Refusal> {
    admit_as(path, text, allow_empty, Enforcer::Everyone)
}

/// Whose view of the description [`admit_as`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforcer<'a> {
    /// Every instance with an interface, whichever node: the whole
    /// description, as `check` and `push` judge it.
    Everyone,
    /// The agent of `run --node NAME` (`Some`), or of `run` without
    /// `--node` (`None`): other nodes' instances are group members only.
    Node(Option<&'a str>),
}

/// [`admit`] for one enforcer: what it would put in force.
pub fn admit_as(
    path: &Path,
    text: &str,
    allow_empty: bool,
    enforcer: Enforcer<'_>,
) -> Result<(Vpc, compile::CompiledPolicy), Refusal> {
    admit_overlaid(path, text, allow_empty, enforcer, |_| {})
}

/// [`admit_as`], with `overlay` laid over the parsed description before it
/// is validated (what libvirt's domains bring: `libvirt::overlay`).
pub fn admit_overlaid(
    path: &Path,
    text: &str,
    allow_empty: bool,
    enforcer: Enforcer<'_>,
    overlay: impl FnOnce(&mut Vpc),
) -> Result<(Vpc, compile::CompiledPolicy), Refusal> {
    let vpc = placed(path, text, allow_empty, enforcer, overlay)?;
    let compiled = compile::compile_enforced(&vpc).map_err(|source| Refusal::TooLarge {
        source,
        path: path.to_owned(),
    })?;
    Ok((vpc, compiled))
}

/// The description parsed and validated as `enforcer` takes it, with the
/// places its instances name checked.
fn placed(
    path: &Path,
    text: &str,
    allow_empty: bool,
    enforcer: Enforcer<'_>,
    overlay: impl FnOnce(&mut Vpc),
) -> Result<Vpc, Refusal> {
    let mut vpc = config::from_str_overlaid(path, text, overlay).map_err(Refusal::Invalid)?;
    if let Enforcer::Node(node) = enforcer {
        vpc.select_node(node);
    }
    if !allow_empty
        && !vpc
            .instances
            .iter()
            .any(crate::config::Instance::enforced_here)
    {
        return Err(Refusal::Empty(path.to_owned()));
    }
    for inst in vpc.instances.iter().filter(|i| i.enforced_here()) {
        if let Some(netns) = inst.netns.as_deref().filter(|n| n.starts_with('/'))
            && let Some(why) = config::not_a_namespace_file(Path::new(netns))
        {
            return Err(Refusal::Place {
                instance: inst.name.clone(),
                path: netns.into(),
                why,
            });
        }
    }
    Ok(vpc)
}

/// [`admit_as`] where the tables are not wanted (`check`, `push`): the same
/// answer, without holding every instance's tables at once.
pub fn validate_as(
    path: &Path,
    text: &str,
    allow_empty: bool,
    enforcer: Enforcer<'_>,
) -> Result<Vpc, Refusal> {
    let vpc = placed(path, text, allow_empty, enforcer, |_| {})?;
    compile::fits_enforced(&vpc).map_err(|source| Refusal::TooLarge {
        source,
        path: path.to_owned(),
    })?;
    Ok(vpc)
}

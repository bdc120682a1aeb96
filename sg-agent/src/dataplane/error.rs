//! What can go wrong between the compiled policy and the kernel.

use super::netns::NetnsError;
use crate::policy::encode::TooLarge;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Another agent's programs are on the interface (`other` names it).
    #[error(
        "interface {ifname}{}: already enforced by {other}; two agents on one interface would \
         judge every packet twice by two policies: stop that agent, or `sg-agent detach --all \
         --state-dir DIR` its state",
        netns.as_ref().map_or_else(String::new, |n| format!(" in netns {n}"))
    )]
    ForeignAgent {
        ifname: String,
        netns: Option<String>,
        other: String,
    },
    #[error("loading the eBPF object failed: {0} (run as root on a kernel with BPF, BTF and XDP)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error(
        "this sg-agent was built with AYA_BUILD_SKIP=1 and holds no eBPF object: rebuild it \
         without AYA_BUILD_SKIP (after `cargo xtask bootstrap`)"
    )]
    NoObject,
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("putting eBPF program {name} on a live link: {source}")]
    Swap {
        name: &'static str,
        #[source]
        source: Box<std::io::Error>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("adding the clsact qdisc to {ifname}: {source}")]
    Qdisc {
        ifname: String,
        #[source]
        source: Box<aya::programs::tc::TcError>,
    },
    #[error("attaching to {ifname}{}: {source}", netns.as_deref().map(|n| format!(" in netns {n}")).unwrap_or_default())]
    Attach {
        ifname: String,
        netns: Option<String>,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    #[error(transparent)]
    Pin(super::pins::PinError),
    #[error("{ifname}{}: {source}", netns.as_deref().map(|n| format!(" in netns {n}")).unwrap_or_default())]
    Interface {
        ifname: String,
        netns: Option<String>,
        #[source]
        source: std::io::Error,
    },
}

pub(super) fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

//! `aya::Pod` for every map key and value. Each type is `#[repr(C)]` with
//! explicit padding, so every byte is initialised and any bit pattern is valid.
use crate::{conntrack, events, guard, nacl, policy};

macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: #[repr(C)], no implicit padding, integers and byte arrays only.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

pod!(
    policy::Settings,
    policy::Shortcuts,
    policy::AddrKeyV4,
    policy::AddrKeyV6,
    policy::AddrValue,
    policy::PortKey,
    policy::PortValue,
    conntrack::CtKey,
    conntrack::CtEntry,
    conntrack::FragKey,
    conntrack::FragEntry,
    events::FlowEvent,
    events::EventBudget,
    guard::MacEntry,
    guard::MacKey,
    nacl::NaclTable,
);

//! One instance's data plane: its own copy of the eBPF object (so its maps
//! hold exactly its policy and its connections), the policy maps that
//! [`crate::policy::encode`] tells it how to change, and the XDP/TC
//! attachments.
//!
//! [`attach`] puts the programs on an interface, [`policy_maps`] applies a
//! policy swap to the kernel's maps, [`counters`] reads the per-reason
//! packet counters, [`netns`] enters an instance's network namespace.

pub mod attach;
pub mod conns;
pub mod counters;
pub mod driver;
mod error;
pub mod events;
mod mac;
pub mod netns;
pub mod pins;
mod policy_maps;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Map, MapInfo},
    programs::{SchedClassifier, Xdp},
};
use sg_common::{maps as m, policy::Settings};

pub use attach::{Attachment, IngressHook, Side};
pub use counters::{Counters, ReasonCounts};
pub use error::DataplaneError;
pub use events::Observe;
pub use mac::KnownMac;
pub use pins::{InstancePins, StateDir};

use crate::policy::{
    compile::PolicyTables,
    encode::{self, PolicyEncoder},
};

/// The eBPF object built by build.rs (empty when built with
/// `AYA_BUILD_SKIP=1`, which `load` reports).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-ebpf"));

pub const INGRESS_PROGRAM: &str = "sg_ingress";
pub const EGRESS_PROGRAM: &str = "sg_egress";
/// The same inbound judgement as a TC program, for `IngressHook::Tc`.
pub const INGRESS_TC_PROGRAM: &str = "sg_ingress_tc";

pub struct Dataplane {
    ebpf: Ebpf,
    /// Whether the TC ingress program has been loaded (verified).
    ingress_tc_loaded: bool,
    /// Whether the XDP program has been loaded (verified).
    ingress_xdp_loaded: bool,
    /// The programs' events ([`events`]); taken out of the object so it
    /// can be read while the object is borrowed otherwise.
    events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    /// What the policy maps hold.
    encoder: PolicyEncoder,
    /// Where the maps and links are pinned; `None`: they live as long as
    /// this value (tests, benchmarks).
    pins: Option<InstancePins>,
    /// Whether the maps were found pinned (a restart): they kept their
    /// connections and policy.
    adopted: bool,
    /// The links this value holds, with where they are pinned.
    links: Vec<attach::HeldLink>,
    pub attachment: Option<Attachment>,
}

impl Dataplane {
    /// Loads a fresh copy of the object and its programs into the kernel;
    /// nothing is attached and every packet would be dropped until a policy
    /// is published. New-flow events only ([`Observe::default`]).
    pub fn load() -> Result<Self, DataplaneError> {
        Self::load_with(Observe::default(), None, m::CONNS_DEFAULT_ENTRIES)
    }

    /// The inbound program for XDP, loaded into the kernel on first use:
    /// verification is most of the time to load an instance, and an
    /// instance at TC (virtual interfaces, the host side) never needs it.
    /// The plain `load*` constructors (tests, benchmarks) load it at once.
    pub fn load_ingress_xdp(&mut self) -> Result<(), DataplaneError> {
        if !self.ingress_xdp_loaded {
            program::<Xdp>(&mut self.ebpf, INGRESS_PROGRAM)
                .load()
                .map_err(|source| DataplaneError::Program {
                    name: INGRESS_PROGRAM,
                    source: Box::new(source),
                })?;
            self.ingress_xdp_loaded = true;
        }
        Ok(())
    }

    /// [`Dataplane::load`], observing what `observe` asks for: per-flow
    /// counts and events for dropped and untracked packets. What is off is
    /// removed from the programs by the verifier: it costs nothing per
    /// packet.
    pub fn load_observing(observe: Observe) -> Result<Self, DataplaneError> {
        Self::load_with(observe, None, m::CONNS_DEFAULT_ENTRIES)
    }

    /// Loads the object with its maps pinned under `pins`: maps already
    /// pinned there (by an agent that ran before) are adopted with their
    /// entries: connection tables, counters and the policy in force, which
    /// keeps judging packets until the next publish swaps it.
    ///
    /// `allowance` is the capacity of its connection table: a table pinned
    /// with another capacity is replaced by one of this capacity, its
    /// connections carried over.
    pub fn load_pinned(
        pins: InstancePins,
        observe: Observe,
        allowance: u32,
    ) -> Result<Self, DataplaneError> {
        Self::load_with(observe, Some(pins), allowance)
    }

    /// [`Dataplane::load`] with a connection allowance other than the
    /// default (tests of the allowance, benchmarks).
    pub fn load_with_allowance(allowance: u32) -> Result<Self, DataplaneError> {
        Self::load_with(Observe::default(), None, allowance)
    }

    fn load_with(
        observe: Observe,
        pins: Option<InstancePins>,
        allowance: u32,
    ) -> Result<Self, DataplaneError> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let mut loader = EbpfLoader::new();
        loader.override_global(m::OBSERVE_GLOBAL, &observe.bits, true);
        loader.override_global(m::EVENTS_PER_CPU_GLOBAL, &observe.events_per_cpu, true);
        loader.map_max_entries(m::CONNS, allowance);
        let mut adopted = false;
        if let Some(pins) = &pins {
            pins.create().map_err(DataplaneError::Pin)?;
            replace_other_layouts(pins)?;
            conns::set_aside_other_capacity(pins, allowance)?;
            for layout in &m::PINNED {
                let path = pins.map(layout.name);
                adopted |= layout.name == m::SETTINGS && path.exists();
                loader.map_pin_path(layout.name, path);
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        // The TC ingress program is verified only when it is wanted
        // (`load_ingress_tc`): verification is most of the time to start.
        let program_err = |name| {
            move |source| DataplaneError::Program {
                name,
                source: Box::new(source),
            }
        };
        // The agent (pinned) loads the inbound program when it attaches
        // it; tests and benchmarks run the XDP one directly.
        let ingress_xdp_loaded = pins.is_none();
        if ingress_xdp_loaded {
            program::<Xdp>(&mut ebpf, INGRESS_PROGRAM)
                .load()
                .map_err(program_err(INGRESS_PROGRAM))?;
        }
        program::<SchedClassifier>(&mut ebpf, EGRESS_PROGRAM)
            .load()
            .map_err(program_err(EGRESS_PROGRAM))?;
        let events = ebpf
            .take_map(m::EVENTS)
            .map(aya::maps::RingBuf::try_from)
            .transpose()
            .map_err(error::map_err(m::EVENTS))?;
        let encoder = if adopted {
            let found = policy_maps::read_all(&ebpf)?;
            log::debug!(
                "adopted pinned policy maps ({} entries, generation {:?})",
                found.1.len(),
                found.0.map(|s| s.generation)
            );
            PolicyEncoder::adopt(found.0, &found.1)
        } else {
            PolicyEncoder::default()
        };
        let mut dp = Self {
            ebpf,
            events,
            ingress_tc_loaded: false,
            ingress_xdp_loaded,
            encoder,
            pins,
            adopted,
            links: Vec::new(),
            attachment: None,
        };
        dp.carry_over_connections()?;
        Ok(dp)
    }

    /// The policy generation the programs judge by, once published.
    pub fn generation(&self) -> Option<u32> {
        self.encoder.generation().map(u32::from)
    }

    /// Whether the maps were found pinned and adopted.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Moves the pins to another instance's name (a rename in the rules
    /// file); nothing is detached.
    pub fn rename_pins(&mut self, to: &InstancePins) -> Result<(), DataplaneError> {
        if let Some(pins) = &mut self.pins {
            pins.rename(to).map_err(DataplaneError::Pin)?;
            for link in &mut self.links {
                link.moved_to(pins);
            }
        }
        Ok(())
    }

    /// Detaches the programs and removes every pin: nothing of this
    /// instance stays in the kernel once this value is dropped.
    pub fn unpin(mut self) -> Result<(), DataplaneError> {
        self.links.clear();
        match self.pins.take() {
            Some(pins) => pins.remove().map_err(DataplaneError::Pin),
            None => Ok(()),
        }
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The maps and programs, for tools that read or fill maps directly
    /// (the benchmarks fill the connection table to its capacity).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// One of the object's maps, by its name in `sg_common::maps`.
    pub fn map(&self, name: &str) -> &Map {
        self.ebpf
            .map(name)
            .unwrap_or_else(|| panic!("the object defines map {name}"))
    }

    /// The XDP program, loaded ([`Dataplane::load_ingress_xdp`]; the plain
    /// `load*` constructors load it).
    pub fn ingress(&self) -> &Xdp {
        program_ref(&self.ebpf, INGRESS_PROGRAM)
    }

    /// Loads the TC ingress program into the kernel (once): `attach` does
    /// it for `IngressHook::Tc`, tests before running it.
    pub fn load_ingress_tc(&mut self) -> Result<(), DataplaneError> {
        if !self.ingress_tc_loaded {
            program::<SchedClassifier>(&mut self.ebpf, INGRESS_TC_PROGRAM)
                .load()
                .map_err(|source| DataplaneError::Program {
                    name: INGRESS_TC_PROGRAM,
                    source: Box::new(source),
                })?;
            self.ingress_tc_loaded = true;
        }
        Ok(())
    }

    /// The inbound judgement as a TC program (`IngressHook::Tc`), once
    /// loaded with [`Dataplane::load_ingress_tc`].
    pub fn ingress_tc(&self) -> &SchedClassifier {
        program_ref(&self.ebpf, INGRESS_TC_PROGRAM)
    }

    pub fn egress(&self) -> &SchedClassifier {
        program_ref(&self.ebpf, EGRESS_PROGRAM)
    }

    /// Makes `tables` the policy in force, atomically: every packet is
    /// judged entirely by the old policy or entirely by the new one (see
    /// [`crate::policy::encode`]). Returns false when nothing changed.
    pub fn publish(
        &mut self,
        tables: &PolicyTables,
        settings: Settings,
    ) -> Result<bool, DataplaneError> {
        let started = std::time::Instant::now();
        let settings = Settings {
            ns_per_tick: policy_maps::tick_ns(),
            ..settings
        };
        let mut maps = policy_maps::KernelPolicyMaps::new(&mut self.ebpf);
        let changed = encode::publish(&mut self.encoder, &mut maps, tables, settings)?;
        if changed {
            log::debug!(
                "policy swapped in {} ms ({} address entries)",
                started.elapsed().as_millis(),
                tables.v4.len() + tables.v6.len()
            );
        }
        Ok(changed)
    }
}

/// Unpins maps pinned with another layout than this build's (a build
/// that changed a map without renaming it), saying what is lost with each,
/// so the object creates them anew. The programs on adopted links keep
/// the old maps until they are replaced. The policy maps go together: the
/// settings say which generation the others hold.
fn replace_other_layouts(pins: &InstancePins) -> Result<(), DataplaneError> {
    let mut other = Vec::new();
    for layout in &m::PINNED {
        let path = pins.map(layout.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| DataplaneError::Map {
            name: layout.name,
            source,
        })?;
        // The connection table's capacity is the instance's allowance: a
        // change of it is carried over by `conns`, not lost.
        let entries = |n| if layout.name == m::CONNS { 0 } else { n };
        let found = (
            info.key_size(),
            info.value_size(),
            entries(info.max_entries()),
        );
        let want = (
            layout.key_size,
            layout.value_size,
            entries(layout.max_entries),
        );
        if found != want {
            log::warn!(
                "{}: pinned with another layout (key, value, entries: {found:?}; this build: \
                 {want:?}): replaced, losing {}",
                path.display(),
                m::lost_with(layout.name)
            );
            other.push(layout.name);
        }
    }
    if other.iter().any(|n| m::POLICY.contains(n)) {
        other.extend(m::POLICY);
    }
    for name in other {
        let path = pins.map(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(DataplaneError::Pin(pins::PinError::Io { path, source: e }));
            }
            _ => {}
        }
    }
    Ok(())
}

/// A program of the object, by name, as its type.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut P
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    let program = ebpf
        .program_mut(name)
        .unwrap_or_else(|| panic!("the object defines program {name}"));
    <&mut P>::try_from(program)
        .unwrap_or_else(|_| panic!("program {name} is of the type sg-ebpf declares"))
}

fn program_ref<'a, P>(ebpf: &'a Ebpf, name: &str) -> &'a P
where
    &'a P: TryFrom<&'a aya::programs::Program>,
{
    let program = ebpf
        .program(name)
        .unwrap_or_else(|| panic!("the object defines program {name}"));
    <&P>::try_from(program)
        .unwrap_or_else(|_| panic!("program {name} is of the type sg-ebpf declares"))
}

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
mod detach;
pub use detach::pin_attached;
pub mod driver;
mod error;
pub mod events;
mod mac;
pub mod netns;
pub mod pins;
mod policy_maps;
pub mod rescue;
mod sys;

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
pub use mac::{KnownMac, Macs};
pub use pins::{InstancePins, StateDir};
pub use policy_maps::GRACE;

use crate::policy::{
    compile::PolicyTables,
    encode::{self, PolicyEncoder},
};

/// The eBPF object built by build.rs (empty when built with
/// `AYA_BUILD_SKIP=1`, which `load` reports).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-ebpf"));

pub const INGRESS_PROGRAM: &str = "sg_ingress";
pub const EGRESS_PROGRAM: &str = "sg_egress";
/// The outbound judgement on the host side of the instance's link, with the
/// layer-2 guard before it (`sg_common::guard`).
pub const EGRESS_HOST_PROGRAM: &str = "sg_egress_host";
/// The same inbound judgement as a TC program, for `IngressHook::Tc`.
pub const INGRESS_TC_PROGRAM: &str = "sg_ingress_tc";

/// Which build of its programs an instance runs: sg-ebpf builds each
/// program both ways, so an instance whose subnet has no network ACL runs
/// none of its code (BENCHMARKS.md measured what its mere presence cost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Without network-ACL code.
    Plain,
    /// Also walks the subnet's network ACL.
    NetworkAcl,
}

impl Variant {
    /// The variant `tables` need: with network ACLs where the instance's
    /// subnet has one, either way.
    pub fn for_tables(tables: &PolicyTables) -> Self {
        if tables
            .nacl
            .iter()
            .any(|t| t.flags & sg_common::nacl::NACL_ACTIVE != 0)
        {
            Self::NetworkAcl
        } else {
            Self::Plain
        }
    }
}

/// The name of `program`'s (one of the four above) variant `v`.
pub fn variant(program: &'static str, v: Variant) -> &'static str {
    if v == Variant::Plain {
        return program;
    }
    match program {
        INGRESS_PROGRAM => "sg_ingress_acl",
        EGRESS_PROGRAM => "sg_egress_acl",
        EGRESS_HOST_PROGRAM => "sg_egress_host_acl",
        INGRESS_TC_PROGRAM => "sg_ingress_tc_acl",
        other => panic!("sg-ebpf defines no program {other}"),
    }
}

/// The program (one of the four above) whose variant `name` is.
fn kind_of(name: &'static str) -> &'static str {
    [
        INGRESS_PROGRAM,
        EGRESS_PROGRAM,
        EGRESS_HOST_PROGRAM,
        INGRESS_TC_PROGRAM,
    ]
    .into_iter()
    .find(|&kind| variant(kind, Variant::NetworkAcl) == name || kind == name)
    .unwrap_or_else(|| panic!("sg-ebpf defines no program {name}"))
}

/// How large an instance's sized maps are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// The connection table: the connection allowance.
    pub conns: u32,
    /// The single-port hash (`sg_common::maps::port_exact_capacity`).
    pub port_exact: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            conns: m::CONNS_DEFAULT_ENTRIES,
            port_exact: m::PORT_EXACT_MAX_ENTRIES,
        }
    }
}

pub struct Dataplane {
    ebpf: Ebpf,
    /// The programs loaded into the kernel (verified) so far, by their
    /// variant's name: each is loaded when first attached (verification
    /// is most of the time to start an instance, and each instance needs
    /// two of the four).
    loaded: Vec<&'static str>,
    /// Which build of its programs it runs: what the policy published
    /// last needs.
    variant: Variant,
    /// The capacity of its single-port hash.
    port_exact_capacity: u32,
    /// A flipped swap whose old generation is still to be deleted.
    retiring: Option<encode::Swap>,
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
    /// The capacity of its connection table: the allowance asked for, or a
    /// pinned table's larger one while it holds more than that
    /// ([`conns::capacity_for`]).
    conns_capacity: u32,
    /// Whether new flows are refused while the connection table drains to
    /// a smaller allowance ([`Dataplane::refuse_new_flows`]).
    refusing_new_flows: bool,
    /// Whether its dropped and untracked packets are reported for a live
    /// follower ([`Dataplane::set_live`]).
    live: bool,
    /// The links this value holds, with where they are pinned.
    links: Vec<attach::HeldLink>,
    pub attachment: Option<Attachment>,
}

impl Dataplane {
    /// Loads a fresh copy of the object and its programs into the kernel;
    /// nothing is attached and every packet would be dropped until a policy
    /// is published. New-flow events only ([`Observe::default`]).
    pub fn load() -> Result<Self, DataplaneError> {
        Self::load_with(Observe::default(), None, Capacity::default())
    }

    /// Loads program `kind` (one of the four) into the kernel (once), in
    /// the variant the policy needs (see [`Dataplane::use_programs_for`]):
    /// the verifier checks it then.
    pub fn load_program(&mut self, kind: &'static str) -> Result<(), DataplaneError> {
        let name = variant(kind, self.variant);
        if self.loaded.contains(&name) {
            return Ok(());
        }
        let program = self
            .ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("the object defines program {name}"));
        let result = match program {
            aya::programs::Program::Xdp(p) => p.load(),
            aya::programs::Program::SchedClassifier(p) => p.load(),
            _ => panic!("program {name} is of a type sg-ebpf does not declare"),
        };
        result.map_err(|source| DataplaneError::Program {
            name,
            source: Box::new(source),
        })?;
        self.loaded.push(name);
        Ok(())
    }

    /// [`Dataplane::load`], observing what `observe` asks for: per-flow
    /// counts and events for dropped and untracked packets. What is off is
    /// removed from the programs by the verifier, except the report of a
    /// dropped packet, which a live follower turns on at run time
    /// ([`Dataplane::set_live`]): a flag's test on the dropped path.
    pub fn load_observing(observe: Observe) -> Result<Self, DataplaneError> {
        Self::load_with(observe, None, Capacity::default())
    }

    /// The XDP program, loaded (see [`Dataplane::load_program`]).
    pub fn load_ingress_xdp(&mut self) -> Result<(), DataplaneError> {
        self.load_program(INGRESS_PROGRAM)
    }

    /// Loads the object with its maps pinned under `pins`: maps already
    /// pinned there (by an agent that ran before) are adopted with their
    /// entries: connection tables, counters and the policy in force, which
    /// keeps judging packets until the next publish swaps it.
    ///
    /// `capacity.conns` is the capacity of its connection table (its
    /// allowance): a table pinned with another capacity is replaced by one
    /// of this capacity, its connections carried over. `capacity.port_exact`
    /// is what its single-port hash must hold at least: a pinned one that
    /// holds as much is kept, a smaller one replaced (the policy is written
    /// again anyway).
    pub fn load_pinned(
        pins: InstancePins,
        observe: Observe,
        capacity: Capacity,
    ) -> Result<Self, DataplaneError> {
        Self::load_with(observe, Some(pins), capacity)
    }

    /// [`Dataplane::load`] with a connection allowance other than the
    /// default (tests of the allowance, benchmarks).
    pub fn load_with_allowance(allowance: u32) -> Result<Self, DataplaneError> {
        Self::load_with(
            Observe::default(),
            None,
            Capacity {
                conns: allowance,
                ..Capacity::default()
            },
        )
    }

    /// The capacity of its connection table (see [`conns::capacity_for`]).
    pub fn conns_capacity(&self) -> u32 {
        self.conns_capacity
    }

    /// The capacity of its single-port hash.
    pub fn port_exact_capacity(&self) -> u32 {
        self.port_exact_capacity
    }

    fn load_with(
        observe: Observe,
        pins: Option<InstancePins>,
        capacity: Capacity,
    ) -> Result<Self, DataplaneError> {
        let mut allowance = capacity.conns;
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let mut port_exact_capacity = capacity.port_exact;
        let mut adopted = false;
        let mut pin_paths = Vec::new();
        if let Some(pins) = &pins {
            pins.create().map_err(DataplaneError::Pin)?;
            port_exact_capacity = pinned_port_exact(pins, capacity.port_exact)?;
            replace_other_layouts(pins, port_exact_capacity)?;
            allowance = conns::capacity_for(pins, allowance)?;
            for layout in &m::PINNED {
                let path = pins.map(layout.name);
                adopted |= layout.name == m::SETTINGS && path.exists();
                pin_paths.push((layout.name, path));
            }
        }
        let mut ebpf = with_loader(pins.is_some(), |loader| {
            loader.override_global(m::OBSERVE_GLOBAL, interned(observe.bits), true);
            loader.override_global(
                m::EVENTS_PER_CPU_GLOBAL,
                interned(observe.events_per_cpu),
                true,
            );
            loader.map_max_entries(m::CONNS, allowance);
            loader.map_max_entries(m::PORT_EXACT, port_exact_capacity);
            for (name, path) in pin_paths {
                loader.map_pin_path(name, path);
            }
            loader.load(EBPF_OBJECT)
        })
        .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        // The TC ingress program is verified only when it is wanted
        // (`load_ingress_tc`): verification is most of the time to start.
        let program_err = |name| {
            move |source| DataplaneError::Program {
                name,
                source: Box::new(source),
            }
        };
        // The agent (pinned) loads each program as it attaches it; tests
        // and benchmarks run the XDP and the outbound one directly.
        let mut loaded = Vec::new();
        if pins.is_none() {
            for (name, xdp) in [(INGRESS_PROGRAM, true), (EGRESS_PROGRAM, false)] {
                let result = if xdp {
                    program::<Xdp>(&mut ebpf, name).load()
                } else {
                    program::<SchedClassifier>(&mut ebpf, name).load()
                };
                result.map_err(program_err(name))?;
                loaded.push(name);
            }
        }
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
            let mut encoder = PolicyEncoder::adopt(found.0, &found.1);
            encoder.continue_nacl_epoch(policy_maps::nacl_epoch(&ebpf)?);
            encoder
        } else {
            PolicyEncoder::default()
        };
        let mut encoder = encoder;
        encoder.set_port_exact_capacity(port_exact_capacity);
        // The slot of the generation in force may predate its entries (an
        // agent without shortcuts flipped since): written again from them.
        if let Some((generation, shortcuts)) = encoder.in_force_shortcuts() {
            policy_maps::write_shortcuts(&mut ebpf, generation, &shortcuts)?;
        }
        let mut dp = Self {
            ebpf,
            events,
            loaded,
            variant: Variant::Plain,
            port_exact_capacity,
            retiring: None,
            encoder,
            pins,
            adopted,
            conns_capacity: allowance,
            refusing_new_flows: false,
            live: false,
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
        for link in self.links.drain(..) {
            link.detach();
        }
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
        program_ref(&self.ebpf, variant(INGRESS_PROGRAM, self.variant))
    }

    /// Loads the TC ingress program into the kernel (once): `attach` does
    /// it for `IngressHook::Tc` and the host side, tests before running it.
    pub fn load_ingress_tc(&mut self) -> Result<(), DataplaneError> {
        self.load_program(INGRESS_TC_PROGRAM)
    }

    /// The inbound judgement as a TC program (`IngressHook::Tc`), once
    /// loaded with [`Dataplane::load_ingress_tc`].
    pub fn ingress_tc(&self) -> &SchedClassifier {
        program_ref(&self.ebpf, variant(INGRESS_TC_PROGRAM, self.variant))
    }

    pub fn egress(&self) -> &SchedClassifier {
        program_ref(&self.ebpf, variant(EGRESS_PROGRAM, self.variant))
    }

    /// The host side's outbound program, once loaded
    /// (`load_program(EGRESS_HOST_PROGRAM)`).
    pub fn egress_host(&self) -> &SchedClassifier {
        program_ref(&self.ebpf, variant(EGRESS_HOST_PROGRAM, self.variant))
    }

    /// Which build of its programs it runs.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Makes its programs the variant `tables` need ([`Variant::for_tables`]):
    /// the other variant of each program it has loaded is loaded (verified)
    /// and put on its live links in place of the one there
    /// (`BPF_LINK_UPDATE`: every packet meets one or the other), then the
    /// old one is unloaded. Before anything is loaded this only chooses.
    /// Both variants judge by the same maps; the one without network ACLs
    /// reads no network ACL, so it must go before a policy that has one is
    /// published ([`Dataplane::publish`] and [`Dataplane::flip`] see to
    /// that) and may stay until after one without is.
    pub fn use_programs_for(&mut self, tables: &PolicyTables) -> Result<(), DataplaneError> {
        self.use_variant(Variant::for_tables(tables))
    }

    /// Makes its programs variant `to` whatever the policy needs (the
    /// benchmark measures what the network-ACL code costs an instance that
    /// has none); the next publish chooses again.
    pub fn use_variant(&mut self, to: Variant) -> Result<(), DataplaneError> {
        if self.variant == to {
            return Ok(());
        }
        // The kinds loaded so far, in the variant wanted (loading skips
        // those loaded already: a swap that failed halfway is retried by
        // the next publish from where it stopped).
        let mut kinds: Vec<&'static str> = self.loaded.iter().map(|&n| kind_of(n)).collect();
        kinds.sort_unstable();
        kinds.dedup();
        let was = std::mem::replace(&mut self.variant, to);
        let swapped = kinds
            .iter()
            .try_for_each(|&k| self.load_program(k))
            .and_then(|()| self.swap_links(to));
        if let Err(e) = swapped {
            // Links swapped so far run the new variant, the others the
            // old: both judge by these maps, and both stay loaded.
            self.variant = was;
            return Err(e);
        }
        // Nothing runs the other variant now: unloaded.
        let (keep, old): (Vec<&'static str>, Vec<&'static str>) = self
            .loaded
            .iter()
            .partition(|&&n| variant(kind_of(n), to) == n);
        self.loaded = keep;
        for name in old {
            let unloaded = match self.ebpf.program_mut(name) {
                Some(aya::programs::Program::Xdp(p)) => p.unload(),
                Some(aya::programs::Program::SchedClassifier(p)) => p.unload(),
                _ => Ok(()),
            };
            if let Err(e) = unloaded {
                log::debug!("unloading {name}: {e}");
            }
        }
        if let Some(at) = &self.attachment {
            log::info!(
                "{}: its programs {} network ACLs now",
                at.ifname,
                if to == Variant::NetworkAcl {
                    "walk"
                } else {
                    "carry no"
                }
            );
        }
        Ok(())
    }

    /// Puts variant `to` of each link's program on it (loaded already).
    fn swap_links(&self, to: Variant) -> Result<(), DataplaneError> {
        for held in &self.links {
            let name = variant(attach::hook_program(held.hook()), to);
            let program = self
                .ebpf
                .program(name)
                .unwrap_or_else(|| panic!("the object defines program {name}"));
            program
                .fd()
                .map_err(std::io::Error::other)
                .and_then(|prog| held.swap_program(std::os::fd::AsFd::as_fd(prog)))
                .map_err(|source| DataplaneError::Swap {
                    name,
                    source: Box::new(source),
                })?;
        }
        Ok(())
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
        let settings = self.settle(settings)?;
        if Variant::for_tables(tables) == Variant::NetworkAcl {
            self.use_variant(Variant::NetworkAcl)?;
        }
        let mut maps = policy_maps::KernelPolicyMaps::new(&mut self.ebpf);
        let changed = encode::publish(&mut self.encoder, &mut maps, tables, settings)?;
        if changed {
            log_swap(started, tables);
        }
        self.shed_network_acls(tables);
        Ok(changed)
    }

    /// [`Dataplane::publish`] without waiting: `tables` are in force when
    /// it returns, and the old generation is left for
    /// [`Dataplane::retire`] after [`policy_maps::GRACE`] (so a reload of
    /// many instances waits one grace period, not one each). Returns false
    /// when nothing changed.
    pub fn flip(
        &mut self,
        tables: &PolicyTables,
        settings: Settings,
    ) -> Result<bool, DataplaneError> {
        let started = std::time::Instant::now();
        let settings = self.settle(settings)?;
        if Variant::for_tables(tables) == Variant::NetworkAcl {
            self.use_variant(Variant::NetworkAcl)?;
        }
        let mut maps = policy_maps::KernelPolicyMaps::new(&mut self.ebpf);
        let swap = encode::flip(&mut self.encoder, &mut maps, tables, settings)?;
        let changed = swap.is_some();
        self.retiring = swap;
        if changed {
            log_swap(started, tables);
        }
        self.shed_network_acls(tables);
        Ok(changed)
    }

    /// Once `tables` (without network ACLs) are in force: the programs
    /// that walk network ACLs give way to those that do not. Failing that
    /// costs only the walk's presence (they judge by the same policy), so
    /// it is said, not returned.
    fn shed_network_acls(&mut self, tables: &PolicyTables) {
        if Variant::for_tables(tables) == Variant::Plain
            && let Err(e) = self.use_variant(Variant::Plain)
        {
            log::warn!("the programs without network ACLs could not replace those with: {e}");
        }
    }

    /// Before a swap: an earlier flip's old generation goes (a grace period
    /// after it), and `settings` get what the data plane adds: the tick's
    /// length and the flags besides `READY` (which the swap sets).
    fn settle(&mut self, settings: Settings) -> Result<Settings, DataplaneError> {
        if self.retiring.is_some() {
            std::thread::sleep(policy_maps::GRACE);
            self.retire()?;
        }
        Ok(Settings {
            ns_per_tick: policy_maps::tick_ns(),
            ready: if self.refusing_new_flows {
                sg_common::policy::REFUSING_NEW_FLOWS
            } else {
                0
            } | if self.live {
                sg_common::policy::LIVE
            } else {
                0
            },
            ..settings
        })
    }

    /// Refuses every new flow (`on`), keeping the connections tracked, or
    /// takes new flows again: while the connection table drains to a
    /// smaller allowance, so that no established connection is evicted to
    /// make it smaller. Written into the policy in force at once (and kept
    /// by every later swap); nothing to write before a policy is published.
    pub fn refuse_new_flows(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.refusing_new_flows = on;
        self.set_flag(sg_common::policy::REFUSING_NEW_FLOWS, on)
    }

    /// Reports its dropped and untracked packets as events (`on`), for
    /// `sg-agent flows --live`, whatever the agent was started with; or
    /// stops (then only what flow logs and the drop log ask for).
    pub fn set_live(&mut self, on: bool) -> Result<(), DataplaneError> {
        self.live = on;
        self.set_flag(sg_common::policy::LIVE, on)
    }

    /// Whether it reports for a live follower.
    pub fn live(&self) -> bool {
        self.live
    }

    /// Sets or clears one of [`Settings::ready`]'s flags besides `READY`
    /// in the settings in force (nothing before a policy is published:
    /// the publish writes the flags).
    fn set_flag(&mut self, flag: u32, on: bool) -> Result<(), DataplaneError> {
        use sg_common::policy::READY;
        let map = self
            .ebpf
            .map_mut(m::SETTINGS)
            .expect("the object defines it");
        let mut array: aya::maps::Array<&mut aya::maps::MapData, Settings> =
            aya::maps::Array::try_from(map).map_err(error::map_err(m::SETTINGS))?;
        let mut settings = array.get(&0, 0).map_err(error::map_err(m::SETTINGS))?;
        if settings.ready & READY == 0 {
            return Ok(());
        }
        let ready = if on {
            settings.ready | flag
        } else {
            settings.ready & !flag
        };
        if ready != settings.ready {
            settings.ready = ready;
            array
                .set(0, settings, 0)
                .map_err(error::map_err(m::SETTINGS))?;
        }
        Ok(())
    }

    /// Whether a flip's old generation is still to be deleted.
    pub fn retiring(&self) -> bool {
        self.retiring.is_some()
    }

    /// Deletes the generation [`Dataplane::flip`] left, once a grace period
    /// has passed since.
    pub fn retire(&mut self) -> Result<(), DataplaneError> {
        if let Some(swap) = self.retiring.take() {
            let mut maps = policy_maps::KernelPolicyMaps::new(&mut self.ebpf);
            encode::retire(&mut self.encoder, &mut maps, &swap)?;
        }
        Ok(())
    }
}

/// Runs `f` with this thread's loader, made once per thread: a new
/// `EbpfLoader` parses the kernel's whole BTF (`/sys/kernel/btf/vmlinux`,
/// about 10 ms), which a host loading hundreds of instances would pay for
/// each. What a load sets (globals, sizes, pin paths) is set again before
/// each: `pinned` loads set every pinned map's path, unpinned ones none, so
/// each kind has its own loader.
fn with_loader<T>(pinned: bool, f: impl FnOnce(&mut EbpfLoader<'static>) -> T) -> T {
    thread_local! {
        static LOADERS: std::cell::RefCell<[Option<EbpfLoader<'static>>; 2]> =
            const { std::cell::RefCell::new([None, None]) };
    }
    LOADERS.with(|loaders| {
        let mut loaders = loaders.borrow_mut();
        let loader = loaders[usize::from(pinned)].get_or_insert_with(EbpfLoader::new);
        f(loader)
    })
}

/// A `'static` copy of a global's value for the loaders (which keep what
/// they are given): one per distinct value, and an agent uses one or two.
fn interned(value: u32) -> &'static u32 {
    static VALUES: std::sync::Mutex<Vec<&'static u32>> = std::sync::Mutex::new(Vec::new());
    let mut values = VALUES.lock().expect("the values lock");
    if let Some(v) = values.iter().find(|v| ***v == value) {
        return v;
    }
    let v: &'static u32 = Box::leak(Box::new(value));
    values.push(v);
    v
}

/// The capacity an instance's single-port hash gets: a pinned one is kept
/// when it holds at least `needed` (its size does not follow every
/// reload), else `needed`.
fn pinned_port_exact(pins: &InstancePins, needed: u32) -> Result<u32, DataplaneError> {
    let path = pins.map(m::PORT_EXACT);
    if !path.exists() {
        return Ok(needed);
    }
    let info = MapInfo::from_pin(&path).map_err(|source| DataplaneError::Map {
        name: m::PORT_EXACT,
        source,
    })?;
    Ok(info
        .max_entries()
        .max(needed)
        .min(m::PORT_EXACT_MAX_ENTRIES))
}

/// Unpins maps pinned with another layout than this build's (a build
/// that changed a map without renaming it), saying what is lost with each,
/// so the object creates them anew. The programs on adopted links keep
/// the old maps until they are replaced. The policy maps go together: the
/// settings say which generation the others hold. The single-port hash is
/// to have `port_exact` entries.
fn replace_other_layouts(pins: &InstancePins, port_exact: u32) -> Result<(), DataplaneError> {
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
        // change of it is carried over by `conns`, not lost. The port hash
        // is sized per instance.
        let entries = |n| if layout.name == m::CONNS { 0 } else { n };
        let want_entries = if layout.name == m::PORT_EXACT {
            port_exact
        } else {
            layout.max_entries
        };
        let found = (
            info.key_size(),
            info.value_size(),
            entries(info.max_entries()),
        );
        let want = (layout.key_size, layout.value_size, entries(want_entries));
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

/// The time a swap took, writing included (the reload bench reads it).
fn log_swap(started: std::time::Instant, tables: &PolicyTables) {
    log::debug!(
        "policy swapped in {} ms ({} address entries)",
        started.elapsed().as_millis(),
        tables.v4.len() + tables.v6.len()
    );
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

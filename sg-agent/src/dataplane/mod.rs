//! One instance's data plane: its own copy of the eBPF object (so its maps
//! hold exactly its policy and its connections), the policy writer that
//! swaps whole generations, and the XDP/TC attachments.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc},
};
use sg_common::{
    counters, maps as m,
    policy::{CLASS_GENERATION_BIT, Settings},
};

use crate::{
    compile::{ClassContent, KernelEntries, PolicyTables, class_value, entry_counts},
    netns::{NetnsError, NetnsGuard},
};

/// The eBPF object built by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-ebpf"));

/// An XDP program that only passes: the floor the benchmarks measure
/// against. Never attached by the agent.
pub static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-floor"));
pub const FLOOR_PROGRAM: &str = "sg_floor";

pub const INGRESS_PROGRAM: &str = "sg_ingress";
pub const EGRESS_PROGRAM: &str = "sg_egress";
/// The same inbound judgement as a TC program, for `IngressHook::Tc`.
pub const INGRESS_TC_PROGRAM: &str = "sg_ingress_tc";

/// How long a reload waits between flipping the generation and deleting the
/// old one. XDP and TC programs run to completion within microseconds under
/// RCU; a packet that read the old generation has long finished by then.
const GRACE: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object failed: {0} (run as root on a kernel with BPF, BTF and XDP)")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
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
    #[error("reading the eBPF side's log: {0}")]
    Log(#[source] Box<aya_log::Error>),
    #[error("the policy needs {needed} {what} entries, more than the {limit} this build holds")]
    TooLarge {
        what: &'static str,
        needed: usize,
        limit: u32,
    },
}

/// Where inbound packets are judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IngressHook {
    /// XDP in the driver where it has XDP support, generic otherwise: the
    /// earliest and cheapest point, before the kernel builds an skb.
    #[default]
    XdpNative,
    /// XDP in generic (skb) mode, after the kernel has built the skb.
    XdpGeneric,
    /// TC ingress (TCX), after GRO. On veth, native XDP copies every packet
    /// and generic XDP linearises GRO'd ones, which costs a bulk TCP flow
    /// most (native) or some (generic) of its throughput; TC sees the
    /// packets as the stack does and costs it next to nothing. On veth it
    /// drops a flood for less CPU than XDP too (veth copies each packet for
    /// XDP); on a NIC's driver, XDP drops before any skb exists.
    Tc,
}

/// Where the programs are attached and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub ifname: String,
    pub netns: Option<String>,
    /// "XDP (driver mode)", "XDP (generic mode)" or "TC".
    pub ingress: &'static str,
}

pub struct Dataplane {
    ebpf: Ebpf,
    /// Whether the TC ingress program has been loaded (verified).
    ingress_tc_loaded: bool,
    /// Reads the eBPF side's aya-log records when loaded with logging on.
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Generation in force, once published.
    generation: Option<u8>,
    /// The address entries each generation holds, so they can be deleted.
    addresses: [Option<KernelEntries>; 2],
    /// The classes each generation refers to.
    generation_classes: [BTreeSet<u32>; 2],
    /// Stable class ids. A class's port entries are written once, under an
    /// id no generation tag changes, and stay as they are while any
    /// generation refers to them: a reload writes only the classes it adds
    /// and deletes only those nothing refers to any more.
    class_ids: HashMap<ClassContent, u32>,
    class_contents: HashMap<u32, ClassContent>,
    next_class: u32,
    /// The tables in force.
    tables: Option<PolicyTables>,
    pub attachment: Option<Attachment>,
}

#[derive(Clone, Copy)]
enum Op {
    Insert,
    Delete,
}

/// Inserts or deletes `entries` (prefix length, key, value) in one trie.
fn apply_to_trie<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    entries: &[(u32, K, V)],
    op: Op,
) -> Result<(), DataplaneError> {
    let map = ebpf
        .map_mut(name)
        .expect("the object defines every policy map");
    let mut trie: LpmTrie<&mut MapData, K, V> = LpmTrie::try_from(map).map_err(map_err(name))?;
    for (len, key, value) in entries {
        let key = Key::new(*len, *key);
        applied(
            name,
            op,
            match op {
                Op::Insert => trie.insert(&key, value, 0),
                Op::Delete => trie.remove(&key),
            },
        )?;
    }
    Ok(())
}

fn apply_to_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    entries: &[(K, V)],
    op: Op,
) -> Result<(), DataplaneError> {
    let map = ebpf
        .map_mut(name)
        .expect("the object defines every policy map");
    let mut hash: aya::maps::HashMap<&mut MapData, K, V> =
        aya::maps::HashMap::try_from(map).map_err(map_err(name))?;
    for (key, value) in entries {
        applied(
            name,
            op,
            match op {
                Op::Insert => hash.insert(key, value, 0),
                Op::Delete => hash.remove(key),
            },
        )?;
    }
    Ok(())
}

/// One entry written or deleted; deleting one already absent is fine.
fn applied(
    name: &'static str,
    op: Op,
    result: Result<(), aya::maps::MapError>,
) -> Result<(), DataplaneError> {
    match result {
        Ok(()) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if matches!(op, Op::Delete) && e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(map_err(name)(e)),
    }
}

/// The kernel's tick (one jiffy) in nanoseconds: the resolution of the
/// coarse clocks, which is `TICK_NSEC`.
fn tick_ns() -> u64 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `res` is a valid, writable timespec.
    let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &raw mut res) } == 0;
    let ns = u64::try_from(res.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(res.tv_nsec).unwrap_or(0);
    // 0 makes the programs fall back to the coarse clock.
    if ok { ns } else { 0 }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

impl Dataplane {
    /// Loads a fresh copy of the object and its programs into the kernel;
    /// nothing is attached and every packet would be dropped until a policy
    /// is published.
    pub fn load() -> Result<Self, DataplaneError> {
        Self::load_logging(false)
    }

    /// [`Dataplane::load`], with the eBPF side's debug records (one per
    /// dropped packet, with its reason) forwarded to the `log` crate when
    /// `ebpf_log`. Without it the log statements are compiled out by the
    /// verifier: they cost nothing on the per-packet path.
    pub fn load_logging(ebpf_log: bool) -> Result<Self, DataplaneError> {
        let level = if ebpf_log {
            aya_log::Level::Debug as u8
        } else {
            0
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(aya_log::LEVEL, &level, true)
            .load(EBPF_OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        // The TC ingress program is verified only when it is wanted
        // (`load_ingress_tc`): verification is most of the time to start.
        for name in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
            let program = ebpf
                .program_mut(name)
                .expect("the object defines every program");
            let result = if name == INGRESS_PROGRAM {
                <&mut Xdp>::try_from(program).and_then(Xdp::load)
            } else {
                <&mut SchedClassifier>::try_from(program).and_then(SchedClassifier::load)
            };
            result.map_err(|source| DataplaneError::Program {
                name,
                source: Box::new(source),
            })?;
        }
        let logger = if ebpf_log {
            Some(
                aya_log::EbpfLogger::init(&mut ebpf)
                    .map_err(|e| DataplaneError::Log(Box::new(e)))?,
            )
        } else {
            None
        };
        Ok(Self {
            ebpf,
            logger,
            ingress_tc_loaded: false,
            generation: None,
            addresses: [None, None],
            generation_classes: [BTreeSet::new(), BTreeSet::new()],
            class_ids: HashMap::new(),
            class_contents: HashMap::new(),
            next_class: 1,
            tables: None,
            attachment: None,
        })
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The maps and programs, for tools that read or fill maps directly
    /// (the benchmarks fill the connection table to its capacity).
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn ingress(&self) -> &Xdp {
        self.ebpf
            .program(INGRESS_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("XDP program")
    }

    /// Loads the TC ingress program into the kernel (once): `attach` does
    /// it for `IngressHook::Tc`, tests before running it.
    pub fn load_ingress_tc(&mut self) -> Result<(), DataplaneError> {
        if !self.ingress_tc_loaded {
            self.classifier(INGRESS_TC_PROGRAM)
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
        self.ebpf
            .program(INGRESS_TC_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("TC program")
    }

    pub fn egress(&self) -> &SchedClassifier {
        self.ebpf
            .program(EGRESS_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("TC program")
    }

    /// Forwards the eBPF side's pending log records, if logging is on.
    pub fn flush_logs(&mut self) {
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }

    /// Makes `tables` the policy in force, atomically: they are written
    /// under the inactive generation, one 4-byte write flips the generation
    /// every packet reads first, then the old generation is deleted. A
    /// packet is judged entirely by the old policy or entirely by the new.
    /// Returns false when nothing changed.
    pub fn publish(
        &mut self,
        tables: &PolicyTables,
        settings: Settings,
    ) -> Result<bool, DataplaneError> {
        let timeouts_same = self.current_settings().is_some_and(|s| {
            Settings {
                generation: 0,
                ready: 0,
                ns_per_tick: settings.ns_per_tick,
                ..s
            } == settings
        });
        if self.tables.as_ref() == Some(tables) && timeouts_same {
            return Ok(false);
        }
        let next = self.generation.map_or(0, |g| 1 - g);
        // Leftovers of an interrupted publish.
        self.forget_generation(next)?;
        let started = std::time::Instant::now();

        // Classes: reuse the ids of those already in the maps, write the new.
        let mut local_to_id = HashMap::new();
        let mut new_classes = KernelEntries::default();
        for (local, content) in tables.class_contents() {
            let id = if let Some(&id) = self.class_ids.get(&content) {
                id
            } else {
                let id = self.next_class;
                assert!(id < CLASS_GENERATION_BIT, "class ids exhausted");
                self.next_class += 1;
                new_classes.add_class(id, &content);
                self.class_ids.insert(content.clone(), id);
                self.class_contents.insert(id, content);
                id
            };
            self.generation_classes[usize::from(next)].insert(id);
            local_to_id.insert(local, id);
        }
        let addresses = tables.address_entries(next, |c| {
            let id = local_to_id[&c];
            class_value(id, &self.class_contents[&id])
        });
        let (live_ranges, live_single) = self
            .class_contents
            .values()
            .map(entry_counts)
            .fold((0, 0), |(r, s), (a, b)| (r + a, s + b));
        for (what, needed, limit) in [
            ("IPv4 address", addresses.v4.len(), m::ADDR_MAX_ENTRIES / 2),
            ("IPv6 address", addresses.v6.len(), m::ADDR_MAX_ENTRIES / 2),
            ("port range", live_ranges, m::PORTS_MAX_ENTRIES),
            ("single port", live_single, m::PORT_EXACT_MAX_ENTRIES),
        ] {
            if needed > limit as usize {
                return Err(DataplaneError::TooLarge {
                    what,
                    needed,
                    limit,
                });
            }
        }
        self.insert(&new_classes)?;
        self.addresses[usize::from(next)] = Some(addresses.clone());
        self.insert(&addresses)?;
        log::debug!(
            "wrote {} + {} address entries and {} port entries of {} new classes in {} ms",
            addresses.v4.len(),
            addresses.v6.len(),
            new_classes.ports.len() + new_classes.port_exact.len(),
            self.generation_classes[usize::from(next)].len(),
            started.elapsed().as_millis()
        );
        let mut array: Array<&mut MapData, Settings> =
            Array::try_from(self.ebpf.map_mut(m::SETTINGS).expect("settings map"))
                .map_err(map_err(m::SETTINGS))?;
        array
            .set(
                0,
                Settings {
                    generation: u32::from(next),
                    ready: 1,
                    ns_per_tick: tick_ns(),
                    ..settings
                },
                0,
            )
            .map_err(map_err(m::SETTINGS))?;
        // Flipped: from here on every packet is judged by `next`.
        let previous = self.generation.replace(next);
        self.tables = Some(tables.clone());
        if let Some(previous) = previous {
            std::thread::sleep(GRACE);
            self.forget_generation(previous)?;
        }
        Ok(true)
    }

    /// Deletes what generation `g` holds: its address entries, and the
    /// classes the other generation does not share. On failure the
    /// bookkeeping stays, so the next publish deletes them before reusing
    /// the generation.
    fn forget_generation(&mut self, g: u8) -> Result<(), DataplaneError> {
        let g = usize::from(g);
        if let Some(old) = self.addresses[g].take()
            && let Err(e) = self.delete(&old)
        {
            self.addresses[g] = Some(old);
            return Err(e);
        }
        let unused: Vec<u32> = self.generation_classes[g]
            .difference(&self.generation_classes[1 - g])
            .copied()
            .collect();
        let mut ports = KernelEntries::default();
        for id in &unused {
            if let Some(content) = self.class_contents.get(id) {
                ports.add_class(*id, content);
            }
        }
        self.delete(&ports)?;
        for id in unused {
            if let Some(content) = self.class_contents.remove(&id) {
                self.class_ids.remove(&content);
            }
        }
        self.generation_classes[g].clear();
        Ok(())
    }

    fn current_settings(&self) -> Option<Settings> {
        let array: Array<&MapData, Settings> = Array::try_from(self.ebpf.map(m::SETTINGS)?).ok()?;
        array.get(&0, 0).ok().filter(|s| s.ready != 0)
    }

    fn insert(&mut self, e: &KernelEntries) -> Result<(), DataplaneError> {
        self.each_trie(e, Op::Insert)
    }

    /// Deletes one generation's entries. Every one must go (a stale entry
    /// would come back into force at the next flip); one already absent is
    /// fine.
    fn delete(&mut self, e: &KernelEntries) -> Result<(), DataplaneError> {
        self.each_trie(e, Op::Delete)
    }

    fn each_trie(&mut self, e: &KernelEntries, op: Op) -> Result<(), DataplaneError> {
        apply_to_trie(&mut self.ebpf, m::ADDR_V4, &e.v4, op)?;
        apply_to_trie(&mut self.ebpf, m::ADDR_V6, &e.v6, op)?;
        apply_to_trie(&mut self.ebpf, m::PORTS, &e.ports, op)?;
        apply_to_hash(&mut self.ebpf, m::PORT_EXACT, &e.port_exact, op)
    }

    /// Attaches XDP to the interface's ingress (native mode where the driver
    /// has it, generic otherwise) and TC to its egress (TCX on kernels that
    /// have it), inside `netns` when given.
    pub fn attach(
        &mut self,
        ifname: &str,
        netns: Option<&str>,
        hook: IngressHook,
    ) -> Result<&Attachment, DataplaneError> {
        let _guard = NetnsGuard::enter_opt(netns)?;
        let attach_err = |source| DataplaneError::Attach {
            ifname: ifname.to_owned(),
            netns: netns.map(str::to_owned),
            source: Box::new(source),
        };
        // Legacy (pre-TCX) kernels need the clsact qdisc; it may exist already.
        let _ = tc::qdisc_add_clsact(ifname);
        if hook == IngressHook::Tc {
            self.load_ingress_tc()?;
            self.classifier(INGRESS_TC_PROGRAM)
                .attach(ifname, TcAttachType::Ingress)
                .map_err(attach_err)?;
        }
        let ingress = match hook {
            IngressHook::Tc => "TC",
            IngressHook::XdpNative if self.xdp().attach(ifname, XdpMode::Driver).is_ok() => {
                "XDP (driver mode)"
            }
            IngressHook::XdpNative | IngressHook::XdpGeneric => {
                self.xdp()
                    .attach(ifname, XdpMode::Skb)
                    .map_err(attach_err)?;
                "XDP (generic mode)"
            }
        };
        self.classifier(EGRESS_PROGRAM)
            .attach(ifname, TcAttachType::Egress)
            .map_err(attach_err)?;
        self.attachment = Some(Attachment {
            ifname: ifname.to_owned(),
            netns: netns.map(str::to_owned),
            ingress,
        });
        Ok(self.attachment.as_ref().expect("just set"))
    }

    fn xdp(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(INGRESS_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("XDP program")
    }

    fn classifier(&mut self, name: &str) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(name)
            .and_then(|p| p.try_into().ok())
            .expect("TC program")
    }

    /// Per-direction packet counts by reason, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(u8, &'static str, u64)>, DataplaneError> {
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.ebpf.map(m::COUNTERS).expect("map"))
                .map_err(map_err(m::COUNTERS))?;
        let mut out = Vec::new();
        for direction in [0u8, 1] {
            for (reason, name) in counters::NAMES.iter().enumerate() {
                let reason = u32::try_from(reason).expect("few reasons");
                let values = array
                    .get(&counters::index(direction, reason), 0)
                    .map_err(map_err(m::COUNTERS))?;
                out.push((direction, *name, values.iter().sum()));
            }
        }
        Ok(out)
    }
}

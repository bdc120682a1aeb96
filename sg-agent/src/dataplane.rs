//! One instance's data plane: its own copy of the eBPF object (so its maps
//! hold exactly its policy and its connections), the policy writer that
//! swaps whole generations, and the XDP/TC attachments.

use std::time::Duration;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc},
};
use sg_common::{
    counters, maps as m,
    policy::{AddrKeyV4, AddrKeyV6, AddrValue, PortKey, PortValue, Settings},
};

use crate::{
    compile::{KernelEntries, PolicyTables},
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
    #[error("the policy needs {needed} {what} entries, more than the {limit} this build holds")]
    TooLarge {
        what: &'static str,
        needed: usize,
        limit: u32,
    },
}

/// How to attach the XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// In the driver where it has XDP support, generic otherwise.
    #[default]
    Native,
    /// Generic (skb) mode, after the kernel has built the skb.
    Generic,
}

/// Where the programs are attached and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub ifname: String,
    pub netns: Option<String>,
    /// "driver" (native) or "generic" (skb).
    pub xdp_mode: &'static str,
}

pub struct Dataplane {
    ebpf: Ebpf,
    /// Generation in force, once published.
    generation: Option<u8>,
    /// What each generation holds in the maps, so it can be deleted.
    written: [Option<KernelEntries>; 2],
    /// The tables in force.
    tables: Option<PolicyTables>,
    pub attachment: Option<Attachment>,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

impl Dataplane {
    /// Loads a fresh copy of the object and its programs into the kernel;
    /// nothing is attached and every packet would be dropped until a policy
    /// is published.
    pub fn load() -> Result<Self, DataplaneError> {
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        for name in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
            let program = ebpf
                .program_mut(name)
                .expect("the object defines both programs");
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
        Ok(Self {
            ebpf,
            generation: None,
            written: [None, None],
            tables: None,
            attachment: None,
        })
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ingress(&self) -> &Xdp {
        self.ebpf
            .program(INGRESS_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("XDP program")
    }

    pub fn egress(&self) -> &SchedClassifier {
        self.ebpf
            .program(EGRESS_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("TC program")
    }

    /// The tables in force, if any.
    pub fn tables(&self) -> Option<&PolicyTables> {
        self.tables.as_ref()
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
                ..s
            } == settings
        });
        if self.tables.as_ref() == Some(tables) && timeouts_same {
            return Ok(false);
        }
        let next = self.generation.map_or(0, |g| 1 - g);
        // Leftovers of an interrupted publish.
        if let Some(old) = self.written[usize::from(next)].take() {
            self.delete(&old)?;
        }
        let entries = tables.kernel_entries(next);
        for (what, needed, limit) in [
            ("IPv4 address", entries.v4.len(), m::ADDR_MAX_ENTRIES / 2),
            ("IPv6 address", entries.v6.len(), m::ADDR_MAX_ENTRIES / 2),
            ("port", entries.ports.len(), m::PORTS_MAX_ENTRIES / 2),
        ] {
            if needed > limit as usize {
                return Err(DataplaneError::TooLarge {
                    what,
                    needed,
                    limit,
                });
            }
        }
        self.written[usize::from(next)] = Some(entries.clone());
        self.insert(&entries)?;
        let mut array: Array<&mut MapData, Settings> =
            Array::try_from(self.ebpf.map_mut(m::SETTINGS).expect("settings map"))
                .map_err(map_err(m::SETTINGS))?;
        array
            .set(
                0,
                Settings {
                    generation: u32::from(next),
                    ready: 1,
                    ..settings
                },
                0,
            )
            .map_err(map_err(m::SETTINGS))?;
        if let Some(previous) = self.generation {
            std::thread::sleep(GRACE);
            if let Some(old) = self.written[usize::from(previous)].take() {
                self.delete(&old)?;
            }
        }
        self.generation = Some(next);
        self.tables = Some(tables.clone());
        Ok(true)
    }

    fn current_settings(&self) -> Option<Settings> {
        let array: Array<&MapData, Settings> = Array::try_from(self.ebpf.map(m::SETTINGS)?).ok()?;
        array.get(&0, 0).ok().filter(|s| s.ready != 0)
    }

    fn insert(&mut self, e: &KernelEntries) -> Result<(), DataplaneError> {
        let mut v4: LpmTrie<&mut MapData, AddrKeyV4, AddrValue> =
            LpmTrie::try_from(self.ebpf.map_mut(m::ADDR_V4).expect("map"))
                .map_err(map_err(m::ADDR_V4))?;
        for (len, key, value) in &e.v4 {
            v4.insert(&Key::new(*len, *key), value, 0)
                .map_err(map_err(m::ADDR_V4))?;
        }
        let mut v6: LpmTrie<&mut MapData, AddrKeyV6, AddrValue> =
            LpmTrie::try_from(self.ebpf.map_mut(m::ADDR_V6).expect("map"))
                .map_err(map_err(m::ADDR_V6))?;
        for (len, key, value) in &e.v6 {
            v6.insert(&Key::new(*len, *key), value, 0)
                .map_err(map_err(m::ADDR_V6))?;
        }
        let mut ports: LpmTrie<&mut MapData, PortKey, PortValue> =
            LpmTrie::try_from(self.ebpf.map_mut(m::PORTS).expect("map"))
                .map_err(map_err(m::PORTS))?;
        for (len, key, value) in &e.ports {
            ports
                .insert(&Key::new(*len, *key), value, 0)
                .map_err(map_err(m::PORTS))?;
        }
        Ok(())
    }

    fn delete(&mut self, e: &KernelEntries) -> Result<(), DataplaneError> {
        let mut v4: LpmTrie<&mut MapData, AddrKeyV4, AddrValue> =
            LpmTrie::try_from(self.ebpf.map_mut(m::ADDR_V4).expect("map"))
                .map_err(map_err(m::ADDR_V4))?;
        for (len, key, _) in &e.v4 {
            let _ = v4.remove(&Key::new(*len, *key));
        }
        let mut v6: LpmTrie<&mut MapData, AddrKeyV6, AddrValue> =
            LpmTrie::try_from(self.ebpf.map_mut(m::ADDR_V6).expect("map"))
                .map_err(map_err(m::ADDR_V6))?;
        for (len, key, _) in &e.v6 {
            let _ = v6.remove(&Key::new(*len, *key));
        }
        let mut ports: LpmTrie<&mut MapData, PortKey, PortValue> =
            LpmTrie::try_from(self.ebpf.map_mut(m::PORTS).expect("map"))
                .map_err(map_err(m::PORTS))?;
        for (len, key, _) in &e.ports {
            let _ = ports.remove(&Key::new(*len, *key));
        }
        Ok(())
    }

    /// Attaches XDP to the interface's ingress (native mode where the driver
    /// has it, generic otherwise) and TC to its egress (TCX on kernels that
    /// have it), inside `netns` when given.
    pub fn attach(
        &mut self,
        ifname: &str,
        netns: Option<&str>,
        mode: XdpAttachMode,
    ) -> Result<&Attachment, DataplaneError> {
        let _guard = NetnsGuard::enter_opt(netns)?;
        let attach_err = |source| DataplaneError::Attach {
            ifname: ifname.to_owned(),
            netns: netns.map(str::to_owned),
            source: Box::new(source),
        };
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(INGRESS_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("XDP program");
        let xdp_mode =
            if mode == XdpAttachMode::Native && xdp.attach(ifname, XdpMode::Driver).is_ok() {
                "driver"
            } else {
                xdp.attach(ifname, XdpMode::Skb).map_err(attach_err)?;
                "generic"
            };
        // Legacy (pre-TCX) kernels need the clsact qdisc; it may exist already.
        let _ = tc::qdisc_add_clsact(ifname);
        let tc: &mut SchedClassifier = self
            .ebpf
            .program_mut(EGRESS_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("TC program");
        tc.attach(ifname, TcAttachType::Egress)
            .map_err(attach_err)?;
        self.attachment = Some(Attachment {
            ifname: ifname.to_owned(),
            netns: netns.map(str::to_owned),
            xdp_mode,
        });
        Ok(self.attachment.as_ref().expect("just set"))
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

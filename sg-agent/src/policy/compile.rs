//! Config -> the flat tables the data plane reads. Pure: no kernel here.
//!
//! Per instance, every distinct source prefix becomes one address-trie entry
//! whose *class* is the set of (protocol, port interval) matchers of every
//! rule whose source contains that prefix, broader prefixes included. That
//! copy-down is what makes a longest-prefix match return the union that
//! security groups require (10.0.0.0/8 tcp/22 plus 10.1.0.0/16 tcp/80 must
//! still allow 10.1.2.3 on port 22). Classes are deduplicated, so ten
//! thousand prefix-list entries with the same rules make one class. Each
//! class's matchers are merged per protocol: single ports go to the port
//! hash, ranges (as covering prefixes) and whole protocols to the port trie.
//!
//! The tables carry no generation and no kernel class ids: [`super::encode`]
//! turns them into map entries, given what the maps already hold.

use std::collections::{BTreeMap, HashMap};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use sg_common::{
    flow::{FAMILY_V4, FAMILY_V6},
    nacl::{
        ENTRY_ALLOW, ENTRY_ANY_PORT, ENTRY_ANY_PROTO, NACL_ACTIVE, NACL_SUBNET_V4, NACL_SUBNET_V6,
        NaclEntry, NaclTable,
    },
    policy::{OwnV4, OwnV6, Settings},
};

use crate::{
    config::{
        ConntrackSettings, Direction, Instance, Link, MacAddr, Protocol, TrackedService, Vpc,
    },
    policy::resolve::{Members, effective_rules_with},
};

/// The whole compiled policy.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub instances: Vec<CompiledInstance>,
}

#[derive(Clone, Debug)]
pub struct CompiledInstance {
    pub name: String,
    /// Where it is enforced (`None`: a group member only, in tests).
    pub link: Option<Link>,
    pub netns: Option<String>,
    /// The MAC address the host side checks (`None`: learned, or from
    /// libvirt).
    pub mac: Option<MacAddr>,
    /// The MAC address the AWS services answer from (`[vpc] service_mac`;
    /// `None`: the host side's own, or none at all on the instance side).
    pub service_mac: Option<MacAddr>,
    pub tables: PolicyTables,
    /// Connection-tracking timeouts (generation and ready are set when
    /// published).
    pub settings: Settings,
    /// The connection allowance: the capacity of its connection table.
    pub max_tracked_connections: u32,
    /// The capacity its single-port hash needs
    /// (`sg_common::maps::port_exact_capacity` of its tables).
    pub port_exact_capacity: u32,
}

/// One instance's tables, independent of generation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyTables {
    pub v4: Vec<AddrEntry<Ipv4Net>>,
    pub v6: Vec<AddrEntry<Ipv6Net>>,
    pub ports: Vec<PortEntry>,
    pub classes: u32,
    /// The subnet's network ACL, inbound and outbound (by direction code;
    /// epoch 0: the encoder numbers each change). Inactive where none
    /// filters the instance.
    pub nacl: [NaclTable; 2],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrEntry<N> {
    pub direction: u8,
    pub net: N,
    /// 1-based class number, local to these tables ([`PolicyTables::class_contents`]);
    /// 0 for the instance's own addresses (direction `OWN`), which have none.
    pub class: u32,
    /// Flags of this entry beside its class's: `CLASS_REVERSE_OPEN_*` on a
    /// whole-address-space entry.
    pub flags: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEntry {
    pub class: u32,
    /// `None`: every protocol.
    pub proto: Option<u8>,
    /// Port prefix: value and number of significant bits (0 = every port).
    pub port: u16,
    pub port_bits: u8,
}

/// A class: sorted (protocol, merged port intervals); protocol `None` means
/// every protocol and then stands alone.
type ClassKey = Vec<(Option<u8>, Vec<(u16, u16)>)>;

/// Every instance's tables (tests, benchmarks: instances without an
/// interface too). Panics on a policy too large for the maps; the agent
/// and `check` use [`compile_enforced`], which says so.
pub fn compile(vpc: &Vpc) -> CompiledPolicy {
    compile_where(vpc, |_| true).unwrap_or_else(|e| panic!("{e}"))
}

/// The tables of the instances this host enforces (those with an
/// interface; the others only count as group members and are never
/// compiled), or the first instance whose policy would not fit the maps,
/// found before its tables are built.
pub fn compile_enforced(vpc: &Vpc) -> Result<CompiledPolicy, InstanceTooLarge> {
    compile_where(vpc, Instance::enforced_here)
}

/// Whether every instance this host would enforce fits the maps, as
/// [`compile_enforced`] finds, without keeping any instance's tables:
/// `check` and `push` judge a whole description of many nodes, whose
/// tables together can be gigabytes (each instance's holds its groups'
/// members). The instances are compiled on every CPU, one at a time each.
pub fn fits_enforced(vpc: &Vpc) -> Result<(), InstanceTooLarge> {
    let members = Members::of(vpc);
    let wanted: Vec<&Instance> = vpc.instances.iter().filter(|i| i.enforced_here()).collect();
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let chunk = wanted.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = wanted
            .chunks(chunk)
            .map(|part| {
                let members = &members;
                scope.spawn(move || {
                    for inst in part {
                        compile_instance_with(vpc, inst, Some(members)).map_err(|source| {
                            InstanceTooLarge {
                                instance: inst.name.clone(),
                                source,
                            }
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        // The first refusal in file order.
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
    })
}

/// An instance whose policy would not fit the maps.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "instance {instance}: {source}; split its rules over fewer narrower prefixes or fewer ports"
)]
pub struct InstanceTooLarge {
    pub instance: String,
    #[source]
    pub source: TooLarge,
}

fn compile_where(
    vpc: &Vpc,
    wanted: impl Fn(&Instance) -> bool,
) -> Result<CompiledPolicy, InstanceTooLarge> {
    let members = Members::of(vpc);
    let instances = vpc
        .instances
        .iter()
        .filter(|i| wanted(i))
        .map(|inst| {
            let tables = compile_instance_with(vpc, inst, Some(&members)).map_err(|source| {
                InstanceTooLarge {
                    instance: inst.name.clone(),
                    source,
                }
            })?;
            let single_ports = tables
                .class_contents()
                .values()
                .map(|c| entry_counts(c).1)
                .sum();
            Ok(CompiledInstance {
                port_exact_capacity: sg_common::maps::port_exact_capacity(single_ports),
                name: inst.name.clone(),
                link: inst.link.clone(),
                netns: inst.netns.clone(),
                mac: inst.mac,
                service_mac: vpc.service_mac,
                tables,
                settings: settings(&vpc.conntrack_of(inst)),
                max_tracked_connections: vpc.conntrack_of(inst).max_tracked_connections,
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(CompiledPolicy { instances })
}

/// A policy too large for the maps: the numbers, so the user can see how
/// far over it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the policy needs {needed} {what} entries, more than the {limit} this build holds")]
pub struct TooLarge {
    pub what: &'static str,
    pub needed: usize,
    pub limit: u32,
}

/// A protocol's matcher of one whole port (or ICMP type and code) goes to
/// the port hash; every other matcher to the port trie.
pub(super) fn is_single_port(port_bits: u8) -> bool {
    port_bits == 16
}

/// How many port-trie and port-hash entries a class takes.
pub fn entry_counts(content: &ClassContent) -> (usize, usize) {
    let exact = content
        .iter()
        .filter(|&&(proto, _, bits)| proto.is_some() && is_single_port(bits))
        .count();
    (content.len() - exact, exact)
}

/// Matchers the copy-down may gather over all of an instance's prefixes
/// (each prefix holds its own rules and every broader prefix's): 8 Mi, a
/// few tens of MiB while compiling, far beyond what the maps could hold
/// once the classes are merged.
pub const EXPANSION_LIMIT: usize = 1 << 23;

const SEC: u64 = 1_000_000_000;

/// Timeouts: AWS's adjustable ones from the file; the rest are sg-agent's
/// choices where AWS publishes none: a half-closed connection (one FIN)
/// idles out as an established one (its other side may still be sending a
/// long response); handshakes, closed and reset connections and ICMP idle
/// out fast, as a careful stateful firewall keeps them.
pub fn settings(ct: &ConntrackSettings) -> Settings {
    Settings {
        generation: 0,
        ready: 0,
        tcp_syn_ns: 60 * SEC,
        tcp_established_ns: ct.tcp_established_timeout * SEC,
        tcp_closing_ns: ct.tcp_established_timeout * SEC,
        tcp_closed_ns: 10 * SEC,
        udp_ns: ct.udp_timeout * SEC,
        udp_stream_ns: ct.udp_stream_timeout * SEC,
        icmp_ns: 30 * SEC,
        other_ns: 600 * SEC,
        fragment_ns: 30 * SEC,
        ns_per_tick: 0,
        nacl: [0; 2],
    }
}

/// The network ACL that filters `inst`'s subnet, as the programs read it:
/// both directions inactive where none does (AWS's default network ACL
/// allows everything).
pub fn network_acl_tables(vpc: &Vpc, inst: &Instance) -> [NaclTable; 2] {
    let mut out = [NaclTable::default(), NaclTable::default()];
    let Some((subnet, acl)) = vpc.network_acl_for(inst) else {
        return out;
    };
    for direction in [Direction::Ingress, Direction::Egress] {
        let t = &mut out[usize::from(direction.code())];
        t.flags = NACL_ACTIVE;
        if let IpNet::V4(n) = subnet.cidr {
            t.flags |= NACL_SUBNET_V4;
            t.subnet_v4 = OwnV4 {
                net: u32::from(n.network()).to_be(),
                mask: u32::from(n.netmask()).to_be(),
            };
        }
        if let Some(IpNet::V6(n)) = subnet.ipv6 {
            t.flags |= NACL_SUBNET_V6;
            t.subnet_v6 = OwnV6 {
                net: sg_common::flow::addr_from_octets(&n.network().octets()),
                mask: sg_common::flow::addr_from_octets(&n.netmask().octets()),
            };
        }
        let entries = acl.entries(direction);
        for (slot, e) in t.entries.iter_mut().zip(entries) {
            *slot = nacl_entry(e);
        }
        t.len = u32::try_from(entries.len().min(t.entries.len())).expect("at most 40");
    }
    out
}

fn nacl_entry(e: &crate::config::AclEntry) -> NaclEntry {
    let (family, net, mask) = match e.cidr {
        IpNet::V4(n) => (
            FAMILY_V4,
            [u32::from(n.network()).to_be(), 0, 0, 0],
            [u32::from(n.netmask()).to_be(), 0, 0, 0],
        ),
        IpNet::V6(n) => (
            FAMILY_V6,
            sg_common::flow::addr_from_octets(&n.network().octets()),
            sg_common::flow::addr_from_octets(&n.netmask().octets()),
        ),
    };
    let mut flags = if e.allow { ENTRY_ALLOW } else { 0 };
    let proto = match e.protocol {
        Protocol::All => {
            flags |= ENTRY_ANY_PROTO;
            0
        }
        Protocol::Number(n) => n,
    };
    let (port_lo, port_hi) = e.ports.port_interval();
    if e.protocol == Protocol::All || (port_lo, port_hi) == (0, u16::MAX) {
        flags |= ENTRY_ANY_PORT;
    }
    NaclEntry {
        net,
        mask,
        port_lo,
        port_hi,
        family,
        proto,
        flags,
        pad: 0,
    }
}

/// (protocol, port interval) of one rule.
type Matcher = (Option<u8>, (u16, u16));

/// [`compile_instance_bounded`] for a policy known to fit (tests).
pub fn compile_instance(vpc: &Vpc, inst: &Instance) -> PolicyTables {
    compile_instance_bounded(vpc, inst).unwrap_or_else(|e| panic!("{e}"))
}

/// Compiles one instance, refusing (before building anything large) a
/// policy whose address entries, copied-down rules or port entries would
/// exceed what the maps hold.
pub fn compile_instance_bounded(vpc: &Vpc, inst: &Instance) -> Result<PolicyTables, TooLarge> {
    compile_instance_with(vpc, inst, None)
}

/// [`compile_instance_bounded`], with the groups' members gathered already.
fn compile_instance_with(
    vpc: &Vpc,
    inst: &Instance,
    members: Option<&Members>,
) -> Result<PolicyTables, TooLarge> {
    // direction -> prefix -> matchers of rules naming exactly that prefix.
    let mut by_prefix: BTreeMap<(Direction, IpNet), Vec<Matcher>> = BTreeMap::new();
    for r in effective_rules_with(vpc, inst, members) {
        let proto = match r.rule.protocol {
            Protocol::All => None,
            Protocol::Number(n) => Some(n),
        };
        let matcher = (proto, r.rule.ports.port_interval());
        for net in &r.prefixes {
            by_prefix
                .entry((r.direction, net.trunc()))
                .or_default()
                .push(matcher);
        }
    }

    tracked_service_entries(vpc, &mut by_prefix);
    expansion_fits(&by_prefix)?;
    let mut classes: HashMap<ClassKey, u32> = HashMap::new();
    let mut class_order: Vec<ClassKey> = Vec::new();
    let mut tables = PolicyTables::default();
    let lengths = PrefixLengths::of(&by_prefix);
    let untrack = Untrack::of(&by_prefix);
    for &(direction, net) in by_prefix.keys() {
        // Union with every broader prefix present (prefixes containing a
        // common address are nested, so these are all of them).
        let mut matchers: Vec<Matcher> = Vec::new();
        for m in lengths.wider(&by_prefix, direction, net) {
            matchers.extend_from_slice(m);
        }
        let key = class_key(matchers);
        let class = *classes.entry(key.clone()).or_insert_with(|| {
            class_order.push(key);
            u32::try_from(class_order.len()).expect("fewer than 2^31 classes")
        });
        let d = direction.code();
        let flags = untrack.flags(direction, net)
            | vpc
                .tracked_service_of_net(&net)
                .map_or(0, TrackedService::flags);
        match net {
            IpNet::V4(net) => tables.v4.push(AddrEntry {
                direction: d,
                net,
                class,
                flags,
            }),
            IpNet::V6(net) => tables.v6.push(AddrEntry {
                direction: d,
                net,
                class,
                flags,
            }),
        }
    }
    own_addresses(inst, &mut tables);
    aws_services(vpc, &mut tables);
    tables.nacl = network_acl_tables(vpc, inst);
    for (i, key) in class_order.iter().enumerate() {
        let class = u32::try_from(i + 1).expect("fewer than 2^31 classes");
        for (proto, intervals) in key {
            for &(lo, hi) in intervals {
                for (port, port_bits) in port_prefixes(lo, hi) {
                    tables.ports.push(PortEntry {
                        class,
                        proto: *proto,
                        port,
                        port_bits,
                    });
                }
                let limit =
                    sg_common::maps::PORTS_MAX_ENTRIES + sg_common::maps::PORT_EXACT_MAX_ENTRIES;
                if tables.ports.len() > limit as usize {
                    return Err(TooLarge {
                        what: "port",
                        needed: tables.ports.len(),
                        limit,
                    });
                }
            }
        }
    }
    tables.classes = u32::try_from(class_order.len()).expect("fewer than 2^31 classes");
    Ok(tables)
}

/// An entry for each address range of an automatically tracked service
/// (`[[aws_service]]`) in each direction where some rule's prefix contains
/// it: it holds the rules of those prefixes (the copy-down) and the
/// service's flags, so a flow with the service is always tracked. Rule
/// prefixes inside a service's range get its flags as they are.
fn tracked_service_entries(vpc: &Vpc, by_prefix: &mut BTreeMap<(Direction, IpNet), Vec<Matcher>>) {
    // The rules' prefixes alone (not those this adds) decide what is covered.
    let lengths = PrefixLengths::of(by_prefix);
    for service in &vpc.tracked_services {
        for &net in &service.addresses {
            for direction in [Direction::Ingress, Direction::Egress] {
                let covered = lengths.wider(by_prefix, direction, net).next().is_some();
                if covered {
                    by_prefix.entry((direction, net.trunc())).or_default();
                }
            }
        }
    }
}

/// The prefix lengths present, per direction and family: a prefix's broader
/// ones are looked up at those lengths only (a policy has a few: /32 and
/// /128 members, /0, a VPC's /16...), not at every length up to its own
/// (33 or 129 lookups per prefix made a description of thousands of
/// instances take minutes to check).
struct PrefixLengths([[bool; 129]; 4]);

impl PrefixLengths {
    fn slot(direction: Direction, net: &IpNet) -> usize {
        usize::from(direction.code()) * 2 + usize::from(net.addr().is_ipv6())
    }

    fn of(by_prefix: &BTreeMap<(Direction, IpNet), Vec<Matcher>>) -> Self {
        let mut present = [[false; 129]; 4];
        for (direction, net) in by_prefix.keys() {
            present[Self::slot(*direction, net)][usize::from(net.prefix_len())] = true;
        }
        Self(present)
    }

    /// The matchers of `net` and of every broader prefix in `by_prefix`
    /// for `direction`, broadest first.
    fn wider<'a>(
        &self,
        by_prefix: &'a BTreeMap<(Direction, IpNet), Vec<Matcher>>,
        direction: Direction,
        net: IpNet,
    ) -> impl Iterator<Item = &'a Vec<Matcher>> + 'a {
        let present = self.0[Self::slot(direction, &net)];
        (0..=net.prefix_len())
            .filter(move |&len| present[usize::from(len)])
            .filter_map(move |len| {
                let wider = IpNet::new(net.addr(), len).ok()?.trunc();
                by_prefix.get(&(direction, wider))
            })
    }
}

/// The size of the copy-down, counted before it is done: address entries
/// per family, and the matchers all prefixes gather from themselves and
/// their broader prefixes.
fn expansion_fits(by_prefix: &BTreeMap<(Direction, IpNet), Vec<Matcher>>) -> Result<(), TooLarge> {
    let limit = sg_common::maps::ADDR_MAX_ENTRIES / 2;
    for (what, v6) in [("IPv4 address", false), ("IPv6 address", true)] {
        let needed = by_prefix
            .keys()
            .filter(|(_, n)| n.addr().is_ipv6() == v6)
            .count();
        if needed > limit as usize {
            return Err(TooLarge {
                what,
                needed,
                limit,
            });
        }
    }
    let mut gathered = 0usize;
    let lengths = PrefixLengths::of(by_prefix);
    for &(direction, net) in by_prefix.keys() {
        gathered += lengths
            .wider(by_prefix, direction, net)
            .map(Vec::len)
            .sum::<usize>();
        if gathered > EXPANSION_LIMIT {
            return Err(TooLarge {
                what: "copied-down rule (rules of broader prefixes repeated in narrower ones)",
                needed: gathered,
                limit: u32::try_from(EXPANSION_LIMIT).unwrap_or(u32::MAX),
            });
        }
    }
    Ok(())
}

/// The instance's own addresses, for the source/destination check: host
/// entries under the `OWN` tag, class 0 (no class); with the check off,
/// the whole address space of both families.
fn own_addresses(inst: &Instance, tables: &mut PolicyTables) {
    let own = sg_common::policy::OWN;
    let nets: Vec<IpNet> = if inst.source_dest_check {
        inst.nets().collect()
    } else {
        vec![IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())]
    };
    for net in nets {
        match net {
            IpNet::V4(net) => tables.v4.push(AddrEntry {
                direction: own,
                net,
                class: 0,
                flags: 0,
            }),
            IpNet::V6(net) => tables.v6.push(AddrEntry {
                direction: own,
                net,
                class: 0,
                flags: 0,
            }),
        }
    }
}

/// What security groups never filter, by address: entries under the
/// `SERVICES` tag (any prefix), class 0.
fn aws_services(vpc: &Vpc, tables: &mut PolicyTables) {
    let direction = sg_common::policy::SERVICES;
    for (net, _) in vpc.aws_services() {
        match net {
            IpNet::V4(net) => tables.v4.push(AddrEntry {
                direction,
                net,
                class: 0,
                flags: 0,
            }),
            IpNet::V6(net) => tables.v6.push(AddrEntry {
                direction,
                net,
                class: 0,
                flags: 0,
            }),
        }
    }
}

/// The untracked-flow flags of the entry for `net` in `direction`: on the
/// whole-space entry, `CLASS_REVERSE_OPEN_*` when the other direction has a
/// rule for the whole address space of that family allowing every port of
/// TCP (UDP), or all traffic (then what this entry's rules allow of that
/// protocol is untracked); on every entry, `CLASS_MAY_UNTRACK_*` when
/// either direction's whole-space entry has that bit, so the data plane
/// looks the whole-space entries up only when a flow may be untracked.
/// Computed once per instance: the `CLASS_REVERSE_OPEN_*` bits of each
/// direction's whole-space entry, per family (they depend on nothing else).
struct Untrack([u32; 4]);

impl Untrack {
    fn of(by_prefix: &BTreeMap<(Direction, IpNet), Vec<Matcher>>) -> Self {
        use sg_common::policy::{CLASS_REVERSE_OPEN_TCP, CLASS_REVERSE_OPEN_UDP};
        let mut bits = [0u32; 4];
        for whole in [IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())] {
            for d in [Direction::Ingress, Direction::Egress] {
                if !by_prefix.contains_key(&(d, whole)) {
                    continue;
                }
                let Some(matchers) = by_prefix.get(&(d.other(), whole)) else {
                    continue;
                };
                let open = |proto: u8| {
                    matchers
                        .iter()
                        .any(|&(p, iv)| p.is_none() || (p == Some(proto) && iv == (0, u16::MAX)))
                };
                let slot = &mut bits[PrefixLengths::slot(d, &whole)];
                if open(sg_common::flow::proto::TCP) {
                    *slot |= CLASS_REVERSE_OPEN_TCP;
                }
                if open(sg_common::flow::proto::UDP) {
                    *slot |= CLASS_REVERSE_OPEN_UDP;
                }
            }
        }
        Self(bits)
    }

    fn flags(&self, direction: Direction, net: IpNet) -> u32 {
        use sg_common::policy::{
            CLASS_MAY_UNTRACK_TCP, CLASS_MAY_UNTRACK_UDP, CLASS_REVERSE_OPEN_TCP,
            CLASS_REVERSE_OPEN_UDP,
        };
        let here = self.0[PrefixLengths::slot(direction, &net)];
        let either = here | self.0[PrefixLengths::slot(direction.other(), &net)];
        let mut flags = if net.prefix_len() == 0 { here } else { 0 };
        if either & CLASS_REVERSE_OPEN_TCP != 0 {
            flags |= CLASS_MAY_UNTRACK_TCP;
        }
        if either & CLASS_REVERSE_OPEN_UDP != 0 {
            flags |= CLASS_MAY_UNTRACK_UDP;
        }
        flags
    }
}

/// Canonical form of a set of matchers: every-protocol absorbs the rest;
/// per protocol, intervals sorted and merged.
fn class_key(matchers: Vec<Matcher>) -> ClassKey {
    if matchers.iter().any(|(p, _)| p.is_none()) {
        return vec![(None, vec![(0, u16::MAX)])];
    }
    let mut per_proto: BTreeMap<u8, Vec<(u16, u16)>> = BTreeMap::new();
    for (p, iv) in matchers {
        per_proto
            .entry(p.expect("checked above"))
            .or_default()
            .push(iv);
    }
    per_proto
        .into_iter()
        .map(|(p, mut ivs)| {
            ivs.sort_unstable();
            let mut merged: Vec<(u16, u16)> = Vec::new();
            for (lo, hi) in ivs {
                match merged.last_mut() {
                    Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                    _ => merged.push((lo, hi)),
                }
            }
            (Some(p), merged)
        })
        .collect()
}

/// The fewest prefixes (value, significant bits) covering `lo..=hi`.
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // Largest aligned block starting at lo that fits.
        let mut size_bits = if lo == 0 {
            16
        } else {
            lo.trailing_zeros().min(16)
        };
        while lo + (1 << size_bits) - 1 > hi {
            size_bits -= 1;
        }
        out.push((
            u16::try_from(lo).expect("within u16"),
            u8::try_from(16 - size_bits).expect("<= 16"),
        ));
        lo += 1 << size_bits;
    }
    out
}

/// What a class allows: its port entries without the class id, sorted. Two
/// classes with the same content are the same class.
pub type ClassContent = Vec<(Option<u8>, u16, u8)>;

impl PolicyTables {
    /// Each class's content, by the class number these tables use.
    pub fn class_contents(&self) -> BTreeMap<u32, ClassContent> {
        let mut out: BTreeMap<u32, ClassContent> = BTreeMap::new();
        for p in &self.ports {
            out.entry(p.class)
                .or_default()
                .push((p.proto, p.port, p.port_bits));
        }
        for content in out.values_mut() {
            content.sort_unstable();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fleet: 300 instances in 6 groups admitting themselves and the next.
    fn fleet() -> Vpc {
        use std::fmt::Write as _;
        let mut text = String::new();
        for g in 0..6 {
            let _ = write!(
                text,
                "[[security_group]]\nname = \"g{g}\"\n[[security_group.ingress]]\nprotocol = \"tcp\"\n\
                 from_port = 22\nto_port = 22\nself = true\n[[security_group.ingress]]\nprotocol = \"all\"\n\
                 security_groups = [\"g{}\"]\n",
                (g + 1) % 6
            );
        }
        for i in 0..300 {
            let _ = write!(
                text,
                "[[instance]]\nname = \"i{i}\"\nnetns = \"ns{i}\"\ninterface = \"eth0\"\n\
                 addresses = [\"10.{}.{}.1\"]\nsecurity_groups = [\"g{}\", \"g{}\"]\n",
                1 + i / 250,
                i % 250 + 1,
                i % 6,
                (i + 2) % 6
            );
        }
        crate::config::from_str("fleet.toml".as_ref(), &text).expect("valid")
    }

    #[test]
    fn members_gathered_once_are_each_groups_members() {
        let vpc = fleet();
        let all = Members::of(&vpc);
        for g in &vpc.groups {
            assert_eq!(
                all.get(&g.name),
                crate::policy::resolve::members(&vpc, &g.name),
                "{}",
                g.name
            );
        }
    }

    #[test]
    fn fits_compiles_each_instance_as_compile_does() {
        let vpc = fleet();
        assert!(fits_enforced(&vpc).is_ok());
        let compiled = compile_enforced(&vpc).expect("fits");
        assert_eq!(compiled.instances.len(), 300);
        for (inst, c) in vpc.instances.iter().zip(&compiled.instances) {
            assert_eq!(
                c.tables,
                compile_instance_bounded(&vpc, inst).expect("fits"),
                "{}: with the members gathered once, the same tables",
                inst.name
            );
        }
    }

    #[test]
    fn port_ranges_become_covering_prefixes() {
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(1024, 2047), vec![(1024, 6)]);
        let p = port_prefixes(1, 65534);
        assert_eq!(p.len(), 30);
        for port in [0u32, 1, 2, 1000, 65534, 65535] {
            let hits = p
                .iter()
                .filter(|&&(v, bits)| {
                    let mask = if bits == 0 {
                        0
                    } else {
                        u32::MAX << (16 - u32::from(bits)) & 0xffff
                    };
                    port & mask == u32::from(v)
                })
                .count();
            assert_eq!(
                hits,
                usize::from((1..=65534).contains(&port)),
                "port {port}"
            );
        }
    }

    #[test]
    fn class_key_merges_and_all_protocols_absorbs() {
        let k = class_key(vec![
            (Some(6), (80, 80)),
            (Some(6), (81, 90)),
            (Some(6), (22, 22)),
        ]);
        assert_eq!(k, vec![(Some(6), vec![(22, 22), (80, 90)])]);
        let k = class_key(vec![(Some(6), (80, 80)), (None, (0, 65535))]);
        assert_eq!(k, vec![(None, vec![(0, 65535)])]);
    }
}

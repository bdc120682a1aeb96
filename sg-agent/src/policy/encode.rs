//! The kernel encoding of a policy, and the exact map changes that swap one
//! policy for another. Pure: what is in the maps is tracked here, the data
//! plane (or the in-memory maps of the tests) only applies the changes.
//!
//! Every address key carries a generation (0 or 1). A swap fills the
//! inactive generation, flips the one value every packet reads first
//! ([`Settings::generation`]), waits for packets in flight to finish, then
//! deletes the old generation: a packet is judged entirely by one policy.
//!
//! Port entries carry no generation. Classes get *stable ids* instead: a
//! class's port entries are written once, under an id that no reload
//! changes, and stay as they are while any generation refers to them. A
//! reload therefore writes only the classes it adds and deletes only those
//! that nothing refers to any more.

use std::collections::{BTreeSet, HashMap};

use ipnet::{Ipv4Net, Ipv6Net};
use sg_common::{
    flow::addr_from_octets,
    flow::{FAMILY_V4, FAMILY_V6},
    maps as m,
    nacl::NaclTable,
    policy::{
        ADDR_TAG_BITS, AddrKeyV4, AddrKeyV6, AddrValue, CLASS_ALL_PROTOCOLS, EGRESS, INGRESS, OWN,
        OwnV4, OwnV6, PORT_CLASS_BITS, PORT_FLAG_ALL_PORTS, PORT_PROTO_BITS, PortKey, PortValue,
        SHORTCUTS_OWN_V4_LISTED, SHORTCUTS_OWN_V6_LISTED, SHORTCUTS_VALID, Settings, Shortcuts,
        addr_tag, class_trie_bit, whole_index,
    },
};

use super::compile::{AddrEntry, ClassContent, PolicyTables, is_single_port};

/// Map entries as the kernel stores them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelEntries {
    /// Address tries: (prefix length, key, value).
    pub v4: Vec<(u32, AddrKeyV4, AddrValue)>,
    pub v6: Vec<(u32, AddrKeyV6, AddrValue)>,
    /// Port trie: ranges, whole protocols, all traffic.
    pub ports: Vec<(u32, PortKey, PortValue)>,
    /// Port hash: single ports.
    pub port_exact: Vec<(PortKey, PortValue)>,
}

impl KernelEntries {
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty()
            && self.v6.is_empty()
            && self.ports.is_empty()
            && self.port_exact.is_empty()
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.ports.len() + self.port_exact.len()
    }

    /// Adds the port entries of one class stored under id `class`: single
    /// ports to the hash, everything else to the trie.
    pub fn add_class(&mut self, class: u32, content: &ClassContent) {
        for &(proto, port, port_bits) in content {
            match proto {
                None => self.ports.push((
                    PORT_CLASS_BITS,
                    PortKey::new(class, 0, 0),
                    PortValue {
                        flags: PORT_FLAG_ALL_PORTS,
                    },
                )),
                Some(proto) if is_single_port(port_bits) => self
                    .port_exact
                    .push((PortKey::new(class, proto, port), PortValue { flags: 0 })),
                Some(proto) => {
                    let flags = if port_bits == 0 {
                        PORT_FLAG_ALL_PORTS
                    } else {
                        0
                    };
                    self.ports.push((
                        PORT_PROTO_BITS + u32::from(port_bits),
                        PortKey::new(class, proto, port),
                        PortValue { flags },
                    ));
                }
            }
        }
    }

    fn extend(&mut self, other: Self) {
        self.v4.extend(other.v4);
        self.v6.extend(other.v6);
        self.ports.extend(other.ports);
        self.port_exact.extend(other.port_exact);
    }
}

/// What the kernel needs to know of a class beyond its id: whether it allows
/// everything, and for which protocols the port trie holds entries (the
/// others need only the exact-match lookup).
/// The kernel value of a local class; class 0 (an own-address entry) has
/// none.
fn value_of(values: &HashMap<u32, AddrValue>, class: u32) -> AddrValue {
    if class == 0 {
        AddrValue { class: 0, flags: 0 }
    } else {
        values[&class]
    }
}

/// A class's value with an entry's own flags added.
fn with_flags(value: AddrValue, flags: u32) -> AddrValue {
    AddrValue {
        flags: value.flags | flags,
        ..value
    }
}

pub fn class_flags(content: &ClassContent) -> u32 {
    content
        .iter()
        .map(|&(proto, _, port_bits)| match proto {
            None => CLASS_ALL_PROTOCOLS,
            Some(_) if is_single_port(port_bits) => 0,
            Some(p) => class_trie_bit(p),
        })
        .fold(0, |a, b| a | b)
}

fn v4_entry(
    generation: u8,
    e: &AddrEntry<Ipv4Net>,
    value: AddrValue,
) -> (u32, AddrKeyV4, AddrValue) {
    let key = AddrKeyV4 {
        tag: addr_tag(generation, e.direction),
        addr: u32::from_ne_bytes(e.net.addr().octets()),
    };
    (ADDR_TAG_BITS + u32::from(e.net.prefix_len()), key, value)
}

fn v6_entry(
    generation: u8,
    e: &AddrEntry<Ipv6Net>,
    value: AddrValue,
) -> (u32, AddrKeyV6, AddrValue) {
    let key = AddrKeyV6 {
        tag: addr_tag(generation, e.direction),
        addr: addr_from_octets(&e.net.addr().octets()),
    };
    (ADDR_TAG_BITS + u32::from(e.net.prefix_len()), key, value)
}

/// The [`Shortcuts`] of generation `generation`, derived from the address
/// entries written for it (those of other generations are skipped): the
/// instance's own prefixes, listed when they fit, and the whole-space
/// entries of both directions and families.
pub fn shortcuts_of(generation: u8, entries: &KernelEntries) -> Shortcuts {
    let mut s = Shortcuts {
        flags: SHORTCUTS_VALID,
        ..Shortcuts::default()
    };
    // Both families as (family, prefix length, tag, address words, value).
    let v4 = entries
        .v4
        .iter()
        .map(|&(len, k, v)| (FAMILY_V4, len, k.tag, [k.addr, 0, 0, 0], v));
    let v6 = entries
        .v6
        .iter()
        .map(|&(len, k, v)| (FAMILY_V6, len, k.tag, k.addr, v));
    let (mut own_v4, mut own_v6) = (Vec::new(), Vec::new());
    for (family, len, tag, addr, value) in v4.chain(v6) {
        if tag[0] != generation {
            continue;
        }
        let bits = len.saturating_sub(ADDR_TAG_BITS);
        match tag[1] {
            INGRESS | EGRESS if bits == 0 => {
                let i = whole_index(tag[1], family);
                s.whole[i] = value;
                s.whole_present |= 1 << i;
            }
            OWN => {
                let mut mask = [0u32; 4];
                for (word, start) in mask.iter_mut().zip([0, 32, 64, 96]) {
                    *word = mask_word(bits.saturating_sub(start).min(32));
                }
                let net = std::array::from_fn(|i| addr[i] & mask[i]);
                if family == FAMILY_V4 {
                    own_v4.push(OwnV4 {
                        net: net[0],
                        mask: mask[0],
                    });
                } else {
                    own_v6.push(OwnV6 { net, mask });
                }
            }
            _ => {}
        }
    }
    if let Some(n) = listed(&mut s.own_v4, &own_v4) {
        s.own_v4_len = n;
        s.flags |= SHORTCUTS_OWN_V4_LISTED;
    }
    if let Some(n) = listed(&mut s.own_v6, &own_v6) {
        s.own_v6_len = n;
        s.flags |= SHORTCUTS_OWN_V6_LISTED;
    }
    s
}

/// Copies `found` into `slots` if it fits; how many it copied.
fn listed<T: Copy>(slots: &mut [T], found: &[T]) -> Option<u32> {
    let slots = slots.get_mut(..found.len())?;
    slots.copy_from_slice(found);
    u32::try_from(found.len()).ok()
}

/// The mask of a word's first `bits` (0-32) bits, as a word of an address
/// in network byte order.
fn mask_word(bits: u32) -> u32 {
    u32::MAX.checked_shl(32 - bits.min(32)).unwrap_or(0).to_be()
}

pub use super::compile::{TooLarge, entry_counts};

/// The changes of one swap, in the order they must be applied:
/// 1. delete [`Swap::clear`] (leftovers of an interrupted swap in the
///    generation about to be filled; deleting an absent entry is fine);
/// 2. insert [`Swap::fill`];
/// 3. write [`Swap::settings`]: the flip, reported with
///    [`PolicyEncoder::flipped`];
/// 4. after a grace period for packets in flight, delete [`Swap::retire`]
///    and report it with [`PolicyEncoder::retired`].
#[derive(Clone, Debug)]
pub struct Swap {
    pub generation: u8,
    pub clear: KernelEntries,
    pub fill: KernelEntries,
    /// The new generation's shortcuts, written before the flip.
    pub shortcuts: Shortcuts,
    /// The new generation's network ACL tables (inbound, outbound), with
    /// their epoch, written before the flip.
    pub nacl: [NaclTable; 2],
    pub settings: Settings,
    pub retire: KernelEntries,
}

/// What one instance's policy maps hold, as far as this agent wrote them:
/// turns (what the maps hold, new tables) into the exact inserts and
/// deletes of a [`Swap`].
#[derive(Debug)]
pub struct PolicyEncoder {
    /// Generation in force, once a swap has flipped.
    generation: Option<u8>,
    /// The address entries each generation may hold.
    addresses: [KernelEntries; 2],
    /// The classes each generation refers to.
    generation_classes: [BTreeSet<u32>; 2],
    class_ids: HashMap<ClassContent, u32>,
    class_contents: HashMap<u32, ClassContent>,
    next_class: u32,
    /// Tables and settings in force.
    in_force: Option<(PolicyTables, Settings)>,
    /// Those of the swap being applied, in force once it has flipped.
    pending: Option<(PolicyTables, Settings)>,
    /// The port hash's capacity (the kernel map's `max_entries`).
    port_exact_capacity: u32,
    /// The network ACL tables' epoch: counts every change of what they
    /// say, so a connection's cached pass of an earlier one is void.
    nacl_epoch: u32,
}

impl PolicyEncoder {
    /// The generation in force, once a policy has been published.
    pub fn generation(&self) -> Option<u8> {
        self.generation
    }

    /// The port hash holds this many entries (its map's size).
    pub fn set_port_exact_capacity(&mut self, capacity: u32) {
        self.port_exact_capacity = capacity;
    }

    /// Maps adopted from an earlier agent hold network ACL tables of this
    /// epoch (the highest found): numbering goes on from there, so no
    /// connection's cached pass of theirs holds after the next swap.
    pub fn continue_nacl_epoch(&mut self, found: u32) {
        self.nacl_epoch = self.nacl_epoch.max(found);
    }
}

impl Default for PolicyEncoder {
    fn default() -> Self {
        Self {
            generation: None,
            addresses: [KernelEntries::default(), KernelEntries::default()],
            generation_classes: [BTreeSet::new(), BTreeSet::new()],
            class_ids: HashMap::new(),
            class_contents: HashMap::new(),
            next_class: 1,
            in_force: None,
            pending: None,
            port_exact_capacity: m::PORT_EXACT_MAX_ENTRIES,
            nacl_epoch: 0,
        }
    }
}

/// Settings equal but for what the swap itself sets.
fn same_settings(a: &Settings, b: &Settings) -> bool {
    Settings {
        generation: 0,
        ready: 0,
        nacl: [0; 2],
        ..*a
    } == Settings {
        generation: 0,
        ready: 0,
        nacl: [0; 2],
        ..*b
    }
}

impl PolicyEncoder {
    /// The bookkeeping of maps that already hold entries (pinned maps
    /// adopted after a restart), rebuilt from the entries themselves: class
    /// contents from the port entries, generations from the address tags.
    /// The next swap fills the generation not in force, deleting what was
    /// there and every class nothing refers to; the generation in force
    /// keeps judging packets until the flip.
    pub fn adopt(settings: Option<Settings>, found: &KernelEntries) -> Self {
        let mut encoder = Self::default();
        let in_force = settings
            .filter(|s| s.ready & sg_common::policy::READY != 0)
            .and_then(|s| u8::try_from(s.generation).ok())
            .filter(|g| *g < 2);
        encoder.generation = in_force;
        // Without a generation in force everything is leftovers: keep it
        // all under generation 0, which the first swap clears.
        let slot = |tag: u8| match in_force {
            Some(_) => usize::from(tag & 1),
            None => 0,
        };
        let mut contents: std::collections::BTreeMap<u32, ClassContent> =
            std::collections::BTreeMap::new();
        for &(len, key, _) in &found.ports {
            let (class, proto, port) = key.parts();
            let content = contents.entry(class).or_default();
            if len == PORT_CLASS_BITS {
                content.push((None, 0, 0));
            } else {
                let bits = u8::try_from(len.saturating_sub(PORT_PROTO_BITS)).unwrap_or(16);
                content.push((Some(proto), port, bits));
            }
        }
        for &(key, _) in &found.port_exact {
            let (class, proto, port) = key.parts();
            contents
                .entry(class)
                .or_default()
                .push((Some(proto), port, 16));
        }
        let mut referenced = BTreeSet::new();
        for &(len, key, value) in &found.v4 {
            let g = slot(key.tag[0]);
            encoder.addresses[g].v4.push((len, key, value));
            encoder.generation_classes[g].insert(value.class);
            referenced.insert(value.class);
        }
        for &(len, key, value) in &found.v6 {
            let g = slot(key.tag[0]);
            encoder.addresses[g].v6.push((len, key, value));
            encoder.generation_classes[g].insert(value.class);
            referenced.insert(value.class);
        }
        let spare = in_force.map_or(0, |g| usize::from(1 - g));
        for (id, mut content) in contents {
            content.sort_unstable();
            if !referenced.contains(&id) {
                // Referred to by nothing: cleared with the spare generation.
                encoder.generation_classes[spare].insert(id);
            }
            encoder.next_class = encoder.next_class.max(id.saturating_add(1));
            encoder.class_ids.insert(content.clone(), id);
            encoder.class_contents.insert(id, content);
        }
        encoder
    }

    /// The swap that puts `tables` and `settings` in force, or `None` when
    /// they already are. The bookkeeping assumes the swap's entries are in
    /// the maps from here on, whether or not it is applied in full: a swap
    /// that fails part-way is cleared by the next one's [`Swap::clear`].
    pub fn swap(
        &mut self,
        tables: &PolicyTables,
        settings: Settings,
    ) -> Result<Option<Swap>, TooLarge> {
        if self
            .in_force
            .as_ref()
            .is_some_and(|(t, s)| t == tables && same_settings(s, &settings))
        {
            return Ok(None);
        }
        let next = self.generation.map_or(0, |g| 1 - g);
        self.check_size(tables, next)?;
        let clear = self.forget(next);

        // Classes: reuse the ids of those already in the maps, add the new.
        let mut fill = KernelEntries::default();
        let mut values = HashMap::new();
        for (local, content) in tables.class_contents() {
            let id = if let Some(&id) = self.class_ids.get(&content) {
                id
            } else {
                let id = self.next_class;
                self.next_class = id.checked_add(1).expect("fewer than 2^32 classes ever");
                fill.add_class(id, &content);
                self.class_ids.insert(content.clone(), id);
                self.class_contents.insert(id, content.clone());
                id
            };
            self.generation_classes[usize::from(next)].insert(id);
            values.insert(
                local,
                AddrValue {
                    class: id,
                    flags: class_flags(&content),
                },
            );
        }
        let addresses = KernelEntries {
            v4: tables
                .v4
                .iter()
                .map(|e| v4_entry(next, e, with_flags(value_of(&values, e.class), e.flags)))
                .collect(),
            v6: tables
                .v6
                .iter()
                .map(|e| v6_entry(next, e, with_flags(value_of(&values, e.class), e.flags)))
                .collect(),
            ..KernelEntries::default()
        };
        let shortcuts = shortcuts_of(next, &addresses);
        fill.extend(addresses.clone());
        self.addresses[usize::from(next)] = addresses;

        let retire = self
            .generation
            .map(|g| self.retiring(g))
            .unwrap_or_default();
        // A new epoch whenever the network ACL changed (or nothing is known
        // to be in force): the cached passes of tracked flows are void.
        if self
            .in_force
            .as_ref()
            .is_none_or(|(t, _)| t.nacl != tables.nacl)
        {
            self.nacl_epoch = self.nacl_epoch.wrapping_add(1).max(1);
        }
        let mut nacl = tables.nacl;
        for t in &mut nacl {
            t.epoch = self.nacl_epoch;
        }
        self.pending = Some((tables.clone(), settings));
        Ok(Some(Swap {
            generation: next,
            clear,
            fill,
            shortcuts,
            nacl,
            settings: Settings {
                generation: u32::from(next),
                nacl: nacl.map(|t| {
                    if t.flags & sg_common::nacl::NACL_ACTIVE != 0 {
                        t.epoch
                    } else {
                        0
                    }
                }),
                ready: sg_common::policy::READY
                    | (settings.ready & sg_common::policy::REFUSING_NEW_FLOWS),
                ..settings
            },
            retire,
        }))
    }

    /// The shortcuts of the generation in force (adopted maps: derived
    /// from the entries found, since the slot may predate them).
    pub fn in_force_shortcuts(&self) -> Option<(u8, Shortcuts)> {
        let g = self.generation?;
        Some((g, shortcuts_of(g, &self.addresses[usize::from(g)])))
    }

    /// The swap's settings are written: its generation is in force.
    pub fn flipped(&mut self, swap: &Swap) {
        self.generation = Some(swap.generation);
        self.in_force = self.pending.take();
    }

    /// The old generation's entries are gone from the maps: forget them.
    /// Until this is called they are deleted again by the next swap.
    pub fn retired(&mut self, swap: &Swap) {
        let _ = self.forget(1 - swap.generation);
    }

    /// The entries of generation `g` that would have to go: its address
    /// entries, and the classes the other generation does not share.
    fn retiring(&self, g: u8) -> KernelEntries {
        let g = usize::from(g);
        let mut out = self.addresses[g].clone();
        for id in self.generation_classes[g].difference(&self.generation_classes[1 - g]) {
            if let Some(content) = self.class_contents.get(id) {
                out.add_class(*id, content);
            }
        }
        out
    }

    /// Forgets what generation `g` holds and returns it, to be deleted.
    fn forget(&mut self, g: u8) -> KernelEntries {
        let entries = self.retiring(g);
        let g = usize::from(g);
        let unused: Vec<u32> = self.generation_classes[g]
            .difference(&self.generation_classes[1 - g])
            .copied()
            .collect();
        for id in unused {
            if let Some(content) = self.class_contents.remove(&id) {
                self.class_ids.remove(&content);
            }
        }
        self.generation_classes[g].clear();
        self.addresses[g] = KernelEntries::default();
        entries
    }

    /// Refuses tables that, beside the generation in force, would not fit
    /// the maps.
    fn check_size(&self, tables: &PolicyTables, next: u8) -> Result<(), TooLarge> {
        let other = usize::from(1 - next);
        let mut live: BTreeSet<&ClassContent> = self.generation_classes[other]
            .iter()
            .filter_map(|id| self.class_contents.get(id))
            .collect();
        let contents = tables.class_contents();
        live.extend(contents.values());
        let (ranges, single) = live
            .iter()
            .map(|c| entry_counts(c))
            .fold((0, 0), |(r, s), (a, b)| (r + a, s + b));
        for (what, needed, limit) in [
            ("IPv4 address", tables.v4.len(), m::ADDR_MAX_ENTRIES / 2),
            ("IPv6 address", tables.v6.len(), m::ADDR_MAX_ENTRIES / 2),
            ("port range", ranges, m::PORTS_MAX_ENTRIES),
            ("single port", single, self.port_exact_capacity),
        ] {
            if needed > limit as usize {
                return Err(TooLarge {
                    what,
                    needed,
                    limit,
                });
            }
        }
        Ok(())
    }
}

/// Where a swap's changes go: the kernel's maps, or the in-memory maps of
/// the tests. The same [`publish`] drives both.
pub trait PolicyStore {
    type Error;
    fn insert(&mut self, entries: &KernelEntries) -> Result<(), Self::Error>;
    /// Deletes every entry; one already absent is fine.
    fn delete(&mut self, entries: &KernelEntries) -> Result<(), Self::Error>;
    /// Writes one generation's shortcuts (before the flip to it).
    fn set_shortcuts(&mut self, generation: u8, shortcuts: &Shortcuts) -> Result<(), Self::Error>;
    /// Writes one generation's network ACL tables, inbound and outbound
    /// (before the flip to it).
    fn set_nacl(&mut self, generation: u8, tables: &[NaclTable; 2]) -> Result<(), Self::Error>;
    /// Writes the settings: the flip.
    fn set_settings(&mut self, settings: Settings) -> Result<(), Self::Error>;
    /// Waits until no packet can still be judged by the old generation.
    fn grace(&mut self) {}
}

/// Makes `tables` the policy in force in `store`, atomically for every
/// packet. Returns false when they already were.
pub fn publish<S: PolicyStore>(
    encoder: &mut PolicyEncoder,
    store: &mut S,
    tables: &PolicyTables,
    settings: Settings,
) -> Result<bool, S::Error>
where
    S::Error: From<TooLarge>,
{
    let Some(swap) = flip(encoder, store, tables, settings)? else {
        return Ok(false);
    };
    if !swap.retire.is_empty() {
        store.grace();
    }
    retire(encoder, store, &swap)?;
    Ok(true)
}

/// The first half of [`publish`]: the new generation written and flipped
/// to; the swap whose old generation [`retire`] deletes once no packet can
/// still be judged by it (a grace period later). `None`: nothing changed.
/// Many instances' swaps share one grace period this way.
pub fn flip<S: PolicyStore>(
    encoder: &mut PolicyEncoder,
    store: &mut S,
    tables: &PolicyTables,
    settings: Settings,
) -> Result<Option<Swap>, S::Error>
where
    S::Error: From<TooLarge>,
{
    let Some(swap) = encoder.swap(tables, settings)? else {
        return Ok(None);
    };
    store.delete(&swap.clear)?;
    store.insert(&swap.fill)?;
    store.set_shortcuts(swap.generation, &swap.shortcuts)?;
    store.set_nacl(swap.generation, &swap.nacl)?;
    store.set_settings(swap.settings)?;
    // Flipped: from here on every packet is judged by `swap.generation`.
    encoder.flipped(&swap);
    Ok(Some(swap))
}

/// The second half of [`publish`]: the old generation deleted (the caller
/// has let a grace period pass since [`flip`]).
pub fn retire<S: PolicyStore>(
    encoder: &mut PolicyEncoder,
    store: &mut S,
    swap: &Swap,
) -> Result<(), S::Error> {
    store.delete(&swap.retire)?;
    encoder.retired(swap);
    Ok(())
}

#[cfg(test)]
mod tests {
    use sg_common::policy::{SHORTCUT_OWN_V4, SHORTCUT_OWN_V6, class_trie_bit};

    use super::*;

    fn own_v4(generation: u8, net: &str) -> (u32, AddrKeyV4, AddrValue) {
        let net: Ipv4Net = net.parse().unwrap();
        let key = AddrKeyV4 {
            tag: addr_tag(generation, OWN),
            addr: u32::from_ne_bytes(net.addr().octets()),
        };
        (
            ADDR_TAG_BITS + u32::from(net.prefix_len()),
            key,
            AddrValue::default(),
        )
    }

    fn own_v6(generation: u8, net: &str) -> (u32, AddrKeyV6, AddrValue) {
        let net: Ipv6Net = net.parse().unwrap();
        let key = AddrKeyV6 {
            tag: addr_tag(generation, OWN),
            addr: addr_from_octets(&net.addr().octets()),
        };
        (
            ADDR_TAG_BITS + u32::from(net.prefix_len()),
            key,
            AddrValue::default(),
        )
    }

    fn v4(a: &str) -> u32 {
        u32::from_ne_bytes(a.parse::<std::net::Ipv4Addr>().unwrap().octets())
    }

    fn v6(a: &str) -> [u32; 4] {
        addr_from_octets(&a.parse::<std::net::Ipv6Addr>().unwrap().octets())
    }

    #[test]
    fn shortcuts_list_the_generations_own_prefixes_and_whole_space_entries() {
        let whole = AddrValue {
            class: 7,
            flags: sg_common::policy::CLASS_REVERSE_OPEN_TCP,
        };
        let entries = KernelEntries {
            v4: vec![
                own_v4(1, "10.0.1.5/32"),
                own_v4(1, "10.0.5.16/28"),
                // Another generation's: not this one's.
                own_v4(0, "10.9.9.9/32"),
                (
                    ADDR_TAG_BITS,
                    AddrKeyV4 {
                        tag: addr_tag(1, INGRESS),
                        addr: 0,
                    },
                    whole,
                ),
                // A rule's prefix: neither own nor whole space.
                (
                    ADDR_TAG_BITS + 8,
                    AddrKeyV4 {
                        tag: addr_tag(1, EGRESS),
                        addr: v4("10.0.0.0"),
                    },
                    whole,
                ),
            ],
            v6: vec![own_v6(1, "2001:db8:1::/80"), own_v6(1, "2001:db8::5/128")],
            ..KernelEntries::default()
        };
        let s = shortcuts_of(1, &entries);
        assert_eq!(s.own_v4(v4("10.0.1.5")), Some(true));
        assert_eq!(s.own_v4(v4("10.0.1.6")), Some(false));
        assert_eq!(s.own_v4(v4("10.0.5.31")), Some(true));
        assert_eq!(s.own_v4(v4("10.0.5.32")), Some(false));
        assert_eq!(s.own_v4(v4("10.9.9.9")), Some(false));
        assert_eq!(s.own_v6(&v6("2001:db8:1::ffff:1")), Some(true));
        assert_eq!(s.own_v6(&v6("2001:db8:1:0:1::1")), Some(false));
        assert_eq!(s.own_v6(&v6("2001:db8::5")), Some(true));
        assert_eq!(s.own_v6(&v6("2001:db8::6")), Some(false));
        assert_eq!(s.whole(INGRESS, FAMILY_V4), Some(whole));
        assert_eq!(s.whole(EGRESS, FAMILY_V4), None);
        assert_eq!(s.whole(INGRESS, FAMILY_V6), None);
        assert_eq!(s.flags & SHORTCUTS_VALID, SHORTCUTS_VALID);

        // Without the source/destination check the instance owns /0.
        let open = KernelEntries {
            v4: vec![own_v4(0, "0.0.0.0/0")],
            v6: vec![own_v6(0, "::/0")],
            ..KernelEntries::default()
        };
        let s = shortcuts_of(0, &open);
        assert_eq!(s.own_v4(v4("198.51.100.1")), Some(true));
        assert_eq!(s.own_v6(&v6("2001:db8::1")), Some(true));
    }

    #[test]
    fn more_own_prefixes_than_the_shortcuts_hold_are_left_to_the_trie() {
        let entries = KernelEntries {
            v4: (0..=SHORTCUT_OWN_V4)
                .map(|i| own_v4(0, &format!("10.0.0.{i}/32")))
                .collect(),
            v6: (0..SHORTCUT_OWN_V6)
                .map(|i| own_v6(0, &format!("2001:db8::{i}/128")))
                .collect(),
            ..KernelEntries::default()
        };
        let s = shortcuts_of(0, &entries);
        assert_eq!(
            s.own_v4(v4("10.0.0.1")),
            None,
            "nine IPv4 prefixes: the trie"
        );
        assert_eq!(
            s.own_v6(&v6("2001:db8::3")),
            Some(true),
            "four IPv6 ones fit"
        );
        assert_eq!(s.own_v6(&v6("2001:db8::4")), Some(false));
    }

    #[test]
    fn entry_counts_match_the_entries_written() {
        let content: ClassContent = vec![
            (None, 0, 0),
            (Some(6), 80, 16),
            (Some(6), 1024, 6),
            (Some(17), 0, 0),
            (Some(1), 0x0800, 16),
        ];
        let mut e = KernelEntries::default();
        e.add_class(7, &content);
        assert_eq!(entry_counts(&content), (e.ports.len(), e.port_exact.len()));
        assert_eq!(entry_counts(&content), (3, 2));
        assert_eq!(
            class_flags(&content),
            CLASS_ALL_PROTOCOLS | class_trie_bit(6) | class_trie_bit(17)
        );
    }
}

//! Measurement 4: the BPF maps' memory at 10,000 rules, with the
//! connection table empty and filled to its capacity.

use std::process::Command;

use aya::maps::{HashMap, MapData};
use sg_agent::{dataplane::Dataplane, policy::compile::compile};
use sg_common::{
    conntrack::{CtEntry, CtKey},
    maps as m,
};

use super::policies::{Shape, rules_file};

pub struct MapRow {
    pub name: String,
    pub max_entries: u64,
    pub bytes_empty: u64,
    pub bytes_full: u64,
    pub entries_full: u64,
}

pub struct Report {
    pub policy: &'static str,
    pub maps: Vec<MapRow>,
}

fn map_info(id: u32) -> (String, u64, u64) {
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "id", &id.to_string()])
        .output()
        .expect("bpftool");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    (
        v["name"].as_str().unwrap_or_default().to_owned(),
        v["max_entries"].as_u64().unwrap_or_default(),
        v["bytes_memlock"].as_u64().unwrap_or_default(),
    )
}

fn maps_of(dp: &Dataplane) -> Vec<(u32, String, u64, u64)> {
    let ids = dp
        .ingress()
        .info()
        .expect("program info")
        .map_ids()
        .expect("map ids")
        .unwrap_or_default();
    let mut out: Vec<_> = ids
        .into_iter()
        .map(|id| {
            let (name, max, bytes) = map_info(id);
            (id, name, max, bytes)
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

pub fn measure(fill: bool) -> Vec<Report> {
    let mut reports = Vec::new();
    for (policy, shape) in [
        ("10,000 via a prefix list", Shape::PrefixList),
        ("10,000 over 16 groups", Shape::Groups),
    ] {
        let vpc = sg_agent::config::from_str(
            "bench.toml".as_ref(),
            &rules_file(10_000, shape, false, None),
        )
        .expect("valid");
        let compiled = compile(&vpc);
        let mut dp = Dataplane::load().expect("load");
        dp.publish(
            &compiled.instances[0].tables,
            compiled.instances[0].settings,
        )
        .expect("publish");
        let before = maps_of(&dp);
        let flows = if fill { fill_conntrack(&mut dp) } else { 0 };
        let after = maps_of(&dp);
        let maps = before
            .into_iter()
            .zip(after)
            .map(
                |((_, name, max, bytes_empty), (_, _, _, bytes_full))| MapRow {
                    entries_full: if name == m::CONNS { flows } else { 0 },
                    name,
                    max_entries: max,
                    bytes_empty,
                    bytes_full,
                },
            )
            .collect();
        reports.push(Report { policy, maps });
    }
    reports
}

/// Inserts distinct IPv4 TCP flows until the table holds its capacity
/// (the default connection allowance).
fn fill_conntrack(dp: &mut Dataplane) -> u64 {
    let map = dp.ebpf_mut().map_mut(m::CONNS).expect("CONNS");
    let mut table: HashMap<&mut MapData, CtKey, CtEntry> =
        HashMap::try_from(map).expect("hash map");
    for i in 0..m::CONNS_DEFAULT_ENTRIES {
        let key = CtKey {
            addr_a: [i, 0, 0, 0],
            addr_b: [0x0100_000a, 0, 0, 0],
            port_a: 40000,
            port_b: 80,
            proto: 6,
            family: sg_common::flow::FAMILY_V4,
            kind: 0,
        };
        let entry = CtEntry {
            last_seen_ns: 1,
            state: 3,
            flags: 1,
            nacl: 0,
            ..CtEntry::default()
        };
        table.insert(key, entry, 0).expect("insert flow");
    }
    table.keys().count() as u64
}

//! Reloads swap whole policies and leave no stale map entry.

use sg_tests::{
    frames::{SYN, Shape, frame},
    kernel::{dataplane_for, vpc, xdp_passes},
};

use crate::{CONFIG, ip, tcp};

/// Entries in one of the loaded object's tries.
fn trie_len<K: aya::Pod, V: aya::Pod>(dp: &sg_agent::dataplane::Dataplane, name: &str) -> usize {
    let map = dp.ebpf().map(name).expect("map exists");
    let trie: aya::maps::LpmTrie<&aya::maps::MapData, K, V> =
        aya::maps::LpmTrie::try_from(map).expect("LPM trie");
    trie.keys().count()
}

fn hash_len<K: aya::Pod, V: aya::Pod>(dp: &sg_agent::dataplane::Dataplane, name: &str) -> usize {
    let map = dp.ebpf().map(name).expect("map exists");
    let hash: aya::maps::HashMap<&aya::maps::MapData, K, V> =
        aya::maps::HashMap::try_from(map).expect("hash map");
    hash.keys().count()
}

#[test]
fn reloads_swap_whole_policies_and_leave_no_stale_entries() {
    use sg_common::{
        maps as m,
        policy::{AddrKeyV4, AddrValue, PortKey, PortValue},
    };
    let a = vpc(CONFIG);
    let b = vpc(&CONFIG.replace(
        "from_port = 80\n  to_port = 80",
        "from_port = 8080\n  to_port = 8080",
    ));
    let (ca, cb) = (
        sg_agent::policy::compile::compile(&a),
        sg_agent::policy::compile::compile(&b),
    );
    let (ta, tb) = (&ca.instances[0].tables, &cb.instances[0].tables);
    let mut dp = dataplane_for(&a, "web");
    let (src, dst) = (ip("198.51.100.7"), ip("10.0.0.1"));
    for (round, (tables, port80, port8080)) in [
        (tb, false, true),
        (ta, true, false),
        (tb, false, true),
        (ta, true, false),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(
            dp.publish(tables, ca.instances[0].settings)
                .expect("publish"),
            "round {round}: a changed policy is written"
        );
        // Fresh source ports: these SYNs must be judged by the rules, not the connection table.
        let sport = 42_000 + u16::try_from(round).unwrap() * 2;
        assert_eq!(
            xdp_passes(
                &dp,
                &frame(src, dst, &tcp(sport, 80, SYN), &Shape::default())
            ),
            port80,
            "round {round}: tcp/80"
        );
        assert_eq!(
            xdp_passes(
                &dp,
                &frame(src, dst, &tcp(sport + 1, 8080, SYN), &Shape::default())
            ),
            port8080,
            "round {round}: tcp/8080"
        );
        // Only the generation in force remains: its address entries and the
        // port entries of its distinct classes.
        let classes: std::collections::BTreeSet<_> =
            tables.class_contents().into_values().collect();
        assert_eq!(
            trie_len::<AddrKeyV4, AddrValue>(&dp, m::ADDR_V4),
            tables.v4.len(),
            "round {round}: IPv4 address entries"
        );
        let mut expected = sg_agent::policy::encode::KernelEntries::default();
        for (id, content) in classes.iter().enumerate() {
            expected.add_class(u32::try_from(id).unwrap(), content);
        }
        assert!(
            !expected.port_exact.is_empty(),
            "the policies have single ports"
        );
        assert_eq!(
            trie_len::<PortKey, PortValue>(&dp, m::PORTS),
            expected.ports.len(),
            "round {round}: port trie entries"
        );
        assert_eq!(
            hash_len::<PortKey, PortValue>(&dp, m::PORT_EXACT),
            expected.port_exact.len(),
            "round {round}: port hash entries"
        );
    }
    assert!(
        !dp.publish(ta, ca.instances[0].settings).expect("publish"),
        "the same policy again writes nothing"
    );
}

//! What is attached to an interface, read from the kernel: the XDP program
//! (from `bpftool -j net show`) and the TCX programs (from the kernel's TCX
//! query: Debian 12's bpftool predates TCX).

use aya::programs::{SchedClassifier, TcAttachType};

use crate::lab::in_netns;

/// IDs of every program attached to eth0 in `ns`: XDP, TC ingress and TC
/// egress.
pub fn attached_programs(ns: &str) -> Vec<u64> {
    let (mut ids, ingress, egress) = attached(ns);
    ids.extend(ingress);
    ids.extend(egress);
    ids
}

/// IDs of the XDP program (from `bpftool net show`) and of the TCX ingress
/// and egress programs (from the kernel's TCX query: Debian 12's bpftool
/// predates TCX) attached to eth0 in `ns`.
pub fn attached(ns: &str) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let (ingress, egress) = tcx_on(ns, "eth0");
    (xdp_on(ns, "eth0"), ingress, egress)
}

/// IDs of the TCX ingress and egress programs on `ifname` in `ns`.
pub fn tcx_on(ns: &str, ifname: &str) -> (Vec<u64>, Vec<u64>) {
    tcx_query(ns, ifname, |p| u64::from(p.id()))
}

/// Names of the TCX ingress and egress programs on `ifname` in `ns`, as the
/// kernel keeps them (the first 15 bytes).
pub fn tcx_names(ns: &str, ifname: &str) -> (Vec<String>, Vec<String>) {
    tcx_query(ns, ifname, |p| {
        p.name_as_str().unwrap_or_default().to_owned()
    })
}

/// `what` of each TCX ingress and egress program on `ifname` in `ns`.
fn tcx_query<T: Send + 'static>(
    ns: &str,
    ifname: &str,
    what: fn(&aya::programs::ProgramInfo) -> T,
) -> (Vec<T>, Vec<T>) {
    let tcx = |at| {
        let ifname = ifname.to_owned();
        in_netns(ns, move || {
            SchedClassifier::query_tcx(&ifname, at)
                .expect("TCX query")
                .1
                .iter()
                .map(what)
                .collect::<Vec<_>>()
        })
    };
    (tcx(TcAttachType::Ingress), tcx(TcAttachType::Egress))
}

/// IDs of the XDP program on `ifname` in `ns` (from `bpftool net show`).
fn xdp_on(ns: &str, ifname: &str) -> Vec<u64> {
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "bpftool", "-j", "net", "show", "dev", ifname,
        ])
        .output()
        .expect("bpftool runs");
    assert!(
        out.status.success(),
        "bpftool net show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // [{"xdp": [{"devname": .., "ifindex": .., "mode": .., "id": N}], "tc": [..], ..}]
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("bpftool -j prints JSON");
    json[0]["xdp"]
        .as_array()
        .map(|progs| progs.iter().filter_map(|p| p["id"].as_u64()).collect())
        .unwrap_or_default()
}

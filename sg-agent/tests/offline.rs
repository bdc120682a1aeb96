//! The offline verbs as a user runs them: `explain`, `matrix` and `diff` on
//! the seed example, their output and exit statuses.

use std::process::Command;

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seed-vpc.toml");

fn sg_agent(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sg-agent"))
        .args(args)
        .output()
        .expect("sg-agent runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn explain_exits_0_when_allowed_and_4_when_denied() {
    let (code, text) = sg_agent(&[
        "explain",
        SEED,
        "--to",
        "rds",
        "--from-instance",
        "app-1",
        "--port",
        "3306",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("ALLOWED: tcp 10.0.1.10 -> 10.0.2.10 port 3306"),
        "{text}"
    );
    assert!(
        text.contains("allowed by instagram-rds-security-group #1: tcp 3306 from group instagram-server-security-group"),
        "{text}"
    );
    let (code, text) = sg_agent(&[
        "explain",
        SEED,
        "--to",
        "rds",
        "--from-instance",
        "alb",
        "--port",
        "3306",
        "--json",
    ]);
    assert_eq!(code, Some(4), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(json["allowed"], false);
    assert_eq!(json["sides"][0]["because"], "no rule allows it");
    let (code, text) = sg_agent(&[
        "explain", SEED, "--to", "nobody", "--from", "10.0.0.1", "--port", "22",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("no instance named nobody in the file (it has: alb, bastion, app-1, rds)"),
        "{text}"
    );
    let (code, text) = sg_agent(&[
        "explain", SEED, "--to", "app1", "--from", "10.0.0.1", "--port", "22",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("did you mean app-1?"), "{text}");
    // No silent port 0: TCP and UDP need --port.
    let (code, text) = sg_agent(&["explain", SEED, "--to", "rds", "--from-instance", "app-1"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--port is needed for tcp"), "{text}");
    // Protocol names in any case, as in the file.
    let (code, text) = sg_agent(&[
        "explain",
        SEED,
        "--to",
        "rds",
        "--from-instance",
        "app-1",
        "--protocol",
        "TCP",
        "--port",
        "3306",
    ]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = sg_agent(&[
        "explain",
        SEED,
        "--to",
        "rds",
        "--from-instance",
        "app-1",
        "--protocol",
        "ICMP",
    ]);
    assert_eq!(
        code,
        Some(4),
        "ICMP needs no port, and no rule allows it: {text}"
    );
    let (code, _) = sg_agent(&["explain", SEED, "--to", "rds"]);
    assert_eq!(code, Some(2), "--from or --from-instance is required");
}

#[test]
fn diff_exits_0_for_the_same_rules_3_for_a_change_1_for_an_invalid_file() {
    let dir = std::env::temp_dir().join(format!("sg-offline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let seed = std::fs::read_to_string(SEED).expect("seed");
    let changed = dir.join("changed.toml");
    std::fs::write(
        &changed,
        seed.replace(
            "from_port = 3306\n  to_port = 3306",
            "from_port = 5432\n  to_port = 5432",
        ),
    )
    .expect("write");
    let invalid = dir.join("invalid.toml");
    std::fs::write(&invalid, "[[security_group]]\nname = 1\n").expect("write");

    let (code, text) = sg_agent(&["diff", SEED, SEED]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = sg_agent(&["diff", SEED, changed.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("instance rds (changed):"), "{text}");
    assert!(
        text.contains(
            "  - ingress tcp 3306 from group instagram-server-security-group (10.0.1.10/32)"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "  + ingress tcp 5432 from group instagram-server-security-group (10.0.1.10/32)"
        ),
        "{text}"
    );
    let (code, text) = sg_agent(&["diff", SEED, invalid.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{text}");
    // Where an instance is enforced is a change too (libvirt round two:
    // a libvirt domain's NIC made a host interface said "no change").
    let (libvirt, host) = (dir.join("libvirt.toml"), dir.join("host.toml"));
    let vm = |link: &str| {
        format!(
            "[[security_group]]\nname = \"vm\"\n[[instance]]\nname = \"vm\"\n{link}\n\
             addresses = [\"10.0.0.1\"]\nsecurity_groups = [\"vm\"]\n"
        )
    };
    std::fs::write(&libvirt, vm("libvirt_domain = \"web\"")).expect("write");
    std::fs::write(&host, vm("host_interface = \"vnet3\"")).expect("write");
    let (code, text) = sg_agent(&["diff", libvirt.to_str().unwrap(), host.to_str().unwrap()]);
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("  - enforced on libvirt domain web\n  + enforced on host side of vnet3"),
        "{text}"
    );
    let (code, text) = sg_agent(&["matrix", SEED, "--ports", "3306"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["app-1", "rds", "allow"]),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `--xdp-mode` belongs to the XDP hook: with another hook it is refused
/// before anything is read or attached (exit 2), not silently ignored.
#[test]
fn xdp_mode_with_another_hook_is_a_usage_error() {
    for hook in ["tc", "auto"] {
        let (code, text) = sg_agent(&[
            "run",
            "--config",
            SEED,
            "--ingress-hook",
            hook,
            "--xdp-mode",
            "generic",
        ]);
        assert_eq!(code, Some(2), "{text}");
        assert!(
            text.contains(&format!(
                "--xdp-mode applies to the XDP hook only, not --ingress-hook {hook}"
            )),
            "{text}"
        );
    }
}

/// `run --etcd` with etcd out of reach: exit 1 at once, saying where it
/// looked and what to do (not a hang, not a half-started agent).
#[test]
fn run_from_an_unreachable_etcd_exits_1_with_a_hint() {
    let (code, text) = sg_agent(&["run", "--etcd", "http://127.0.0.1:1", "--node", "a"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("cannot reach etcd at http://127.0.0.1:1 (start etcd there or correct --etcd; `run --etcd-wait` waits for it)"),
        "{text}"
    );
    let (code, text) = sg_agent(&["run", "--config", SEED, "--etcd", "http://127.0.0.1:1"]);
    assert_eq!(code, Some(2), "a rules file or etcd, not both: {text}");
}

/// `check --node NAME` judges a file as that node's agent would: its own
/// instances enforced, the other node's group members only.
#[test]
fn check_for_one_node_enforces_only_its_instances() {
    let text = std::fs::read_to_string(SEED)
        .expect("seed")
        .replace("name = \"alb\"\n", "name = \"alb\"\nnode = \"a\"\n")
        .replace("name = \"rds\"\n", "name = \"rds\"\nnode = \"b\"\n");
    let dir = std::env::temp_dir().join(format!("sg-check-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("nodes.toml");
    std::fs::write(&file, text).expect("write");
    let file = file.to_str().expect("utf-8");
    let (code, out) = sg_agent(&["check", file, "--node", "b", "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let enforced: Vec<&str> = json["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|i| !i["interface"].is_null())
        .map(|i| i["name"].as_str().expect("name"))
        .collect();
    assert_eq!(enforced, ["rds"], "{out}");
    // Without --node: every instance with an interface, whichever node.
    let (code, out) = sg_agent(&["check", file]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("instance alb (enforced on eth0 in netns sg-alb, node a)"),
        "{out}"
    );
    // A node with nothing to enforce is refused as run would refuse it.
    let (code, out) = sg_agent(&["check", file, "--node", "c"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("enforces no instance here"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// AWS's default established-TCP timeout depends on the instance type: 350
/// s on Nitro v6 types except P6e-GB200, 432,000 s on the others; the
/// file-wide `[conntrack]` and the instance's own override it. `check`
/// shows where each timeout comes from, and the data plane gets it.
#[test]
fn the_instance_type_decides_the_default_tcp_timeout() {
    let text = r#"
[conntrack]
udp_timeout = 45

[[security_group]]
name = "web"

[[instance]]
name = "v6"
addresses = ["10.0.0.1"]
security_groups = ["web"]
interface = "eth0"
instance_type = "c8i.large"
nitro_version = 6

[[instance]]
name = "gb200"
addresses = ["10.0.0.2"]
security_groups = ["web"]
interface = "eth1"
instance_type = "p6e-gb200.36xlarge"
nitro_version = 6

[[instance]]
name = "v5"
addresses = ["10.0.0.3"]
security_groups = ["web"]
interface = "eth2"
instance_type = "m6i.large"
nitro_version = 5

[[instance]]
name = "own"
addresses = ["10.0.0.4"]
security_groups = ["web"]
interface = "eth3"
nitro_version = 6
  [instance.conntrack]
  tcp_established_timeout = 900
"#
    .to_owned();
    let dir = std::env::temp_dir().join(format!("sg-check-type-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("types.toml");
    std::fs::write(&file, &text).expect("write");
    let (code, out) = sg_agent(&["check", file.to_str().expect("utf-8"), "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let timeouts: Vec<(String, u64, String, String)> = json["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            let c = &i["conntrack"];
            (
                i["name"].as_str().expect("name").to_owned(),
                c["tcp_established_timeout"].as_u64().expect("tcp"),
                c["sources"][0].as_str().expect("source").to_owned(),
                c["sources"][1].as_str().expect("source").to_owned(),
            )
        })
        .collect();
    let want = |n: &str, t: u64, s: &str| (n.to_owned(), t, s.to_owned(), "[conntrack]".to_owned());
    assert_eq!(
        timeouts,
        [
            want("v6", 350, "Nitro v6 default"),
            want("gb200", 432_000, "AWS default for P6e-GB200"),
            want("v5", 432_000, "AWS default"),
            want("own", 900, "[instance.conntrack]"),
        ],
        "{out}"
    );
    // The data plane idles established connections out as check says.
    let vpc = sg_agent::config::from_str(&file, &text).expect("valid");
    let compiled = sg_agent::policy::compile::compile(&vpc);
    assert_eq!(
        compiled.instances[0].settings.tcp_established_ns,
        350_000_000_000
    );
    // A malformed type is refused.
    let (code, out) = sg_agent(&["check", &{
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, text.replace("c8i.large", "C8i Large")).expect("write");
        bad.to_str().expect("utf-8").to_owned()
    }]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("\"C8i Large\" is not an EC2 instance type"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

const NETWORK_ACLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/network-acls.toml");

#[test]
fn network_acls_in_check_explain_matrix_and_diff() {
    let (code, text) = sg_agent(&["check", NETWORK_ACLS]);
    assert_eq!(code, Some(0), "{text}");
    for line in [
        "network ACL db-acl: stateless, first match, across the boundary of db (10.0.2.0/24)",
        "    100    allow  tcp     3306                   10.0.1.0/24",
        "    *      deny   all     all                    everything else",
        "  subnet: db (10.0.2.0/24), network ACL db-acl",
        "  subnet: app (10.0.1.0/24), no network ACL (AWS's default: everything allowed)",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }

    // The ephemeral-port trap, as a newcomer writes it: the public
    // subnet's answers to the internet's clients left out.
    let dir = std::env::temp_dir().join(format!("sg-offline-nacl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let good = std::fs::read_to_string(NETWORK_ACLS).expect("example");
    let (head, tail) = good
        .split_once("# without these, every connection from outside hangs.")
        .expect("the example's outbound rule 110");
    let trap = format!(
        "{head}{}",
        tail.replacen("to_port = 65535", "to_port = 32767", 1)
    );
    assert_ne!(trap, good);
    let trap_file = dir.join("trap.toml");
    std::fs::write(&trap_file, &trap).expect("write");
    let trap_path = trap_file.to_str().expect("utf-8");
    let (code, text) = sg_agent(&[
        "explain",
        trap_path,
        "--to",
        "alb",
        "--from",
        "198.51.100.7",
        "--port",
        "80",
    ]);
    assert_eq!(code, Some(4), "{text}");
    assert!(
        text.contains("because: its answers to port 49152 are denied by network ACL public-acl, outbound rule * (no rule matched): network ACLs are stateless"),
        "{text}"
    );
    assert!(
        text.contains("routes, gateways and Block Public Access are outside"),
        "{text}"
    );
    let (code, text) = sg_agent(&[
        "explain",
        NETWORK_ACLS,
        "--to",
        "alb",
        "--from",
        "198.51.100.7",
        "--port",
        "80",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("network ACL public-acl, outbound rule 110: allow (its answers)"),
        "{text}"
    );

    // matrix: db's network ACL lets the app subnet in, nothing else.
    let (_, text) = sg_agent(&["matrix", NETWORK_ACLS]);
    let row = |text: &str, from: &str, to: &str| {
        text.lines()
            .find(|l| l.split_whitespace().take(2).eq([from, to]))
            .unwrap_or_else(|| panic!("{from} -> {to} in:\n{text}"))
            .to_owned()
    };
    assert!(row(&text, "app-1", "rds").ends_with("allow"), "{text}");
    let closed = good.replace(
        "cidr_block = \"10.0.1.0/24\"",
        "cidr_block = \"10.0.9.0/24\"",
    );
    let closed_file = dir.join("closed.toml");
    std::fs::write(&closed_file, closed).expect("write");
    let (_, text) = sg_agent(&["matrix", closed_file.to_str().expect("utf-8")]);
    assert!(
        !row(&text, "app-1", "rds").contains("allow"),
        "db's network ACL no longer lets the app subnet in:\n{text}"
    );

    // diff: entries added and removed.
    let (code, text) = sg_agent(&["diff", NETWORK_ACLS, trap_path]);
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("- network ACL public-acl outbound rule 110: allow tcp 1024-65535 0.0.0.0/0"),
        "{text}"
    );
    assert!(
        text.contains("+ network ACL public-acl outbound rule 110: allow tcp 1024-32767 0.0.0.0/0"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// libvirt round two, item 6: the control socket (and the state directory)
/// can come from the environment, for every verb that takes them.
#[test]
fn the_control_socket_comes_from_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_sg-agent"))
        .arg("status")
        .env("SG_AGENT_CONTROL_SOCKET", "/run/sg-offline-test-none.sock")
        .output()
        .expect("sg-agent runs");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/run/sg-offline-test-none.sock"), "{err}");
    let (_, help) = sg_agent(&["run", "--help"]);
    assert!(help.contains("[env: SG_AGENT_CONTROL_SOCKET="), "{help}");
    assert!(help.contains("[env: SG_AGENT_STATE_DIR="), "{help}");
}

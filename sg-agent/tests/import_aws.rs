//! `import aws` and `export aws` on fixtures written from the AWS CLI's
//! documented output (several groups, group references, a prefix list,
//! ICMP and `ICMPv6`, all traffic, IPv6, a group with no outbound rule, a
//! peered VPC's group): the golden rules file, accepted by `check`, stable,
//! and the rule set round-tripping through `export`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use sg_agent::{
    import::aws::{self, Inputs, SecurityGroups},
    policy::admit,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aws")
}

fn import() -> (String, Vec<String>) {
    let f = fixtures();
    let (sgs, instances, pls, entries) = (
        f.join("security-groups.json"),
        f.join("instances.json"),
        f.join("prefix-lists.json"),
        f.join("entries"),
    );
    let inputs = Inputs {
        security_groups: &sgs,
        network_interfaces: None,
        instances: Some(&instances),
        prefix_lists: Some(&pls),
        entries_dir: Some(&entries),
    };
    let mut warnings = Vec::new();
    let text = aws::import(&inputs, &mut warnings).expect("imports");
    (text, warnings)
}

#[test]
fn the_import_is_the_golden_file_and_check_accepts_it() {
    let (text, warnings) = import();
    let golden = std::fs::read_to_string(fixtures().join("expected.toml")).expect("golden");
    assert_eq!(
        text, golden,
        "the import changed: review it, then update expected.toml"
    );
    assert_eq!(import().0, text, "same input, same bytes");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("sg-0fedcba9876540099 of account 999999999999"));
    let (vpc, _) = admit("imported.toml".as_ref(), &text, true).expect("check accepts it");
    assert_eq!(vpc.groups.len(), 3);
    assert_eq!(vpc.instances.len(), 3);
    let db = vpc.group("db").expect("db");
    assert!(
        db.egress.is_empty(),
        "no outbound permission, no outbound rule"
    );
    let app = vpc.group("app").expect("app");
    assert_eq!(app.ingress.len(), 2, "the peered group's rule is left out");
    // The CLI as a user runs it, then `check --allow-empty` on the output.
    let f = fixtures();
    let out = Command::new(env!("CARGO_BIN_EXE_sg-agent"))
        .args(["import", "aws", "--security-groups"])
        .arg(f.join("security-groups.json"))
        .arg("--instances")
        .arg(f.join("instances.json"))
        .arg("--prefix-lists")
        .arg(f.join("prefix-lists.json"))
        .arg("--entries-dir")
        .arg(f.join("entries"))
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), golden);
    let missing = Command::new(env!("CARGO_BIN_EXE_sg-agent"))
        .args(["import", "aws", "--security-groups"])
        .arg(f.join("security-groups.json"))
        .arg("--prefix-lists")
        .arg(f.join("prefix-lists.json"))
        .output()
        .expect("runs");
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("get-managed-prefix-list-entries"),
        "{missing:?}"
    );
}

/// A group's rules as sets of (direction, protocol, from, to, source), with
/// group and prefix-list ids turned into names.
type RuleSet = BTreeMap<String, BTreeSet<(String, String, Option<i64>, Option<i64>, String)>>;

fn rule_set(
    groups: &SecurityGroups,
    lists: &BTreeMap<String, String>,
    skip_group: Option<&str>,
) -> RuleSet {
    let names: BTreeMap<&str, &str> = groups
        .security_groups
        .iter()
        .map(|g| (g.group_id.as_str(), g.group_name.as_str()))
        .collect();
    let protocol = |p: &str| match p {
        "6" => "tcp".to_owned(),
        "17" => "udp".to_owned(),
        "1" => "icmp".to_owned(),
        "58" => "icmpv6".to_owned(),
        other => other.to_owned(),
    };
    let mut out = RuleSet::new();
    for g in &groups.security_groups {
        let set = out.entry(g.group_name.clone()).or_default();
        for (dir, perms) in [("in", &g.ip_permissions), ("out", &g.ip_permissions_egress)] {
            for p in perms {
                let proto = protocol(&p.ip_protocol);
                // AWS prints no ports for all traffic; -1 for an ICMP
                // code it leaves open.
                let ports = if proto == "-1" {
                    (None, None)
                } else if proto.starts_with("icmp") {
                    (p.from_port, p.to_port.or(Some(-1)))
                } else {
                    (p.from_port, p.to_port)
                };
                let mut sources: Vec<String> = p
                    .ip_ranges
                    .iter()
                    .map(|r| r.cidr_ip.clone())
                    .chain(p.ipv6_ranges.iter().map(|r| r.cidr_ipv6.clone()))
                    .chain(
                        p.prefix_list_ids
                            .iter()
                            .map(|l| lists.get(&l.prefix_list_id).cloned().unwrap_or_default()),
                    )
                    .collect();
                for pair in &p.user_id_group_pairs {
                    if Some(pair.group_id.as_str()) == skip_group {
                        continue;
                    }
                    sources.push(format!("group {}", names[pair.group_id.as_str()]));
                }
                for s in sources {
                    set.insert((dir.into(), proto.clone(), ports.0, ports.1, s));
                }
            }
        }
    }
    out
}

#[test]
fn import_then_export_round_trips_the_rule_set() {
    let (text, _) = import();
    let (vpc, _) = admit("imported.toml".as_ref(), &text, true).expect("valid");
    let exported = aws::export(&vpc);
    // The JSON is what `aws ec2 describe-security-groups` prints, and reads
    // back as such.
    let json = serde_json::to_string(&exported).expect("serializes");
    let exported: SecurityGroups = serde_json::from_str(&json).expect("reads back");
    let original: SecurityGroups = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("security-groups.json")).expect("fixture"),
    )
    .expect("fixture");
    let lists_original = BTreeMap::from([("pl-0f1e2d3c4b5a60001".to_owned(), "admins".to_owned())]);
    let lists_exported = BTreeMap::from([(aws::made_up_id("pl", "admins"), "admins".to_owned())]);
    assert_eq!(
        rule_set(&exported, &lists_exported, None),
        // The peered VPC's group is the one source the file cannot hold.
        rule_set(&original, &lists_original, Some("sg-0fedcba9876540099")),
    );
}

/// Groups of two VPCs, one referencing the other's: each VPC a `[[vpc]]`,
/// each group and instance in its own, the reference kept with the
/// peering it implies; `check` accepts it and resolves the reference.
#[test]
fn a_reference_to_a_peered_vpcs_group_in_the_input_is_kept() {
    let dir = std::env::temp_dir().join(format!("sg-import-vpcs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sgs = dir.join("sgs.json");
    std::fs::write(
        &sgs,
        r#"{"SecurityGroups": [
  {"GroupId": "sg-0a000000000000001", "GroupName": "app", "VpcId": "vpc-0aaa",
   "IpPermissions": [], "IpPermissionsEgress": [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]},
  {"GroupId": "sg-0b000000000000002", "GroupName": "db", "VpcId": "vpc-0bbb",
   "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
     "UserIdGroupPairs": [{"GroupId": "sg-0a000000000000001", "VpcId": "vpc-0aaa", "PeeringStatus": "active"}]}],
   "IpPermissionsEgress": []}
]}"#,
    )
    .expect("write");
    let inputs = Inputs {
        security_groups: &sgs,
        network_interfaces: None,
        instances: None,
        prefix_lists: None,
        entries_dir: None,
    };
    let mut warnings = Vec::new();
    let text = aws::import(&inputs, &mut warnings).expect("imports");
    assert!(warnings.is_empty(), "{warnings:?}");
    for line in [
        "[[vpc]]\nname = \"vpc-0aaa\"",
        "[[vpc]]\nname = \"vpc-0bbb\"",
        "[[vpc_peering]]\nvpcs = [\"vpc-0aaa\", \"vpc-0bbb\"]",
        "name = \"db\"\nvpc = \"vpc-0bbb\"",
        "security_groups = [\"app\"]",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    let text = text
        + "\n[[instance]]\nname = \"app-1\"\nvpc = \"vpc-0aaa\"\naddresses = [\"10.1.0.10\"]\nsecurity_groups = [\"app\"]\n";
    let (vpc, _) = admit("imported.toml".as_ref(), &text, true).expect("check accepts it");
    assert!(vpc.warnings.is_empty(), "not stale: {:?}", vpc.warnings);
    assert_eq!(
        vpc.stale_reference("db", "app"),
        None,
        "the peering holds the reference"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

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
        network_acls: None,
        subnets: None,
        transit_gateways: None,
        transit_gateway_attachments: None,
        vpc_associations: None,
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
    // AWS keeps a description per source: HTTP's IPv4 range has one, its
    // IPv6 range none, so they are two rules here.
    let web = vpc.group("web").expect("web");
    let http: Vec<Option<&str>> = web
        .ingress
        .iter()
        .filter(|r| r.ports == sg_agent::config::Ports::Range { from: 80, to: 80 })
        .map(|r| r.description.as_deref())
        .collect();
    assert_eq!(http, [Some("HTTP from the internet"), None]);
    // The CLI as a user runs it: the group pair of another account cannot
    // be carried over, so nothing is written unless the user accepts that.
    let f = fixtures();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sg-agent"))
            .args(["import", "aws", "--security-groups"])
            .arg(f.join("security-groups.json"))
            .arg("--instances")
            .arg(f.join("instances.json"))
            .arg("--prefix-lists")
            .arg(f.join("prefix-lists.json"))
            .arg("--entries-dir")
            .arg(f.join("entries"))
            .args(extra)
            .output()
            .expect("runs")
    };
    let refused = run(&[]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("error: not carried over: app ingress: group sg-0fedcba9876540099")
            && said.contains("--allow-partial"),
        "{said}"
    );
    let out = run(&["--allow-partial"]);
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
        network_acls: None,
        subnets: None,
        transit_gateways: None,
        transit_gateway_attachments: None,
        vpc_associations: None,
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
        vpc.stale_reference("db", "app", sg_agent::config::Direction::Ingress),
        None,
        "the peering holds the reference"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--network-acls` and `--subnets`: the subnets and their network ACLs
/// (AWS's `*` rules implicit, the default network ACL as `default =
/// true`), enforced as AWS would (a deny numbered before the allow wins),
/// and `export aws --network-acls` gives back the entries it read.
#[test]
fn network_acls_and_subnets_are_imported_enforced_and_exported() {
    use sg_agent::{
        config::Direction,
        policy::reference::{Decision, L4, Packet, evaluate},
    };
    let f = fixtures();
    let (sgs, instances, acls, subnets) = (
        f.join("security-groups.json"),
        f.join("instances.json"),
        f.join("network-acls.json"),
        f.join("subnets.json"),
    );
    let pls = f.join("prefix-lists.json");
    let entries = f.join("entries");
    let inputs = Inputs {
        security_groups: &sgs,
        network_interfaces: None,
        instances: Some(&instances),
        prefix_lists: Some(&pls),
        entries_dir: Some(&entries),
        network_acls: Some(&acls),
        subnets: Some(&subnets),
        transit_gateways: None,
        transit_gateway_attachments: None,
        vpc_associations: None,
    };
    let mut warnings = Vec::new();
    let text = aws::import(&inputs, &mut warnings).expect("imports");
    for line in [
        "[[subnet]]\nname = \"public-a\"\nid = \"subnet-0a1b2c3d4e5f60001\"\ncidr_block = \"10.0.1.0/24\"\nipv6_cidr_block = \"2001:db8:0:1::/64\"",
        "[[subnet]]\nname = \"subnet-0a1b2c3d4e5f60003\"",
        "[[network_acl]]\nname = \"acl-0a1b2c3d4e5f60000\"\nid = \"acl-0a1b2c3d4e5f60000\"\ndefault = true\nsubnets = [\"app-a\", \"subnet-0a1b2c3d4e5f60003\"]",
        "[[network_acl]]\nname = \"public\"\nid = \"acl-0a1b2c3d4e5f60001\"\nsubnets = [\"public-a\"]",
        "  rule_no = 110\n  action = \"allow\"\n  protocol = \"icmp\"\n  icmp_type = 8\n  cidr_block = \"10.0.0.0/16\"",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert!(!text.contains("32767"), "the * rules are implicit");
    let (vpc, _) = admit("imported.toml".as_ref(), &text, true).expect("check accepts it");
    let web = vpc.instance("web-1").expect("web-1");
    let https = |src: &str| Packet {
        src: src.parse().expect("address"),
        dst: "10.0.1.10".parse().expect("address"),
        proto: 6,
        l4: L4::Ports {
            src: 40000,
            dst: 443,
        },
        later_fragment: false,
        via_ah: false,
        service_place: false,
    };
    match evaluate(&vpc, web, Direction::Ingress, &https("203.0.113.9"), false) {
        Decision::DeniedByNetworkAcl(at) => {
            assert_eq!(at.to_string(), "network ACL public, inbound rule 90");
        }
        other => panic!("the network ACL's rule 90 denies it, not {other:?}"),
    }
    assert!(evaluate(&vpc, web, Direction::Ingress, &https("198.51.100.9"), false).passes());

    // Back out: the same entries, the same associations.
    assert_exported_as_read(&vpc, &acls);

    // A network ACL associated with a subnet the input does not describe:
    // named as not carried over (its instances would go unfiltered).
    let dir = std::env::temp_dir().join(format!("sg-import-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let partial = dir.join("subnets.json");
    let all = std::fs::read_to_string(&subnets).expect("fixture");
    let (head, _) = all.split_once("        {\n            \"AvailabilityZone\": \"eu-west-1a\",\n            \"CidrBlock\": \"10.0.2.0/24\"").expect("second subnet");
    std::fs::write(
        &partial,
        format!("{}]}}", head.trim_end().trim_end_matches(',')),
    )
    .expect("write");
    let inputs = Inputs {
        subnets: Some(&partial),
        ..inputs
    };
    let mut warnings = Vec::new();
    aws::import(&inputs, &mut warnings).expect("imports");
    let lost: Vec<&String> = warnings
        .iter()
        .filter(|w| w.starts_with("network ACL"))
        .collect();
    // Only public-a is described now: app-a's and the third subnet's
    // associations are lost.
    assert_eq!(lost.len(), 2, "{warnings:?}");
    assert!(
        lost[0].contains("its association with subnet subnet-0a1b2c3d4e5f60002"),
        "{warnings:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `export aws --network-acls` of `vpc` holds exactly the entries and
/// associations of the `describe-network-acls` output at `acls`.
fn assert_exported_as_read(vpc: &sg_agent::config::Vpc, acls: &Path) {
    use sg_agent::import::network_acls;
    let exported = network_acls::export(vpc);
    let read: network_acls::NetworkAcls =
        serde_json::from_str(&std::fs::read_to_string(acls).expect("fixture")).expect("json");
    for (mine, theirs) in exported.network_acls.iter().zip(&read.network_acls) {
        assert_eq!(mine.network_acl_id, theirs.network_acl_id);
        assert_eq!(mine.is_default, theirs.is_default);
        let key = |e: &network_acls::Entry| {
            (
                e.egress,
                e.rule_number,
                e.protocol.clone(),
                e.rule_action.clone(),
                e.cidr_block.clone(),
                e.ipv6_cidr_block.clone(),
                e.port_range.map(|p| (p.from, p.to)),
                e.icmp_type_code.map(|i| (i.ty, i.code)),
            )
        };
        let mut a: Vec<_> = mine.entries.iter().map(key).collect();
        let mut b: Vec<_> = theirs.entries.iter().map(key).collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{}", mine.network_acl_id);
        let subnets = |n: &network_acls::NetworkAcl| {
            let mut s: Vec<String> = n.associations.iter().map(|a| a.subnet_id.clone()).collect();
            s.sort();
            s
        };
        assert_eq!(subnets(mine), subnets(theirs));
    }
    assert_eq!(exported.network_acls.len(), read.network_acls.len());
}

/// A reference through a peering that is gone (`PeeringStatus`
/// `deleted`) is stale on AWS: it matches nothing, and stays so imported.
#[test]
fn a_reference_through_a_deleted_peering_stays_stale() {
    let dir = std::env::temp_dir().join(format!("sg-import-stale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sgs = dir.join("sgs.json");
    std::fs::write(
        &sgs,
        r#"{"SecurityGroups": [
  {"GroupId": "sg-0a000000000000001", "GroupName": "app", "VpcId": "vpc-0aaa",
   "IpPermissions": [], "IpPermissionsEgress": []},
  {"GroupId": "sg-0b000000000000002", "GroupName": "bastion-access", "VpcId": "vpc-0bbb",
   "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
     "UserIdGroupPairs": [{"GroupId": "sg-0a000000000000001", "VpcId": "vpc-0aaa", "PeeringStatus": "deleted"}]}],
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
        network_acls: None,
        subnets: None,
        transit_gateways: None,
        transit_gateway_attachments: None,
        vpc_associations: None,
    };
    let mut warnings = Vec::new();
    let text = aws::import(&inputs, &mut warnings).expect("imports");
    assert!(!text.contains("[[vpc_peering]]"), "{text}");
    let (vpc, _) = admit("imported.toml".as_ref(), &text, true).expect("check accepts it");
    assert!(
        vpc.stale_reference(
            "bastion-access",
            "app",
            sg_agent::config::Direction::Ingress
        )
        .is_some(),
        "the reference is stale, as on AWS"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--transit-gateways`, `--transit-gateway-attachments` and
/// `--vpc-associations`: two VPCs a transit gateway attaches (group
/// referencing on) are not taken as peered, so the inbound reference
/// across it holds and the outbound one is stale, as on AWS; a group
/// associated with a third VPC keeps the association, and that VPC's
/// instance may use it.
#[test]
fn transit_gateways_and_vpc_associations_are_imported() {
    let dir = std::env::temp_dir().join(format!("sg-import-tgw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    };
    let sgs = write(
        "sgs.json",
        r#"{"SecurityGroups": [
  {"GroupId": "sg-0a000000000000001", "GroupName": "app", "VpcId": "vpc-0aaa",
   "IpPermissions": [],
   "IpPermissionsEgress": [{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
     "UserIdGroupPairs": [{"GroupId": "sg-0b000000000000002", "VpcId": "vpc-0bbb"}]}]},
  {"GroupId": "sg-0b000000000000002", "GroupName": "db", "VpcId": "vpc-0bbb",
   "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
     "UserIdGroupPairs": [{"GroupId": "sg-0a000000000000001", "VpcId": "vpc-0aaa"}]}],
   "IpPermissionsEgress": []},
  {"GroupId": "sg-0c000000000000003", "GroupName": "shared", "VpcId": "vpc-0bbb",
   "IpPermissions": [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
     "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}],
   "IpPermissionsEgress": []}
]}"#,
    );
    let tgws = write(
        "tgws.json",
        r#"{"TransitGateways": [{"TransitGatewayId": "tgw-0123456789abcdef0", "State": "available",
  "Options": {"SecurityGroupReferencingSupport": "enable"},
  "Tags": [{"Key": "Name", "Value": "core"}]}]}"#,
    );
    let attachments = write(
        "attachments.json",
        r#"{"TransitGatewayVpcAttachments": [
  {"TransitGatewayId": "tgw-0123456789abcdef0", "VpcId": "vpc-0aaa", "State": "available",
   "Options": {"SecurityGroupReferencingSupport": "enable"}},
  {"TransitGatewayId": "tgw-0123456789abcdef0", "VpcId": "vpc-0bbb", "State": "available",
   "Options": {"SecurityGroupReferencingSupport": "enable"}}]}"#,
    );
    let associations = write(
        "associations.json",
        r#"{"SecurityGroupVpcAssociations": [
  {"GroupId": "sg-0c000000000000003", "VpcId": "vpc-0ccc", "VpcOwnerId": "111122223333", "State": "associated"},
  {"GroupId": "sg-0c000000000000003", "VpcId": "vpc-0ddd", "State": "disassociated"}]}"#,
    );
    let instances = write(
        "instances.json",
        r#"{"Reservations": [{"Instances": [{"InstanceId": "i-0c", "VpcId": "vpc-0ccc",
  "Tags": [{"Key": "Name", "Value": "jump"}],
  "NetworkInterfaces": [{"NetworkInterfaceId": "eni-0c", "VpcId": "vpc-0ccc",
    "PrivateIpAddresses": [{"PrivateIpAddress": "10.3.0.10"}],
    "Groups": [{"GroupId": "sg-0c000000000000003"}]}]}]}]}"#,
    );
    let inputs = Inputs {
        security_groups: &sgs,
        network_interfaces: None,
        instances: Some(&instances),
        prefix_lists: None,
        entries_dir: None,
        network_acls: None,
        subnets: None,
        transit_gateways: Some(&tgws),
        transit_gateway_attachments: Some(&attachments),
        vpc_associations: Some(&associations),
    };
    let mut warnings = Vec::new();
    let text = aws::import(&inputs, &mut warnings).expect("imports");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(
        !text.contains("[[vpc_peering]]"),
        "no peering made up:\n{text}"
    );
    for line in [
        "[[transit_gateway]]\nname = \"core\"\nid = \"tgw-0123456789abcdef0\"\n\
         security_group_referencing = true\nvpcs = [\"vpc-0aaa\", \"vpc-0bbb\"]",
        "name = \"shared\"\nvpc = \"vpc-0bbb\"\nassociated_vpcs = [\"vpc-0ccc\"]",
        "name = \"jump\"\nvpc = \"vpc-0ccc\"",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert!(
        text.find("name = \"vpc-0aaa\"") < text.find("name = \"vpc-0bbb\""),
        "the VPC with an associated group is not the default (first) one:\n{text}"
    );
    let (vpc, _) = admit("imported.toml".as_ref(), &text, true).expect("check accepts it");
    assert_eq!(
        vpc.stale_reference("db", "app", sg_agent::config::Direction::Ingress),
        None,
        "the transit gateway carries the inbound reference"
    );
    assert!(
        vpc.stale_reference("app", "db", sg_agent::config::Direction::Egress)
            .is_some(),
        "an outbound reference across a transit gateway is stale, as on AWS"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

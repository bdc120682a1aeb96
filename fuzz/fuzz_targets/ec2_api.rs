//! The EC2 API endpoint on arbitrary requests: sequences of calls built
//! from EC2's own parameter names and the fixture's ids (so that the
//! fuzzer reaches the actions, not only their "missing parameter"
//! answers), and raw request bodies. Each runs through the very function
//! the HTTP server runs (`ec2::answer`) against a real rules file and the
//! real admission (`run`'s parse, validate and compile); the one part not
//! here is the enforcement thread, answered by the file's own digest as
//! the agent answers once a reload put it in force.
//!
//! Nothing may panic; every answer is XML with a 2xx or 4xx status (a 5xx
//! on a valid file is a bug of ours); the file after every call is one
//! `check` accepts; a Describe or Get call never changes it.
#![no_main]

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sg_agent::{
    config,
    ec2::{self, Account, Applied, AskApply, Store, store::Backend},
};

/// A file with one of everything the API changes, each with its AWS id.
const FIXTURE: &str = r#"# The fuzz target's VPC.
[vpc]
cidr_blocks = ["10.0.0.0/16"]

[[subnet]]
name = "web"
id = "subnet-0000000000000000a"
cidr_block = "10.0.1.0/24"

[[network_acl]]
name = "web-acl"
id = "acl-0000000000000000a"
subnets = ["web"]
  [[network_acl.ingress]]
  rule_no = 100
  action = "allow"
  protocol = "tcp"
  from_port = 443
  to_port = 443
  cidr_block = "0.0.0.0/0"

[[prefix_list]]
name = "admins"
id = "pl-0000000000000000a"
entries = [{ cidr = "203.0.113.0/28", description = "office" }, "198.51.100.0/24"]
max_entries = 5

[[security_group]]
name = "web"
id = "sg-0000000000000000a"
description = "HTTPS from anywhere"
tags = { team = "edge" }
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 443
  to_port = 443
  cidr_blocks = ["0.0.0.0/0"]
  ipv6_cidr_blocks = ["::/0"]
  description = "HTTPS"
  [[security_group.egress]]
  protocol = "all"
  cidr_blocks = ["0.0.0.0/0"]

[[security_group]]
name = "db"
id = "sg-0000000000000000b"
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 5432
  to_port = 5432
  security_groups = ["web"]
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 22
  to_port = 22
  prefix_list_ids = ["admins"]

[[instance]]
name = "web-1"
id = "i-0000000000000000a"
interface = "veth-web"
addresses = ["10.0.1.10"]
security_groups = ["web"]

[[instance]]
name = "db-1"
id = "i-0000000000000000b"
interface = "veth-db"
addresses = ["10.0.1.20"]
security_groups = ["db"]
"#;

const ACTIONS: &[&str] = &[
    "CreateSecurityGroup",
    "DescribeSecurityGroups",
    "DeleteSecurityGroup",
    "DescribeStaleSecurityGroups",
    "DescribeSecurityGroupReferences",
    "AuthorizeSecurityGroupIngress",
    "AuthorizeSecurityGroupEgress",
    "RevokeSecurityGroupIngress",
    "RevokeSecurityGroupEgress",
    "DescribeSecurityGroupRules",
    "ModifySecurityGroupRules",
    "UpdateSecurityGroupRuleDescriptionsIngress",
    "UpdateSecurityGroupRuleDescriptionsEgress",
    "CreateTags",
    "DeleteTags",
    "DescribeTags",
    "DescribeInstances",
    "DescribeNetworkInterfaces",
    "ModifyInstanceAttribute",
    "ModifyNetworkInterfaceAttribute",
    "DescribeVpcs",
    "DescribeSubnets",
    "DescribeNetworkAcls",
    "CreateNetworkAcl",
    "DeleteNetworkAcl",
    "CreateNetworkAclEntry",
    "ReplaceNetworkAclEntry",
    "DeleteNetworkAclEntry",
    "ReplaceNetworkAclAssociation",
    "DescribeManagedPrefixLists",
    "GetManagedPrefixListEntries",
    "CreateManagedPrefixList",
    "ModifyManagedPrefixList",
    "DeleteManagedPrefixList",
    "GetCallerIdentity",
    "RunInstances",
    "NoSuchAction",
];

/// Parameter names; `#` is an index the input picks (1 to 3).
const KEYS: &[&str] = &[
    "GroupId",
    "GroupName",
    "GroupName.#",
    "GroupId.#",
    "Description",
    "VpcId",
    "IpPermissions.#.IpProtocol",
    "IpPermissions.#.FromPort",
    "IpPermissions.#.ToPort",
    "IpPermissions.#.IpRanges.#.CidrIp",
    "IpPermissions.#.IpRanges.#.Description",
    "IpPermissions.#.Ipv6Ranges.#.CidrIpv6",
    "IpPermissions.#.PrefixListIds.#.PrefixListId",
    "IpPermissions.#.Groups.#.GroupId",
    "IpPermissions.#.Groups.#.GroupName",
    "IpPermissions.#.Groups.#.UserId",
    "SecurityGroupRuleId.#",
    "SecurityGroupRule.#.SecurityGroupRuleId",
    "SecurityGroupRule.#.SecurityGroupRule.IpProtocol",
    "SecurityGroupRule.#.SecurityGroupRule.FromPort",
    "SecurityGroupRule.#.SecurityGroupRule.ToPort",
    "SecurityGroupRule.#.SecurityGroupRule.CidrIpv4",
    "SecurityGroupRule.#.SecurityGroupRule.ReferencedGroupId",
    "SecurityGroupRule.#.SecurityGroupRule.Description",
    "Filter.#.Name",
    "Filter.#.Value.#",
    "ResourceId.#",
    "Tag.#.Key",
    "Tag.#.Value",
    "TagSpecification.#.ResourceType",
    "TagSpecification.#.Tag.#.Key",
    "TagSpecification.#.Tag.#.Value",
    "InstanceId",
    "InstanceId.#",
    "NetworkInterfaceId",
    "NetworkInterfaceId.#",
    "GroupId.#",
    "SecurityGroupId.#",
    "NetworkAclId",
    "NetworkAclId.#",
    "AssociationId",
    "RuleNumber",
    "Egress",
    "RuleAction",
    "Protocol",
    "CidrBlock",
    "Ipv6CidrBlock",
    "PortRange.From",
    "PortRange.To",
    "Icmp.Type",
    "Icmp.Code",
    "PrefixListId",
    "PrefixListName",
    "AddressFamily",
    "MaxEntries",
    "CurrentVersion",
    "Entry.#.Cidr",
    "Entry.#.Description",
    "AddEntry.#.Cidr",
    "AddEntry.#.Description",
    "RemoveEntry.#.Cidr",
    "NextToken",
    "MaxResults",
    "DryRun",
];

/// Values: the fixture's ids and names, and what EC2's parameters take.
const VALUES: &[&str] = &[
    "sg-0000000000000000a",
    "sg-0000000000000000b",
    "sg-ffffffffffffffff0",
    "web",
    "db",
    "default",
    "i-0000000000000000a",
    "i-0000000000000000b",
    "pl-0000000000000000a",
    "acl-0000000000000000a",
    "subnet-0000000000000000a",
    "vpc-00000000",
    "tcp",
    "udp",
    "icmp",
    "icmpv6",
    "-1",
    "6",
    "17",
    "0",
    "22",
    "443",
    "65535",
    "70000",
    "-5",
    "100",
    "32767",
    "true",
    "false",
    "allow",
    "deny",
    "0.0.0.0/0",
    "10.0.0.0/16",
    "10.0.1.10/32",
    "203.0.113.0/28",
    "::/0",
    "2001:db8::/32",
    "IPv4",
    "IPv6",
    "group-id",
    "group-name",
    "vpc-id",
    "tag:team",
    "instance-id",
    "security-group",
    "edge",
    "",
];

/// One request body: an action with parameters made of EC2's names and
/// the fixture's ids, or (one in eight) any bytes as a POST's body.
fn request(u: &mut Unstructured<'_>) -> Result<(Vec<u8>, bool)> {
    if u.ratio(1, 8)? {
        let raw: Vec<u8> = u.arbitrary()?;
        return Ok((raw, false));
    }
    let action = *u.choose(ACTIONS)?;
    let read_only = action.starts_with("Describe") || action.starts_with("Get");
    let mut form = format!("Action={action}&Version=2016-11-15");
    for _ in 0..u.int_in_range(0..=24)? {
        let mut key = (*u.choose(KEYS)?).to_owned();
        while key.contains('#') {
            key = key.replacen('#', &u.int_in_range(1..=3u8)?.to_string(), 1);
        }
        let value: String = if u.ratio(3, 4)? {
            (*u.choose(VALUES)?).to_owned()
        } else {
            let free: &str = u.arbitrary()?;
            free.chars().take(300).collect()
        };
        form.push('&');
        form.push_str(&ec2::query::encode(&key));
        form.push('=');
        form.push_str(&ec2::query::encode(&value));
    }
    Ok((form.into_bytes(), read_only))
}

struct World {
    runtime: tokio::runtime::Runtime,
    api: ec2::Shared,
    path: PathBuf,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sg-fuzz-ec2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let path = dir.join("vpc.toml");
        let reader = path.clone();
        // What the enforcement thread answers once a reload put the file in
        // force: its digest.
        let apply: AskApply = Arc::new(move |reply| {
            use sha2::Digest as _;
            let text = std::fs::read(&reader).unwrap_or_default();
            let _ = reply.send(Applied {
                in_force: sha2::Sha256::digest(&text).into(),
                revision: None,
                error: None,
            });
        });
        let account = Account {
            id: "000000000000".to_owned(),
            region: "us-east-1".to_owned(),
        };
        let store = Store::new(
            Backend::File(path.clone()),
            None,
            true,
            1 << 20,
            account,
            apply,
        );
        World {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            api: Arc::new(ec2::Api {
                store,
                credentials: None,
            }),
            path,
        }
    })
}

fn valid(path: &Path, text: &str) {
    if let Err(d) = config::from_str(path, text) {
        panic!("the API wrote a file check refuses:\n{d}\n{text}");
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    std::fs::write(&w.path, FIXTURE).expect("the fixture");
    let headers = hyper::HeaderMap::new();
    let mut u = Unstructured::new(data);
    for _ in 0..4 {
        let Ok((body, read_only)) = request(&mut u) else {
            return;
        };
        let before = std::fs::read_to_string(&w.path).expect("the rules file");
        let (status, xml) = w
            .runtime
            .block_on(ec2::answer(&w.api, "POST", "/", "", &headers, &body));
        assert!(
            (200..500).contains(&status),
            "HTTP {status} on a valid file:\n{xml}\nrequest: {}",
            String::from_utf8_lossy(&body)
        );
        if let Err(e) = roxmltree::Document::parse(&xml) {
            panic!("not XML ({e}):\n{xml}");
        }
        let after = std::fs::read_to_string(&w.path).expect("the rules file");
        if after != before {
            assert!(
                !read_only && status == 200,
                "HTTP {status} {} changed the file",
                String::from_utf8_lossy(&body)
            );
            valid(&w.path, &after);
        }
    }
});

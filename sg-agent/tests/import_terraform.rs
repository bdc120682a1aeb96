//! `import terraform` on a `terraform show -json` fixture written from
//! Terraform's documented JSON output (inline and standalone rules of both
//! kinds, a prefix list, a group whose egress Terraform emptied, instances
//! in a child module, a data source to ignore): the golden rules file,
//! accepted by `check`, and the same effective rules as the AWS importer
//! would give for the same groups.

use std::path::Path;

use sg_agent::{import::terraform, policy::admit};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/terraform")
        .join(name)
}

#[test]
fn the_import_is_the_golden_file_and_check_accepts_it() {
    let mut warnings = Vec::new();
    let text = terraform::import(&fixture("state.json"), &mut warnings).expect("imports");
    assert!(warnings.is_empty(), "{warnings:?}");
    let golden = std::fs::read_to_string(fixture("expected.toml")).expect("golden");
    assert_eq!(
        text, golden,
        "the import changed: review it, then update expected.toml"
    );
    let (vpc, _) = admit("imported.toml".as_ref(), &text, true).expect("check accepts it");
    let app = vpc.group("app").expect("app");
    // Two vpc_security_group_ingress_rules (one also listed inline, as a
    // refreshed state lists it: not twice) and two aws_security_group_rules.
    assert_eq!(app.ingress.len(), 4, "{text}");
    assert_eq!(app.egress.len(), 1, "only the explicit HTTPS egress rule");
    let lb = vpc.group("lb").expect("lb");
    assert_eq!((lb.ingress.len(), lb.egress.len()), (1, 1));
    assert_eq!(
        app.tags,
        [("Name".to_owned(), "app".to_owned())],
        "the group's tags (its Name among them) are kept"
    );
    let names: Vec<&str> = vpc.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        ["app-1", "lb-eni"],
        "the child module's resources too"
    );
    assert_eq!(vpc.instances[1].addresses.len(), 2);
    assert_eq!(vpc.prefix_lists.len(), 1);
}

/// AWS's ids travel: the groups' `sg-` and the standalone rules' `sgr-`
/// ids become `id` keys, which `check` shows (in its table and JSON) once
/// an instance is enforced here, and `export aws` gives back.
#[test]
fn aws_ids_are_kept_shown_by_check_and_exported() {
    let mut warnings = Vec::new();
    let text = terraform::import(&fixture("state.json"), &mut warnings).expect("imports");
    let (mut vpc, _) = admit("imported.toml".as_ref(), &text, true).expect("check accepts it");
    let app = vpc.group("app").expect("app");
    assert_eq!(
        app.id.as_ref().map(|(id, _)| id.as_str()),
        Some("sg-0b000000000000002")
    );
    let ids: Vec<Option<&str>> = app
        .ingress
        .iter()
        .map(|r| r.id.as_ref().map(|(id, _)| id.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            // Listed inline too (a refreshed state): one rule, the id kept.
            Some("sgr-0c000000000000001"),
            Some("sgr-0c000000000000002"),
            // aws_security_group_rule's ids are Terraform's, not AWS's.
            None,
            None,
        ]
    );
    // As if the user filled in app-1's interface.
    vpc.instances
        .iter_mut()
        .find(|i| i.name == "app-1")
        .expect("app-1")
        .link = Some(sg_agent::config::Link::Instance("eth0".to_owned()));
    let report = sg_agent::policy::report::report(&vpc);
    let table = sg_agent::policy::report::render_table(&report);
    assert!(
        table.contains("app (sg-0b000000000000002) #1 sgr-0c000000000000001"),
        "{table}"
    );
    let json = serde_json::to_value(&report).expect("JSON");
    let rows = json["instances"][0]["inbound"].as_array().expect("rows");
    assert!(
        rows.iter()
            .any(|r| r["rule_id"] == "sgr-0c000000000000002"
                && r["group_id"] == "sg-0b000000000000002"),
        "{rows:?}"
    );
    let exported = sg_agent::import::aws::export(&vpc);
    let mut group_ids: Vec<&str> = exported
        .security_groups
        .iter()
        .map(|g| g.group_id.as_str())
        .collect();
    group_ids.sort_unstable();
    assert_eq!(group_ids, ["sg-0b000000000000001", "sg-0b000000000000002"]);
}

/// A state with subnets and network ACLs (inline rules, a standalone
/// `aws_network_acl_rule`, the default network ACL): the network ACL that
/// denies 203.0.113.0/24 on 443 is carried over and enforced as AWS would
/// (rule 90 before the allow at 100); what sg-agent does not model
/// (`aws_vpc`, a security group's VPC association) is named, and nothing
/// is written unless `--allow-partial`.
#[test]
fn network_acls_are_carried_over_and_the_rest_is_named() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sg-agent"))
            .args(args)
            .output()
            .expect("sg-agent runs")
    };
    let state = fixture("network-acls.json");
    let state = state.to_str().expect("utf-8");
    let refused = run(&["import", "terraform", state]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(refused.stdout.is_empty());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("not carried over: aws_vpc.main (aws_vpc)"),
        "{said}"
    );
    assert!(
        !said.contains("aws_vpc_security_group_vpc_association"),
        "the association is carried over: {said}"
    );
    assert!(
        !said.contains("aws_ami"),
        "a data source is no resource: {said}"
    );

    let out = run(&["import", "terraform", "--allow-partial", state]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (vpc, _) = admit("imported.toml".as_ref(), &text, true).expect("check accepts it");
    let web = vpc.group("web").expect("web");
    let associated: Vec<&str> = web
        .associated_vpcs
        .iter()
        .map(|(v, _)| v.as_str())
        .collect();
    assert_eq!(
        associated,
        ["vpc-0aaaaaaaaaaaaaaaa"],
        "aws_vpc_security_group_vpc_association:\n{text}"
    );
    let public = vpc
        .network_acls
        .iter()
        .find(|a| a.name == "public")
        .expect("the public network ACL");
    let numbers: Vec<u16> = public.ingress.iter().map(|e| e.rule_no).collect();
    assert_eq!(
        numbers,
        [90, 100, 110, 120],
        "inline and standalone, in order"
    );
    let default = vpc
        .network_acls
        .iter()
        .find(|a| a.default)
        .expect("the default network ACL");
    assert_eq!(default.subnets.len(), 1);

    let dir = std::env::temp_dir().join(format!("sg-tf-nacl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("imported.toml");
    std::fs::write(&file, &text).expect("write");
    let file = file.to_str().expect("utf-8");
    let explain = |from: &str| {
        run(&[
            "explain", file, "--to", "web-1", "--from", from, "--port", "443",
        ])
    };
    let denied = explain("203.0.113.5");
    assert_eq!(denied.status.code(), Some(4), "{denied:?}");
    assert!(
        String::from_utf8_lossy(&denied.stdout)
            .contains("because: denied by network ACL public, inbound rule 90"),
        "{denied:?}"
    );
    assert_eq!(explain("198.51.100.5").status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A managed resource of `terraform show -json`.
fn resource(ty: &str, name: &str, values: &str) -> String {
    format!(
        r#"{{"address": "{ty}.{name}", "mode": "managed", "type": "{ty}", "name": "{name}",
            "provider_name": "registry.terraform.io/hashicorp/aws", "values": {values}}}"#
    )
}

/// `aws_ec2_transit_gateway` with its `aws_ec2_transit_gateway_vpc_attachment`s
/// and an `aws_vpc_peering_connection`: the transit gateway's VPCs are not
/// taken as peered (an outbound reference across it stays stale, as on
/// AWS), the peering is written, and an attachment with
/// `security_group_referencing_support = "disable"` keeps it off.
#[test]
fn transit_gateways_and_peerings_are_carried_over() {
    let group = |name: &str, id: &str, vpc: &str, ingress: &str, egress: &str| {
        resource(
            "aws_security_group",
            name,
            &format!(
                r#"{{"id": "{id}", "name": "{name}", "vpc_id": "{vpc}", "ingress": [{ingress}], "egress": [{egress}]}}"#
            ),
        )
    };
    let rule = |from: u16, groups: &str| {
        format!(
            r#"{{"from_port": {from}, "to_port": {from}, "protocol": "tcp", "cidr_blocks": [],
                "ipv6_cidr_blocks": [], "prefix_list_ids": [], "security_groups": [{groups}], "self": false}}"#
        )
    };
    let (app, db, ops) = (
        "sg-0a000000000000001",
        "sg-0b000000000000002",
        "sg-0c000000000000003",
    );
    let resources = [
        group(
            "app",
            app,
            "vpc-0aaa",
            "",
            &rule(5432, &format!("\"{db}\"")),
        ),
        group("db", db, "vpc-0bbb", &rule(5432, &format!("\"{app}\"")), ""),
        group("ops", ops, "vpc-0ccc", &rule(22, &format!("\"{app}\"")), ""),
        resource(
            "aws_ec2_transit_gateway",
            "core",
            r#"{"id": "tgw-0123456789abcdef0", "security_group_referencing_support": "enable", "tags": {"Name": "core"}}"#,
        ),
        resource(
            "aws_ec2_transit_gateway_vpc_attachment",
            "a",
            r#"{"id": "tgw-attach-0a", "transit_gateway_id": "tgw-0123456789abcdef0", "vpc_id": "vpc-0aaa"}"#,
        ),
        resource(
            "aws_ec2_transit_gateway_vpc_attachment",
            "b",
            r#"{"id": "tgw-attach-0b", "transit_gateway_id": "tgw-0123456789abcdef0", "vpc_id": "vpc-0bbb",
                "security_group_referencing_support": "enable"}"#,
        ),
        resource(
            "aws_ec2_transit_gateway_vpc_attachment",
            "c",
            r#"{"id": "tgw-attach-0c", "transit_gateway_id": "tgw-0123456789abcdef0", "vpc_id": "vpc-0ccc",
                "security_group_referencing_support": "disable"}"#,
        ),
        resource(
            "aws_vpc_peering_connection",
            "ops",
            r#"{"id": "pcx-0c", "vpc_id": "vpc-0aaa", "peer_vpc_id": "vpc-0ccc", "accept_status": "active"}"#,
        ),
    ];
    let state = format!(
        r#"{{"format_version": "1.0", "values": {{"root_module": {{"resources": [{}]}}}}}}"#,
        resources.join(",")
    );
    let dir = std::env::temp_dir().join(format!("sg-tf-tgw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("state.json");
    std::fs::write(&path, state).expect("write");
    let mut warnings = Vec::new();
    let text = terraform::import(&path, &mut warnings).expect("imports");
    assert!(warnings.is_empty(), "{warnings:?}");
    for line in [
        "[[vpc_peering]]\nvpcs = [\"vpc-0aaa\", \"vpc-0ccc\"]",
        "[[transit_gateway]]\nname = \"core\"\nid = \"tgw-0123456789abcdef0\"\n\
         security_group_referencing = true\nvpcs = [\"vpc-0aaa\", \"vpc-0bbb\", \
         { vpc = \"vpc-0ccc\", security_group_referencing = false }]",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert!(
        !text.contains("vpcs = [\"vpc-0aaa\", \"vpc-0bbb\"]\n"),
        "no peering made up across the transit gateway:\n{text}"
    );
    let (vpc, _) = admit("imported.toml".as_ref(), &text, true).expect("check accepts it");
    assert_eq!(
        vpc.stale_reference("db", "app", sg_agent::config::Direction::Ingress),
        None
    );
    assert!(
        vpc.stale_reference("app", "db", sg_agent::config::Direction::Egress)
            .is_some()
    );
    assert_eq!(
        vpc.stale_reference("ops", "app", sg_agent::config::Direction::Ingress),
        None,
        "the peering carries it (the attachment's option is off)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

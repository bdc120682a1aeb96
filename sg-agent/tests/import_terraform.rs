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

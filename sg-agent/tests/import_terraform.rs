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

//! Several VPCs: a rule may reference a group of a peered VPC; without the
//! peering the reference is stale and matches nothing, and when the
//! peering goes (a reload), new connections from the other VPC are
//! refused while tracked ones live on, as AWS keeps tracked connections
//! when their rule changes.

use sg_agent::policy::compile::compile;
use sg_tests::{
    frames::{ACK, SYN, Shape, frame},
    kernel::{dataplane_for, vpc, xdp_passes},
};

use crate::{ip, tcp};

const PEERED: &str = r#"
[[vpc]]
name = "shop"
cidr_blocks = ["10.1.0.0/16"]

[[vpc]]
name = "data"
cidr_blocks = ["10.2.0.0/16"]

[[vpc_peering]]
vpcs = ["shop", "data"]

[[security_group]]
name = "app"
vpc = "shop"

[[security_group]]
name = "db"
vpc = "data"
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 5432
  to_port = 5432
  security_groups = ["app"]

[[instance]]
name = "db-1"
vpc = "data"
addresses = ["10.2.0.10"]
security_groups = ["db"]

[[instance]]
name = "app-1"
vpc = "shop"
addresses = ["10.1.0.10"]
security_groups = ["app"]
"#;

fn unpeered() -> String {
    PEERED.replace("[[vpc_peering]]\nvpcs = [\"shop\", \"data\"]\n", "")
}

#[test]
fn a_reference_across_vpcs_holds_only_while_they_are_peered() {
    let peered = vpc(PEERED);
    let mut dp = dataplane_for(&peered, "db-1");
    let (app, db) = (ip("10.1.0.10"), ip("10.2.0.10"));
    assert!(
        xdp_passes(
            &dp,
            &frame(app, db, &tcp(40000, 5432, SYN), &Shape::default())
        ),
        "app-1 reaches db-1 through the peering"
    );

    let stale = vpc(&unpeered());
    assert_eq!(stale.warnings.len(), 1, "the stale rule is warned of");
    let compiled = compile(&stale);
    let db1 = compiled
        .instances
        .iter()
        .find(|i| i.name == "db-1")
        .expect("db-1");
    dp.publish(&db1.tables, db1.settings).expect("publish");
    assert!(
        xdp_passes(
            &dp,
            &frame(app, db, &tcp(40000, 5432, ACK), &Shape::default())
        ),
        "the tracked connection lives on"
    );
    assert!(
        !xdp_passes(
            &dp,
            &frame(app, db, &tcp(40001, 5432, SYN), &Shape::default())
        ),
        "a new one is refused: the reference is stale"
    );
    // And a file that starts unpeered never lets it in.
    let fresh = dataplane_for(&stale, "db-1");
    assert!(!xdp_passes(
        &fresh,
        &frame(app, db, &tcp(40002, 5432, SYN), &Shape::default())
    ));
}

#[test]
fn an_instances_groups_are_of_its_vpc_and_peered_vpcs_do_not_overlap() {
    let wrong = PEERED.replace(
        "name = \"app-1\"\nvpc = \"shop\"",
        "name = \"app-1\"\nvpc = \"data\"",
    );
    let err = sg_agent::config::from_str("t.toml".as_ref(), &wrong).expect_err("refused");
    assert!(
        err.to_string()
            .contains("security group \"app\" is in VPC shop, instance \"app-1\" in VPC data"),
        "{err}"
    );
    let overlapping = PEERED.replace("10.2.0.0/16", "10.1.128.0/17");
    let err = sg_agent::config::from_str("t.toml".as_ref(), &overlapping).expect_err("refused");
    assert!(err.to_string().contains("cannot be peered"), "{err}");
}

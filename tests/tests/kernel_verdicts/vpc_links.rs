//! The other ways AWS carries a group reference between VPCs (fidelity
//! items 2, 3 and 9): a transit gateway with security-group referencing
//! (inbound rules only; off by default on the gateway, on by default on an
//! attachment), a security group associated with another VPC, and the
//! Region and account of each VPC (a cross-Region peering carries no group
//! references). Each judged by the kernel programs on crafted frames.

use sg_tests::{
    frames::{SYN, Shape, frame},
    kernel::{dataplane_for, tc_passes, vpc, xdp_passes},
};

use crate::{ip, tcp};

/// app (VPC shop) talks to db (VPC data): db's inbound rule and app's
/// outbound rule both reference the other's group.
const LINKED: &str = r#"
[[vpc]]
name = "shop"
cidr_blocks = ["10.1.0.0/16"]

[[vpc]]
name = "data"
cidr_blocks = ["10.2.0.0/16"]

[[transit_gateway]]
name = "core"
security_group_referencing = true
vpcs = ["shop", "data"]

[[security_group]]
name = "app"
vpc = "shop"
  [[security_group.egress]]
  protocol = "tcp"
  from_port = 5432
  to_port = 5432
  security_groups = ["db"]

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

/// [`LINKED`] with a peering where the transit gateway was.
fn peered() -> String {
    let text = LINKED.replace(
        "[[transit_gateway]]\nname = \"core\"\nsecurity_group_referencing = true\nvpcs = [\"shop\", \"data\"]\n",
        "[[vpc_peering]]\nvpcs = [\"shop\", \"data\"]\n",
    );
    assert_ne!(text, LINKED);
    text
}

fn syn() -> Vec<u8> {
    frame(
        ip("10.1.0.10"),
        ip("10.2.0.10"),
        &tcp(40000, 5432, SYN),
        &Shape::default(),
    )
}

/// Whether db-1 lets app-1's SYN in, and app-1 lets it out.
fn verdicts(text: &str) -> (bool, bool) {
    let v = vpc(text);
    let inbound = xdp_passes(&dataplane_for(&v, "db-1"), &syn());
    let outbound = tc_passes(&dataplane_for(&v, "app-1"), &syn());
    (inbound, outbound)
}

#[test]
fn a_transit_gateway_carries_group_references_in_inbound_rules_only() {
    let (inbound, outbound) = verdicts(LINKED);
    assert!(
        inbound,
        "db's inbound reference to app holds across the gateway"
    );
    assert!(
        !outbound,
        "app's outbound reference to db does not: AWS carries references in inbound rules only"
    );
    let warned = vpc(LINKED).warnings;
    assert_eq!(
        warned.len(),
        1,
        "the outbound reference is warned of: {warned:?}"
    );
    assert!(
        warned[0].message.contains("inbound rules only"),
        "{}",
        warned[0].message
    );

    // The gateway's option is off unless enabled (AWS's default).
    let off = LINKED.replace("security_group_referencing = true\n", "");
    assert_eq!(
        verdicts(&off),
        (false, false),
        "no references without the option"
    );
    // An attachment with the option off: its VPC's references are stale.
    let attachment_off = LINKED.replace(
        "vpcs = [\"shop\", \"data\"]",
        "vpcs = [\"shop\", { vpc = \"data\", security_group_referencing = false }]",
    );
    assert_eq!(verdicts(&attachment_off), (false, false));
    // A peering carries them both ways.
    let peered = peered();
    assert_eq!(verdicts(&peered), (true, true));
}

#[test]
fn a_peering_across_regions_carries_no_group_references() {
    let peered = peered();
    let two_regions = peered.replace(
        "name = \"data\"\ncidr_blocks",
        "name = \"data\"\nregion = \"eu-west-1\"\ncidr_blocks",
    );
    assert_eq!(verdicts(&two_regions), (false, false), "stale both ways");
    let warned = vpc(&two_regions).warnings;
    assert!(
        warned.iter().all(|w| w.message.contains("across Regions")),
        "{warned:?}"
    );
    // A transit gateway attaches the VPCs of its own Region only.
    let tgw_two_regions = LINKED.replace(
        "name = \"data\"\ncidr_blocks",
        "name = \"data\"\nregion = \"eu-west-1\"\ncidr_blocks",
    );
    let err = sg_agent::config::from_str("t.toml".as_ref(), &tgw_two_regions).expect_err("refused");
    assert!(err.to_string().contains("several Regions"), "{err}");
}

/// db's group, associated with VPC shop, used by an instance there.
const ASSOCIATED: &str = r#"
[[vpc]]
name = "main"
cidr_blocks = ["10.0.0.0/16"]

[[vpc]]
name = "shop"
cidr_blocks = ["10.1.0.0/16"]

[[vpc]]
name = "data"
cidr_blocks = ["10.2.0.0/16"]

[[security_group]]
name = "db"
vpc = "data"
associated_vpcs = ["shop"]
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 5432
  to_port = 5432
  security_groups = ["app"]

[[security_group]]
name = "app"
vpc = "shop"

[[instance]]
name = "cache-1"
vpc = "shop"
addresses = ["10.1.0.20"]
security_groups = ["db"]

[[instance]]
name = "app-1"
vpc = "shop"
addresses = ["10.1.0.10"]
security_groups = ["app"]
"#;

#[test]
fn a_group_associated_with_another_vpc_serves_its_instances() {
    let v = vpc(ASSOCIATED);
    assert!(v.warnings.is_empty(), "{:?}", v.warnings);
    let to_cache = frame(
        ip("10.1.0.10"),
        ip("10.1.0.20"),
        &tcp(40000, 5432, SYN),
        &Shape::default(),
    );
    assert!(
        xdp_passes(&dataplane_for(&v, "cache-1"), &to_cache),
        "an instance of shop uses data's group, whose reference to shop's app holds"
    );

    // Disassociated: the instance may not use it (check refuses), and a
    // reference to it from shop is stale.
    let gone = ASSOCIATED.replace("associated_vpcs = [\"shop\"]\n", "");
    let err = sg_agent::config::from_str("t.toml".as_ref(), &gone).expect_err("refused");
    assert!(
        err.to_string().contains("associated_vpcs = [\"shop\"]"),
        "the hint names the association: {err}"
    );
    let referenced = gone.replace(
        "name = \"cache-1\"\nvpc = \"shop\"\naddresses = [\"10.1.0.20\"]\nsecurity_groups = [\"db\"]",
        "name = \"cache-1\"\nvpc = \"data\"\naddresses = [\"10.2.0.20\"]\nsecurity_groups = [\"db\"]",
    );
    let stale = vpc(&referenced);
    assert_eq!(stale.warnings.len(), 1, "{:?}", stale.warnings);
    let to_data = frame(
        ip("10.1.0.10"),
        ip("10.2.0.20"),
        &tcp(40001, 5432, SYN),
        &Shape::default(),
    );
    assert!(!xdp_passes(&dataplane_for(&stale, "cache-1"), &to_data));

    // What AWS refuses to associate.
    for (from, to, why) in [
        (
            "vpc = \"data\"\nassociated_vpcs = [\"shop\"]",
            "vpc = \"main\"\nassociated_vpcs = [\"shop\"]",
            "default VPC",
        ),
        (
            "name = \"shop\"\ncidr_blocks",
            "name = \"shop\"\nregion = \"eu-west-1\"\ncidr_blocks",
            "another Region",
        ),
        (
            "name = \"shop\"\ncidr_blocks",
            "name = \"shop\"\naccount = \"111122223333\"\ncidr_blocks",
            "another account",
        ),
    ] {
        let text = ASSOCIATED.replace(from, to);
        assert_ne!(text, ASSOCIATED);
        let err = sg_agent::config::from_str("t.toml".as_ref(), &text).expect_err(why);
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
}

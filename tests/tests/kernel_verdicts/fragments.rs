//! Fragments: a later fragment passes only after its allowed first
//! fragment, or when a rule allows its protocol on every port.

use sg_tests::{
    frames::{SYN, Shape, frame},
    kernel::{dataplane_for, vpc, xdp_passes},
};

use crate::{CONFIG, ip, tcp};

#[test]
fn first_fragment_lets_its_later_fragments_through() {
    let dp = dataplane_for(&vpc(CONFIG), "web");
    let (src, dst) = (ip("198.51.100.7"), ip("10.0.0.1"));
    let later = Shape {
        fragment: Some((100, false)),
        ..Shape::default()
    };
    assert!(
        !xdp_passes(&dp, &frame(src, dst, &tcp(1, 80, 0), &later)),
        "later fragment before its first"
    );
    let first = Shape {
        fragment: Some((0, true)),
        ..Shape::default()
    };
    assert!(
        xdp_passes(&dp, &frame(src, dst, &tcp(41000, 80, SYN), &first)),
        "first fragment to tcp/80"
    );
    assert!(
        xdp_passes(&dp, &frame(src, dst, &tcp(1, 80, 0), &later)),
        "later fragment after an allowed first"
    );
    // A first fragment to a port the rules refuse opens nothing.
    let (src6, dst6) = (ip("2001:db8:1::7"), ip("2001:db8::1"));
    let first6 = Shape {
        ipv6_ext: vec![44],
        fragment: Some((0, true)),
        ..Shape::default()
    };
    assert!(
        !xdp_passes(&dp, &frame(src6, dst6, &tcp(41001, 23, SYN), &first6)),
        "v6 first fragment to tcp/23"
    );
    let later6 = Shape {
        ipv6_ext: vec![44],
        fragment: Some((50, false)),
        ..Shape::default()
    };
    assert!(
        !xdp_passes(&dp, &frame(src6, dst6, &tcp(1, 1, 0), &later6)),
        "v6 later fragment of a refused datagram"
    );
    assert!(
        xdp_passes(&dp, &frame(src6, dst6, &tcp(41002, 80, SYN), &first6)),
        "v6 first fragment to tcp/80"
    );
    assert!(
        xdp_passes(&dp, &frame(src6, dst6, &tcp(1, 1, 0), &later6)),
        "v6 later fragment after an allowed first"
    );
}

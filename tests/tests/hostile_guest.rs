//! Root in a guest, on a real tap: frames written to a tap's descriptor
//! with the virtio-net header QEMU writes (`IFF_VNET_HDR`), so the kernel
//! builds the skb as it does for a VM's frame and the host side's programs
//! judge it where they do for a VM, with the real agent enforcing. What
//! `BPF_PROG_TEST_RUN` cannot show: a VLAN tag the kernel's receive path
//! takes out of the frame into the skb's metadata before TC runs, and a
//! frame longer than the headers the programs pull into view.

use std::time::Duration;

use sg_tests::{
    agent::AgentProcess,
    frames::{Shape, Transport, frame},
    guest::{GuestTap, Sniffer},
    lab::{Lab, RulesFile, eth0_mac, ip as run_ip},
    probe::eventually,
    seed::START,
};

const GUEST: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const OTHER: [u8; 6] = [0x52, 0x54, 0, 0x99, 0x99, 0x99];
/// The guest's link-local address (EUI-64 of its MAC address).
const GUEST_LL: &str = "fe80::5054:ff:fe12:3456";
/// The host's address on the bridge, which the guest asks for.
const HOST_ADDR: &str = "2001:db8::fe";

/// A tap in a lab's switch namespace (a port of its bridge, beside a
/// neighbour's veth), the guest's descriptor, and an agent enforcing the
/// guest on the host side of the tap with AWS's default outbound rule.
struct TapLab {
    agent: Option<AgentProcess>,
    tap: GuestTap,
    _rules: RulesFile,
    lab: Lab,
}

impl TapLab {
    fn new(tag: &str) -> Self {
        let mut lab = Lab::new(tag);
        lab.add_host("nbr", &["10.0.0.5", "2001:db8::5"]);
        let sw = lab.switch_netns().to_owned();
        let tap = GuestTap::open(&sw, "tapg");
        run_ip(&[
            "-n",
            &sw,
            "-6",
            "addr",
            "add",
            &format!("{HOST_ADDR}/64"),
            "dev",
            "br0",
            "nodad",
        ]);
        let rules = RulesFile::new(
            &lab.prefix,
            &format!(
                r#"
[[security_group]]
name = "vm"
  [[security_group.egress]]
  protocol = "-1"
  cidr_blocks = ["0.0.0.0/0"]
  ipv6_cidr_blocks = ["::/0"]

[[instance]]
name = "vm"
addresses = ["10.0.0.1", "2001:db8::1"]
security_groups = ["vm"]
netns = "{sw}"
host_interface = "tapg"
mac = "52:54:00:12:34:56"
"#
            ),
        );
        let agent = AgentProcess::start_with(&rules.path, &[]);
        agent.expect_log("ready: enforcing 1 instance(s)", 0, START);
        Self {
            agent: Some(agent),
            tap,
            _rules: rules,
            lab,
        }
    }

    fn agent(&self) -> &AgentProcess {
        self.agent.as_ref().expect("running")
    }

    /// What the host side counted of what the guest sent, under `reason`.
    fn counted(&self, reason: &str) -> u64 {
        let status = self.agent().status_json();
        status["instances"][0]["packets"]["egress"][reason]
            .as_u64()
            .unwrap_or(0)
    }

    fn neighbour_mac(&self) -> [u8; 6] {
        let text = eth0_mac(&self.lab.netns_of("nbr"));
        let mut mac = [0u8; 6];
        for (o, part) in mac.iter_mut().zip(text.split(':')) {
            *o = u8::from_str_radix(part, 16).expect("hex");
        }
        mac
    }

    /// The host's neighbour table on the bridge (`ip -6 neigh`).
    fn host_neighbours(&self) -> String {
        let out = std::process::Command::new("ip")
            .args([
                "-n",
                self.lab.switch_netns(),
                "-6",
                "neigh",
                "show",
                "dev",
                "br0",
            ])
            .output()
            .expect("ip runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TapLab {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.terminate();
        }
    }
}

/// A UDP datagram from the guest's address to the neighbour's port 9999,
/// carrying `marker`.
fn datagram(dst_mac: [u8; 6], marker: &[u8], vlans: usize, outer: u16) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&40000u16.to_be_bytes());
    bytes.extend_from_slice(&9999u16.to_be_bytes());
    bytes.extend_from_slice(&u16::try_from(8 + marker.len()).unwrap().to_be_bytes());
    bytes.extend_from_slice(&[0, 0]);
    bytes.extend_from_slice(marker);
    let mut f = frame(
        "10.0.0.1".parse().unwrap(),
        "10.0.0.5".parse().unwrap(),
        &Transport::Raw { proto: 17, bytes },
        &Shape {
            vlans,
            macs: Some((dst_mac, GUEST)),
            ..Shape::default()
        },
    );
    if vlans > 0 {
        f[12..14].copy_from_slice(&outer.to_be_bytes());
    }
    f
}

/// Item 3: the kernel takes one 802.1Q or 802.1ad tag out of the frame into
/// the skb's metadata before TC ingress runs, so the frame the programs
/// see is untagged; on a bridge that does not filter VLANs the tag goes
/// back on as the frame leaves by another port (VLAN hopping). The guard
/// reads the metadata: a tag there is a tag.
#[test]
fn a_vlan_tag_the_kernel_took_out_of_the_frame_is_still_a_tag() {
    let lab = TapLab::new("hgv");
    let sniffer = Sniffer::open(&lab.lab.netns_of("nbr"), "eth0");
    let nbr = lab.neighbour_mac();
    lab.tap.send(&datagram(nbr, b"sg-untagged-ctl!", 0, 0));
    assert_eq!(
        sniffer.count(b"sg-untagged-ctl!", Duration::from_secs(1)),
        1,
        "the untagged datagram reaches the neighbour (the path works)"
    );
    let before = lab.counted("drop_unsupported_l2");
    lab.tap.send(&datagram(nbr, b"sg-dot1q-hop-01!", 1, 0x8100));
    lab.tap.send(&datagram(nbr, b"sg-dot1ad-hop-2!", 1, 0x88a8));
    // 802.1ad outside (into the metadata), 802.1Q inside (in the frame).
    lab.tap.send(&datagram(nbr, b"sg-qinq-hop-003!", 2, 0x88a8));
    let arrived = sniffer.count(b"-hop-", Duration::from_secs(1));
    assert_eq!(arrived, 0, "no tagged frame reaches the neighbour");
    assert!(
        eventually(Duration::from_secs(3), || lab
            .counted("drop_unsupported_l2")
            >= before + 3),
        "each counted as drop_unsupported_l2: {}",
        lab.counted("drop_unsupported_l2")
    );
}

/// The one's-complement sum of `bytes` (RFC 1071), folded.
fn sum16(bytes: &[u8], mut sum: u32) -> u32 {
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    sum
}

/// A neighbour solicitation from the guest's link-local address for the
/// host's address, to its solicited-node group, with `options` (its `ICMPv6`
/// checksum right, so the host's stack takes it).
fn solicitation(options: &[u8]) -> Vec<u8> {
    let src: std::net::Ipv6Addr = GUEST_LL.parse().unwrap();
    let target: std::net::Ipv6Addr = HOST_ADDR.parse().unwrap();
    let t = target.octets();
    let dst = std::net::Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut body = vec![135, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&t);
    body.extend_from_slice(options);
    let len = u32::try_from(body.len()).unwrap();
    let mut sum = sum16(&src.octets(), 0);
    sum = sum16(&dst.octets(), sum);
    sum = sum16(&len.to_be_bytes(), sum);
    sum = sum16(&[0, 0, 0, 58], sum);
    sum = sum16(&body, sum);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let check = !u16::try_from(sum).unwrap();
    body[2..4].copy_from_slice(&check.to_be_bytes());
    let d = dst.octets();
    let mut f = vec![0x33, 0x33, d[12], d[13], d[14], d[15]];
    f.extend_from_slice(&GUEST);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&d);
    f.extend_from_slice(&body);
    f
}

/// A source link-layer address option.
fn source_lladdr(mac: [u8; 6]) -> Vec<u8> {
    let mut o = vec![1, 1];
    o.extend_from_slice(&mac);
    o
}

/// Item 6: a neighbour solicitation over a page long, its forged source
/// link-layer address after two long padding options, written to the tap
/// with a virtio-net header: the skb holds only its first bytes in view.
/// The guard walks the message to its end, and drops what it cannot walk;
/// the host's neighbour table never points the guest's address at another
/// instance's MAC address.
#[test]
fn a_neighbour_solicitation_longer_than_the_view_is_walked_to_its_end() {
    let lab = TapLab::new("hgn");
    let mut options = Vec::new();
    for _ in 0..2 {
        let mut pad = vec![200u8, 255];
        pad.resize(255 * 8, 0);
        options.extend_from_slice(&pad);
    }
    options.extend_from_slice(&source_lladdr(OTHER));
    let forged = solicitation(&options);
    assert!(
        forged.len() > 4096,
        "over a page: mostly outside the skb's linear part"
    );
    let before = lab.counted("pass_neighbour_discovery");
    lab.tap.send(&forged);
    std::thread::sleep(Duration::from_millis(300));
    let other = "52:54:00:99:99:99";
    assert!(
        !lab.host_neighbours().contains(other),
        "the host's neighbour table points no address at another instance's MAC:\n{}",
        lab.host_neighbours()
    );
    assert_eq!(
        lab.counted("pass_neighbour_discovery"),
        before,
        "the forged solicitation did not pass"
    );
    assert!(lab.counted("drop_malformed") + lab.counted("drop_nd_spoofed") >= 1);
    // The same question, short and honest, is answered: the path works.
    lab.tap.send(&solicitation(&source_lladdr(GUEST)));
    assert!(
        eventually(Duration::from_secs(3), || lab
            .host_neighbours()
            .contains("52:54:00:12:34:56")),
        "the host learns the guest's own MAC address:\n{}",
        lab.host_neighbours()
    );
}

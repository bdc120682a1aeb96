//! The AWS services security groups never filter, end to end: an instance
//! whose only outbound rule is tcp/443 still gets its DHCP lease and its
//! DNS answers from the VPC's resolver (base + 2), from real dnsmasq and
//! busybox clients in network namespaces, under a real `sg-agent run`;
//! another DNS server stays unreachable, and so does the VPC's resolver
//! once the file no longer says where the VPC is.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use sg_tests::{
    agent::AgentProcess,
    lab::{Lab, eth0_mac, ip},
};

const CLIENT: &str = "10.60.1.10";
/// The VPC's resolver: 10.60.0.0/16's base plus two.
const RESOLVER: &str = "10.60.0.2";
/// Any other DNS server in the VPC.
const OTHER_DNS: &str = "10.60.0.53";

/// An address a lab host takes to pose as Amazon DNS.
const LINK_LOCAL_DNS: &str = "169.254.169.253";

/// The rules: with `[vpc]` (the VPC's range, and `service_mac`, where the
/// services answer from) or without.
fn rules(netns: &str, service_mac: Option<&str>) -> String {
    let vpc = match service_mac {
        Some(mac) => {
            format!("[vpc]\ncidr_blocks = [\"10.60.0.0/16\"]\nservice_mac = \"{mac}\"\n\n")
        }
        None => String::new(),
    };
    format!(
        r#"{vpc}[[security_group]]
name = "https-out-only"
egress = [{{ protocol = "tcp", from_port = 443, to_port = 443, cidr_blocks = ["0.0.0.0/0"] }}]

[[instance]]
name = "client"
netns = "{netns}"
interface = "eth0"
addresses = ["{CLIENT}"]
security_groups = ["https-out-only"]
"#
    )
}

/// dnsmasq serving DNS (and DHCP on the first address) in `ns`, killed on
/// drop.
struct Dnsmasq(Child);

impl Dnsmasq {
    fn start(ns: &str, listen: &str, dhcp: bool, dir: &std::path::Path) -> Self {
        let mut args = vec![
            "netns".to_owned(),
            "exec".into(),
            ns.into(),
            "dnsmasq".into(),
            "--keep-in-foreground".into(),
            "--conf-file=/dev/null".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--bind-interfaces".into(),
            format!("--listen-address={listen}"),
            "--address=/example.internal/10.60.0.99".into(),
            format!("--pid-file={}", dir.join(format!("{listen}.pid")).display()),
            "--user=root".into(),
        ];
        if dhcp {
            args.extend([
                "--interface=eth0".to_owned(),
                format!("--dhcp-range={CLIENT},{CLIENT},255.255.0.0,1h"),
                "--dhcp-authoritative".into(),
                "--no-ping".into(),
                format!("--dhcp-leasefile={}", dir.join("leases").display()),
            ]);
        }
        let child = Command::new("ip")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq runs (cargo xtask bootstrap installs dnsmasq-base)");
        std::thread::sleep(Duration::from_millis(300));
        Self(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs busybox `args` in `ns`, bounded by `timeout` (coreutils' timeout):
/// (succeeded, stdout and stderr).
fn busybox(ns: &str, timeout: u32, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "timeout",
            &timeout.to_string(),
            "busybox",
        ])
        .args(args)
        .output()
        .expect("busybox runs (cargo xtask bootstrap installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn resolves(ns: &str, server: &str) -> (bool, String) {
    let (_, text) = busybox(ns, 4, &["nslookup", "example.internal", server]);
    (text.contains("10.60.0.99"), text)
}

#[test]
fn dhcp_and_the_vpc_resolver_work_with_egress_limited_to_https() {
    let mut lab = Lab::new("svc");
    lab.add_host("client", &[CLIENT]);
    lab.add_host("vpc", &[OTHER_DNS]);
    lab.add_host("impostor", &[LINK_LOCAL_DNS]);
    let vpc_ns = lab.netns_of("vpc");
    // The resolver's and DHCP server's address, with the VPC's prefix so
    // dnsmasq knows the subnet it serves.
    ip(&["-n", &vpc_ns, "addr", "add", "10.60.0.2/16", "dev", "eth0"]);
    let dir = PathBuf::from(format!("/tmp/sg-tests-{}", lab.prefix));
    std::fs::create_dir_all(&dir).expect("test dir");
    let _resolver = Dnsmasq::start(&vpc_ns, RESOLVER, true, &dir);
    let _other = Dnsmasq::start(&vpc_ns, OTHER_DNS, false, &dir);
    // Another lab host posing as Amazon DNS at its link-local address.
    let impostor_ns = lab.netns_of("impostor");
    let _impostor = Dnsmasq::start(&impostor_ns, LINK_LOCAL_DNS, false, &dir);
    let client = lab.netns_of("client");
    ip(&["-n", &client, "route", "add", LINK_LOCAL_DNS, "dev", "eth0"]);
    assert!(
        resolves(&client, RESOLVER).0,
        "the lab's resolver answers before any agent"
    );
    assert!(
        resolves(&client, LINK_LOCAL_DNS).0,
        "and so does the impostor"
    );

    // The services answer from the vpc host's MAC address.
    let config = dir.join("rules.toml");
    std::fs::write(&config, rules(&client, Some(&eth0_mac(&vpc_ns)))).expect("write rules");
    let agent = AgentProcess::start(&config);
    agent.expect_log("ready: enforcing", 0, Duration::from_secs(20));

    let (leased, text) = busybox(
        &client,
        8,
        &[
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ],
    );
    assert!(
        leased && text.contains(CLIENT),
        "a DHCP lease through egress limited to tcp/443:\n{text}"
    );
    let (ok, text) = resolves(&client, RESOLVER);
    assert!(ok, "the VPC's resolver (base + 2) answers:\n{text}");
    let (ok, text) = resolves(&client, OTHER_DNS);
    assert!(!ok, "another DNS server is not an AWS service:\n{text}");
    let (ok, text) = resolves(&client, LINK_LOCAL_DNS);
    assert!(
        !ok,
        "a lab host posing as Amazon DNS is judged by the rules:\n{text}"
    );

    // Without [vpc], neither base + 2 nor where the services are is known:
    // the resolver is just a host.
    let mark = agent.log_lines();
    std::fs::write(&config, rules(&client, None)).expect("rewrite rules");
    agent.expect_log("applied", mark, Duration::from_secs(5));
    let (ok, text) = resolves(&client, RESOLVER);
    assert!(!ok, "without [vpc] the resolver is filtered:\n{text}");
    assert_eq!(agent.terminate().code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

//! libvirt, as people run local VMs: a real libvirtd (started by the test
//! in its lab namespace) runs transient `qemu` domains on the lab bridge;
//! the rules file names them by `libvirt_domain`; the agent finds each
//! domain's tap in libvirt's live state and, through the QEMU hook, attaches
//! it while the domain starts, before its virtual CPU runs.

use std::path::PathBuf;

use sg_tests::{
    agent::{AgentProcess, StateDir, binary},
    lab::Lab,
    libvirt::{Hook, Libvirtd, domain_xml, domain_xml_with, virsh},
    probe::{Outcome::*, eventually, tcp},
    seed::{ADMIN, ALB, APP, OUTSIDER, RELOAD, SEED, START, at, ip},
};

fn instance(agent: &AgentProcess, name: &str) -> serde_json::Value {
    let status = agent.status_json();
    status["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} in status: {status}"))
}

fn egress_total(agent: &AgentProcess, name: &str) -> u64 {
    instance(agent, name)["packets"]["egress"]
        .as_object()
        .map_or(0, |r| {
            r.values().filter_map(serde_json::Value::as_u64).sum()
        })
}

/// Frames a tap received from its guest.
fn frames_sent(netns: &str, tap: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", netns, "cat"])
        .arg(format!("/sys/class/net/{tap}/statistics/rx_packets"))
        .output()
        .expect("read the tap's counters");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{tap}: {out:?}"))
}

/// Every frame the guest sent into `tap` was judged (read judged, sent,
/// judged again: a guest still sending cannot make it pass falsely).
fn assert_all_judged(agent: &AgentProcess, name: &str, netns: &str, tap: &str) {
    let before = egress_total(agent, name);
    let sent = frames_sent(netns, tap);
    let after = egress_total(agent, name);
    assert!(sent > 0, "{name} sent frames as it booted");
    assert!(
        before <= sent && sent <= after,
        "{name}: {sent} frames sent, {before}..{after} judged"
    );
}

/// Waits until the guest's init wrote its ready line to the console file.
fn wait_booted(console: &PathBuf) {
    assert!(
        eventually(sg_tests::vm::BOOT, || std::fs::read_to_string(console)
            .is_ok_and(|c| c.contains("SGVM READY"))),
        "the domain did not boot: {}",
        std::fs::read_to_string(console).unwrap_or_default()
    );
}

/// A test's rules file `rules` (in a directory of its own, `sg-tests-PREFIX`,
/// removed by the test), a state directory, and the QEMU hook against the
/// control socket of the agent that will run there: (directory, rules
/// file, state, hook).
fn rules_and_hook(prefix: &str, rules: &str) -> (PathBuf, PathBuf, StateDir, Hook) {
    let dir = std::env::temp_dir().join(format!("sg-tests-{prefix}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("vpc.toml");
    std::fs::write(&config, rules).expect("rules");
    let state = StateDir::new();
    let hook = Hook::install(
        &format!("sg-agent-test-{prefix}"),
        &binary(),
        &state.control_socket(),
    );
    (dir, config, state, hook)
}

/// The seed with the load balancer and the app server as libvirt domains,
/// the bastion and the database as group members only, and a third domain
/// whose `libvirt_mac` names a NIC its XML does not have.
fn rules(sw: &str, alb: &str, app: &str, bad: &str) -> String {
    SEED.replace(
        "netns = \"sg-alb\"\ninterface = \"eth0\"",
        &format!("netns = \"{sw}\"\nlibvirt_domain = \"{alb}\""),
    )
    .replace(
        "netns = \"sg-app-1\"\ninterface = \"eth0\"",
        &format!("netns = \"{sw}\"\nlibvirt_domain = \"{app}\""),
    )
    .replace("netns = \"sg-bastion\"\ninterface = \"eth0\"\n", "")
    .replace("netns = \"sg-rds\"\ninterface = \"eth0\"\n", "")
        + &format!(
            "\n[[instance]]\nname = \"bad\"\naddresses = [\"10.0.9.9\"]\nsecurity_groups = \
             [\"instagram-server-security-group\"]\nnetns = \"{sw}\"\nlibvirt_domain = \
             \"{bad}\"\nlibvirt_mac = \"52:54:00:00:09:01\"\n"
        )
}

/// libvirt round two, item 5: a NIC hot-plugged into running domain `alb`
/// (whose instance names no `libvirt_mac`) is shown bare by `status
/// --domain`, not passed over in silence, and the instance stays enforced
/// on its NIC (it was shown waiting), saying why.
fn hot_plugged_nic_is_shown_bare(agent: &AgentProcess, state: &StateDir, alb: &str, alb_tap: &str) {
    virsh(&[
        "attach-interface",
        alb,
        "bridge",
        "br0",
        "--mac",
        "52:54:00:00:00:19",
        "--model",
        "virtio",
        "--live",
    ])
    .expect("a NIC hot-plugged");
    let listed = std::process::Command::new(binary())
        .args(["status", "--json", "--domain", alb, "--control-socket"])
        .arg(state.control_socket())
        .output()
        .expect("sg-agent status runs");
    assert_eq!(
        listed.status.code(),
        Some(1),
        "a NIC is not enforced: {listed:?}"
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let nics = listed["domain"]["nics"]
        .as_array()
        .expect("the domain's NICs");
    assert_eq!(nics.len(), 2, "{listed}");
    let by_mac = |mac: &str| {
        nics.iter()
            .find(|n| n["mac"] == mac)
            .unwrap_or_else(|| panic!("NIC {mac} in {listed}"))
    };
    assert_eq!(by_mac("52:54:00:00:00:10")["instance"], "alb", "{listed}");
    assert_eq!(by_mac("52:54:00:00:00:10")["interface"], alb_tap);
    assert!(
        by_mac("52:54:00:00:00:19")["instance"].is_null(),
        "{listed}"
    );
    assert_eq!(
        listed["instances"].as_array().map(Vec::len),
        Some(1),
        "{listed}"
    );
    assert!(
        eventually(RELOAD, || instance(agent, "alb")["unapplied"]
            .as_str()
            .is_some_and(|w| w.contains("name one with libvirt_mac"))),
        "{}",
        instance(agent, "alb")
    );
    assert_eq!(instance(agent, "alb")["state"], "enforced");
    assert_eq!(instance(agent, "alb")["interface"], alb_tap);
}

#[test]
fn libvirt_domains_are_enforced_before_their_first_frame() {
    sg_tests::kernel::require_root();
    let mut lab = Lab::new("slv");
    lab.add_host("internet", &[ADMIN, OUTSIDER]);
    let internet = lab.netns_of("internet");
    let sw = lab.switch_netns().to_owned();
    let prefix = lab.prefix.clone();
    let (alb, app, bad) = (
        format!("{prefix}-alb"),
        format!("{prefix}-app"),
        format!("{prefix}-bad"),
    );
    let (dir, config, state, hook) = rules_and_hook(&prefix, &rules(&sw, &alb, &app, &bad));
    let agent = AgentProcess::start_in(&state, &config, &[], "info");
    agent.expect_log("ready: enforcing 0 instance(s)", 0, START);
    assert_eq!(instance(&agent, "alb")["state"], "waiting");
    let mut libvirtd = Libvirtd::start(&sw);

    let boot = |libvirtd: &mut Libvirtd, name: &str, mac: &str, addr: &str, ports: &str| {
        let console = dir.join(format!("{name}.console"));
        let _ = std::fs::remove_file(&console);
        let cmdline = format!(
            "sg.addr={addr}/32 sg.routes=10.0.0.0/8,203.0.113.0/24,198.51.100.0/24 sg.tcp={ports}"
        );
        let created = libvirtd.create(name, &domain_xml(name, mac, "br0", &cmdline, &console));
        (created, console)
    };
    let (created, alb_console) = boot(&mut libvirtd, &alb, "52:54:00:00:00:10", ALB, "80,8080");
    created.expect("the alb domain starts");
    let (created, app_console) = boot(&mut libvirtd, &app, "52:54:00:00:01:10", APP, "80,22");
    created.expect("the app domain starts");
    let calls = hook.calls();
    for d in [&alb, &app] {
        assert!(
            calls
                .iter()
                .any(|c| c.starts_with(&format!("{d} start"))
                    || c.starts_with(&format!("{d} started"))),
            "the hook ran as {d} started: {calls:?}"
        );
    }
    // Enforced when `virsh create` returned: the hook's answer came first.
    for (name, mac) in [("alb", "52:54:00:00:00:10"), ("app-1", "52:54:00:00:01:10")] {
        let i = instance(&agent, name);
        assert_eq!(i["state"], "enforced", "{i}");
        assert_eq!(i["side"], "host");
        assert_eq!(i["mac"], mac, "the MAC libvirt gives: {i}");
        assert_eq!(i["mac_source"], "libvirt", "from the domain's XML: {i}");
    }
    let alb_tap = libvirtd.tap(&alb);
    assert_eq!(instance(&agent, "alb")["interface"], alb_tap.as_str());
    wait_booted(&alb_console);
    wait_booted(&app_console);

    assert_eq!(tcp(&internet, ip(OUTSIDER), at(ALB, 80)), Connected);
    assert_eq!(tcp(&internet, ip(OUTSIDER), at(ALB, 8080)), TimedOut);
    assert_eq!(tcp(&internet, ip(OUTSIDER), at(APP, 80)), TimedOut);
    // Every frame the guests sent was judged: attached before the CPUs ran.
    for (name, domain) in [("alb", &alb), ("app-1", &app)] {
        assert_all_judged(&agent, name, &sw, &libvirtd.tap(domain));
    }

    // The app domain restarted: another tap, followed.
    let app_tap = libvirtd.tap(&app);
    libvirtd.destroy(&app);
    assert!(
        eventually(RELOAD, || instance(&agent, "app-1")["state"] == "waiting"),
        "{}",
        instance(&agent, "app-1")
    );
    let base = egress_total(&agent, "app-1");
    let (created, app_console) = boot(&mut libvirtd, &app, "52:54:00:00:01:10", APP, "80,22");
    created.expect("the app domain starts again");
    let new_tap = libvirtd.tap(&app);
    assert_ne!(new_tap, app_tap, "libvirt gave it another tap");
    assert_eq!(instance(&agent, "app-1")["interface"], new_tap.as_str());
    assert_eq!(instance(&agent, "app-1")["state"], "enforced");
    wait_booted(&app_console);
    assert_eq!(tcp(&internet, ip(OUTSIDER), at(APP, 80)), TimedOut);
    let sent = frames_sent(&sw, &new_tap);
    let judged = egress_total(&agent, "app-1") - base;
    assert!(
        sent > 0 && sent <= judged,
        "{sent} frames sent, {judged} judged"
    );

    // A domain whose NIC the rules file's libvirt_mac does not name: the
    // hook refuses its start.
    let (created, _) = boot(&mut libvirtd, &bad, "52:54:00:00:09:02", "10.0.9.9", "80");
    let err = created.expect_err("a domain whose instance cannot be enforced does not start");
    assert!(err.contains("52:54:00:00:09:01"), "libvirt says why: {err}");
    assert!(virsh(&["domstate", &bad]).is_err(), "{bad} is not running");
    assert_eq!(instance(&agent, "bad")["state"], "waiting");
    let alb_tap = libvirtd.tap(&alb);
    hot_plugged_nic_is_shown_bare(&agent, &state, &alb, &alb_tap);
    drop(libvirtd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two groups and no instance: the domain joins a group by its own
/// metadata, and its address is the lease libvirt's network gave it.
const BY_METADATA: &str = r#"
[vpc]
cidr_blocks = ["10.9.0.0/16"]

[[security_group]]
name = "web"
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_blocks = ["10.9.0.0/24"]

[[security_group]]
name = "alt"
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 8080
  to_port = 8080
  cidr_blocks = ["10.9.0.0/24"]
"#;

/// libvirt round two: groups in the domain, addresses from libvirt. A
/// libvirt network with DHCP (its dnsmasq, in the lab's namespace) and a
/// domain whose `<metadata>` names group `web`; the rules file names no
/// instance. The hook makes it an instance and enforces it before its CPU
/// runs; its guest takes a lease, which becomes the instance's address;
/// `virsh metadata --live` moves it to group `alt`, in force at once.
#[test]
fn a_domain_joins_groups_by_its_metadata_with_the_address_libvirts_dhcp_gave() {
    let mut m = MetadataLab::new("slm", BY_METADATA);
    let web = format!("{}-web", m.prefix);
    let console = m.domain(&web, "52:54:00:00:09:10", "", "80,8080");
    // Enforced when `virsh create` returned: its metadata made it an
    // instance as it started, and the hook's answer came first.
    let i = instance(&m.agent, &web);
    assert_eq!(i["state"], "enforced", "{i}");
    assert_eq!(i["interface"], m.libvirtd.tap(&web).as_str());
    assert_eq!(i["addresses_from"], "libvirt", "{i}");
    let addr = m.leased(&web, &console);
    assert!(addr.starts_with("10.9.0.1"), "from the DHCP range: {addr}");
    let (sw, client) = (m.sw.clone(), ip("10.9.0.7"));
    assert_eq!(tcp(&sw, client, at(&addr, 80)), Connected, "web allows 80");
    let dropped = live_record(&m.state, &web, || {
        assert_eq!(tcp(&sw, client, at(&addr, 8080)), TimedOut);
    });
    assert_eq!(dropped["instance"], web.as_str(), "{dropped}");
    assert_eq!(dropped["dstport"], 8080, "{dropped}");
    // `virsh metadata` on the running domain: its live XML changes, and
    // the agent puts the new group in force.
    virsh(&[
        "metadata",
        &web,
        "--uri",
        sg_agent::libvirt::METADATA_NS,
        "--key",
        "sg",
        "--set",
        "<instance><security-group>alt</security-group></instance>",
        "--live",
    ])
    .expect("virsh metadata");
    assert!(
        eventually(RELOAD, || tcp(&sw, client, at(&addr, 8080)) == Connected),
        "in group alt now: {}",
        instance(&m.agent, &web)
    );
    assert_eq!(
        tcp(&sw, client, at(&addr, 80)),
        TimedOut,
        "no longer in web"
    );
    hot_plugged_nic_is_an_instance(&m.agent, &m.state, &web, &m.net);
}

/// A lab for the domains that join groups by their metadata: an agent on
/// `rules` (no instance: `--allow-empty`), the hook, a libvirtd in the
/// lab's namespace with a DHCP network (10.9.0.0/24, leases from .100, the
/// host end .7 is no AWS service address). Dropped in that order.
struct MetadataLab {
    libvirtd: Libvirtd,
    agent: AgentProcess,
    _hook: Hook,
    state: StateDir,
    dir: PathBuf,
    net: String,
    sw: String,
    prefix: String,
    _lab: Lab,
}

impl MetadataLab {
    fn new(tag: &str, rules: &str) -> Self {
        sg_tests::kernel::require_root();
        let lab = Lab::new(tag);
        let sw = lab.switch_netns().to_owned();
        let prefix = lab.prefix.clone();
        let (net, bridge) = (format!("{prefix}-net"), format!("{prefix}-vb"));
        let (dir, config, state, hook) = rules_and_hook(&prefix, rules);
        let agent = AgentProcess::start_in(
            &state,
            &config,
            &["--allow-empty", "--libvirt-netns", &sw],
            "info",
        );
        agent.expect_log("ready: enforcing 0 instance(s)", 0, START);
        let mut libvirtd = Libvirtd::start(&sw);
        libvirtd.create_network(
            &net,
            &format!(
                "<network><name>{net}</name><bridge name='{bridge}' stp='off'/>\
                 <ip address='10.9.0.7' netmask='255.255.255.0'><dhcp>\
                 <range start='10.9.0.100' end='10.9.0.199'/></dhcp></ip></network>"
            ),
        );
        Self {
            libvirtd,
            agent,
            _hook: hook,
            state,
            dir,
            net,
            sw,
            prefix,
            _lab: lab,
        }
    }

    /// Starts domain `name` on the network with `mac` (and `nic_extra` in
    /// its `<interface>`), in group `web` by its metadata, its guest taking
    /// a lease and listening on `ports`: its console file.
    fn domain(&mut self, name: &str, mac: &str, nic_extra: &str, ports: &str) -> PathBuf {
        let console = self.dir.join(format!("{name}.console"));
        let xml = domain_xml_with(
            name,
            &format!(
                "<interface type='network'><source network='{}'/>\
                 <mac address='{mac}'/><model type='virtio'/><rom enabled='no'/>{nic_extra}\
                 </interface>",
                self.net
            ),
            &format!(
                "<sg:instance xmlns:sg='{}'><sg:security-group>web</sg:security-group>\
                 </sg:instance>",
                sg_agent::libvirt::METADATA_NS
            ),
            &format!("sg.dhcp sg.tcp={ports}"),
            &console,
        );
        self.libvirtd.create(name, &xml).expect("the domain starts");
        console
    }

    /// Once domain `name` booted: its address, the lease its guest took,
    /// as the agent enforces it.
    fn leased(&self, name: &str, console: &PathBuf) -> String {
        wait_booted(console);
        let leased = || {
            instance(&self.agent, name)["addresses"][0]
                .as_str()
                .map(str::to_owned)
        };
        assert!(
            eventually(RELOAD, || leased().is_some()),
            "the lease became its address: {}",
            instance(&self.agent, name)
        );
        leased().expect("leased")
    }
}

impl Drop for MetadataLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A NIC hot-plugged into domain `web` (whose metadata puts it in group
/// `alt`) on network `net`: an instance of its own, in the domain's groups;
/// the first NIC's keeps its name and stays enforced, and `status --domain`
/// shows no NIC bare.
fn hot_plugged_nic_is_an_instance(agent: &AgentProcess, state: &StateDir, web: &str, net: &str) {
    // A NIC hot-plugged: an instance of its own, in the domain's groups;
    // the first NIC's keeps its name and stays enforced.
    virsh(&[
        "attach-interface",
        web,
        "network",
        net,
        "--mac",
        "52:54:00:00:09:11",
        "--model",
        "virtio",
        "--live",
    ])
    .expect("a NIC hot-plugged");
    let second = format!("{web}:52:54:00:00:09:11");
    let enforced = |name: &str| {
        agent.status_json()["instances"]
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|i| i["name"] == name && i["state"] == "enforced")
            })
    };
    assert!(
        eventually(RELOAD, || enforced(&second)),
        "the hot-plugged NIC is an instance: {}",
        agent.status_json()
    );
    assert_eq!(instance(agent, &second)["rules"][0]["group"], "alt");
    assert!(enforced(web), "{}", instance(agent, web));
    let listed = std::process::Command::new(binary())
        .args(["status", "--json", "--domain", web, "--control-socket"])
        .arg(state.control_socket())
        .output()
        .expect("sg-agent status runs");
    assert_eq!(
        listed.status.code(),
        Some(0),
        "every NIC enforced: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
}

/// The first REJECT record `sg-agent flows --live --domain DOMAIN` prints
/// while `probe` runs.
fn live_record(state: &StateDir, domain: &str, probe: impl FnOnce()) -> serde_json::Value {
    let mut follower = std::process::Command::new(binary())
        .args([
            "flows",
            "--live",
            "--domain",
            domain,
            "--action",
            "REJECT",
            "--format",
            "json",
            "--count",
            "1",
            "--control-socket",
        ])
        .arg(state.control_socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sg-agent flows runs");
    std::thread::sleep(std::time::Duration::from_millis(500));
    probe();
    let done = eventually(RELOAD, || matches!(follower.try_wait(), Ok(Some(_))));
    if !done {
        let _ = follower.kill();
    }
    let out = follower.wait_with_output().expect("flows' output");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("a live record ({e}): {text:?}"))
}

/// A domain filtered by libvirt's nwfilter (a `<filterref>` dropping TCP
/// to port 8080 on its way in) and by sg-agent (its metadata's group
/// allows 80 and 8080, not 9090): a packet reaches the guest only if both
/// let it. Inbound, nwfilter judges first (its ebtables rules run on the
/// bridge, before the frame leaves through the tap, where sg-agent's
/// program is): the SYN nwfilter drops never reaches sg-agent's rule.
#[test]
fn nwfilter_and_sg_agent_both_judge_a_domain() {
    let rules = BY_METADATA.replace(
        "from_port = 80\n  to_port = 80",
        "from_port = 80\n  to_port = 8080",
    );
    let mut m = MetadataLab::new("snf", &rules);
    let (vm, filter) = (format!("{}-vm", m.prefix), format!("{}-no8080", m.prefix));
    m.libvirtd.define_nwfilter(
        &filter,
        &format!(
            "<filter name='{filter}' chain='ipv4'><rule action='drop' direction='in' \
             priority='500'><ip protocol='tcp' dstportstart='8080'/></rule></filter>"
        ),
    );
    let console = m.domain(
        &vm,
        "52:54:00:00:0a:10",
        &format!("<filterref filter='{filter}'/>"),
        "80,8080,9090",
    );
    assert_eq!(instance(&m.agent, &vm)["state"], "enforced");
    let addr = m.leased(&vm, &console);
    let (sw, client, agent) = (&m.sw, ip("10.9.0.7"), &m.agent);
    let rule_flows = || {
        instance(agent, &vm)["rules"][0]["flows"]
            .as_u64()
            .unwrap_or(0)
    };
    let dropped = || {
        instance(agent, &vm)["packets"]["ingress"]["drop_no_rule"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(tcp(sw, client, at(&addr, 80)), Connected, "both allow 80");
    // Rule hits come from the programs' events, drained every tenth of a
    // second or so.
    assert!(
        eventually(RELOAD, || rule_flows() == 1),
        "sg-agent's rule let it in: {}",
        instance(agent, &vm)
    );
    let (flows, drops) = (rule_flows(), dropped());
    assert_eq!(
        tcp(sw, client, at(&addr, 8080)),
        TimedOut,
        "nwfilter drops 8080, which sg-agent allows"
    );
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        (rule_flows(), dropped()),
        (flows, drops),
        "nwfilter dropped it on the bridge: sg-agent never saw it"
    );
    assert_eq!(
        tcp(sw, client, at(&addr, 9090)),
        TimedOut,
        "sg-agent drops 9090, which nwfilter allows"
    );
    assert!(dropped() > drops, "{}", instance(agent, &vm));
}

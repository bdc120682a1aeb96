//! The seed's architecture as a lab: the hosts, their servers and the
//! rules file, shared by the network tests and the demo.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use crate::{
    agent::AgentProcess,
    kernel::require_root,
    lab::Lab,
    probe::{Outcome, Servers, tcp},
};

pub const SEED: &str = include_str!("../../examples/seed-vpc.toml");

pub const ADMIN: &str = "203.0.113.5";
pub const ADMIN6: &str = "2001:db8:ff::5";
pub const OUTSIDER: &str = "198.51.100.7";
pub const OUTSIDER6: &str = "2001:db8:0:9::7";
pub const ALB: &str = "10.0.0.10";
pub const ALB6: &str = "2001:db8:0:1::10";
pub const BASTION: &str = "10.0.0.20";
pub const APP: &str = "10.0.1.10";
pub const RDS: &str = "10.0.2.10";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn at(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(addr), port)
}

/// A host: name, addresses, TCP ports and UDP ports it serves.
pub type HostSpec<'a> = (&'a str, &'a [&'a str], &'a [u16], &'a [u16]);

/// The lab, its rules file and its servers.
pub struct SeedLab {
    pub lab: Lab,
    pub config: PathBuf,
    _servers: Vec<Servers>,
}

impl SeedLab {
    /// The seed's hosts plus `extra_hosts`; `rules` is written with this
    /// lab's namespace names.
    pub fn new(tag: &str, rules: &str, extra_hosts: &[HostSpec]) -> Self {
        require_root();
        let mut lab = Lab::new(tag);
        let mut hosts: Vec<HostSpec> = vec![
            (
                "internet",
                &[ADMIN, OUTSIDER, ADMIN6, OUTSIDER6],
                &[80, 443],
                &[53],
            ),
            ("alb", &[ALB, ALB6], &[80, 8080], &[]),
            ("bastion", &[BASTION], &[22], &[]),
            ("app-1", &[APP], &[22, 80], &[]),
            ("rds", &[RDS], &[3306], &[]),
        ];
        hosts.extend_from_slice(extra_hosts);
        let mut servers = Vec::new();
        for (name, addrs, tcp_ports, udp_ports) in hosts {
            lab.add_host(name, addrs);
            servers.push(Servers::start(&lab.netns_of(name), tcp_ports, udp_ports));
        }
        let dir = std::env::temp_dir().join(format!("sg-tests-{}", lab.prefix));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("vpc.toml");
        std::fs::write(&config, lab.localize(rules)).expect("write rules");
        Self {
            lab,
            config,
            _servers: servers,
        }
    }

    pub fn ns(&self, host: &str) -> String {
        self.lab.netns_of(host)
    }

    pub fn tcp(&self, host: &str, from: &str, to: &str, port: u16) -> Outcome {
        tcp(&self.ns(host), ip(from), at(to, port))
    }

    /// Rewrites the rules file as an editor does: a new file renamed over.
    pub fn rewrite(&self, rules: &str) {
        let tmp = self.config.with_extension("toml.tmp");
        std::fs::write(&tmp, self.lab.localize(rules)).expect("write");
        std::fs::rename(&tmp, &self.config).expect("rename");
    }

    /// Rewrites the rules file with every instance on the host side of its
    /// link (its bridge port: see [`Lab::host_side`]).
    pub fn rewrite_host_side(&self, rules: &str) {
        self.rewrite(&self.lab.host_side(rules));
    }
}

impl Drop for SeedLab {
    fn drop(&mut self) {
        if let Some(dir) = self.config.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub const START: Duration = Duration::from_secs(20);
pub const RELOAD: Duration = Duration::from_secs(5);

pub fn start_agent(lab: &SeedLab) -> AgentProcess {
    start_agent_with(lab, &[])
}

/// [`start_agent`] with extra `sg-agent run` arguments.
pub fn start_agent_with(lab: &SeedLab, args: &[&str]) -> AgentProcess {
    let agent = AgentProcess::start_with(&lab.config, args);
    agent.expect_log("ready: enforcing", 0, START);
    agent
}

/// [`start_agent_with`] writing flow logs to `flow_log` every
/// `interval_s` seconds, with `extra` options.
pub fn start_agent_logging_flows(
    lab: &SeedLab,
    flow_log: &std::path::Path,
    interval_s: u64,
    extra: &[&str],
) -> AgentProcess {
    let interval = interval_s.to_string();
    let mut args = vec![
        "--flow-log",
        flow_log.to_str().expect("utf-8"),
        "--flow-log-interval",
        &interval,
    ];
    args.extend_from_slice(extra);
    start_agent_with(lab, &args)
}

/// The seed's experiment: the ALB's inbound rule removed and put back.
pub fn seed_without_alb_ingress() -> String {
    let start = SEED
        .find("  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 80")
        .expect("ALB rule");
    let end = SEED[start..]
        .find("description = \"HTTP from the internet\"\n")
        .expect("rule end")
        + start;
    let end = end + "description = \"HTTP from the internet\"\n".len();
    format!("{}{}", &SEED[..start], &SEED[end..])
}

/// The bastion's only inbound rule (SSH from the admins' prefix list, a
/// narrow source: its connections are tracked) removed.
pub fn seed_without_bastion_ingress(rules: &str) -> String {
    let rule = "  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 22\n  to_port = 22\n  prefix_list_ids = [\"admins\", \"admins-v6\"]\n";
    assert!(rules.contains(rule), "the bastion's SSH rule");
    rules.replace(rule, "")
}

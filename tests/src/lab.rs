//! Network-namespace labs: named hosts on one bridge, built and torn down
//! by RAII guards. Traffic only ever flows between namespaces the lab made:
//! the bridge lives in the lab's own "switch" namespace, no lab namespace is
//! linked to the root namespace, and none has a default route.

use std::{
    fs::File,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{CloneFlags, setns};

/// Routes every lab host gets: on-link, no default route.
const LAB_ROUTES: [&str; 4] = [
    "10.0.0.0/8",
    "203.0.113.0/24",
    "198.51.100.0/24",
    "2001:db8::/32",
];

/// Gives `eth0` in `ns` host addresses (/32, /128; no duplicate address
/// detection), brings it up and adds on-link `routes`: never a default route.
pub fn bring_up_eth0(ns: &str, addresses: &[&str], routes: &[&str]) {
    for a in addresses {
        let (family, host) = if a.contains(':') {
            ("-6", format!("{a}/128"))
        } else {
            ("-4", format!("{a}/32"))
        };
        let mut args = vec!["-n", ns, family, "addr", "add", &host, "dev", "eth0"];
        if family == "-6" {
            args.push("nodad");
        }
        ip(&args);
    }
    ip(&["-n", ns, "link", "set", "eth0", "up"]);
    for r in routes {
        let family = if r.contains(':') { "-6" } else { "-4" };
        ip(&["-n", ns, family, "route", "add", r, "dev", "eth0"]);
    }
}

/// Runs `ip` with `args`; panics with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("the ip command (iproute2) runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A prefix unique to this process and call, short enough for interface
/// names (15 bytes).
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{}{n}", std::process::id() % 100_000)
}

/// One named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Self {
        // A leftover of a crashed run would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        Self {
            name: name.to_owned(),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic in drop: a failing test is already unwinding.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs `f` on a thread inside network namespace `ns`; sockets it creates
/// belong to that namespace for their whole life.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A host of the lab: a namespace whose `eth0` is a port of the lab bridge.
pub struct Host {
    pub name: String,
    pub netns: Netns,
    addresses: Vec<String>,
    port: String,
}

/// A set of hosts on one bridge, all removed on drop.
pub struct Lab {
    pub prefix: String,
    pub hosts: Vec<Host>,
    /// Declared last, so dropped last (after the hosts, whose veth ends
    /// vanish with them): the switch namespace holding the bridge.
    switch: Netns,
}

impl Lab {
    pub fn new(tag: &str) -> Self {
        let prefix = unique_prefix(tag);
        let switch = Netns::create(&format!("{prefix}-sw"));
        ip(&["-n", &switch.name, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch.name, "link", "set", "br0", "up"]);
        Self {
            prefix,
            hosts: Vec::new(),
            switch,
        }
    }

    /// The namespace name of `host` (as the rules file must name it).
    pub fn netns_of(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// Adds a host with these addresses (v4 and v6, without prefix length).
    pub fn add_host(&mut self, host: &str, addresses: &[&str]) {
        let ns = Netns::create(&self.netns_of(host));
        let port = format!("p{}", self.hosts.len());
        self.link_host(&ns.name, &port, addresses);
        self.hosts.push(Host {
            name: host.to_owned(),
            netns: ns,
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            port,
        });
    }

    /// Deletes `host`'s eth0 and makes a new one, as a VM reboot or a
    /// container restart does: same name and addresses, a new interface
    /// (another ifindex) with nothing attached.
    pub fn recreate_eth0(&self, host: &str) {
        let h = self
            .hosts
            .iter()
            .find(|h| h.name == host)
            .unwrap_or_else(|| panic!("no host {host}"));
        // Deleting one end of a veth pair deletes both.
        ip(&["-n", &self.switch.name, "link", "del", &h.port]);
        let addresses: Vec<&str> = h.addresses.iter().map(String::as_str).collect();
        self.link_host(&h.netns.name, &h.port, &addresses);
        // The new interface has a new MAC address: the other hosts forget
        // the old one (a booting VM's gratuitous ARP does the same).
        for other in &self.hosts {
            ip(&["-n", &other.netns.name, "neigh", "flush", "all"]);
        }
    }

    fn link_host(&self, ns: &str, port: &str, addresses: &[&str]) {
        // Created inside the switch namespace with its peer straight in the
        // host's namespace: the root namespace never sees either end.
        ip(&[
            "-n",
            &self.switch.name,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        ]);
        ip(&[
            "-n",
            &self.switch.name,
            "link",
            "set",
            port,
            "master",
            "br0",
            "up",
        ]);
        bring_up_eth0(ns, addresses, &LAB_ROUTES);
    }

    /// Rewrites the `netns = "sg-NAME"` lines of a rules file to this lab's
    /// namespaces, so every test has its own.
    pub fn localize(&self, rules: &str) -> String {
        rules.replace("netns = \"sg-", &format!("netns = \"{}-", self.prefix))
    }

    /// The namespace holding the bridge and every host's port: the host
    /// side of each host's link (where a container's host veth, or a VM's
    /// tap, sits).
    pub fn switch_netns(&self) -> &str {
        &self.switch.name
    }

    /// `host`'s port on the bridge: the host side of its link.
    pub fn port_of(&self, host: &str) -> &str {
        &self
            .hosts
            .iter()
            .find(|h| h.name == host)
            .unwrap_or_else(|| panic!("no host {host}"))
            .port
    }

    /// A rules file whose instances (`netns = "sg-NAME"` with `interface
    /// = "eth0"`) are enforced on the host side of their links instead:
    /// their bridge ports in the switch namespace, as the host side of a
    /// container's veth or a VM's tap would be.
    pub fn host_side(&self, rules: &str) -> String {
        let mut out = rules.to_owned();
        for h in &self.hosts {
            let own = format!("netns = \"sg-{}\"\ninterface = \"eth0\"", h.name);
            let host = format!(
                "netns = \"{}\"\nhost_interface = \"{}\"",
                self.switch.name, h.port
            );
            out = out.replace(&own, &host);
        }
        out
    }
}

/// The MAC address of `eth0` in `ns`, as `ip` prints it.
pub fn eth0_mac(ns: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-br", "link", "show", "eth0"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(2)
        .expect("a MAC address")
        .to_owned()
}

/// A rules file of a test's own: `vpc.toml` in a directory of its own
/// under the temporary directory, removed (with the directory) on drop.
pub struct RulesFile {
    pub path: std::path::PathBuf,
}

impl RulesFile {
    /// Writes `text` as the rules of the lab with `prefix`.
    pub fn new(prefix: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sg-tests-{prefix}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("vpc.toml");
        std::fs::write(&path, text).expect("write rules");
        Self { path }
    }
}

impl Drop for RulesFile {
    fn drop(&mut self) {
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

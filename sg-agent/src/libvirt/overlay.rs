//! What libvirt itself says of the instances on this host, laid over the
//! rules file: a running domain whose `<metadata>` names its groups (see
//! [`super::METADATA_NS`]) is an instance per NIC without an `[[instance]]`
//! in the file, and a libvirt instance without `addresses` has libvirt's
//! (see [`super::addresses`]). The rules file keeps the groups and rules;
//! `virsh metadata` (or `virsh edit`) is how a VM joins a group. The agent
//! lays it over every description it admits, before validation, and admits
//! again when it changes (`agent::enforce`).

use std::{collections::BTreeMap, fmt::Write as _, os::unix::fs::MetadataExt as _, path::PathBuf};

use super::{DomainNic, addresses::NetworkAddresses};
use crate::config::{ConntrackOverrides, Instance, Link, Vpc};

/// Where libvirt keeps what the overlay reads.
#[derive(Clone, Debug)]
pub struct Dirs {
    /// The live state of running QEMU domains.
    pub qemu: PathBuf,
    /// The live definitions of active networks.
    pub networks: PathBuf,
    /// The networks' DHCP leases.
    pub leases: PathBuf,
}

impl Default for Dirs {
    fn default() -> Self {
        Self {
            qemu: PathBuf::from(super::QEMU_STATE_DIR),
            networks: PathBuf::from(super::addresses::NETWORK_STATE_DIR),
            leases: PathBuf::from(super::addresses::LEASES_DIR),
        }
    }
}

/// The running domains' NICs and the addresses libvirt's networks give.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Running {
    pub domains: BTreeMap<String, Vec<DomainNic>>,
    pub addresses: NetworkAddresses,
    /// Domains whose XML could not be read as sg-agent needs it: why.
    pub unreadable: BTreeMap<String, String>,
}

impl Running {
    /// Every running domain (libvirt's live state; for a domain starting,
    /// what its hook gave until that state is written) and the networks'
    /// addresses now.
    pub fn read(dirs: &Dirs, from_hook: &BTreeMap<String, Vec<DomainNic>>) -> Self {
        let mut out = Self {
            addresses: NetworkAddresses::read(&dirs.networks, &dirs.leases, unix_now()),
            ..Self::default()
        };
        let names: Vec<String> = std::fs::read_dir(&dirs.qemu)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(".xml")
                    .map(str::to_owned)
            })
            .collect();
        for name in names {
            match super::running_nics(&dirs.qemu, &name) {
                Ok(nics) => {
                    out.domains.insert(name, nics);
                }
                Err(why) => {
                    out.unreadable.insert(name, why);
                }
            }
        }
        for (name, nics) in from_hook {
            out.unreadable.remove(name);
            out.domains
                .entry(name.clone())
                .or_insert_with(|| nics.clone());
        }
        out
    }

    /// What of it changes the description: each NIC's instance and
    /// addresses (not its tap, which the agent follows anyway).
    pub fn signature(&self) -> String {
        let mut out = String::new();
        for (domain, nics) in &self.domains {
            for nic in nics {
                let _ = writeln!(
                    out,
                    "{domain} {} {:?} {:?}",
                    nic.mac,
                    nic.instance,
                    self.addresses.of(nic)
                );
            }
        }
        for (domain, why) in &self.unreadable {
            let _ = writeln!(out, "{domain} unreadable: {why}");
        }
        out
    }
}

/// When the files the overlay reads last changed: a tick compares it before
/// reading them again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamp(Vec<(PathBuf, i64, i64, u64)>);

impl Stamp {
    pub fn of(dirs: &Dirs) -> Self {
        let mut out = Vec::new();
        for dir in [&dirs.qemu, &dirs.networks, &dirs.leases] {
            if let Ok(m) = std::fs::metadata(dir) {
                out.push((dir.clone(), m.mtime(), m.mtime_nsec(), m.len()));
            }
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if let Ok(m) = e.metadata() {
                    out.push((e.path(), m.mtime(), m.mtime_nsec(), m.len()));
                }
            }
        }
        out.sort();
        Self(out)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where the instances the overlay makes are enforced: by the agent of
/// `node`, in network namespace `netns` (where libvirtd's taps are).
#[derive(Clone, Copy, Debug, Default)]
pub struct Place<'a> {
    pub node: Option<&'a str>,
    pub netns: Option<&'a str>,
}

/// Lays `running` over `vpc` (parsed, not yet validated): fills in the
/// addresses of libvirt instances the file gives none, and adds an instance
/// for each NIC a domain's metadata gives groups and no `[[instance]]`
/// names, enforced as `at` says. Returns, per domain, why its
/// metadata made no instance (a group or VPC the file does not have, a
/// name already taken): that domain's NICs stay unfiltered by it, and its
/// hook refuses its start.
pub fn overlay(vpc: &mut Vpc, running: &Running, at: &Place<'_>) -> BTreeMap<String, String> {
    let mut problems: BTreeMap<String, String> = running.unreadable.clone();
    for inst in &mut vpc.instances {
        if !inst.addresses_from_libvirt {
            continue;
        }
        let Some(Link::Libvirt { domain, mac }) = &inst.link else {
            continue;
        };
        if let Some(nic) = running
            .domains
            .get(domain)
            .and_then(|nics| super::pick(domain, nics, *mac).ok())
        {
            inst.addresses = running.addresses.of(&nic);
        }
    }
    let claims = |vpc: &Vpc, domain: &str, nic: &DomainNic, nics: usize| {
        vpc.instances.iter().any(|i| match &i.link {
            Some(Link::Libvirt { domain: d, mac }) if d == domain => {
                mac.map_or(nics == 1, |m| m == nic.mac)
            }
            _ => false,
        })
    };
    for (domain, nics) in &running.domains {
        let mut made = Vec::new();
        for nic in nics {
            let Some(meta) = &nic.instance else {
                continue;
            };
            if claims(vpc, domain, nic, nics.len()) {
                continue;
            }
            match instance(vpc, domain, nic, meta, running, at) {
                Ok(inst) => made.push(inst),
                Err(why) => {
                    problems.insert(
                        domain.clone(),
                        format!("its sg-agent metadata (NIC {}): {why}", nic.mac),
                    );
                    made.clear();
                    break;
                }
            }
        }
        vpc.instances.extend(made);
    }
    problems
}

/// The instance `meta` makes of `nic`, checked against the file: what the
/// validation would say of it points into the file, which does not hold it.
fn instance(
    vpc: &Vpc,
    domain: &str,
    nic: &DomainNic,
    meta: &super::NicInstance,
    running: &Running,
    at: &Place<'_>,
) -> Result<Instance, String> {
    if vpc.instances.iter().any(|i| i.name == meta.name) {
        return Err(format!(
            "instance name {:?} is the rules file's already: name it with <sg:instance name=...>",
            meta.name
        ));
    }
    let mut groups = Vec::new();
    for g in &meta.groups {
        let found = vpc
            .groups
            .iter()
            .find(|x| x.name == *g || x.id.as_ref().is_some_and(|(id, _)| id == g))
            .ok_or_else(|| format!("security group {g:?} is not in the rules file"))?;
        groups.push((found.name.clone(), 0..0));
    }
    if let Some(v) = &meta.vpc
        && !vpc.vpcs.iter().any(|d| d.name == *v)
    {
        return Err(format!("VPC {v:?} is not in the rules file"));
    }
    if let Some(s) = &meta.subnet
        && !vpc.subnets.iter().any(|x| x.name.as_deref() == Some(s))
    {
        return Err(format!("subnet {s:?} is not in the rules file"));
    }
    // An address another instance has is not this one's (a lease of a
    // NIC the file names by hand, say): left out, as AWS never gives one
    // address twice.
    let addresses = running
        .addresses
        .of(nic)
        .into_iter()
        .filter(|a| !vpc.instances.iter().any(|i| i.addresses.contains(a)))
        .collect();
    Ok(Instance {
        name: meta.name.clone(),
        id: None,
        tags: Vec::new(),
        addresses,
        addresses_from_libvirt: true,
        prefixes: Vec::new(),
        groups,
        link: Some(Link::Libvirt {
            domain: domain.to_owned(),
            mac: Some(nic.mac),
        }),
        netns: at.netns.map(str::to_owned),
        mac: None,
        node: at.node.map(str::to_owned),
        source_dest_check: true,
        conntrack: ConntrackOverrides::default(),
        instance_type: None,
        nitro_version: None,
        vpc: meta.vpc.clone(),
        subnet: meta.subnet.clone().map(|s| (s, 0..0)),
        span: 0..0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[security_group]]
name = "web"
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_blocks = ["10.9.0.0/24"]

[[instance]]
name = "db"
security_groups = ["web"]
libvirt_domain = "db"
"#;

    fn domain(name: &str, xml_meta: &str, mac: &str) -> Vec<DomainNic> {
        super::super::nics(&format!(
            "<domain><name>{name}</name><metadata>{xml_meta}</metadata><devices>\
             <interface type='network'><mac address='{mac}'/>\
             <source network='lab' bridge='virbr7'/><target dev='vnet1'/></interface>\
             </devices></domain>"
        ))
        .expect("domain XML")
    }

    fn meta(groups: &[&str]) -> String {
        let groups: String = groups.iter().fold(String::new(), |mut out, g| {
            let _ = write!(out, "<sg:security-group>{g}</sg:security-group>");
            out
        });
        format!(
            "<sg:instance xmlns:sg='{}'>{groups}</sg:instance>",
            super::super::METADATA_NS
        )
    }

    fn parsed() -> Vpc {
        // Parsed as the agent does before laying libvirt over it.
        crate::config::from_str_overlaid("vpc.toml".as_ref(), FILE, |_| {}).expect("valid")
    }

    #[test]
    fn a_domain_whose_metadata_names_groups_is_an_instance_with_libvirts_addresses() {
        let mut running = Running::default();
        running.domains.insert(
            "web-1".into(),
            domain("web-1", &meta(&["web"]), "52:54:00:00:00:01"),
        );
        running
            .domains
            .insert("db".into(), domain("db", "", "52:54:00:00:00:02"));
        running
            .domains
            .insert("plain".into(), domain("plain", "", "52:54:00:00:00:03"));
        let mut leases = NetworkAddresses::default();
        leases.insert_lease("virbr7", "52:54:00:00:00:01", "10.9.0.150");
        leases.insert_lease("virbr7", "52:54:00:00:00:02", "10.9.0.151");
        running.addresses = leases;
        let mut vpc = parsed();
        let problems = overlay(&mut vpc, &running, &Place::default());
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = vpc.instances.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(
            names,
            ["db", "web-1"],
            "a domain without metadata adds nothing"
        );
        let web = &vpc.instances[1];
        assert_eq!(web.groups[0].0, "web");
        assert_eq!(
            web.addresses,
            ["10.9.0.150".parse::<std::net::IpAddr>().expect("ip")]
        );
        assert_eq!(
            vpc.instances[0].addresses,
            ["10.9.0.151".parse::<std::net::IpAddr>().expect("ip")],
            "the file's libvirt instance without addresses gets its lease"
        );
        assert!(crate::config::validate::validate(&vpc).is_empty());
    }

    #[test]
    fn metadata_naming_what_the_file_lacks_makes_no_instance_and_says_why() {
        let mut running = Running::default();
        running.domains.insert(
            "web-1".into(),
            domain("web-1", &meta(&["nope"]), "52:54:00:00:00:01"),
        );
        running.domains.insert(
            "db".into(),
            domain("db", &meta(&["web"]), "52:54:00:00:00:02"),
        );
        let mut vpc = parsed();
        let problems = overlay(&mut vpc, &running, &Place::default());
        assert_eq!(vpc.instances.len(), 1, "the file's db only");
        assert!(
            problems["web-1"].contains("\"nope\" is not in the rules file"),
            "{problems:?}"
        );
        assert!(
            !problems.contains_key("db"),
            "a NIC the file names is the file's, metadata or not"
        );
        assert!(
            vpc.instances[0].addresses.is_empty(),
            "no lease yet: no address, only DHCP passes"
        );
    }
}

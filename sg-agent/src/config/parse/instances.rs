//! `[[instance]]`: addresses, links, MAC addresses, where it is enforced.

use super::{
    DeTable, FromStr, Instance, IpAddr, IpNet, Link, MacAddr, Parser, Span, TextKind, Value,
};

impl Parser {
    pub(super) fn instance(&mut self, t: &DeTable, span: Span) -> Option<Instance> {
        self.known_keys(
            t,
            &[
                "name",
                "id",
                "description",
                "tags",
                "addresses",
                "prefixes",
                "security_groups",
                "interface",
                "host_interface",
                "libvirt_domain",
                "libvirt_mac",
                "mac",
                "netns",
                "netns_path",
                "node",
                "source_dest_check",
                "conntrack",
                "instance_type",
                "nitro_version",
                "vpc",
                "subnet",
            ],
            "an instance",
        );
        let node = self.node_name(t);
        self.description(t);
        let id = self.aws_id(t, "i", "i-0123456789abcdef0");
        let tags = self.tags(t);
        let name = self
            .req_string(t, &span, "name", "this instance")
            .filter(|(n, _)| self.text_ok(t, "name", n, TextKind::Other));
        let addresses = self.addresses(t);
        let prefixes = self.delegated_prefixes(t);
        let groups = self.string_array(t, "security_groups");
        let link = self.link(t);
        let netns = self.netns(t);
        let linked = ["interface", "host_interface", "libvirt_domain"]
            .iter()
            .any(|k| Self::get(t, k).is_some());
        for key in ["netns", "netns_path"] {
            if let (Some(v), false) = (Self::get(t, key), linked) {
                self.err_hint(
                    v.span(),
                    format!("{key} without interface"),
                    "name the interface inside that namespace, e.g. interface = \"eth0\" (or host_interface = \"vnet0\" for the host side of a VM's tap or a container's veth)",
                );
            }
        }
        let mac = self.mac(t, "mac");
        self.mac_fits(t, link.as_ref(), linked);
        let source_dest_check = match Self::get(t, "source_dest_check") {
            None => true,
            Some(v) => v.get_ref().as_bool().unwrap_or_else(|| {
                self.err_hint(
                    v.span(),
                    "\"source_dest_check\" must be true or false",
                    "false lets the instance send and receive for addresses not its own (a NAT or router instance)",
                );
                true
            }),
        };
        let conntrack = Self::get(t, "conntrack")
            .map(|v| self.conntrack(v, "an instance's [instance.conntrack]"))
            .unwrap_or_default();
        let instance_type = self.instance_type(t);
        let nitro_version = self.nitro_version(t);
        let vpc = self.opt_string(t, "vpc");
        let subnet =
            Self::get(t, "subnet").and_then(|v| self.string(v, "subnet").map(|s| (s, v.span())));
        let addresses_from_libvirt =
            matches!(link, Some(Link::Libvirt { .. })) && Self::get(t, "addresses").is_none();
        Some(Instance {
            name: name?.0,
            id,
            tags,
            addresses,
            addresses_from_libvirt,
            prefixes,
            groups,
            link,
            netns,
            mac,
            node,
            source_dest_check,
            conntrack,
            instance_type,
            nitro_version,
            vpc,
            subnet,
            span,
        })
    }

    /// An instance's `addresses`: host addresses, without prefix lengths.
    pub(super) fn addresses(&mut self, t: &DeTable) -> Vec<IpAddr> {
        let mut addresses = Vec::new();
        for (s, sp) in self.string_array(t, "addresses") {
            match IpAddr::from_str(&s) {
                Ok(a) => addresses.push(a),
                Err(_) if IpNet::from_str(&s).is_ok() => self.err_hint(
                    sp,
                    format!("\"{s}\" has a prefix length"),
                    format!(
                        "addresses are host addresses: write \"{}\" (a prefix delegated to \
                         the interface, IPv4 /28 or IPv6 /80, goes in prefixes = [...])",
                        s.split('/').next().unwrap_or_default()
                    ),
                ),
                Err(_) => self.err_hint(
                    sp,
                    format!("\"{s}\" is not an IP address"),
                    "write e.g. \"10.0.1.10\" or \"2001:db8::10\"",
                ),
            }
        }
        addresses
    }

    /// `nitro_version`: the Nitro version AWS's "Platform summary" of the
    /// instance family shows.
    pub(super) fn nitro_version(&mut self, t: &DeTable) -> Option<u8> {
        Self::get(t, "nitro_version")?;
        let v = self.bounded(
            t,
            "nitro_version",
            1..=9,
            0,
            " (the Nitro version AWS's \"Platform summary\" of the instance family shows)",
        );
        u8::try_from(v).ok().filter(|&v| v > 0)
    }

    /// `instance_type`: an EC2 instance type as AWS writes it, family and
    /// size (`c8i.large`, `p6e-gb200.36xlarge`, `u7i-12tb.224xlarge`).
    pub(super) fn instance_type(&mut self, t: &DeTable) -> Option<String> {
        let v = Self::get(t, "instance_type")?;
        let text = self.string(v, "instance_type")?;
        let part = |p: &str| {
            !p.is_empty()
                && p.len() <= 32
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        match text.split_once('.') {
            Some((family, size)) if part(family) && part(size) => Some(text),
            _ => {
                self.err_hint(
                    v.span(),
                    format!("\"{text}\" is not an EC2 instance type"),
                    "write the family and the size as AWS does, e.g. \"c8i.large\" or \"m7g.xlarge\"",
                );
                None
            }
        }
    }

    /// `prefixes`: AWS's prefix delegation, IPv4 /28 and IPv6 /80 only, as
    /// AWS assigns them, without host bits.
    pub(super) fn delegated_prefixes(&mut self, t: &DeTable) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (s, sp) in self.string_array(t, "prefixes") {
            let Ok(net) = IpNet::from_str(&s) else {
                self.err_hint(
                    sp,
                    format!("\"{s}\" is not a prefix"),
                    "write e.g. \"10.0.5.16/28\" or \"2001:db8:0:5:1::/80\"",
                );
                continue;
            };
            let want = if net.addr().is_ipv4() { 28 } else { 80 };
            if net.prefix_len() != want {
                self.err_hint(
                    sp,
                    format!(
                        "\"{s}\" is a /{}: AWS delegates IPv4 /28 and IPv6 /80 prefixes",
                        net.prefix_len()
                    ),
                    format!("write a /{want}"),
                );
            } else if net.trunc() != net {
                self.err_hint(
                    sp,
                    format!("\"{s}\" has host bits set"),
                    format!("write \"{}\"", net.trunc()),
                );
            } else {
                out.push(net);
            }
        }
        out
    }

    /// `node`: the host name an agent's `run --node` gives.
    pub(super) fn node_name(&mut self, t: &DeTable) -> Option<String> {
        self.opt_string(t, "node").filter(|n| {
            let ok = !n.is_empty() && n.len() <= 253 && !n.chars().any(char::is_control);
            if !ok {
                let span = Self::get(t, "node").map(Value::span).unwrap_or_default();
                self.err_hint(
                    span,
                    format!("node {n:?} is not a host name"),
                    "name the host whose agent enforces it, as its `run --node` says, e.g. \"host-a\"",
                );
            }
            ok
        })
    }

    /// `netns` (a name under /run/netns) or `netns_path` (a namespace file
    /// elsewhere), not both.
    pub(super) fn netns(&mut self, t: &DeTable) -> Option<String> {
        let mut netns = self
            .opt_string(t, "netns")
            .filter(|name| self.netns_name_ok(t, name));
        if let Some(path) = self.opt_string(t, "netns_path") {
            let span = Self::get(t, "netns_path")
                .map(Value::span)
                .unwrap_or_default();
            if netns.is_some() {
                self.err_hint(
                    span,
                    "netns and netns_path both given",
                    "keep netns (a name under /run/netns) or netns_path (a namespace file elsewhere)",
                );
            } else if !path.starts_with('/') || path.contains('\0') {
                self.err_hint(
                    span,
                    "netns_path must be an absolute path",
                    "e.g. netns_path = \"/proc/1234/ns/net\" or \"/run/docker/netns/abc\"",
                );
            } else {
                netns = Some(path);
            }
        }
        netns
    }

    /// `interface`, `host_interface` or `libvirt_domain` (with
    /// `libvirt_mac`): at most one of the three.
    pub(super) fn link(&mut self, t: &DeTable) -> Option<Link> {
        let given: Vec<&str> = ["interface", "host_interface", "libvirt_domain"]
            .into_iter()
            .filter(|k| Self::get(t, k).is_some())
            .collect();
        if given.len() > 1 {
            let span = Self::get(t, given[1]).map(Value::span).unwrap_or_default();
            self.err_hint(
                span,
                format!("{} and {} both given", given[0], given[1]),
                "interface is the instance's own end of its link (inside its namespace or VM); \
                 host_interface the host's end (a VM's tap, a container's host veth), which the \
                 guest cannot lift; libvirt_domain finds a libvirt domain's tap: keep one",
            );
            return None;
        }
        let libvirt_mac = self.mac(t, "libvirt_mac");
        if let (Some(v), false) = (
            Self::get(t, "libvirt_mac"),
            given.first() == Some(&"libvirt_domain"),
        ) {
            self.err_hint(
                v.span(),
                "libvirt_mac without libvirt_domain",
                "libvirt_mac picks one NIC of a libvirt domain: write libvirt_domain = \"NAME\" too",
            );
        }
        match *given.first()? {
            "interface" => self
                .opt_string(t, "interface")
                .filter(|name| self.interface_name_ok(t, "interface", name))
                .map(Link::Instance),
            "host_interface" => self
                .opt_string(t, "host_interface")
                .filter(|name| self.interface_name_ok(t, "host_interface", name))
                .map(Link::Host),
            _ => self
                .opt_string(t, "libvirt_domain")
                .filter(|name| self.domain_name_ok(t, name))
                .map(|domain| Link::Libvirt {
                    domain,
                    mac: libvirt_mac,
                }),
        }
    }

    /// `mac` belongs on the host side of an instance's link.
    pub(super) fn mac_fits(&mut self, t: &DeTable, link: Option<&Link>, linked: bool) {
        if let Some(v) = Self::get(t, "mac") {
            let why = match link {
                Some(Link::Host(_)) => None,
                Some(Link::Instance(_)) => Some((
                    "mac is checked on the host side of an instance's link only",
                    "write host_interface = \"...\" (the VM's tap or the container's host veth) instead of interface, or leave mac out",
                )),
                Some(Link::Libvirt { .. }) => Some((
                    "a libvirt domain's MAC address comes from libvirt",
                    "leave mac out; libvirt_mac = \"...\" picks one NIC of a domain that has several",
                )),
                None if linked => None,
                None => Some((
                    "mac without host_interface",
                    "name the host side of the instance's link, e.g. host_interface = \"vnet0\"",
                )),
            };
            if let Some((msg, hint)) = why {
                self.err_hint(v.span(), msg, hint);
            }
        }
    }

    /// A MAC address under `key`: six hex octets, a unicast address.
    pub(super) fn mac(&mut self, t: &DeTable, key: &str) -> Option<MacAddr> {
        let v = Self::get(t, key)?;
        let text = self.string(v, key)?;
        match text.parse::<MacAddr>() {
            Ok(mac) if mac.is_unicast() => Some(mac),
            Ok(_) => {
                self.err_hint(
                    v.span(),
                    format!("{key} {text:?} is not a NIC's own address (multicast, broadcast or zero)"),
                    "a NIC's MAC address has the lowest bit of its first octet clear, e.g. \"52:54:00:12:34:56\"",
                );
                None
            }
            Err(why) => {
                self.err_hint(
                    v.span(),
                    format!("{key} {text:?} {why}"),
                    "write six hexadecimal octets separated by ':', e.g. \"52:54:00:12:34:56\"",
                );
                None
            }
        }
    }

    /// A libvirt domain name, which names its live state file
    /// (`/run/libvirt/qemu/NAME.xml`): one path component, as libvirt
    /// itself requires.
    pub(super) fn domain_name_ok(&mut self, t: &DeTable, name: &str) -> bool {
        let bad = name.is_empty()
            || name == "."
            || name == ".."
            || name.len() > 200
            || name.chars().any(|c| c == '/' || c.is_control());
        if bad {
            let span = Self::get(t, "libvirt_domain")
                .map(Value::span)
                .unwrap_or_default();
            self.err_hint(
                span,
                format!("libvirt_domain {name:?} is not a domain name"),
                "name the domain as `virsh list` shows it: no '/' or control characters",
            );
        }
        !bad
    }

    /// A Linux interface name: 1 to 15 bytes, no `/`, NUL or whitespace
    /// (the kernel's `dev_valid_name`), not `.` or `..`.
    pub(super) fn interface_name_ok(&mut self, t: &DeTable, key: &str, name: &str) -> bool {
        let why = if name.is_empty() || name.len() > 15 {
            Some(format!("is {} bytes long", name.len()))
        } else if name == "." || name == ".." {
            Some("is not a name".to_owned())
        } else {
            name.chars()
                .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
                .map(|c| format!("contains {c:?}"))
        };
        if let Some(why) = why {
            let span = Self::get(t, key).map(Value::span).unwrap_or_default();
            self.err_hint(
                span,
                format!("{key} {name:?} {why}"),
                "an interface name is 1 to 15 bytes without '/', ':', whitespace or control characters, e.g. \"eth0\"",
            );
            return false;
        }
        true
    }

    /// A named network namespace (`ip netns add NAME`): one path component
    /// under /run/netns, never `.` or `..`.
    pub(super) fn netns_name_ok(&mut self, t: &DeTable, name: &str) -> bool {
        let bad = name.is_empty()
            || name == "."
            || name == ".."
            || name.len() > 255
            || name.chars().any(|c| c == '/' || c.is_control());
        if bad {
            let span = Self::get(t, "netns").map(Value::span).unwrap_or_default();
            self.err_hint(
                span,
                format!("netns {name:?} is not a namespace name"),
                "netns names a namespace under /run/netns (ip netns add NAME); for a namespace file elsewhere write netns_path = \"/proc/PID/ns/net\"",
            );
        }
        !bad
    }
}

//! The rules file as the rest of the agent sees it: validated, names kept as
//! written (groups and prefix lists are looked up by name). Spans point back
//! into the file for diagnostics.

use std::{net::IpAddr, ops::Range};

use ipnet::IpNet;

/// Byte range in the rules file.
pub type Span = Range<usize>;

/// The whole "VPC": prefix lists, security groups and instances.
#[derive(Clone, Debug, Default)]
pub struct Vpc {
    pub prefix_lists: Vec<PrefixList>,
    pub groups: Vec<SecurityGroup>,
    pub instances: Vec<Instance>,
    pub limits: Limits,
    pub conntrack: ConntrackSettings,
    /// The keys the file-wide `[conntrack]` sets (they override an
    /// instance type's defaults, as setting them on every interface would).
    pub conntrack_set: ConntrackOverrides,
    /// `[vpc] cidr_blocks`: the VPC's ranges; Amazon DNS answers at the
    /// base of each IPv4 range plus two.
    pub cidr_blocks: Vec<IpNet>,
    /// `[[vpc]]`: the VPCs the file names, the first the default one
    /// (groups and instances without `vpc` are in it). Empty: one unnamed
    /// VPC (`[vpc]`, or none at all), as in files before several VPCs.
    pub vpcs: Vec<VpcDecl>,
    /// `[[vpc_peering]]`: pairs of VPCs peered: a rule may reference a
    /// group of a peered VPC of the same Region.
    pub peerings: Vec<(String, String)>,
    /// `[[transit_gateway]]`: transit gateways and the VPCs attached to
    /// them: an inbound rule may reference a group of another attached VPC
    /// where the gateway and both attachments carry group references.
    pub transit_gateways: Vec<TransitGateway>,
    /// `[[subnet]]`: the VPC's subnets (their reserved addresses are never
    /// filtered); none: each IPv4 range of `cidr_blocks` counts as one.
    pub subnets: Vec<super::Subnet>,
    /// `[[network_acl]]`: the subnets' network ACLs.
    pub network_acls: Vec<super::NetworkAcl>,
    /// `[vpc] service_mac`: the MAC address the AWS services answer from
    /// (the lab's router, DHCP and DNS host). Traffic with them is exempt
    /// from the rules only from (to) there; instances on the host side
    /// default to the host's own address on their link.
    pub service_mac: Option<MacAddr>,
    /// `[[aws_service]]`: services AWS tracks every connection through,
    /// whatever the rules say (a Network Load Balancer, a NAT gateway...).
    pub tracked_services: Vec<TrackedService>,
    /// What the file says that AWS accepts and ignores (shown by `check`,
    /// logged by `run`): ports on a protocol without ports.
    pub warnings: Vec<super::Diagnostic>,
}

#[derive(Clone, Debug)]
pub struct PrefixList {
    pub name: String,
    /// AWS's prefix-list id (`pl-`), kept by the importers and the EC2
    /// API; optional.
    pub id: Option<(String, Span)>,
    pub description: Option<String>,
    pub entries: Vec<IpNet>,
    /// Each entry's description, where it has one (`{ cidr = ...,
    /// description = ... }`).
    pub entry_descriptions: std::collections::BTreeMap<IpNet, String>,
    /// AWS's `MaxEntries`, and where it is written: a rule referencing the
    /// list counts as this many rules, however many entries it holds now.
    /// Absent: its number of entries.
    pub max_entries: Option<(u32, Span)>,
    /// `tags`: AWS's tags, in the file's order.
    pub tags: Vec<(String, String)>,
    /// `version`: AWS's version of the list (the EC2 API counts its
    /// changes); absent: 1.
    pub version: Option<u64>,
    /// `address_family`: `Some(true)` for `"IPv6"`; absent: the entries'.
    pub ipv6: Option<bool>,
    pub span: Span,
}

impl PrefixList {
    /// Whether it holds IPv6 ranges (as `address_family` says, or its
    /// first entry).
    pub fn is_ipv6(&self) -> bool {
        self.ipv6
            .unwrap_or_else(|| matches!(self.entries.first(), Some(IpNet::V6(_))))
    }

    /// How many rules a reference to this list counts as: an AWS-managed
    /// list's weight (known by its name), else its maximum entries (AWS's
    /// `MaxEntries`), else its number of entries.
    pub fn weight(&self) -> usize {
        if let Some(w) = aws_managed_weight(&self.name) {
            return w;
        }
        self.max_entries
            .as_ref()
            .map_or(self.entries.len(), |(n, _)| *n as usize)
    }
}

/// The weight of an AWS-managed prefix list, by its name (VPC User Guide,
/// "AWS-managed prefix list weight"): what a rule referencing it counts as
/// in the rules quota, whatever its number of entries.
pub fn aws_managed_weight(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("com.amazonaws.")?;
    let (place, service) = rest.split_once('.')?;
    let global = place == "global";
    let weight = match (global, service.strip_prefix("ipv6.").unwrap_or(service)) {
        (true, "cloudfront.origin-facing") => 55,
        (true, "groundstation") => 5,
        (false, "s3" | "dynamodb") if !service.starts_with("ipv6.") => 1,
        (false, "s3express") if !service.starts_with("ipv6.") => 6,
        (false, "ec2-instance-connect") => 2,
        (false, "route53-healthchecks") => 25,
        (false, "vpc-lattice") => 10,
        _ => return None,
    };
    Some(weight)
}

#[derive(Clone, Debug)]
pub struct SecurityGroup {
    pub name: String,
    /// AWS's group id (`sg-` and 8 or 17 hex digits), kept by the importers
    /// and shown by `check`, `status` and flow logs; optional.
    pub id: Option<(String, Span)>,
    pub description: Option<String>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// `vpc`: the VPC it belongs to (`[[vpc]]`); `None`: the default one.
    pub vpc: Option<String>,
    /// `associated_vpcs`: the other VPCs (same Region and account) it is
    /// associated with (AWS's `AssociateSecurityGroupVpc`, 2024): their
    /// instances may use it, their groups may reference it.
    pub associated_vpcs: Vec<(String, Span)>,
    /// `tags`: AWS's tags, in the file's order.
    pub tags: Vec<(String, String)>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The direction's number in the data plane's keys.
    pub fn code(self) -> u8 {
        match self {
            Self::Ingress => sg_common::policy::INGRESS,
            Self::Egress => sg_common::policy::EGRESS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }

    /// The direction of the answers.
    #[must_use]
    pub fn other(self) -> Self {
        match self {
            Self::Ingress => Self::Egress,
            Self::Egress => Self::Ingress,
        }
    }
}

/// One `[[security_group.ingress]]` or `[[security_group.egress]]` table.
#[derive(Clone, Debug)]
pub struct Rule {
    /// AWS's rule id (`sgr-` and 17 hex digits), as Terraform's standalone
    /// rules carry it; optional.
    pub id: Option<(String, Span)>,
    pub protocol: Protocol,
    pub ports: Ports,
    pub sources: Vec<SourceRef>,
    pub description: Option<String>,
    /// `tags`: AWS's tags on the rule (a rule with several sources is
    /// several AWS rules, each with these tags).
    pub tags: Vec<(String, String)>,
    /// AWS's default egress rule, present because the group has no `egress` key.
    pub implicit: bool,
    pub span: Span,
}

/// `all` (AWS's -1) or one IP protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    All,
    Number(u8),
}

impl Protocol {
    pub fn matches(self, proto: u8) -> bool {
        match self {
            Self::All => true,
            Self::Number(n) => n == proto,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Number(1) => f.write_str("icmp"),
            Self::Number(6) => f.write_str("tcp"),
            Self::Number(17) => f.write_str("udp"),
            Self::Number(58) => f.write_str("icmpv6"),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

/// What part of the protocol's space a rule allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ports {
    /// Every port (protocol all, or a protocol without ports).
    All,
    /// Inclusive destination port range, TCP and UDP.
    Range { from: u16, to: u16 },
    /// ICMP type and code; `None` is AWS's -1, any.
    Icmp { ty: Option<u8>, code: Option<u8> },
}

impl Ports {
    /// The inclusive range of `Flow::policy_port` values this allows.
    pub fn port_interval(self) -> (u16, u16) {
        match self {
            Self::All | Self::Icmp { ty: None, .. } => (0, u16::MAX),
            Self::Range { from, to } => (from, to),
            Self::Icmp {
                ty: Some(t),
                code: None,
            } => (u16::from(t) << 8, u16::from(t) << 8 | 0xff),
            Self::Icmp {
                ty: Some(t),
                code: Some(c),
            } => {
                let v = u16::from(t) << 8 | u16::from(c);
                (v, v)
            }
        }
    }
}

impl std::fmt::Display for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Range { from, to } if from == to => write!(f, "{from}"),
            Self::Range { from, to } => write!(f, "{from}-{to}"),
            Self::Icmp { ty, code } => {
                let show = |v: &Option<u8>| v.map_or_else(|| "any".to_owned(), |v| v.to_string());
                write!(f, "type {} code {}", show(ty), show(code))
            }
        }
    }
}

/// A rule's source (ingress) or destination (egress).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    Cidr(IpNet),
    PrefixList(String),
    Group(String),
    /// `self = true`: the members of the rule's own group.
    SelfGroup,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cidr(net) => write!(f, "{net}"),
            Self::PrefixList(name) => write!(f, "prefix list {name}"),
            Self::Group(name) => write!(f, "group {name}"),
            Self::SelfGroup => f.write_str("self"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SourceRef {
    pub source: Source,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Instance {
    pub name: String,
    /// AWS's instance id (`i-`), kept by the importers; absent: one derived
    /// from the name (see `ec2::ids`).
    pub id: Option<(String, Span)>,
    /// `tags`: AWS's tags, in the file's order.
    pub tags: Vec<(String, String)>,
    pub addresses: Vec<IpAddr>,
    /// A libvirt domain's NIC with no `addresses` in the file: libvirt's
    /// are its own (the domain's `<ip>`, its network's DHCP reservation
    /// and leases), filled in by the agent as they change
    /// (`source::libvirt`); none yet, its programs let only DHCP through.
    pub addresses_from_libvirt: bool,
    /// Prefixes delegated to its interface (AWS's prefix delegation: IPv4
    /// /28, IPv6 /80): every address in them is the instance's, for the
    /// source/destination check and for group membership.
    pub prefixes: Vec<ipnet::IpNet>,
    pub groups: Vec<(String, Span)>,
    /// Where this host enforces it: its own interface, the host side of
    /// its link, or a libvirt domain's NIC; absent: the instance lives
    /// elsewhere and only counts as a group member.
    pub link: Option<Link>,
    /// Named network namespace (`ip netns add`) holding the interface.
    pub netns: Option<String>,
    /// `mac`: the instance's MAC address, which the host side checks on
    /// every frame it sends (see `sg_common::guard`); absent: learned from
    /// its first frame (a libvirt domain's comes from libvirt).
    pub mac: Option<MacAddr>,
    /// The host whose agent enforces it (`run --node NAME`); on every other
    /// host it counts only as a group member. Absent: enforced by an agent
    /// started without `--node`.
    pub node: Option<String>,
    /// AWS's source/destination check (on by default): the instance sends
    /// only from its own addresses and receives only for them. Off for a
    /// NAT or router instance.
    pub source_dest_check: bool,
    /// `[instance.conntrack]`: what this instance sets apart from the
    /// file-wide `[conntrack]` (AWS sets connection tracking per interface).
    pub conntrack: ConntrackOverrides,
    /// `instance_type` (e.g. `c8i.large`) and `nitro_version`: what decides
    /// AWS's default connection tracking for it.
    pub instance_type: Option<String>,
    pub nitro_version: Option<u8>,
    /// `vpc`: the VPC it is in (`[[vpc]]`); `None`: the default one.
    pub vpc: Option<String>,
    /// `subnet`: the subnet it is in, by name; absent: the one holding its
    /// address (if any).
    pub subnet: Option<(String, Span)>,
    pub span: Span,
}

/// AWS's default `TcpEstablishedTimeout` on Nitro v6 instance types.
pub const NITRO_V6_TCP_ESTABLISHED_TIMEOUT: u64 = 350;

/// `prefix-` and 17 hex digits from a hash of `parts`: the AWS id of what
/// the file gives none (stable across reloads, restarts and hosts reading
/// the same file).
pub fn derived_id(prefix: &str, parts: &[&str]) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(b"sg-agent id\0");
    h.update(prefix.as_bytes());
    for p in parts {
        h.update(b"\0");
        h.update(p.as_bytes());
    }
    let hex = super::hex(&h.finalize());
    format!("{prefix}-{}", &hex[..17])
}

impl Instance {
    /// Its AWS id: the file's `id`, or one derived from its name.
    pub fn aws_id(&self) -> String {
        self.id
            .as_ref()
            .map_or_else(|| derived_id("i", &[&self.name]), |(id, _)| id.clone())
    }
    /// The default established-TCP timeout AWS gives its instance type,
    /// when the file says enough to know it, and why: 350 s on Nitro v6
    /// (and later) types, except P6e-GB200 (AWS's
    /// `ConnectionTrackingConfiguration`: "350 seconds for Nitro v6
    /// instance types (excluding P6e-GB200)").
    pub fn type_tcp_established_timeout(&self) -> Option<(u64, &'static str)> {
        let family = self
            .instance_type
            .as_deref()
            .map(|t| t.split('.').next().unwrap_or(t));
        if family == Some("p6e-gb200") {
            return Some((432_000, "AWS default for P6e-GB200"));
        }
        (self.nitro_version? >= 6).then_some((NITRO_V6_TCP_ESTABLISHED_TIMEOUT, "Nitro v6 default"))
    }

    /// Whether `addr` is the instance's: one of its addresses, or in one of
    /// its delegated prefixes.
    pub fn owns(&self, addr: IpAddr) -> bool {
        self.addresses.contains(&addr) || self.prefixes.iter().any(|p| p.contains(&addr))
    }

    /// Its addresses as host prefixes, and its delegated prefixes.
    pub fn nets(&self) -> impl Iterator<Item = ipnet::IpNet> + '_ {
        self.addresses
            .iter()
            .map(|&a| ipnet::IpNet::from(a))
            .chain(self.prefixes.iter().copied())
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|(g, _)| g == group)
    }

    /// Whether this host enforces it.
    pub fn enforced_here(&self) -> bool {
        self.link.is_some()
    }
}

/// Which end of an instance's link this host enforces it on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    /// `interface`: the instance's own end of its link (the interface of
    /// its network namespace, or a VM's NIC seen from inside the guest).
    /// What enters it is the instance's inbound, what leaves it its
    /// outbound.
    Instance(String),
    /// `host_interface`: the host's end of the instance's link (a VM's
    /// tap, a container's host-side veth), where EC2's hypervisor enforces
    /// it and root inside the guest cannot lift it. What the host sends into
    /// it is the instance's inbound, what comes out of it the instance's
    /// outbound, checked at layer 2 too (`sg_common::guard`).
    Host(String),
    /// `libvirt_domain`: the host side of a running libvirt domain's NIC
    /// (its tap), found in libvirt's live domain state each time the domain
    /// starts; `mac` (`libvirt_mac`) picks one NIC of several.
    Libvirt {
        domain: String,
        mac: Option<MacAddr>,
    },
}

impl Link {
    /// Whether it is the host side of the instance's link.
    pub fn host_side(&self) -> bool {
        !matches!(self, Self::Instance(_))
    }

    /// The interface the file names (`None` for a libvirt domain's, found
    /// at run time).
    pub fn ifname(&self) -> Option<&str> {
        match self {
            Self::Instance(i) | Self::Host(i) => Some(i),
            Self::Libvirt { .. } => None,
        }
    }

    /// The rules file's key for it.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Instance(_) => "interface",
            Self::Host(_) => "host_interface",
            Self::Libvirt { .. } => "libvirt_domain",
        }
    }
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Instance(i) => f.write_str(i),
            Self::Host(i) => write!(f, "host side of {i}"),
            Self::Libvirt { domain, mac: None } => write!(f, "libvirt domain {domain}"),
            Self::Libvirt {
                domain,
                mac: Some(m),
            } => write!(f, "libvirt domain {domain} NIC {m}"),
        }
    }
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let octets: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        f.write_str(&octets.join(":"))
    }
}

impl std::str::FromStr for MacAddr {
    type Err = &'static str;

    /// Six hexadecimal octets separated by `:` (or `-`), as `ip link`
    /// and libvirt write them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let part = parts.next().ok_or("has fewer than six octets")?;
            if part.is_empty() || part.len() > 2 {
                return Err("is not six two-digit hexadecimal octets");
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| "is not hexadecimal")?;
        }
        if parts.next().is_some() {
            return Err("has more than six octets");
        }
        Ok(Self(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse()
            .map_err(|why| serde::de::Error::custom(format!("MAC address {text:?} {why}")))
    }
}

impl MacAddr {
    /// Whether it can be a NIC's own address: not a group (multicast or
    /// broadcast) address, not all zeros.
    pub fn is_unicast(self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl Vpc {
    /// The description as the agent of `node` enforces it (`None`: an agent
    /// started without `--node`): instances of other nodes stay, as group
    /// members only (their interface and namespace are another host's).
    pub fn select_node(&mut self, node: Option<&str>) {
        for inst in &mut self.instances {
            if inst.node.as_deref() != node {
                inst.link = None;
                inst.netns = None;
            }
        }
    }
}

/// AWS's quotas, adjustable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Inbound and outbound counted separately; one per source, a prefix
    /// list counting as its number of entries.
    pub rules_per_group: u32,
    pub groups_per_instance: u32,
    /// AWS's "Rules per network ACL" (per direction): 20, adjustable to 40.
    pub rules_per_network_acl: u32,
    /// Lifts AWS's ceilings (1,000 rules per group; rules x groups at most
    /// 1,000 per interface): for labs and benchmarks larger than AWS allows.
    pub beyond_aws: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rules_per_group: 60,
            groups_per_instance: 5,
            rules_per_network_acl: 20,
            beyond_aws: false,
        }
    }
}

/// An instance's connection tracking, named after AWS's
/// `ConnectionTrackingSpecification`: timeouts in seconds, and the
/// connection allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// Tracked flows the instance may hold at once; a new tracked flow past
    /// it is dropped (AWS's `conntrack_allowance_exceeded`).
    pub max_tracked_connections: u32,
    pub tcp_established_timeout: u64,
    pub udp_timeout: u64,
    pub udp_stream_timeout: u64,
}

impl Default for ConntrackSettings {
    fn default() -> Self {
        Self {
            max_tracked_connections: sg_common::maps::CONNS_DEFAULT_ENTRIES,
            tcp_established_timeout: 432_000,
            udp_timeout: 30,
            udp_stream_timeout: 180,
        }
    }
}

impl ConntrackSettings {
    /// These settings with what `o` sets in their place.
    #[must_use]
    pub fn with(self, o: ConntrackOverrides) -> Self {
        Self {
            max_tracked_connections: o
                .max_tracked_connections
                .unwrap_or(self.max_tracked_connections),
            tcp_established_timeout: o
                .tcp_established_timeout
                .unwrap_or(self.tcp_established_timeout),
            udp_timeout: o.udp_timeout.unwrap_or(self.udp_timeout),
            udp_stream_timeout: o.udp_stream_timeout.unwrap_or(self.udp_stream_timeout),
        }
    }
}

/// The keys a `[conntrack]` table sets; `None`: not set there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConntrackOverrides {
    pub max_tracked_connections: Option<u32>,
    pub tcp_established_timeout: Option<u64>,
    pub udp_timeout: Option<u64>,
    pub udp_stream_timeout: Option<u64>,
}

/// One VPC of `[[vpc]]`.
#[derive(Clone, Debug)]
pub struct VpcDecl {
    pub name: String,
    pub cidr_blocks: Vec<IpNet>,
    /// `region`: its Region (absent: the file's one Region).
    pub region: Option<String>,
    /// `account`: its owner's account id (absent: the file's one account).
    pub account: Option<String>,
    pub span: Span,
}

/// `[[transit_gateway]]`: a transit gateway and its VPC attachments.
#[derive(Clone, Debug)]
pub struct TransitGateway {
    pub name: String,
    /// `security_group_referencing` (AWS: disabled unless enabled).
    pub referencing: bool,
    /// Each attached VPC, and whether its attachment carries group
    /// references (AWS: enabled unless disabled).
    pub attachments: Vec<(String, bool)>,
    pub span: Span,
}

/// A service whose connections AWS tracks whatever the rules say (EC2
/// User Guide, "Automatically tracked connections"): every flow whose
/// remote end is one of its addresses gets a connection-table entry, so a
/// connection through it lives on when its rule goes.
#[derive(Clone, Debug)]
pub struct TrackedService {
    pub name: String,
    pub kind: ServiceKind,
    pub addresses: Vec<IpNet>,
    /// A Network Load Balancer's TCP idle timeout (AWS: 350 s, 60 to 6,000).
    pub tcp_idle_timeout: u64,
    pub span: Span,
}

/// The services AWS lists as automatically tracked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    EgressOnlyInternetGateway,
    GatewayLoadBalancer,
    GlobalAccelerator,
    NatGateway,
    NetworkFirewall,
    NetworkLoadBalancer,
    InterfaceEndpoint,
    TransitGatewayAttachment,
    LambdaHyperplane,
    DynamodbGatewayEndpoint,
}

impl ServiceKind {
    pub const ALL: [Self; 10] = [
        Self::EgressOnlyInternetGateway,
        Self::GatewayLoadBalancer,
        Self::GlobalAccelerator,
        Self::NatGateway,
        Self::NetworkFirewall,
        Self::NetworkLoadBalancer,
        Self::InterfaceEndpoint,
        Self::TransitGatewayAttachment,
        Self::LambdaHyperplane,
        Self::DynamodbGatewayEndpoint,
    ];

    /// The name the rules file uses (`type = "..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EgressOnlyInternetGateway => "egress_only_internet_gateway",
            Self::GatewayLoadBalancer => "gateway_load_balancer",
            Self::GlobalAccelerator => "global_accelerator",
            Self::NatGateway => "nat_gateway",
            Self::NetworkFirewall => "network_firewall",
            Self::NetworkLoadBalancer => "network_load_balancer",
            Self::InterfaceEndpoint => "interface_endpoint",
            Self::TransitGatewayAttachment => "transit_gateway_attachment",
            Self::LambdaHyperplane => "lambda_hyperplane",
            Self::DynamodbGatewayEndpoint => "dynamodb_gateway_endpoint",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Network Load Balancer's UDP idle timeout (AWS: 120 s, not adjustable).
pub const NLB_UDP_IDLE_TIMEOUT: u64 = sg_common::policy::NLB_UDP_TIMEOUT_S as u64;
/// A Network Load Balancer's default TCP idle timeout.
pub const NLB_TCP_IDLE_TIMEOUT: u64 = 350;

impl TrackedService {
    /// The data plane's flags for an address entry inside this service's
    /// addresses: always tracked; a `DynamoDB` gateway endpoint's connections
    /// take two entries of the allowance; a Network Load Balancer's idle
    /// out after its own timeouts.
    pub fn flags(&self) -> u32 {
        use sg_common::policy::{
            CLASS_AUTO_TRACKED, CLASS_NLB_TIMEOUTS, CLASS_SERVICE_TIMEOUT_SHIFT, CLASS_TWO_ENTRIES,
        };
        let mut flags = CLASS_AUTO_TRACKED;
        if self.allowance_entries() == 2 {
            flags |= CLASS_TWO_ENTRIES;
        }
        if let Some((tcp, _)) = self.timeouts() {
            let seconds = u32::try_from(tcp).unwrap_or(u32::MAX) & 0xffff;
            flags |= CLASS_NLB_TIMEOUTS | seconds << CLASS_SERVICE_TIMEOUT_SHIFT;
        }
        flags
    }

    /// Entries of the connection allowance each connection takes (AWS: two
    /// through a `DynamoDB` gateway endpoint).
    pub fn allowance_entries(&self) -> u32 {
        if self.kind == ServiceKind::DynamodbGatewayEndpoint {
            2
        } else {
            1
        }
    }

    /// Its idle timeouts (TCP, UDP), when they are not the instance's.
    pub fn timeouts(&self) -> Option<(u64, u64)> {
        (self.kind == ServiceKind::NetworkLoadBalancer)
            .then_some((self.tcp_idle_timeout, NLB_UDP_IDLE_TIMEOUT))
    }
}

impl Vpc {
    /// The default VPC's name: the first `[[vpc]]`'s, or "" for the single
    /// unnamed one.
    pub fn default_vpc(&self) -> &str {
        self.vpcs.first().map_or("", |v| v.name.as_str())
    }

    /// The VPC a group belongs to.
    pub fn vpc_of_group<'a>(&'a self, g: &'a SecurityGroup) -> &'a str {
        g.vpc.as_deref().unwrap_or_else(|| self.default_vpc())
    }

    /// The VPC an instance is in.
    pub fn vpc_of_instance<'a>(&'a self, i: &'a Instance) -> &'a str {
        i.vpc.as_deref().unwrap_or_else(|| self.default_vpc())
    }

    /// Whether VPCs `a` and `b` are one, or peered.
    pub fn peered(&self, a: &str, b: &str) -> bool {
        a == b
            || self
                .peerings
                .iter()
                .any(|(x, y)| (x == a && y == b) || (x == b && y == a))
    }

    /// The VPCs a group is in: its own, and those it is associated with.
    pub fn vpcs_of_group<'a>(&'a self, g: &'a SecurityGroup) -> impl Iterator<Item = &'a str> {
        std::iter::once(self.vpc_of_group(g))
            .chain(g.associated_vpcs.iter().map(|(v, _)| v.as_str()))
    }

    /// A VPC's Region (`""`: the file's one Region).
    pub fn region_of(&self, vpc: &str) -> &str {
        self.vpcs
            .iter()
            .find(|v| v.name == vpc)
            .and_then(|v| v.region.as_deref())
            .unwrap_or("")
    }

    /// A VPC's owner account (`""`: the file's one account).
    pub fn account_of(&self, vpc: &str) -> &str {
        self.vpcs
            .iter()
            .find(|v| v.name == vpc)
            .and_then(|v| v.account.as_deref())
            .unwrap_or("")
    }

    /// How VPC `a` reaches VPC `b` for a group reference, as AWS decides
    /// it: `Ok` where the reference holds, else why it is stale.
    fn reference_path(&self, a: &str, b: &str, direction: Direction) -> Result<(), String> {
        if a == b {
            return Ok(());
        }
        let cross_region = self.region_of(a) != self.region_of(b);
        if self.peered(a, b) {
            if cross_region {
                return Err(format!(
                    "VPCs {a} and {b} are peered across Regions, and a cross-Region peering \
                     carries no group references (AWS)"
                ));
            }
            return Ok(());
        }
        let mut why = None;
        for t in &self.transit_gateways {
            let attached = |v: &str| {
                t.attachments
                    .iter()
                    .find(|(n, _)| n == v)
                    .map(|(_, on)| *on)
            };
            let (Some(on_a), Some(on_b)) = (attached(a), attached(b)) else {
                continue;
            };
            why = Some(if !t.referencing {
                format!(
                    "transit gateway {} joins VPCs {a} and {b} without security_group_referencing \
                     (AWS's default: off)",
                    t.name
                )
            } else if !(on_a && on_b) {
                format!(
                    "an attachment of transit gateway {} has security_group_referencing off",
                    t.name
                )
            } else if direction == Direction::Egress {
                format!(
                    "VPCs {a} and {b} are joined by transit gateway {}, which carries group \
                     references in inbound rules only (AWS)",
                    t.name
                )
            } else {
                return Ok(());
            });
        }
        Err(why.unwrap_or_else(|| format!("VPC {b} is not peered with VPC {a}")))
    }

    /// Why a `direction` rule of group `from` that references group `to`
    /// is stale, if it is: no VPC of `from` reaches a VPC of `to` the way
    /// AWS carries group references (the same VPC or one it is associated
    /// with, a peering in one Region, a transit gateway with referencing
    /// on, for inbound rules). AWS keeps such a rule; it matches nothing.
    pub fn stale_reference(&self, from: &str, to: &str, direction: Direction) -> Option<String> {
        if self.vpcs.len() < 2 {
            return None;
        }
        let (from, to) = (self.group(from)?, self.group(to)?);
        let mut why = None;
        for a in self.vpcs_of_group(from) {
            for b in self.vpcs_of_group(to) {
                match self.reference_path(a, b, direction) {
                    Ok(()) => return None,
                    Err(e) => {
                        why.get_or_insert(e);
                    }
                }
            }
        }
        why.map(|why| format!("group {}: {why}: stale, matches nothing", to.name))
    }

    /// The automatically tracked service `addr` belongs to, if any (the
    /// first the file declares, when several claim it).
    pub fn tracked_service(&self, addr: IpAddr) -> Option<&TrackedService> {
        self.tracked_service_of_net(&IpNet::from(addr))
    }

    /// The first automatically tracked service whose addresses contain
    /// all of `net`.
    pub fn tracked_service_of_net(&self, net: &IpNet) -> Option<&TrackedService> {
        self.tracked_services
            .iter()
            .find(|s| s.addresses.iter().any(|n| n.contains(net)))
    }

    pub fn group(&self, name: &str) -> Option<&SecurityGroup> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// What security groups never filter, by address, with a name for
    /// each: link-local 169.254.0.0/16 (instance metadata, Amazon DNS at
    /// 169.254.169.253, Time Sync, ECS task metadata, Windows activation),
    /// the IPv6 services at `fd00:ec2::253`, `::254`, `::123`, Amazon DNS at
    /// the primary IPv4 range's base plus two, and the five addresses AWS
    /// reserves in each IPv4 subnet (`[[subnet]]`, or each IPv4 VPC range
    /// when none is declared): its network address, the VPC router (+1),
    /// DNS (+2), one for future use (+3) and the last.
    pub fn aws_services(&self) -> Vec<(IpNet, &'static str)> {
        let fixed: [(&str, &str); 4] = [
            (
                "169.254.0.0/16",
                "link-local (metadata, DNS, Time Sync, ECS task metadata...)",
            ),
            ("fd00:ec2::253/128", "Amazon DNS (IPv6)"),
            ("fd00:ec2::254/128", "instance metadata (IPv6)"),
            ("fd00:ec2::123/128", "Amazon Time Sync (IPv6)"),
        ];
        let mut out: Vec<(IpNet, &'static str)> = fixed
            .iter()
            .map(|(a, n)| (a.parse().expect("constant prefix"), *n))
            .collect();
        let host = |base: u32, plus: u32| {
            IpNet::V4(ipnet::Ipv4Net::from(std::net::Ipv4Addr::from(
                base.wrapping_add(plus),
            )))
        };
        if let Some(IpNet::V4(primary)) = self.cidr_blocks.iter().find(|n| n.addr().is_ipv4()) {
            out.push((
                host(u32::from(primary.network()), 2),
                "Amazon DNS (VPC base + 2)",
            ));
        }
        let subnets: Vec<&IpNet> = if self.subnets.is_empty() {
            self.cidr_blocks.iter().collect()
        } else {
            self.subnets.iter().map(|s| &s.cidr).collect()
        };
        for net in subnets {
            let IpNet::V4(n) = net else { continue };
            let base = u32::from(n.network());
            let last = u32::from(n.broadcast());
            for (plus, name) in [
                (0, "subnet network address (reserved)"),
                (1, "VPC router (reserved)"),
                (2, "subnet DNS (reserved)"),
                (3, "reserved for future use"),
            ] {
                out.push((host(base, plus), name));
            }
            out.push((host(last, 0), "subnet last address (reserved)"));
        }
        let mut seen = std::collections::BTreeSet::new();
        out.retain(|(net, _)| seen.insert(*net));
        out
    }

    /// The name of what security groups never filter at `addr`, if any
    /// ([`Vpc::aws_services`]).
    pub fn aws_service_at(&self, addr: IpAddr) -> Option<&'static str> {
        self.aws_services()
            .into_iter()
            .find(|(net, _)| net.contains(&addr))
            .map(|(_, name)| name)
    }

    /// The connection tracking in force on `inst`: the file-wide
    /// `[conntrack]`, overridden by its own `[instance.conntrack]`.
    pub fn conntrack_of(&self, inst: &Instance) -> ConntrackSettings {
        let type_default = ConntrackOverrides {
            tcp_established_timeout: inst.type_tcp_established_timeout().map(|(t, _)| t),
            ..ConntrackOverrides::default()
        };
        ConntrackSettings::default()
            .with(type_default)
            .with(self.conntrack_set)
            .with(inst.conntrack)
    }

    /// Where each of `inst`'s three timeouts comes from (established TCP,
    /// UDP, UDP stream): its `[instance.conntrack]`, the file-wide
    /// `[conntrack]`, its instance type's default, or AWS's default.
    pub fn conntrack_sources(&self, inst: &Instance) -> [&'static str; 3] {
        let source = |instance: bool, file: bool, by_type: Option<&'static str>| {
            if instance {
                "[instance.conntrack]"
            } else if file {
                "[conntrack]"
            } else {
                by_type.unwrap_or("AWS default")
            }
        };
        [
            source(
                inst.conntrack.tcp_established_timeout.is_some(),
                self.conntrack_set.tcp_established_timeout.is_some(),
                inst.type_tcp_established_timeout().map(|(_, why)| why),
            ),
            source(
                inst.conntrack.udp_timeout.is_some(),
                self.conntrack_set.udp_timeout.is_some(),
                None,
            ),
            source(
                inst.conntrack.udp_stream_timeout.is_some(),
                self.conntrack_set.udp_stream_timeout.is_some(),
                None,
            ),
        ]
    }

    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name == name)
    }

    pub fn prefix_list(&self, name: &str) -> Option<&PrefixList> {
        self.prefix_lists.iter().find(|p| p.name == name)
    }
}

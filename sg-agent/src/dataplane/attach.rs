//! Putting an instance's programs on its interface, through BPF links that
//! are pinned (so they outlive the agent) and adopted by the next agent
//! (`BPF_LINK_UPDATE` swaps the program on a live link: no gap).

use std::path::PathBuf;

use aya::{
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, SchedClassifierLink, TcError},
        xdp::XdpLink,
    },
    util::KernelVersion,
};

use super::{
    Dataplane, DataplaneError, EGRESS_HOST_PROGRAM, EGRESS_PROGRAM, INGRESS_PROGRAM,
    INGRESS_TC_PROGRAM,
    netns::NetnsGuard,
    pins::{Hook, InstancePins, PlaceId, place_here},
    program, variant,
};

/// Where inbound packets are judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IngressHook {
    /// Chosen per interface by its driver: TC ingress on veth and the other
    /// virtual drivers ([`super::driver::VIRTUAL_DRIVERS`]), where native
    /// XDP costs more than it saves; native XDP on a NIC whose driver has
    /// it; TC ingress on one that has not (generic XDP costs more than TC).
    #[default]
    Auto,
    /// XDP in the driver where it has XDP support, generic otherwise: the
    /// earliest and cheapest point, before the kernel builds an skb.
    XdpNative,
    /// XDP in generic (skb) mode, after the kernel has built the skb.
    XdpGeneric,
    /// TC ingress (TCX), after GRO. On veth, native XDP copies every packet
    /// and generic XDP linearises GRO'd ones, which costs a bulk TCP flow
    /// most (native) or some (generic) of its throughput; TC sees the
    /// packets as the stack does and costs it next to nothing. On veth it
    /// drops a flood for less CPU than XDP too (veth copies each packet for
    /// XDP); on a NIC's driver, XDP drops before any skb exists.
    Tc,
}

/// Which end of the instance's link the programs sit on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The instance's own interface: inbound enters it (XDP or TC
    /// ingress), outbound leaves it (TC egress).
    #[default]
    Instance,
    /// The host's end of the instance's link (a VM's tap, a container's
    /// host veth): the directions reverse. What the host sends into it is
    /// the instance's inbound (TC egress), what comes out of it the
    /// instance's outbound (TC ingress), where its frames are also checked
    /// at layer 2 (`sg_common::guard`).
    Host,
}

/// Where the programs are attached and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub ifname: String,
    pub netns: Option<String>,
    pub side: Side,
    /// The namespace and interface identity when attached.
    pub place: PlaceId,
    /// The hook that judges the instance's inbound: "XDP (driver mode)",
    /// "XDP (generic mode)", "TC" or "TC egress of the host side".
    pub ingress: &'static str,
    /// Why that hook: the option that asked for it, or what `auto` found.
    pub ingress_reason: String,
    /// Whether links left by an earlier agent were adopted (their program
    /// replaced in place) rather than attached anew.
    pub adopted: bool,
}

/// A link this data plane holds: dropping it closes its descriptor, which
/// detaches the program unless the link is pinned.
pub(super) struct HeldLink {
    hook: Hook,
    place: PlaceId,
    pin: Option<PathBuf>,
    link: FdLink,
}

impl super::Dataplane {
    /// The links this data plane holds: (hook, link id, program id), as
    /// `bpftool link` shows them.
    pub fn links(&self) -> Vec<(&'static str, u32, u32)> {
        self.links
            .iter()
            .filter_map(|l| {
                let info = l.link.info().ok()?;
                Some((l.hook.as_str(), info.id(), info.program_id()))
            })
            .collect()
    }
}

impl super::Dataplane {
    /// Whether every link it holds still has its program on its hook: false
    /// when someone took one off (another agent, `bpftool link detach`).
    pub fn links_attached(&self) -> bool {
        !self.links.is_empty() && self.links.iter().all(HeldLink::attached)
    }

    /// Takes every program it holds off its hook now (and the links'
    /// pins); the maps stay, for when it is attached again.
    pub fn detach_links(&mut self) {
        for link in self.links.drain(..) {
            link.detach();
        }
    }

    /// Lets go of the links whose program someone took off their hook (and
    /// of their pins), so that attaching again makes new ones: how many.
    pub fn drop_detached_links(&mut self) -> usize {
        let (live, dead): (Vec<HeldLink>, Vec<HeldLink>) =
            self.links.drain(..).partition(HeldLink::attached);
        self.links = live;
        let n = dead.len();
        for link in dead {
            link.detach();
        }
        n
    }

    /// Whether every link it holds is pinned where it pinned it (what
    /// outlives the agent): false when a pin is gone, or it pins nothing.
    pub fn links_pinned(&self) -> bool {
        self.pins.is_some()
            && !self.links.is_empty()
            && self
                .links
                .iter()
                .all(|l| l.pin.as_ref().is_some_and(|p| p.exists()))
    }
}

impl HeldLink {
    pub(super) fn hook(&self) -> Hook {
        self.hook
    }

    /// Puts `prog` on this live link in place of its program.
    pub(super) fn swap_program(&self, prog: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
        let id = self.link.info().map_err(std::io::Error::other)?.id();
        super::sys::link_update(&super::sys::link_by_id(id)?, prog)
    }

    /// Whether its program is still on its hook (an error reading it is
    /// taken as yes: only a link seen detached is let go).
    fn attached(&self) -> bool {
        self.link
            .info()
            .ok()
            .is_none_or(|info| super::detach::attached(info.id()).unwrap_or(true))
    }

    pub(super) fn moved_to(&mut self, pins: &InstancePins) {
        if self.pin.is_some() {
            self.pin = Some(pins.link(self.hook, self.place));
        }
    }

    /// Takes the program off its hook now, then unpins (if pinned) and
    /// drops (closing alone leaves it attached while anyone else holds the
    /// link: see [`super::detach`]).
    pub(super) fn detach(self) {
        match self.link.info() {
            Ok(info) => {
                if let Err(e) = super::detach::by_id(info.id()) {
                    log::warn!("detaching link {}: {e}", info.id());
                }
            }
            Err(e) => log::warn!("detaching a link: reading its id: {e}"),
        }
        if let Some(pin) = &self.pin
            && let Err(e) = std::fs::remove_file(pin)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("removing the pin {}: {e}", pin.display());
        }
    }
}

/// Detaches the link pinned at `path` now and removes the pin.
pub(super) fn remove_pinned_link(path: &std::path::Path) {
    if let Err(e) = super::detach::by_pin(path) {
        log::warn!("detaching the link pinned at {}: {e}", path.display());
    }
    let _ = std::fs::remove_file(path);
}

/// The classifier a TC hook runs, and where it is attached: the inbound
/// program at the own interface's ingress or the host side's egress, the
/// outbound program at the own interface's egress or the host side's
/// ingress.
/// The program (of the four kinds) `hook` runs.
pub(super) fn hook_program(hook: Hook) -> &'static str {
    match hook {
        Hook::XdpNative | Hook::XdpGeneric => INGRESS_PROGRAM,
        tc => tc_program(tc).0,
    }
}

fn tc_program(hook: Hook) -> (&'static str, TcAttachType) {
    match hook {
        Hook::TcIngress => (INGRESS_TC_PROGRAM, TcAttachType::Ingress),
        Hook::HostTcEgress => (INGRESS_TC_PROGRAM, TcAttachType::Egress),
        Hook::HostTcIngress => (EGRESS_HOST_PROGRAM, TcAttachType::Ingress),
        Hook::TcEgress | Hook::XdpNative | Hook::XdpGeneric => {
            (EGRESS_PROGRAM, TcAttachType::Egress)
        }
    }
}

fn tcx_available() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

impl Dataplane {
    /// Attaches the programs to `ifname`, inside `netns` when given: on the
    /// instance's own interface, the inbound program (XDP or TC ingress, as
    /// `hook` says) and TC egress; on the host side of its link, the
    /// inbound program at TC egress and the outbound one at TC ingress
    /// (`hook` does not apply). Links pinned there by an earlier agent are
    /// adopted: their program is replaced in place. Links this data plane
    /// held elsewhere (the instance moved) are detached only once the new
    /// ones are in place.
    pub fn attach(
        &mut self,
        ifname: &str,
        netns: Option<&str>,
        hook: IngressHook,
        side: Side,
    ) -> Result<&Attachment, DataplaneError> {
        let _guard = NetnsGuard::enter_opt(netns)?;
        let place = place_here(ifname).map_err(|source| DataplaneError::Interface {
            ifname: ifname.to_owned(),
            netns: netns.map(str::to_owned),
            source,
        })?;
        let attach_err = |source| DataplaneError::Attach {
            ifname: ifname.to_owned(),
            netns: netns.map(str::to_owned),
            source: Box::new(source),
        };
        if let Some(other) = self.foreign_enforcer(place, ifname) {
            return Err(DataplaneError::ForeignAgent {
                ifname: ifname.to_owned(),
                netns: netns.map(str::to_owned),
                other,
            });
        }
        // Kernels without TCX attach classifiers under the clsact qdisc.
        if !tcx_available() {
            match tc::qdisc_add_clsact(ifname) {
                Ok(()) => {}
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(DataplaneError::Qdisc {
                        ifname: ifname.to_owned(),
                        source: Box::new(source),
                    });
                }
            }
        }
        let (inbound, outbound, ingress_reason, adopted) = match side {
            Side::Instance => {
                let (inbound, reason, mut adopted) =
                    self.link_ingress(hook, place, ifname, netns)?;
                adopted |= self
                    .link(Hook::TcEgress, place, ifname)
                    .map_err(attach_err)?;
                (inbound, Hook::TcEgress, reason, adopted)
            }
            Side::Host => {
                // Outbound first: from the moment the instance's inbound
                // is judged, what it sends is too.
                let mut adopted = self
                    .link(Hook::HostTcIngress, place, ifname)
                    .map_err(attach_err)?;
                adopted |= self
                    .link(Hook::HostTcEgress, place, ifname)
                    .map_err(attach_err)?;
                (
                    Hook::HostTcEgress,
                    Hook::HostTcIngress,
                    "inbound at TC egress, outbound at TC ingress".to_owned(),
                    adopted,
                )
            }
        };
        self.retain_links(&[(inbound, place), (outbound, place)]);
        // Flows the replaced programs opened until now, then their tables go.
        self.carry_over_connections()?;
        self.remove_foreign_pins();
        Ok(self.attachment.insert(Attachment {
            ifname: ifname.to_owned(),
            netns: netns.map(str::to_owned),
            side,
            place,
            ingress: inbound.inbound_label(),
            ingress_reason,
            adopted,
        }))
    }

    /// Once this build's programs are on the links, maps an earlier version
    /// pinned under other names are used by nothing: unpinned, with what
    /// was lost.
    fn remove_foreign_pins(&self) {
        let Some(pins) = &self.pins else {
            return;
        };
        for path in pins.foreign() {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match std::fs::remove_file(&path) {
                Ok(()) if super::conns::carried_over(&name) => log::info!(
                    "{}: replaced, its tracked connections carried over",
                    path.display()
                ),
                Ok(()) => log::warn!(
                    "{}: a map of an earlier sg-agent, not used by this one: removed, losing {}",
                    path.display(),
                    sg_common::maps::lost_with(&name)
                ),
                Err(e) => log::warn!("{}: {e}", path.display()),
            }
        }
    }

    /// Puts the inbound program where `hook` says (for `auto`, where the
    /// interface's driver says): the hook, why it was chosen, and whether a
    /// pinned link was adopted.
    fn link_ingress(
        &mut self,
        hook: IngressHook,
        place: PlaceId,
        ifname: &str,
        netns: Option<&str>,
    ) -> Result<(Hook, String, bool), DataplaneError> {
        let attach_err = |source| DataplaneError::Attach {
            ifname: ifname.to_owned(),
            netns: netns.map(str::to_owned),
            source: Box::new(source),
        };
        let mut adopted = false;
        let (ingress, reason) = match hook {
            IngressHook::Tc => {
                adopted |= self.link_tc_ingress(place, ifname, netns)?;
                (Hook::TcIngress, "--ingress-hook tc".to_owned())
            }
            IngressHook::XdpGeneric => {
                self.drop_other_xdp(Hook::XdpGeneric, place);
                adopted |= self
                    .link(Hook::XdpGeneric, place, ifname)
                    .map_err(attach_err)?;
                (Hook::XdpGeneric, "--xdp-mode generic".to_owned())
            }
            IngressHook::XdpNative => {
                // An earlier agent that fell back to generic mode left that.
                let generic_pinned = self
                    .pins
                    .as_ref()
                    .is_some_and(|p| p.link(Hook::XdpGeneric, place).exists());
                if generic_pinned && !self.holds(Hook::XdpNative, place) {
                    adopted |= self
                        .link(Hook::XdpGeneric, place, ifname)
                        .map_err(attach_err)?;
                    (
                        Hook::XdpGeneric,
                        "--ingress-hook xdp: generic mode, as pinned by an earlier agent"
                            .to_owned(),
                    )
                } else {
                    match self.link(Hook::XdpNative, place, ifname) {
                        Ok(a) => {
                            adopted |= a;
                            (Hook::XdpNative, "--ingress-hook xdp".to_owned())
                        }
                        Err(e) => {
                            adopted |= self
                                .link(Hook::XdpGeneric, place, ifname)
                                .map_err(attach_err)?;
                            (
                                Hook::XdpGeneric,
                                format!("--ingress-hook xdp: native XDP not available ({e})"),
                            )
                        }
                    }
                }
            }
            IngressHook::Auto => match super::driver::driver_of(ifname) {
                Ok(driver) if super::driver::VIRTUAL_DRIVERS.contains(&driver.as_str()) => {
                    adopted |= self.link_tc_ingress(place, ifname, netns)?;
                    let why = if driver == "veth" {
                        "native XDP on veth copies every packet (TC keeps TCP throughput)"
                    } else {
                        "a virtual interface: native XDP saves nothing there"
                    };
                    (Hook::TcIngress, format!("auto: driver {driver}, {why}"))
                }
                Ok(driver) => match self.link(Hook::XdpNative, place, ifname) {
                    Ok(a) => {
                        adopted |= a;
                        (
                            Hook::XdpNative,
                            format!("auto: driver {driver} runs XDP natively"),
                        )
                    }
                    Err(e) => {
                        adopted |= self.link_tc_ingress(place, ifname, netns)?;
                        (
                            Hook::TcIngress,
                            format!(
                                "auto: driver {driver} has no native XDP ({e}); TC costs less than generic XDP"
                            ),
                        )
                    }
                },
                Err(e) => {
                    adopted |= self.link_tc_ingress(place, ifname, netns)?;
                    (
                        Hook::TcIngress,
                        format!("auto: the driver is unknown ({e})"),
                    )
                }
            },
        };
        Ok((ingress, reason, adopted))
    }

    /// The inbound program at TC ingress, loaded on first use.
    fn link_tc_ingress(
        &mut self,
        place: PlaceId,
        ifname: &str,
        netns: Option<&str>,
    ) -> Result<bool, DataplaneError> {
        self.load_ingress_tc()?;
        self.link(Hook::TcIngress, place, ifname)
            .map_err(|source| DataplaneError::Attach {
                ifname: ifname.to_owned(),
                netns: netns.map(str::to_owned),
                source: Box::new(source),
            })
    }

    /// Another agent enforcing the interface at `place` (the current
    /// thread is in its namespace): sg-agent's programs attached there by
    /// TCX that no pin of this agent's state directory holds. Named by the
    /// state directory whose pins hold them, when found under bpffs.
    fn foreign_enforcer(&self, place: PlaceId, ifname: &str) -> Option<String> {
        use aya::programs::{SchedClassifier, TcAttachType};
        if self.links.iter().any(|l| l.place == place) || !tcx_available() {
            return None;
        }
        let root = self.pins.as_ref()?.state_root()?;
        if super::pins::pins_place(root, place) {
            return None;
        }
        let ours = |name: &str| {
            [
                super::INGRESS_PROGRAM,
                super::EGRESS_PROGRAM,
                super::EGRESS_HOST_PROGRAM,
                super::INGRESS_TC_PROGRAM,
            ]
            .iter()
            .any(|p| name.starts_with(p))
        };
        let attached = [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            .filter_map(|t| SchedClassifier::query_tcx(ifname, t).ok())
            .flat_map(|(_, progs)| progs)
            .any(|p| p.name_as_str().is_some_and(ours));
        if !attached {
            return None;
        }
        let bpffs = root.parent()?;
        let other = std::fs::read_dir(bpffs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|d| d.path())
            .find(|d| d != root && d.is_dir() && super::pins::pins_place(d, place));
        Some(other.map_or_else(
            || "another sg-agent (no state directory under bpffs pins it: one running without pins)".to_owned(),
            |d| format!("the sg-agent with state directory {}", d.display()),
        ))
    }

    fn holds(&self, hook: Hook, place: PlaceId) -> bool {
        self.links
            .iter()
            .any(|l| l.hook == hook && l.place == place)
    }

    /// Puts `hook`'s program on the interface at `place` (the current
    /// thread is in its namespace): nothing to do if held already; a link
    /// pinned there is adopted (its program replaced in place, returns
    /// true); otherwise a new link, pinned when this data plane pins.
    fn link(
        &mut self,
        hook: Hook,
        place: PlaceId,
        ifname: &str,
    ) -> Result<bool, aya::programs::ProgramError> {
        if self.holds(hook, place) {
            return Ok(false);
        }
        let pin = self.pins.as_ref().map(|p| p.link(hook, place));
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            match self.adopt_link(hook, pin) {
                Ok(link) => {
                    self.links.push(HeldLink {
                        hook,
                        place,
                        pin: Some(pin.clone()),
                        link,
                    });
                    return Ok(true);
                }
                Err(e) => {
                    log::warn!(
                        "{ifname}: the link pinned at {} cannot be adopted ({e}); attaching anew",
                        pin.display()
                    );
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
        let link = self.new_link(hook, ifname)?;
        let link = match &pin {
            Some(path) => match link.pin(path) {
                Ok(pinned) => FdLink::from(pinned),
                Err(e) => {
                    // Attached, but it would not outlive the agent: say so.
                    log::error!(
                        "{ifname}: pinning the link at {} failed ({e}); it detaches when sg-agent exits",
                        path.display()
                    );
                    return Err(aya::programs::ProgramError::IOError(std::io::Error::other(
                        e.to_string(),
                    )));
                }
            },
            None => link,
        };
        self.links.push(HeldLink {
            hook,
            place,
            pin,
            link,
        });
        Ok(false)
    }

    fn new_link(
        &mut self,
        hook: Hook,
        ifname: &str,
    ) -> Result<FdLink, aya::programs::ProgramError> {
        let invalid = |e: LinkError| {
            aya::programs::ProgramError::IOError(std::io::Error::other(e.to_string()))
        };
        match hook {
            Hook::XdpNative | Hook::XdpGeneric => {
                let mode = if hook == Hook::XdpNative {
                    XdpMode::Driver
                } else {
                    XdpMode::Skb
                };
                self.load_ingress_xdp()
                    .map_err(|e| aya::programs::ProgramError::IOError(std::io::Error::other(e)))?;
                let xdp = program::<Xdp>(&mut self.ebpf, variant(INGRESS_PROGRAM, self.variant));
                let id = xdp.attach(ifname, mode)?;
                FdLink::try_from(xdp.take_link(id)?).map_err(invalid)
            }
            Hook::TcIngress | Hook::TcEgress | Hook::HostTcEgress | Hook::HostTcIngress => {
                let (name, at) = tc_program(hook);
                self.load_program(name)
                    .map_err(|e| aya::programs::ProgramError::IOError(std::io::Error::other(e)))?;
                let tc = program::<SchedClassifier>(&mut self.ebpf, variant(name, self.variant));
                let id = tc.attach(ifname, at)?;
                FdLink::try_from(tc.take_link(id)?).map_err(invalid)
            }
        }
    }

    /// Replaces the program on the link pinned at `pin` with ours.
    fn adopt_link(
        &mut self,
        hook: Hook,
        pin: &std::path::Path,
    ) -> Result<FdLink, Box<dyn std::error::Error>> {
        let link = FdLink::from(PinnedLink::from_pin(pin)?);
        match hook {
            Hook::XdpNative | Hook::XdpGeneric => {
                self.load_ingress_xdp()?;
                let xdp = program::<Xdp>(&mut self.ebpf, variant(INGRESS_PROGRAM, self.variant));
                let id = xdp.attach_to_link(XdpLink::try_from(link)?)?;
                Ok(FdLink::try_from(xdp.take_link(id)?)?)
            }
            Hook::TcIngress | Hook::TcEgress | Hook::HostTcEgress | Hook::HostTcIngress => {
                let (name, _) = tc_program(hook);
                self.load_program(name)?;
                let tc = program::<SchedClassifier>(&mut self.ebpf, variant(name, self.variant));
                let id = tc.attach_to_link(SchedClassifierLink::try_from(link)?)?;
                Ok(FdLink::try_from(tc.take_link(id)?)?)
            }
        }
    }

    /// Before attaching XDP in one mode where a link of the other mode sits
    /// (the operator changed `--xdp-mode`): an interface takes one XDP
    /// program, so the old one must go first. The gap is logged.
    fn drop_other_xdp(&mut self, keep: Hook, place: PlaceId) {
        let other = if keep == Hook::XdpNative {
            Hook::XdpGeneric
        } else {
            Hook::XdpNative
        };
        let held = self
            .links
            .iter()
            .position(|l| l.hook == other && l.place == place);
        let pinned = self
            .pins
            .as_ref()
            .map(|p| p.link(other, place))
            .filter(|p| p.exists());
        if held.is_some() || pinned.is_some() {
            log::warn!(
                "switching XDP mode: the interface is unfiltered inbound until the new program is attached"
            );
        }
        if let Some(i) = held {
            self.links.swap_remove(i).detach();
        }
        if let Some(p) = pinned {
            remove_pinned_link(&p);
        }
    }

    /// Detaches every link held or pinned for this instance except `keep`:
    /// the other hook after a change of `--ingress-hook`, the old place
    /// after a move, links of an interface that was recreated.
    fn retain_links(&mut self, keep: &[(Hook, PlaceId)]) {
        let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.links)
            .into_iter()
            .partition(|l| keep.contains(&(l.hook, l.place)));
        self.links = kept;
        for link in gone {
            link.detach();
        }
        if let Some(pins) = &self.pins {
            for (path, hook, place) in pins.links() {
                if !keep.contains(&(hook, place)) {
                    remove_pinned_link(&path);
                }
            }
        }
    }

    /// Whether the interface this data plane is attached to is still the
    /// one it attached to (same namespace and interface identity).
    pub fn attached_place_current(&self) -> Option<bool> {
        let a = self.attachment.as_ref()?;
        let _guard = NetnsGuard::enter_opt(a.netns.as_deref()).ok()?;
        Some(place_here(&a.ifname).is_ok_and(|p| p == a.place))
    }
}

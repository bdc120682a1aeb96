//! Putting an instance's programs on its interface.

use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode,
    tc::{self, TcError},
};

use super::{
    Dataplane, DataplaneError, EGRESS_PROGRAM, INGRESS_PROGRAM, INGRESS_TC_PROGRAM,
    netns::NetnsGuard, program,
};

/// Where inbound packets are judged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IngressHook {
    /// XDP in the driver where it has XDP support, generic otherwise: the
    /// earliest and cheapest point, before the kernel builds an skb.
    #[default]
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

/// Where the programs are attached and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    pub ifname: String,
    pub netns: Option<String>,
    /// "XDP (driver mode)", "XDP (generic mode)" or "TC".
    pub ingress: &'static str,
}

impl Dataplane {
    /// Attaches the inbound program (XDP or TC ingress, as `hook` says) and
    /// TC egress (TCX on kernels that have it) to `ifname`, inside `netns`
    /// when given.
    pub fn attach(
        &mut self,
        ifname: &str,
        netns: Option<&str>,
        hook: IngressHook,
    ) -> Result<&Attachment, DataplaneError> {
        let _guard = NetnsGuard::enter_opt(netns)?;
        let attach_err = |source| DataplaneError::Attach {
            ifname: ifname.to_owned(),
            netns: netns.map(str::to_owned),
            source: Box::new(source),
        };
        // Kernels without TCX attach classifiers under the clsact qdisc.
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
        if hook == IngressHook::Tc {
            self.load_ingress_tc()?;
            program::<SchedClassifier>(&mut self.ebpf, INGRESS_TC_PROGRAM)
                .attach(ifname, TcAttachType::Ingress)
                .map_err(attach_err)?;
        }
        let ingress = match hook {
            IngressHook::Tc => "TC",
            IngressHook::XdpNative => {
                match program::<Xdp>(&mut self.ebpf, INGRESS_PROGRAM)
                    .attach(ifname, XdpMode::Driver)
                {
                    Ok(_) => "XDP (driver mode)",
                    Err(e) => {
                        log::info!("{ifname}: native XDP not available ({e}); using generic XDP");
                        self.attach_generic_xdp(ifname).map_err(attach_err)?
                    }
                }
            }
            IngressHook::XdpGeneric => self.attach_generic_xdp(ifname).map_err(attach_err)?,
        };
        program::<SchedClassifier>(&mut self.ebpf, EGRESS_PROGRAM)
            .attach(ifname, TcAttachType::Egress)
            .map_err(attach_err)?;
        Ok(self.attachment.insert(Attachment {
            ifname: ifname.to_owned(),
            netns: netns.map(str::to_owned),
            ingress,
        }))
    }

    fn attach_generic_xdp(
        &mut self,
        ifname: &str,
    ) -> Result<&'static str, aya::programs::ProgramError> {
        program::<Xdp>(&mut self.ebpf, INGRESS_PROGRAM).attach(ifname, XdpMode::Skb)?;
        Ok("XDP (generic mode)")
    }
}

//! A real libvirtd for the tests (Debian's `libvirt-daemon-system`), started
//! by the test inside the lab's switch namespace (only its network
//! namespace: `nsenter --net`), so the taps it makes for its domains join
//! the lab's bridge and never the host's network. Domains are transient
//! (`virsh create`), of type `qemu` (TCG), booting the VM tests' kernel and
//! initramfs directly. Everything is destroyed and stopped on drop.
//!
//! Since the daemons are the test's, hook scripts installed before they
//! start are read (libvirtd reads its hooks once, at start).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::probe::eventually;

/// The QEMU driver's settings.
const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";

/// libvirtd's socket for `qemu:///system`.
const SOCKET: &str = "/run/libvirt/libvirt-sock";
/// Where libvirtd looks for QEMU hook scripts (libvirt 6.5 and later).
pub const HOOK_DIR: &str = "/etc/libvirt/hooks/qemu.d";

/// `virsh -c qemu:///system ARGS`: its output, or its error.
pub fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .map_err(|e| format!("virsh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// A hook script that runs `sg-agent libvirt-hook` against the test's
/// agent, and writes down each call; removed on drop. It must exist before
/// libvirtd starts (libvirtd reads its hooks once, at start).
pub struct Hook {
    pub path: PathBuf,
    pub calls: PathBuf,
}

impl Hook {
    pub fn install(name: &str, agent: &Path, control_socket: &Path) -> Self {
        std::fs::create_dir_all(HOOK_DIR).expect("hook dir");
        let path = Path::new(HOOK_DIR).join(name);
        let calls = std::env::temp_dir().join(format!("{name}.calls"));
        let _ = std::fs::remove_file(&calls);
        let script = format!(
            "#!/bin/sh\n\
             # sg-agent's tests: libvirt's QEMU hook, against the test's agent.\n\
             echo \"$1 $2 $3\" >> '{calls}'\n\
             exec '{agent}' libvirt-hook --control-socket '{socket}' \"$@\"\n",
            calls = calls.display(),
            agent = agent.display(),
            socket = control_socket.display(),
        );
        std::fs::write(&path, script).expect("write the hook");
        let mut perms = std::fs::metadata(&path).expect("hook").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&path, perms).expect("chmod the hook");
        Self { path, calls }
    }

    /// The hook's calls so far: `DOMAIN OPERATION SUB-OPERATION`.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.calls)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.calls);
    }
}

/// virtlogd and libvirtd, started in network namespace `netns`; the
/// domains they run are destroyed, and they are stopped, on drop.
pub struct Libvirtd {
    daemons: Vec<Child>,
    domains: Vec<String>,
    networks: Vec<String>,
    nwfilters: Vec<String>,
    /// The node bound over /dev/kvm in the daemons' mount namespace.
    nokvm: PathBuf,
    /// The qemu.conf bound over the host's there.
    conf: PathBuf,
}

impl Libvirtd {
    pub fn start(netns: &str) -> Self {
        assert!(
            std::os::unix::net::UnixStream::connect(SOCKET).is_err(),
            "a libvirtd already answers on {SOCKET}: the libvirt test starts its own, in its lab \
             namespace; stop the running one (systemctl stop libvirtd) to run it"
        );
        // In the lab's network namespace, and in a mount namespace of its
        // own where /dev/kvm is a device node only root may open: the
        // domains are TCG ones (nested KVM hangs here). libvirtd caches
        // QEMU's capabilities and finds them stale whenever KVM looks
        // usable to its QEMU user yet the probe could not enable it: with
        // the real /dev/kvm, or /dev/null bound over it (which everyone may
        // open), it probes QEMU again (about 2 s a probe, a dozen a domain)
        // on every domain start. A node of mode 000 makes KVM unusable to
        // the QEMU user, which is what the cache then records; a device
        // node. And QEMU runs in that mount namespace's /dev, not in one
        // libvirt makes per domain (`namespaces = []` in a qemu.conf bound
        // over the host's there): building one moves each mount under /dev
        // (the bound node) through /run/libvirt/qemu, which failed now and
        // then with ENOENT when a test started a second libvirtd.
        let nokvm = std::env::temp_dir().join(format!("sg-tests-no-kvm-{}", std::process::id()));
        let conf = std::env::temp_dir().join(format!("sg-tests-qemu-{}.conf", std::process::id()));
        let host_conf = std::fs::read_to_string(QEMU_CONF).unwrap_or_default();
        std::fs::write(&conf, format!("{host_conf}\nnamespaces = []\n")).expect("qemu.conf");
        let script = format!(
            "if [ -e /dev/kvm ]; then rm -f {n}; mknod -m 000 {n} c 1 3 && \
             mount --bind {n} /dev/kvm; fi; \
             if [ -e {QEMU_CONF} ]; then mount --bind {c} {QEMU_CONF}; fi; \
             exec nsenter --net=/run/netns/{netns} \"$0\"",
            n = nokvm.display(),
            c = conf.display(),
        );
        let mut daemons = Vec::new();
        for daemon in ["virtlogd", "libvirtd"] {
            let child = Command::new("unshare")
                .args([
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    &script,
                    daemon,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("{daemon} (libvirt-daemon-system): {e}"));
            daemons.push(child);
        }
        let up = eventually(Duration::from_secs(30), || virsh(&["version"]).is_ok());
        let mut me = Self {
            daemons,
            domains: Vec::new(),
            networks: Vec::new(),
            nwfilters: Vec::new(),
            nokvm,
            conf,
        };
        if !up {
            me.stop();
            panic!("libvirtd did not answer on {SOCKET} within 30 s");
        }
        me
    }

    /// `virsh create` of a domain: an error is libvirt's (a hook that
    /// refused it, for one).
    pub fn create(&mut self, name: &str, xml: &str) -> Result<(), String> {
        let path = std::env::temp_dir().join(format!("{name}.xml"));
        std::fs::write(&path, xml).expect("domain XML");
        if !self.domains.iter().any(|d| d == name) {
            self.domains.push(name.to_owned());
        }
        let result = virsh(&["create", &path.to_string_lossy()]).map(|_| ());
        let _ = std::fs::remove_file(&path);
        result
    }

    /// `virsh net-create` of a transient network (destroyed on drop).
    pub fn create_network(&mut self, name: &str, xml: &str) {
        let path = std::env::temp_dir().join(format!("{name}-net.xml"));
        std::fs::write(&path, xml).expect("network XML");
        self.networks.push(name.to_owned());
        let created = virsh(&["net-create", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        created.unwrap_or_else(|e| panic!("virsh net-create {name}: {e}"));
    }

    /// `virsh nwfilter-define` of a filter (undefined on drop).
    pub fn define_nwfilter(&mut self, name: &str, xml: &str) {
        let path = std::env::temp_dir().join(format!("{name}-nwfilter.xml"));
        std::fs::write(&path, xml).expect("nwfilter XML");
        self.nwfilters.push(name.to_owned());
        let defined = virsh(&["nwfilter-define", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
        defined.unwrap_or_else(|e| panic!("virsh nwfilter-define {name}: {e}"));
    }

    pub fn destroy(&self, name: &str) {
        let _ = virsh(&["destroy", name]);
    }

    /// The tap libvirt gave the domain's NIC (`vnetN`).
    pub fn tap(&self, name: &str) -> String {
        let out = virsh(&["domiflist", name]).unwrap_or_default();
        out.lines()
            .filter_map(|l| l.split_whitespace().next())
            .find(|w| w.starts_with("vnet"))
            .unwrap_or_else(|| panic!("{name} has no vnet tap: {out}"))
            .to_owned()
    }

    fn stop(&mut self) {
        for d in &self.domains {
            let _ = virsh(&["destroy", d]);
        }
        for n in &self.networks {
            let _ = virsh(&["net-destroy", n]);
        }
        // Defined filters are persistent (/etc/libvirt/nwfilter): gone.
        for f in &self.nwfilters {
            let _ = virsh(&["nwfilter-undefine", f]);
        }
        for child in self.daemons.iter_mut().rev() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        self.daemons.clear();
        let _ = std::fs::remove_file(&self.nokvm);
        let _ = std::fs::remove_file(&self.conf);
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A transient QEMU (TCG) domain booting the VM tests' kernel and initramfs,
/// its NIC on `bridge` with `mac`, its console written to `console`.
pub fn domain_xml(name: &str, mac: &str, bridge: &str, cmdline: &str, console: &Path) -> String {
    let nic = format!(
        "<interface type='bridge'>
      <source bridge='{bridge}'/>
      <mac address='{mac}'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>"
    );
    domain_xml_with(name, &nic, "", cmdline, console)
}

/// [`domain_xml`] with the NIC as `nic` (an `<interface>` element) and
/// `metadata` (elements of `<metadata>`).
pub fn domain_xml_with(
    name: &str,
    nic: &str,
    metadata: &str,
    cmdline: &str,
    console: &Path,
) -> String {
    let image = crate::vm::image();
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <metadata>{metadata}</metadata>
  <memory unit='MiB'>192</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 quiet loglevel=1 panic=-1 {cmdline}</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    {nic}
    <serial type='file'>
      <source path='{console}'/>
    </serial>
    <!-- Ports to spare: a NIC can be hot-plugged (`virsh attach-interface`). -->
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' index='1' model='pcie-root-port'/>
    <controller type='pci' index='2' model='pcie-root-port'/>
    <controller type='pci' index='3' model='pcie-root-port'/>
    <controller type='pci' index='4' model='pcie-root-port'/>
  </devices>
</domain>
",
        kernel = image.kernel.display(),
        initrd = image.initrd.display(),
        console = console.display(),
    )
}

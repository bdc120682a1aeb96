//! Real virtual machines for the host-side tests: QEMU (Debian's
//! `qemu-system-x86`, TCG, so it runs wherever the tests run, nested KVM or
//! not) booting Debian's cloud kernel (`linux-image-cloud-amd64`, extracted
//! by `cargo xtask bootstrap` into [`KERNEL_DIR`]) with an initramfs built
//! here around the host's busybox. Each VM's NIC is a virtio NIC on a tap
//! that QEMU itself creates in a lab namespace, as plain QEMU and libvirt
//! do; its serial console is the VM's standard input and output, through
//! which the test runs commands inside the guest.
//!
//! Traffic stays inside the lab: the taps live in a namespace the test made
//! and join a bridge there; no guest has a default route.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Mutex, OnceLock,
        mpsc::{Receiver, RecvTimeoutError, channel},
    },
    time::{Duration, Instant},
};

/// Where `cargo xtask bootstrap` puts the guest kernel (`vmlinuz`) and the
/// virtio modules (`modules/*.ko`) taken from Debian's cloud kernel.
pub const KERNEL_DIR: &str = "/var/cache/sg-agent/vm";

/// The modules a guest needs for its virtio NIC, in the order they load.
pub const MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// How long a guest may take to boot to its console under TCG (about 2.5 s
/// alone, longer with others booting on two cores).
pub const BOOT: Duration = Duration::from_secs(90);

/// The guest's init: loads the virtio modules, configures `eth0` from the
/// kernel command line (`sg.addr=A/P,...`, `sg.routes=N/P,...`, `sg.dhcp`
/// for a DHCP lease), starts an
/// echo server per `sg.tcp=PORT,...` (busybox nc), then serves commands
/// from the serial console: one line each, answered by its output and a
/// `__SG_RC__ <status>` line.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in MODULES; do insmod /modules/$m.ko; done
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    sg.addr=*) ADDR="${arg#sg.addr=}" ;;
    sg.routes=*) ROUTES="${arg#sg.routes=}" ;;
    sg.tcp=*) TCP="${arg#sg.tcp=}" ;;
    sg.dhcp) DHCP=1 ;;
  esac
done
ip link set lo up
echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad
ip link set eth0 up
for a in $(echo "$ADDR" | tr , ' '); do ip addr add "$a" dev eth0; done
for r in $(echo "$ROUTES" | tr , ' '); do ip route add "$r" dev eth0; done
# sg.dhcp: the address from the network's DHCP server (busybox udhcpc).
[ -n "$DHCP" ] && udhcpc -i eth0 -s /bin/sg-dhcp -q -n -t 30 -T 1 >/dev/null 2>&1
for p in $(echo "$TCP" | tr , ' '); do nc -ll -p "$p" -e /bin/cat & done
stty -echo -onlcr 2>/dev/null
echo "SGVM READY"
while read -r line; do
  sh -c "$line"
  echo "__SG_RC__ $?"
done
echo "SGVM CONSOLE CLOSED"
# A console that gives no input (libvirt's file console): keep running.
while true; do sleep 3600; done
"#;

/// udhcpc's script: the lease's address on the interface, no route (the
/// labs have no default route out).
const DHCP_SCRIPT: &str = "#!/bin/busybox sh
case \"$1\" in bound|renew) ip addr add \"$ip/${mask:-24}\" dev \"$interface\" ;; esac
";

/// The guest's kernel and an initramfs built for this test process.
pub struct Image {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The image, built once per test process.
pub fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(build_image)
}

fn build_image() -> Image {
    let dir = Path::new(KERNEL_DIR);
    let kernel = dir.join("vmlinuz");
    assert!(
        kernel.exists(),
        "no guest kernel at {}: run `cargo xtask bootstrap` (it extracts Debian's \
         linux-image-cloud-amd64 there)",
        kernel.display()
    );
    let root = std::env::temp_dir().join(format!("sg-vm-initrd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    for d in ["bin", "proc", "sys", "dev", "tmp", "modules"] {
        std::fs::create_dir_all(root.join(d)).expect("initramfs tree");
    }
    let busybox = "/usr/bin/busybox";
    std::fs::copy(busybox, root.join("bin/busybox")).expect("busybox (bootstrap installs it)");
    // Debian's busybox is dynamically linked: its libraries come along.
    let ldd = Command::new("ldd").arg(busybox).output().expect("ldd runs");
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().expect("a directory")).expect("lib dir");
        std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
    }
    for m in MODULES {
        let from = dir.join("modules").join(format!("{m}.ko"));
        std::fs::copy(&from, root.join("modules").join(format!("{m}.ko")))
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask bootstrap`)", from.display()));
    }
    let dhcp = root.join("bin/sg-dhcp");
    std::fs::write(&dhcp, DHCP_SCRIPT).expect("dhcp script");
    let mut perms = std::fs::metadata(&dhcp).expect("dhcp script").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&dhcp, perms).expect("chmod the dhcp script");
    let init = root.join("init");
    std::fs::write(&init, INIT.replace("MODULES", &MODULES.join(" "))).expect("init");
    let mut perms = std::fs::metadata(&init).expect("init").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&init, perms).expect("chmod init");
    let initrd = std::env::temp_dir().join(format!("sg-vm-{}.cpio.gz", std::process::id()));
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > '{}'",
            root.display(),
            initrd.display()
        ))
        .status()
        .expect("cpio runs");
    assert!(status.success(), "building the initramfs");
    let _ = std::fs::remove_dir_all(&root);
    Image {
        kernel: dir.join("vmlinuz"),
        initrd,
    }
}

/// What a VM is: its name, tap, MAC, addresses and services.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub name: String,
    /// The tap QEMU makes for its NIC, in the lab namespace.
    pub tap: String,
    pub mac: String,
    /// `10.0.1.10/32`, `2001:db8::10/128`...
    pub addresses: Vec<String>,
    /// On-link routes (`10.0.0.0/8`...); never a default route.
    pub routes: Vec<String>,
    /// TCP ports with an echo server.
    pub tcp: Vec<u16>,
}

/// A running VM: QEMU in the lab namespace, its console held. Killed on
/// drop.
pub struct Vm {
    pub spec: VmSpec,
    child: Child,
    console: Mutex<Console>,
}

struct Console {
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// Everything the console printed, for failure messages.
    transcript: Vec<String>,
}

impl Vm {
    /// Starts QEMU for `spec` inside network namespace `netns`; returns at
    /// once (see [`Vm::wait_ready`]). QEMU makes the tap.
    pub fn start(netns: &str, spec: VmSpec) -> Self {
        let image = image();
        let append = format!(
            "console=ttyS0 quiet loglevel=1 panic=-1 sg.addr={} sg.routes={} sg.tcp={}",
            spec.addresses.join(","),
            spec.routes.join(","),
            spec.tcp
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "qemu-system-x86_64"])
            .args(["-machine", "q35,accel=tcg", "-m", "192", "-smp", "1"])
            .args(["-nographic", "-nodefaults", "-no-reboot", "-no-user-config"])
            .args(["-serial", "stdio", "-monitor", "none"])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", &append])
            .args([
                "-netdev",
                &format!(
                    "tap,id=n0,ifname={},script=no,downscript=no,vhost=off",
                    spec.tap
                ),
                "-device",
                &format!("virtio-net-pci,netdev=n0,mac={},romfile=", spec.mac),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 runs (cargo xtask bootstrap installs qemu-system-x86)");
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let line = line.trim_end_matches('\r').to_owned();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            spec,
            child,
            console: Mutex::new(Console {
                stdin,
                lines,
                transcript: Vec::new(),
            }),
        }
    }

    /// Waits until the guest's init serves its console.
    pub fn wait_ready(&self) {
        let mut c = self.console.lock().expect("console");
        let end = Instant::now() + BOOT;
        loop {
            match c.next_line(end) {
                Some(l) if l.contains("SGVM READY") => return,
                Some(_) => {}
                None => panic!(
                    "VM {} did not boot within {} s:\n{}",
                    self.spec.name,
                    BOOT.as_secs(),
                    c.transcript.join("\n")
                ),
            }
        }
    }

    /// Runs `command` in the guest (busybox sh); its output and exit status.
    pub fn run(&self, command: &str, timeout: Duration) -> (String, i32) {
        let mut c = self.console.lock().expect("console");
        writeln!(c.stdin, "{command}").expect("write to the console");
        c.stdin.flush().expect("flush");
        let end = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            match c.next_line(end) {
                Some(l) => {
                    if let Some(rc) = l.strip_prefix("__SG_RC__ ") {
                        return (out.join("\n"), rc.trim().parse().unwrap_or(-1));
                    }
                    out.push(l);
                }
                None => panic!(
                    "VM {}: `{command}` did not finish within {} s:\n{}",
                    self.spec.name,
                    timeout.as_secs(),
                    c.transcript.join("\n")
                ),
            }
        }
    }

    /// Whether a TCP connection from the guest to `addr:port` is set up
    /// within `seconds` (busybox nc; a dropped SYN times out).
    pub fn connects(&self, addr: &str, port: u16, seconds: u32) -> bool {
        let (_, rc) = self.run(
            &format!("nc -w {seconds} {addr} {port} </dev/null >/dev/null 2>&1"),
            Duration::from_secs(u64::from(seconds) + 30),
        );
        rc == 0
    }

    /// Stops QEMU (its tap goes with it).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Console {
    fn next_line(&mut self, end: Instant) -> Option<String> {
        let left = end.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(l) => {
                self.transcript.push(l.clone());
                Some(l)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `tap` exists in `netns` (QEMU made it), then makes it a
/// port of `bridge` and brings it up.
pub fn plug(netns: &str, tap: &str, bridge: &str) {
    let found = crate::probe::eventually(Duration::from_secs(30), || {
        Command::new("ip")
            .args(["-n", netns, "link", "show", tap])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(found, "QEMU made no tap {tap} in {netns}");
    crate::lab::ip(&["-n", netns, "link", "set", tap, "master", bridge, "up"]);
}

/// The seed's four instances as VMs, the internet as a namespace, all on
/// one bridge in the lab's switch namespace where QEMU makes the taps.
pub struct SeedVms {
    pub lab: crate::lab::Lab,
    pub vms: Vec<Vm>,
    pub config: PathBuf,
    _servers: crate::probe::Servers,
}

/// (instance, tap, MAC, addresses, TCP echo ports).
pub type SeedVm = (
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
    &'static [u16],
);

/// The seed's VMs.
pub const SEED_VMS: [SeedVm; 4] = [
    (
        "alb",
        "t-alb",
        "52:54:00:00:00:10",
        &["10.0.0.10/32", "2001:db8:0:1::10/128"],
        &[80, 8080],
    ),
    (
        "bastion",
        "t-bastion",
        "52:54:00:00:00:20",
        &["10.0.0.20/32"],
        &[22],
    ),
    (
        "app-1",
        "t-app",
        "52:54:00:00:01:10",
        &["10.0.1.10/32"],
        &[22, 80],
    ),
    (
        "rds",
        "t-rds",
        "52:54:00:00:02:10",
        &["10.0.2.10/32"],
        &[3306],
    ),
];

const VM_ROUTES: [&str; 4] = [
    "10.0.0.0/8",
    "203.0.113.0/24",
    "198.51.100.0/24",
    "2001:db8::/32",
];

impl SeedVms {
    /// The lab and the rules file (`rules`, its instances moved to the host
    /// side of their VMs' taps); no VM started yet.
    pub fn new(tag: &str, rules: &str) -> Self {
        crate::kernel::require_root();
        let mut lab = crate::lab::Lab::new(tag);
        lab.add_host(
            "internet",
            &[
                crate::seed::ADMIN,
                crate::seed::OUTSIDER,
                crate::seed::ADMIN6,
                crate::seed::OUTSIDER6,
            ],
        );
        let servers = crate::probe::Servers::start(&lab.netns_of("internet"), &[80, 443], &[]);
        let dir = std::env::temp_dir().join(format!("sg-tests-{}", lab.prefix));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("vpc.toml");
        let vms = Self {
            lab,
            vms: Vec::new(),
            config,
            _servers: servers,
        };
        vms.rewrite(rules);
        vms
    }

    /// `rules` with every seed instance on the host side of its VM's tap.
    pub fn host_side(&self, rules: &str) -> String {
        let mut out = rules.to_owned();
        for (name, tap, mac, ..) in SEED_VMS {
            out = out.replace(
                &format!("netns = \"sg-{name}\"\ninterface = \"eth0\""),
                &format!(
                    "netns = \"{}\"\nhost_interface = \"{tap}\"\nmac = \"{mac}\"",
                    self.lab.switch_netns()
                ),
            );
        }
        out
    }

    /// Rewrites the rules file (as an editor does: renamed over).
    pub fn rewrite(&self, rules: &str) {
        let tmp = self.config.with_extension("toml.tmp");
        std::fs::write(&tmp, self.host_side(rules)).expect("write");
        std::fs::rename(&tmp, &self.config).expect("rename");
    }

    pub fn spec(name: &str) -> VmSpec {
        let (name, tap, mac, addresses, tcp) = SEED_VMS
            .iter()
            .find(|v| v.0 == name)
            .unwrap_or_else(|| panic!("no seed VM {name}"));
        VmSpec {
            name: (*name).to_owned(),
            tap: (*tap).to_owned(),
            mac: (*mac).to_owned(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            routes: VM_ROUTES.iter().map(|r| (*r).to_owned()).collect(),
            tcp: tcp.to_vec(),
        }
    }

    /// Starts the four VMs together, plugs their taps into the bridge, and
    /// waits for each to serve its console.
    pub fn boot_all(&mut self) {
        for (name, ..) in SEED_VMS {
            self.vms
                .push(Vm::start(self.lab.switch_netns(), Self::spec(name)));
        }
        for vm in &self.vms {
            plug(self.lab.switch_netns(), &vm.spec.tap, "br0");
        }
        for vm in &self.vms {
            vm.wait_ready();
        }
    }

    /// Stops a VM (QEMU's tap goes with it).
    pub fn stop(&mut self, name: &str) {
        let i = self.index(name);
        self.vms[i].kill();
        let gone = crate::probe::eventually(Duration::from_secs(10), || {
            !Command::new("ip")
                .args([
                    "-n",
                    self.lab.switch_netns(),
                    "link",
                    "show",
                    &self.vms[i].spec.tap,
                ])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        assert!(gone, "{name}'s tap goes with its QEMU");
    }

    /// Starts a stopped VM again: QEMU makes its tap anew.
    pub fn start_again(&mut self, name: &str) {
        let i = self.index(name);
        let vm = Vm::start(self.lab.switch_netns(), Self::spec(name));
        plug(self.lab.switch_netns(), &vm.spec.tap, "br0");
        vm.wait_ready();
        self.vms[i] = vm;
    }

    fn index(&self, name: &str) -> usize {
        self.vms
            .iter()
            .position(|v| v.spec.name == name)
            .unwrap_or_else(|| panic!("no VM {name}"))
    }

    pub fn vm(&self, name: &str) -> &Vm {
        self.vms
            .iter()
            .find(|v| v.spec.name == name)
            .unwrap_or_else(|| panic!("no VM {name}"))
    }

    /// A TCP probe from the internet namespace.
    pub fn from_internet(&self, from: &str, to: &str, port: u16) -> crate::probe::Outcome {
        crate::probe::tcp(
            &self.lab.netns_of("internet"),
            crate::seed::ip(from),
            crate::seed::at(to, port),
        )
    }

    /// Frames the VM `name` sent into its tap (the host's receive count).
    pub fn frames_sent(&self, name: &str) -> u64 {
        let tap = &self.vm(name).spec.tap;
        let out = Command::new("ip")
            .args(["netns", "exec", self.lab.switch_netns(), "cat"])
            .arg(format!("/sys/class/net/{tap}/statistics/rx_packets"))
            .output()
            .expect("read the tap's counters");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{tap} rx_packets: {out:?}"))
    }
}

impl Drop for SeedVms {
    fn drop(&mut self) {
        for vm in &mut self.vms {
            vm.kill();
        }
        if let Some(dir) = self.config.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

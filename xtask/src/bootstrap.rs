//! Idempotent installation of everything beyond stable cargo. Each step
//! says what it does; a step that cannot be done says what to run.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::step;

/// bpf-linker 0.10.x loads rustc's own LLVM; later releases need LLVM 21+
/// development packages that Debian 12 does not have.
const BPF_LINKER_VERSION: &str = "0.10.1";

/// Debian packages: (package, a file it installs that shows it is there).
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "/usr/sbin/ip"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("iputils-ping", "/usr/bin/ping"),
    ("xdp-tools", "/usr/sbin/xdp-filter"),
    ("nftables", "/usr/sbin/nft"),
    ("iptables", "/usr/sbin/iptables"),
    ("iperf3", "/usr/bin/iperf3"),
    ("netsniff-ng", "/usr/sbin/trafgen"),
    ("linux-perf", "/usr/bin/perf"),
    // The AWS-services test: a real DHCP server and resolver, real clients.
    ("dnsmasq-base", "/usr/sbin/dnsmasq"),
    ("busybox", "/usr/bin/busybox"),
    // Many hosts: the etcd client crate compiles etcd's protobuf API at
    // build time with protoc, and etcd's .proto files import protobuf's
    // well-known types (google/protobuf/descriptor.proto), which Debian
    // ships apart from protoc; the tests and benchmarks run a real etcd.
    ("protobuf-compiler", "/usr/bin/protoc"),
    (
        "libprotobuf-dev",
        "/usr/include/google/protobuf/descriptor.proto",
    ),
    ("etcd-server", "/usr/bin/etcd"),
    // The TLS test makes its own CA and certificates.
    ("openssl", "/usr/bin/openssl"),
    // Local VMs from the host side: real QEMU guests (TCG: no KVM needed)
    // and a real libvirtd running them.
    // The EC2 API's tests drive it with PyPI's AWS CLI and boto3 (and
    // moto's server beside it), in a virtual environment they make.
    ("python3-venv", "/usr/share/doc/python3-venv/copyright"),
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("libvirt-daemon-system", "/usr/sbin/libvirtd"),
    ("libvirt-clients", "/usr/bin/virsh"),
];

/// Where the VM tests find the guest kernel (`vmlinuz`) and the modules its
/// virtio NIC needs (`modules/NAME.ko`): taken from Debian's cloud kernel
/// package, downloaded and unpacked here, never installed (the host's own
/// kernel and boot loader stay as they are).
pub const VM_KERNEL_DIR: &str = "/var/cache/sg-agent/vm";
const VM_MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

pub fn all() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    vm_kernel()
}

/// Debian's cloud kernel for the test VMs, unpacked into [`VM_KERNEL_DIR`]
/// (`apt-get download` and `dpkg-deb -x`: nothing is installed).
fn vm_kernel() -> anyhow::Result<()> {
    let dir = std::path::Path::new(VM_KERNEL_DIR);
    let have = dir.join("vmlinuz").exists()
        && VM_MODULES
            .iter()
            .all(|m| dir.join("modules").join(format!("{m}.ko")).exists());
    if have {
        return Ok(());
    }
    step("downloading Debian's cloud kernel for the test VMs (linux-image-cloud-amd64)");
    let depends = quiet(Command::new("apt-cache").args(["depends", "linux-image-cloud-amd64"]))
        .context("apt-cache depends linux-image-cloud-amd64")?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .context("linux-image-cloud-amd64 depends on no linux-image package")?
        .to_owned();
    let work = std::env::temp_dir().join(format!("sg-vm-kernel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("x"))?;
    let hint = "run `apt-get update` and retry";
    // _apt cannot write into root's temporary directory: say so plainly
    // rather than let apt warn.
    run(
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
            .current_dir(&work),
        hint,
    )?;
    let deb = std::fs::read_dir(&work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    run(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(work.join("x")),
        "dpkg-deb -x failed",
    )?;
    std::fs::create_dir_all(dir.join("modules"))?;
    let boot = work.join("x/boot");
    let vmlinuz = std::fs::read_dir(&boot)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("no vmlinuz in the kernel package")?;
    std::fs::copy(&vmlinuz, dir.join("vmlinuz"))?;
    let mut wanted: Vec<&str> = VM_MODULES.to_vec();
    let mut stack = vec![work.join("x/lib/modules")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)?.filter_map(Result::ok) {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if let Some(name) = path.file_name().and_then(|n| n.to_str())
                && let Some(i) = wanted.iter().position(|m| name == format!("{m}.ko"))
            {
                std::fs::copy(&path, dir.join("modules").join(name))?;
                wanted.swap_remove(i);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work);
    if !wanted.is_empty() {
        bail!("{package} has no module {}", wanted.join(", "));
    }
    Ok(())
}

fn quiet(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command, hint: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {cmd:?}; {hint}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status}); {hint}");
    }
    Ok(())
}

/// rust-src (the eBPF crates build core from source) and clippy (`cargo
/// xtask lint` lints them with nightly) for the nightly toolchain.
fn rust_src() -> anyhow::Result<()> {
    let installed = quiet(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("no nightly toolchain: install it with `rustup toolchain install nightly`")?;
    for component in ["rust-src", "clippy"] {
        if installed.lines().any(|l| l.starts_with(component)) {
            continue;
        }
        step(&format!("installing {component} for the nightly toolchain"));
        run(
            Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]),
            &format!("run `rustup component add {component} --toolchain nightly` by hand"),
        )?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    if quiet(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    step(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} (about a minute)"
    ));
    run(
        Command::new("cargo").args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ]),
        &format!("run `cargo install bpf-linker --version {BPF_LINKER_VERSION} --locked` by hand"),
    )
}

fn debian_packages() -> anyhow::Result<()> {
    install(PACKAGES)
}

/// Installs, with apt, each of `packages` whose file is missing.
pub fn install(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, file)| !std::path::Path::new(file).exists())
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    let hint = format!(
        "run `apt-get update && apt-get install -y {}` as root",
        missing.join(" ")
    );
    run(Command::new("apt-get").args(["update", "-q"]), &hint)?;
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &hint,
    )
}

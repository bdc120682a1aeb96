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
];

pub fn all() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    debian_packages()
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

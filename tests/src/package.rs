//! The Debian package: `cargo xtask deb` builds it (through the `sg-deb`
//! harness), the package test builds, installs and removes it. Assembled
//! here and packed by `dpkg-deb`, Debian's own tool (always installed on
//! Debian), rather than cargo-deb, whose install is a long build of its own
//! on every fresh machine: the tree is small and every file in it is listed
//! below.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// The workspace's version, the package's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds tests/")
        .to_owned()
}

/// What `binary ARGS` prints.
fn output_of(binary: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let out = Command::new(binary)
        .args(args)
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} {args:?}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

fn put(root: &Path, path: &str, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let to = root.join(path);
    fs::create_dir_all(to.parent().expect("a file in a directory"))?;
    fs::write(&to, bytes).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("gzip")?;
    child.stdin.take().expect("piped").write_all(bytes)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("gzip failed");
    }
    Ok(out.stdout)
}

/// Stops a running service and removes what an agent left enforced, before
/// the package's files go; an upgrade keeps both (the new agent adopts).
const PRERM: &str = "#!/bin/sh
set -e
if [ \"$1\" = remove ] || [ \"$1\" = deconfigure ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop sg-agent.service >/dev/null 2>&1 || true
    fi
    # The unit runs with --keep-on-exit: without this, the programs would
    # stay attached after the package is gone.
    /usr/bin/sg-agent detach --all || true
fi
exit 0
";

const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ \"$1\" = configure ] && { pidof libvirtd || pidof virtqemud; } >/dev/null 2>&1; then
    echo 'sg-agent: libvirtd reads its hooks when it starts: restart it (running domains keep running) so that domains starting from now are enforced before their first frame'
fi
exit 0
";

/// The libvirt QEMU hook (`packaging/libvirt-hook`), a configuration file.
pub const LIBVIRT_HOOK: &str = "/etc/libvirt/hooks/qemu.d/sg-agent";

const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
";

/// As Debian's `dh_strip` does: the package ships no debug information (a
/// debug build's is most of its 180 MB, and xz would spend a minute
/// compressing it). `strip` is binutils', which gcc depends on.
fn strip(binary: &Path) -> anyhow::Result<()> {
    let status = Command::new("strip")
        .args(["--strip-unneeded", "--remove-section=.comment"])
        .arg(binary)
        .status()
        .context("strip (binutils)")?;
    if !status.success() {
        bail!("strip failed ({status})");
    }
    Ok(())
}

/// Builds `sg-agent_VERSION_ARCH.deb` in `out` from `binary`; returns its
/// path.
pub fn build(binary: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    let arch = String::from_utf8(output_of(Path::new("dpkg"), &["--print-architecture"])?)?
        .trim()
        .to_owned();
    let name = format!("sg-agent_{VERSION}_{arch}");
    let root = out.join(&name);
    let _ = fs::remove_dir_all(&root);
    let ws = workspace();
    put(&root, "usr/bin/sg-agent", &fs::read(binary)?, 0o755)?;
    strip(&root.join("usr/bin/sg-agent"))?;
    put(
        &root,
        "lib/systemd/system/sg-agent.service",
        &fs::read(ws.join("packaging/sg-agent.service"))?,
        0o644,
    )?;
    put(
        &root,
        "usr/share/man/man1/sg-agent.1.gz",
        &gzip(&output_of(binary, &["manpage"])?)?,
        0o644,
    )?;
    put(
        &root,
        "usr/share/man/man5/sg-agent.toml.5.gz",
        &gzip(&output_of(binary, &["manpage", "--section", "5"])?)?,
        0o644,
    )?;
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/sg-agent"),
        ("zsh", "usr/share/zsh/vendor-completions/_sg-agent"),
        ("fish", "usr/share/fish/vendor_completions.d/sg-agent.fish"),
    ] {
        put(
            &root,
            path,
            &output_of(binary, &["completions", shell])?,
            0o644,
        )?;
    }
    put(
        &root,
        LIBVIRT_HOOK.trim_start_matches('/'),
        &fs::read(ws.join("packaging/libvirt-hook"))?,
        0o755,
    )?;
    put(
        &root,
        "DEBIAN/conffiles",
        format!("{LIBVIRT_HOOK}\n").as_bytes(),
        0o644,
    )?;
    put(
        &root,
        "usr/share/doc/sg-agent/examples/seed-vpc.toml",
        &fs::read(ws.join("examples/seed-vpc.toml"))?,
        0o644,
    )?;
    put(
        &root,
        "usr/share/doc/sg-agent/copyright",
        b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
          Upstream-Name: sg-agent\n\nFiles: *\nCopyright: the sg-agent authors\n\
          License: MIT or Apache-2.0\n",
        0o644,
    )?;
    let size_kib = fs::metadata(binary)?.len() / 1024 + 64;
    let control = format!(
        "Package: sg-agent\nVersion: {VERSION}\nArchitecture: {arch}\n\
         Maintainer: sg-agent developers <sg-agent@localhost>\nInstalled-Size: {size_kib}\n\
         Depends: libc6 (>= 2.34)\nRecommends: bpftool\nSection: net\nPriority: optional\n\
         Homepage: https://github.com/sg-agent/sg-agent\n\
         Description: AWS EC2 security groups on any Linux host\n \
         sg-agent enforces security groups (allow-only rules per group, sources as\n \
         CIDR blocks, prefix lists or other groups, stateful, silent drops) in the\n \
         kernel: an XDP program judges what enters each instance's interface, a TC\n \
         program what leaves it, on an instance's own interface or on the host side\n \
         of a VM's tap or a container's veth (with a libvirt hook that enforces a\n \
         domain before it runs). The service reads /etc/sg-agent/vpc.toml.\n"
    );
    put(&root, "DEBIAN/control", control.as_bytes(), 0o644)?;
    put(&root, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put(&root, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put(&root, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    let deb = out.join(format!("{name}.deb"));
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb)
        .status()
        .context("dpkg-deb")?;
    if !status.success() {
        bail!("dpkg-deb --build failed ({status})");
    }
    Ok(deb)
}

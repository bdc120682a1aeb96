//! `cargo xtask fresh`: the README's promise that two commands work on a
//! fresh Debian 12 machine, checked on one. A minimal Debian 12 root is
//! built with Debian's `mmdebstrap` from the package sources apt uses here;
//! inside it, with the repository (read-only), cargo and rustup
//! bind-mounted, `cargo xtask bootstrap` installs what it installs on a
//! user's machine, and the whole workspace (agent, eBPF object, tests,
//! benchmarks) is built into a target directory of its own. A package the
//! build needs that the bootstrap does not install fails here, not on a
//! user's machine, whatever this host happens to have installed by hand.
//!
//! The root starts with what cargo itself needs to work at all on Debian,
//! and nothing else: `gcc` and `libc6-dev` (rustc links through `cc`) and
//! `ca-certificates` (cargo fetches crates over HTTPS). The mounts live in a
//! private mount namespace (`unshare --mount`), so they vanish with it even
//! when the build fails or is killed, before the root is removed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{step, workspace_root};

/// What a Debian machine needs before `cargo` can build anything; the
/// README names the same packages.
pub const CARGO_PREREQUISITES: &[&str] = &["ca-certificates", "gcc", "libc6-dev"];

/// The suite the README promises.
const SUITE: &str = "bookworm";

pub fn run(keep: bool) -> anyhow::Result<()> {
    crate::bootstrap::install(&[("mmdebstrap", "/usr/bin/mmdebstrap")])?;
    let base = workspace_root().join("target/fresh");
    let root = base.join("root");
    remove_root(&root)?;
    std::fs::create_dir_all(&base)?;

    // Crates are the same on every machine and come from crates.io, not
    // from Debian: fetched here, so the root builds offline (this host may
    // reach crates.io only through a proxy the root's certificates do not
    // know) and the check is about the system packages alone.
    step("cargo fetch (the root builds offline from cargo's cache)");
    crate::cargo(&["fetch", "--locked"])?;

    step(&format!(
        "a fresh Debian 12 ({SUITE}, minbase) root with mmdebstrap: {}",
        root.display()
    ));
    let sources = apt_sources()?;
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        .args(["--variant=minbase", "--mode=root", "--quiet"])
        .arg(format!("--include={}", CARGO_PREREQUISITES.join(",")))
        .arg(SUITE)
        .arg(&root)
        .args(&sources);
    crate::run_status(&mut mmdebstrap)?;

    let result = build_inside(&root);
    if keep {
        eprintln!("xtask fresh: the root is kept at {}", root.display());
    } else {
        remove_root(&root)?;
    }
    result?;
    eprintln!(
        "xtask fresh: a fresh Debian 12 root with only {} bootstrapped and built the whole workspace",
        CARGO_PREREQUISITES.join(", ")
    );
    Ok(())
}

/// The deb822 or one-line source files apt reads here (enabled ones only:
/// `.sources` and `.list`), handed to mmdebstrap, which pastes each into
/// the new root's sources: the same mirror, suites and snapshot.
fn apt_sources() -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let main = Path::new("/etc/apt/sources.list");
    if std::fs::metadata(main).is_ok_and(|m| m.len() > 0) {
        found.push(main.to_owned());
    }
    let dir = Path::new("/etc/apt/sources.list.d");
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut names: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
            .filter(|p| is_debian_source(p))
            .collect();
        names.sort();
        found.extend(names);
    }
    if found.is_empty() {
        bail!("no apt sources under /etc/apt: mmdebstrap needs a Debian mirror");
    }
    Ok(found)
}

/// Only Debian's own archives: a third party's repository (a vendor's SDK)
/// needs its key, which a fresh root lacks, and is nothing the project uses.
fn is_debian_source(path: &Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|text| {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .any(|l| l.contains("debian.org/debian"))
    })
}

/// The bootstrap and the build inside the root, as a user would run them.
fn build_inside(root: &Path) -> anyhow::Result<()> {
    let repo = workspace_root();
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let cargo_home =
        std::env::var_os("CARGO_HOME").map_or_else(|| home.join(".cargo"), PathBuf::from);
    let rustup_home =
        std::env::var_os("RUSTUP_HOME").map_or_else(|| home.join(".rustup"), PathBuf::from);
    for dir in ["src", "root/.cargo", "root/.rustup"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    // Everything a failure leaves mounted goes with the namespace.
    let script = format!(
        r#"set -eu
root={root}
mount --make-rprivate /
mount --bind {repo} "$root/src"
mount -o remount,bind,ro "$root/src"
mount --bind {cargo_home} "$root/root/.cargo"
mount --bind {rustup_home} "$root/root/.rustup"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf"
exec chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_TARGET_DIR=/build/target CARGO_TERM_COLOR=never CARGO_NET_OFFLINE=true \
    /bin/sh -c '
set -eu
cd /src
echo "==> (fresh root) cargo xtask bootstrap"
cargo xtask bootstrap
echo "==> (fresh root) cargo build of the whole workspace, every target"
cargo build --locked --workspace --all-targets --exclude sg-ebpf --exclude sg-bench-floor
echo "==> (fresh root) the built agent runs"
/build/target/debug/sg-agent --version
'
"#,
        root = shell_quote(root),
        repo = shell_quote(&repo),
        cargo_home = shell_quote(&cargo_home),
        rustup_home = shell_quote(&rustup_home),
    );
    step("inside the fresh root: cargo xtask bootstrap, then build everything");
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(script)
        .status()
        .context("running unshare (util-linux)")?;
    if !status.success() {
        bail!(
            "the fresh Debian 12 root could not bootstrap and build the workspace ({status}; \
             its output is above): a package the build needs is missing from \
             xtask/src/bootstrap.rs, or the bootstrap itself failed"
        );
    }
    Ok(())
}

/// Removes a root left by an earlier run, after making sure nothing is
/// mounted inside it (a bind mount of the repository or of cargo's home
/// would otherwise be emptied along with it).
fn remove_root(root: &Path) -> anyhow::Result<()> {
    if !root.exists() {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let prefix = root.to_string_lossy().into_owned();
    if let Some(line) = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .find(|point| point.starts_with(&prefix))
    {
        bail!(
            "{line} is still mounted inside {}: unmount it (umount -R) before the root can be removed",
            root.display()
        );
    }
    std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

//! Builds the eBPF object (sg-ebpf) for the BPF target with aya-build; the
//! agent embeds it from `OUT_DIR`. Needs the nightly toolchain with rust-src
//! and bpf-linker: `cargo xtask bootstrap` installs both.

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sg-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [Package {
            name: "sg-ebpf",
            root_dir: root,
            ..Package::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF object failed; run `cargo xtask bootstrap` to install the nightly toolchain, rust-src and bpf-linker")
}

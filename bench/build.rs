//! Builds the floor XDP program (`bench/floor`) for the BPF target with
//! aya-build; the benchmark embeds it from `OUT_DIR`.

#[path = "../sg-agent/build-support/quiet.rs"]
mod quiet;

use std::path::Path;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("floor");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
    quiet::quietly(Path::new(&out), || {
        aya_build::build_ebpf(
            [Package {
                name: "sg-bench-floor",
                root_dir: root,
                ..Package::default()
            }],
            Toolchain::default(),
        )
    })
    .context("building the floor program failed; run `cargo xtask bootstrap`")
}

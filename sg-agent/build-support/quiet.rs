//! Shared by the build scripts that build eBPF objects with aya-build
//! (sg-agent's and the bench's), through `#[path]`.

use std::{
    io::{Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
    path::Path,
};

/// Runs `build` with this process's stdout going to a file, then passes on
/// only what cargo must act on (`cargo:rerun-if-*`, `cargo:rustc-*`).
/// aya-build turns every line the nested cargo prints (its progress
/// included) into a `cargo:warning=`, which cargo shows on every fresh
/// build; those lines are shown only when the build fails.
pub fn quietly(out_dir: &Path, build: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut capture = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out_dir.join("ebpf-build.log"))?;
    std::io::stdout().flush()?;
    // SAFETY: dup/dup2 on descriptors this process owns; stdout is flushed
    // before each switch, so no buffered line goes to the wrong place.
    let saved = unsafe { libc::dup(1) };
    anyhow::ensure!(
        saved >= 0,
        "dup(stdout): {}",
        std::io::Error::last_os_error()
    );
    anyhow::ensure!(
        unsafe { libc::dup2(capture.as_raw_fd(), 1) } >= 0,
        "dup2: {}",
        std::io::Error::last_os_error()
    );
    let result = build();
    std::io::stdout().flush()?;
    // SAFETY: as above; `saved` is closed once restored.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    let mut text = String::new();
    capture.rewind()?;
    capture.read_to_string(&mut text)?;
    for line in text.lines() {
        let keep = line.starts_with("cargo:rerun-if") || line.starts_with("cargo:rustc");
        if keep || result.is_err() {
            println!("{line}");
        }
    }
    result
}

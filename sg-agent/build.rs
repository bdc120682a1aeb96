//! Builds the eBPF object (sg-ebpf) for the BPF target with aya-build; the
//! agent embeds it from `OUT_DIR`. Needs the nightly toolchain with rust-src
//! and bpf-linker: `cargo xtask bootstrap` installs both.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (as aya's own integration tests
//! do) and leaves an empty object: the agent then builds and its pure code
//! can be tested on a host without the BPF toolchain; loading reports it.

#[path = "build-support/quiet.rs"]
mod quiet;

use std::path::Path;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
    let object = Path::new(&out).join("sg-ebpf");
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        std::fs::write(&object, [])?;
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sg-ebpf");
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    quiet::quietly(Path::new(&out), || {
        aya_build::build_ebpf(
            [Package {
                name: "sg-ebpf",
                root_dir: root,
                ..Package::default()
            }],
            Toolchain::default(),
        )
    })
    .context(
        "building the eBPF object failed (its compiler output is above); run `cargo xtask \
         bootstrap` to install the nightly toolchain, rust-src and bpf-linker",
    )?;
    let mut elf =
        std::fs::read(&object).with_context(|| format!("reading {}", object.display()))?;
    sanitize_btf_names(&mut elf).with_context(|| format!("BTF of {}", object.display()))?;
    std::fs::write(&object, elf)?;
    Ok(())
}

/// The kernel accepts only C identifiers as BTF type names. Rust's generic
/// names (`MaybeUninit<FlowEvent>`, from a ring-buffer entry) are not, and
/// aya renames structs but not unions (aya issue #1490), so the kernel
/// rejects the whole BTF and aya falls back to loading without it. Here
/// every such name in the object's `.BTF` string table has its `<`, `>`,
/// `,`, `:` and `&` turned into `_`: same length, so no offset moves.
/// Strings with spaces (source lines for line info) are left alone.
fn sanitize_btf_names(elf: &mut [u8]) -> anyhow::Result<()> {
    let (start, len) = btf_strings(elf).ok_or_else(|| anyhow!("no .BTF section"))?;
    let strings = &mut elf[start..start + len];
    for s in strings.split_mut(|&b| b == 0) {
        let generic = s.contains(&b'<') && !s.iter().any(u8::is_ascii_whitespace);
        if generic {
            for b in s
                .iter_mut()
                .filter(|b| matches!(b, b'<' | b'>' | b',' | b':' | b'&'))
            {
                *b = b'_';
            }
        }
    }
    Ok(())
}

fn u16_at(b: &[u8], o: usize) -> Option<usize> {
    Some(usize::from(u16::from_le_bytes(
        b.get(o..o + 2)?.try_into().ok()?,
    )))
}
fn u32_at(b: &[u8], o: usize) -> Option<usize> {
    usize::try_from(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?)).ok()
}
fn u64_at(b: &[u8], o: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?)).ok()
}

/// (offset, length) of the string table inside the `.BTF` section of a
/// little-endian ELF64 object.
fn btf_strings(elf: &[u8]) -> Option<(usize, usize)> {
    let shoff = u64_at(elf, 0x28)?;
    let shentsize = u16_at(elf, 0x3a)?;
    let shnum = u16_at(elf, 0x3c)?;
    let shstrndx = u16_at(elf, 0x3e)?;
    let section = |i: usize| {
        let h = shoff + i * shentsize;
        Some((
            u32_at(elf, h)?,
            u64_at(elf, h + 0x18)?,
            u64_at(elf, h + 0x20)?,
        ))
    };
    let (_, names_off, _) = section(shstrndx)?;
    (0..shnum).find_map(|i| {
        let (name, off, size) = section(i)?;
        let name_start = names_off + name;
        let name_end = name_start + elf.get(name_start..)?.iter().position(|&b| b == 0)?;
        if &elf[name_start..name_end] != b".BTF" || size < 24 {
            return None;
        }
        // BTF header: magic, version, flags, hdr_len, type_off, type_len,
        // str_off, str_len.
        let hdr_len = u32_at(elf, off + 4)?;
        let str_off = u32_at(elf, off + 16)?;
        let str_len = u32_at(elf, off + 20)?;
        Some((off + hdr_len + str_off, str_len))
    })
}

//! `cargo xtask`: the project's automation. It needs only stable cargo and
//! a few small crates (clap, anyhow), so it builds before anything else is
//! installed, and installs the rest.

mod bootstrap;
mod fresh;
mod fuzz;

use std::process::{Command, ExitCode};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "sg-agent's build, test, demo and benchmark automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what is missing: rust-src for nightly, bpf-linker 0.10.1, and
    /// the Debian packages the tests, demo and benchmarks use.
    Bootstrap,
    /// Run every test: unit, property, eBPF verdicts through
    /// `BPF_PROG_TEST_RUN`, the network-namespace, VM and libvirt suite
    /// (debug build), and the unit and property tests again in a release
    /// build (as root).
    Test {
        /// Only the debug build (quicker; CI runs both).
        #[arg(long)]
        debug_only: bool,
        /// The long forms too: 1,000,000 random packets through the
        /// differential test (20,000 otherwise).
        #[arg(long)]
        long: bool,
    },
    /// Build the seed architecture in network namespaces, enforce
    /// examples/seed-vpc.toml, print who reaches whom, replay the seed's
    /// experiment and tear it all down (as root).
    Demo {
        /// The four instances as real QEMU VMs, enforced on the host side
        /// of their taps, the matrix probed from inside the guests.
        #[arg(long)]
        vms: bool,
    },
    /// Check formatting and lints: `cargo fmt --check` and clippy (no
    /// warnings) on the workspace, and on the eBPF crates for the BPF target.
    Lint,
    /// Measure sg-agent against nftables and iptables and write
    /// BENCHMARKS.md (as root).
    Bench {
        /// A short run that proves the harness works (CI); asserts no timings.
        #[arg(long)]
        smoke: bool,
    },
    /// Inject every fault (kill -9, restart, upgrade, rename, failed reload,
    /// empty file, interface recreated, reloads under a flood) under live
    /// traffic, measure what enforcement lost and write RELIABILITY.md (as
    /// root). Fails when a figure misses its limit.
    Chaos {
        /// The short form CI runs: fewer reloads and connections, the
        /// report printed instead of written.
        #[arg(long)]
        smoke: bool,
    },
    /// Prove the bootstrap on a fresh machine: build a minimal Debian 12
    /// root with mmdebstrap (from the package sources apt uses here), run
    /// `cargo xtask bootstrap` in it and build the whole workspace there
    /// with a target directory of its own (as root; CI runs it).
    Fresh {
        /// Keep the root under target/fresh/root afterwards (to look into a
        /// failure).
        #[arg(long)]
        keep: bool,
    },
    /// Build the Debian package (binary, systemd unit, man page,
    /// completions) of the release build into target/debian/.
    Deb,
    /// Run each cargo-fuzz target of fuzz/ (the rules-file pipeline, the
    /// policy lookup against the reference evaluator, the packet parser
    /// against its reference decoder) from the seed corpus,
    /// built with the nightly toolchain as cargo-fuzz builds them.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Only this target: `rules_file`, `policy_lookup`, `packet_parser` or
        /// `ec2_api`.
        #[arg(long)]
        target: Option<String>,
    },
}

fn main() -> ExitCode {
    match run(&Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: &Cmd) -> anyhow::Result<()> {
    match *cmd {
        Cmd::Bootstrap => bootstrap::all(),
        Cmd::Lint => lint(),
        Cmd::Test { debug_only, long } => test(debug_only, long),
        Cmd::Demo { vms } => beside_the_agent(
            "the demo creates network namespaces and attaches eBPF programs",
            ("sg-tests", "sg-demo"),
            if vms { &["--vms"] } else { &[] },
        ),
        Cmd::Chaos { smoke } => {
            let out = workspace_root().join("RELIABILITY.md");
            let out = out.to_string_lossy();
            let args: &[&str] = if smoke {
                &["--smoke"]
            } else {
                &["--out", &out]
            };
            beside_the_agent(
                "the chaos suite creates network namespaces and attaches eBPF programs",
                ("sg-tests", "sg-chaos"),
                args,
            )
        }
        Cmd::Fuzz {
            seconds,
            ref target,
        } => {
            bootstrap::all()?;
            fuzz::run(seconds, target.as_deref())
        }
        Cmd::Fresh { keep } => {
            require_root("mmdebstrap, mounts and chroot need root")?;
            fresh::run(keep)
        }
        Cmd::Deb => {
            bootstrap::all()?;
            cargo(&["build", "--release", "--package", "sg-agent"])?;
            cargo(&[
                "run",
                "--release",
                "--package",
                "sg-tests",
                "--bin",
                "sg-deb",
            ])
        }
        Cmd::Bench { smoke } => beside_the_agent(
            "the benchmarks load eBPF programs and create network namespaces",
            ("sg-bench", "sg-bench"),
            if smoke { &["--smoke"] } else { &[] },
        ),
    }
}

/// Runs a harness that starts the real sg-agent binary beside it (demo,
/// chaos, bench): as root, after the bootstrap and a release build of the
/// agent; `harness` (package, binary) picks the harness, `args` go to it.
///
/// The agent and the harness are built by one cargo: cargo unifies the
/// dependencies' features over the packages it builds together, and the
/// harnesses' own dependencies turn on features of crates the agent shares
/// (regex's Unicode tables, through prometheus-parse), so the agent built
/// alone and the agent library the harness links were two release builds
/// of sg-agent. Built together they are one, and the next harness (sg-tests
/// and sg-bench unify alike) finds it built: a minute of CI each.
fn beside_the_agent(why_root: &str, harness: (&str, &str), args: &[&str]) -> anyhow::Result<()> {
    require_root(why_root)?;
    bootstrap::all()?;
    let (package, bin) = harness;
    cargo(&[
        "build",
        "--release",
        "--package",
        "sg-agent",
        "--package",
        package,
        "--bin",
        "sg-agent",
        "--bin",
        bin,
    ])?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), std::path::PathBuf::from);
    let path = target.join("release").join(bin);
    let status = Command::new(&path)
        .args(args)
        .status()
        .with_context(|| format!("running {}", path.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", path.display());
    }
    Ok(())
}

/// The eBPF crates: built for the BPF target with the nightly toolchain
/// (their `.cargo/config.toml` says so), so linted from their own folders.
const EBPF_CRATES: [&str; 2] = ["sg-ebpf", "bench/floor"];

fn lint() -> anyhow::Result<()> {
    step("cargo fmt --check (every crate of the workspace)");
    cargo(&["fmt", "--all", "--check"])?;
    step("clippy on the host crates, every target");
    let mut args = vec!["clippy", "--workspace", "--all-targets"];
    for krate in ["sg-ebpf", "sg-bench-floor"] {
        args.extend(["--exclude", krate]);
    }
    args.extend(["--", "-D", "warnings"]);
    cargo(&args)?;
    for dir in EBPF_CRATES {
        step(&format!("clippy on {dir} (BPF target, nightly)"));
        let status = Command::new("cargo")
            .args(["+nightly", "clippy", "--", "-D", "warnings"])
            .current_dir(workspace_root().join(dir))
            // rustup picks the toolchain from `+nightly` only when cargo is
            // its proxy, not the stable cargo xtask runs under.
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN")
            .status()
            .context("running cargo +nightly clippy")?;
        if !status.success() {
            bail!("clippy found problems in {dir} ({status})");
        }
    }
    Ok(())
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

fn test(debug_only: bool, long: bool) -> anyhow::Result<()> {
    require_root(
        "the privileged tests load eBPF programs and create network namespaces; they are never skipped",
    )?;
    bootstrap::all()?;
    if long {
        // Read by tests/tests/kernel_verdicts/differential.rs; the cargo
        // processes started below inherit it.
        // SAFETY: set before any thread of this process is started.
        unsafe { std::env::set_var("SG_DIFFERENTIAL_PACKETS", "1000000") };
    }
    // Unit and property tests in the debug build (overflow checks and
    // debug assertions on); the eBPF programs' logic in sg-common again in
    // the release build, since the kernel runs it with release arithmetic
    // (wrapping). The agent's own tests are not built twice: a second,
    // optimised build of its test binaries cost CI minutes and tested no
    // arithmetic the kernel runs. The privileged suite once, against the
    // debug build (in the agent it starts too); CI runs the release agent
    // through the benchmark and fault-injection harnesses.
    let unit: &[&str] = &[
        "--package",
        "sg-common",
        "--package",
        "sg-agent",
        "--package",
        "xtask",
    ];
    let mut totals = Totals::default();
    step("tests, debug build");
    // The network tests start the sg-agent binary of the same profile:
    // built with sg-tests, as `cargo test --package sg-tests` will link the
    // agent's library (one debug build of it, not one for each feature set:
    // see `beside_the_agent`).
    cargo(&[
        "build",
        "--package",
        "sg-agent",
        "--package",
        "sg-tests",
        "--bin",
        "sg-agent",
    ])?;
    cargo_test(&[&["test"], unit].concat(), &mut totals)?;
    // One test at a time: kernel state is shared.
    cargo_test(
        &["test", "--package", "sg-tests", "--", "--test-threads=1"],
        &mut totals,
    )?;
    if !debug_only {
        step("sg-common's tests, release build (the kernel's arithmetic)");
        cargo_test(
            &["test", "--release", "--package", "sg-common"],
            &mut totals,
        )?;
    }
    // One closing line over every test binary of every build.
    println!(
        "\nxtask test: {} passed, {} failed",
        totals.passed, totals.failed
    );
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// `cargo test ARGS` with its output passed through as it comes and its
/// `test result:` lines added up.
fn cargo_test(args: &[&str], totals: &mut Totals) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut child = Command::new(&cargo)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cargo}"))?;
    let stdout = child.stdout.take().context("piped stdout")?;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            totals.passed += count(rest, " passed");
            totals.failed += count(rest, " failed");
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The number before `word` in `ok. 4 passed; 0 failed; ...`.
fn count(result: &str, word: &str) -> u64 {
    result
        .split(';')
        .find_map(|part| {
            part.trim()
                .strip_suffix(word)?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

fn require_root(why: &str) -> anyhow::Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("run as root: {why} (e.g. sudo -E cargo xtask ...)");
    }
    Ok(())
}

/// Runs `cmd` with its output passed through; an error if it fails.
pub fn run_status(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_are_read_from_test_result_lines() {
        let line =
            "ok. 12 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(super::count(line, " passed"), 12);
        assert_eq!(super::count(line, " failed"), 3);
    }
}

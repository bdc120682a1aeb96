//! Every file under tests/broken-configs fails `sg-agent check` with exit
//! code 1 and prints each error its `# expect:` lines name.

use std::{path::Path, process::Command};

#[test]
fn each_broken_config_yields_its_precise_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/broken-configs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/broken-configs exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "expected the broken-config corpus, found {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let expects: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expects.is_empty(),
            "{} has no # expect: line",
            file.display()
        );
        let out = Command::new(env!("CARGO_BIN_EXE_sg-agent"))
            .arg("check")
            .arg(&file)
            .output()
            .expect("sg-agent runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: exit code; stderr:\n{stderr}",
            file.display()
        );
        assert!(
            out.stdout.is_empty(),
            "{}: nothing on stdout for an invalid file",
            file.display()
        );
        for e in expects {
            assert!(
                stderr.contains(e),
                "{}: expected {e:?} in:\n{stderr}",
                file.display()
            );
        }
    }
}

#[test]
fn the_seed_example_is_valid_and_resolves_group_references() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed-vpc.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_sg-agent"))
        .args(["check", "--json"])
        .arg(&file)
        .output()
        .expect("sg-agent runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let app = v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "app-1")
        .expect("app-1");
    let http = app["inbound"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ports"] == "80")
        .expect("port 80 rule");
    assert_eq!(http["source"], "group instagram-elb-security-group");
    assert_eq!(
        http["addresses"],
        serde_json::json!(["10.0.0.10/32", "2001:db8:0:1::10/128"])
    );
    assert_eq!(
        app["outbound"][0]["implicit"], true,
        "no egress key: AWS's default rule"
    );
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_sg-agent"))
        .args(["check"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

/// A FIFO renamed over the rules file must not block the agent (it would
/// then answer no signal): it is refused at once, as is a directory.
#[test]
fn only_regular_files_are_read() {
    let dir = std::env::temp_dir().join(format!("sg-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("rules.toml");
    let _ = std::fs::remove_file(&fifo);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let started = std::time::Instant::now();
    let err = sg_agent::config::load(&fifo).expect_err("a FIFO is not a rules file");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(
        err.to_string().contains("not a regular file (a FIFO)"),
        "{err}"
    );
    let err = sg_agent::config::load(&dir).expect_err("nor is a directory");
    assert!(err.to_string().contains("a directory"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

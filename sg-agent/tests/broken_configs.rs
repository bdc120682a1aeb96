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

//! What AWS accepts and ignores, `check` accepts and says: ports given for
//! a protocol without ports are ignored with a warning (exit 0), and the
//! rule allows every port, as in AWS.

use std::process::Command;

#[test]
fn ports_on_a_protocol_without_ports_are_ignored_with_a_warning() {
    let dir = std::env::temp_dir().join(format!("sg-warnings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("gre.toml");
    std::fs::write(
        &file,
        "[[security_group]]\nname = \"g\"\n  [[security_group.ingress]]\n  protocol = \"gre\"\n  \
         from_port = 5\n  to_port = 9\n  cidr_blocks = [\"10.0.0.0/8\"]\n\n[[instance]]\nname = \
         \"i\"\naddresses = [\"10.0.0.1\"]\nsecurity_groups = [\"g\"]\ninterface = \"eth0\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sg-agent"))
        .args(["check", "--json"])
        .arg(&file)
        .output()
        .expect("sg-agent runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "accepted, as AWS accepts it:\n{stderr}"
    );
    assert!(
        stderr.contains("gre.toml:5:15: warning: port 5 given for protocol 47 is ignored"),
        "and said, with where:\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        report["instances"][0]["inbound"][0]["ports"], "all",
        "the rule allows every port"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A rule's CIDR block with host bits set is taken as its network, as AWS
/// takes it (`100.68.0.18/18` is stored and shown as `100.68.0.0/18`):
/// accepted with a warning naming the block it becomes.
#[test]
fn a_rule_cidr_with_host_bits_is_taken_as_its_network() {
    let dir = std::env::temp_dir().join(format!("sg-hostbits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bits.toml");
    std::fs::write(
        &file,
        "[[security_group]]\nname = \"g\"\n  [[security_group.ingress]]\n  protocol = \"tcp\"\n  \
         from_port = 22\n  to_port = 22\n  cidr_blocks = [\"100.68.0.18/18\"]\n\n[[instance]]\nname = \
         \"i\"\naddresses = [\"10.0.0.1\"]\nsecurity_groups = [\"g\"]\ninterface = \"eth0\"\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sg-agent"))
        .args(["check", "--json"])
        .arg(&file)
        .output()
        .expect("sg-agent runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "accepted, as AWS accepts it:\n{stderr}"
    );
    assert!(
        stderr.contains(
            "bits.toml:7:18: warning: 100.68.0.18/18 has host bits set: taken as 100.68.0.0/18"
        ),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        report["instances"][0]["inbound"][0]["source"],
        "100.68.0.0/18"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

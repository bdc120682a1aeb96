//! Flow-log records are not lost: the interval still open is written when
//! an instance is removed and when the agent stops, and a write that fails
//! (a full disk) leaves no torn record, is counted, and is marked in the
//! file with a `SKIPDATA` record once writing works again.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use sg_tests::{
    probe::{Outcome, eventually},
    seed::{APP, BASTION, OUTSIDER, SEED, SeedLab, start_agent_logging_flows},
};

/// The flow log's lines after the header, split into fields.
fn lines(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .map(|l| l.split(' ').map(str::to_owned).collect())
        .collect()
}

/// Whether a REJECT record of `dst:port` is in the file.
fn rejected(path: &Path, dst: &str, port: u16) -> bool {
    let port = port.to_string();
    lines(path)
        .iter()
        .any(|f| f.len() == 14 && f[4] == dst && f[6] == port && f[12] == "REJECT")
}

fn without_app_1(rules: &str) -> String {
    let start = rules.find("[[instance]]\nname = \"app-1\"").expect("app-1");
    let end = start + rules[start..].find("\n\n").expect("its end") + 2;
    format!("{}{}", &rules[..start], &rules[end..])
}

#[test]
fn the_open_interval_is_written_when_an_instance_goes_and_when_the_agent_stops() {
    let lab = SeedLab::new("sgq", SEED, &[]);
    let flow_log = lab.config.parent().expect("dir").join("flows.log");
    let agent = start_agent_logging_flows(&lab, &flow_log, 600, &[]);
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), Outcome::TimedOut);
    let mark = agent.log_lines();
    lab.rewrite(&without_app_1(SEED));
    agent.expect_log("detached instance app-1", mark, Duration::from_secs(10));
    assert!(
        rejected(&flow_log, APP, 80),
        "app-1's records were written as it went: {:?}",
        lines(&flow_log)
    );

    assert_eq!(
        lab.tcp("internet", OUTSIDER, BASTION, 3306),
        Outcome::TimedOut
    );
    assert!(!rejected(&flow_log, BASTION, 3306), "the interval is open");
    assert_eq!(agent.terminate().code(), Some(0));
    assert!(
        rejected(&flow_log, BASTION, 3306),
        "the bastion's records were written as the agent stopped: {:?}",
        lines(&flow_log)
    );
}

/// A small tmpfs, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(at: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&at).expect("mount point");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&at)
            .status()
            .expect("mount runs")
            .success();
        assert!(ok, "mount a tmpfs on {}", at.display());
        Self(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with `filler` until a write fails.
fn fill(filler: &Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(filler).expect("filler");
    let chunk = vec![b'x'; 512];
    for _ in 0..100_000 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    // The last bytes, one at a time.
    for _ in 0..4096 {
        if f.write_all(b"x").is_err() {
            return;
        }
    }
}

#[test]
fn a_full_disk_tears_no_record_and_the_loss_is_counted_and_marked() {
    let lab = SeedLab::new("sgd", SEED, &[]);
    let disk = Tmpfs::new(lab.config.parent().expect("dir").join("small"), "256k");
    let flow_log = disk.0.join("flows.log");
    let agent = start_agent_logging_flows(&lab, &flow_log, 10, &[]);
    let filler = disk.0.join("filler");
    fill(&filler);

    // Rejected flows, each its own record, until the agent has failed to
    // write an interval's records. Four at a time: the flow log's last page
    // (tmpfs allocates 4 KiB pages) takes about 45 records before a write
    // fails, and one probe a second would need more than two intervals.
    let mut port = 3000;
    assert!(
        eventually(Duration::from_secs(25), || {
            std::thread::scope(|s| {
                for p in port + 1..=port + 4 {
                    let lab = &lab;
                    s.spawn(move || lab.tcp("internet", OUTSIDER, BASTION, p));
                }
            });
            port += 4;
            agent.status_json()["agent"]["flow_log"]["records_lost"].as_u64() > Some(0)
        }),
        "the failed write is counted: {}",
        agent.status_json()["agent"]["flow_log"]
    );
    for l in lines(&flow_log) {
        assert_eq!(l.len(), 14, "a whole record or none: {l:?}");
    }
    let written = agent.status_json()["agent"]["flow_log"]["records_written"]
        .as_u64()
        .expect("records_written");

    // Room again: the next interval is written, after a SKIPDATA record
    // for the time the lost ones cover.
    std::fs::remove_file(&filler).expect("remove the filler");
    assert!(
        eventually(Duration::from_secs(25), || {
            port += 1;
            let _ = lab.tcp("internet", OUTSIDER, BASTION, port);
            agent.status_json()["agent"]["flow_log"]["records_written"].as_u64() > Some(written)
        }),
        "writing works again"
    );
    let all = lines(&flow_log);
    assert!(
        all.iter()
            .any(|f| f.len() == 14 && f[2] == "-" && f[13] == "SKIPDATA"),
        "the loss is marked in the file: {all:?}"
    );
    for l in &all {
        assert_eq!(l.len(), 14, "a whole record or none: {l:?}");
    }
    assert_eq!(agent.terminate().code(), Some(0));
    drop(disk);
}

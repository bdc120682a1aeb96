//! sg-agent as a service: systemd's readiness protocol through a real
//! `NOTIFY_SOCKET` (a datagram socket this test binds, as systemd does),
//! JSON logs under systemd, shell completions and the man page.

use std::{
    io::{BufRead, BufReader},
    os::unix::net::UnixDatagram,
    process::{Command, Stdio},
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};
use sg_tests::{
    agent::{StateDir, binary},
    attached::attached_programs,
    probe::Outcome::TimedOut,
    seed::{APP, OUTSIDER, SEED, SeedLab},
};

/// The next message the agent sends, as systemd would read it.
fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a message from the agent within the time-out");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn readiness_reloads_and_stopping_through_a_real_notify_socket() {
    let lab = SeedLab::new("sgn", SEED, &[]);
    let dir = lab.config.parent().expect("lab dir").to_owned();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let state = StateDir::new();
    let mut child = Command::new(binary())
        .args(["run", "--config"])
        .arg(&lab.config)
        .arg("--state-dir")
        .arg(&state.path)
        .arg("--control-socket")
        .arg(state.control_socket())
        .env("NOTIFY_SOCKET", &path)
        // What systemd sets when the service logs to the journal.
        .env("JOURNAL_STREAM", "8:12345")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sg-agent starts");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));

    let ready = next(&socket);
    // READY=1 comes only once every instance is enforced: at this very
    // moment each has its programs and a blocked port is blocked.
    for host in ["alb", "bastion", "app-1", "rds"] {
        assert_eq!(
            attached_programs(&lab.ns(host)).len(),
            2,
            "{host} enforced when READY=1 came"
        );
    }
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=enforcing 4 instance(s)"), "{ready}");

    nix::sys::signal::kill(pid, Signal::SIGHUP).expect("SIGHUP");
    let reloading = next(&socket);
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    let done = next(&socket);
    assert!(done.contains("READY=1"), "{done}");
    assert!(
        done.contains("last reload (SIGHUP) unchanged"),
        "same file: nothing changed: {done}"
    );

    // A change: MySQL moves to port 3307 (the reload's record carries the
    // effective-rule diff for rds).
    lab.rewrite(&SEED.replace(
        "from_port = 3306\n  to_port = 3306",
        "from_port = 3307\n  to_port = 3307",
    ));
    assert!(next(&socket).contains("RELOADING=1"));
    let applied = next(&socket);
    assert!(
        applied.contains("READY=1") && applied.contains("applied"),
        "{applied}"
    );

    // A file that does not validate: rejected, said so in STATUS=.
    lab.rewrite("[[security_group]]\nname = 1\n");
    assert!(next(&socket).contains("RELOADING=1"));
    let rejected = next(&socket);
    assert!(
        rejected.contains("READY=1") && rejected.contains("rejected"),
        "{rejected}"
    );
    assert!(
        rejected.contains("STATUS=enforcing 4 instance(s)"),
        "the policy in force stays: {rejected}"
    );

    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("SIGTERM");
    // (A second look at the rewritten file may have sent one more pair.)
    let mut stopping = next(&socket);
    for _ in 0..4 {
        if stopping.contains("STOPPING=1") {
            break;
        }
        stopping = next(&socket);
    }
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    let stderr = child.stderr.take().expect("piped");
    let status = child.wait().expect("exits");
    assert!(status.success(), "{status}");

    check_json_records(stderr);
}

/// Under systemd the log is one JSON record per event, with the event's
/// own fields.
fn check_json_records(stderr: std::process::ChildStderr) {
    // The rejected reload's diagnostics, several lines of text, are one
    // record.
    let records: Vec<serde_json::Value> = BufReader::new(stderr)
        .lines()
        .map(|l| serde_json::from_str(&l.expect("a line")).expect("each line a JSON record"))
        .collect();
    let rejected = records
        .iter()
        .find(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("rejected"))
        })
        .expect("a record of the rejected reload");
    assert_eq!(rejected["level"], "ERROR");
    assert_eq!(rejected["result"], "rejected", "{rejected}");
    assert!(rejected["reload"].is_u64(), "{rejected}");
    assert!(
        rejected["message"]
            .as_str()
            .is_some_and(|m| m.contains('\n')),
        "{rejected}"
    );
    assert!(
        records.iter().any(|r| r["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("ready: enforcing"))
            && r["instances"] == 4),
        "{records:?}"
    );
    // Structured fields: the applied reload's number, trigger, duration
    // and diff; each instance's attach record names the instance.
    let applied = records
        .iter()
        .find(|r| r["result"] == "applied")
        .unwrap_or_else(|| panic!("a record of the applied reload: {records:?}"));
    assert!(
        applied["reload"].is_u64() && applied["duration_ms"].is_u64(),
        "{applied}"
    );
    assert_eq!(applied["diff_omitted"], 0, "{applied}");
    assert_eq!(
        applied["diff"],
        serde_json::json!([{
            "instance": "rds",
            "status": "changed",
            "added": ["ingress tcp 3307 from group instagram-server-security-group (10.0.1.10/32)"],
            "removed": ["ingress tcp 3306 from group instagram-server-security-group (10.0.1.10/32)"],
        }]),
        "{applied}"
    );
    assert!(
        applied["message"].as_str().is_some_and(|m| m.contains(
            "\ninstance rds (changed):\n  - ingress tcp 3306 from group instagram-server-security-group"
        )),
        "{applied}"
    );
    for host in ["alb", "bastion", "app-1", "rds"] {
        assert!(
            records.iter().any(|r| r["instance"] == host
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("attached instance"))),
            "{host}: {records:?}"
        );
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definitions() {
    let run = |args: &[&str]| {
        let out = Command::new(binary()).args(args).output().expect("runs");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let bash = run(&["completions", "bash"]);
    assert!(bash.contains("complete -F _sg__agent"), "{bash}");
    for verb in ["run", "check", "status", "flows", "detach"] {
        assert!(bash.contains(verb), "bash completes {verb}");
    }
    assert!(bash.contains("--flow-log-interval"));
    let zsh = run(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef sg-agent"), "{zsh}");
    let man = run(&["manpage"]);
    assert!(man.starts_with(".ie") || man.starts_with(".TH"), "{man}");
    assert!(man.contains(".TH sg-agent 1"), "{man}");
    for section in ["SG-AGENT RUN", "SG-AGENT STATUS", "SG-AGENT FLOWS"] {
        assert!(man.contains(section), "the man page has {section}");
    }
    assert!(
        man.contains("flow\\-log\\-interval"),
        "options, roff-escaped"
    );
}

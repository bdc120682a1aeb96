//! Many hosts, one VPC: two agents on this machine play two hosts, each
//! enforcing its own namespaces of one description kept in a real etcd
//! (the seed's load balancer and bastion on node a, the app server and
//! database on node b). Cross-node group references, a push that changes
//! a membership, an invalid description, and etcd killed and restarted.

use std::{process::Command, time::Duration};

use serde_json::Value;
use sg_tests::{
    agent::{AgentProcess, binary},
    etcd::EtcdServer,
    probe::Outcome::{Connected, TimedOut},
    seed::{ADMIN, ALB, APP, BASTION, OUTSIDER, RDS, SEED, SeedLab},
};

const START: Duration = Duration::from_secs(30);
const PROPAGATE: Duration = Duration::from_secs(10);

/// The seed split over two nodes; the bastion starts in a group of its own
/// (no rule names it), so SSH to the app server is closed.
fn two_nodes(bastion_group: &str) -> String {
    let mut text = SEED
        .replace(
            "name = \"alb\"\n",
            "name = \"alb\"\nnode = \"a\"\n",
        )
        .replace(
            "name = \"bastion\"\n",
            "name = \"bastion\"\nnode = \"a\"\n",
        )
        .replace(
            "name = \"app-1\"\n",
            "name = \"app-1\"\nnode = \"b\"\n",
        )
        .replace("name = \"rds\"\n", "name = \"rds\"\nnode = \"b\"\n")
        .replace(
            "addresses = [\"10.0.0.20\"]\nsecurity_groups = [\"instagram-bastion-host-security-group\"]",
            &format!("addresses = [\"10.0.0.20\"]\nsecurity_groups = [\"{bastion_group}\"]"),
        );
    text.push_str(
        "\n[[security_group]]\nname = \"ops\"\ndescription = \"no rule names this group\"\n",
    );
    assert_eq!(text.matches("node = ").count(), 4, "{text}");
    text
}

fn push(lab: &SeedLab, url: &str, text: &str) -> std::process::Output {
    let path = lab.config.with_file_name("push.toml");
    std::fs::write(&path, lab.lab.localize(text)).expect("write");
    Command::new(binary())
        .args(["push"])
        .arg(&path)
        .args(["--etcd", url])
        .output()
        .expect("sg-agent push runs")
}

fn start(url: &str, node: &str) -> AgentProcess {
    let agent = AgentProcess::start_without_file(&["--etcd", url, "--node", node]);
    agent.expect_log("ready: enforcing", 0, START);
    agent
}

fn names(status: &Value) -> Vec<String> {
    status["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .filter(|i| i["state"] == "enforced")
        .map(|i| i["name"].as_str().expect("name").to_owned())
        .collect()
}

/// Waits until both agents have applied (or rejected) a revision.
fn both_log(agents: [&AgentProcess; 2], marks: [usize; 2], needle: &str) -> [String; 2] {
    let mut out = [String::new(), String::new()];
    for ((agent, mark), line) in agents.iter().zip(marks).zip(&mut out) {
        let at = agent.expect_log(needle, mark, PROPAGATE);
        *line = agent.log_line(at);
    }
    out
}

#[test]
fn two_nodes_share_one_vpc_through_etcd() {
    let lab = SeedLab::new("sge", SEED, &[]);
    let mut etcd = EtcdServer::start("sge");
    let url = etcd.url();
    let out = push(&lab, &url, &two_nodes("ops"));
    assert!(out.status.success(), "push: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("at revision"),
        "{out:?}"
    );

    let a = start(&url, "a");
    let b = start(&url, "b");
    assert_eq!(names(&a.status_json()), ["alb", "bastion"]);
    assert_eq!(names(&b.status_json()), ["app-1", "rds"]);
    let etcd_status = &b.status_json()["agent"]["etcd"];
    assert_eq!(etcd_status["connected"], true, "{etcd_status}");
    assert_eq!(etcd_status["key"], "/sg-agent/vpc");

    // Cross-node group references: the app server's rule names the load
    // balancer's group, whose member runs on node a.
    assert_eq!(lab.tcp("alb", ALB, APP, 80), Connected, "alb -> app:80");
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    assert_eq!(lab.tcp("internet", OUTSIDER, ALB, 80), Connected);
    assert_eq!(lab.tcp("app-1", APP, RDS, 3306), Connected);
    assert_eq!(lab.tcp("alb", ALB, RDS, 3306), TimedOut);
    assert_eq!(
        lab.tcp("bastion", BASTION, APP, 22),
        TimedOut,
        "the bastion is not in the bastion group yet"
    );
    assert_eq!(lab.tcp("internet", ADMIN, BASTION, 22), TimedOut);

    // A push that puts the bastion in the bastion group opens SSH on node
    // b's app server (and to the bastion from the admins, on node a).
    let marks = [a.log_lines(), b.log_lines()];
    let out = push(
        &lab,
        &url,
        &two_nodes("instagram-bastion-host-security-group"),
    );
    assert!(out.status.success(), "push: {out:?}");
    let lines = both_log([&a, &b], marks, "applied in");
    for line in &lines {
        assert!(line.contains("(etcd revision "), "{line}");
    }
    // Node b's reload record carries the diff (lines after the first).
    b.expect_log(
        "  + ingress tcp 22 from group instagram-bastion-host-security-group (10.0.0.20/32)",
        marks[1],
        PROPAGATE,
    );
    assert_eq!(lab.tcp("bastion", BASTION, APP, 22), Connected);
    assert_eq!(lab.tcp("internet", ADMIN, BASTION, 22), Connected);
    let in_force = b.status_json()["agent"]["etcd"]["revision"].clone();

    // An invalid file is refused by push, before etcd.
    let out = push(&lab, &url, "[[security_group]]\nname = 1\n");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // Written to etcd by anything else, it changes nothing on either node.
    let marks = [a.log_lines(), b.log_lines()];
    let bad = put_directly(&url, "[[instance]]\nname = \"x\"\n");
    let lines = both_log([&a, &b], marks, "rejected");
    for line in &lines {
        assert!(
            line.contains(&format!("etcd revision {bad}")),
            "logged with its revision: {line}"
        );
    }
    assert_eq!(lab.tcp("bastion", BASTION, APP, 22), Connected);
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    let status = b.status_json();
    assert_eq!(status["agent"]["etcd"]["revision"], in_force, "{status}");
    assert_eq!(status["agent"]["etcd"]["latest_revision"], bad, "{status}");

    // etcd killed: both keep enforcing, and say they lost it.
    etcd.kill();
    for agent in [&a, &b] {
        agent.expect_log("etcd lost", 0, PROPAGATE);
    }
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    assert_eq!(lab.tcp("bastion", BASTION, APP, 22), Connected);
    assert_eq!(lab.tcp("internet", OUTSIDER, ALB, 80), Connected);
    assert_eq!(b.status_json()["agent"]["etcd"]["connected"], false);

    // Restarted: the watch resumes, and the next push lands on both.
    let marks = [a.log_lines(), b.log_lines()];
    etcd.resume();
    both_log([&a, &b], marks, "etcd reachable at revision");
    let marks = [a.log_lines(), b.log_lines()];
    let out = push(&lab, &url, &two_nodes("ops"));
    assert!(out.status.success(), "push after the restart: {out:?}");
    both_log([&a, &b], marks, "applied in");
    assert_eq!(
        lab.tcp("bastion", BASTION, APP, 22),
        TimedOut,
        "the bastion left the group again"
    );
    assert_eq!(b.status_json()["agent"]["etcd"]["connected"], true);

    // `pull` prints the description in force.
    let pulled = Command::new(binary())
        .args(["pull", "--etcd", &url])
        .output()
        .expect("pull runs");
    assert!(pulled.status.success(), "{pulled:?}");
    assert_eq!(
        String::from_utf8_lossy(&pulled.stdout),
        lab.lab.localize(&two_nodes("ops"))
    );
}

/// The options `push` would use for the description at `url`.
fn etcd_options(url: &str) -> sg_agent::source::etcd::EtcdOptions {
    sg_agent::source::etcd::EtcdOptions {
        endpoints: vec![url.to_owned()],
        prefix: "/sg-agent".to_owned(),
        ..Default::default()
    }
}

/// Runs `f` to completion on a runtime of its own.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Writes to the description's key without `push`'s validation (as a
/// careless script might); the new revision.
fn put_directly(url: &str, text: &str) -> i64 {
    let opts = etcd_options(url);
    block_on(async {
        let mut client = sg_agent::source::etcd::connect(&opts).await.expect("etcd");
        let (current, _) = sg_agent::source::etcd::read(&mut client, &opts)
            .await
            .expect("read");
        let rev = current.map_or(0, |c| c.mod_revision);
        sg_agent::source::etcd::compare_and_put(&mut client, &opts, rev, text)
            .await
            .expect("put")
    })
}

/// Two pushes that read the same revision: one lands, the other is told
/// to pull and merge (compare-and-swap on the revision it read).
#[test]
fn concurrent_pushes_do_not_interleave() {
    let etcd = EtcdServer::start("sgcas");
    let opts = etcd_options(&etcd.url());
    block_on(async {
        use sg_agent::source::etcd::{EtcdError, compare_and_put, connect, read};
        let mut client = connect(&opts).await.expect("etcd");
        let first = compare_and_put(&mut client, &opts, 0, "# one\n")
            .await
            .expect("the first push");
        let lost = compare_and_put(&mut client, &opts, 0, "# two\n").await;
        assert!(
            matches!(lost, Err(EtcdError::Conflict { read: 0, now }) if now == first),
            "{lost:?}"
        );
        let (mut c3, mut c4) = (client.clone(), client.clone());
        let (a, b) = tokio::join!(
            compare_and_put(&mut c3, &opts, first, "# three\n"),
            compare_and_put(&mut c4, &opts, first, "# four\n"),
        );
        assert!(a.is_ok() != b.is_ok(), "exactly one lands: {a:?} {b:?}");
        let (now, _) = read(&mut client, &opts).await.expect("read");
        let text = now.expect("a description").text;
        assert_eq!(text, if a.is_ok() { "# three\n" } else { "# four\n" });
    });
}

/// A real cluster's setup: etcd over TLS, requiring client certificates.
/// `push` and `run` get through with --etcd-cacert/--etcd-cert/--etcd-key;
/// without a client certificate, etcd refuses and `push` exits 1.
#[test]
fn etcd_over_tls_with_client_certificates() {
    let lab = SeedLab::new("sgk", SEED, &[]);
    let certs = EtcdServer::dir_for("sgk-certs");
    let (server, cert, key) = sg_tests::etcd::make_certificates(&certs);
    let ca = server.ca.clone();
    let etcd = EtcdServer::start_with("sgk", Some(server));
    let url = etcd.url();
    assert!(url.starts_with("https://"));
    let tls = [
        "--etcd-cacert",
        ca.to_str().expect("utf-8"),
        "--etcd-cert",
        cert.to_str().expect("utf-8"),
        "--etcd-key",
        key.to_str().expect("utf-8"),
    ];
    let path = lab.config.with_file_name("push.toml");
    std::fs::write(&path, lab.lab.localize(&two_nodes("ops"))).expect("write");
    let path = path.to_str().expect("utf-8");
    let refused = Command::new(binary())
        .args(["push", path, "--etcd", &url, "--etcd-cacert"])
        .arg(&ca)
        .output()
        .expect("push runs");
    assert_eq!(
        refused.status.code(),
        Some(1),
        "no client certificate: {refused:?}"
    );
    let pushed = Command::new(binary())
        .args(["push", path, "--etcd", &url])
        .args(tls)
        .output()
        .expect("push runs");
    assert!(pushed.status.success(), "{pushed:?}");
    let mut args = vec!["--etcd", url.as_str(), "--node", "b"];
    args.extend(tls);
    let b = AgentProcess::start_without_file(&args);
    b.expect_log("ready: enforcing 2 instance(s)", 0, START);
    assert_eq!(b.status_json()["agent"]["etcd"]["connected"], true);
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    assert_eq!(lab.tcp("app-1", APP, RDS, 3306), Connected);
    drop(b);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&certs);
}

/// etcd with authentication on: a user whose role may read and write only
/// the description's prefix. `push` and `run` get through with
/// `--etcd-user USER:PASSWORD`; without it, or with a wrong password,
/// etcd refuses and `push` exits 1.
#[test]
fn etcd_with_a_user_and_password() {
    let lab = SeedLab::new("sgu", SEED, &[]);
    let etcd = EtcdServer::start("sgu");
    let url = etcd.url();
    let opts = etcd_options(&url);
    block_on(async {
        let mut c = sg_agent::source::etcd::connect(&opts).await.expect("etcd");
        c.user_add("root", "root-secret", None).await.expect("root");
        c.role_add("root").await.expect("root role");
        c.user_grant_role("root", "root").await.expect("grant");
        c.role_add("sg-agent").await.expect("role");
        c.role_grant_permission(
            "sg-agent",
            etcd_client::Permission::read_write("/sg-agent/").with_prefix(),
        )
        .await
        .expect("permission");
        c.user_add("sg", "sg-secret", None).await.expect("user");
        c.user_grant_role("sg", "sg-agent").await.expect("grant");
        c.auth_enable().await.expect("auth on");
    });
    let path = lab.config.with_file_name("push.toml");
    std::fs::write(&path, lab.lab.localize(&two_nodes("ops"))).expect("write");
    let path = path.to_str().expect("utf-8");
    let push = |user: Option<&str>| {
        Command::new(binary())
            .args(["push", path, "--etcd", &url])
            .args(user.map(|u| ["--etcd-user", u]).into_iter().flatten())
            .output()
            .expect("push runs")
    };
    for user in [None, Some("sg:wrong")] {
        let refused = push(user);
        assert_eq!(refused.status.code(), Some(1), "{user:?}: {refused:?}");
    }
    let pushed = push(Some("sg:sg-secret"));
    assert!(pushed.status.success(), "{pushed:?}");
    let b = AgentProcess::start_without_file(&[
        "--etcd",
        &url,
        "--etcd-user",
        "sg:sg-secret",
        "--node",
        "b",
    ]);
    b.expect_log("ready: enforcing 2 instance(s)", 0, START);
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    assert_eq!(lab.tcp("app-1", APP, RDS, 3306), Connected);
}

/// `push` with extra arguments.
fn push_with(lab: &SeedLab, url: &str, text: &str, extra: &[&str]) -> std::process::Output {
    let path = lab.config.with_file_name("push.toml");
    std::fs::write(&path, lab.lab.localize(text)).expect("write");
    Command::new(binary())
        .args(["push"])
        .arg(&path)
        .args(["--etcd", url])
        .args(extra)
        .output()
        .expect("sg-agent push runs")
}

fn pull(url: &str) -> std::process::Output {
    Command::new(binary())
        .args(["pull", "--etcd", url])
        .output()
        .expect("sg-agent pull runs")
}

/// The seed with only the instance `keep`: the others' tables removed.
fn only_instance(keep: &str) -> String {
    let mut text = SEED.to_owned();
    for name in ["alb", "bastion", "app-1", "rds"] {
        if name == keep {
            continue;
        }
        let start = text
            .find(&format!("[[instance]]\nname = \"{name}\""))
            .expect("the instance");
        let end = start
            + text[start..]
                .find("\n\n")
                .map_or(text.len() - start, |e| e + 2);
        text.replace_range(start..end, "");
    }
    text
}

/// Whoever writes the etcd key does not control everything on a host: a
/// description naming an interface of the host's own namespace is refused
/// (a lockout of the NIC carrying etcd), one that would stop enforcing
/// most instances at once is refused unless pushed with --allow-detach, a
/// value that is not a description is reported by `pull` with its
/// revision and replaced with `push --force`, and the agent warns that
/// this etcd has neither TLS nor authentication.
#[test]
fn a_remote_description_is_limited_on_each_host() {
    let lab = SeedLab::new("sgl", SEED, &[]);
    let etcd = EtcdServer::start("sgl");
    let url = etcd.url();
    assert!(push(&lab, &url, SEED).status.success());
    let agent = AgentProcess::start_without_file(&["--etcd", &url]);
    agent.expect_log("ready: enforcing 4 instance(s)", 0, START);
    agent.expect_log("etcd is reached WITHOUT TLS", 0, START);
    agent.expect_log("etcd is reached WITHOUT AUTHENTICATION", 0, START);

    // The host's own namespace: a name that exists nowhere, so a failure
    // of this test touches nothing.
    let own = format!(
        "{SEED}\n[[instance]]\nname = \"host\"\ninterface = \"sgl-none0\"\naddresses = \
         [\"10.9.9.9\"]\nsecurity_groups = [\"instagram-bastion-host-security-group\"]\n"
    );
    let mark = agent.log_lines();
    let out = push(&lab, &url, &own);
    assert!(
        out.status.success(),
        "push validates the file, not a host's limits: {out:?}"
    );
    // The refusal's reasons come as lines after the one that says it:
    // waited for, not read at once.
    agent.expect_log("rejected", mark, PROPAGATE);
    agent.expect_log(
        "interface \"sgl-none0\" is an interface of this host's own namespace",
        mark,
        PROPAGATE,
    );
    assert_eq!(names(&agent.status_json()).len(), 4);

    // Three of four instances at once: refused; confirmed: applied.
    let mark = agent.log_lines();
    assert!(push(&lab, &url, &only_instance("rds")).status.success());
    agent.expect_log("would stop enforcing 3 of the 4 instances", mark, PROPAGATE);
    assert_eq!(names(&agent.status_json()).len(), 4, "nothing detached");
    let mark = agent.log_lines();
    let out = push_with(&lab, &url, &only_instance("rds"), &["--allow-detach"]);
    assert!(out.status.success(), "{out:?}");
    agent.expect_log("applied in", mark, PROPAGATE);
    assert_eq!(names(&agent.status_json()), ["rds"]);

    // Not UTF-8: pull says what and where, push refuses to overwrite it
    // blindly, push --force does.
    let opts = etcd_options(&url);
    let mark = agent.log_lines();
    block_on(async {
        let mut client = sg_agent::source::etcd::connect(&opts).await.expect("etcd");
        client
            .put(opts.key(), vec![0xff, 0xfe, 0x00], None)
            .await
            .expect("put");
    });
    agent.expect_log("is not UTF-8 text", mark, PROPAGATE);
    let out = pull(&url);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not UTF-8") && err.contains("(revision ") && err.contains("--force"),
        "{err}"
    );
    assert!(!push(&lab, &url, SEED).status.success());
    let out = push_with(&lab, &url, SEED, &["--force"]);
    assert!(out.status.success(), "{out:?}");
    let status = agent.status_json();
    assert!(
        eventually_enforcing(&agent, 4),
        "the good description is in force again: {}",
        status["agent"]
    );

    // Valid UTF-8, no description: pull says it does not validate.
    put_directly(&url, "this is = not [ a description");
    let out = pull(&url);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not a valid description"), "{err}");
    assert_eq!(agent.terminate().code(), Some(0));
}

fn eventually_enforcing(agent: &AgentProcess, n: usize) -> bool {
    sg_tests::probe::eventually(PROPAGATE, || names(&agent.status_json()).len() == n)
}

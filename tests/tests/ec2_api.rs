//! The EC2 API (`run --ec2-api`) driven by the real AWS CLI and boto3
//! (`PyPI`'s, in a virtual environment the tests make): every call and its
//! errors, each change in force on the wire when answered, the rules file
//! written back keeping its comments, Terraform's call sequences replayed,
//! and moto's server beside it as a differential peer.

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use sg_tests::{
    agent::{AgentProcess, StateDir, binary},
    aws::{self, aws_cli, free_port, python, script},
    probe::Outcome::{Connected, TimedOut},
    seed::{ALB, APP, OUTSIDER, SEED, START, SeedLab},
};

/// The agent on the seed lab with the EC2 API on a loopback port of its own.
fn start(lab: &SeedLab, state: &StateDir) -> (AgentProcess, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let agent = AgentProcess::start_in(state, &lab.config, &["--ec2-api", &listen], "info");
    agent.expect_log("ready: enforcing", 0, START);
    (agent, format!("http://{listen}"))
}

fn json(out: &std::process::Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}: not JSON: {e}"))
}

/// A call that answers nothing on success (the AWS CLI prints nothing).
fn ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The one instance in `group`, by the API.
fn the_instance_in(endpoint: &str, group: &str) -> String {
    let filter = format!("Name=instance.group-id,Values={group}");
    let out = aws_cli(
        endpoint,
        &["ec2", "describe-instances", "--filters", &filter],
    );
    json(&out, "describe-instances")["Reservations"][0]["Instances"][0]["InstanceId"]
        .as_str()
        .expect("InstanceId")
        .to_owned()
}

/// The id `status` shows for instance `name`.
fn status_id(agent: &AgentProcess, name: &str) -> Option<String> {
    let status = agent.status_json();
    status["instances"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)
        .and_then(|i| i["id"].as_str().map(str::to_owned))
}

fn group_id(endpoint: &str, name: &str) -> String {
    let out = aws_cli(
        endpoint,
        &["ec2", "describe-security-groups", "--group-names", name],
    );
    json(&out, "describe-security-groups")["SecurityGroups"][0]["GroupId"]
        .as_str()
        .expect("GroupId")
        .to_owned()
}

/// `sg-agent check` accepts the rules file at `path`.
fn assert_check_accepts(path: &std::path::Path, when: &str) {
    let check = std::process::Command::new(binary())
        .arg("check")
        .arg(path)
        .output()
        .expect("sg-agent check");
    assert!(
        check.status.success(),
        "check {when}: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

fn assert_script(out: &std::process::Output, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("checks passed"), "{what} said: {stdout}");
    eprintln!("{}", stdout.trim());
}

#[test]
fn every_call_answers_as_ec2_does() {
    let lab = SeedLab::new("ea", SEED, &[]);
    let state = StateDir::new();
    let (_agent, endpoint) = start(&lab, &state);
    let aws_bin = aws::venv().join("bin/aws");
    let out = python(
        &script("api_calls.py"),
        &[&endpoint, aws_bin.to_str().expect("utf-8")],
    );
    assert_script(&out, "api_calls.py");
    // Every file the API wrote is one `check` accepts, and the seed's
    // comments are still there.
    assert_check_accepts(&lab.config, "after the API's changes");
    let text = std::fs::read_to_string(&lab.config).expect("rules file");
    assert!(
        text.contains("# The seed architecture: a load balancer"),
        "comments kept:\n{text}"
    );
    assert!(
        text.contains("# A prefix list holds one address family, as in AWS."),
        "comments kept"
    );
}

#[test]
fn a_change_is_in_force_on_the_wire_when_it_is_answered() {
    let lab = SeedLab::new("ew", SEED, &[]);
    let state = StateDir::new();
    let (agent, endpoint) = start(&lab, &state);
    let server = group_id(&endpoint, "instagram-server-security-group");
    let elb = group_id(&endpoint, "instagram-elb-security-group");
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        TimedOut,
        "before: blocked"
    );

    // Authorized: the very next connection passes (no wait: the answer
    // means the kernel enforces it).
    let cidr = format!("{OUTSIDER}/32");
    let rule = [
        "--group-id",
        &server,
        "--protocol",
        "tcp",
        "--port",
        "80",
        "--cidr",
        &cidr,
    ];
    let out = aws_cli(
        &endpoint,
        &[&["ec2", "authorize-security-group-ingress"][..], &rule].concat(),
    );
    let answer = json(&out, "authorize");
    assert_eq!(answer["SecurityGroupRules"][0]["CidrIpv4"], cidr.as_str());
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        Connected,
        "authorized through the API"
    );

    // Revoked: new connections time out at once.
    let out = aws_cli(
        &endpoint,
        &[&["ec2", "revoke-security-group-ingress"][..], &rule].concat(),
    );
    json(&out, "revoke");
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        TimedOut,
        "revoked through the API"
    );

    // A membership changed: the app server joins the load balancer's group
    // (HTTP from anywhere), then leaves it.
    let app = the_instance_in(&endpoint, &server);
    assert_eq!(
        status_id(&agent, "app-1"),
        Some(app.clone()),
        "status shows the id the API answers"
    );
    ok(
        &aws_cli(
            &endpoint,
            &[
                "ec2",
                "modify-instance-attribute",
                "--instance-id",
                &app,
                "--groups",
                &server,
                &elb,
            ],
        ),
        "modify-instance-attribute",
    );
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        Connected,
        "in the load balancer's group"
    );
    ok(
        &aws_cli(
            &endpoint,
            &[
                "ec2",
                "modify-instance-attribute",
                "--instance-id",
                &app,
                "--groups",
                &server,
            ],
        ),
        "modify-instance-attribute",
    );
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        TimedOut,
        "out of it again"
    );
    assert!(
        agent.log_text().contains("trigger=EC2 API") || agent.log_text().contains("(EC2 API)"),
        "the reloads say they came from the API"
    );
}

#[test]
fn the_file_stays_the_source_of_truth() {
    let lab = SeedLab::new("ef", SEED, &[]);
    let state = StateDir::new();
    let (agent, endpoint) = start(&lab, &state);
    let before = std::fs::metadata(&lab.config).expect("stat");
    let created = json(
        &aws_cli(
            &endpoint,
            &[
                "ec2",
                "create-security-group",
                "--group-name",
                "from-api",
                "--description",
                "kept",
            ],
        ),
        "create-security-group",
    );
    let gid = created["GroupId"].as_str().expect("GroupId").to_owned();
    let text = std::fs::read_to_string(&lab.config).expect("read");
    assert!(
        text.contains(&format!("id = \"{gid}\"")),
        "the new group is in the file:\n{text}"
    );
    assert!(
        text.starts_with("# The seed architecture"),
        "the file's head is untouched"
    );
    let after = std::fs::metadata(&lab.config).expect("stat");
    assert_eq!(
        (before.mode(), before.uid()),
        (after.mode(), after.uid()),
        "owner and mode kept"
    );

    // A hand edit shows in the API at the next reload.
    let edited = text.replace(
        "description = \"MySQL from the app servers\"",
        "description = \"MySQL from the app servers\"\ntags = { Owner = \"dba\" }",
    );
    assert_ne!(edited, text, "the seed's rds group has that description");
    let tmp = lab.config.with_extension("edit");
    std::fs::write(&tmp, &edited).expect("write");
    std::fs::rename(&tmp, &lab.config).expect("rename");
    assert!(
        sg_tests::probe::eventually(Duration::from_secs(5), || {
            let out = aws_cli(
                &endpoint,
                &["ec2", "describe-tags", "--filters", "Name=key,Values=Owner"],
            );
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"dba\"")
        }),
        "the hand edit's tag is answered"
    );

    // A restart keeps every change.
    drop(agent);
    let (_agent, endpoint) = start(&lab, &state);
    let out = aws_cli(
        &endpoint,
        &["ec2", "describe-security-groups", "--group-ids", &gid],
    );
    assert_eq!(
        json(&out, "describe after restart")["SecurityGroups"][0]["Description"],
        "kept"
    );
}

#[test]
fn an_endpoint_off_loopback_needs_credentials_and_checks_signatures() {
    let lab = SeedLab::new("ec", SEED, &[]);
    let state = StateDir::new();
    // Off loopback without credentials: refused before anything listens.
    let port = free_port().to_string();
    let out = std::process::Command::new(binary())
        .args(["run", "--config"])
        .arg(&lab.config)
        .args(["--state-dir"])
        .arg(&state.path)
        .args(["--control-socket"])
        .arg(state.control_socket())
        .args(["--ec2-api", &format!("0.0.0.0:{port}")])
        .output()
        .expect("sg-agent run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ec2-api-credentials"));

    // With credentials: a signature by another secret is AuthFailure.
    let creds = lab.config.with_file_name("ec2-credentials");
    std::fs::write(
        &creds,
        "# the test's key\nAKIDSGAGENTTEST sg-agent-test-secret\n",
    )
    .expect("write");
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let listen = format!("127.0.0.1:{}", free_port());
    let agent = AgentProcess::start_in(
        &state,
        &lab.config,
        &[
            "--ec2-api",
            &listen,
            "--ec2-api-credentials",
            creds.to_str().expect("utf-8"),
        ],
        "info",
    );
    agent.expect_log("ready: enforcing", 0, START);
    let endpoint = format!("http://{listen}");
    let out = aws_cli(&endpoint, &["ec2", "describe-vpcs"]);
    assert!(
        out.status.success(),
        "the right key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = std::process::Command::new(aws::venv().join("bin/aws"))
        .args(["--endpoint-url", &endpoint, "ec2", "describe-vpcs"])
        .envs(aws::test_credentials())
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .output()
        .expect("aws");
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("AuthFailure"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    let unknown = std::process::Command::new(aws::venv().join("bin/aws"))
        .args(["--endpoint-url", &endpoint, "ec2", "describe-vpcs"])
        .envs(aws::test_credentials())
        .env("AWS_ACCESS_KEY_ID", "AKIDSOMEONEELSE")
        .output()
        .expect("aws");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("AuthFailure"));
}

#[test]
fn terraforms_call_sequences_replayed_leave_nothing_to_plan() {
    let lab = SeedLab::new("et", SEED, &[]);
    let state = StateDir::new();
    let (_agent, endpoint) = start(&lab, &state);
    let out = python(&script("terraform_replay.py"), &[&endpoint]);
    assert_script(&out, "terraform_replay.py");
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        TimedOut,
        "what Terraform destroyed lets nothing in"
    );
}

#[test]
fn responses_have_the_shape_moto_gives_where_moto_follows_aws() {
    let lab = SeedLab::new("em", SEED, &[]);
    let state = StateDir::new();
    let (_agent, endpoint) = start(&lab, &state);
    let moto = aws::Moto::start();
    let out = python(&script("differential.py"), &[&moto.endpoint, &endpoint]);
    assert_script(&out, "differential.py");
}

/// The options `push` uses for the description at `url`.
fn etcd_options(url: &str) -> sg_agent::source::etcd::EtcdOptions {
    sg_agent::source::etcd::EtcdOptions {
        endpoints: vec![url.to_owned()],
        prefix: "/sg-agent".to_owned(),
        ..Default::default()
    }
}

/// The description in etcd now.
fn etcd_text(url: &str) -> String {
    let opts = etcd_options(url);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let mut client = sg_agent::source::etcd::connect(&opts).await.expect("etcd");
            let (current, _) = sg_agent::source::etcd::read(&mut client, &opts)
                .await
                .expect("read");
            current.expect("a description").text
        })
}

/// An authorize through the AWS CLI, made again while the description
/// changed under it (`IncorrectState`, as a client retries it).
fn authorize_until_done(endpoint: &str, group: &str, port: u16) {
    let port = port.to_string();
    for _ in 0..20 {
        let out = aws_cli(
            endpoint,
            &[
                "ec2",
                "authorize-security-group-ingress",
                "--group-id",
                group,
                "--protocol",
                "tcp",
                "--port",
                &port,
                "--cidr",
                "192.168.0.0/16",
            ],
        );
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("IncorrectState"),
            "authorize port {port}: {err}"
        );
    }
    panic!("authorize port {port}: still IncorrectState after 20 tries");
}

#[test]
fn with_etcd_the_api_writes_the_description_and_no_writer_loses_anothers_change() {
    let lab = SeedLab::new("ee", SEED, &[]);
    let etcd = sg_tests::etcd::EtcdServer::start("ec2-api");
    let url = etcd.url();
    let pushed = std::process::Command::new(binary())
        .args(["push"])
        .arg(&lab.config)
        .args(["--etcd", &url])
        .output()
        .expect("sg-agent push");
    assert!(pushed.status.success(), "push: {pushed:?}");
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    // Two agents on one description, each with its endpoint: this host's
    // (enforcing the lab), and another node's (enforcing nothing here).
    let here = AgentProcess::start_without_file(&["--etcd", &url, "--ec2-api", &a]);
    here.expect_log("ready: enforcing", 0, START);
    let there = AgentProcess::start_without_file(&[
        "--etcd",
        &url,
        "--node",
        "elsewhere",
        "--allow-empty",
        "--ec2-api",
        &b,
    ]);
    there.expect_log("ready", 0, START);
    let (a, b) = (format!("http://{a}"), format!("http://{b}"));

    // A change through the API is in etcd, and in force here when answered.
    let server = group_id(&a, "instagram-server-security-group");
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    let cidr = format!("{OUTSIDER}/32");
    let out = aws_cli(
        &a,
        &[
            "ec2",
            "authorize-security-group-ingress",
            "--group-id",
            &server,
            "--protocol",
            "tcp",
            "--port",
            "80",
            "--cidr",
            &cidr,
        ],
    );
    let id = json(&out, "authorize")["SecurityGroupRules"][0]["SecurityGroupRuleId"]
        .as_str()
        .expect("rule id")
        .to_owned();
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        Connected,
        "in force when answered"
    );
    assert!(
        etcd_text(&url).contains(&id),
        "the rule is in etcd's description"
    );

    // Both endpoints at once: every change lands, none overwrites another.
    std::thread::scope(|s| {
        for (endpoint, base) in [(&a, 10_000), (&b, 20_000)] {
            let server = &server;
            s.spawn(move || {
                for i in 0..8 {
                    authorize_until_done(endpoint, server, base + i);
                }
            });
        }
    });
    let text = etcd_text(&url);
    for base in [10_000, 20_000] {
        for i in 0..8 {
            assert!(
                text.contains(&format!("from_port = {}", base + i)),
                "port {} is in the description:\n{text}",
                base + i
            );
        }
    }
    drop(etcd);
}

#[test]
fn follow_ec2_enforces_the_groups_another_endpoint_has() {
    let moto = aws::Moto::start();
    let out = python(&script("moto_setup.py"), &[&moto.endpoint, OUTSIDER]);
    let made = json(&out, "moto_setup.py");
    let (instance, group) = (
        made["instance"].as_str().expect("instance").to_owned(),
        made["group"].as_str().expect("group").to_owned(),
    );
    // The seed's hosts; app-1 is the instance moto has, by its id.
    let rules = SEED.replace(
        "name = \"app-1\"\n",
        &format!("name = \"app-1\"\nid = \"{instance}\"\n"),
    );
    assert_ne!(rules, SEED);
    let lab = SeedLab::new("eo", &rules, &[]);
    let state = StateDir::new();
    let agent = AgentProcess::start_in(
        &state,
        &lab.config,
        &["--follow-ec2", &moto.endpoint, "--follow-interval", "1"],
        "info",
    );
    agent.expect_log("ready: enforcing", 0, START);
    // moto's group, not the file's, decides: HTTP from the one address.
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        Connected,
        "moto's rule in force"
    );
    assert_eq!(
        lab.tcp("alb", ALB, APP, 80),
        TimedOut,
        "the file's rule (HTTP from the load balancer's group) is not"
    );

    // A change made in moto is in force here within a few intervals.
    let out = python(
        &script("moto_revoke.py"),
        &[&moto.endpoint, &group, OUTSIDER],
    );
    assert!(out.status.success(), "revoke in moto: {out:?}");
    assert!(
        sg_tests::probe::eventually(Duration::from_secs(15), || {
            lab.tcp("internet", OUTSIDER, APP, 80) == TimedOut
        }),
        "moto's revoke is enforced"
    );

    // moto gone: the policy in force stays, and status says since when.
    drop(moto);
    assert!(
        sg_tests::probe::eventually(Duration::from_secs(15), || {
            agent.status_json()["agent"]["follow"]["failing_since"].is_u64()
        }),
        "status says the endpoint is not answering"
    );
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        TimedOut,
        "still enforced"
    );
    assert_eq!(
        lab.tcp("alb", ALB, APP, 80),
        TimedOut,
        "the file's groups stay out"
    );
}

/// `--follow-ec2 https://...`: the endpoint's certificate is checked (a
/// CA that did not sign it: the agent does not start), and with the CA
/// that did, its groups are enforced.
#[test]
fn follow_ec2_over_https_checks_the_certificate() {
    let moto = aws::Moto::start_tls();
    let out = moto.python(&script("moto_setup.py"), &[&moto.endpoint, OUTSIDER]);
    let made = json(&out, "moto_setup.py (over https)");
    let instance = made["instance"].as_str().expect("instance").to_owned();
    let rules = SEED.replace(
        "name = \"app-1\"\n",
        &format!("name = \"app-1\"\nid = \"{instance}\"\n"),
    );
    let lab = SeedLab::new("es", &rules, &[]);
    let state = StateDir::new();
    let ca = moto.ca.clone().expect("moto's CA");

    let other = std::env::temp_dir().join(format!("sg-other-ca-{}", std::process::id()));
    let (stranger, _, _) = sg_tests::etcd::make_certificates(&other);
    let out = std::process::Command::new(binary())
        .args(["run", "--config"])
        .arg(&lab.config)
        .args(["--state-dir"])
        .arg(&state.path)
        .args(["--control-socket"])
        .arg(state.control_socket())
        .args(["--follow-ec2", &moto.endpoint, "--follow-ec2-ca"])
        .arg(&stranger.ca)
        .output()
        .expect("sg-agent run");
    let _ = std::fs::remove_dir_all(&other);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "refused: {stderr}");
    assert!(
        // The stranger CA has the same name as moto's (both are the test
        // helper's): rustls finds the issuer by name, and its signature
        // does not check out (BadSignature; UnknownIssuer for another name).
        stderr.contains("invalid peer certificate") && stderr.contains("--follow-ec2-ca"),
        "says why: {stderr}"
    );
    // Nothing was attached: what the followed groups will refuse passes.
    assert_eq!(lab.tcp("alb", ALB, APP, 80), Connected, "not attached");

    let ca = ca.to_string_lossy();
    let agent = AgentProcess::start_in(
        &state,
        &lab.config,
        &["--follow-ec2", &moto.endpoint, "--follow-ec2-ca", &ca],
        "info",
    );
    agent.expect_log("ready: enforcing", 0, START);
    assert_eq!(
        lab.tcp("internet", OUTSIDER, APP, 80),
        Connected,
        "moto's rule, read over https, in force"
    );
    assert_eq!(
        lab.tcp("alb", ALB, APP, 80),
        TimedOut,
        "the file's rule is not"
    );
    assert_eq!(
        agent.status_json()["agent"]["follow"]["url"],
        moto.endpoint.as_str(),
        "status names the endpoint"
    );
}

#[test]
fn an_answered_change_survives_kill_9_and_the_file_stays_valid() {
    let lab = SeedLab::new("ek", SEED, &[]);
    let state = StateDir::new();
    let (agent, endpoint) = start(&lab, &state);
    let server = group_id(&endpoint, "instagram-server-security-group");
    // Calls from four clients at once, the agent killed in their midst:
    // every call answered before the kill is in the file after it.
    let answered = std::sync::Mutex::new(Vec::new());
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        for c in 0..4u16 {
            let (endpoint, server, answered, stop) = (&endpoint, &server, &answered, &stop);
            s.spawn(move || {
                for i in 0..50u16 {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let port = (30_000 + c * 100 + i).to_string();
                    let out = aws_cli(
                        endpoint,
                        &[
                            "ec2",
                            "authorize-security-group-ingress",
                            "--group-id",
                            server,
                            "--protocol",
                            "tcp",
                            "--port",
                            &port,
                            "--cidr",
                            "10.0.0.0/16",
                        ],
                    );
                    if out.status.success() {
                        answered.lock().expect("answered").push(port);
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(4));
        agent.kill9();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let answered = answered.into_inner().expect("answered");
    assert!(
        !answered.is_empty(),
        "some calls were answered before the kill"
    );
    assert_check_accepts(&lab.config, "after kill -9");
    let text = std::fs::read_to_string(&lab.config).expect("rules file");
    for port in &answered {
        assert!(
            text.contains(&format!("from_port = {port}")),
            "answered port {port} is in the file"
        );
    }
    // The restarted agent enforces them all.
    let (_agent, endpoint) = start(&lab, &state);
    let out = aws_cli(
        &endpoint,
        &[
            "ec2",
            "describe-security-group-rules",
            "--filters",
            &format!("Name=group-id,Values={server}"),
        ],
    );
    let rules = json(&out, "describe-security-group-rules");
    let ports: Vec<String> = rules["SecurityGroupRules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["FromPort"].to_string())
        .collect();
    for port in &answered {
        assert!(
            ports.contains(port),
            "answered port {port} is a rule after the restart"
        );
    }
    // What a write cut short left is gone once an endpoint starts again.
    let leftovers: Vec<String> = std::fs::read_dir(lab.config.parent().expect("dir"))
        .expect("dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".sg-agent-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// Network ACLs through the API (network ACLs and fidelity round four, the
/// EC2 API's calls for them): the calls answer as EC2 does (boto3, with
/// Terraform's `aws_network_acl` sequences), the file stays one `check`
/// accepts, and an entry is in force on the wire when its call answers.
#[test]
fn network_acls_answer_as_ec2_and_each_entry_is_in_force_when_answered() {
    let lab = SeedLab::new("en", SEED, &[]);
    let state = StateDir::new();
    let (_agent, endpoint) = start(&lab, &state);
    let out = python(&script("network_acls.py"), &[&endpoint]);
    assert_script(&out, "network_acls.py");
    assert_check_accepts(&lab.config, "after the network ACL calls");

    // A network ACL allowing everything, on the seed's subnet.
    let ec2 = |args: &[&str]| aws_cli(&endpoint, &[&["ec2"][..], args].concat());
    let vpc = json(&ec2(&["describe-vpcs"]), "describe-vpcs")["Vpcs"][0]["VpcId"]
        .as_str()
        .expect("VpcId")
        .to_owned();
    let acl = json(
        &ec2(&["create-network-acl", "--vpc-id", &vpc]),
        "create-network-acl",
    )["NetworkAcl"]["NetworkAclId"]
        .as_str()
        .expect("NetworkAclId")
        .to_owned();
    let entry = |rule: &str, way: &str, action: &str, extra: &[&str]| {
        let out = ec2(&[
            &[
                "create-network-acl-entry",
                "--network-acl-id",
                &acl,
                "--rule-number",
                rule,
                way,
                "--rule-action",
                action,
                "--cidr-block",
                "0.0.0.0/0",
            ][..],
            extra,
        ]
        .concat());
        ok(&out, "create-network-acl-entry");
    };
    entry("200", "--ingress", "allow", &["--protocol", "-1"]);
    entry("100", "--egress", "allow", &["--protocol", "-1"]);
    let current = json(&ec2(&["describe-network-acls"]), "describe-network-acls");
    let assoc = current["NetworkAcls"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .flat_map(|acl| acl["Associations"].as_array().cloned().unwrap_or_default())
                .next()
        })
        .and_then(|a| a["NetworkAclAssociationId"].as_str().map(str::to_owned))
        .expect("the subnet's association");
    json(
        &ec2(&[
            "replace-network-acl-association",
            "--association-id",
            &assoc,
            "--network-acl-id",
            &acl,
        ]),
        "replace-network-acl-association",
    );
    assert_eq!(lab.tcp("internet", OUTSIDER, ALB, 80), Connected, "allowed");

    // A deny numbered before the allow: in force as the call answers.
    entry(
        "100",
        "--ingress",
        "deny",
        &["--protocol", "6", "--port-range", "From=80,To=80"],
    );
    assert_eq!(
        lab.tcp("internet", OUTSIDER, ALB, 80),
        TimedOut,
        "denied by the network ACL's rule 100"
    );
    ok(
        &ec2(&[
            "delete-network-acl-entry",
            "--network-acl-id",
            &acl,
            "--rule-number",
            "100",
            "--ingress",
        ]),
        "delete-network-acl-entry",
    );
    assert_eq!(
        lab.tcp("internet", OUTSIDER, ALB, 80),
        Connected,
        "the deny gone"
    );
    assert_check_accepts(&lab.config, "after the wire test");
}

//! Measurement 8: the EC2 API, from a call to its answer, which comes only
//! once the change is in force in the kernel (the agent's reload of the
//! file the call wrote). One change after another (authorize and revoke
//! in turn), and a burst of calls from several connections at once.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use super::{
    e2e::Pair,
    policies::{Shape, rules_file},
};
use sg_tests::{agent::AgentProcess, aws::free_port, lab::unique_prefix};

pub struct Row {
    /// Rules in the group the calls change (as AWS counts them).
    pub rules: usize,
    /// One change at a time: (p50, p99) ms over `calls`.
    pub one: (f64, f64),
    pub calls: usize,
    /// The burst: calls, connections, wall time (s), per call (p50, p99) ms.
    pub burst: usize,
    pub connections: usize,
    pub burst_secs: f64,
    pub burst_call: (f64, f64),
    /// The agent's reloads for the burst's calls.
    pub burst_reloads: usize,
}

/// One keep-alive HTTP/1.1 connection to the endpoint.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the EC2 API");
        s.set_read_timeout(Some(Duration::from_mins(1)))
            .expect("timeout");
        Self(BufReader::new(s))
    }

    /// POSTs a Query API call; returns the status and the body.
    fn call(&mut self, body: &str) -> (u16, String) {
        let req = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.0.get_mut().write_all(req.as_bytes()).expect("send");
        let mut status = String::new();
        self.0.read_line(&mut status).expect("status line");
        let code = status
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut len = 0;
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line).expect("header");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        self.0.read_exact(&mut body).expect("body");
        (code, String::from_utf8_lossy(&body).into_owned())
    }
}

/// The `per_mille`-th of the samples, nearest rank.
fn pct(mut v: Vec<f64>, per_mille: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) * per_mille + 500) / 1000;
    v[i.min(v.len() - 1)]
}

fn authorize(group: &str, port: u16, cidr: &str) -> String {
    format!(
        "Action=AuthorizeSecurityGroupIngress&Version=2016-11-15&GroupId={group}&IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort={port}&IpPermissions.1.ToPort={port}&IpPermissions.1.IpRanges.1.CidrIp={}",
        cidr.replace('/', "%2F")
    )
}

fn revoke(group: &str, port: u16, cidr: &str) -> String {
    authorize(group, port, cidr).replace(
        "AuthorizeSecurityGroupIngress",
        "RevokeSecurityGroupIngress",
    )
}

fn answered(what: &str, (code, body): (u16, String)) {
    assert!(
        code == 200 && body.contains("<return>true</return>"),
        "{what}: {code} {body}"
    );
}

/// The whole part, when asked for: two group sizes, the larger 1,000 rules
/// with the base group's two (a smoke run: one size, and a few calls).
pub fn run(asked: bool, smoke: bool) -> Vec<Row> {
    eprintln!("==> 8. the EC2 API");
    if !asked {
        Vec::new()
    } else if smoke {
        measure(&[57], 10, 20, 4)
    } else {
        measure(&[57, 998], 200, 1_000, 8)
    }
}

pub fn measure(sizes: &[usize], calls: usize, burst: usize, connections: usize) -> Vec<Row> {
    let dir = std::env::temp_dir().join(unique_prefix("sgbench-ec2"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut rows = Vec::new();
    for &fillers in sizes {
        let pair = Pair::new();
        let path = dir.join("bench.toml");
        let text = rules_file(
            fillers,
            Shape::OneGroup,
            true,
            Some((&pair.sink_ns.name, "eth0")),
        );
        // Room for the burst's rules.
        let text = text.replacen(
            "rules_per_group = ",
            &format!("rules_per_group = {} # ", fillers + burst + 100),
            1,
        );
        std::fs::write(&path, &text).expect("write");
        let vpc = sg_agent::config::from_str("b.toml".as_ref(), &text).expect("valid");
        let rules = crate::policies::ingress_rules(&vpc);
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let agent = AgentProcess::start_logging(&path, &["--ec2-api", &listen], "info");
        agent.expect_log("ready: enforcing", 0, Duration::from_mins(1));
        let group = sg_agent::ec2::ids::derived("sg", &["", "bench-base"]);

        // One change at a time.
        let mut conn = Conn::open(port);
        let mut one = Vec::new();
        let reloads_before = agent.log_text().matches("(EC2 API) applied").count();
        for i in 0..calls {
            let body = if i % 2 == 0 {
                authorize(&group, 9000, "203.0.113.0/24")
            } else {
                revoke(&group, 9000, "203.0.113.0/24")
            };
            let t = Instant::now();
            answered("a change", conn.call(&body));
            one.push(t.elapsed().as_secs_f64() * 1e3);
        }
        // The agent logs a reload after it answered the change: its line
        // may come a moment after the answer (the smoke run once counted
        // 9 of 10 here), so the count is awaited.
        let count = || agent.log_text().matches("(EC2 API) applied").count() - reloads_before;
        let deadline = Instant::now() + Duration::from_secs(5);
        while count() < calls && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let reloads = count();
        assert_eq!(
            reloads, calls,
            "each call is one reload of the agent (its answer waits for it)"
        );

        // A burst: `burst` new rules from `connections` connections at once.
        let before_burst = agent.log_text().matches("(EC2 API) applied").count();
        let started = Instant::now();
        let per_call: Vec<f64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..connections)
                .map(|c| {
                    let group = &group;
                    scope.spawn(move || {
                        let mut conn = Conn::open(port);
                        let mut times = Vec::new();
                        for i in (c..burst).step_by(connections) {
                            let cidr = format!("10.{}.{}.0/24", 200 + i / 256, i % 256);
                            let t = Instant::now();
                            answered("a burst call", conn.call(&authorize(group, 9001, &cidr)));
                            times.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        times
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("burst thread"))
                .collect()
        });
        let burst_secs = started.elapsed().as_secs_f64();
        // A connection of its own: the server closes one idle longer than
        // its header time.
        let (_, rules_now) = Conn::open(port).call(&format!(
            "Action=DescribeSecurityGroupRules&Version=2016-11-15&Filter.1.Name=group-id&Filter.1.Value.1={group}"
        ));
        assert_eq!(
            rules_now.matches("<fromPort>9001</fromPort>").count(),
            burst,
            "every call of the burst is a rule in force: {}",
            &rules_now[..rules_now.len().min(600)]
        );
        // Counted after the Describe: the last reload's line has had the
        // time to come.
        let burst_reloads = agent.log_text().matches("(EC2 API) applied").count() - before_burst;
        drop(agent);
        rows.push(Row {
            rules,
            one: (pct(one.clone(), 500), pct(one, 990)),
            calls,
            burst,
            connections,
            burst_secs,
            burst_call: (pct(per_call.clone(), 500), pct(per_call, 990)),
            burst_reloads,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    rows
}

/// Section 8.
pub fn render(out: &mut String, rows: &[Row]) {
    use std::fmt::Write as _;
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n## 8. The EC2 API: from a call to its answer, in force\n\n\
         `run --ec2-api` on loopback, one instance enforced on a veth, its group holding the rules below. A call's answer is sent only once the change is in force: the call edits the rules file (`toml_edit`, written atomically), the agent admits it as `run` admits a file, reloads, and answers. \
         *One at a time*: `AuthorizeSecurityGroupIngress` and `RevokeSecurityGroupIngress` of one rule in turn on one keep-alive connection (the bench checks each was one reload of the agent). \
         *Burst*: new rules from several connections at once: the changes that arrive while one is being put in force are made together (each on top of the one before, each admitted on its own) and put in force with one reload, which the *reloads* column counts; the bench checks that every call is a rule in force after it.\n\n\
         | rules in the group | one at a time: p50 (ms) | p99 (ms) | calls | burst: calls | connections | reloads | wall time (s) | calls/s | per call p50 (ms) | p99 (ms) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let per_sec = r.burst as f64 / r.burst_secs;
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} |",
            r.rules,
            r.one.0,
            r.one.1,
            r.calls,
            r.burst,
            r.connections,
            r.burst_reloads,
            r.burst_secs,
            per_sec,
            r.burst_call.0,
            r.burst_call.1
        );
    }
    if let Some(r) = rows.iter().find(|r| r.rules >= 1_000) {
        let _ = writeln!(
            out,
            "\n| target | measured | |\n|---|---|---|\n| a change in force, p99 < 50 ms at 1,000 rules | {:.1} ms | {} |",
            r.one.1,
            if r.one.1 < 50.0 { "met" } else { "missed" }
        );
    }
}

//! Measurement 6: many instances on one host, as a hypervisor runs them:
//! each on the host side of its own veth (what a VM's tap or a container's
//! host veth is to the agent), one rules file, one agent. Measured: the
//! BPF memory the agent holds (maps and programs, from the kernel's own
//! accounting of each descriptor), the time from start to every instance
//! attached, the time for a membership change that every instance's policy
//! refers to (one instance joins a group all the others admit) to be in
//! force everywhere, and the agent's own memory.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::stats::Stat;
use sg_tests::{
    agent::{AgentProcess, StateDir},
    lab::{Netns, unique_prefix},
};

pub struct Report {
    pub instances: usize,
    /// Start of the process -> every instance attached ("ready"), ms.
    pub attach_ms: Stat,
    /// Of it, as the agent logs them: loading and verifying every
    /// instance's object (on as many threads as CPUs), and attaching them
    /// (two TCX links each), ms.
    pub load_ms: f64,
    pub links_ms: f64,
    /// A membership change written -> the agent logs it in force on every
    /// instance, ms (log polled every 10 ms).
    pub membership_ms: Stat,
    /// The agent's own account of the same reloads (read, compile, swap).
    pub membership_agent_ms: Stat,
    /// BPF maps' memory (the kernel's `memlock` of each map the agent holds).
    pub map_bytes: u64,
    /// BPF programs' memory.
    pub prog_bytes: u64,
    /// The largest maps, by name, summed over instances.
    pub by_map: Vec<(String, u64)>,
    /// The agent's resident memory after start.
    pub rss_bytes: u64,
}

fn rules(netns: &str, n: usize, joined: bool) -> String {
    let mut out = String::from(
        "# Many instances on one host: every one admits the group \"clients\".\n\
         [[security_group]]\nname = \"clients\"\ndescription = \"who may call the web servers\"\n\n\
         [[security_group]]\nname = \"web\"\n\
         \x20 [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 443\n  to_port = 443\n  security_groups = [\"clients\"]\n\
         \x20 [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 22\n  to_port = 22\n  cidr_blocks = [\"10.0.0.0/8\"]\n",
    );
    for i in 0..n {
        let groups = if i == 0 && joined {
            "[\"web\", \"clients\"]"
        } else {
            "[\"web\"]"
        };
        let _ = write!(
            out,
            "\n[[instance]]\nname = \"vm{i}\"\naddresses = [\"10.100.{}.{}\"]\nsecurity_groups = {groups}\nnetns = \"{netns}\"\nhost_interface = \"h{i}\"\n",
            i / 250,
            i % 250 + 1
        );
    }
    out
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// `n` veth pairs in `netns`, both ends up: `h<i>` is the host side the
/// agent enforces, `g<i>` stands for the guest's end.
fn veths(netns: &str, n: usize) {
    let mut child = Command::new("ip")
        .args(["-n", netns, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("ip -batch");
    {
        let stdin = child.stdin.as_mut().expect("piped");
        for i in 0..n {
            writeln!(stdin, "link add h{i} type veth peer name g{i}").expect("write");
            writeln!(stdin, "link set h{i} up").expect("write");
            writeln!(stdin, "link set g{i} up").expect("write");
        }
    }
    assert!(
        child.wait().expect("ip").success(),
        "creating {n} veth pairs"
    );
}

/// The BPF memory held through the process's descriptors: maps and
/// programs by id (pinned objects are held open too), each once.
fn bpf_memory(pid: u32) -> (u64, u64, BTreeMap<String, u64>) {
    let mut maps: BTreeMap<u64, u64> = BTreeMap::new();
    let mut progs: BTreeMap<u64, u64> = BTreeMap::new();
    let dir = format!("/proc/{pid}/fdinfo");
    for entry in std::fs::read_dir(&dir)
        .expect("fdinfo")
        .filter_map(Result::ok)
    {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
            maps.insert(id, bytes);
        } else if let (Some(id), Some(bytes)) = (field("prog_id:"), field("memlock:")) {
            progs.insert(id, bytes);
        }
    }
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    for (&id, &bytes) in &maps {
        let out = Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id.to_string()])
            .output()
            .expect("bpftool");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let name = v["name"].as_str().unwrap_or("?").to_owned();
        *by_name.entry(name).or_default() += bytes;
    }
    (maps.values().sum(), progs.values().sum(), by_name)
}

fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

pub fn measure(n: usize, changes: usize) -> Report {
    let netns = Netns::create(&unique_prefix("sgmany"));
    veths(&netns.name, n);
    let dir = std::env::temp_dir().join(unique_prefix("sgbench-many"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("many.toml");
    write_atomically(&path, &rules(&netns.name, n, false));
    let state = StateDir::new();
    let spawned = Instant::now();
    let agent = AgentProcess::start_quiet_logging(
        &state,
        &path,
        &[],
        "info,sg_agent::agent::enforce::apply=debug",
    );
    agent.expect_log(
        &format!("ready: enforcing {n} instance(s)"),
        0,
        Duration::from_mins(10),
    );
    let attach_ms = spawned.elapsed().as_secs_f64() * 1e3;
    // "loaded N instance object(s) in X ms", "attached N instance(s) in Y ms".
    let logged_ms = |needle: &str| {
        let line = agent.log_line(agent.expect_log(needle, 0, Duration::from_secs(1)));
        line.rsplit(" in ")
            .next()
            .and_then(|t| t.split(' ').next())
            .and_then(|ms| ms.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let load_ms = logged_ms(&format!("loaded {n} instance object(s) in"));
    let links_ms = logged_ms(&format!("attached {n} instance(s) in"));
    let (map_bytes, prog_bytes, by_name) = bpf_memory(agent.pid());
    let rss_bytes = rss(agent.pid());
    let mut by_map: Vec<(String, u64)> = by_name.into_iter().collect();
    by_map.sort_by_key(|m| std::cmp::Reverse(m.1));

    let (mut wall, mut logged) = (Vec::new(), Vec::new());
    for change in 0..changes {
        let mark = agent.log_lines();
        let joined = change % 2 == 0;
        let written = Instant::now();
        write_atomically(&path, &rules(&netns.name, n, joined));
        let line = agent.expect_log("applied in", mark, Duration::from_mins(2));
        wall.push(written.elapsed().as_secs_f64() * 1e3);
        let text = agent.log_line(line);
        let ms = text
            .split("applied in ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        logged.push(ms);
        // In force everywhere: every instance's programs judge by the new
        // generation (each instance's policy names vm0's address).
        let status = agent.status_json();
        let generations: std::collections::BTreeSet<String> = status["instances"]
            .as_array()
            .expect("instances")
            .iter()
            .map(|i| i["generation"].to_string())
            .collect();
        assert_eq!(
            generations.len(),
            1,
            "one generation in force on all {n} instances after the change: {generations:?}"
        );
    }
    assert_eq!(agent.terminate().code(), Some(0), "agent exit");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "{n} instances: attached in {attach_ms:.0} ms; BPF maps {:.1} MiB, programs {:.1} MiB; \
         membership change {:.0} ms",
        mib(map_bytes),
        mib(prog_bytes),
        Stat::of(&wall).median
    );
    Report {
        instances: n,
        attach_ms: Stat::of(&[attach_ms]),
        load_ms,
        links_ms,
        membership_ms: Stat::of(&wall),
        membership_agent_ms: Stat::of(&logged),
        map_bytes,
        prog_bytes,
        by_map,
        rss_bytes,
    }
}

#[expect(clippy::cast_precision_loss, reason = "memory sizes, shown in MiB")]
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

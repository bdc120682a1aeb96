//! A container's namespace given as `/proc/PID/ns/net`: the container dies,
//! and a process of anyone's (any local user can fork until it gets a PID)
//! takes its PID with a namespace and an `eth0` of its own. That namespace
//! is not the instance's: the agent says so and attaches nothing there,
//! where before it carried the container's policy onto the newcomer's
//! interface as a "recreated" one.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use sg_tests::{
    agent::AgentProcess,
    attached::attached_programs,
    lab::{Lab, RulesFile, ip},
    probe::eventually,
    seed::START,
};

/// A process in a network namespace of its own, `eth0` made inside by
/// `setup` (shell), killed on drop.
struct Contained(Child);

impl Contained {
    fn start(setup: &str) -> Self {
        let script = format!("{setup}\nexec sleep 600");
        let child = Command::new("unshare")
            .args(["--net", "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare runs");
        let contained = Self(child);
        // Until unshare(2) has run, the PID's namespace is the host's:
        // nothing may be put "into" it before.
        let own = namespace_of("/proc/self/ns/net");
        let theirs = format!("/proc/{}/ns/net", contained.pid());
        assert!(
            eventually(Duration::from_secs(5), || {
                namespace_of(&theirs).is_some_and(|ns| Some(ns) != own)
            }),
            "the process is in a namespace of its own"
        );
        contained
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Started so that it gets PID `pid` (the kernel's next PID set just
    /// before it, as a user forking in a loop would get it in time).
    fn start_as(pid: u32, setup: &str) -> Self {
        for _ in 0..200 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
                .expect("ns_last_pid");
            let c = Self::start(setup);
            if c.pid() == pid {
                return c;
            }
        }
        panic!("PID {pid} could not be had in 200 tries");
    }

    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The identity (device, inode) of the namespace a `/proc/.../ns/net`
/// file names.
fn namespace_of(path: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Drop for Contained {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_reused_pid_does_not_carry_the_containers_policy() {
    let lab = Lab::new("rpid");
    let sw = lab.switch_netns().to_owned();
    let container = Contained::start("");
    let pid = container.pid();
    ip(&[
        "-n",
        &sw,
        "link",
        "add",
        "pr0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &pid.to_string(),
    ]);
    let path = format!("/proc/{pid}/ns/net");
    let rules = RulesFile::new(
        &lab.prefix,
        &format!(
            r#"
[[security_group]]
name = "ctr"

[[instance]]
name = "ctr"
netns_path = "{path}"
interface = "eth0"
addresses = ["10.0.0.1"]
security_groups = ["ctr"]
"#
        ),
    );
    let agent = AgentProcess::start(&rules.path);
    agent.expect_log("ready: enforcing 1 instance(s)", 0, START);
    let mark = agent.log_lines();
    container.kill();
    agent.expect_log("is gone; enforced again as it comes back", mark, START);

    // Someone else's process, with the container's PID, in a namespace of
    // its own with an eth0.
    let mark = agent.log_lines();
    let newcomer = Contained::start_as(
        pid,
        "ip link add eth0 type veth peer name eth0p && ip link set eth0 up",
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            Command::new("nsenter")
                .args([&format!("--net={path}"), "ip", "link", "show", "eth0"])
                .output()
                .is_ok_and(|o| o.status.success())
        }),
        "the newcomer's eth0"
    );
    agent.expect_log(
        "now names another network namespace than the one it was attached in",
        mark,
        Duration::from_secs(5),
    );
    // Seen through a name of its own, nothing of ours is on its eth0.
    let name = format!("{}-newcomer", lab.prefix);
    ip(&["netns", "attach", &name, &pid.to_string()]);
    let programs = attached_programs(&name);
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    assert!(
        programs.is_empty(),
        "no program on the newcomer's eth0: {programs:?}"
    );
    let status = agent.status_json();
    assert_eq!(status["instances"][0]["state"], "waiting", "{status}");
    drop(newcomer);
    drop(agent);
}

//! A container's namespace given as `/proc/PID/ns/net`: the container dies,
//! and a process of anyone's (any local user can fork until it gets a PID)
//! takes its PID with a namespace and an `eth0` of its own. That namespace
//! is not the instance's: the agent says so and attaches nothing there,
//! where before it carried the container's policy onto the newcomer's
//! interface as a "recreated" one.

use std::{process::Command, time::Duration};

use sg_tests::{
    agent::AgentProcess,
    attached::attached_programs,
    contained::Contained,
    lab::{Lab, RulesFile, ip},
    probe::eventually,
    seed::START,
};

#[test]
fn a_reused_pid_does_not_carry_the_containers_policy() {
    let lab = Lab::new("rpid");
    let sw = lab.switch_netns().to_owned();
    let container = Contained::start("");
    let pid = container.pid();
    container.plug(&sw, "pr0");
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

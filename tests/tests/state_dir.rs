//! The state directory under /sys/fs/bpf (world-writable and sticky, like
//! /tmp) is the agent's own: it pins only into directories it made (or
//! root did) that no one else may write, whatever the umask, and says so
//! when the pins that keep instances enforced are gone.

use std::{os::unix::fs::MetadataExt as _, process::Command, time::Duration};

use nix::sys::signal::Signal;
use sg_tests::{
    agent::{AgentProcess, StateDir, binary},
    probe::Outcome::TimedOut,
    seed::{APP, OUTSIDER, SEED, START, SeedLab},
};

/// A local user makes the state directory (and an instance's below it)
/// before the agent first starts (bpffs is empty after every boot): the
/// agent sets it aside and makes its own, and enforces; nothing is pinned
/// into the user's directory.
#[test]
fn a_state_directory_someone_else_prepared_is_taken_back() {
    let lab = SeedLab::new("sdo", SEED, &[]);
    let state = StateDir::new();
    std::fs::create_dir_all(state.path.join("app-1")).expect("mkdir");
    for dir in [state.path.clone(), state.path.join("app-1")] {
        std::os::unix::fs::chown(&dir, Some(65534), None).expect("chown");
    }
    let agent = AgentProcess::start_in(&state, &lab.config, &[], "info");
    agent.expect_log("ready: enforcing 4 instance(s)", 0, START);
    let log = agent.log_text();
    assert!(
        log.contains("owned by uid 65534: someone else made it before the agent; set aside as"),
        "{log}"
    );
    let meta = std::fs::metadata(&state.path).expect("made anew");
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o700));
    let name = state
        .path
        .file_name()
        .expect("named")
        .to_string_lossy()
        .into_owned();
    let aside: Vec<std::path::PathBuf> = std::fs::read_dir("/sys/fs/bpf")
        .expect("bpffs")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .starts_with(&format!("{name}-set-aside-"))
            })
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::metadata(&aside[0]).expect("set aside").uid(),
        65534,
        "the user's directory, as it was"
    );
    assert_eq!(
        std::fs::read_dir(aside[0].join("app-1")).map_or(0, Iterator::count),
        0,
        "nothing pinned into it"
    );
    assert_eq!(agent.terminate().code(), Some(0));
    std::fs::remove_dir_all(&aside[0]).expect("clean up");
}

/// One agent per state directory: a second one with the same state (its
/// own control socket) is refused at once, naming the first, and so is
/// `detach` under a running agent: either would take the first's
/// instances' programs off while it reports them enforced.
#[test]
fn a_running_agents_state_is_its_own() {
    let lab = SeedLab::new("sdl", SEED, &[]);
    let state = StateDir::new();
    let first = AgentProcess::start_in(&state, &lab.config, &[], "info");
    first.expect_log("ready: enforcing 4 instance(s)", 0, START);
    let before = sg_tests::attached::attached_programs(&lab.ns("app-1"));
    let out = Command::new(binary())
        .args(["run", "--config"])
        .arg(&lab.config)
        .arg("--state-dir")
        .arg(&state.path)
        .args(["--control-socket", "/run/sg-agent-tests/second-agent.sock"])
        .output()
        .expect("runs");
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("held by a running sg-agent (pid {})", first.pid())),
        "{log}"
    );
    let out = Command::new(binary())
        .args(["detach", "--all", "--state-dir"])
        .arg(&state.path)
        .output()
        .expect("detach runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("held by a running sg-agent"), "{err}");
    assert_eq!(
        sg_tests::attached::attached_programs(&lab.ns("app-1")),
        before,
        "the first agent's programs stay"
    );
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    assert_eq!(first.terminate().code(), Some(0));
}

/// Someone with root takes an instance's programs off its interface
/// (`bpftool link detach`), whoever holds the links: the agent sees its
/// links defunct on its next tick, attaches again and counts the lapse.
#[test]
fn programs_someone_takes_off_are_put_back_and_counted() {
    let lab = SeedLab::new("sdt", SEED, &[]);
    let agent = AgentProcess::start(&lab.config);
    agent.expect_log("ready: enforcing 4 instance(s)", 0, START);
    let status = agent.status_json();
    let app = status["instances"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == "app-1"))
        .expect("app-1")
        .clone();
    let mark = agent.log_lines();
    for link in app["links"].as_array().expect("links") {
        let id = link["link_id"].as_u64().expect("id").to_string();
        let out = Command::new("bpftool")
            .args(["link", "detach", "id", &id])
            .output()
            .expect("bpftool runs");
        assert!(out.status.success(), "{out:?}");
    }
    // One lapse, or two when the agent's tick came between the two
    // detaches.
    agent.expect_log(
        "of its programs taken off by someone else; programs attached again",
        mark,
        Duration::from_secs(5),
    );
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
    assert!(agent.status_json()["agent"]["lapses"].as_u64() >= Some(1));
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn the_state_is_private_whatever_the_umask() {
    let lab = SeedLab::new("sdu", SEED, &[]);
    let state = StateDir::new();
    // SAFETY: umask has no preconditions; the child inherits it.
    let old = unsafe { libc::umask(0) };
    let agent = AgentProcess::start_in(&state, &lab.config, &[], "info");
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    agent.expect_log("ready: enforcing", 0, START);
    for dir in [state.path.clone(), state.path.join("app-1")] {
        let mode = std::fs::metadata(&dir).expect("made").mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    assert_eq!(agent.terminate().code(), Some(0));
}

#[test]
fn keep_on_exit_does_not_claim_what_is_no_longer_pinned() {
    let lab = SeedLab::new("sdk", SEED, &[]);
    let state = StateDir::new();
    let mut agent = AgentProcess::start_in(&state, &lab.config, &["--keep-on-exit"], "info");
    agent.expect_log("ready: enforcing", 0, START);
    // Someone with root removes app-1's link pins behind the agent's back.
    for entry in std::fs::read_dir(state.path.join("app-1")).expect("pins") {
        let path = entry.expect("entry").path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("link-"))
        {
            std::fs::remove_file(path).expect("unpin");
        }
    }
    agent.signal(Signal::SIGTERM);
    let _ = agent.wait_exit(Duration::from_secs(5));
    let log = agent.log_text();
    assert!(
        log.contains("NOT enforced any more, their link pins gone: app-1"),
        "{log}"
    );
    assert!(
        !log.contains("stopped: 4 instance(s) left enforced"),
        "{log}"
    );
}

/// `sg-agent status` on `state` with no agent answering: its exit code and
/// what it says (on stderr).
fn status_without_agent(state: &StateDir) -> (Option<i32>, String) {
    let out = Command::new(binary())
        .args(["status", "--control-socket"])
        .arg(state.control_socket())
        .arg("--state-dir")
        .arg(&state.path)
        .output()
        .expect("status runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `status` with no agent running, but pins still enforcing (an agent
/// stopped with --keep-on-exit): it says which instances are enforced from
/// pins, since when, and how to adopt or remove them.
#[test]
fn status_without_an_agent_names_what_pins_still_enforce() {
    let lab = SeedLab::new("sdp", SEED, &[]);
    let state = StateDir::new();
    let agent = AgentProcess::start_in(&state, &lab.config, &["--keep-on-exit"], "info");
    agent.expect_log("ready: enforcing 4 instance(s)", 0, START);
    assert_eq!(agent.terminate().code(), Some(0));
    let (code, text) = status_without_agent(&state);
    assert_eq!(code, Some(3), "no agent answers: {text}");
    assert!(
        text.contains("4 instance(s) still enforced from pinned programs"),
        "{text}"
    );
    for name in ["alb", "bastion", "app-1", "rds"] {
        assert!(
            text.contains(&format!("  {name:<20} 2 link(s), pinned ")),
            "{name}: {text}"
        );
    }
    // app-1's interface made again (a VM restarted on a new tap): its pins
    // stay, but nothing is on the new interface, and status says so.
    lab.lab.recreate_eth0("app-1");
    let (_, text) = status_without_agent(&state);
    assert!(
        text.contains("3 instance(s) still enforced from pinned programs"),
        "{text}"
    );
    assert!(
        text.contains(&format!("  {:<20} NOT enforced", "app-1")),
        "{text}"
    );
    assert!(text.contains("sg-agent detach --all"), "{text}");
    let out = Command::new(binary())
        .args(["detach", "--all", "--state-dir"])
        .arg(&state.path)
        .output()
        .expect("detach runs");
    assert!(out.status.success(), "{out:?}");
}

/// A second agent (another state directory) does not attach to interfaces
/// the first enforces: it names the first, and the first's programs stay.
#[test]
fn a_second_agent_is_refused_the_interfaces_another_enforces() {
    let lab = SeedLab::new("sd2", SEED, &[]);
    let first_state = StateDir::new();
    let first = AgentProcess::start_in(&first_state, &lab.config, &[], "info");
    first.expect_log("ready: enforcing 4 instance(s)", 0, START);
    let before = sg_tests::attached::attached_programs(&lab.ns("app-1"));
    let second_state = StateDir::new();
    let second = AgentProcess::start_in(&second_state, &lab.config, &[], "info");
    let at = second.expect_log("already enforced by", 0, START);
    let line = second.log_line(at);
    assert!(
        line.contains(&format!(
            "already enforced by the sg-agent with state directory {}",
            first_state.path.display()
        )),
        "{line}"
    );
    assert_eq!(
        sg_tests::attached::attached_programs(&lab.ns("app-1")),
        before,
        "the first agent's programs alone"
    );
    assert_eq!(second.terminate().code(), Some(0));
    assert_eq!(first.terminate().code(), Some(0));
}

/// Removing an instance takes its programs off the interface before the
/// call returns, whoever else holds its links (a `bpftool` listing them at
/// that moment, a second process that opened the pins): the agent logs
/// "detached" and `sg-agent detach` reports it, so no packet may be judged
/// by them after that. Closing the agent's descriptors and unlinking the
/// pins releases only the agent's references. Both hooks (XDP and TCX),
/// links pinned.
#[test]
fn removing_an_instance_detaches_its_programs_whoever_holds_its_links() {
    use aya::programs::links::PinnedLink;
    use sg_agent::dataplane::{Capacity, Dataplane, IngressHook, Observe, Side, pins};
    use sg_tests::{attached::attached_programs, lab::Lab};

    let mut lab = Lab::new("sdd");
    lab.add_host("a", &["10.77.0.1"]);
    let ns = lab.netns_of("a");
    let state = StateDir::new();
    let root = pins::StateDir::open(&state.path).expect("state directory");
    for hook in [IngressHook::XdpNative, IngressHook::Tc] {
        let mut dp =
            Dataplane::load_pinned(root.instance("a"), Observe::default(), Capacity::default())
                .expect("load");
        dp.attach("eth0", Some(&ns), hook, Side::Instance)
            .expect("attach");
        assert_eq!(attached_programs(&ns).len(), 2, "{hook:?}: attached");
        // Another holder of each link, as bpftool would be.
        let others: Vec<PinnedLink> = std::fs::read_dir(state.path.join("a"))
            .expect("instance directory")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("link-"))
            .map(|e| PinnedLink::from_pin(e.path()).expect("open the pinned link"))
            .collect();
        assert_eq!(others.len(), 2, "{hook:?}: two links pinned");
        dp.unpin().expect("unpin");
        assert_eq!(
            attached_programs(&ns),
            Vec::<u64>::new(),
            "{hook:?}: still attached after unpin returned"
        );
        drop(others);
    }
}

/// Instances loaded but never attached (a start or reload that a stop cut
/// short, an instance waiting for its interface) enforce nothing: as the
/// agent exits past its stop deadline without --keep-on-exit, their pins
/// go (`remove_unattached`); attached instances stay enforced. (Seen:
/// SIGTERM 7 s into a start of 40 instances, while the loading threads
/// finished the objects they were verifying, left 40 instances' maps
/// pinned.)
#[test]
fn pins_of_instances_never_attached_are_removed_attached_ones_stay() {
    use sg_agent::dataplane::{Capacity, Dataplane, Observe};
    let lab = SeedLab::new("sdn", SEED, &[]);
    let state = StateDir::new();
    let agent = AgentProcess::start_in(&state, &lab.config, &["--keep-on-exit"], "info");
    agent.expect_log("ready: enforcing 4 instance(s)", 0, START);
    assert_eq!(agent.terminate().code(), Some(0));
    let pins = sg_agent::dataplane::StateDir::open(&state.path)
        .expect("the state directory")
        .instance("loaded-only");
    drop(Dataplane::load_pinned(pins, Observe::default(), Capacity::default()).expect("loads"));
    assert!(state.path.join("loaded-only").exists(), "its maps pinned");
    assert_eq!(
        sg_agent::dataplane::pins::remove_unattached(&state.path),
        1,
        "only the instance never attached"
    );
    assert!(!state.path.join("loaded-only").exists());
    for name in ["alb", "bastion", "app-1", "rds"] {
        assert!(state.path.join(name).exists(), "{name} stays enforced");
    }
    assert_eq!(lab.tcp("internet", OUTSIDER, APP, 80), TimedOut);
}

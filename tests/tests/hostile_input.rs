//! Hostile input: files `check` refuses are the files `run` refuses (never
//! with a panic, never after attaching anything), every bound is an error
//! that says so, the rules file is a trust boundary for `run`, and the
//! daemon's log quotes no file content beyond the offending token.
//!
//! Each `sg-agent` run here is bounded (a hang guard, not a timing
//! assertion): a process still running after [`GUARD`] is killed and the
//! test fails.

use std::{
    fmt::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use sg_tests::agent::{StateDir, binary};

const GUARD: Duration = Duration::from_mins(2);

/// A directory of the test's own (mode 755, root's), removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let path = PathBuf::from(format!("/tmp/sg-hostile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("test dir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self(path)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs sg-agent with `args` to its end (its output read meanwhile),
/// killed after [`GUARD`].
fn sg_agent(args: &[&str]) -> Output {
    let child = Command::new(binary())
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sg-agent runs");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    if let Ok(out) = rx.recv_timeout(GUARD) {
        out.expect("output")
    } else {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        panic!("sg-agent {args:?} still running after {GUARD:?}");
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// An instance to enforce on `interface` (as written in TOML, between the
/// quotes) in `netns`, with one group.
fn instance_file(interface: &str, netns: &str) -> String {
    format!(
        "[[security_group]]\nname = \"g\"\n\n[[instance]]\nname = \"i\"\naddresses = \
         [\"10.0.0.1\"]\nsecurity_groups = [\"g\"]\ninterface = \"{interface}\"\n{netns}\n"
    )
}

/// 4,000 single ports from 0.0.0.0/0 and 4,000 narrower prefixes, each
/// with a port of its own: every narrower entry would carry the 4,000
/// broad rules (16 million copied-down rules).
fn expansion_file() -> String {
    let mut out = String::from(
        "[limits]\nbeyond_aws = true\nrules_per_group = 100000\n\n[[security_group]]\nname = \
         \"big\"\n",
    );
    for i in 1..=4000 {
        let _ = writeln!(
            out,
            "  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = {i}\n  to_port = \
             {i}\n  cidr_blocks = [\"0.0.0.0/0\"]"
        );
    }
    for j in 0..4000 {
        let _ = writeln!(
            out,
            "  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = {}\n  to_port = \
             {}\n  cidr_blocks = [\"10.{}.{}.0/24\"]",
            20_000 + j,
            20_000 + j,
            j / 256,
            j % 256
        );
    }
    out.push_str(
        "\n[[instance]]\nname = \"i\"\naddresses = [\"10.200.0.1\"]\nsecurity_groups = \
         [\"big\"]\ninterface = \"eth0\"\nnetns = \"sg-hostile-nowhere\"\n",
    );
    out
}

fn assert_refused(what: &str, out: &Output, needle: &str) {
    let text = text(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: exit 1, no panic:\n{text}"
    );
    assert!(!text.contains("panicked"), "{what}: no panic:\n{text}");
    assert!(text.contains(needle), "{what}: says {needle:?}:\n{text}");
}

#[test]
fn check_and_run_refuse_the_same_hostile_files() {
    let dir = Dir::new("same");
    let fifo = dir.0.join("a-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "a netns_path that names a FIFO (opening it would block)",
            instance_file(
                "eth0",
                &format!("netns_path = {:?}", fifo.display().to_string()),
            ),
            "a FIFO (not a namespace file)",
        ),
        (
            "a NUL in an interface name",
            instance_file("eth0\\u0000", ""),
            "interface \"eth0\\0\" contains '\\0'",
        ),
        (
            "an interface name of 16 bytes",
            instance_file("a-very-long-name", ""),
            "is 16 bytes long",
        ),
        (
            "a netns that walks out of /run/netns",
            instance_file("eth0", "netns = \"../../proc/1/ns/net\""),
            "is not a namespace name",
        ),
        (
            "a relative netns_path",
            instance_file("eth0", "netns_path = \"proc/1/ns/net\""),
            "netns_path must be an absolute path",
        ),
        (
            "a policy whose copy-down would exhaust memory",
            expansion_file(),
            "copied-down rule",
        ),
        (
            "no instance to enforce",
            "[[security_group]]\nname = \"g\"\n".to_owned(),
            "enforces no instance",
        ),
    ];
    for (i, (what, rules, needle)) in cases.iter().enumerate() {
        let file = dir.file(&format!("case{i}.toml"), rules);
        let file = file.to_str().expect("utf-8 path");
        assert_refused(what, &sg_agent(&["check", file]), needle);
        let state = StateDir::new();
        let state_dir = state.path.to_str().expect("utf-8 path");
        let socket = state.control_socket();
        let run = sg_agent(&[
            "run",
            "--config",
            file,
            "--state-dir",
            state_dir,
            "--control-socket",
            socket.to_str().expect("utf-8 path"),
            "--no-watch",
        ]);
        assert_refused(&format!("run: {what}"), &run, needle);
        let pinned = std::fs::read_dir(&state.path).map_or(0, Iterator::count);
        assert_eq!(pinned, 0, "run: {what}: nothing loaded or pinned");
    }
}

/// A namespace file given by path must be a network namespace.
#[test]
fn netns_path_must_name_a_network_namespace() {
    let dir = Dir::new("nspath");
    let not_ns = dir.file("not-a-namespace", "");
    let rules = instance_file(
        "eth0",
        &format!("netns_path = {:?}", not_ns.display().to_string()),
    );
    let file = dir.file("rules.toml", &rules);
    let state = StateDir::new();
    let child = Command::new(binary())
        .args(["run", "--config"])
        .arg(&file)
        .arg("--state-dir")
        .arg(&state.path)
        .arg("--control-socket")
        .arg(state.control_socket())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("runs");
    // The instance waits for its namespace (it may come later); the log
    // says why it is not enforced.
    std::thread::sleep(Duration::from_secs(2));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().expect("output");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("not a network namespace"),
        "the file is opened and refused as no namespace:\n{log}"
    );
}

/// A namespace path that becomes a FIFO while the agent waits for it: the
/// enforcement thread must not block opening it (before this, open(2)
/// waited for a writer for ever, and SIGTERM's "every instance left
/// enforced" was never printed).
#[test]
fn a_fifo_where_a_namespace_file_is_awaited_never_blocks_the_agent() {
    let dir = Dir::new("nsfifo");
    let later = dir.0.join("later");
    let rules = instance_file(
        "eth0",
        &format!("netns_path = {:?}", later.display().to_string()),
    );
    let file = dir.file("rules.toml", &rules);
    let state = StateDir::new();
    let child = Command::new(binary())
        .args(["run", "--config"])
        .arg(&file)
        .arg("--state-dir")
        .arg(&state.path)
        .arg("--control-socket")
        .arg(state.control_socket())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("runs");
    std::thread::sleep(Duration::from_secs(1));
    nix::unistd::mkfifo(&later, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    // Retries back off to 5 s at most: a few of them meet the FIFO.
    std::thread::sleep(Duration::from_secs(3));
    let asked = std::time::Instant::now();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().expect("output");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "stopped at once, not blocked in open(2):\n{log}"
    );
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("a FIFO (not a namespace file)"),
        "the FIFO is refused as no namespace:\n{log}"
    );
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), None).expect("chown");
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one way to the rules file after another, on the same file"
)]
fn run_refuses_a_rules_file_others_may_write() {
    let dir = Dir::new("trust");
    // No interface: with --allow-empty the agent starts and is ready, so
    // the trust check is all that stands in the way.
    let rules = "[[security_group]]\nname = \"g\"\n";
    let file = dir.file("rules.toml", rules);
    let path = file.to_str().expect("utf-8 path");
    let run_file = |path: &str, extra: &[&str]| {
        let state = StateDir::new();
        let socket = state.control_socket();
        let mut args = vec![
            "run",
            "--config",
            path,
            "--allow-empty",
            "--state-dir",
            state.path.to_str().expect("utf-8"),
            "--control-socket",
            socket.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let mut child = Command::new(binary())
            .args(&args)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("runs");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                let out = child.wait_with_output().expect("output");
                return (
                    Some(status.code()),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                );
            }
            if started.elapsed() > Duration::from_secs(3) {
                // Still running: it accepted the file.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let out = child.wait_with_output().expect("output");
                return (None, String::from_utf8_lossy(&out.stderr).into_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let run = |extra: &[&str]| run_file(path, extra);
    let (status, log) = run(&[]);
    assert_eq!(
        status, None,
        "root's 644 file in root's 755 directory runs:\n{log}"
    );

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let (status, log) = run(&[]);
    assert_eq!(status, Some(Some(1)), "{log}");
    assert!(log.contains("writable by anyone (mode 666)"), "{log}");
    let (status, log) = run(&["--insecure-config"]);
    assert_eq!(status, None, "--insecure-config accepts it:\n{log}");
    assert_eq!(
        sg_agent(&["check", "--allow-empty", path]).status.code(),
        Some(0),
        "check reads the user's own file whatever its mode"
    );

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    chown(&file, 65_534);
    let (status, log) = run(&[]);
    assert_eq!(status, Some(Some(1)), "{log}");
    assert!(log.contains("owned by uid 65534"), "{log}");
    chown(&file, 0);

    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (status, log) = run(&[]);
    assert_eq!(status, Some(Some(1)), "{log}");
    assert!(log.contains("is writable by others (mode 777)"), "{log}");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let (status, log) = run(&[]);
    assert_eq!(status, None, "a sticky directory (as /tmp) is fine:\n{log}");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // Every directory up to `/` counts, not only the file's own: a user
    // who owns a grandparent could swap the file's directory for a symlink
    // to an older, root-owned one. The file and its directory are root's.
    let user_dir = dir.0.join("users");
    let conf = user_dir.join("conf");
    std::fs::create_dir_all(&conf).expect("mkdir");
    chown(&user_dir, 65_534);
    let nested = conf.join("rules.toml");
    std::fs::write(&nested, rules).expect("write");
    let nested = nested.to_str().expect("utf-8").to_owned();
    let (status, log) = run_file(&nested, &[]);
    assert_eq!(status, Some(Some(1)), "{log}");
    assert!(
        log.contains(&format!(
            "its directory {} is owned by uid 65534",
            user_dir.display()
        )),
        "{log}"
    );
    // A symlink in a trusted directory is followed, and its target's
    // directories are checked in turn.
    let link = dir.0.join("link.toml");
    std::os::unix::fs::symlink(&nested, &link).expect("symlink");
    let (status, log) = run_file(link.to_str().expect("utf-8"), &[]);
    assert_eq!(status, Some(Some(1)), "through a symlink too:\n{log}");
    assert!(log.contains("owned by uid 65534"), "{log}");
    chown(&user_dir, 0);
    let (status, log) = run_file(link.to_str().expect("utf-8"), &[]);
    assert_eq!(status, None, "root's directories all the way:\n{log}");

    // A symlink someone else planted in a sticky, world-writable directory
    // (as /tmp) is not followed, as the kernel's fs.protected_symlinks
    // would not follow it: its owner may point it anywhere at any time.
    let sticky = dir.0.join("sticky");
    std::fs::create_dir(&sticky).expect("mkdir");
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let planted = sticky.join("rules.toml");
    std::os::unix::fs::symlink(&nested, &planted).expect("symlink");
    std::os::unix::fs::lchown(&planted, Some(65_534), None).expect("lchown");
    let planted = planted.to_str().expect("utf-8").to_owned();
    let (status, log) = run_file(&planted, &[]);
    assert_eq!(status, Some(Some(1)), "{log}");
    assert!(
        log.contains("is a symlink owned by uid 65534 in the sticky, world-writable directory"),
        "{log}"
    );
    std::os::unix::fs::lchown(&planted, Some(0), None).expect("lchown");
    let (status, log) = run_file(&planted, &[]);
    assert_eq!(status, None, "root's own symlink there is followed:\n{log}");
}

#[test]
fn the_daemons_log_quotes_no_file_content_and_escapes_control_characters() {
    let dir = Dir::new("log");
    let rules = "password = \"hunter2\"\n\n[[security_group]]\nname = \"g\"\n\n[[instance]]\nname \
                 = \"i\"\naddresses = [\"10.0.0.1\"]\nsecurity_groups = [\"\\u001b[31mred\"]\n\
                 interface = \"eth0\"\n";
    let file = dir.file("rules.toml", rules);
    let state = StateDir::new();
    let socket = state.control_socket();
    let run = sg_agent(&[
        "run",
        "--config",
        file.to_str().expect("utf-8"),
        "--state-dir",
        state.path.to_str().expect("utf-8"),
        "--control-socket",
        socket.to_str().expect("utf-8"),
    ]);
    let log = text(&run);
    assert_eq!(run.status.code(), Some(1), "{log}");
    assert!(
        log.contains("rules.toml:1:1: error: unknown key \"password\""),
        "{log}"
    );
    assert!(
        !log.contains("hunter2"),
        "no file content beyond the token:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no raw escape reaches the log:\n{log}"
    );
    assert!(
        log.contains("\\u{1b}[31mred"),
        "the name is shown escaped:\n{log}"
    );

    // `check`, run by the user on their own file, shows the lines.
    let check = sg_agent(&["check", file.to_str().expect("utf-8")]);
    let out = text(&check);
    assert!(out.contains("    1 | password = \"hunter2\""), "{out}");
    assert!(!out.contains('\u{1b}'), "but never a raw escape:\n{out}");
}

#[test]
fn every_bound_is_an_error_that_says_so() {
    let dir = Dir::new("bounds");
    // 40,000 errors: 100 shown, the rest counted.
    let mut many = String::from("[[security_group]]\nname = \"g\"\n");
    for _ in 0..20_000 {
        many.push_str(
            "  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 99999\n  to_port \
             = 99999\n  cidr_blocks = [\"10.0.0.0/8\"]\n",
        );
    }
    let file = dir.file("many.toml", &many);
    let out = sg_agent(&["check", file.to_str().expect("utf-8")]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(shown.contains("... and 39900 more not shown"), "{shown}");
    assert!(
        shown.ends_with("many.toml: 40000 errors found\n"),
        "{shown}"
    );
    assert_eq!(shown.matches(": error: ").count(), 100);

    // Garbage costs the TOML parser far more per byte than rules do: a file
    // of more tokens than a 16 MiB rules file has is refused before parsing.
    let file = dir.file("garbage.toml", &"=\n".repeat(8_000_000));
    let out = sg_agent(&["check", file.to_str().expect("utf-8")]);
    assert_refused(
        "16 MB of '='",
        &out,
        "more than 4000000 TOML tokens in the file",
    );

    // A file over 16 MiB is refused before it is read; the flag raises it.
    let big = dir.0.join("big.toml");
    let f = std::fs::File::create(&big).expect("create");
    f.set_len(17 << 20).expect("grow");
    let out = sg_agent(&["check", big.to_str().expect("utf-8")]);
    assert_refused(
        "17 MiB",
        &out,
        "more than the 16777216 a rules file may have",
    );
    let out = sg_agent(&[
        "check",
        "--max-config-bytes",
        "20000000",
        big.to_str().expect("utf-8"),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "read, then found invalid (NUL bytes)"
    );
    assert!(!text(&out).contains("more than the"), "{}", text(&out));
}

/// `check`'s table copes with a column of any width (a group of 5,000
/// members, referenced by an enforced instance).
#[test]
fn check_shows_a_group_of_thousands() {
    let dir = Dir::new("wide");
    let mut rules = String::from(
        "[[security_group]]\nname = \"mesh\"\n  [[security_group.ingress]]\n  protocol = \
         \"tcp\"\n  from_port = 1\n  to_port = 1\n  self = true\n",
    );
    for i in 0..5_000 {
        let _ = writeln!(
            rules,
            "[[instance]]\nname = \"m{i}\"\naddresses = [\"10.{}.{}.1\"]\nsecurity_groups = \
             [\"mesh\"]",
            i / 250,
            i % 250
        );
    }
    rules.push_str(
        "[[instance]]\nname = \"here\"\naddresses = [\"10.250.0.1\"]\nsecurity_groups = \
         [\"mesh\"]\ninterface = \"eth0\"\n",
    );
    let file = dir.file("wide.toml", &rules);
    let out = sg_agent(&["check", file.to_str().expect("utf-8")]);
    let shown = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        &shown[shown.len().saturating_sub(2000)..]
    );
    assert!(shown.contains("10.19.249.1/32"), "every member listed");
}

/// `check` and `run` agree on every file of the broken-configs corpus, of
/// the fuzz seed corpus and of the examples: `check` exits 0 exactly when
/// `run` starts enforcing (it says "ready"; instances whose namespace does
/// not exist are waited for), and 1 exactly when `run` exits 1 without
/// loading anything.
#[test]
fn check_and_run_agree_on_every_corpus_file() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["tests/broken-configs", "fuzz/corpus/rules_file", "examples"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("corpus dir") {
            files.push(entry.expect("entry").path());
        }
    }
    files.sort();
    // Copies in a directory of the test's own: `run` checks who may write
    // the file, and the checkout may belong to anyone.
    let dir = Dir::new("corpus");
    let (mut accepted, mut refused) = (0, 0);
    for (i, original) in files.iter().enumerate() {
        let Ok(bytes) = std::fs::read(original) else {
            continue;
        };
        let Ok(rules) = String::from_utf8(bytes) else {
            continue;
        };
        let file = dir.file(&format!("f{i}.toml"), &rules);
        let file = file.to_str().expect("utf-8");
        let check = sg_agent(&["check", file]);
        let state = StateDir::new();
        let mut child = Command::new(binary())
            .args(["run", "--no-watch", "--config", file, "--state-dir"])
            .arg(&state.path)
            .arg("--control-socket")
            .arg(state.control_socket())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("runs");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains("ready: enforcing") {
                    let _ = tx.send(true);
                }
            }
            let _ = tx.send(false);
        });
        let ready = rx
            .recv_timeout(GUARD)
            .expect("run decides within the guard");
        if ready {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let status = child.wait().expect("wait");
        let name = original.display();
        match check.status.code() {
            Some(0) => {
                assert!(ready, "{name}: check accepts it, run refuses it");
                accepted += 1;
            }
            Some(1) => {
                assert!(
                    !ready,
                    "{name}: check refuses it, run enforces it:\n{}",
                    text(&check)
                );
                assert_eq!(status.code(), Some(1), "{name}: run exits 1");
                refused += 1;
            }
            other => panic!("{name}: check exited {other:?}:\n{}", text(&check)),
        }
    }
    eprintln!("corpus: {accepted} files accepted by both, {refused} refused by both");
    assert!(
        accepted > 0 && refused > 0,
        "both kinds of file are in the corpus"
    );
}

/// Many names, many members, a huge list: each a clear answer, no panic.
#[test]
fn many_names_members_and_entries_are_bounded() {
    let dir = Dir::new("many");
    // 3,000 unknown group names among 3,000 known ones: every one reported
    // and counted, suggestions bounded (100 shown).
    let mut names = String::from("[[security_group]]\nname = \"g\"\n");
    for i in 0..3_000 {
        let _ = writeln!(names, "[[security_group]]\nname = \"known-{i}\"");
    }
    let refs: Vec<String> = (0..3_000).map(|i| format!("\"unknown-{i}\"")).collect();
    let _ = writeln!(
        names,
        "[[security_group]]\nname = \"refs\"\n  [[security_group.ingress]]\n  protocol = \
         \"tcp\"\n  from_port = 1\n  to_port = 1\n  security_groups = [{}]\n[[instance]]\nname = \
         \"i\"\naddresses = [\"10.0.0.1\"]\nsecurity_groups = [\"g\"]\ninterface = \"eth0\"",
        refs.join(", ")
    );
    let file = dir.file("names.toml", &names);
    let out = sg_agent(&["check", file.to_str().expect("utf-8")]);
    assert_refused("3,000 unknown names", &out, "names.toml: 3002 errors found");
    assert!(
        text(&out).contains("... and 2902 more not shown"),
        "{}",
        text(&out)
    );

    // 5,000 member-only instances and a `self` rule: only the enforced
    // instance is compiled (its one rule lists every member).
    let mut members = String::from(
        "[limits]\nbeyond_aws = true\nrules_per_group = 1000\n[[security_group]]\nname = \
         \"mesh\"\n  [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 1\n  \
         to_port = 1\n  self = true\n",
    );
    for i in 0..5_000 {
        let _ = writeln!(
            members,
            "[[instance]]\nname = \"m{i}\"\naddresses = [\"10.{}.{}.1\"]\nsecurity_groups = \
             [\"mesh\"]",
            i / 250,
            i % 250
        );
    }
    members.push_str(
        "[[instance]]\nname = \"here\"\naddresses = [\"10.250.0.1\"]\nsecurity_groups = \
         [\"mesh\"]\ninterface = \"eth0\"\n",
    );
    let file = dir.file("members.toml", &members);
    let out = sg_agent(&["check", "--json", file.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A prefix list of 1,000,000 entries (17 MB): refused by size; with the
    // bound raised, refused by the maps' capacity, with the numbers.
    let entries: Vec<String> = (0u32..1_000_000)
        .map(|i| {
            format!(
                "\"10.{}.{}.{}/32\"",
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            )
        })
        .collect();
    let list = format!(
        "[limits]\nbeyond_aws = true\nrules_per_group = 1000000\n[[prefix_list]]\nname = \
         \"huge\"\nentries = [{}]\n[[security_group]]\nname = \"g\"\n  \
         [[security_group.ingress]]\n  protocol = \"tcp\"\n  from_port = 1\n  to_port = 1\n  \
         prefix_list_ids = [\"huge\"]\n[[instance]]\nname = \"i\"\naddresses = \
         [\"10.200.0.1\"]\nsecurity_groups = [\"g\"]\ninterface = \"eth0\"\n",
        entries.join(", ")
    );
    let file = dir.file("list.toml", &list);
    let path = file.to_str().expect("utf-8");
    assert_refused(
        "a 17 MB list",
        &sg_agent(&["check", path]),
        "a rules file may have",
    );
    assert_refused(
        "a 17 MB list, read",
        &sg_agent(&["check", "--max-config-bytes", "30000000", path]),
        "IPv4 address entries, more than the 524288 this build holds",
    );
}

/// A control character that reaches an output (here the rules file's path,
/// which the log and `status` show) is shown escaped, never sent to the
/// terminal as it is: an escape sequence cannot recolour or rewrite what
/// an operator reads.
#[test]
fn control_characters_reach_no_terminal() {
    let lab = sg_tests::seed::SeedLab::new("sgc", sg_tests::seed::SEED, &[]);
    let dir = lab
        .config
        .parent()
        .expect("dir")
        .join("e\u{1b}[31mred\u{7}");
    std::fs::create_dir(&dir).expect("mkdir");
    let config = dir.join("vpc.toml");
    std::fs::copy(&lab.config, &config).expect("copy");
    let agent = sg_tests::agent::AgentProcess::start(&config);
    agent.expect_log("ready: enforcing", 0, GUARD);
    let log = agent.log_text();
    assert!(!log.contains('\u{1b}') && !log.contains('\u{7}'), "{log:?}");
    assert!(log.contains("e\\u{1b}[31mred\\u{7}"), "{log}");
    let out = Command::new(binary())
        .args(["status", "--control-socket"])
        .arg(&agent.control_socket)
        .output()
        .expect("status runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("e\\u{1b}[31mred\\u{7}"), "{text}");
    assert!(!text.contains('\u{1b}'), "{text:?}");
    assert_eq!(agent.terminate().code(), Some(0));
}

/// The operator's SSH session: an instance that holds the session's server
/// address with no rule allowing it is refused at start, naming the rule
/// to add (app-1 takes SSH only from the bastion's group); one whose group
/// allows it (the bastion's, from the admins) starts.
#[test]
fn an_instance_that_would_cut_the_ssh_session_is_refused_without_force() {
    let lab = sg_tests::seed::SeedLab::new("sgk", sg_tests::seed::SEED, &[]);
    let state = StateDir::new();
    let run = |session: &str, extra: &[&str]| {
        let mut child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&lab.config)
            .arg("--state-dir")
            .arg(&state.path)
            .arg("--control-socket")
            .arg(state.control_socket())
            .args(extra)
            .env("SSH_CONNECTION", session)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runs");
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(6) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let exited = child.try_wait().expect("wait").is_some();
        if !exited {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let out = child.wait_with_output().expect("output");
        (
            exited,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (exited, code, log) = run("203.0.113.5 50000 10.0.1.10 22", &[]);
    assert!(exited, "refused at once: {log}");
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("it would lock SSH out"), "{log}");
    assert!(
        log.contains("instance app-1 holds 10.0.1.10 and no rule of its groups allows the SSH session from 203.0.113.5"),
        "{log}"
    );
    assert!(log.contains("cidr_blocks = [\"203.0.113.5/32\"]"), "{log}");
    // The bastion allows SSH from the admins: it starts (and is stopped).
    let (exited, _, log) = run("203.0.113.5 50000 10.0.0.20 22", &[]);
    assert!(!exited, "an allowed session does not stop the start: {log}");
    assert!(log.contains("ready: enforcing"), "{log}");
    let (exited, _, log) = run("203.0.113.5 50000 10.0.1.10 22", &["--force"]);
    assert!(!exited, "--force starts: {log}");
    assert!(
        log.contains("--force: starting though it cuts SSH sessions"),
        "{log}"
    );
}

//! `sg-agent run` as a child process: its log lines, signals and exit.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// The sg-agent binary of the same build profile as this test.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    // Tests live in target/<profile>/deps, binaries in target/<profile>.
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("profile dir");
    }
    let path = dir.join("sg-agent");
    assert!(
        path.exists(),
        "{} not built: run `cargo xtask test` (it builds the workspace first)",
        path.display()
    );
    path
}

/// A state directory (pinned maps and links) of the test's own, under
/// /sys/fs/bpf, removed on drop whatever the agents did: a killed agent
/// leaves its instances enforced there.
pub struct StateDir {
    pub path: PathBuf,
}

impl StateDir {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self {
            path: PathBuf::from(format!("/sys/fs/bpf/sg-test-{}-{n}", std::process::id())),
        }
    }
}

impl StateDir {
    /// The control socket of the agents on this state directory: one of
    /// the test's own (tests run side by side), reused by an agent that
    /// restarts on the same state.
    pub fn control_socket(&self) -> PathBuf {
        let name = self.path.file_name().expect("a named directory");
        PathBuf::from("/run/sg-agent-tests")
            .join(name)
            .with_extension("sock")
    }
}

impl Default for StateDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        // Unpinning detaches the links and frees the maps.
        let _ = std::fs::remove_dir_all(&self.path);
        let _ = std::fs::remove_file(self.control_socket());
        let _ = std::fs::remove_file(sg_agent::agent::confirmed_policy_path(&self.path));
    }
}

pub struct AgentProcess {
    child: Child,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    /// The state directory, when this agent owns it (dropped after the
    /// child is killed).
    owned_state: Option<StateDir>,
    /// The control socket it serves.
    pub control_socket: PathBuf,
}

impl AgentProcess {
    /// Starts `sg-agent run --config FILE`.
    pub fn start(config: &Path) -> Self {
        Self::start_with(config, &[])
    }

    /// Starts `sg-agent run --config FILE` with extra arguments.
    pub fn start_with(config: &Path, args: &[&str]) -> Self {
        Self::start_logging(config, args, "info")
    }

    /// Starts the agent with `RUST_LOG=level`, with a state directory of
    /// its own.
    pub fn start_logging(config: &Path, args: &[&str], level: &str) -> Self {
        let state = StateDir::new();
        let mut agent = Self::start_in(&state, config, args, level);
        agent.owned_state = Some(state);
        agent
    }

    /// Starts the agent on a state directory the caller keeps (to restart
    /// an agent on the state the previous one left).
    pub fn start_in(state: &StateDir, config: &Path, args: &[&str], level: &str) -> Self {
        Self::spawn(state, Some(config), args, level, true)
    }

    /// Starts `sg-agent run ARGS` with no rules file (`--etcd ...`), with a
    /// state directory of its own.
    pub fn start_without_file(args: &[&str]) -> Self {
        let state = StateDir::new();
        let mut agent = Self::spawn(&state, None, args, "info", true);
        agent.owned_state = Some(state);
        agent
    }

    /// [`AgentProcess::start_in`] without echoing the agent's log to stderr
    /// (it is still kept): for harnesses whose agents log per packet.
    pub fn start_quiet_in(state: &StateDir, config: &Path, args: &[&str]) -> Self {
        Self::spawn(state, Some(config), args, "info", false)
    }

    /// [`AgentProcess::start_quiet_in`] with `RUST_LOG=level`.
    pub fn start_quiet_logging(
        state: &StateDir,
        config: &Path,
        args: &[&str],
        level: &str,
    ) -> Self {
        Self::spawn(state, Some(config), args, level, false)
    }

    fn spawn(
        state: &StateDir,
        config: Option<&Path>,
        args: &[&str],
        level: &str,
        echo: bool,
    ) -> Self {
        // The test's own socket, unless the caller names one (the demo
        // uses the default, so a user's `sg-agent status` finds it).
        let given = args
            .iter()
            .position(|a| *a == "--control-socket")
            .and_then(|i| args.get(i + 1));
        let control_socket = given.map_or_else(|| state.control_socket(), PathBuf::from);
        let mut child = Command::new(binary())
            .arg("run")
            .args(
                config
                    .map(|c| ["--config".as_ref(), c.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            .arg("--state-dir")
            .arg(&state.path)
            .args(
                given
                    .is_none()
                    .then(|| ["--control-socket".as_ref(), control_socket.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            .args(args)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sg-agent starts");
        let log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = child.stderr.take().expect("piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[sg-agent] {line}");
                }
                let (lines, cv) = &*sink;
                lines.lock().expect("log lock").push(line);
                cv.notify_all();
            }
        });
        Self {
            child,
            log,
            owned_state: None,
            control_socket,
        }
    }

    /// Waits until a log line contains `needle`, counting only lines after
    /// the first `skip`; returns its index.
    pub fn wait_for(&self, needle: &str, skip: usize, timeout: Duration) -> Option<usize> {
        let (lines, cv) = &*self.log;
        let end = Instant::now() + timeout;
        let mut guard = lines.lock().expect("log lock");
        loop {
            if let Some(i) = guard.iter().skip(skip).position(|l| l.contains(needle)) {
                return Some(skip + i);
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            guard = cv.wait_timeout(guard, end - now).expect("log lock").0;
        }
    }

    /// Like `wait_for`, panicking with the log when the line never comes.
    pub fn expect_log(&self, needle: &str, skip: usize, timeout: Duration) -> usize {
        self.wait_for(needle, skip, timeout).unwrap_or_else(|| {
            panic!(
                "sg-agent never logged {needle:?} within {timeout:?}; log:\n{}",
                self.log_text()
            )
        })
    }

    pub fn log_lines(&self) -> usize {
        self.log.0.lock().expect("log lock").len()
    }

    /// `sg-agent flows --follow ARGS` against this agent, its records on a
    /// pipe.
    pub fn follow_flows(&self, args: &[&str]) -> Child {
        Command::new(binary())
            .args(["flows", "--follow", "--control-socket"])
            .arg(&self.control_socket)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("sg-agent flows starts")
    }

    /// `sg-agent status --json` against this agent, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let out = Command::new(binary())
            .args(["status", "--json", "--control-socket"])
            .arg(&self.control_socket)
            .output()
            .expect("sg-agent status runs");
        assert!(out.status.success(), "status: {out:?}");
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// Line `i` of the log.
    pub fn log_line(&self, i: usize) -> String {
        self.log.0.lock().expect("log lock")[i].clone()
    }

    pub fn log_text(&self) -> String {
        self.log.0.lock().expect("log lock").join("\n")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, sig).expect("signal sg-agent");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < end,
                "sg-agent did not exit within 10 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as the OOM killer does: no chance to clean up.
    pub fn kill9(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One `GET /metrics` of an agent's metrics endpoint: the whole HTTP
/// response, or empty if nothing answers.
pub fn get_metrics(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

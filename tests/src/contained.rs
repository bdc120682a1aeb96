//! A process in a network namespace of its own (a container's stand-in),
//! started so that it gets a chosen PID when asked: what the reused-PID
//! test and the chaos suite use.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::probe::eventually;

/// A process in a network namespace of its own, `eth0` made inside by
/// `setup` (shell), killed on drop.
pub struct Contained(Child);

impl Contained {
    pub fn start(setup: &str) -> Self {
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

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Its `eth0`: a veth whose other end, `port`, is in namespace `sw` (as
    /// a container runtime plugs a container into its bridge's namespace).
    pub fn plug(&self, sw: &str, port: &str) {
        crate::lab::ip(&[
            "-n",
            sw,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.pid().to_string(),
        ]);
    }

    /// Started so that it gets PID `pid` (the kernel's next PID set just
    /// before it, as a user forking in a loop would get it in time).
    pub fn start_as(pid: u32, setup: &str) -> Self {
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

    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The identity (device, inode) of the namespace a `/proc/.../ns/net`
/// file names.
pub fn namespace_of(path: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Drop for Contained {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! The real AWS clients (`PyPI`'s `awscli` and `boto3`) and moto's EC2
//! server, in a virtual environment the tests make once (pinned versions,
//! under the build's target directory), and the agent's EC2 endpoint.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::OnceLock,
    time::Duration,
};

/// What the tests install (the versions they were written against).
pub const PACKAGES: [&str; 3] = ["awscli==1.46.3", "boto3==1.44.18", "moto[server]==5.2.6"];

/// The scripts the tests drive the clients with (`tests/ec2/`).
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ec2").join(name)
}

/// Where the virtual environment is kept: beside the user's other caches
/// (`$XDG_CACHE_HOME`, or `~/.cache`), as pip keeps its downloads, so that
/// a fresh checkout (CI's) does not install it again; what is installed is
/// checked by its marker, so a change of [`PACKAGES`] makes it anew.
fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("sg-agent-tests")
}

/// The virtual environment's directory (made on first use: `python3 -m
/// venv` and `pip install` of [`PACKAGES`], under a lock so that test
/// binaries running at once make it once).
pub fn venv() -> &'static Path {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let cache = cache_dir();
        std::fs::create_dir_all(&cache).expect("the tests' cache directory");
        let dir = cache.join("aws-venv");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(cache.join("aws-venv.lock"))
            .expect("venv lock file");
        let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .unwrap_or_else(|(_, e)| panic!("locking the venv: {e}"));
        let marker = dir.join(format!(
            "installed-{}",
            PACKAGES.join(",").replace(['=', '[', ']'], "_")
        ));
        if !marker.exists() {
            let _ = std::fs::remove_dir_all(&dir);
            run(
                Command::new("python3").args(["-m", "venv"]).arg(&dir),
                "python3 -m venv",
            );
            run(
                Command::new(dir.join("bin/pip"))
                    .args(["install", "--quiet", "--disable-pip-version-check"])
                    .args(PACKAGES),
                "pip install awscli boto3 moto[server]",
            );
            std::fs::write(&marker, "").expect("venv marker");
        }
        drop(held);
        dir
    })
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's python running `script` with `args`, under the test
/// credentials; the whole output, whatever the exit status.
pub fn python(script: &Path, args: &[&str]) -> Output {
    Command::new(venv().join("bin/python"))
        .arg(script)
        .args(args)
        .envs(test_credentials())
        .output()
        .expect("running python")
}

/// The venv's `aws` with `--endpoint-url endpoint` and `args`.
pub fn aws_cli(endpoint: &str, args: &[&str]) -> Output {
    Command::new(venv().join("bin/aws"))
        .args(["--endpoint-url", endpoint, "--output", "json"])
        .args(args)
        .envs(test_credentials())
        .output()
        .expect("running aws")
}

/// The credentials and region a client is given: any credentials are
/// accepted on loopback; nothing of the host's own AWS configuration is
/// read.
pub fn test_credentials() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "AKIDSGAGENTTEST"),
        ("AWS_SECRET_ACCESS_KEY", "sg-agent-test-secret"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
    ]
}

/// A loopback port free now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// moto's EC2 server on a loopback port of its own, stopped on drop.
pub struct Moto {
    pub endpoint: String,
    /// Over https: the CA its certificate chains to (clients are told it
    /// with `AWS_CA_BUNDLE`), and the directory holding it.
    pub ca: Option<PathBuf>,
    dir: Option<PathBuf>,
    child: std::process::Child,
}

impl Moto {
    pub fn start() -> Self {
        Self::spawn(None)
    }

    /// moto over https, with a certificate for 127.0.0.1 from a CA made
    /// for the test (openssl).
    pub fn start_tls() -> Self {
        let dir = std::env::temp_dir().join(format!("sg-moto-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (tls, _, _) = crate::etcd::make_certificates(&dir);
        let mut me = Self::spawn(Some((&tls.cert, &tls.key)));
        me.ca = Some(tls.ca);
        me.dir = Some(dir);
        me
    }

    fn spawn(tls: Option<(&Path, &Path)>) -> Self {
        let port = free_port();
        let mut cmd = Command::new(venv().join("bin/moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if let Some((cert, key)) = tls {
            cmd.arg("--ssl-cert").arg(cert).arg("--ssl-key").arg(key);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            endpoint,
            ca: None,
            dir: None,
            child,
        }
    }

    /// [`python`] with `script` talking to this server (trusting its CA).
    pub fn python(&self, script: &Path, args: &[&str]) -> Output {
        let mut cmd = Command::new(venv().join("bin/python"));
        cmd.arg(script).args(args).envs(test_credentials());
        if let Some(ca) = &self.ca {
            cmd.env("AWS_CA_BUNDLE", ca);
        }
        cmd.output().expect("running python")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

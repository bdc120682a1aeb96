//! A real etcd (Debian's etcd-server) for the many-hosts tests and
//! benchmarks: a single-member cluster on loopback ports chosen free, with
//! a data directory of its own, killed and removed on drop.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct EtcdServer {
    child: Option<Child>,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    /// etcd's plain-HTTP health and metrics listener (also with TLS).
    metrics_port: u16,
    /// With TLS: the server's certificate and key, and the CA whose
    /// client certificates it requires.
    tls: Option<ServerTls>,
}

/// PEM files for an etcd that speaks TLS and requires client certificates.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made
/// with openssl in `dir`: (server files, client certificate, client key).
pub fn make_certificates(dir: &std::path::Path) -> (ServerTls, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("cert dir");
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "openssl: {out:?}");
    };
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
          -keyout ca.key -out ca.pem -days 2 -subj /CN=sg-test-ca 2>/dev/null
        for who in server client; do
          openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout $who.key -out $who.csr -subj /CN=sg-test-$who 2>/dev/null
        done
        printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
        printf 'extendedKeyUsage=clientAuth\n' > client.ext
        for who in server client; do
          openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -out $who.pem -days 2 -extfile $who.ext 2>/dev/null
        done",
    );
    (
        ServerTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        },
        dir.join("client.pem"),
        dir.join("client.key"),
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl EtcdServer {
    /// Starts etcd and waits until it answers its health check.
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, None)
    }

    /// [`EtcdServer::start`], speaking TLS with client certificates when
    /// `tls` is given.
    pub fn start_with(tag: &str, tls: Option<ServerTls>) -> Self {
        let dir = Self::dir_for(tag);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("etcd data dir");
        let mut server = Self {
            child: None,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            metrics_port: free_port(),
            tls,
        };
        server.resume();
        server
    }

    /// The directory a server of `tag` keeps its data (and a test its
    /// certificates) in.
    pub fn dir_for(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("sg-etcd-{tag}-{}", std::process::id()))
    }

    /// The client URL agents and `push` use.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Kills etcd (as a crash would: SIGKILL), keeping its data.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same data and ports.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd already runs");
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.join("etcd.log")).expect("etcd log");
        let mut etcd = Command::new("etcd");
        if let Some(tls) = &self.tls {
            etcd.arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let metrics = format!("http://127.0.0.1:{}", self.metrics_port);
        let child = etcd
            .args(["--listen-metrics-urls", &metrics])
            .arg("--name")
            .arg("sg-test")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("sg-test={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts (cargo xtask bootstrap installs etcd-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy; its log:\n{}",
                std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// etcd's own health endpoint (on the plain metrics listener) says it
    /// serves.
    fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.metrics_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if s.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply.contains("\"health\":\"true\"")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

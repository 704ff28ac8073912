//! redis-server on a free port, keeping nothing on disk.

use std::{
    net::TcpStream,
    process::{Child, Command},
    time::Duration,
};

use tempfile::TempDir;

use crate::process::{binary, free_port, spawn, stop, wait_for};

/// A running `redis-server`. Stopped on drop.
pub struct RedisServer {
    child: Option<Child>,
    dir: TempDir,
    port: u16,
    tls: Option<Tls>,
}

impl RedisServer {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lt-redis-")
            .tempdir()
            .expect("temp dir");
        // another process may take the free port before redis-server binds it: then another
        for _ in 0..10 {
            let port = free_port();
            if let Some(child) = Self::spawn(&dir, port) {
                return Self {
                    child: Some(child),
                    dir,
                    port,
                    tls: None,
                };
            }
        }
        panic!("redis-server found every port it was given taken");
    }

    /// The server on `port`, or `None` when it exited (the port was taken).
    fn spawn(dir: &TempDir, port: u16) -> Option<Child> {
        Self::spawn_with(dir, port, &[])
    }

    /// The same with more arguments (TLS); ready once `port` answers.
    fn spawn_with(dir: &TempDir, port: u16, extra: &[String]) -> Option<Child> {
        spawn_in(dir.path(), port, extra)
    }

    /// Stops the server and starts it again on the same port: empty, as a Redis that kept
    /// nothing on disk comes back after a crash.
    pub fn restart(&mut self) {
        assert!(self.tls.is_none(), "restart is for plain servers");
        stop(&mut self.child);
        let child = Self::spawn(&self.dir, self.port);
        self.child = Some(child.expect("redis-server restarted on its port"));
    }

    /// Stops the server (SIGSTOP) until [`RedisServer::resume`]: a Redis that takes its time.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://127.0.0.1:<tls port>` for [`RedisServer::start_tls`].
    pub fn url(&self) -> String {
        match &self.tls {
            Some(tls) => format!("rediss://127.0.0.1:{}", tls.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// A server that also takes TLS connections, with a certificate for 127.0.0.1 signed by a
    /// certificate authority of its own ([`RedisServer::ca_file`]); [`RedisServer::url`] is the
    /// TLS one. The certificates are made with the `openssl` command.
    pub fn start_tls() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("lt-redis-tls-")
            .tempdir()
            .expect("temp dir");
        let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        std::fs::write(path("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("san.ext");
        for args in [
            vec![
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=learntrail test CA",
                "-keyout",
                &path("ca.key"),
                "-out",
                &path("ca.crt"),
            ],
            vec![
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &path("server.key"),
                "-out",
                &path("server.csr"),
            ],
            vec![
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &path("server.csr"),
                "-CA",
                &path("ca.crt"),
                "-CAkey",
                &path("ca.key"),
                "-CAcreateserial",
                "-extfile",
                &path("san.ext"),
                "-out",
                &path("server.crt"),
            ],
        ] {
            let output = Command::new("openssl")
                .args(&args)
                .output()
                .expect("openssl (apt-get install -y openssl)");
            assert!(
                output.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        for _ in 0..10 {
            let (port, tls_port) = (free_port(), free_port());
            let tls_args = [
                "--tls-port".to_string(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                path("server.crt"),
                "--tls-key-file".into(),
                path("server.key"),
                "--tls-ca-cert-file".into(),
                path("ca.crt"),
                "--tls-auth-clients".into(),
                "no".into(),
            ];
            if let Some(child) = Self::spawn_with(&dir, port, &tls_args) {
                return Self {
                    child: Some(child),
                    port,
                    tls: Some(Tls {
                        port: tls_port,
                        ca: dir.path().join("ca.crt"),
                    }),
                    dir,
                };
            }
        }
        panic!("redis-server found every port it was given taken");
    }

    /// The PEM file of the certificate authority of a [`RedisServer::start_tls`] server.
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(|tls| tls.ca.as_path())
    }
}

/// The TLS side of a server: its port and its certificate authority.
struct Tls {
    port: u16,
    ca: std::path::PathBuf,
}

/// redis-server on `port` with its log and data in `dir`, ready once `port` answers a PING;
/// `None` when it exited first (the port was taken).
fn spawn_in(dir: &std::path::Path, port: u16, extra: &[String]) -> Option<Child> {
    let bin = binary(
        "redis-server",
        "REDIS_SERVER_BIN",
        "apt-get install -y redis-server",
    );
    let log = dir.join("redis.log");
    let child = spawn(
        Command::new(bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile"])
            .arg(&log)
            .arg("--dir")
            .arg(dir)
            .args(extra),
    );
    let mut child = child;
    let mut exited = false;
    wait_for("redis-server", &log, Duration::from_secs(20), || {
        exited = matches!(child.try_wait(), Ok(Some(_)));
        exited || redis_answers(port)
    });
    (!exited).then_some(child)
}

/// True when `port` answers a Redis PING: a server of ours, not another process that took the
/// port between [`free_port`] and redis-server's bind (a test would then talk to it).
fn redis_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A Redis Cluster of `redis-server --cluster-enabled yes` nodes on loopback, all primaries,
/// the slots spread by `redis-cli --cluster create`. Stopped on drop.
pub struct RedisCluster {
    nodes: Vec<Child>,
    _dir: TempDir,
    ports: Vec<u16>,
}

impl RedisCluster {
    /// Starts `size` (at least 3) nodes and waits until the cluster says `cluster_state:ok`.
    pub fn start(size: usize) -> Self {
        let cli = binary(
            "redis-cli",
            "REDIS_CLI_BIN",
            "apt-get install -y redis-tools",
        );
        let dir = tempfile::Builder::new()
            .prefix("lt-redis-cluster-")
            .tempdir()
            .expect("temp dir");
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for i in 0..size {
            let node_dir = dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            // the cluster bus gets a free port of its own (by default it is the port + 10000,
            // which may be taken, or past 65535; `--cluster-port` needs Redis 7); another try
            // when either was taken first
            let (child, port) = (0..10)
                .find_map(|_| {
                    let (port, bus) = (free_port(), free_port());
                    let extra = [
                        "--cluster-enabled".to_string(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        node_dir.join("nodes.conf").display().to_string(),
                        "--cluster-port".into(),
                        bus.to_string(),
                    ];
                    spawn_in(&node_dir, port, &extra).map(|child| (child, port))
                })
                .expect("redis-server (cluster node) found every port it was given taken");
            nodes.push(child);
            ports.push(port);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let log = dir.path().join("node-0/redis.log");
        wait_for("redis cluster", &log, Duration::from_secs(30), || {
            ports.iter().all(|port| {
                Command::new(&cli)
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
                    .unwrap_or(false)
            })
        });
        Self {
            nodes,
            _dir: dir,
            ports,
        }
    }

    /// `redis://127.0.0.1:<port>` of every node.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.nodes.drain(..) {
            stop(&mut Some(child));
        }
    }
}

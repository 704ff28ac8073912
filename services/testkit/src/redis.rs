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
    _dir: TempDir,
    port: u16,
}

impl RedisServer {
    pub fn start() -> Self {
        let bin = binary(
            "redis-server",
            "REDIS_SERVER_BIN",
            "apt-get install -y redis-server",
        );
        let dir = tempfile::Builder::new()
            .prefix("lt-redis-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let log = dir.path().join("redis.log");
        let child = spawn(
            Command::new(bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--logfile"])
                .arg(&log)
                .arg("--dir")
                .arg(dir.path()),
        );
        wait_for("redis-server", &log, Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            child: Some(child),
            _dir: dir,
            port,
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

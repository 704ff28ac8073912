//! Garage, a real S3-compatible object store, as a single node on free ports.

use std::{
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Output},
    time::Duration,
};

use tempfile::TempDir;

use crate::process::{binary, free_port, stop, wait_for};

/// Access key id and secret every test server trusts (imported, not generated).
pub const ACCESS_KEY_ID: &str = "GK1a2b3c4d5e6f708192a3b4c5";
pub const SECRET_ACCESS_KEY: &str =
    "7e57c0ffee7e57c0ffee7e57c0ffee7e57c0ffee7e57c0ffee7e57c0ffee0001";
/// The region the server's S3 API announces.
pub const REGION: &str = "garage";

/// A running single-node Garage with a layout applied and the test key imported.
/// Stopped and removed on drop.
pub struct GarageServer {
    child: Option<Child>,
    dir: TempDir,
    bin: PathBuf,
    s3_port: u16,
}

impl GarageServer {
    pub fn start() -> Self {
        let bin = binary("garage", "GARAGE_BIN", "cargo install garage --locked");
        let dir = tempfile::Builder::new()
            .prefix("lt-garage-")
            .tempdir()
            .expect("temp dir");
        let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
        let root = dir.path().display();
        let secret: String = format!("{:064x}", u128::from(s3_port) << 64 | u128::from(rpc_port));
        let config = format!(
            r#"metadata_dir = "{root}/meta"
data_dir = "{root}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#
        );
        std::fs::write(dir.path().join("garage.toml"), config).expect("write garage.toml");
        let mut server = Self {
            child: None,
            dir,
            bin,
            s3_port,
        };
        server.launch();
        let node = server.cli(&["node", "id", "-q"]);
        let node = node
            .split('@')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        server.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        server.cli(&["layout", "apply", "--version", "1"]);
        server.cli(&[
            "key",
            "import",
            "-n",
            "test",
            "--yes",
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
        ]);
        server
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("garage.toml")
    }

    fn launch(&mut self) {
        let log = self.dir.path().join("garage.log");
        let mut command = Command::new(&self.bin);
        command
            .arg("-c")
            .arg(self.config_path())
            .arg("server")
            .env("RUST_LOG", "warn")
            .stderr(std::fs::File::create(&log).expect("log file"));
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start garage: {e}"));
        self.child = Some(child);
        let port = self.s3_port;
        wait_for("garage", &log, Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Runs a garage admin command against this node, panicking on failure.
    fn cli(&self, args: &[&str]) -> String {
        let mut last = None;
        for _ in 0..100 {
            let output: Output = Command::new(&self.bin)
                .arg("-c")
                .arg(self.config_path())
                .args(args)
                .output()
                .expect("run garage cli");
            if output.status.success() {
                return String::from_utf8_lossy(&output.stdout).into_owned();
            }
            last = Some(output);
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = last.expect("at least one attempt");
        panic!(
            "garage {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Creates a bucket the test key may read and write.
    pub fn create_bucket(&self, name: &str) {
        self.cli(&["bucket", "create", name]);
        self.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            ACCESS_KEY_ID,
        ]);
    }

    /// `http://127.0.0.1:<port>`: use path-style addressing.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Stops the server, keeping its data (an outage).
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    /// Starts it again with the same data and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for GarageServer {
    fn drop(&mut self) {
        self.stop();
    }
}

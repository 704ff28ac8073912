//! A NATS JetStream cluster on loopback: `nats-server -js` nodes joined by `--cluster`/`--routes`,
//! each on free ports with its own store, for tests of what happens past one machine.

use std::{
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use tempfile::TempDir;

use crate::process::{binary, free_port, spawn, stop, wait_for};

/// One node of a [`NatsCluster`].
struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    child: Option<Child>,
}

/// `n` clustered `nats-server -js` nodes (cluster name `learntrail`, server names `n0`, `n1`, ...).
/// Dropping it stops every node and removes the stores.
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: TempDir,
    bin: PathBuf,
}

impl NatsCluster {
    /// Starts `n` nodes and waits until each is ready for clients (the JetStream meta leader may
    /// take a moment longer: retry the first JetStream call).
    pub fn start(n: usize) -> Self {
        let bin = binary(
            "nats-server",
            "NATS_SERVER_BIN",
            "apt-get install -y nats-server",
        );
        let dir = tempfile::Builder::new()
            .prefix("lt-nats-cluster-")
            .tempdir()
            .expect("temp dir");
        let nodes = (0..n)
            .map(|i| Node {
                name: format!("n{i}"),
                client_port: free_port(),
                cluster_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = Self { nodes, dir, bin };
        for i in 0..n {
            cluster.launch(i);
        }
        for i in 0..n {
            cluster.wait_ready(i);
        }
        cluster
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.nodes[i].name))
    }

    fn launch(&mut self, i: usize) {
        let log = self.log_path(i);
        let _ = std::fs::remove_file(&log);
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let node = &self.nodes[i];
        let child = spawn(
            Command::new(&self.bin)
                .args(["-a", "127.0.0.1", "-p", &node.client_port.to_string()])
                .args(["-n", &node.name, "-js", "-sd"])
                .arg(self.dir.path().join(&node.name))
                .args(["--cluster_name", "learntrail", "--cluster"])
                .arg(format!("nats://127.0.0.1:{}", node.cluster_port))
                .args(["--routes", &routes.join(",")])
                .arg("-l")
                .arg(&log),
        );
        self.nodes[i].child = Some(child);
    }

    fn wait_ready(&self, i: usize) {
        let log = self.log_path(i);
        wait_for(
            &format!("nats-server {}", self.nodes[i].name),
            &log,
            Duration::from_secs(30),
            || {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("Server is ready")
            },
        );
    }

    /// Every node's client URL, comma-separated (the form of `NATS_URL`).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// The index of the node with this server name (as JetStream reports leaders: `n1`).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Kills node `i` (SIGKILL: no lame duck, no flush), keeping its store.
    pub fn kill(&mut self, i: usize) {
        stop(&mut self.nodes[i].child);
    }

    /// Starts node `i` again on its ports with its store, and waits until it is ready.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.launch(i);
        self.wait_ready(i);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            stop(&mut node.child);
        }
    }
}

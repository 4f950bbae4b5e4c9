//! A RabbitMQ cluster of private nodes for tests: `rabbitmq-server` nodes on
//! their own ports, their data under a directory of their own owned by the
//! `rabbitmq` user (as Debian's wrapper runs it), joined into one cluster,
//! and stopped, data and all, when dropped. The shared broker on 5672 is not
//! touched. Starting three nodes takes about half a minute, so a test binary
//! starts one cluster and runs its scenarios on it.
//!
//! A cluster left behind by a test binary that was killed is stopped by the
//! next one to start (its directory names the process that made it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where every cluster's directory is made.
const ROOT: &str = "/tmp/bw-clusters";

/// One node of a cluster.
#[derive(Debug, Clone)]
pub struct Node {
    /// The Erlang node name, `bw{pid}n{i}@localhost`.
    pub name: String,
    pub amqp_port: u16,
    /// The TLS listener's port, when the cluster has one.
    pub tls_port: Option<u16>,
    dist_port: u16,
    base: PathBuf,
}

/// TLS files for a node's listener: PEM paths readable by `rabbitmq`.
#[derive(Debug, Clone)]
pub struct NodeTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Ask clients for a certificate signed by the CA.
    pub verify_peer: bool,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    dir: PathBuf,
}

impl Cluster {
    /// Starts `size` nodes and joins them to the first. Panics with what went
    /// wrong (no `rabbitmq-server`, not root, a node that would not start).
    pub fn start(size: usize) -> Cluster {
        Self::start_with(size, None)
    }

    /// The same, each node also listening for TLS with `tls`.
    pub fn start_with(size: usize, tls: Option<NodeTls>) -> Cluster {
        assert!(
            Path::new("/usr/sbin/rabbitmq-server").exists(),
            "cluster tests need RabbitMQ's rabbitmq-server (Debian's rabbitmq-server package)"
        );
        stop_abandoned();
        let dir = Path::new(ROOT).join(format!("c{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let nodes: Vec<Node> = (0..size)
            .map(|i| {
                let base = dir.join(format!("n{i}"));
                std::fs::create_dir_all(&base).unwrap();
                let node = Node {
                    name: format!("bw{}n{i}@localhost", std::process::id()),
                    amqp_port: free_port(),
                    tls_port: tls.as_ref().map(|_| free_port()),
                    dist_port: free_port(),
                    base,
                };
                std::fs::write(node.base.join("rabbitmq.conf"), node.config(tls.as_ref())).unwrap();
                node
            })
            .collect();
        chown_to_rabbitmq(Path::new(ROOT));
        let cluster = Cluster { nodes, dir };
        for i in 0..size {
            cluster.launch(i);
        }
        for i in 0..size {
            cluster.await_startup(i);
        }
        for i in 1..size {
            cluster.ctl_ok(i, &["stop_app"]);
            cluster.ctl_ok(i, &["join_cluster", &cluster.nodes[0].name]);
            cluster.ctl_ok(i, &["start_app"]);
        }
        cluster
    }

    /// Every node's AMQP URI, comma-separated, as `AMQP_URL` takes them.
    pub fn amqp_urls(&self) -> String {
        self.nodes
            .iter()
            .map(Self::url_of)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One node's AMQP URI.
    pub fn url(&self, i: usize) -> String {
        Self::url_of(&self.nodes[i])
    }

    fn url_of(node: &Node) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.amqp_port)
    }

    /// Kills node `i` at once, as a crash would (SIGKILL of its VM).
    pub fn kill(&self, i: usize) {
        let pid = std::fs::read_to_string(self.nodes[i].base.join("pid")).unwrap_or_default();
        let pid = pid.trim();
        assert!(!pid.is_empty(), "node {i} has no pid file");
        let _ = Command::new("kill").args(["-KILL", pid]).status();
        self.wait_port(i, false);
    }

    /// Stops node `i` cleanly.
    pub fn stop(&self, i: usize) {
        self.ctl_ok(i, &["stop"]);
        self.wait_port(i, false);
    }

    /// Starts node `i` again (after a kill or a stop): it rejoins the cluster.
    pub fn restart(&self, i: usize) {
        self.launch(i);
        self.await_startup(i);
    }

    /// `rabbitmqctl -n NODE ARGS` against node `i`.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Output {
        let node = &self.nodes[i];
        let mut command = format!("rabbitmqctl -n {}", node.name);
        for arg in args {
            // Quoted for the shell: `eval` takes Erlang with parentheses.
            command.push_str(&format!(" '{}'", arg.replace('\'', r"'\''")));
        }
        // The node's own environment would make the CLI take its ports.
        as_rabbitmq(&command, &[])
            .output()
            .expect("rabbitmqctl runs")
    }

    fn ctl_ok(&self, i: usize, args: &[&str]) {
        let out = self.ctl(i, args);
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?} on node {i}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn launch(&self, i: usize) {
        let node = &self.nodes[i];
        // The hard open-files limit, not a login's 1024: RabbitMQ 3.x counts
        // file handles per quorum queue against it (see README, "Sizing the
        // broker"), and a node past it stops answering handshakes.
        let script = "ulimit -n \"$(ulimit -Hn)\"; rabbitmq-server -detached";
        let status = as_rabbitmq(script, &node.env())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("rabbitmq-server runs");
        assert!(status.success(), "rabbitmq-server would not start node {i}");
    }

    fn await_startup(&self, i: usize) {
        let started = Instant::now();
        loop {
            let out = self.ctl(i, &["await_startup", "--timeout", "60"]);
            if out.status.success() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "node {i} did not start: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        self.wait_port(i, true);
    }

    /// Waits until node `i`'s AMQP port accepts connections (`open`) or not.
    fn wait_port(&self, i: usize, open: bool) {
        let address = format!("127.0.0.1:{}", self.nodes[i].amqp_port);
        let started = Instant::now();
        while std::net::TcpStream::connect(&address).is_ok() != open {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "node {i}'s port did not {}",
                if open { "open" } else { "close" }
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Node {
    /// The node's environment for `rabbitmq-server` and `rabbitmqctl`.
    fn env(&self) -> Vec<(String, String)> {
        let base = self.base.display().to_string();
        let root = self.base.parent().unwrap().display().to_string();
        vec![
            ("RABBITMQ_NODENAME".into(), self.name.clone()),
            ("RABBITMQ_NODE_PORT".into(), self.amqp_port.to_string()),
            ("RABBITMQ_DIST_PORT".into(), self.dist_port.to_string()),
            ("RABBITMQ_BASE".into(), base.clone()),
            ("RABBITMQ_MNESIA_BASE".into(), format!("{base}/mnesia")),
            ("RABBITMQ_LOG_BASE".into(), format!("{base}/log")),
            ("RABBITMQ_PID_FILE".into(), format!("{base}/pid")),
            (
                "RABBITMQ_CONFIG_FILE".into(),
                format!("{base}/rabbitmq.conf"),
            ),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE".into(),
                format!("{root}/enabled_plugins"),
            ),
        ]
    }

    fn config(&self, tls: Option<&NodeTls>) -> String {
        let mut config = format!(
            "listeners.tcp.1 = 127.0.0.1:{}\nloopback_users = none\n",
            self.amqp_port
        );
        if let (Some(tls), Some(port)) = (tls, self.tls_port) {
            config.push_str(&format!(
                "listeners.ssl.1 = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
                 ssl_options.verify = {}\nssl_options.fail_if_no_peer_cert = {}\n",
                tls.ca_file.display(),
                tls.cert_file.display(),
                tls.key_file.display(),
                if tls.verify_peer {
                    "verify_peer"
                } else {
                    "verify_none"
                },
                tls.verify_peer,
            ));
        }
        config
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in (0..self.nodes.len()).rev() {
            let _ = self.ctl(i, &["stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `script` as the `rabbitmq` user, with `env`.
fn as_rabbitmq(script: &str, env: &[(String, String)]) -> Command {
    let exports: String = env
        .iter()
        .map(|(k, v)| format!("export {k}='{v}'; "))
        .collect();
    let mut command = Command::new("su");
    command.args([
        "rabbitmq",
        "-s",
        "/bin/sh",
        "-c",
        &format!("{exports}{script}"),
    ]);
    command
}

fn chown_to_rabbitmq(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(path)
        .status()
        .expect("chown runs");
    assert!(
        status.success(),
        "cluster tests run as root, to start nodes as the rabbitmq user"
    );
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops the nodes of clusters whose test binary is gone.
fn stop_abandoned() {
    let Ok(entries) = std::fs::read_dir(ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix('c').and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for node in std::fs::read_dir(entry.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(pid) = std::fs::read_to_string(node.path().join("pid")) {
                let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
            }
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

//! The broker as a list of nodes. `AMQP_URL` holds one AMQP URI or several,
//! comma-separated, as RabbitMQ's own clients take a list of hosts. A
//! connection goes to the first node that answers, starting at a rotating
//! position (from a random start in each process), so replicas spread over
//! the nodes and the session after a lost one tries the others first. Which
//! node leads a quorum queue does not matter: any node serves any queue.
//!
//! TLS (`amqps://`) verifies the broker against the system's roots, or the
//! CA a URI names with `cacertfile=` (plus `certfile=` and `keyfile=` for a
//! client certificate), as RabbitMQ's URI spec spells them. The files are
//! read at each connect, so renewed certificates are taken up.
//!
//! A node is named in logs and `/readyz` by host, port and vhost: never by
//! its credentials.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};

use super::error::BrokerError;
use super::version::{probe, BrokerRules, BrokerVersion};

/// How long a node has to finish the AMQP handshake.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// One node: where it is, how to reach it, and how it is named.
#[derive(Debug, Clone)]
struct Node {
    uri: AMQPUri,
    tls: TlsFiles,
    label: String,
}

/// The TLS files a URI names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct TlsFiles {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// The broker's nodes, as `AMQP_URL` lists them.
#[derive(Debug, Clone)]
pub struct Nodes(Vec<Node>);

/// A connection, and what the worker learned of its node on the way.
pub struct Connected {
    pub connection: Connection,
    /// The node in use, `host:port/vhost`.
    pub node: String,
    /// The broker's version, when it could be read.
    pub version: Option<BrokerVersion>,
    pub rules: BrokerRules,
}

impl Nodes {
    /// Reads a comma-separated list of AMQP URIs (a comma inside one, in a
    /// password say, is written `%2C`). Every URI is checked.
    pub fn parse(list: &str) -> Result<Self, BrokerError> {
        let nodes: Vec<Node> = list
            .split(',')
            .map(str::trim)
            .filter(|uri| !uri.is_empty())
            .enumerate()
            .map(|(i, text)| {
                Node::parse(text).map_err(|e| BrokerError::Url(format!("address {}: {e}", i + 1)))
            })
            .collect::<Result<_, _>>()?;
        if nodes.is_empty() {
            return Err(BrokerError::Url("no address given".into()));
        }
        Ok(Self(nodes))
    }

    /// The nodes' names, in the order given.
    pub fn labels(&self) -> Vec<String> {
        self.0.iter().map(|n| n.label.clone()).collect()
    }

    /// Connects to the first node that answers, trying each once, from the
    /// next position in this process's rotation.
    pub async fn connect(&self, name: &str) -> Result<Connected, BrokerError> {
        let start = next_start(self.0.len());
        let mut refused = Vec::new();
        for i in 0..self.0.len() {
            let node = &self.0[(start + i) % self.0.len()];
            match node.connect(name).await {
                Ok(connected) => return Ok(connected),
                Err(e) => refused.push(format!("{}: {e}", node.label)),
            }
        }
        Err(BrokerError::Unreachable {
            tried: refused.join("; "),
        })
    }
}

impl Node {
    fn parse(text: &str) -> Result<Self, String> {
        let uri: AMQPUri = text.parse()?;
        let url = url::Url::parse(text).map_err(|e| e.to_string())?;
        let file = |key: &str| {
            url.query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| PathBuf::from(v.into_owned()))
        };
        let tls = TlsFiles {
            ca: file("cacertfile"),
            cert: file("certfile"),
            key: file("keyfile"),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            return Err("certfile and keyfile go together".into());
        }
        if tls != TlsFiles::default() && uri.scheme != AMQPScheme::AMQPS {
            return Err("cacertfile, certfile and keyfile need an amqps:// URI".into());
        }
        let label = format!(
            "{}:{}/{}",
            uri.authority.host, uri.authority.port, uri.vhost
        );
        Ok(Self { uri, tls, label })
    }

    async fn connect(&self, name: &str) -> Result<Connected, String> {
        let tls = self.tls.config()?;
        let version = probe(self.uri.clone(), tls.clone()).await.ok();
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let builder = lapin::DefaultConnectionBuilder::new()
            .map_err(|e| e.to_string())?
            .with_uri(self.uri.clone())
            .with_properties(properties)
            .with_tls_config(tls);
        // A node that takes the TCP connection but never finishes the
        // handshake (a wedged broker) must not hold the worker: the next
        // node, or the next session, is tried instead.
        let connection = tokio::time::timeout(HANDSHAKE_WITHIN, builder.connect())
            .await
            .map_err(|_| {
                format!(
                    "the AMQP handshake did not finish within {} s (a node past its \
                     file-handle limit does this: README, \"Sizing the broker\")",
                    HANDSHAKE_WITHIN.as_secs()
                )
            })?
            .map_err(|e| e.to_string())?;
        Ok(Connected {
            connection,
            node: self.label.clone(),
            rules: BrokerRules::for_version(version.as_ref()),
            version,
        })
    }
}

impl TlsFiles {
    /// The client's TLS configuration, the files read now.
    fn config(&self) -> Result<OwnedTLSConfig, String> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path)
                .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
        };
        let cert_chain = match &self.ca {
            Some(ca) => {
                Some(String::from_utf8_lossy(&read(ca, "CA file (cacertfile)")?).into_owned())
            }
            None => None,
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read(cert, "client certificate (certfile)")?,
                key: read(key, "client key (keyfile)")?,
            }),
            _ => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

/// The next position to start from: a rotation shared by the process,
/// begun at random so that replicas started together spread too.
fn next_start(nodes: usize) -> usize {
    static NEXT: OnceLock<AtomicUsize> = OnceLock::new();
    NEXT.get_or_init(|| AtomicUsize::new(rand::random::<u16>() as usize))
        .fetch_add(1, Ordering::Relaxed)
        % nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_uris_is_every_node_named_without_credentials() {
        let nodes = Nodes::parse(
            "amqp://u:secret@10.0.0.1:5672/%2f, amqp://u:secret@10.0.0.2/prod,amqps://u:p%2Cw@mq.example:5671/",
        )
        .unwrap();
        assert_eq!(
            nodes.labels(),
            ["10.0.0.1:5672//", "10.0.0.2:5672/prod", "mq.example:5671/"]
        );
        assert!(!format!("{:?}", nodes.labels()).contains("secret"));
        assert!(Nodes::parse("").is_err());
        let bad = Nodes::parse("amqp://a/%2f,http://b")
            .unwrap_err()
            .to_string();
        assert!(bad.contains("address 2"), "{bad}");
    }

    #[test]
    fn tls_files_come_from_the_uri_and_need_amqps() {
        let nodes = Nodes::parse(
            "amqps://u:p@mq:5671/?cacertfile=/etc/ca.pem&certfile=/c.pem&keyfile=/k.pem",
        )
        .unwrap();
        assert_eq!(
            nodes.0[0].tls,
            TlsFiles {
                ca: Some("/etc/ca.pem".into()),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
            }
        );
        assert!(Nodes::parse("amqp://u:p@mq/?cacertfile=/etc/ca.pem").is_err());
        assert!(Nodes::parse("amqps://u:p@mq/?certfile=/c.pem").is_err());
        let missing = nodes.0[0].tls.config().unwrap_err();
        assert!(
            missing.contains("cannot read the CA file (cacertfile) /etc/ca.pem"),
            "{missing}"
        );
    }

    #[test]
    fn the_rotation_moves_on_at_each_connect() {
        let first = next_start(3);
        let second = next_start(3);
        assert_eq!(second, (first + 1) % 3);
    }

    #[tokio::test]
    async fn a_node_that_takes_the_connection_but_never_answers_is_given_up() {
        // Accepts, reads, never writes: a wedged broker as a client sees it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        let nodes = Nodes::parse(&format!("amqp://u:p@127.0.0.1:{port}/%2f")).unwrap();
        let error = nodes.0[0].connect("silent node test").await.err().unwrap();
        assert!(
            error.contains("handshake did not finish within 10 s"),
            "{error}"
        );
    }
}

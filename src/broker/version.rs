//! The broker's version, and the rules the worker follows for it. The
//! version is read at connect from the server properties of the broker's
//! `Connection.Start` (the client library does not keep them, so a probe
//! reads that one frame and closes), logged, and turned into [`BrokerRules`]
//! by one pure function, tested for every version branch.
//!
//! Where RabbitMQ 3.x and 4.x differ and the worker depends on it:
//! - quorum queues get a default delivery limit of 20 on 4.0: the worker
//!   declares both of its queues with a limit of its own, on every version
//!   (see [`super::topology`]), so nothing depends on the default;
//! - what counts as a delivery: before 4.3 every return of a held message
//!   counts, however it was returned; from 4.3 only a failed one does
//!   (rabbitmq-server#15387: `basic.reject` raises the delivery count,
//!   `basic.nack` with requeue leaves it). A stopping session hands back
//!   what it holds by `basic.nack` with requeue, job by job, on every
//!   version: free from 4.3, and before it no return is free. It never
//!   relies on a closed channel to return them, since whether such returns
//!   count from 4.3 is not documented ([`BrokerRules::returns_spend_deliveries`]
//!   says which rule the broker follows, for the logs and `/readyz`);
//! - `basic.qos` with `global` set is refused on 4.3: the worker's prefetch
//!   is per consumer (`global` false) on every version;
//! - single active consumer honours consumer priorities on 4.x: the worker
//!   gives none, so every replica's consumer has the same priority and the
//!   broker activates them in the order they registered, as on 3.x (which
//!   the release of an app to the next replica relies on).

use std::io::{Read, Write};
use std::time::Duration;

use lapin::protocol::{connection::AMQPMethod, AMQPClass};
use lapin::tcp::{AMQPUriTcpExt, OwnedTLSConfig};
use lapin::types::AMQPValue;
use lapin::uri::AMQPUri;

/// The broker's product and version, as its server properties say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerVersion {
    pub product: String,
    /// As written, e.g. `3.10.8` or `4.1.0-beta.2`.
    pub text: String,
    pub major: u32,
    pub minor: u32,
}

impl BrokerVersion {
    /// Reads `product` and `version`; `None` when the version is not
    /// `MAJOR.MINOR...`.
    pub fn parse(product: &str, version: &str) -> Option<Self> {
        let mut parts = version.trim().split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self {
            product: product.to_string(),
            text: version.trim().to_string(),
            major,
            minor,
        })
    }

    fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl std::fmt::Display for BrokerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.product, self.text)
    }
}

/// What the worker does differently by broker version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerRules {
    /// Whether a job handed back (`basic.nack` with requeue, a closed
    /// channel) spends one of its deliveries: before 4.3, and on a broker
    /// whose version is unknown, yes.
    pub returns_spend_deliveries: bool,
    /// `basic.qos` `global`: never, on any version (refused on 4.3).
    pub qos_global: bool,
}

impl BrokerRules {
    /// The rules for `version`; an unknown version (not RabbitMQ, or its
    /// version unread) gets those of 3.x, which hold on every version.
    pub fn for_version(version: Option<&BrokerVersion>) -> Self {
        let rabbitmq = version.filter(|v| v.product.eq_ignore_ascii_case("RabbitMQ"));
        Self {
            returns_spend_deliveries: !rabbitmq.is_some_and(|v| v.at_least(4, 3)),
            qos_global: false,
        }
    }
}

/// How long a node has to send its Connection.Start.
const PROBE_WITHIN: Duration = Duration::from_secs(5);

/// Reads the broker's version from the `Connection.Start` it sends first,
/// over a connection of its own (TLS as `tls` says), then closes it.
pub async fn probe(uri: AMQPUri, tls: OwnedTLSConfig) -> Result<BrokerVersion, String> {
    let read = tokio::task::spawn_blocking(move || read_start(&uri, &tls));
    match tokio::time::timeout(PROBE_WITHIN, read).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "the broker did not send its Connection.Start within {} s",
            PROBE_WITHIN.as_secs()
        )),
    }
}

fn read_start(uri: &AMQPUri, tls: &OwnedTLSConfig) -> Result<BrokerVersion, String> {
    let mut stream = uri
        .connect_with_config(tls.as_ref())
        .map_err(|e| format!("cannot connect: {e}"))?;
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    // Bounded, so that a silent node does not hold this thread for good.
    let bounded = Some(PROBE_WITHIN);
    stream
        .set_read_timeout(bounded)
        .and_then(|()| stream.set_write_timeout(bounded))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .map_err(|e| e.to_string())?;
    let mut frame = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let n = stream.read(&mut buffer).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the broker closed the connection before its Connection.Start".into());
        }
        frame.extend_from_slice(&buffer[..n]);
        match amq_protocol::frame::parsing::parse_frame(&frame[..]) {
            Ok((_, amq_protocol::frame::AMQPFrame::Method(_, start))) => return version_of(start),
            Ok(_) => return Err("the broker's first frame is not Connection.Start".into()),
            Err(e) if e.is_incomplete() && frame.len() < 64 * 1024 => continue,
            Err(e) => return Err(format!("cannot read the broker's Connection.Start: {e}")),
        }
    }
}

fn version_of(method: AMQPClass) -> Result<BrokerVersion, String> {
    let AMQPClass::Connection(AMQPMethod::Start(start)) = method else {
        return Err("the broker's first method is not Connection.Start".into());
    };
    let text = |key: &str| match start.server_properties.inner().get(key) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        _ => String::new(),
    };
    let (product, version) = (text("product"), text("version"));
    BrokerVersion::parse(&product, &version)
        .ok_or_else(|| format!("the broker's version {version:?} is not MAJOR.MINOR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rabbitmq(version: &str) -> BrokerVersion {
        BrokerVersion::parse("RabbitMQ", version).unwrap()
    }

    #[test]
    fn versions_are_read_as_written() {
        let v = rabbitmq("3.10.8");
        assert_eq!((v.major, v.minor, v.text.as_str()), (3, 10, "3.10.8"));
        let beta = rabbitmq("4.3.0-beta.1");
        assert_eq!((beta.major, beta.minor), (4, 3));
        assert_eq!(rabbitmq("4.1").minor, 1);
        assert_eq!(BrokerVersion::parse("RabbitMQ", "next"), None);
        assert_eq!(BrokerVersion::parse("RabbitMQ", ""), None);
        assert_eq!(rabbitmq("3.10.8").to_string(), "RabbitMQ 3.10.8");
    }

    #[test]
    fn from_4_3_a_job_handed_back_spends_no_delivery() {
        for (version, spends) in [
            ("3.10.8", true),
            ("3.13.7", true),
            ("4.0.5", true),
            ("4.2.1", true),
            ("4.3.0", false),
            ("4.3.0-beta.1", false),
            ("5.0.0", false),
        ] {
            let rules = BrokerRules::for_version(Some(&rabbitmq(version)));
            assert_eq!(rules.returns_spend_deliveries, spends, "{version}");
        }
        // Unknown, or another broker: the rule that holds everywhere.
        assert!(BrokerRules::for_version(None).returns_spend_deliveries);
        let other = BrokerVersion::parse("LavinMQ", "4.3.0").unwrap();
        assert!(BrokerRules::for_version(Some(&other)).returns_spend_deliveries);
    }

    #[test]
    fn the_prefetch_is_never_global() {
        for version in ["3.10.8", "4.0.0", "4.3.0"] {
            assert!(!BrokerRules::for_version(Some(&rabbitmq(version))).qos_global);
        }
        assert!(!BrokerRules::for_version(None).qos_global);
    }
}

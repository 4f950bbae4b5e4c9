//! The argument groups several commands share: where the queues are
//! ([`BrokerArgs`], checked into a [`Topology`]) and where the ledger is
//! ([`LedgerArgs`]).

use anyhow::bail;

use crate::broker::{QueueNames, Topology};
use crate::ledger::Ledger;
use crate::pipeline::config::defaults;

/// Where the queues are.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// The RabbitMQ URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Names `{prefix}.jobs`, `{prefix}.dead` and the exchange `{prefix}.dlx`.
    #[arg(long, env = "BROADCAST_QUEUE_PREFIX", default_value = "broadcast")]
    pub queue_prefix: String,
    /// Deliveries of one job before the broker dead-letters it by itself.
    #[arg(long, env = "BROADCAST_DELIVERY_LIMIT", default_value_t = defaults::DELIVERY_LIMIT)]
    pub delivery_limit: u32,
}

impl BrokerArgs {
    /// The queues these settings name, or what is wrong with them.
    pub fn check(&self) -> anyhow::Result<Topology> {
        self.amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|e| anyhow::anyhow!("AMQP_URL is not an AMQP URL: {e}"))?;
        if self.queue_prefix.is_empty() || self.queue_prefix.len() > 200 {
            bail!("BROADCAST_QUEUE_PREFIX must be 1 to 200 characters");
        }
        if self.delivery_limit == 0 {
            bail!("BROADCAST_DELIVERY_LIMIT must be at least 1");
        }
        Ok(Topology {
            names: QueueNames::new(&self.queue_prefix),
            delivery_limit: self.delivery_limit,
        })
    }
}

/// Where the ledger is.
#[derive(Debug, Clone, clap::Args)]
pub struct LedgerArgs {
    /// The PostgreSQL ledger, e.g. postgres://user@host/db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

impl LedgerArgs {
    pub fn ledger(&self) -> anyhow::Result<Ledger> {
        Ok(Ledger::connect_lazy(&self.database_url)?)
    }
}

//! The argument groups several commands share: where the queues are
//! ([`BrokerArgs`], checked into a [`Topology`]), where the ledger is
//! ([`LedgerArgs`]), the console's token, read limit and what it trusts of
//! a proxy in front of it ([`ConsoleArgs`]), and which app
//! of a fleet's apps file an operator command acts on ([`AppChoice`],
//! resolved into a [`ChosenApp`]).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::bail;

use crate::broker::{Nodes, QueueNames, Topology};
use crate::console::ConsoleToken;
use crate::fleet::apps::{read_apps_file, AppEntry};
use crate::ledger::{Ledger, ScopeFilter};
use crate::pipeline::config::defaults;

/// The queue prefix when none is given, as `run` uses it.
pub const DEFAULT_QUEUE_PREFIX: &str = "broadcast";

/// Where the queues are.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// The RabbitMQ URL, or the URLs of a cluster's nodes, comma-separated
    /// (`amqps://` for TLS); each session connects to the first that answers.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// For `amqps://`: the CA (PEM) the broker's certificate is checked
    /// against, instead of the system's (a URI's `cacertfile=` wins).
    #[arg(long, env = "AMQP_CA_FILE")]
    pub amqp_ca_file: Option<std::path::PathBuf>,
    /// For `amqps://` brokers that ask for one: the client certificate (PEM).
    #[arg(long, env = "AMQP_CERT_FILE", requires = "amqp_key_file")]
    pub amqp_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM, PKCS#8).
    #[arg(long, env = "AMQP_KEY_FILE", requires = "amqp_cert_file")]
    pub amqp_key_file: Option<std::path::PathBuf>,
    /// Names `{prefix}.jobs`, `{prefix}.dead` and the exchange `{prefix}.dlx`.
    #[arg(long, env = "BROADCAST_QUEUE_PREFIX", default_value = DEFAULT_QUEUE_PREFIX)]
    pub queue_prefix: String,
    /// Deliveries of one job before the broker dead-letters it by itself.
    #[arg(long, env = "BROADCAST_DELIVERY_LIMIT", default_value_t = defaults::DELIVERY_LIMIT)]
    pub delivery_limit: u32,
}

impl BrokerArgs {
    /// `AMQP_URL` with the TLS files of `AMQP_CA_FILE`, `AMQP_CERT_FILE` and
    /// `AMQP_KEY_FILE` on each `amqps://` address that names none of its own.
    pub fn url(&self) -> String {
        let files = [
            ("cacertfile", &self.amqp_ca_file),
            ("certfile", &self.amqp_cert_file),
            ("keyfile", &self.amqp_key_file),
        ];
        self.amqp_url
            .split(',')
            .map(str::trim)
            .map(|address| {
                let Ok(mut url) = url::Url::parse(address) else {
                    return address.to_string();
                };
                if url.scheme() != "amqps" {
                    return address.to_string();
                }
                for (key, path) in files {
                    let named = url.query_pairs().any(|(k, _)| k == key);
                    if let (Some(path), false) = (path, named) {
                        url.query_pairs_mut()
                            .append_pair(key, &path.display().to_string());
                    }
                }
                url.to_string()
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The queues these settings name for a single app, or what is wrong
    /// with them.
    pub fn check(&self) -> anyhow::Result<Topology> {
        self.checked(QueueNames::new(&self.queue_prefix))
    }

    /// App `sdkappid`'s queues in the fleet these settings name: its own
    /// jobs queue, the fleet's dead-letter queue ([`QueueNames::in_fleet`]).
    pub fn check_app(&self, sdkappid: u64) -> anyhow::Result<Topology> {
        self.checked(QueueNames::in_fleet(&self.queue_prefix, sdkappid))
    }

    fn checked(&self, names: QueueNames) -> anyhow::Result<Topology> {
        Nodes::parse(&self.url())?;
        if self.queue_prefix.is_empty() || self.queue_prefix.len() > 200 {
            bail!("BROADCAST_QUEUE_PREFIX must be 1 to 200 characters");
        }
        if self.delivery_limit == 0 {
            bail!("BROADCAST_DELIVERY_LIMIT must be at least 1");
        }
        Ok(Topology {
            names,
            delivery_limit: self.delivery_limit,
        })
    }
}

/// The dead letters a console view reads at most when none is given.
pub const DEFAULT_CONSOLE_READ_LIMIT: usize = 5_000;

/// Turns the console on: its token, from a flag, the environment or a file,
/// and how much of a dead-letter queue its views read. The token never
/// shows in `--help`, errors or `Debug`.
#[derive(Clone, clap::Args)]
pub struct ConsoleArgs {
    /// Serve the console (web pages and `/api/`) on the ops endpoint, open to
    /// holders of this token. Prefer the file: a flag shows in the process list.
    #[arg(long, env = "BROADCAST_CONSOLE_TOKEN", hide_env_values = true)]
    pub console_token: Option<String>,
    /// A file holding the console's token (trailing newline ignored).
    #[arg(long, env = "BROADCAST_CONSOLE_TOKEN_FILE")]
    pub console_token_file: Option<PathBuf>,
    /// Dead letters a console view (summary, list, one job) reads at most, the
    /// oldest first; replay and purge still read the whole queue.
    #[arg(long, env = "BROADCAST_CONSOLE_READ_LIMIT", default_value_t = DEFAULT_CONSOLE_READ_LIMIT)]
    pub console_read_limit: usize,
    /// Mark the console's session cookie `Secure` (browsers then send it over
    /// https only): set it when a proxy serves the console over https.
    #[arg(long, env = "BROADCAST_CONSOLE_SECURE_COOKIE")]
    pub console_secure_cookie: bool,
    /// A proxy in front of the console (an IP address; repeatable, or comma
    /// separated in the environment): from it, `X-Forwarded-For` names the
    /// client (wrong tokens are counted by client) and `X-Forwarded-Proto:
    /// https` makes the session cookie `Secure`. From anyone else both are
    /// ignored.
    #[arg(
        long = "console-trusted-proxy",
        env = "BROADCAST_CONSOLE_TRUSTED_PROXIES",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub console_trusted_proxies: Vec<IpAddr>,
}

impl Default for ConsoleArgs {
    fn default() -> Self {
        Self {
            console_token: None,
            console_token_file: None,
            console_read_limit: DEFAULT_CONSOLE_READ_LIMIT,
            console_secure_cookie: false,
            console_trusted_proxies: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ConsoleArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleArgs")
            .field(
                "console_token",
                &self.console_token.as_ref().map(|_| "<redacted>"),
            )
            .field("console_token_file", &self.console_token_file)
            .field("console_read_limit", &self.console_read_limit)
            .field("console_secure_cookie", &self.console_secure_cookie)
            .field("console_trusted_proxies", &self.console_trusted_proxies)
            .finish()
    }
}

impl ConsoleArgs {
    /// How many dead letters a console view reads at most, or why not.
    pub fn read_limit(&self) -> anyhow::Result<usize> {
        if self.console_read_limit == 0 {
            bail!("BROADCAST_CONSOLE_READ_LIMIT must be at least 1 (the dead letters a console page reads, 5000 if unset)");
        }
        Ok(self.console_read_limit)
    }

    /// The console's token, none if the console is off, or why it cannot be
    /// had (never quoting it).
    pub fn token(&self) -> anyhow::Result<Option<ConsoleToken>> {
        let (text, from) = match (&self.console_token, &self.console_token_file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => bail!("give the console token once: BROADCAST_CONSOLE_TOKEN and BROADCAST_CONSOLE_TOKEN_FILE are both set"),
            (Some(token), None) => (token.clone(), "BROADCAST_CONSOLE_TOKEN".to_string()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read the console token file {}: {e}", path.display())
                })?;
                (text, format!("the console token file {}", path.display()))
            }
        };
        let token = ConsoleToken::new(&text).map_err(|e| anyhow::anyhow!("{e} (in {from})"))?;
        if token.len() < 16 {
            tracing::warn!("the console token is shorter than 16 characters: anyone who can reach the ops endpoint may guess it");
        }
        Ok(Some(token))
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

/// Which app of a fleet an operator command acts on. Without `--app` the
/// command acts on the single app's queues and records, as it always has,
/// and the apps file is not read (a fleet's environment may name it).
#[derive(Debug, Clone, clap::Args)]
pub struct AppChoice {
    /// Act on this app of the apps file (its SDKAppID): its queue
    /// `{prefix}.{app}.jobs`, its dead letters in the fleet's
    /// `{prefix}.dead`, its settings and its ledger records.
    #[arg(long = "app", value_name = "SDKAPPID")]
    pub app: Option<u64>,
    /// The fleet's apps file (TOML), where --app is looked up.
    #[arg(long, env = "BROADCAST_APPS_FILE", value_name = "PATH")]
    pub apps_file: Option<PathBuf>,
}

impl AppChoice {
    /// The app `--app` names, read from the apps file (checked whole, as
    /// `run` checks it), or the single app without `--app`.
    pub fn resolve(&self) -> anyhow::Result<ChosenApp> {
        let Some(sdkappid) = self.app else {
            return Ok(ChosenApp(None));
        };
        let Some(path) = &self.apps_file else {
            bail!("--app needs the apps file: set BROADCAST_APPS_FILE or --apps-file");
        };
        let entries = read_apps_file(path)?;
        match entries.iter().find(|entry| entry.sdkappid == sdkappid) {
            Some(entry) => Ok(ChosenApp(Some(entry.clone()))),
            None => {
                let known: Vec<String> = entries.iter().map(|e| e.sdkappid.to_string()).collect();
                bail!(
                    "app {sdkappid} is not in the apps file {}; it has {}",
                    path.display(),
                    known.join(", ")
                )
            }
        }
    }
}

/// What [`AppChoice`] resolved to: an app of the apps file, or (`None`) the
/// single app of a deployment without one.
#[derive(Debug, Clone)]
pub struct ChosenApp(Option<AppEntry>);

impl ChosenApp {
    /// The app's entry in the apps file, for its settings.
    pub fn entry(&self) -> Option<&AppEntry> {
        self.0.as_ref()
    }

    /// The prefix the app's queues are named with: under `prefix` as `run`
    /// names a fleet's apps, or `prefix` itself for the single app.
    pub fn queue_prefix(&self, prefix: &str) -> String {
        match &self.0 {
            Some(entry) => entry.queue_prefix(prefix),
            None => prefix.to_string(),
        }
    }

    /// The app's queues, checked.
    pub fn topology(&self, broker: &BrokerArgs) -> anyhow::Result<Topology> {
        match &self.0 {
            Some(entry) => broker.check_app(entry.sdkappid),
            None => broker.check(),
        }
    }

    /// Where `jobs show` looks: the app's scope (its SDKAppID and jobs
    /// queue, under `prefix` or the default prefix) or, for the single app,
    /// whatever `sdkappid` and `prefix` narrow it to.
    pub fn scope_filter(&self, sdkappid: Option<u64>, prefix: Option<&str>) -> ScopeFilter {
        let jobs_queue = |prefix: &str| QueueNames::new(prefix).jobs;
        match &self.0 {
            Some(entry) => ScopeFilter {
                app: Some(entry.sdkappid),
                queue: Some(jobs_queue(
                    &entry.queue_prefix(prefix.unwrap_or(DEFAULT_QUEUE_PREFIX)),
                )),
            },
            None => ScopeFilter {
                app: sdkappid,
                queue: prefix.map(jobs_queue),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(sdkappid: u64) -> ChosenApp {
        let entry = format!(
            "sdkappid = {sdkappid}\nidentifier = \"admin\"\nsecret_key_file = \"/dev/null\""
        );
        ChosenApp(Some(toml::from_str(&entry).unwrap()))
    }

    #[test]
    fn an_apps_records_are_in_its_scope_under_the_fleets_prefix() {
        let app = chosen(1400000001);
        assert_eq!(app.queue_prefix("fleet"), "fleet.1400000001");
        let scope = |prefix| app.scope_filter(Some(7), prefix);
        assert_eq!(
            scope(Some("fleet")),
            ScopeFilter {
                app: Some(1400000001),
                queue: Some("fleet.1400000001.jobs".into()),
            }
        );
        // `run` names a fleet's queues under the default prefix when none is given.
        assert_eq!(
            scope(None).queue.as_deref(),
            Some("broadcast.1400000001.jobs")
        );
    }

    #[test]
    fn the_tls_files_go_on_every_amqps_address_that_names_none() {
        let broker = BrokerArgs {
            amqp_url:
                "amqp://a:5672/%2f, amqps://u:p@b:5671/%2f,amqps://c:5671/?cacertfile=/own.pem"
                    .into(),
            queue_prefix: "p".into(),
            delivery_limit: 1,
            amqp_ca_file: Some("/etc/ca.pem".into()),
            amqp_cert_file: None,
            amqp_key_file: None,
        };
        let nodes: Vec<String> = broker.url().split(',').map(str::to_owned).collect();
        assert_eq!(nodes[0], "amqp://a:5672/%2f");
        assert_eq!(
            nodes[1],
            "amqps://u:p@b:5671/%2f?cacertfile=%2Fetc%2Fca.pem"
        );
        assert_eq!(nodes[2], "amqps://c:5671/?cacertfile=/own.pem");
        assert!(broker.check().is_ok());
    }

    #[derive(clap::Parser)]
    struct WithConsole {
        #[command(flatten)]
        console: ConsoleArgs,
    }

    #[test]
    fn the_console_read_limit_is_5000_unless_set_and_at_least_1() {
        use clap::Parser;
        let limit = |args: &[&str]| {
            let argv = std::iter::once("run").chain(args.iter().copied());
            WithConsole::try_parse_from(argv)
                .unwrap()
                .console
                .read_limit()
        };
        assert_eq!(limit(&[]).unwrap(), DEFAULT_CONSOLE_READ_LIMIT);
        assert_eq!(limit(&["--console-read-limit", "3"]).unwrap(), 3);
        let zero = limit(&["--console-read-limit", "0"]).unwrap_err();
        assert!(zero
            .to_string()
            .starts_with("BROADCAST_CONSOLE_READ_LIMIT must be at least 1"));
        assert_eq!(
            ConsoleArgs::default().read_limit().unwrap(),
            DEFAULT_CONSOLE_READ_LIMIT
        );
    }

    #[test]
    fn without_app_the_scope_is_what_the_flags_say() {
        let single = ChosenApp(None);
        assert_eq!(single.queue_prefix("p"), "p");
        assert_eq!(single.scope_filter(None, None), ScopeFilter::default());
        assert_eq!(
            single.scope_filter(Some(5), Some("p")),
            ScopeFilter {
                app: Some(5),
                queue: Some("p.jobs".into()),
            }
        );
    }
}

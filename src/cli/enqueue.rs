//! `enqueue`: its flags, where the lines come from (a file, standard input or
//! one `--text`), and the progress and totals printed while
//! [`publish_lines`] publishes them.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

use crate::broker;
use crate::cli::args::{AppChoice, BrokerArgs, ChosenApp};
use crate::ops::enqueue::{publish_lines, text_job, LineResult, PublishOptions};
use crate::pipeline::{CallRules, CustomMerge, MAX_COALESCE_KEY_BYTES};
use crate::settings::AppSettings;
use crate::tencent::body::MAX_BODY_BYTES;

/// Confirms kept outstanding while publishing.
const CONFIRM_WINDOW: usize = 512;

#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub app: AppChoice,
    /// A file of jobs, one JSON body per line (`-` or absent: standard input).
    #[arg(long, conflicts_with = "text")]
    pub file: Option<PathBuf>,
    /// Publish one text broadcast instead of reading lines.
    #[arg(long)]
    pub text: Option<String>,
    /// With --text: the sender account.
    #[arg(long, requires = "text")]
    pub from_account: Option<String>,
    /// With --text: CloudCustomData.
    #[arg(long, requires = "text")]
    pub cloud_custom_data: Option<String>,
    /// Dead-letter the job as expired if not sent within this many seconds.
    #[arg(long)]
    pub deadline_secs: Option<f64>,
    /// Publish to the app's urgent lane: sent before any ordinary job waiting.
    #[arg(long)]
    pub urgent: bool,
    /// A latest-wins key (`x-coalesce-key`): a later job of the key
    /// supersedes this one while it waits unsent.
    #[arg(long)]
    pub coalesce_key: Option<String>,
    /// Let the broker dead-letter the job (`broker:expired`) if not consumed within this many seconds.
    #[arg(long)]
    pub expiration_secs: Option<f64>,
    /// The worker's largest call body, for the size check (with --app: the
    /// app's max_batch_bytes when its entry has one).
    #[arg(long, env = "BROADCAST_MAX_BATCH_BYTES", default_value_t = MAX_BODY_BYTES)]
    pub max_batch_bytes: usize,
    /// The worker's custom merge mode, for the size check (an envelope costs
    /// more; with --app: the app's custom_merge when its entry has one).
    #[arg(long, env = "BROADCAST_CUSTOM_MERGE", value_enum, default_value_t = CustomMerge::Separate)]
    pub custom_merge: CustomMerge,
}

impl EnqueueArgs {
    /// Publishes every valid line; fails if any line was not published.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let chosen = self.app.resolve()?;
        let topology = chosen.topology(&self.broker)?;
        let options = self.options(&chosen)?;
        let input = self.input()?;
        let connection = broker::connect(&self.broker.url(), "broadcast-worker enqueue").await?;
        topology.declare(&connection).await?;
        let channel = broker::confirm_channel(&connection).await?;
        let progress = ProgressBar::new_spinner();
        progress.set_style(
            ProgressStyle::with_template("{spinner} {pos} lines, {per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let queue = match self.urgent {
            true => &topology.names.urgent,
            false => &topology.names.jobs,
        };
        let summary = publish_lines(&channel, queue, input, &options, CONFIRM_WINDOW, |result| {
            report_line(&progress, result)
        })
        .await;
        progress.finish_and_clear();
        let _ = connection.close(200, "enqueue done".into()).await;
        let summary = summary?;
        println!(
            "published {}, invalid {}, failed {}",
            summary.published, summary.invalid, summary.failed
        );
        Ok(if summary.all_published() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }

    /// The publishing options; lines are checked with the chosen app's
    /// settings from the apps file, which go over the flags as in `run`.
    fn options(&self, chosen: &ChosenApp) -> anyhow::Result<PublishOptions> {
        let flags = AppSettings {
            max_batch_bytes: self.max_batch_bytes,
            custom_merge: self.custom_merge,
            ..AppSettings::default()
        };
        let settings = match chosen.entry() {
            Some(entry) => entry.settings_over(&flags).map_err(anyhow::Error::msg)?,
            None => flags,
        };
        let (max_batch_bytes, custom_merge) = (settings.max_batch_bytes, settings.custom_merge);
        if let Some(key) = &self.coalesce_key {
            if key.is_empty() || key.len() > MAX_COALESCE_KEY_BYTES {
                bail!("--coalesce-key must be 1 to {MAX_COALESCE_KEY_BYTES} bytes");
            }
        }
        Ok(PublishOptions {
            coalesce_key: self.coalesce_key.clone(),
            deadline_in: positive_secs("--deadline-secs", self.deadline_secs)?,
            expiration: positive_secs("--expiration-secs", self.expiration_secs)?,
            rules: CallRules {
                max_bytes: max_batch_bytes.min(MAX_BODY_BYTES),
                custom_merge,
                ..CallRules::default()
            },
        })
    }

    /// The lines to publish: the one `--text` job, the file, or standard input.
    fn input(&self) -> anyhow::Result<Box<dyn BufRead>> {
        Ok(match (&self.text, &self.file) {
            (Some(text), _) => Box::new(std::io::Cursor::new(text_job(
                text,
                self.from_account.as_deref(),
                self.cloud_custom_data.as_deref(),
            ))),
            (None, Some(path)) if path.as_os_str() != "-" => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                Box::new(std::io::BufReader::new(file))
            }
            _ => Box::new(std::io::BufReader::new(std::io::stdin())),
        })
    }
}

fn positive_secs(flag: &str, secs: Option<f64>) -> anyhow::Result<Option<Duration>> {
    match secs {
        Some(s) if !(s.is_finite() && s > 0.0) => bail!("{flag} must be positive"),
        Some(s) => Ok(Some(Duration::from_secs_f64(s))),
        None => Ok(None),
    }
}

/// Counts the line and says why one was not published, above the spinner.
fn report_line(progress: &ProgressBar, result: &LineResult) {
    progress.inc(1);
    match result {
        LineResult::Published { .. } => {}
        LineResult::Invalid { line, reason } => {
            progress.suspend(|| eprintln!("line {line}: not published: {reason}"))
        }
        LineResult::Failed { line, reason } => {
            progress.suspend(|| eprintln!("line {line}: publish failed: {reason}"))
        }
    }
}

//! `dlq list|show|replay|purge`: their flags, and each command over the dead
//! letters [`crate::ops::dlq`] reads, with the progress and lines it prints
//! (the listing's table and JSON among them).
//! A dry run (`replay --dry-run`, `purge` without `--yes`) prints the digest
//! of the jobs it selected; `--expect-digest` then acts on those very jobs,
//! or on none if the selection matches others by then.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use indicatif::ProgressBar;
use lapin::{Channel, Connection};
use serde_json::Value;

use crate::broker::{self, QueueNames};
use crate::cli::args::{AppChoice, BrokerArgs};
use crate::clock;
use crate::ops::dlq::{
    self, Action, Confirmation, DeadInfo, DeadJob, Listing, SelectedIds, Selection,
};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// What is in `{prefix}.dead`, with a summary by reason and code; nothing is removed or reordered.
    List {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        app: AppChoice,
        #[command(flatten)]
        filter: FilterArgs,
        /// Newest first (default: oldest first, the queue's order).
        #[arg(long)]
        newest_first: bool,
        /// Print at most this many jobs (the summary counts all).
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The whole dead letter: body, properties, and every header that says why.
    Show {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        app: AppChoice,
        job_id: String,
    },
    /// Move selected jobs back to `{prefix}.jobs` (each removed here only after its publish is confirmed).
    Replay {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        app: AppChoice,
        #[command(flatten)]
        select: SelectArgs,
        /// Say what would move, move nothing.
        #[arg(long)]
        dry_run: bool,
        /// Test hook: exit abruptly after the N-th confirmed publish, before its removal.
        #[arg(long, env = "BROADCAST_TEST_CRASH_AT", hide = true)]
        crash_at: Option<String>,
    },
    /// Remove selected jobs for good (only with --yes), printing each.
    Purge {
        #[command(flatten)]
        broker: BrokerArgs,
        #[command(flatten)]
        app: AppChoice,
        #[command(flatten)]
        select: SelectArgs,
        /// Really remove them.
        #[arg(long)]
        yes: bool,
    },
}

/// Filters on dead letters.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Only this x-reason (`rejected`, `invalid-job`, `broker:delivery_limit`, ...).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only this ErrorCode.
    #[arg(long)]
    pub code: Option<i64>,
    /// Only jobs dead-lettered at least this many seconds ago.
    #[arg(long)]
    pub older_than_secs: Option<i64>,
    /// Only jobs dead-lettered less than this many seconds ago.
    #[arg(long)]
    pub newer_than_secs: Option<i64>,
}

/// Which dead letters to act on.
#[derive(Debug, Clone, clap::Args)]
pub struct SelectArgs {
    /// Job ids (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
    /// Act only if the selected dead letters are exactly those a dry run
    /// selected: the digest it printed. Without it, whatever matches now.
    #[arg(long, value_name = "DIGEST")]
    pub expect_digest: Option<String>,
}

impl FilterArgs {
    fn selection(&self) -> Selection {
        Selection {
            reason: self.reason.clone(),
            code: self.code,
            older_than_secs: self.older_than_secs,
            newer_than_secs: self.newer_than_secs,
            ..Selection::default()
        }
    }
}

impl SelectArgs {
    /// The selection, refused if it names nothing: acting on nothing, or on
    /// everything, by omission would surprise.
    fn selection(&self) -> anyhow::Result<Selection> {
        let selection = Selection {
            ids: self.ids.clone(),
            all: self.all,
            ..self.filter.selection()
        };
        if selection.is_empty() {
            bail!("say which jobs: --id, --reason, --code, --older-than-secs, --newer-than-secs, or --all");
        }
        Ok(selection)
    }
}

/// The digest of the chosen jobs' ids, and how to act on exactly them.
fn digest_line(chosen: &[DeadJob]) -> String {
    let digest = SelectedIds::of(chosen.iter().map(|job| job.id.as_str())).digest();
    format!("selection digest {digest}: to act on exactly these jobs, add --expect-digest {digest}")
}

impl SelectArgs {
    /// With `--expect-digest`: the exit code when the chosen jobs are not
    /// those the dry run selected (nothing is done, the channel's close
    /// gives them all back); none when they are, or without it.
    fn unconfirmed(&self, chosen: &[DeadJob]) -> Option<ExitCode> {
        let digest = self.expect_digest.as_deref()?;
        let selected = SelectedIds::of(chosen.iter().map(|job| job.id.as_str()));
        let error = Confirmation::by_digest(digest).check(&selected).err()?;
        eprintln!("{error}");
        Some(ExitCode::FAILURE)
    }
}

impl DlqCommand {
    /// The broker and the app whose dead letters the command reads.
    fn target(&self) -> (&BrokerArgs, &AppChoice) {
        match self {
            Self::List { broker, app, .. }
            | Self::Show { broker, app, .. }
            | Self::Replay { broker, app, .. }
            | Self::Purge { broker, app, .. } => (broker, app),
        }
    }

    /// Reads the dead-letter queue, keeping only what the command prints or
    /// acts on, acts, and closes the channel, which gives back whatever was
    /// not replayed or removed.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let (broker_args, app) = self.target();
        let names = app.resolve()?.topology(broker_args)?.names;
        let connection = broker::connect(&broker_args.url(), "broadcast-worker dlq").await?;
        let channel = broker::confirm_channel(&connection).await?;
        declare_existing(&channel, &names.dead).await?;
        let dead_queue = names.dead_queue();
        let now = clock::now_ms_i64();
        let code = match self {
            Self::List {
                filter,
                newest_first,
                limit,
                json,
                ..
            } => {
                let selection = filter.selection();
                let listing =
                    Listing::read(&channel, &dead_queue, &selection, now, newest_first, limit)
                        .await?;
                if json {
                    println!("{}", listing_json(&listing));
                } else {
                    println!("{}", listing_table(&listing, now));
                }
                ExitCode::SUCCESS
            }
            Self::Show { job_id, .. } => {
                let found = dlq::find(&channel, &dead_queue, &job_id).await?;
                show(found, &job_id, &names)?
            }
            Self::Replay {
                select,
                dry_run,
                crash_at,
                ..
            } => {
                let selection = select.selection()?;
                let chosen = selection.read_matching(&channel, &dead_queue, now).await?;
                match select.unconfirmed(&chosen) {
                    Some(code) => code,
                    None => {
                        let crash_after = crash_after_publish(crash_at.as_deref());
                        replay(chosen, dry_run, crash_after, &channel, &names).await?
                    }
                }
            }
            Self::Purge { select, yes, .. } => {
                let selection = select.selection()?;
                let chosen = selection.read_matching(&channel, &dead_queue, now).await?;
                match select.unconfirmed(&chosen) {
                    Some(code) => code,
                    None => purge(chosen, yes, &channel, &names).await?,
                }
            }
        };
        close(channel, connection).await;
        Ok(code)
    }
}

/// Declares the dead-letter queue passively: it must already exist.
async fn declare_existing(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("there is no dead-letter queue {queue}: {e}"))?;
    Ok(())
}

async fn close(channel: Channel, connection: Connection) {
    let _ = channel.close(200, "dlq done".into()).await;
    let _ = connection.close(200, "dlq done".into()).await;
}

/// `dlq list --json`: the total, the summary by reason and code, the jobs shown.
fn listing_json(listing: &Listing) -> Value {
    let summary: Vec<Value> = listing
        .summary
        .iter()
        .map(|((reason, code), count)| {
            serde_json::json!({"reason": reason, "code": code, "count": count})
        })
        .collect();
    serde_json::json!({"total": listing.total, "summary": summary, "jobs": listing.shown})
}

/// `dlq list`: a row per job shown under a header, then the counts, as lines.
fn listing_table(listing: &Listing, now_ms: i64) -> String {
    let mut lines = vec![format!(
        "{:<36} {:<18} {:>6} {:>8} {:>8} {:>7}  INFO",
        "ID", "REASON", "CODE", "AGE", "ATTEMPTS", "REPLAYS"
    )];
    lines.extend(listing.shown.iter().map(|info| table_row(info, now_ms)));
    let counts: Vec<String> = listing
        .summary
        .iter()
        .map(|((reason, code), n)| format!("{reason}/{code}: {n}"))
        .collect();
    lines.push(format!(
        "{} of {} dead letters match; by reason/code: {}",
        listing.summary.values().sum::<usize>(),
        listing.total,
        counts.join(", ")
    ));
    lines.join("\n")
}

fn table_row(info: &DeadInfo, now_ms: i64) -> String {
    format!(
        "{:<36} {:<18} {:>6} {:>8} {:>8} {:>7}  {}",
        info.id,
        info.reason,
        info.error_code.map_or("-".into(), |c| c.to_string()),
        info.age_secs(now_ms)
            .map_or("?".into(), |a| format!("{a}s")),
        info.attempts.map_or("-".into(), |a| a.to_string()),
        info.replays,
        info.error_info.as_deref().unwrap_or("")
    )
}

fn show(found: Option<DeadJob>, job_id: &str, names: &QueueNames) -> anyhow::Result<ExitCode> {
    match found {
        Some(job) => {
            println!("{}", serde_json::to_string_pretty(&job.report())?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("no dead letter with id {job_id:?} in {}", names.dead);
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The test hook's `after-publish:N`; the worker's crash points, which share
/// the variable, are not for `dlq` and are ignored.
fn crash_after_publish(crash_at: Option<&str>) -> Option<usize> {
    crash_at
        .and_then(|s| s.strip_prefix("after-publish:"))
        .and_then(|n| n.parse().ok())
}

async fn replay(
    chosen: Vec<DeadJob>,
    dry_run: bool,
    crash_after: Option<usize>,
    channel: &Channel,
    names: &QueueNames,
) -> anyhow::Result<ExitCode> {
    if dry_run {
        for job in &chosen {
            println!(
                "would replay {} ({}, replayed {} time(s) before)",
                job.id, job.info.reason, job.info.replays
            );
        }
        println!("would replay {} job(s); nothing moved", chosen.len());
        println!("{}", digest_line(&chosen));
        return Ok(ExitCode::SUCCESS);
    }
    let progress = ProgressBar::new(chosen.len() as u64);
    let replayed = dlq::act_on_each(
        chosen,
        Action::Replay,
        channel,
        &names.jobs,
        |published| {
            if crash_after == Some(published) {
                eprintln!("test hook: exiting after a confirmed publish, before its removal");
                std::process::exit(137);
            }
        },
        |info| {
            progress.inc(1);
            progress.suspend(|| println!("replayed {}", info.id));
        },
    )
    .await?;
    progress.finish_and_clear();
    println!("replayed {replayed} job(s) to {}", names.jobs);
    Ok(ExitCode::SUCCESS)
}

async fn purge(
    chosen: Vec<DeadJob>,
    yes: bool,
    channel: &Channel,
    names: &QueueNames,
) -> anyhow::Result<ExitCode> {
    if !yes {
        for job in &chosen {
            println!("would remove {} ({})", job.id, job.info.reason);
        }
        eprintln!(
            "{} job(s) selected; nothing removed: purge needs --yes",
            chosen.len()
        );
        eprintln!("{}", digest_line(&chosen));
        return Ok(ExitCode::FAILURE);
    }
    let progress = ProgressBar::new(chosen.len() as u64);
    let removed = dlq::act_on_each(
        chosen,
        Action::Purge,
        channel,
        &names.jobs,
        |_| {},
        |info| {
            progress.inc(1);
            progress.suspend(|| {
                println!(
                    "removed {} ({}, {})",
                    info.id,
                    info.reason,
                    info.error_info.as_deref().unwrap_or("")
                )
            });
        },
    )
    .await?;
    progress.finish_and_clear();
    println!("removed {removed} job(s) from {}", names.dead);
    Ok(ExitCode::SUCCESS)
}

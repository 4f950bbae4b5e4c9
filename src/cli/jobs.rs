//! `jobs show` and `migrate`: the commands that only talk to the ledger.

use std::process::ExitCode;

use clap::Subcommand;

use crate::cli::args::{AppChoice, LedgerArgs};
use crate::ops::jobs::{self, Answer};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Where is this broadcast? Delivered (when, MsgSeq, which call), in flight, or dead-lettered.
    Show(ShowArgs),
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    /// The job's id: its AMQP message_id, or for a job without one the id of
    /// its arrival (`sha256:...~...`) or its body's digest (`sha256:...`).
    job_id: String,
    /// The app whose job it is, when several apps share the ledger (--app
    /// goes over it).
    #[arg(long, env = "TIM_SDKAPPID")]
    sdkappid: Option<u64>,
    /// The queue prefix whose job it is, when several deployments share the
    /// ledger (with --app: the fleet's prefix, `broadcast` if not given).
    #[arg(long, env = "BROADCAST_QUEUE_PREFIX")]
    queue_prefix: Option<String>,
    #[command(flatten)]
    app: AppChoice,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl JobsCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Show(args) => show(&args).await,
        }
    }
}

async fn show(args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let filter = args
        .app
        .resolve()?
        .scope_filter(args.sdkappid, args.queue_prefix.as_deref());
    let job_id = &args.job_id;
    let reports = args.ledger.ledger()?.find(job_id, &filter).await?;
    let report = match jobs::resolve(reports) {
        Answer::One(report) => report,
        Answer::Unknown => {
            eprintln!("the ledger knows no job {job_id:?} (never sent, or pruned)");
            return Ok(ExitCode::FAILURE);
        }
        Answer::Ambiguous { reports, hint } => {
            eprintln!("{}", jobs::ambiguity(job_id, &reports, hint));
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.json {
        println!("{}", jobs::json(&report)?);
    } else {
        println!("{}", jobs::text(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// Applies the ledger's migrations once (`run` applies them too, waiting for
/// the database).
pub async fn migrate(args: &LedgerArgs) -> anyhow::Result<ExitCode> {
    args.ledger()?.migrate().await?;
    println!("ledger migrations applied");
    Ok(ExitCode::SUCCESS)
}

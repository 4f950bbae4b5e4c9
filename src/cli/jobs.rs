//! `jobs show` and `migrate`: the commands that only talk to the ledger.

use std::process::ExitCode;

use clap::Subcommand;

use crate::cli::args::LedgerArgs;
use crate::ops::jobs;

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Where is this broadcast? Delivered (when, MsgSeq, which call), in flight, or dead-lettered.
    Show {
        #[command(flatten)]
        ledger: LedgerArgs,
        /// The job's id (its AMQP message_id, or `sha256:...` for jobs without one).
        job_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl JobsCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            Self::Show {
                ledger,
                job_id,
                json,
            } => show(&ledger, &job_id, json).await,
        }
    }
}

async fn show(ledger: &LedgerArgs, job_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let Some(report) = ledger.ledger()?.show(job_id).await? else {
        eprintln!("the ledger knows no job {job_id:?} (never sent, or pruned)");
        return Ok(ExitCode::FAILURE);
    };
    if json {
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

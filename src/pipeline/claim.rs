//! Claiming a call before each attempt, so that one session alone sends it.
//! A fresh call is put under a `Random` no different call used within the
//! repeat window and recorded under it (in flight in the ledger, owned by
//! this session, or in memory without one); a recovered call is taken over
//! from the session that left it, which counts an interruption of its jobs
//! unless that session released it, and started over if no attempt of it
//! can have got through; before a retry, the call must still be this
//! session's, and it is in doubt from then on.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::ledger::{Begun, CallJob, LedgerSession, TakeOver};

use super::call::Call;
use super::ledger_retry::with_ledger;
use super::{still_held, SessionEnd, Worker};

/// Whether the call may be attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Claim {
    Ready,
    /// Recovered, and every attempt of it was refused for sure: it was never
    /// delivered, so its jobs start over as a new call (under a `Random`
    /// claimed now) rather than as a resend.
    StartOver,
    /// The ledger's word on its jobs changed since they were looked up.
    LookAgain,
    /// Its jobs were in flight in this many sessions that ended without
    /// settling them, as many as the crash limit allows: not sent again.
    CrashLoop {
        interruptions: u32,
    },
}

impl Worker {
    pub(super) async fn claim(
        &mut self,
        call: &mut Call,
        shutdown: &CancellationToken,
    ) -> Result<Claim, SessionEnd> {
        let session = self.ledger_session.clone();
        if call.claimed {
            // A retry: the session that claimed it may have been superseded.
            match (session, call.ledger_id) {
                (Some(session), Some(id)) => {
                    let held =
                        with_ledger(&self.status, shutdown, || session.attempt_again(id)).await?;
                    still_held(held, id)?;
                }
                // The `Random` stays this call's while it is attempted.
                _ => self.claim_in_memory(call),
            }
            return Ok(Claim::Ready);
        }
        let claim = match (session, call.ledger_id) {
            (Some(session), Some(id)) => self.take_over(&session, call, id, shutdown).await?,
            (Some(session), None) => self.record(call, &session, shutdown).await?,
            (None, _) => {
                self.claim_in_memory(call);
                Claim::Ready
            }
        };
        if claim == Claim::Ready {
            call.claimed = true;
            self.crash
                .before_call(call.batch.jobs.iter().map(|q| q.job.id.as_str()));
        }
        Ok(claim)
    }

    /// Records a fresh call in flight under the first `Random` candidate
    /// that no different call used within the service's repeat window.
    async fn record(
        &mut self,
        call: &mut Call,
        session: &LedgerSession,
        shutdown: &CancellationToken,
    ) -> Result<Claim, SessionEnd> {
        let jobs: Vec<CallJob> = call
            .batch
            .jobs
            .iter()
            .map(|q| CallJob {
                id: q.job.id.clone(),
                replays: q.job.replays,
                digest: q.job.digest.clone(),
            })
            .collect();
        // Collisions are rare (two different calls in five minutes on 32
        // bits), so the next candidate almost never needs a second look.
        for candidate in 1.. {
            let digest = call.batch.content_digest();
            let (body, random, parent) = (&call.batch.body, call.batch.random, call.parent);
            let begun = with_ledger(&self.status, shutdown, || {
                session.begin_call(body, random, &digest, &jobs, parent)
            })
            .await?;
            match begun {
                Begun::Recorded(id) => {
                    call.ledger_id = Some(id);
                    return Ok(Claim::Ready);
                }
                Begun::RandomTaken => {
                    warn!(random, "this Random was used by a different call within the repeat window: deriving the next one");
                    call.batch.use_random_candidate(candidate);
                }
                Begun::JobsHeld => {
                    warn!(jobs = jobs.len(), "a job of this call is in another call in flight, or was settled, since it was looked up: looking its jobs up again");
                    return Ok(Claim::LookAgain);
                }
                Begun::Superseded => {
                    return Err(SessionEnd::Superseded {
                        call: parent.unwrap_or_default(),
                    })
                }
            }
        }
        unreachable!("the candidates never run out")
    }

    /// Without a ledger: the `Random`s of the repeat window are in memory.
    fn claim_in_memory(&mut self, call: &mut Call) {
        for candidate in 1.. {
            let digest = call.batch.content_digest();
            if self
                .recent_randoms
                .claim(call.batch.random, digest, Instant::now())
            {
                return;
            }
            warn!(random = call.batch.random, "this Random was used by a different call within the repeat window: deriving the next one");
            call.batch.use_random_candidate(candidate);
        }
    }

    /// Takes over a call in flight that a session before this one left.
    async fn take_over(
        &mut self,
        session: &LedgerSession,
        call: &mut Call,
        call_id: i64,
        shutdown: &CancellationToken,
    ) -> Result<Claim, SessionEnd> {
        let taken = with_ledger(&self.status, shutdown, || session.take_over(call_id)).await?;
        match taken {
            TakeOver::Owned { interruptions, .. } if interruptions >= self.config.crash_limit => {
                error!(call = call_id, interruptions, "this call was in flight in as many sessions that ended without an answer as the crash limit allows: dead-lettering its jobs as crash-loop");
                Ok(Claim::CrashLoop { interruptions })
            }
            TakeOver::Owned { doubt: None, .. } => {
                info!(
                    call = call_id,
                    "took over a call in flight that no attempt delivered: its jobs start over"
                );
                Ok(Claim::StartOver)
            }
            TakeOver::Owned {
                interruptions,
                doubt,
            } => {
                info!(
                    call = call_id,
                    interruptions, "took over a call in flight: resending it verbatim"
                );
                call.in_doubt_for(doubt);
                Ok(Claim::Ready)
            }
            TakeOver::Settled => Ok(Claim::LookAgain),
            TakeOver::Superseded => Err(SessionEnd::Superseded { call: call_id }),
        }
    }
}

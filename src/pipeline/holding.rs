//! The holding area: every job the sender holds between its arrival and its
//! call. Arrived jobs wait for the ledger's word, new jobs wait in their
//! lane's batcher (urgent jobs are packed first, ordinary ones fill the
//! room left), redelivered jobs of a call in flight wait to be resent with it,
//! and second copies of a job already held wait until the first is settled.
//! A redelivered job without `message_id` counts as a copy of any held job
//! of the same body, until the ledger has told which arrival it repeats.

use std::collections::HashSet;
use std::time::SystemTime;

use crate::clock;
use crate::ledger::InFlightCall;

use super::batcher::{Batch, Batcher, Queued};
use super::call::Call;
use super::config::CallRules;
use super::decoder::Incoming;
use super::delivery::Pending;
use super::end::SessionEnd;
use super::job::Job;

#[derive(Default)]
pub struct Holding {
    /// Arrived, not yet looked up in the ledger.
    pub arrived: Vec<(Job, Pending)>,
    /// New ordinary jobs waiting for a call.
    pub batcher: Batcher<Pending>,
    /// New urgent jobs waiting for a call: each call takes them first.
    pub urgent: Batcher<Pending>,
    /// Calls the ledger holds as in flight, to resend first (newest last).
    pub recovering: Vec<Call>,
    /// Copies of a job already held (a producer's double publish, a replay
    /// run twice): looked at again once the first copy is settled.
    duplicates: Vec<(Job, Pending)>,
}

impl Holding {
    pub fn is_empty(&self) -> bool {
        self.arrived.is_empty()
            && self.batcher.is_empty()
            && self.urgent.is_empty()
            && self.recovering.is_empty()
    }

    /// The batcher of a new job's lane.
    pub fn lane(&mut self, job: &Job) -> &mut Batcher<Pending> {
        if job.urgent {
            &mut self.urgent
        } else {
            &mut self.batcher
        }
    }

    /// Every waiting job of both lanes.
    pub fn waiting(&self) -> impl Iterator<Item = &Queued<Pending>> {
        self.urgent.iter().chain(self.batcher.iter())
    }

    pub fn arrive(&mut self, incoming: Option<Incoming>) -> Result<(), SessionEnd> {
        match incoming {
            Some(Incoming::Job(job, pending)) => {
                self.arrived.push((job, pending));
                Ok(())
            }
            Some(Incoming::Active) => Ok(()),
            Some(Incoming::Lost(why)) => Err(SessionEnd::Broker(why)),
            None => Err(SessionEnd::Broker("the consumer task ended".into())),
        }
    }

    /// Moves arrived copies of jobs already held aside, so one call never
    /// carries a job twice. A redelivered job without `message_id` is known
    /// by its body's digest until the ledger matches it to an arrival, so it
    /// waits while any job of that body is held: each copy is then matched
    /// after the one before was settled.
    pub fn set_aside_duplicates(&mut self) {
        if self.arrived.is_empty() {
            return;
        }
        // The batcher answers for what waits in it by lookup; calls being
        // recovered are few and small; the arrivals are checked against
        // each other too.
        let recovering: Vec<&Job> = self
            .recovering
            .iter()
            .flat_map(|c| c.batch.jobs.iter().map(|q| &q.job))
            .collect();
        let firsts: Vec<bool> = {
            let mut ids: HashSet<&str> = recovering.iter().map(|j| j.id.as_str()).collect();
            let mut digests: HashSet<&str> = recovering
                .iter()
                .filter_map(|j| j.digest.as_deref())
                .collect();
            let lanes = [&self.batcher, &self.urgent];
            self.arrived
                .iter()
                .map(|(job, _)| {
                    let first = match job.copy_digest() {
                        Some(digest) => {
                            !digests.contains(digest)
                                && !lanes.iter().any(|b| b.holds_digest(digest))
                        }
                        None => {
                            !ids.contains(job.id.as_str())
                                && !lanes.iter().any(|b| b.holds_id(&job.id))
                        }
                    };
                    if first {
                        ids.insert(&job.id);
                        digests.extend(job.digest.as_deref());
                    }
                    first
                })
                .collect()
        };
        if firsts.iter().all(|&first| first) {
            return;
        }
        let mut firsts = firsts.into_iter();
        let (fresh, copies): (Vec<_>, Vec<_>) = std::mem::take(&mut self.arrived)
            .into_iter()
            .partition(|_| firsts.next().unwrap_or(true));
        self.arrived = fresh;
        self.duplicates.extend(copies);
    }

    /// Gives the copies set aside another look (their first copy has been
    /// settled since, or is held still and they are set aside again).
    pub fn readmit_duplicates(&mut self) {
        self.arrived.append(&mut self.duplicates);
    }

    /// Adds a redelivered job to the resend of its call.
    pub fn recover(&mut self, call: InFlightCall, job: Job, pending: Pending) {
        if let Some(existing) = self
            .recovering
            .iter_mut()
            .find(|c| c.ledger_id == Some(call.call_id))
        {
            existing.batch.jobs.push(Queued::new(job, pending));
            return;
        }
        let batch = Batch {
            key: job.key.clone(),
            jobs: vec![Queued::new(job, pending)],
            random: call.random,
            body: call.body,
        };
        self.recovering
            .insert(0, Call::recovered(batch, call.call_id));
    }

    /// The next call: a recovered one first (its jobs may be sent
    /// already), else a fresh batch: urgent jobs first, ordinary ones
    /// filling the room left.
    pub fn next_call(&mut self, rules: &CallRules) -> Option<Call> {
        self.recovering.pop().or_else(|| {
            self.urgent
                .take_batch_before(&mut self.batcher, rules)
                .map(|batch| Call::fresh(batch, None))
        })
    }

    /// Seconds since the oldest held job arrived.
    pub fn oldest_age_secs(&self) -> f64 {
        let oldest = self
            .arrived
            .iter()
            .map(|(_, p)| p.first_seen_ms)
            .chain(self.waiting().map(|q| q.delivery.first_seen_ms))
            .chain(
                self.recovering
                    .iter()
                    .flat_map(|c| c.batch.jobs.iter().map(|q| q.delivery.first_seen_ms)),
            )
            .min();
        oldest.map_or(0.0, |ms| {
            clock::unix_ms(SystemTime::now()).saturating_sub(ms) as f64 / 1000.0
        })
    }

    /// Everything held, for a shutdown.
    pub fn drain(&mut self) -> Vec<Pending> {
        let mut all: Vec<Pending> = self
            .arrived
            .drain(..)
            .chain(self.duplicates.drain(..))
            .map(|(_, pending)| pending)
            .collect();
        all.extend(
            self.recovering
                .drain(..)
                .flat_map(|call| call.batch.jobs.into_iter().map(|q| q.delivery)),
        );
        all.extend(self.urgent.drain().into_iter().map(|q| q.delivery));
        all.extend(self.batcher.drain().into_iter().map(|q| q.delivery));
        all
    }
}

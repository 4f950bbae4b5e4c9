//! One pass of a replay or purge over an app's dead-letter queue, for
//! [`super::dead::DeadLetters::act`]: the dead letters read in queue order
//! on a confirming channel, the matching ones handed a chunk at a time to
//! [`dlq::act_on_each`], as `dlq replay` and `dlq purge` do: only those
//! among the ids the operator confirmed, each copy once.

use std::collections::HashSet;

use lapin::Channel;

use super::dead_error::DeadError;
use crate::broker::QueueNames;
use crate::clock;
use crate::ops::dlq::{self, Action, DeadJob, SelectedIds, Selection};

/// Jobs held at once while an action runs.
const CHUNK: usize = 200;

/// One pass of an action over the queue.
#[derive(Default)]
pub(super) struct Walk {
    /// Messages read, the app's or not (held by the channel until acked or
    /// given back).
    pub read: usize,
    /// Dead letters replayed or purged.
    pub acted: usize,
    /// Replayed jobs as they would come back dead (id, replays): a job that
    /// fails again at once is not replayed twice in one pass.
    replayed: HashSet<(String, u32)>,
}

impl Walk {
    /// Acts on the dead letters `selection` matches whose ids are among
    /// those `confirmed` (taking each out as it goes), in queue order, a
    /// chunk at a time, until every confirmed one is done or the queue is
    /// read.
    pub async fn run(
        &mut self,
        channel: &Channel,
        names: &QueueNames,
        action: Action,
        selection: &Selection,
        confirmed: &mut SelectedIds,
    ) -> Result<(), DeadError> {
        let now = clock::now_ms_i64();
        let queue = names.dead_queue();
        while !confirmed.is_empty() {
            let mut chunk = Vec::new();
            while chunk.len() < CHUNK && !confirmed.is_empty() {
                let Some(dead) = dlq::next(channel, &queue, &mut self.read).await? else {
                    break;
                };
                if self.take(&dead, selection, now, confirmed) {
                    chunk.push(dead);
                }
            }
            if chunk.is_empty() {
                return Ok(());
            }
            let before = self.acted;
            let mut done = 0;
            let result =
                dlq::act_on_each(chunk, action, channel, &names.jobs, |_| {}, |_| done += 1).await;
            self.acted = before + done;
            result.map_err(|e| DeadError::Interrupted {
                done: self.acted,
                error: e.to_string(),
            })?;
        }
        Ok(())
    }

    fn take(
        &mut self,
        dead: &DeadJob,
        selection: &Selection,
        now: i64,
        confirmed: &mut SelectedIds,
    ) -> bool {
        if !selection.matches(&dead.info, now)
            || self
                .replayed
                .contains(&(dead.id.clone(), dead.info.replays))
            || !confirmed.take(&dead.id)
        {
            return false;
        }
        self.replayed
            .insert((dead.id.clone(), dead.info.replays.saturating_add(1)));
        true
    }
}

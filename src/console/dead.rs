//! The console's way into each app's dead letters, over one broker
//! connection of its own. Reading is what `dlq list` does (every message
//! taken unacked, in queue order, given back when the channel closes), so
//! memory holds the summary's counts and one page, never the queue. A view
//! (the summary, a page of the list, one job) reads at most the read limit,
//! the oldest first, so its time is bounded too; the queue's total is the
//! broker's count of what is left. Counting for a confirmation and the
//! actions read the whole queue. A read of one queue at a time in this
//! process: a second reader would find the messages the first holds
//! missing. After each read the console waits (briefly) until the broker
//! has put back what it held, so the next page finds them. Actions (a pass
//! of `walk`) run [`dlq::act_on_each`], as `dlq replay` and `dlq purge` do,
//! on the very dead letters the operator confirmed (by the digest of their
//! ids) or on none, never on one that arrived since.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::{Channel, Connection};
use serde::Serialize;
use serde_json::Value;

use super::dead_error::DeadError;
use super::walk::Walk;
use crate::broker::{self, DeadQueue, QueueNames};
use crate::clock;
use crate::ops::dlq::{self, Action, Confirmation, DeadInfo, DeadJob, SelectedIds, Selection};

/// The longest the console waits for the broker to put back what it read.
const GIVE_BACK_WAIT: Duration = Duration::from_secs(3);

/// Dead letters by reason and code.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SummaryRow {
    pub reason: String,
    /// The ErrorCode, or `-` for none.
    pub code: String,
    pub count: usize,
}

/// One page of the dead letters a filter matches, and the summary of all
/// that were read.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// Dead letters in the queue, matching or not, read or not.
    pub total: usize,
    /// Dead letters read: the first `read` of the queue.
    pub read: usize,
    /// Whether the queue holds more than were read (the read limit).
    pub limited: bool,
    /// The queue is the fleet's, shared by its apps: when `limited`, `total`
    /// is at most the app's (what is left unread may be other apps').
    pub shared: bool,
    /// Every dead letter read, by reason and code.
    pub summary: Vec<SummaryRow>,
    /// Dead letters read that the filter matches.
    pub matching: usize,
    pub page: usize,
    pub pages: usize,
    pub per_page: usize,
    pub jobs: Vec<DeadInfo>,
    /// When the queue was read, unix milliseconds (ages are counted from it).
    pub read_at_ms: i64,
}

/// What a view read of a queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Dead letters read, from the head of the queue.
    pub read: usize,
    /// Dead letters in the queue (`read` unless the limit stopped the read).
    pub total: usize,
    /// The read limit stopped the read and the queue holds more.
    pub limited: bool,
}

/// A job looked up for its page.
#[derive(Debug)]
pub enum Lookup {
    /// The whole dead letter, as `dlq show` prints it, with its body as text.
    Found(Value),
    /// Not in the queue: it was read whole.
    Absent,
    /// Not among the first `read` of the queue's `total`.
    NotAmongFirst { read: usize, total: usize },
}

/// How many dead letters a selection matches, of how many in the queue,
/// and which (the digest a confirmation carries).
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    pub matching: usize,
    /// Dead letters in the queue, every one read to count them.
    pub total: usize,
    /// The [`SelectedIds::digest`] of those matching.
    pub digest: String,
}

/// The console's broker connection and its locks, one per dead-letter queue.
pub struct DeadLetters {
    amqp_url: String,
    /// Dead letters a view reads at most.
    read_limit: usize,
    connection: tokio::sync::Mutex<Option<Connection>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl DeadLetters {
    /// Reading on the broker at `amqp_url`, at most `read_limit` dead
    /// letters for a view (at least one).
    pub fn new(amqp_url: String, read_limit: usize) -> Self {
        Self {
            amqp_url,
            read_limit: read_limit.max(1),
            connection: tokio::sync::Mutex::new(None),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// A new channel, connecting first if there is no live connection.
    async fn channel(&self, confirms: bool) -> Result<Channel, DeadError> {
        let mut held = self.connection.lock().await;
        if !held.as_ref().is_some_and(|c| c.status().connected()) {
            *held = Some(broker::connect(&self.amqp_url, "broadcast-worker console").await?);
        }
        let connection = held.as_ref().expect("connected above");
        if confirms {
            Ok(broker::confirm_channel(connection).await?)
        } else {
            connection
                .create_channel()
                .await
                .map_err(|e| DeadError::Broker(e.to_string()))
        }
    }

    fn lock(&self, queue: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(queue.to_string())
            .or_default()
            .clone()
    }

    /// Closes `channel`, which gives back what it holds, then waits until
    /// the queue shows at least `held` messages again (or a few seconds).
    async fn give_back(&self, channel: Channel, queue: &str, held: usize) {
        let _ = channel.close(200, "console read done".into()).await;
        let Ok(counter) = self.channel(false).await else {
            return;
        };
        let deadline = tokio::time::Instant::now() + GIVE_BACK_WAIT;
        while tokio::time::Instant::now() < deadline {
            match ready(&counter, queue).await {
                Ok(n) if n >= held => break,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(_) => break,
            }
        }
        let _ = counter.close(200, "counted".into()).await;
    }

    /// Reads the app's dead letters for a view, under the queue's lock: each
    /// to `visit` until it breaks, the queue ends or the read limit (of
    /// messages taken, the app's or not: a fleet's queue is shared) is
    /// reached, then gives every one back.
    async fn read_view(
        &self,
        queue: &DeadQueue,
        mut visit: impl FnMut(DeadJob) -> ControlFlow<()>,
    ) -> Result<Reading, DeadError> {
        let lock = self.lock(&queue.name);
        let _reading = lock.lock().await;
        let channel = self.channel(false).await?;
        let (mut pass, mut stopped) = (dlq::Pass::default(), false);
        let read = loop {
            if pass.taken >= self.read_limit {
                break Ok(());
            }
            match dlq::next(&channel, queue, &mut pass.taken).await {
                Ok(Some(dead)) => {
                    pass.visited += 1;
                    if visit(dead).is_break() {
                        stopped = true;
                        break Ok(());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        // At the limit, what is left is what the broker still counts ready
        // (the read ones are held by this channel).
        let rest = match (&read, stopped) {
            (Ok(()), false) if pass.taken >= self.read_limit => ready(&channel, &queue.name)
                .await
                .map_err(|e| DeadError::Broker(e.to_string())),
            _ => Ok(0),
        };
        let rest_now = rest.as_ref().copied().unwrap_or(0);
        self.give_back(channel, &queue.name, pass.taken + rest_now)
            .await;
        read?;
        let rest = rest?;
        Ok(Reading {
            read: pass.visited,
            // In a fleet's queue, the rest are the app's or other apps':
            // the total is then at most this.
            total: pass.visited + rest,
            limited: rest > 0,
        })
    }

    /// The summary of the dead letters read (at most the read limit, the
    /// oldest first) and page `page` of those `selection` matches, in queue
    /// order.
    pub async fn view(
        &self,
        queue: &DeadQueue,
        selection: &Selection,
        page: usize,
        per_page: usize,
    ) -> Result<View, DeadError> {
        let now = clock::now_ms_i64();
        let (mut counts, mut matching, mut jobs) = (BTreeMap::new(), 0, Vec::new());
        let skip = (page - 1).saturating_mul(per_page);
        let reading = self
            .read_view(queue, |dead| {
                dlq::count(&mut counts, &dead.info);
                if selection.matches(&dead.info, now) {
                    if matching >= skip && jobs.len() < per_page {
                        jobs.push(dead.info);
                    }
                    matching += 1;
                }
                ControlFlow::Continue(())
            })
            .await?;
        let pages = super::filter::pages(matching, per_page);
        if page > pages {
            return Err(DeadError::PageOutOfRange { page, pages });
        }
        let summary = counts
            .into_iter()
            .map(|((reason, code), count)| SummaryRow {
                reason,
                code,
                count,
            })
            .collect();
        Ok(View {
            total: reading.total,
            read: reading.read,
            limited: reading.limited,
            shared: queue.owner.is_some(),
            summary,
            matching,
            page,
            pages,
            per_page,
            jobs,
            read_at_ms: now,
        })
    }

    /// The whole dead letter with this id (the first, if several), as `dlq
    /// show` prints it, with its body as text too; read no further than it
    /// or the read limit.
    pub async fn find(&self, queue: &DeadQueue, id: &str) -> Result<Lookup, DeadError> {
        let mut found = None;
        let reading = self
            .read_view(queue, |dead| {
                if dead.id == id {
                    found = Some(detail(&dead));
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await?;
        Ok(match found {
            Some(report) => Lookup::Found(report),
            None if reading.limited => Lookup::NotAmongFirst {
                read: reading.read,
                total: reading.total,
            },
            None => Lookup::Absent,
        })
    }

    /// How many dead letters `selection` matches now, and which, the whole
    /// queue read (no read limit: an action's confirmation counts every
    /// match).
    pub async fn count(
        &self,
        queue: &DeadQueue,
        selection: &Selection,
    ) -> Result<Counted, DeadError> {
        let lock = self.lock(&queue.name);
        let _reading = lock.lock().await;
        Ok(self.count_held(queue, selection).await?.0)
    }

    /// The count, and the ids of the matches (held only as ids).
    async fn count_held(
        &self,
        queue: &DeadQueue,
        selection: &Selection,
    ) -> Result<(Counted, SelectedIds), DeadError> {
        let channel = self.channel(false).await?;
        let now = clock::now_ms_i64();
        let mut selected = SelectedIds::default();
        let read = dlq::read_each(&channel, queue, |dead| {
            if selection.matches(&dead.info, now) {
                selected.push(&dead.id);
            }
            ControlFlow::Continue(())
        })
        .await;
        let pass = read.as_ref().copied().unwrap_or_default();
        self.give_back(channel, &queue.name, pass.taken).await;
        read?;
        let counted = Counted {
            matching: selected.len(),
            total: pass.visited,
            digest: selected.digest(),
        };
        Ok((counted, selected))
    }

    /// Replays or purges the dead letters `selection` matches if they are
    /// still those the operator confirmed, and only those: a dead letter
    /// that arrives between the check and the action is left alone.
    pub async fn act(
        &self,
        names: &QueueNames,
        action: Action,
        selection: &Selection,
        confirmation: &Confirmation,
    ) -> Result<usize, DeadError> {
        let queue = names.dead_queue();
        let lock = self.lock(&queue.name);
        let _acting = lock.lock().await;
        let (_, mut confirmed) = self.count_held(&queue, selection).await?;
        confirmation.check(&confirmed)?;
        let channel = self.channel(true).await?;
        let mut walk = Walk::default();
        let result = walk
            .run(&channel, names, action, selection, &mut confirmed)
            .await;
        self.give_back(channel, &names.dead, walk.read - walk.acted)
            .await;
        result.map(|()| walk.acted)
    }
}

/// `dlq show`'s report, with the body as text as well.
fn detail(dead: &DeadJob) -> Value {
    let mut report = dead.report();
    report["body_text"] = String::from_utf8_lossy(&dead.body).into_owned().into();
    report["body_bytes"] = dead.body.len().into();
    report
}

/// Messages ready in `queue`.
async fn ready(channel: &Channel, queue: &str) -> Result<usize, lapin::Error> {
    Ok(broker::ready_count(channel, queue).await? as usize)
}
